"""
Flushing the cache's counters to ``salesai_cache_stats`` (migration 003).

``StatsFlusher`` contains what both caches share: when a flush is due, which
rows to send, and what a failure means. The caches send the rows through
their store's ``record_stats``, sync or async.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time

from ._stats import StatsRecorder, StatsRow
from .exceptions import CacheStoreError, InvalidInputError

__all__ = [
    "DEFAULT_FLUSH_INTERVAL",
    "MAX_UNSENT_ROWS",
    "StatsFlusher",
    "check_flush_interval",
]

DEFAULT_FLUSH_INTERVAL = 60.0
# Rows kept while the database refuses them: one per model and analysis
# version per flush, so about 16 hours of a 60 s interval for one model.
MAX_UNSENT_ROWS = 1000

_MIGRATION_003 = "sql/migrations/003_add_cache_stats.sql"
# The table is missing: SQLSTATE over psycopg, PostgREST's code over the API.
_MISSING_TABLE = frozenset({"42P01", "PGRST205"})


def check_flush_interval(interval: object) -> float | None:
    """
    Return ``stats_flush_interval`` as seconds, or ``None`` (no automatic
    flush).

    Raises:
        InvalidInputError: the interval is not a positive, finite number.
    """
    if interval is None:
        return None
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not (interval > 0 and math.isfinite(interval))
    ):
        raise InvalidInputError(
            f"invalid stats_flush_interval {interval!r}: expected a number of "
            "seconds greater than 0, or None to flush only on flush_stats() "
            "and close"
        )
    return float(interval)


def worker_label() -> str:
    """
    Return this process as ``host:pid``, read at each flush because a fork
    changes the pid.
    """
    return f"{socket.gethostname()}:{os.getpid()}"


class StatsFlusher:
    """
    The flush bookkeeping of one cache.

    Rows that failed to be written keep their ids and are sent again with
    the next flush. The database ignores a row whose id it has, so a flush
    whose reply was lost counts once. A missing table (migration 003 not
    applied) logs one WARNING and turns flushing off for the life of the
    cache.

    Args:
        recorder: the counters to flush.
        interval: seconds between automatic flushes, ``None`` for none.
        enabled: whether the store can record stats at all.
        logger: where the cache logs.
    """

    def __init__(
        self,
        recorder: StatsRecorder,
        interval: float | None,
        *,
        enabled: bool,
        logger: logging.Logger,
    ) -> None:
        self._recorder = recorder
        self._interval = interval
        self._enabled = enabled
        self._logger = logger
        self._lock = threading.Lock()
        self._unsent: list[StatsRow] = []
        self._last_flush = time.monotonic()

    @property
    def enabled(self) -> bool:
        """
        Whether counters are still flushed.
        """
        return self._enabled

    def due(self) -> bool:
        """
        Return whether an automatic flush is due: one clock read, no I/O.
        """
        return (
            self._enabled
            and self._interval is not None
            and time.monotonic() - self._last_flush >= self._interval
        )

    def take(self) -> list[StatsRow]:
        """
        Return the rows to send now, rows of failed flushes first, and
        restart the interval; ``[]`` when flushing is off or nothing counted.

        Concurrent callers get disjoint rows, so two threads never send the
        same delta as two rows.
        """
        with self._lock:
            self._last_flush = time.monotonic()
            if not self._enabled:
                return []
            rows, self._unsent = self._unsent, []
        rows += [
            row
            for row in self._recorder.take_rows(worker_label())
            if row.hits or row.misses or row.waits or row.stale_served
        ]
        return rows

    def keep(self, rows: list[StatsRow]) -> None:
        """
        Keep ``rows`` for the next flush, silently: a cancelled flush.
        """
        self._keep(rows)

    def _keep(self, rows: list[StatsRow]) -> None:
        # The oldest rows go first when the bound is passed: counters are
        # lost then, never analyses.
        with self._lock:
            unsent = rows + self._unsent
            dropped = unsent[:-MAX_UNSENT_ROWS]
            self._unsent = unsent[-MAX_UNSENT_ROWS:]
        if dropped:
            self._logger.warning(
                "Dropped the %d oldest unsent rows of cache counters: more than "
                "%d are waiting for the database",
                len(dropped),
                MAX_UNSENT_ROWS,
            )

    def failed(self, rows: list[StatsRow], error: BaseException) -> None:
        """
        Keep ``rows`` for the next flush and log why they were not written;
        after a missing table, drop them and stop flushing.
        """
        if isinstance(error, CacheStoreError) and error.code in _MISSING_TABLE:
            with self._lock:
                already_off = not self._enabled
                self._enabled = False
                self._unsent = []
            if not already_off:
                self._logger.warning(
                    "Cache counters are not recorded in the database: table "
                    "salesai_cache_stats is missing (%s). Apply %s "
                    "(salesai-cache migrate); this cache no longer flushes "
                    "them, a cache created after the migration does",
                    error.code,
                    _MIGRATION_003,
                )
            return
        self._keep(rows)
        self._logger.warning(
            "Could not record %d rows of cache counters in the database; they "
            "are kept for the next flush: %s",
            len(rows),
            error,
        )
