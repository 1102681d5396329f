"""
AnalysisCache: get-or-compute of conversation analyses over a database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ._models import (
    AnalysisResult,
    CacheStatus,
    StoredAnalysis,
    Turn,
    validate_session_id,
)
from ._protocols import AnalysisStore, Analyzer
from ._transcripts import TranscriptInput, parse_transcript
from .exceptions import InvalidInputError

__all__ = ["AnalysisCache"]

logger = logging.getLogger(__name__)

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)


class AnalysisCache(Generic[AnalysisT]):
    """
    Get-or-compute of conversation analyses, stored in Postgres.

    The first request for a session calls the analyzer and upserts the result
    into ``salesai_analysis_results``; every later request, from any process
    that shares the database, reads it back without calling the analyzer.

    Args:
        client: a supabase-py ``Client``, a psycopg 3 ``Connection``, or any
            object implementing ``AnalysisStore``.
        analyzer: what computes an analysis on a miss, such as
            ``OpenAIAnalyzer`` or ``ConversationMetricsAnalyzer``.

    Raises:
        TypeError: ``client`` is none of the accepted types.
    """

    def __init__(self, client: Any, analyzer: Analyzer[AnalysisT]) -> None:
        self._store = _make_store(client)
        self._analyzer = analyzer

    @property
    def store(self) -> AnalysisStore:
        """
        The store that reads and writes analyses.
        """
        return self._store

    @property
    def analyzer(self) -> Analyzer[AnalysisT]:
        """
        The analyzer called on a miss.
        """
        return self._analyzer

    def get_or_compute(
        self,
        session_id: object,
        transcript: TranscriptInput | None = None,
    ) -> AnalysisResult[AnalysisT]:
        """
        Return the analysis of a session, computing and storing it on a miss.

        Args:
            session_id: the ``salesai_sessions.id`` of the conversation, a UUID.
            transcript: the conversation (see ``parse_transcript`` for the
                accepted forms). When omitted, the ``transcript`` column of
                the session row is analysed.

        Returns:
            The analysis; ``result.status`` says whether it was a cache hit.

        Raises:
            InvalidInputError: the session id or the transcript is invalid.
            SessionNotFoundError: the session row does not exist.
            AnalyzerError: the analyzer failed; nothing was stored.
            CacheStoreError: the database call failed.
        """
        key = validate_session_id(session_id)
        turns = parse_transcript(transcript) if transcript is not None else None

        cached = self._read(self._store.fetch(key))
        if cached is not None:
            logger.info("Found cached analysis in database for session %s", key)
            return cached

        if turns is None:
            turns = self._load_transcript(key)
        return self._compute(key, turns)

    def get(self, session_id: object) -> AnalysisResult[AnalysisT] | None:
        """
        Return the stored analysis of a session without computing one.

        Returns:
            The analysis, or ``None`` when the session has none (or only one
            that no longer validates against the analyzer's output model).
        """
        key = validate_session_id(session_id)
        return self._read(self._store.fetch(key))

    def get_by_conversation(
        self, conversation_id: str
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Return the cached analysis of a conversation, looked up by its
        ``salesai_sessions.conversation_id``.

        When several sessions share the conversation id, the most recently
        updated analysis is returned.

        Raises:
            InvalidInputError: ``conversation_id`` is not a non-empty string.
        """
        if not isinstance(conversation_id, str) or not conversation_id:
            raise InvalidInputError(
                f"invalid conversation id {conversation_id!r}: expected a "
                "non-empty string"
            )
        cached = self._read(self._store.fetch_by_conversation(conversation_id))
        if cached is not None:
            logger.info(
                "Found cached analysis in database for session %s "
                "(conversation lookup)",
                cached.session_id,
            )
        return cached

    def _read(self, stored: StoredAnalysis | None) -> AnalysisResult[AnalysisT] | None:
        if stored is None:
            return None
        try:
            analysis = self._analyzer.output_model.model_validate(stored.analysis)
        except ValidationError as error:
            logger.debug(
                "Ignoring stored analysis of session %s: it does not validate "
                "against %s (%d errors)",
                stored.session_id,
                self._analyzer.output_model.__name__,
                error.error_count(),
            )
            return None
        return AnalysisResult(
            session_id=stored.session_id,
            analysis=analysis,
            model=stored.model,
            usage=stored.usage,
            status=CacheStatus.HIT,
            created_at=stored.created_at,
        )

    def _load_transcript(self, session_id: str) -> tuple[Turn, ...]:
        raw = self._store.fetch_transcript(session_id)
        try:
            return parse_transcript(raw)
        except InvalidInputError as error:
            raise InvalidInputError(
                f"transcript stored for session {session_id} is invalid: {error}"
            ) from None

    def _compute(
        self, session_id: str, turns: Sequence[Turn]
    ) -> AnalysisResult[AnalysisT]:
        logger.debug("No cached analysis for session %s, computing", session_id)
        started = time.perf_counter()
        output = self._analyzer.analyze(turns)
        logger.debug(
            "Computed analysis of session %s with %s in %.2f s",
            session_id,
            output.model,
            time.perf_counter() - started,
        )
        stored = self._store.save(
            session_id,
            output.analysis.model_dump(mode="json"),
            output.model,
            output.usage,
        )
        return AnalysisResult(
            session_id=session_id,
            analysis=output.analysis,
            model=output.model,
            usage=output.usage,
            status=CacheStatus.MISS,
            created_at=stored.created_at,
        )


def _make_store(client: Any) -> AnalysisStore:
    """
    Wrap a client in the store for its library, importing that library lazily.
    """
    module = type(client).__module__
    if module.startswith(("supabase", "postgrest")):
        from ._stores.supabase import SupabaseStore

        return SupabaseStore(client)
    if module.startswith("psycopg"):
        from ._stores.postgres import PostgresStore

        return PostgresStore(client)
    if all(
        callable(getattr(client, name, None))
        for name in ("fetch", "fetch_by_conversation", "fetch_transcript", "save")
    ):
        store: AnalysisStore = client
        return store
    raise TypeError(
        f"unsupported client {type(client).__module__}.{type(client).__name__}: "
        "expected a supabase Client, a psycopg Connection or an AnalysisStore"
    )
