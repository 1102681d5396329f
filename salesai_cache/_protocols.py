"""
The interfaces between the cache, its stores and its analyzers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ._models import AnalyzerOutput, Lookup, StoredAnalysis, TokenUsage, Turn
from ._stats import StatsRow

__all__ = ["AnalysisStore", "Analyzer", "StatsStore"]

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

    @property
    def analysis_version(self) -> str:
        """
        The version of the analyses this analyzer makes: it must change when
        the model, prompt or output schema changes, so that analyses stored
        under another version count as stale. ``salesai_cache._keys.
        analysis_version`` builds one.
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

    A store may also implement ``StatsStore.record_stats``; the cache skips
    flushing its counters to the database for a store that does not.
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

    def lookup(
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
        Return the stored analysis and whether it is fresh, and take the
        compute claim for ``claimant`` when it is not fresh (or ``force``).

        One round trip: ``salesai_lookup_analysis`` (migration 002). A claim
        is taken when none exists, when the current one has expired, or when
        ``claimant`` already holds it; it expires ``lease_seconds`` after.

        Raises:
            SessionNotFoundError: a claim was attempted and no session has
                this id.
            SchemaMismatchError: migration 002 is not applied.
        """
        ...

    def save(
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
        Insert or replace the analysis of a session (an upsert on
        ``session_id``) and release ``claimant``'s claim, in one round trip
        (``salesai_save_analysis``).

        The write happens even when the claim has expired or another caller
        holds it: the analysis is paid for and valid for its fingerprints.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        ...

    def release(self, session_id: str, claimant: str) -> None:
        """
        Delete ``claimant``'s claim on a session, if it still holds it, so
        that another caller can compute at once.
        """
        ...

    def invalidate(
        self,
        session_id: str | None = None,
        analysis_version: str | None = None,
    ) -> int:
        """
        Delete the stored analyses that match every given filter and return
        how many were deleted.

        Raises:
            ValueError: neither filter is given.
        """
        ...


class StatsStore(Protocol):
    """
    A store that can record the cache's counters (migration 003). The
    built-in stores are; a custom ``AnalysisStore`` may be.
    """

    def record_stats(self, rows: Sequence[StatsRow]) -> int:
        """
        Insert ``rows`` into ``salesai_cache_stats`` in one round trip,
        ignoring rows whose ``id`` the table has, and return ``len(rows)``.

        Raises:
            SchemaMismatchError: the table is missing (code ``42P01`` or
                ``PGRST205``): migration 003 is not applied.
        """
        ...
