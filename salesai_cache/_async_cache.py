"""
AsyncAnalysisCache: AnalysisCache for asyncio applications.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ._analyzers.threaded import ThreadedAnalyzer
from ._async_protocols import AsyncAnalysisStore, AsyncAnalyzer
from ._async_singleflight import AsyncSingleFlight
from ._core import (
    PENDING_WRITE_ERRORS,
    STORE_METHODS,
    BatchResult,
    PendingWrite,
    WriteMemory,
    _new_claimant,
    _stored_within,
    build_batch,
    build_miss,
    check_analyzer,
    check_conninfo,
    check_conversation_id,
    check_durations,
    check_invalidate,
    check_max_pending,
    check_session_ids,
    check_supabase_url,
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
    AnalyzerOutput,
    CacheStatus,
    StoredAnalysis,
    Turn,
    validate_session_id,
)
from ._protocols import Analyzer
from ._retry import STORE_RETRY, RetryPolicy
from ._stats import CacheStats, ModelPrice, StatsRecorder
from ._stats_flush import DEFAULT_FLUSH_INTERVAL, StatsFlusher, check_flush_interval
from ._stores._retrying import AsyncRetryingStore
from ._transcripts import TranscriptInput, parse_transcript
from .exceptions import (
    CacheClosedError,
    CacheStoreError,
    ClaimTimeoutError,
    ConfigurationError,
    SessionNotFoundError,
)

__all__ = ["AsyncAnalysisCache"]

logger = logging.getLogger(__name__)

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)
_T = TypeVar("_T")


class AsyncAnalysisCache(Generic[AnalysisT]):
    """
    ``AnalysisCache`` for asyncio: the same methods, results, errors, logs
    and database protocol, without blocking the event loop.

    Concurrent tasks of one event loop that ask for the same session and
    transcript share one computation; across processes, the claim in
    ``salesai_analysis_claims`` decides who computes, as for
    ``AnalysisCache``, and waiters poll with ``asyncio.sleep``. Sync and
    async caches on one database cooperate.

    Cancelling a call stops it at once: a computing caller releases its
    claim (shielded from the cancellation) so that another caller computes
    at once, and nothing is stored. When the task leading an in-process
    computation is cancelled, the tasks waiting for it do not fail: one of
    them takes over the computation.

    Use one cache per event loop: asyncio primitives and async connections
    belong to the loop they were made in.

    Args:
        client: a supabase ``AsyncClient`` (``acreate_client``), a psycopg 3
            ``AsyncConnection``, or any object implementing
            ``AsyncAnalysisStore``. It stays open when the cache closes; use
            ``from_supabase_url`` or ``from_postgres_url`` for a cache that
            owns its client.
        analyzer: an async analyzer such as ``AsyncOpenAIAnalyzer``, or a
            sync one such as ``ConversationMetricsAnalyzer``, which then runs
            in a worker thread (``ThreadedAnalyzer``).
        lease_seconds, wait_timeout, poll_interval, max_poll_interval,
        stats_flush_interval: as for ``AnalysisCache``; ``aclose`` writes
            the counters not yet flushed.

    Raises:
        TypeError: ``client`` is none of the accepted types, such as a sync
            client.
        InvalidInputError: a duration or ``stats_flush_interval`` is not
            positive, ``max_pending_writes`` is below 1, or ``analyzer`` lacks
            a string ``analysis_version``, a pydantic ``output_model`` or an
            ``analyze`` method (a coroutine function or a plain one).
    """

    def __init__(
        self,
        client: Any,
        analyzer: AsyncAnalyzer[AnalysisT] | Analyzer[AnalysisT],
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
        check_analyzer(analyzer, coroutines=True)
        self._store = _make_async_store(client)
        self._io = AsyncRetryingStore(self._store, store_retry)
        self._memory: WriteMemory[AnalysisT] = WriteMemory(max_pending_writes, logger)
        self._stats = StatsRecorder(prices)
        self._flusher = StatsFlusher(
            self._stats,
            check_flush_interval(stats_flush_interval),
            enabled=callable(getattr(self._store, "record_stats", None)),
            logger=logger,
        )
        self._analyzer = _async_analyzer(analyzer)
        self._lease_seconds = lease_seconds
        self._wait_timeout = (
            lease_seconds + 10.0 if wait_timeout is None else wait_timeout
        )
        self._poll_interval = poll_interval
        self._max_poll_interval = max(max_poll_interval, poll_interval)
        self._flights: AsyncSingleFlight[AnalysisResult[AnalysisT]] = (
            AsyncSingleFlight()
        )
        self._owns_client = False
        self._closed = False
        self._background_tasks: set[asyncio.Future[Any]] = set()

    @classmethod
    async def from_supabase_url(
        cls,
        url: str,
        key: str,
        analyzer: AsyncAnalyzer[AnalysisT] | Analyzer[AnalysisT],
        **options: Any,
    ) -> AsyncAnalysisCache[AnalysisT]:
        """
        Return a cache over a supabase ``AsyncClient`` that it creates and
        closes in ``aclose``.

        Args:
            url: the project URL, such as ``https://<ref>.supabase.co``.
            key: the service-role (secret) key; it is never logged.
            analyzer: as for the constructor.
            options: the constructor's keyword arguments.

        Raises:
            InvalidInputError: ``url`` is not an http(s) URL, ``key`` is
                empty, or an argument of the constructor is invalid.
        """
        from supabase import acreate_client

        from ._stores.async_supabase import close_async_client

        check_supabase_url(url, key)
        client = await acreate_client(url, key)
        try:
            cache = cls(client, analyzer, **options)
        except BaseException:
            await close_async_client(client)
            raise
        cache._owns_client = True
        return cache

    @classmethod
    async def from_postgres_url(
        cls,
        conninfo: str,
        analyzer: AsyncAnalyzer[AnalysisT] | Analyzer[AnalysisT],
        **options: Any,
    ) -> AsyncAnalysisCache[AnalysisT]:
        """
        Return a cache over a psycopg ``AsyncConnection`` (autocommit) that
        it opens and closes in ``aclose``.

        Args:
            conninfo: a libpq connection string or URL.
            analyzer: as for the constructor.
            options: the constructor's keyword arguments.

        Raises:
            InvalidInputError: ``conninfo`` is not a connection string.
            CacheStoreError: the connection failed.
        """
        import psycopg

        from .exceptions import CacheStoreError

        check_conninfo(conninfo)
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.Error as error:
            # The conninfo may hold a password, so it stays out of the message.
            raise CacheStoreError(
                f"connecting to PostgreSQL failed ({type(error).__name__}); "
                "check the connection string and that the server is reachable"
            ) from error
        try:
            cache = cls(conn, analyzer, **options)
        except BaseException:
            await conn.close()
            raise
        cache._owns_client = True
        return cache

    async def __aenter__(self) -> AsyncAnalysisCache[AnalysisT]:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """
        Wait for the saves that cancelled calls left running, write the
        analyses whose save failed (``flush_pending``) and the counters not
        yet flushed (``flush_stats``), then close the client if
        the cache created it (``from_supabase_url``, ``from_postgres_url``); a
        client passed in stays open. Analyses that still cannot be written
        are logged at WARNING by session, since they go with the cache.
        Closing twice does nothing. Calls after it raise ``CacheClosedError``,
        except ``stats()``, ``pending_writes``, ``store`` and ``analyzer``,
        which read what the cache holds.
        """
        if self._closed:
            return
        # Saves and releases that cancelled callers left running go first,
        # so that a failed save joins the pending writes below.
        # A finished background task may start another (a save after a late
        # analysis), so the loop runs until none is left.
        while self._background_tasks:
            await asyncio.gather(*self._background_tasks, return_exceptions=True)
        try:
            await self.flush_pending()
        finally:
            self._closed = True
        warn_unwritten(logger, self._memory.pending_sessions())
        try:
            await self._flush_stats()
        finally:
            if self._owns_client:
                close = getattr(self._store, "aclose", None)
                if close is not None:
                    await close()

    async def flush_stats(self) -> int:
        """
        Write the counters counted since the last flush to
        ``salesai_cache_stats``, in one insert, as
        ``AnalysisCache.flush_stats`` does.

        Returns:
            The number of rows written (0 on failure, which is logged at
            WARNING; the rows are sent again with the next flush).

        Raises:
            asyncio.CancelledError: the flush was cancelled; its rows are
                sent again with the next flush, and the database ignores
                any it already has.
            CacheClosedError: the cache is closed (``aclose`` flushed them).
        """
        self._check_open()
        return await self._flush_stats()

    async def _flush_stats(self) -> int:
        rows = self._flusher.take()
        if not rows:
            return 0
        try:
            return await self._io.record_stats(rows)
        except asyncio.CancelledError:
            self._flusher.keep(rows)
            raise
        except Exception as error:
            self._flusher.failed(rows, error)
            return 0

    async def _flush_stats_if_due(self) -> None:
        # One clock read on most calls: the insert happens once per interval.
        if self._flusher.due():
            await self._flush_stats()

    def _check_open(self) -> None:
        # Checked before any I/O: a closed client would otherwise surface as
        # a failed database call, retried first.
        if self._closed:
            raise CacheClosedError(
                type(self).__name__, "by aclose() or at the end of 'async with'"
            )

    @property
    def store(self) -> AsyncAnalysisStore:
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

    async def flush_pending(self) -> int:
        """
        Write every analysis whose database write failed earlier, such as
        from the application's shutdown (a lifespan's exit), so that
        analyses paid for reach the database.

        Returns:
            The number written; those still failing stay pending and are
            logged at WARNING.
        """
        self._check_open()
        written = 0
        for session_id in self._memory.pending_sessions():
            written += await self._write_pending(session_id)
        return written

    def stats(self) -> CacheStats:
        """
        Return a snapshot of what this cache did since it was created, as
        ``AnalysisCache.stats`` counts it; readable after ``aclose()``.
        """
        return self._stats.snapshot()

    @property
    def analyzer(self) -> AsyncAnalyzer[AnalysisT]:
        """
        The analyzer called on a miss (a sync one wrapped in
        ``ThreadedAnalyzer``).
        """
        return self._analyzer

    async def get_or_compute(
        self,
        session_id: object,
        transcript: TranscriptInput | None = None,
        *,
        allow_stale: bool = False,
    ) -> AnalysisResult[AnalysisT]:
        """
        Return the analysis of a session, computing and storing it on a miss.

        Args and Returns: as ``AnalysisCache.get_or_compute``.

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
            asyncio.CancelledError: the call was cancelled; its claim is
                released and nothing was stored.
        """
        self._check_open()
        key = validate_session_id(session_id)
        turns = await self._turns(key, transcript)
        fingerprint = transcript_hash(turns)
        pending = await self._serve_pending(key, fingerprint)
        if pending is not None:
            return pending
        if allow_stale:
            served = self._read(await self._io.fetch(key), fingerprint)
            if served is not None:
                log_found(logger, served)
                self._stats.record(served)
                await self._flush_stats_if_due()
                return served

        async def obtain() -> AnalysisResult[AnalysisT]:
            return await self._obtain(key, turns, fingerprint, force=False)

        flight = (key, fingerprint, self._analyzer.analysis_version)
        result, shared = await self._flights.run(flight, obtain)
        # The caller that computed counted its miss in _obtain.
        settled = settle_flight(result, shared, self._stats)
        await self._flush_stats_if_due()
        return settled

    async def refresh(
        self, session_id: object, transcript: TranscriptInput | None = None
    ) -> AnalysisResult[AnalysisT]:
        """
        Recompute the analysis of a session and store it, even when fresh.

        Raises:
            The exceptions of ``get_or_compute``.
        """
        self._check_open()
        key = validate_session_id(session_id)
        turns = await self._turns(key, transcript)
        fingerprint = transcript_hash(turns)

        async def obtain() -> AnalysisResult[AnalysisT]:
            return await self._obtain(key, turns, fingerprint, force=True)

        flight = ("refresh", key, fingerprint, self._analyzer.analysis_version)
        result, shared = await self._flights.run(flight, obtain)
        # The caller that computed counted its miss in _obtain.
        settled = settle_flight(result, shared, self._stats)
        await self._flush_stats_if_due()
        return settled

    async def invalidate(
        self,
        session_id: object | None = None,
        *,
        analysis_version: str | None = None,
    ) -> int:
        """
        Delete stored analyses, by session, by analysis version, or both.

        Returns:
            The number of analyses deleted.

        Raises:
            InvalidInputError: neither filter is given, the session id is
                invalid, or ``analysis_version`` is not a non-empty string.
        """
        self._check_open()
        check_invalidate(session_id, analysis_version)
        key = None if session_id is None else validate_session_id(session_id)
        deleted = await self._io.invalidate(key, analysis_version)
        self._memory.forget(key)
        logger.info(
            "Invalidated %d cached analyses (session %s, analysis version %s)",
            deleted,
            key,
            analysis_version,
        )
        return deleted

    async def get(
        self, session_id: object, transcript: TranscriptInput | None = None
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Return the stored analysis of a session without computing one.

        Returns:
            As ``AnalysisCache.get``.
        """
        self._check_open()
        key = validate_session_id(session_id)
        fingerprint = None
        if transcript is not None:
            fingerprint = transcript_hash(parse_transcript(transcript))
        return self._read(await self._io.fetch(key), fingerprint)

    async def get_by_conversation(
        self, conversation_id: str
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Return the cached analysis of a conversation, looked up by its
        ``salesai_sessions.conversation_id`` (see
        ``AnalysisCache.get_by_conversation``).

        Raises:
            InvalidInputError: ``conversation_id`` is not a non-empty string.
        """
        self._check_open()
        check_conversation_id(conversation_id)
        stored = await self._io.fetch_by_conversation(conversation_id)
        cached = self._read(stored, None)
        if cached is not None:
            log_found(logger, cached)
        return cached

    async def get_many(self, session_ids: Iterable[object]) -> BatchResult[AnalysisT]:
        """
        Return the stored analyses of many sessions without computing any
        (see ``AnalysisCache.get_many``).

        Raises:
            InvalidInputError: ``session_ids`` is a string or not iterable,
                or an id is not a UUID; raised before any request.
            CacheStoreError: the database call failed.
        """
        self._check_open()
        keys = check_session_ids(session_ids)
        if not keys:
            return BatchResult()
        fetch_many = getattr(self._store, "fetch_many", None)
        if callable(fetch_many):
            rows: list[StoredAnalysis] = await self._io.retried(
                f"Reading the analyses of {len(keys)} sessions",
                lambda: fetch_many(keys),
            )
        else:
            # A custom store without fetch_many: one lookup per session.
            fetched = [await self._io.fetch(key) for key in keys]
            rows = [row for row in fetched if row is not None]
        return build_batch(keys, rows, lambda row: self._read(row, None), logger)

    async def _turns(
        self, session_id: str, transcript: TranscriptInput | None
    ) -> tuple[Turn, ...]:
        if transcript is not None:
            return parse_transcript(transcript)
        raw = await self._io.fetch_transcript(session_id)
        return parse_stored_transcript(session_id, raw)

    async def _obtain(
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
            try:
                lookup = await self._io.lookup(
                    session_id,
                    fingerprint,
                    version,
                    claimant,
                    self._lease_seconds,
                    force=force_claim,
                )
            except asyncio.CancelledError:
                # The lookup may have taken the claim before the cancellation.
                await self._release_shielded(session_id, claimant)
                raise
            if lookup.claimed:
                verify = lookup.stored is None and await self._suspect_hidden(
                    session_id, fingerprint, claimant
                )
                computed = await self._compute(
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
                result = validate_stored(
                    stored, status, self._analyzer.output_model, logger
                )
                if result is not None:
                    log_found(logger, result, waited=elapsed if waited else None)
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
            await asyncio.sleep(min(delay, self._wait_timeout - elapsed))
            delay = min(delay * 1.5, self._max_poll_interval)

    async def _compute(
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
        if isinstance(self._analyzer, ThreadedAnalyzer):
            output = await self._analyze_in_thread(
                session_id, turns, fingerprint, claimant
            )
        else:
            try:
                output = await self._analyzer.analyze(turns)
            except BaseException:
                # Let another caller take over at once instead of after the
                # lease.
                await self._release_shielded(session_id, claimant)
                raise
        logger.debug(
            "Computed the analysis of session %s with %s in %.2f s",
            session_id,
            output.model,
            time.perf_counter() - started,
        )
        version = self._analyzer.analysis_version
        write = PendingWrite(output, fingerprint, version)
        # The analysis is paid for from here on: the save runs in a task of
        # its own, which a cancellation of the caller leaves running.
        save = self._background(
            self._io.save(session_id, **write.save_arguments(), claimant=claimant)
        )
        try:
            stored = await asyncio.shield(save)
        except asyncio.CancelledError:
            save.add_done_callback(
                functools.partial(self._saved_late, session_id, write, claimant)
            )
            raise
        except (ConfigurationError, SessionNotFoundError):
            await self._release_shielded(session_id, claimant)
            raise
        except CacheStoreError as error:
            # The analysis is paid for and valid: serve it, and keep it to
            # write on the next request for the session or flush_pending().
            await self._release_shielded(session_id, claimant)
            self._memory.keep(session_id, write, error)
            return write.result(session_id, CacheStatus.MISS)
        except BaseException:
            await self._release_shielded(session_id, claimant)
            raise
        self._memory.saved(session_id, fingerprint, version)
        if verify and await self._io.fetch(session_id) is None:
            raise self._memory.hide(session_id)
        return build_miss(session_id, output, stored, fingerprint, version)

    # _suspect_hidden, _serve_pending and _write_pending mirror those of
    # AnalysisCache line for line; they are separate because the store calls
    # are awaited. The decisions are WriteMemory's, shared by both.

    async def _suspect_hidden(
        self, session_id: str, fingerprint: str, claimant: str
    ) -> bool:
        hidden, suspect = self._memory.suspect_hidden(
            session_id, fingerprint, self._analyzer.analysis_version
        )
        if hidden:
            await self._release_shielded(session_id, claimant)
            raise hidden_error(session_id)
        return suspect

    async def _serve_pending(
        self, session_id: str, fingerprint: str
    ) -> AnalysisResult[AnalysisT] | None:
        write = self._memory.pending(session_id)
        if write is None:
            return None
        await self._write_pending(session_id)
        return self._memory.serve(
            session_id, write, fingerprint, self._analyzer.analysis_version
        )

    async def _write_pending(self, session_id: str) -> bool:
        write = self._memory.pending(session_id)
        if write is None:
            return False
        try:
            await self._io.save(session_id, **write.save_arguments())
        except PENDING_WRITE_ERRORS as error:
            return self._memory.written(session_id, write, error)
        return self._memory.written(session_id, write, None)

    def _background(self, work: Awaitable[_T]) -> asyncio.Future[_T]:
        """
        Run ``work`` in a task that ``aclose`` waits for.
        """
        task = asyncio.ensure_future(work)
        # The loop keeps only weak references to tasks.
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        return task

    async def _analyze_in_thread(
        self,
        session_id: str,
        turns: Sequence[Turn],
        fingerprint: str,
        claimant: str,
    ) -> AnalyzerOutput[AnalysisT]:
        """
        Await a sync analyzer's thread. A thread runs on to the end of its
        model call whatever happens to the caller. So when the caller is
        cancelled, the claim stays and the analysis is saved once the thread
        returns, and other callers wait for it instead of paying again (until
        the lease ends, when one of them takes the claim over).
        """
        job = self._background(self._analyzer.analyze(turns))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(
                functools.partial(
                    self._computed_late, session_id, fingerprint, claimant
                )
            )
            raise
        except BaseException:
            await self._release_shielded(session_id, claimant)
            raise

    def _computed_late(
        self,
        session_id: str,
        fingerprint: str,
        claimant: str,
        analysis: asyncio.Future[AnalyzerOutput[AnalysisT]],
    ) -> None:
        """
        Save what a sync analyzer returned after its caller was cancelled,
        or release the claim when it failed.
        """
        if analysis.cancelled() or analysis.exception() is not None:
            self._background(self._release_quietly(session_id, claimant))
            return
        write = PendingWrite(
            analysis.result(), fingerprint, self._analyzer.analysis_version
        )
        save = self._background(
            self._io.save(session_id, **write.save_arguments(), claimant=claimant)
        )
        save.add_done_callback(
            functools.partial(self._saved_late, session_id, write, claimant)
        )

    def _saved_late(
        self,
        session_id: str,
        write: PendingWrite[AnalysisT],
        claimant: str,
        save: asyncio.Future[StoredAnalysis],
    ) -> None:
        """
        Settle the save of a caller that was cancelled while it ran: keep a
        failed write in memory like any other, and release the claim.
        """
        error = None if save.cancelled() else save.exception()
        if save.cancelled() or error is not None:
            if isinstance(error, CacheStoreError) and not isinstance(
                error, (ConfigurationError, SessionNotFoundError)
            ):
                self._memory.keep(session_id, write, error)
            self._background(self._release_quietly(session_id, claimant))
            return
        self._memory.saved(session_id, write.fingerprint, write.version)
        logger.debug(
            "Stored the analysis of session %s after its caller was cancelled",
            session_id,
        )

    async def _release_shielded(self, session_id: str, claimant: str) -> None:
        """
        Release the claim, even when the calling task is being cancelled: the
        release runs in a task of its own that a second cancellation of the
        caller does not stop.
        """
        release = self._background(self._release_quietly(session_id, claimant))
        # Cancelled again while releasing: the release task finishes alone.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(release)

    async def _release_quietly(self, session_id: str, claimant: str) -> None:
        try:
            await self._io.release(session_id, claimant)
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
        return read_stored(
            stored,
            fingerprint,
            self._analyzer.output_model,
            self._analyzer.analysis_version,
            logger,
        )


def _async_analyzer(
    analyzer: AsyncAnalyzer[AnalysisT] | Analyzer[AnalysisT],
) -> AsyncAnalyzer[AnalysisT]:
    """
    Return an async analyzer as it is, and a sync one in ``ThreadedAnalyzer``.
    """
    if inspect.iscoroutinefunction(getattr(analyzer, "analyze", None)):
        async_analyzer: AsyncAnalyzer[AnalysisT] = analyzer  # type: ignore[assignment]  # checked above
        return async_analyzer
    return ThreadedAnalyzer(analyzer)  # type: ignore[arg-type]  # a sync analyzer


def _make_async_store(client: Any) -> AsyncAnalysisStore:
    """
    Wrap a client in the async store for its library, importing that library
    lazily.
    """
    kind = client_kind(client)
    if kind == "supabase":
        from ._stores.async_supabase import AsyncSupabaseStore

        return AsyncSupabaseStore(client)
    if kind == "psycopg":
        from ._stores.async_postgres import AsyncPostgresStore

        return AsyncPostgresStore(client)
    if kind == "store" and all(
        inspect.iscoroutinefunction(getattr(client, name)) for name in STORE_METHODS
    ):
        store: AsyncAnalysisStore = client
        return store
    raise TypeError(
        f"unsupported client {type(client).__module__}.{type(client).__name__}: "
        "expected a supabase AsyncClient, a psycopg AsyncConnection or an "
        "AsyncAnalysisStore"
    )
