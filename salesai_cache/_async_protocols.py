"""
The async interfaces between AsyncAnalysisCache, its stores and its analyzers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ._models import AnalyzerOutput, Lookup, StoredAnalysis, TokenUsage, Turn
from ._stats import StatsRow

__all__ = ["AsyncAnalysisStore", "AsyncAnalyzer", "AsyncStatsStore"]

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)


class AsyncAnalyzer(Protocol[AnalysisT]):
    """
    ``Analyzer`` whose ``analyze`` is a coroutine, such as
    ``AsyncOpenAIAnalyzer``.
    """

    @property
    def output_model(self) -> type[AnalysisT]:
        """
        The pydantic model of the analysis.
        """
        ...

    @property
    def analysis_version(self) -> str:
        """
        The version of the analyses this analyzer makes (see ``Analyzer``).
        """
        ...

    async def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[AnalysisT]:
        """
        Analyse one conversation.

        Raises:
            AnalyzerError: the analysis failed.
        """
        ...


class AsyncAnalysisStore(Protocol):
    """
    ``AnalysisStore`` with coroutine methods; each does what the method of
    the same name of ``AnalysisStore`` does.
    """

    async def fetch(self, session_id: str) -> StoredAnalysis | None:
        """
        Return the stored analysis of a session, or ``None``.
        """
        ...

    async def fetch_by_conversation(
        self, conversation_id: str
    ) -> StoredAnalysis | None:
        """
        Return the most recently updated analysis of a conversation, or ``None``.
        """
        ...

    async def fetch_transcript(self, session_id: str) -> Any:
        """
        Return the ``transcript`` column of a session.
        """
        ...

    async def lookup(
        self,
        session_id: str,
        transcript_hash: str,
        analysis_version: str,
        claimant: str,
        lease_seconds: float,
        *,
        force: bool = False,
    ) -> Lookup:
        """
        Return the stored analysis with its freshness, taking the claim.
        """
        ...

    async def save(
        self,
        session_id: str,
        analysis: dict[str, Any],
        model: str,
        usage: TokenUsage,
        *,
        transcript_hash: str | None = None,
        analysis_version: str | None = None,
        claimant: str | None = None,
    ) -> StoredAnalysis:
        """
        Upsert the analysis of a session and release ``claimant``'s claim.
        """
        ...

    async def release(self, session_id: str, claimant: str) -> None:
        """
        Delete ``claimant``'s claim on a session, if it still holds it.
        """
        ...

    async def invalidate(
        self,
        session_id: str | None = None,
        analysis_version: str | None = None,
    ) -> int:
        """
        Delete the stored analyses that match every given filter.
        """
        ...


class AsyncStatsStore(Protocol):
    """
    ``StatsStore`` whose ``record_stats`` is a coroutine; the cache skips
    flushing its counters for an ``AsyncAnalysisStore`` without it.
    """

    async def record_stats(self, rows: Sequence[StatsRow]) -> int:
        """
        Insert ``rows`` into ``salesai_cache_stats``, ignoring known ids.
        """
        ...
