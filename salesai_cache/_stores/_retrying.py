"""
RetryingStore and AsyncRetryingStore: any AnalysisStore or
AsyncAnalysisStore with transient failures retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import tenacity

from .._async_protocols import AsyncAnalysisStore, AsyncStatsStore
from .._models import Lookup, StoredAnalysis, TokenUsage
from .._protocols import AnalysisStore, StatsStore
from .._retry import STORE_RETRY, RetryPolicy, is_transient
from .._stats import StatsRow

__all__ = ["AsyncRetryingStore", "RetryingStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class RetryingStore:
    """
    Wraps a store and retries its calls that fail with a ``CacheStoreError``
    whose ``retryable`` is true: a lost connection, a timeout, an overloaded
    server or a 5xx reply. Permanent errors pass through at once.

    Each retried call is idempotent. Reads are. ``save`` is an upsert on
    ``session_id`` of the same values. ``lookup`` may have taken the claim
    before its reply was lost; the retry sends the same claimant, which
    ``salesai_lookup_analysis`` lets re-take its own claim, so it claims
    again instead of waiting for itself. ``release`` deletes only this
    claimant's claim. ``record_stats`` inserts rows whose ids the cache
    chose, and the database ignores an id it has, so a retry after a lost
    reply counts nothing twice. ``invalidate`` is not retried: a delete that
    committed before its reply was lost would report 0 rows the second time.

    Args:
        store: the store to wrap.
        policy: the attempts, waits and deadline.
        sleep: what waits between attempts.
    """

    def __init__(
        self,
        store: AnalysisStore,
        policy: RetryPolicy = STORE_RETRY,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._policy = policy
        self._sleep = sleep

    @property
    def inner(self) -> AnalysisStore:
        """
        The wrapped store.
        """
        return self._store

    def retried(self, action: str, call: Callable[[], _T]) -> _T:
        """
        Run ``call``, a read or another idempotent operation on the wrapped
        store, retried like the store's own methods; ``action`` names it in
        the retry log lines.
        """
        return self._call(action, call)

    def _call(self, name: str, call: Callable[[], _T]) -> _T:
        # Most calls succeed at once, so the first attempt runs without
        # building the tenacity machinery, which would cost as much as a cache
        # hit's own work. A failure is replayed as tenacity's first attempt, so
        # the waits, the log lines and the attempt count are tenacity's. The
        # deadline then counts from the first failure, not the first attempt.
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or self._policy.attempts == 1:
                raise
            first: BaseException | None = error
        retrying = tenacity.Retrying(
            sleep=self._sleep,
            **self._policy.tenacity_kwargs(is_transient, name=name),
        )
        for attempt in retrying:
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
                return call()
        raise AssertionError("unreachable")  # pragma: no cover  (tenacity raises)

    def fetch(self, session_id: str) -> StoredAnalysis | None:
        """
        ``AnalysisStore.fetch``, retried.
        """
        return self._call(
            f"Reading the analysis of session {session_id}",
            lambda: self._store.fetch(session_id),
        )

    def fetch_by_conversation(self, conversation_id: str) -> StoredAnalysis | None:
        """
        ``AnalysisStore.fetch_by_conversation``, retried.
        """
        return self._call(
            "Looking up an analysis by conversation id",
            lambda: self._store.fetch_by_conversation(conversation_id),
        )

    def fetch_transcript(self, session_id: str) -> Any:
        """
        ``AnalysisStore.fetch_transcript``, retried.
        """
        return self._call(
            f"Reading the transcript of session {session_id}",
            lambda: self._store.fetch_transcript(session_id),
        )

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
        ``AnalysisStore.lookup``, retried with the same claimant.
        """
        return self._call(
            f"Looking up the analysis of session {session_id}",
            lambda: self._store.lookup(
                session_id,
                transcript_hash,
                analysis_version,
                claimant,
                lease_seconds,
                force=force,
            ),
        )

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
        ``AnalysisStore.save``, retried: the upsert writes the same row again.
        """
        return self._call(
            f"Saving the analysis of session {session_id}",
            lambda: self._store.save(
                session_id,
                analysis,
                model,
                usage,
                transcript_hash=transcript_hash,
                analysis_version=analysis_version,
                claimant=claimant,
            ),
        )

    def release(self, session_id: str, claimant: str) -> None:
        """
        ``AnalysisStore.release``, retried.
        """
        self._call(
            f"Releasing the claim on session {session_id}",
            lambda: self._store.release(session_id, claimant),
        )

    def invalidate(
        self,
        session_id: str | None = None,
        analysis_version: str | None = None,
    ) -> int:
        """
        ``AnalysisStore.invalidate``, not retried.
        """
        return self._store.invalidate(session_id, analysis_version)

    def record_stats(self, rows: list[StatsRow]) -> int:
        """
        ``StatsStore.record_stats`` of the wrapped store, retried: the
        database ignores rows whose ids it has.
        """
        store = cast(StatsStore, self._store)
        return self._call(
            f"Recording {len(rows)} rows of cache counters",
            lambda: store.record_stats(rows),
        )


class AsyncRetryingStore:
    """
    ``RetryingStore`` for an ``AsyncAnalysisStore``: the same retried calls,
    log lines and policy, awaited, and waiting with ``asyncio.sleep`` so that
    a cancellation ends the wait at once and sends no further request.

    The methods mirror ``RetryingStore`` one by one; they are separate
    because each awaits its call, which a shared sync body cannot.

    Args:
        store: the store to wrap.
        policy: the attempts, waits and deadline.
        sleep: what waits between attempts.
    """

    def __init__(
        self,
        store: AsyncAnalysisStore,
        policy: RetryPolicy = STORE_RETRY,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._policy = policy
        self._sleep = sleep

    @property
    def inner(self) -> AsyncAnalysisStore:
        """
        The wrapped store.
        """
        return self._store

    async def retried(self, action: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """
        Await ``call``, retried as ``RetryingStore.retried`` runs it, the
        first attempt outside tenacity as there.
        """
        try:
            return await call()
        except Exception as error:
            if not is_transient(error) or self._policy.attempts == 1:
                raise
            first: BaseException | None = error
        retrying = tenacity.AsyncRetrying(
            sleep=self._sleep,
            **self._policy.tenacity_kwargs(is_transient, name=action),
        )
        async for attempt in retrying:
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
                return await call()
        raise AssertionError("unreachable")  # pragma: no cover  (tenacity raises)

    async def fetch(self, session_id: str) -> StoredAnalysis | None:
        """
        ``AsyncAnalysisStore.fetch``, retried.
        """
        return await self.retried(
            f"Reading the analysis of session {session_id}",
            lambda: self._store.fetch(session_id),
        )

    async def fetch_by_conversation(
        self, conversation_id: str
    ) -> StoredAnalysis | None:
        """
        ``AsyncAnalysisStore.fetch_by_conversation``, retried.
        """
        return await self.retried(
            "Looking up an analysis by conversation id",
            lambda: self._store.fetch_by_conversation(conversation_id),
        )

    async def fetch_transcript(self, session_id: str) -> Any:
        """
        ``AsyncAnalysisStore.fetch_transcript``, retried.
        """
        return await self.retried(
            f"Reading the transcript of session {session_id}",
            lambda: self._store.fetch_transcript(session_id),
        )

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
        ``AsyncAnalysisStore.lookup``, retried with the same claimant.
        """
        return await self.retried(
            f"Looking up the analysis of session {session_id}",
            lambda: self._store.lookup(
                session_id,
                transcript_hash,
                analysis_version,
                claimant,
                lease_seconds,
                force=force,
            ),
        )

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
        ``AsyncAnalysisStore.save``, retried: the upsert writes the same row
        again.
        """
        return await self.retried(
            f"Saving the analysis of session {session_id}",
            lambda: self._store.save(
                session_id,
                analysis,
                model,
                usage,
                transcript_hash=transcript_hash,
                analysis_version=analysis_version,
                claimant=claimant,
            ),
        )

    async def release(self, session_id: str, claimant: str) -> None:
        """
        ``AsyncAnalysisStore.release``, retried.
        """
        await self.retried(
            f"Releasing the claim on session {session_id}",
            lambda: self._store.release(session_id, claimant),
        )

    async def invalidate(
        self,
        session_id: str | None = None,
        analysis_version: str | None = None,
    ) -> int:
        """
        ``AsyncAnalysisStore.invalidate``, not retried (see ``RetryingStore``).
        """
        return await self._store.invalidate(session_id, analysis_version)

    async def record_stats(self, rows: list[StatsRow]) -> int:
        """
        ``AsyncStatsStore.record_stats`` of the wrapped store, retried (see
        ``RetryingStore``).
        """
        store = cast(AsyncStatsStore, self._store)
        return await self.retried(
            f"Recording {len(rows)} rows of cache counters",
            lambda: store.record_stats(rows),
        )
