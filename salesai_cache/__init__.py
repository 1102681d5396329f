"""
Database-backed get-or-compute cache for AI analyses of sales conversations.

``OpenAIAnalyzer``, ``SupabaseStore`` and ``PostgresStore`` (and their async
counterparts) are imported on first use, so ``import salesai_cache`` loads
neither openai nor psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._analyzers.metrics import ConversationMetrics, ConversationMetricsAnalyzer
from ._analyzers.schemas import SalesCallAnalysis, SkillScores
from ._analyzers.threaded import ThreadedAnalyzer
from ._async_cache import AsyncAnalysisCache
from ._async_protocols import AsyncAnalysisStore, AsyncAnalyzer
from ._cache import AnalysisCache, BatchResult
from ._models import (
    AnalysisResult,
    AnalyzerOutput,
    CacheStatus,
    Lookup,
    StoredAnalysis,
    TokenUsage,
    Turn,
)
from ._protocols import AnalysisStore, Analyzer
from ._retry import RetryPolicy
from ._stats import DEFAULT_PRICES, CacheStats, ModelPrice
from ._transcripts import load_transcript_file, parse_transcript
from ._version import __version__
from .exceptions import (
    AnalyzerError,
    CacheClosedError,
    CacheStoreError,
    ClaimTimeoutError,
    ConfigurationError,
    InvalidInputError,
    SalesAICacheError,
    SchemaMismatchError,
    SessionNotFoundError,
)

if TYPE_CHECKING:
    from ._analyzers.openai import AsyncOpenAIAnalyzer, OpenAIAnalyzer
    from ._stores.async_postgres import AsyncPostgresStore
    from ._stores.async_supabase import AsyncSupabaseStore
    from ._stores.postgres import PostgresStore
    from ._stores.supabase import SupabaseStore

__all__ = [
    "DEFAULT_PRICES",
    "AnalysisCache",
    "AnalysisResult",
    "AnalysisStore",
    "Analyzer",
    "AnalyzerError",
    "AnalyzerOutput",
    "AsyncAnalysisCache",
    "AsyncAnalysisStore",
    "AsyncAnalyzer",
    "AsyncOpenAIAnalyzer",
    "AsyncPostgresStore",
    "AsyncSupabaseStore",
    "BatchResult",
    "CacheClosedError",
    "CacheStats",
    "CacheStatus",
    "CacheStoreError",
    "ClaimTimeoutError",
    "ConfigurationError",
    "ConversationMetrics",
    "ConversationMetricsAnalyzer",
    "InvalidInputError",
    "Lookup",
    "ModelPrice",
    "OpenAIAnalyzer",
    "PostgresStore",
    "RetryPolicy",
    "SalesAICacheError",
    "SalesCallAnalysis",
    "SchemaMismatchError",
    "SessionNotFoundError",
    "SkillScores",
    "StoredAnalysis",
    "SupabaseStore",
    "ThreadedAnalyzer",
    "TokenUsage",
    "Turn",
    "__version__",
    "load_transcript_file",
    "parse_transcript",
]

_LAZY = {
    "AsyncOpenAIAnalyzer": "._analyzers.openai",
    "AsyncPostgresStore": "._stores.async_postgres",
    "AsyncSupabaseStore": "._stores.async_supabase",
    "OpenAIAnalyzer": "._analyzers.openai",
    "PostgresStore": "._stores.postgres",
    "SupabaseStore": "._stores.supabase",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
