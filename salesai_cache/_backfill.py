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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import psycopg

from ._cache import AnalysisCache
from ._keys import transcript_hash
from ._protocols import Analyzer
from ._stats import CacheStats
from ._transcripts import parse_transcript
from .exceptions import ConfigurationError, InvalidInputError, SalesAICacheError

__all__ = [
    "BackfillReport",
    "check_sees_every_session",
    "find_pending",
    "is_current",
    "run_backfill",
]

logger = logging.getLogger(__name__)

_ClientT = TypeVar("_ClientT")

_CANDIDATES = """
select s.id::text, s.transcript, r.transcript_hash, r.analysis_version
from public.salesai_sessions as s
left join public.salesai_analysis_results as r on r.session_id = s.id
order by s.created_at, s.id
"""
# row_security_active is false for a superuser, a role with BYPASSRLS and the
# table's owner (unless FORCE ROW LEVEL SECURITY), exactly when PostgreSQL
# would filter the rows this role reads.
_RLS_ACTIVE = """
select current_user, pg_catalog.row_security_active('public.salesai_sessions')
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


def is_current(
    transcript: Any,
    stored_hash: str | None,
    stored_version: str | None,
    analysis_version: str,
) -> bool:
    """
    Tell whether a session's stored analysis is current: made by
    ``analysis_version`` from the transcript the session contains now.

    Every backfill decides with this function, whatever it reads the
    sessions through. A session without an analysis has ``None`` for both
    stored values. A transcript that does not parse is never current, so the
    cache reports its error.
    """
    if stored_version != analysis_version or stored_hash is None:
        return False
    try:
        current = transcript_hash(parse_transcript(transcript))
    except InvalidInputError:
        return False
    return current == stored_hash


def check_sees_every_session(conn: psycopg.Connection[Any]) -> None:
    """
    Fail when row-level security filters the sessions this connection reads.

    A role under RLS, such as ``authenticated``, reads no session or only its
    own, so a backfill would report few or none as if that were all.

    Raises:
        ConfigurationError: RLS applies to the connected role on
            ``salesai_sessions``.
    """
    row = conn.execute(_RLS_ACTIVE).fetchone()
    if row is not None and row[1]:
        raise ConfigurationError(
            f"role {row[0]} is subject to row-level security on "
            "public.salesai_sessions, so a backfill would see only the "
            "sessions its policies show: connect as the table's owner, a role "
            "with BYPASSRLS, or through Supabase with the service-role key"
        )


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
            if is_current(transcript, stored_hash, stored_version, analysis_version):
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
    report: BackfillReport | None = None,
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
        report: the report to add the counts to, a new one by default;
            pass one to read what was done before an interrupt.

    Returns:
        The counts; a session that fails is reported and the others go on.

    Raises:
        InvalidInputError: ``concurrency`` is less than 1.
        ConfigurationError: row-level security filters the sessions that
            the connection's role reads (see ``check_sees_every_session``).
        KeyboardInterrupt: the backfill was interrupted; the analyses stored
            so far stay, and a new run skips them.
    """
    check_concurrency(concurrency)
    report = BackfillReport() if report is None else report
    with connect() as listing:
        check_sees_every_session(listing)
        todo = list(find_pending(listing, analyzer.analysis_version, report))
    analyse_pending(
        todo,
        connect,
        lambda conn: conn.close(),
        analyzer,
        report,
        concurrency=concurrency,
        progress=progress,
        progress_file=progress_file,
    )
    return report


def check_concurrency(concurrency: object) -> None:
    """
    Raise ``InvalidInputError`` unless ``concurrency`` is an int of 1 or more.
    """
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or concurrency < 1
    ):
        raise InvalidInputError(f"invalid concurrency {concurrency!r}: expected 1+")


def analyse_pending(
    todo: Sequence[tuple[str, Any]],
    connect: Callable[[], _ClientT],
    close: Callable[[_ClientT], None],
    analyzer: Analyzer[Any],
    report: BackfillReport,
    *,
    concurrency: int,
    progress: bool,
    progress_file: TextIO | None,
) -> None:
    """
    Run ``get_or_compute`` for each ``(session_id, transcript)`` of ``todo``
    on ``concurrency`` threads, each with its own client from ``connect``,
    and add the counts and failures to ``report``.

    A ``None`` transcript makes the cache read the session's own. Every
    client is passed to ``close`` at the end, also on an interrupt.
    """
    local = threading.local()
    caches: list[AnalysisCache[Any]] = []
    clients: list[_ClientT] = []
    lock = threading.Lock()

    def worker_cache() -> AnalysisCache[Any]:
        cache: AnalysisCache[Any] | None = getattr(local, "cache", None)
        if cache is None:
            client = connect()
            cache = AnalysisCache(client, analyzer)
            with lock:
                clients.append(client)
                caches.append(cache)
            local.cache = cache
        return cache

    def analyse(session_id: str, transcript: Any) -> None:
        worker_cache().get_or_compute(session_id, transcript)

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
            # Writes what a failed save left in memory, and the counters,
            # while the client is still open.
            cache.close()
        for client in clients:
            close(client)


def _progress_bar(total: int, enabled: bool, file: TextIO | None) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        logger.debug("tqdm is not installed: no progress bar")
        return None
    return tqdm(total=total, unit="session", file=file, desc="backfill")
