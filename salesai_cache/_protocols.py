"""
The interfaces between the cache, its stores and its analyzers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ._models import AnalyzerOutput, StoredAnalysis, TokenUsage, Turn

__all__ = ["AnalysisStore", "Analyzer"]

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)


class Analyzer(Protocol[AnalysisT]):
    """
    Something that turns a transcript into an analysis, such as a model call.
    """

    @property
    def output_model(self) -> type[AnalysisT]:
        """
        The pydantic model of the analysis; stored analyses are validated by it.
        """
        ...

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[AnalysisT]:
        """
        Analyse one conversation.

        Raises:
            AnalyzerError: the analysis failed.
        """
        ...


class AnalysisStore(Protocol):
    """
    The database side of the cache: one implementation per client library.

    Session ids are canonical UUID strings. Implementations raise
    ``CacheStoreError`` (or a subclass) for database failures.
    """

    def fetch(self, session_id: str) -> StoredAnalysis | None:
        """
        Return the stored analysis of a session, or ``None`` if there is none.
        """
        ...

    def fetch_by_conversation(self, conversation_id: str) -> StoredAnalysis | None:
        """
        Return the most recently updated analysis of any session whose
        ``conversation_id`` matches, or ``None``.
        """
        ...

    def fetch_transcript(self, session_id: str) -> Any:
        """
        Return the ``transcript`` column of a session as decoded JSON.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        ...

    def save(
        self,
        session_id: str,
        analysis: dict[str, Any],
        model: str,
        usage: TokenUsage,
    ) -> StoredAnalysis:
        """
        Insert or replace the analysis of a session (an upsert on ``session_id``).

        Raises:
            SessionNotFoundError: no session has this id.
        """
        ...
