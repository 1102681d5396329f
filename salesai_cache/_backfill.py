"""
Backfill: analyse every session that has no current analysis.

Used after a migration, a prompt or model change (a new analysis version), or
to warm the cache before a launch. Each worker thread has its own connection
and ``AnalysisCache``, so the cache's claims keep two workers, or two
backfills, from paying for the same session; an interrupted backfill resumes
from what it stored.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg

from ._cache import AnalysisCache
from ._keys import transcript_hash
from ._protocols import Analyzer
from ._stats import CacheStats
from ._transcripts import parse_transcript
from .exceptions import InvalidInputError, SalesAICacheError

__all__ = ["BackfillReport", "find_pending", "run_backfill"]

logger = logging.getLogger(__name__)

_CANDIDATES = """
select s.id::text, s.transcript, r.transcript_hash, r.analysis_version
from public.salesai_sessions as s
left join public.salesai_analysis_results as r on r.session_id = s.id
order by s.created_at, s.id
"""


@dataclass
class BackfillReport:
    """
    What a backfill did.

    ``sessions`` is every session read; ``current`` those whose analysis was
    already current; ``pending`` those sent to the cache; ``failed`` maps
    the sessions that failed to the error message (the transcript is never
    part of it).
    """

    sessions: int = 0
    current: int = 0
    pending: int = 0
    stats: CacheStats = field(default_factory=CacheStats)
    failed: dict[str, str] = field(default_factory=dict)


def find_pending(
    conn: psycopg.Connection[Any], analysis_version: str, report: BackfillReport
) -> Iterator[tuple[str, Any]]:
    """
    Yield ``(session_id, transcript)`` of each session whose analysis is
    missing, or was made by another analysis version or from another
    transcript, in the order the sessions were created.
    """
    # A server-side cursor streams the sessions; it needs a transaction.
    with (
        conn.transaction(),
        conn.cursor(name="salesai_backfill_candidates") as cursor,
    ):
        cursor.itersize = 500
        cursor.execute(_CANDIDATES)
        for session_id, transcript, stored_hash, stored_version in cursor:
            report.sessions += 1
            if stored_version == analysis_version and stored_hash is not None:
                try:
                    current = transcript_hash(parse_transcript(transcript))
                except InvalidInputError:
                    current = None
                if current == stored_hash:
                    report.current += 1
                    continue
            yield session_id, transcript


def run_backfill(
    connect: Callable[[], psycopg.Connection[Any]],
    analyzer: Analyzer[Any],
    *,
    concurrency: int = 4,
    progress: bool = True,
    progress_file: TextIO | None = None,
) -> BackfillReport:
    """
    Analyse every session without a current analysis, ``concurrency`` at a
    time.

    Args:
        connect: opens a new connection; called once to list the sessions
            and once per worker thread.
        analyzer: what computes the analyses.
        concurrency: the number of worker threads (model calls in flight).
        progress: show a progress bar (tqdm, from the ``cli`` extra) when
            tqdm is installed.
        progress_file: where the bar goes; stderr by default.

    Returns:
        The counts; a session that fails is reported and the others go on.

    Raises:
        InvalidInputError: ``concurrency`` is less than 1.
        KeyboardInterrupt: the backfill was interrupted; the analyses stored
            so far stay, and a new run skips them.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise InvalidInputError(f"invalid concurrency {concurrency!r}: expected 1+")
    if concurrency < 1:
        raise InvalidInputError(f"invalid concurrency {concurrency!r}: expected 1+")
    report = BackfillReport()
    local = threading.local()
    caches: list[AnalysisCache[Any]] = []
    connections: list[psycopg.Connection[Any]] = []
    lock = threading.Lock()

    def worker_cache() -> AnalysisCache[Any]:
        cache: AnalysisCache[Any] | None = getattr(local, "cache", None)
        if cache is None:
            conn = connect()
            cache = AnalysisCache(conn, analyzer)
            with lock:
                connections.append(conn)
                caches.append(cache)
            local.cache = cache
        return cache

    def analyse(session_id: str, transcript: Any) -> None:
        worker_cache().get_or_compute(session_id, transcript)

    with connect() as listing:
        todo = list(find_pending(listing, analyzer.analysis_version, report))
    report.pending = len(todo)
    logger.info(
        "Backfill: %d sessions, %d current, %d to analyse",
        report.sessions,
        report.current,
        report.pending,
    )
    bar = _progress_bar(len(todo), progress, progress_file)
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=concurrency, thread_name_prefix="salesai-backfill"
    )
    try:
        futures = {
            executor.submit(analyse, session_id, transcript): session_id
            for session_id, transcript in todo
        }
        for future in concurrent.futures.as_completed(futures):
            session_id = futures[future]
            try:
                future.result()
            except (SalesAICacheError, InvalidInputError) as error:
                report.failed[session_id] = str(error)
                logger.warning("Backfill of session %s failed: %s", session_id, error)
            if bar is not None:
                bar.update(1)
    finally:
        # On an interrupt, queued sessions are dropped; running ones finish
        # and store what they paid for.
        executor.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        for cache in caches:
            report.stats = report.stats + cache.stats()
        for conn in connections:
            conn.close()
    return report


def _progress_bar(total: int, enabled: bool, file: TextIO | None) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        logger.debug("tqdm is not installed: no progress bar")
        return None
    return tqdm(total=total, unit="session", file=file, desc="backfill")
