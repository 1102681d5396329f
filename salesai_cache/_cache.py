"""
AnalysisCache: get-or-compute of conversation analyses over a database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ._core import (
    _new_claimant,
    _stored_within,
    _with_status,
    build_miss,
    check_conversation_id,
    check_durations,
    check_invalidate,
    client_kind,
    log_found,
    parse_stored_transcript,
    read_stored,
    validate_stored,
)
from ._keys import transcript_hash
from ._models import (
    AnalysisResult,
    CacheStatus,
    StoredAnalysis,
    Turn,
    validate_session_id,
)
from ._protocols import AnalysisStore, Analyzer
from ._singleflight import SingleFlight
from ._transcripts import TranscriptInput, parse_transcript
from .exceptions import ClaimTimeoutError

__all__ = ["AnalysisCache"]

logger = logging.getLogger(__name__)

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)


class AnalysisCache(Generic[AnalysisT]):
    """
    Get-or-compute of conversation analyses, stored in Postgres.

    The first request for a session calls the analyzer and upserts the result
    into ``salesai_analysis_results``; every later request, from any process
    that shares the database, reads it back without calling the analyzer.

    A stored analysis is fresh while both the hash of the normalised
    transcript and the analyzer's ``analysis_version`` (model, prompt, output
    schema) match the request. A stale one is recomputed, or served marked
    stale when the caller passes ``allow_stale=True``.

    Exactly one caller computes a missing analysis. Within a process,
    concurrent calls for the same session and transcript share one
    execution. Across processes, the caller that takes the session's claim
    in ``salesai_analysis_claims`` computes while the others poll the
    database until the analysis appears. A claim is a lease: when its holder
    dies, it expires after ``lease_seconds`` and the next caller takes over.

    Args:
        client: a supabase-py ``Client``, a psycopg 3 ``Connection``, or any
            object implementing ``AnalysisStore``.
        analyzer: what computes an analysis on a miss, such as
            ``OpenAIAnalyzer`` or ``ConversationMetricsAnalyzer``.
        lease_seconds: how long a claim lasts. Choose more than the longest
            analysis takes: a compute that outlives its lease lets a second
            caller start another (both results are valid; the last one
            written stays).
        wait_timeout: how long a caller waits for another worker's compute
            before ``ClaimTimeoutError``. Defaults to ``lease_seconds`` plus
            10 s, so a waiter outlasts the lease of a worker that died and
            then computes itself.
        poll_interval: the first pause, in seconds, between two lookups of a
            waiting caller; it grows by half each time up to
            ``max_poll_interval``.
        max_poll_interval: the longest pause between two lookups, in seconds,
            which bounds how late a waiter sees a finished analysis.

    Raises:
        TypeError: ``client`` is none of the accepted types.
        InvalidInputError: a duration is not positive.
    """

    def __init__(
        self,
        client: Any,
        analyzer: Analyzer[AnalysisT],
        *,
        lease_seconds: float = 120.0,
        wait_timeout: float | None = None,
        poll_interval: float = 0.02,
        max_poll_interval: float = 0.25,
    ) -> None:
        check_durations(
            lease_seconds=lease_seconds,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        self._store = _make_store(client)
        self._analyzer = analyzer
        self._lease_seconds = lease_seconds
        self._wait_timeout = (
            lease_seconds + 10.0 if wait_timeout is None else wait_timeout
        )
        self._poll_interval = poll_interval
        self._max_poll_interval = max(max_poll_interval, poll_interval)
        self._flights: SingleFlight[AnalysisResult[AnalysisT]] = SingleFlight()

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
        *,
        allow_stale: bool = False,
    ) -> AnalysisResult[AnalysisT]:
        """
        Return the analysis of a session, computing and storing it on a miss.

        Args:
            session_id: the ``salesai_sessions.id`` of the conversation, a UUID.
            transcript: the conversation (see ``parse_transcript`` for the
                accepted forms). When omitted, the ``transcript`` column of
                the session row is read, which costs one more round trip.
            allow_stale: return a stored analysis whose transcript or
                analysis version differs from the request, with status
                ``STALE``, instead of recomputing it. One more round trip.

        Returns:
            The analysis; ``result.status`` says how it was obtained.

        Raises:
            InvalidInputError: the session id or the transcript is invalid.
            SessionNotFoundError: the session row does not exist.
            AnalyzerError: the analyzer failed; nothing was stored.
            ClaimTimeoutError: another worker held the claim too long.
            CacheStoreError: the database call failed.
        """
        key = validate_session_id(session_id)
        turns = self._turns(key, transcript)
        fingerprint = transcript_hash(turns)
        if allow_stale:
            served = self._read(self._store.fetch(key), fingerprint)
            if served is not None:
                self._log_found(served)
                return served

        def obtain() -> AnalysisResult[AnalysisT]:
            return self._obtain(key, turns, fingerprint, force=False)

        flight = (key, fingerprint, self._analyzer.analysis_version)
        result, shared = self._flights.run(flight, obtain)
        if shared and result.status is CacheStatus.MISS:
            return _with_status(result, CacheStatus.WAITED)
        return result

    def refresh(
        self, session_id: object, transcript: TranscriptInput | None = None
    ) -> AnalysisResult[AnalysisT]:
        """
        Recompute the analysis of a session and store it, even when fresh.

        A caller that refreshes while another worker computes the same
        session waits for that result instead of paying a second time.

        Raises:
            The exceptions of ``get_or_compute``.
        """
        key = validate_session_id(session_id)
        turns = self._turns(key, transcript)
        fingerprint = transcript_hash(turns)

        def obtain() -> AnalysisResult[AnalysisT]:
            return self._obtain(key, turns, fingerprint, force=True)

        flight = ("refresh", key, fingerprint, self._analyzer.analysis_version)
        result, shared = self._flights.run(flight, obtain)
        if shared and result.status is CacheStatus.MISS:
            return _with_status(result, CacheStatus.WAITED)
        return result

    def invalidate(
        self,
        session_id: object | None = None,
        *,
        analysis_version: str | None = None,
    ) -> int:
        """
        Delete stored analyses, by session, by analysis version, or both.

        Every process sees the deletion at once: the next request recomputes.

        Returns:
            The number of analyses deleted.

        Raises:
            InvalidInputError: neither filter is given, or the session id is
                invalid.
        """
        check_invalidate(session_id, analysis_version)
        key = None if session_id is None else validate_session_id(session_id)
        deleted = self._store.invalidate(key, analysis_version)
        logger.info(
            "Invalidated %d cached analyses (session %s, analysis version %s)",
            deleted,
            key,
            analysis_version,
        )
        return deleted

    def get(
        self, session_id: object, transcript: TranscriptInput | None = None
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Return the stored analysis of a session without computing one.

        The status is ``HIT`` when the analysis version matches the analyzer
        (and the transcript hash matches ``transcript``, when given), else
        ``STALE``.

        Returns:
            The analysis, or ``None`` when the session has none (or only one
            that no longer validates against the analyzer's output model).
        """
        key = validate_session_id(session_id)
        fingerprint = None
        if transcript is not None:
            fingerprint = transcript_hash(parse_transcript(transcript))
        return self._read(self._store.fetch(key), fingerprint)

    def get_by_conversation(
        self, conversation_id: str
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Return the cached analysis of a conversation, looked up by its
        ``salesai_sessions.conversation_id``.

        When several sessions share the conversation id, the most recently
        updated analysis is returned. Its status is ``STALE`` when it was made
        by another analysis version.

        Raises:
            InvalidInputError: ``conversation_id`` is not a non-empty string.
        """
        check_conversation_id(conversation_id)
        cached = self._read(self._store.fetch_by_conversation(conversation_id), None)
        if cached is not None:
            self._log_found(cached)
        return cached

    def _turns(
        self, session_id: str, transcript: TranscriptInput | None
    ) -> tuple[Turn, ...]:
        if transcript is not None:
            return parse_transcript(transcript)
        raw = self._store.fetch_transcript(session_id)
        return parse_stored_transcript(session_id, raw)

    def _obtain(
        self,
        session_id: str,
        turns: Sequence[Turn],
        fingerprint: str,
        *,
        force: bool,
    ) -> AnalysisResult[AnalysisT]:
        """
        Look up, claim and compute, or wait for the worker that holds the
        claim, until this session has a fresh analysis.
        """
        version = self._analyzer.analysis_version
        claimant = _new_claimant()
        started = time.monotonic()
        delay = self._poll_interval
        waited = False
        force_claim = force
        while True:
            lookup = self._store.lookup(
                session_id,
                fingerprint,
                version,
                claimant,
                self._lease_seconds,
                force=force_claim,
            )
            if lookup.claimed:
                return self._compute(session_id, turns, fingerprint, claimant)

            stored = lookup.stored
            if lookup.fresh and stored is not None:
                elapsed = time.monotonic() - started
                if force and not _stored_within(stored, elapsed):
                    # A refresh accepts only an analysis stored after it began.
                    force_claim = True
                    continue
                status = CacheStatus.WAITED if waited else CacheStatus.HIT
                result = self._validate(stored, status)
                if result is not None:
                    self._log_found(result, waited=elapsed if waited else None)
                    return result
                force_claim = True
                continue

            elapsed = time.monotonic() - started
            if elapsed >= self._wait_timeout:
                raise ClaimTimeoutError(session_id, elapsed)
            if not waited:
                logger.debug(
                    "Waiting for another worker to analyse session %s "
                    "(its claim expires at %s)",
                    session_id,
                    lookup.claim_expires_at,
                )
            waited = True
            force_claim = False
            time.sleep(min(delay, self._wait_timeout - elapsed))
            delay = min(delay * 1.5, self._max_poll_interval)

    def _compute(
        self,
        session_id: str,
        turns: Sequence[Turn],
        fingerprint: str,
        claimant: str,
    ) -> AnalysisResult[AnalysisT]:
        logger.debug("Computing the analysis of session %s", session_id)
        started = time.perf_counter()
        try:
            output = self._analyzer.analyze(turns)
        except BaseException:
            # Let another caller take over at once instead of after the lease.
            self._release_quietly(session_id, claimant)
            raise
        logger.debug(
            "Computed the analysis of session %s with %s in %.2f s",
            session_id,
            output.model,
            time.perf_counter() - started,
        )
        version = self._analyzer.analysis_version
        try:
            stored = self._store.save(
                session_id,
                output.analysis.model_dump(mode="json"),
                output.model,
                output.usage,
                transcript_hash=fingerprint,
                analysis_version=version,
                claimant=claimant,
            )
        except BaseException:
            self._release_quietly(session_id, claimant)
            raise
        return build_miss(session_id, output, stored, fingerprint, version)

    def _release_quietly(self, session_id: str, claimant: str) -> None:
        try:
            self._store.release(session_id, claimant)
        except Exception as error:
            # The claim then expires with its lease; the original error matters.
            logger.warning(
                "Could not release the claim on session %s: %s",
                session_id,
                error,
            )

    def _read(
        self, stored: StoredAnalysis | None, fingerprint: str | None
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Turn a fetched row into a result, ``STALE`` unless its version (and
        its transcript hash, when ``fingerprint`` is given) match.
        """
        return read_stored(
            stored,
            fingerprint,
            self._analyzer.output_model,
            self._analyzer.analysis_version,
            logger,
        )

    def _validate(
        self, stored: StoredAnalysis, status: CacheStatus
    ) -> AnalysisResult[AnalysisT] | None:
        return validate_stored(stored, status, self._analyzer.output_model, logger)

    def _log_found(
        self, result: AnalysisResult[AnalysisT], *, waited: float | None = None
    ) -> None:
        log_found(logger, result, waited=waited)


def _make_store(client: Any) -> AnalysisStore:
    """
    Wrap a client in the store for its library, importing that library lazily.
    """
    kind = client_kind(client)
    if kind == "supabase":
        from ._stores.supabase import SupabaseStore

        return SupabaseStore(client)
    if kind == "psycopg":
        from ._stores.postgres import PostgresStore

        return PostgresStore(client)
    if kind == "store":
        store: AnalysisStore = client
        return store
    raise TypeError(
        f"unsupported client {type(client).__module__}.{type(client).__name__}: "
        "expected a supabase Client, a psycopg Connection or an AnalysisStore"
    )
