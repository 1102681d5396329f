"""
AnalysisCache: get-or-compute of conversation analyses over a database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ._core import (
    PENDING_WRITE_ERRORS,
    BatchResult,
    PendingWrite,
    WriteMemory,
    _new_claimant,
    _stored_within,
    build_batch,
    build_miss,
    check_analyzer,
    check_conversation_id,
    check_durations,
    check_invalidate,
    check_max_pending,
    check_session_ids,
    client_kind,
    hidden_error,
    log_found,
    parse_stored_transcript,
    read_stored,
    settle_flight,
    validate_stored,
    warn_unwritten,
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
from ._retry import STORE_RETRY, RetryPolicy
from ._singleflight import SingleFlight
from ._stats import CacheStats, ModelPrice, StatsRecorder
from ._stats_flush import DEFAULT_FLUSH_INTERVAL, StatsFlusher, check_flush_interval
from ._stores._retrying import RetryingStore
from ._transcripts import TranscriptInput, parse_transcript
from .exceptions import (
    CacheClosedError,
    CacheStoreError,
    ClaimTimeoutError,
    ConfigurationError,
    SessionNotFoundError,
)

__all__ = ["AnalysisCache", "BatchResult"]

logger = logging.getLogger(__name__)

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)


class AnalysisCache(Generic[AnalysisT]):
    """
    Get-or-compute of conversation analyses, stored in Postgres.

    The first request for a session calls the analyzer and upserts the result
    into ``salesai_analysis_results``. Every later request, from any process
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
        prices: US dollar prices per model for the saved cost in
            ``stats()``; ``DEFAULT_PRICES`` (estimates) when omitted.
        store_retry: how database calls that fail transiently (a lost
            connection, a timeout, a 5xx) are retried; ``invalidate`` is not.
        max_pending_writes: how many computed analyses whose write failed
            this cache keeps in memory to write later (see
            ``flush_pending``); beyond it the oldest is dropped with an ERROR.
        stats_flush_interval: seconds between automatic writes of the
            counters of ``stats()`` to ``salesai_cache_stats`` (migration
            003), made by the first call that returns after the interval;
            ``None`` writes them only on ``flush_stats()`` and ``close()``.

    Raises:
        TypeError: ``client`` is none of the accepted types.
        InvalidInputError: a duration or ``stats_flush_interval`` is not
            positive, ``max_pending_writes`` is below 1, or ``analyzer`` lacks
            a string ``analysis_version``, a pydantic ``output_model`` or a
            sync ``analyze``.
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
        prices: Mapping[str, ModelPrice] | None = None,
        store_retry: RetryPolicy = STORE_RETRY,
        max_pending_writes: int = 100,
        stats_flush_interval: float | None = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        check_durations(
            lease_seconds=lease_seconds,
            wait_timeout=wait_timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        check_max_pending(max_pending_writes)
        check_analyzer(analyzer, coroutines=False)
        self._store = _make_store(client)
        self._io = RetryingStore(self._store, store_retry)
        self._analyzer = analyzer
        self._memory: WriteMemory[AnalysisT] = WriteMemory(max_pending_writes, logger)
        self._lease_seconds = lease_seconds
        self._wait_timeout = (
            lease_seconds + 10.0 if wait_timeout is None else wait_timeout
        )
        self._poll_interval = poll_interval
        self._max_poll_interval = max(max_poll_interval, poll_interval)
        self._flights: SingleFlight[AnalysisResult[AnalysisT]] = SingleFlight()
        self._stats = StatsRecorder(prices)
        self._flusher = StatsFlusher(
            self._stats,
            check_flush_interval(stats_flush_interval),
            enabled=callable(getattr(self._store, "record_stats", None)),
            logger=logger,
        )
        self._closed = False

    def __enter__(self) -> AnalysisCache[AnalysisT]:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """
        Write the analyses whose save failed (``flush_pending``) and the
        counters not yet flushed (``flush_stats``). Analyses that still
        cannot be written are logged at WARNING by session, since they go
        with the cache. The client passed in stays open: the cache does not
        own it. Closing twice does nothing. Calls after it raise
        ``CacheClosedError``, except ``stats()``, ``pending_writes``,
        ``store`` and ``analyzer``, which read what the cache holds.
        """
        if self._closed:
            return
        try:
            self.flush_pending()
        finally:
            self._closed = True
        warn_unwritten(logger, self._memory.pending_sessions())
        self._flush_stats()

    def _check_open(self) -> None:
        # Checked before any I/O, as AsyncAnalysisCache does: the client may
        # have been closed with the cache.
        if self._closed:
            raise CacheClosedError(
                type(self).__name__, "by close() or at the end of 'with'"
            )

    def flush_stats(self) -> int:
        """
        Write the counters counted since the last flush to
        ``salesai_cache_stats``, in one insert.

        Returns:
            The number of rows written, one per model and analysis version;
            0 when nothing was counted, when the store cannot record stats
            (a custom store without ``record_stats``), or when the write
            failed. A failure is logged at WARNING and the rows are sent
            again with the next flush. A missing table (migration 003 not
            applied) stops flushing for this cache.

        Raises:
            CacheClosedError: the cache is closed (``close`` flushed them).
        """
        self._check_open()
        return self._flush_stats()

    def _flush_stats(self) -> int:
        rows = self._flusher.take()
        if not rows:
            return 0
        try:
            return self._io.record_stats(rows)
        except Exception as error:
            self._flusher.failed(rows, error)
            return 0

    def _flush_stats_if_due(self) -> None:
        # One clock read on most calls: the insert happens once per interval.
        if self._flusher.due():
            self._flush_stats()

    @property
    def store(self) -> AnalysisStore:
        """
        The store that reads and writes analyses.
        """
        return self._store

    @property
    def pending_writes(self) -> int:
        """
        How many computed analyses wait in memory for their database write.
        """
        return self._memory.pending_count()

    def flush_pending(self) -> int:
        """
        Write every analysis whose database write failed earlier, such as
        from a shutdown hook (``atexit.register(cache.flush_pending)``) or a
        periodic job, so that analyses paid for reach the database.

        Returns:
            The number written; those still failing stay pending and are
            logged at WARNING.

        Raises:
            CacheClosedError: the cache is closed.
        """
        self._check_open()
        sessions = self._memory.pending_sessions()
        return sum(1 for session_id in sessions if self._write_pending(session_id))

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
            The analysis; ``result.status`` is how it was obtained.

        Raises:
            InvalidInputError: the session id or the transcript is invalid.
            SessionNotFoundError: the session row does not exist.
            AnalyzerError: the analyzer failed; nothing was stored.
            ClaimTimeoutError: another worker held the claim too long.
            CacheStoreError: a database call failed after its retries. When
                only the write of a computed analysis fails, the analysis is
                returned (status ``MISS``) and kept in memory to write later.
            ConfigurationError: the database accepted the write but hides
                the stored analysis from this role.
            CacheClosedError: the cache is closed.
        """
        self._check_open()
        key = validate_session_id(session_id)
        turns = self._turns(key, transcript)
        fingerprint = transcript_hash(turns)
        pending = self._serve_pending(key, fingerprint)
        if pending is not None:
            return pending
        if allow_stale:
            served = self._read(self._io.fetch(key), fingerprint)
            if served is not None:
                self._log_found(served)
                self._stats.record(served)
                self._flush_stats_if_due()
                return served

        def obtain() -> AnalysisResult[AnalysisT]:
            return self._obtain(key, turns, fingerprint, force=False)

        flight = (key, fingerprint, self._analyzer.analysis_version)
        result, shared = self._flights.run(flight, obtain)
        # The caller that computed counted its miss in _obtain.
        settled = settle_flight(result, shared, self._stats)
        self._flush_stats_if_due()
        return settled

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
        self._check_open()
        key = validate_session_id(session_id)
        turns = self._turns(key, transcript)
        fingerprint = transcript_hash(turns)

        def obtain() -> AnalysisResult[AnalysisT]:
            return self._obtain(key, turns, fingerprint, force=True)

        flight = ("refresh", key, fingerprint, self._analyzer.analysis_version)
        result, shared = self._flights.run(flight, obtain)
        # The caller that computed counted its miss in _obtain.
        settled = settle_flight(result, shared, self._stats)
        self._flush_stats_if_due()
        return settled

    def invalidate(
        self,
        session_id: object | None = None,
        *,
        analysis_version: str | None = None,
    ) -> int:
        """
        Delete stored analyses, by session, by analysis version, or both.

        The deletion takes effect for every process at once, because the
        next request of any process recomputes.

        Returns:
            The number of analyses deleted.

        Raises:
            InvalidInputError: neither filter is given, the session id is
                invalid, or ``analysis_version`` is not a non-empty string.
            CacheClosedError: the cache is closed.
        """
        self._check_open()
        check_invalidate(session_id, analysis_version)
        key = None if session_id is None else validate_session_id(session_id)
        deleted = self._io.invalidate(key, analysis_version)
        self._memory.forget(key)
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
        ``STALE``. Without ``transcript`` the transcript is not compared, so
        an analysis made from another transcript than the session row's
        reads as ``HIT``.

        Returns:
            The analysis, or ``None`` when the session has none (or only one
            that no longer validates against the analyzer's output model).

        Raises:
            InvalidInputError: the session id or the transcript is invalid.
            CacheStoreError: the database call failed.
            CacheClosedError: the cache is closed.
        """
        self._check_open()
        key = validate_session_id(session_id)
        fingerprint = None
        if transcript is not None:
            fingerprint = transcript_hash(parse_transcript(transcript))
        return self._read(self._io.fetch(key), fingerprint)

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
            CacheClosedError: the cache is closed.
        """
        self._check_open()
        check_conversation_id(conversation_id)
        cached = self._read(self._io.fetch_by_conversation(conversation_id), None)
        if cached is not None:
            self._log_found(cached)
        return cached

    def get_many(self, session_ids: Iterable[object]) -> BatchResult[AnalysisT]:
        """
        Return the stored analyses of many sessions without computing any,
        for dashboards.

        One query on PostgreSQL; on Supabase, as few requests as keep every
        URL within 8 KB. Each analysis has status ``HIT`` when its analysis
        version matches the analyzer, else ``STALE``; transcripts are not
        compared.

        Args:
            session_ids: session ids (UUIDs or UUID strings), in the order the
                caller wants them back; repeated ids count once.

        Returns:
            ``found`` maps each session with an analysis to it, in the order of
            ``session_ids``; ``missing`` lists, in that order too, the sessions
            without one (or with one that no longer validates against the
            analyzer's output model).

        Raises:
            InvalidInputError: ``session_ids`` is a string or not iterable,
                or an id is not a UUID; raised before any request.
            CacheStoreError: the database call failed.
            CacheClosedError: the cache is closed.
        """
        self._check_open()
        keys = check_session_ids(session_ids)
        if not keys:
            return BatchResult()
        fetch_many = getattr(self._store, "fetch_many", None)
        if callable(fetch_many):
            rows: list[StoredAnalysis] = self._io.retried(
                f"Reading the analyses of {len(keys)} sessions",
                lambda: list(fetch_many(keys)),
            )
        else:
            # A custom store without fetch_many: one lookup per session.
            rows = [row for row in map(self._io.fetch, keys) if row is not None]
        return build_batch(keys, rows, lambda row: self._read(row, None), logger)

    def stats(self) -> CacheStats:
        """
        Return a snapshot of what this cache did since it was created: hits,
        misses, stale recomputes, waits, and the tokens and estimated cost
        saved by calls served without the model (see ``CacheStats``).

        It stays readable after ``close()``, which counts nothing more, so
        that a caller can report what a closed cache did.
        """
        return self._stats.snapshot()

    def _turns(
        self, session_id: str, transcript: TranscriptInput | None
    ) -> tuple[Turn, ...]:
        if transcript is not None:
            return parse_transcript(transcript)
        raw = self._io.fetch_transcript(session_id)
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
            lookup = self._io.lookup(
                session_id,
                fingerprint,
                version,
                claimant,
                self._lease_seconds,
                force=force_claim,
            )
            if lookup.claimed:
                verify = lookup.stored is None and self._suspect_hidden(
                    session_id, fingerprint, claimant
                )
                computed = self._compute(
                    session_id, turns, fingerprint, claimant, verify=verify
                )
                self._stats.record(
                    computed, stale=not force and lookup.stored is not None
                )
                return computed

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
        *,
        verify: bool = False,
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
        write = PendingWrite(output, fingerprint, version)
        try:
            stored = self._io.save(
                session_id, **write.save_arguments(), claimant=claimant
            )
        except (ConfigurationError, SessionNotFoundError):
            self._release_quietly(session_id, claimant)
            raise
        except CacheStoreError as error:
            # The analysis is paid for and valid: serve it, and keep it to
            # write on the next request for the session or flush_pending().
            self._release_quietly(session_id, claimant)
            self._memory.keep(session_id, write, error)
            return write.result(session_id, CacheStatus.MISS)
        except BaseException:
            self._release_quietly(session_id, claimant)
            raise
        self._memory.saved(session_id, fingerprint, version)
        if verify and self._io.fetch(session_id) is None:
            raise self._memory.hide(session_id)
        return build_miss(session_id, output, stored, fingerprint, version)

    def _suspect_hidden(self, session_id: str, fingerprint: str, claimant: str) -> bool:
        """
        Return whether a lookup that found no analysis may be hidden from
        this role: this cache stored one with the same fingerprints.

        Another process may have deleted it (``invalidate``), so the analysis
        is computed again and read back after the write to distinguish the two
        cases. A session whose read-back came back empty raises
        ``ConfigurationError`` at once, without a model call.
        """
        hidden, suspect = self._memory.suspect_hidden(
            session_id, fingerprint, self._analyzer.analysis_version
        )
        if hidden:
            self._release_quietly(session_id, claimant)
            raise hidden_error(session_id)
        return suspect

    def _serve_pending(
        self, session_id: str, fingerprint: str
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Write the pending analysis of a session, if any, before anything
        else; return it when it matches the request, written or not.
        """
        write = self._memory.pending(session_id)
        if write is None:
            return None
        self._write_pending(session_id)
        return self._memory.serve(
            session_id, write, fingerprint, self._analyzer.analysis_version
        )

    def _write_pending(self, session_id: str) -> bool:
        write = self._memory.pending(session_id)
        if write is None:
            return False
        try:
            self._io.save(session_id, **write.save_arguments())
        except PENDING_WRITE_ERRORS as error:
            return self._memory.written(session_id, write, error)
        return self._memory.written(session_id, write, None)

    def _release_quietly(self, session_id: str, claimant: str) -> None:
        try:
            self._io.release(session_id, claimant)
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
