"""
Backfill through Supabase's REST API, for projects reached with the project
URL and the service-role key instead of a PostgreSQL URL.

The sessions are listed through PostgREST in pages ordered by ``id``, each
page read with a keyset filter (``id=gt.<last id>``) instead of an offset.
``id`` is the primary key, so each page is one index range scan. Sessions
added or deleted during the listing do not shift the pages, whereas with
offsets they would make the listing skip or repeat sessions. ``created_at``
has no index, so ordering by it would sort the whole table for each page.
Whether a session's analysis is current is decided by ``is_current``, as
over PostgreSQL.

Each worker thread has its own supabase client, as each has its own
connection over PostgreSQL. httpx's client is thread-safe, but supabase-py's
``Client`` creates its PostgREST client on first use without a lock and
replaces it on auth events. It is not documented as thread-safe.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

import httpx
import tenacity
from postgrest import APIError, APIResponse
from supabase import Client

from ._backfill import (
    BackfillReport,
    analyse_pending,
    check_concurrency,
    is_current,
)
from ._protocols import Analyzer
from ._retry import STORE_RETRY, is_transient
from ._stores._rows import ANALYSIS_TABLE, SESSIONS_TABLE
from ._stores.supabase import _request_error, _role_of, _row_list
from .exceptions import CacheStoreError, ConfigurationError, InvalidInputError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "close_client",
    "find_pending_supabase",
    "run_backfill_supabase",
]

logger = logging.getLogger(__name__)

# Transcripts come with the listing, so a page keeps up to this many of them
# in memory at once, and a pending session keeps only its id afterwards. With
# long role-plays (an estimated 100 KB each) a page stays near 10 MB, and 100
# is below the max-rows of 1000 that Supabase projects have by default.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_FINGERPRINT = "transcript_hash,analysis_version"
LISTING_SELECT = f"id,transcript,{ANALYSIS_TABLE}({_FINGERPRINT})"
_API_ROLES = ("anon", "authenticated")
_PUBLISHABLE_KEY = re.compile(r"^sb_publishable_")


def find_pending_supabase(
    client: Client,
    analysis_version: str,
    report: BackfillReport,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Iterator[str]:
    """
    Yield the id of each session whose analysis is missing, or was made by
    another analysis version or from another transcript, in ``id`` order.

    Each page is one ``GET /rest/v1/salesai_sessions`` with the analysis
    fingerprint embedded through the foreign key; transient failures are
    retried as the cache's store calls are.

    Raises:
        CacheStoreError: a page could not be read, or PostgREST's reply has
            an unexpected shape.
    """
    after: str | None = None
    while True:
        rows = _read_page(client, after, page_size)
        # Only an empty page ends the listing: PostgREST returns fewer rows
        # than asked when its max-rows setting is lower than page_size.
        if not rows:
            return
        for row in rows:
            session_id, transcript, stored_hash, stored_version = _candidate(row)
            report.sessions += 1
            if is_current(transcript, stored_hash, stored_version, analysis_version):
                report.current += 1
            else:
                yield session_id
            after = session_id
        logger.debug("Listed %d sessions via PostgREST", report.sessions)


def run_backfill_supabase(
    connect: Callable[[], Client],
    analyzer: Analyzer[Any],
    *,
    concurrency: int = 4,
    page_size: int = DEFAULT_PAGE_SIZE,
    progress: bool = True,
    progress_file: TextIO | None = None,
    report: BackfillReport | None = None,
) -> BackfillReport:
    """
    Analyse every session without a current analysis through Supabase's REST
    API, ``concurrency`` at a time.

    Args:
        connect: creates a new sync supabase ``Client`` with the service-role
            (or secret) key; called once to list the sessions and once per
            worker thread. Each client is closed at the end.
        analyzer: what computes the analyses.
        concurrency: the number of worker threads (model calls in flight).
        page_size: sessions per listing request, 1 to 1000.
        progress: show a progress bar when tqdm is installed.
        progress_file: where the bar goes; stderr by default.
        report: the report to add the counts to, a new one by default;
            pass one to read what was done before an interrupt.

    Returns:
        The counts; a session that fails is reported and the others go on.

    Raises:
        InvalidInputError: ``concurrency`` or ``page_size`` is out of range.
        ConfigurationError: the client's key is the anon or a publishable
            key, or a user's token, whose requests row-level security filters.
        CacheStoreError: the sessions could not be listed.
        KeyboardInterrupt: the backfill was interrupted; the analyses stored
            so far stay, and a new run skips them.
    """
    check_concurrency(concurrency)
    _check_page_size(page_size)
    report = BackfillReport() if report is None else report
    listing = connect()
    try:
        _check_service_key(listing)
        todo = [
            (session_id, None)
            for session_id in find_pending_supabase(
                listing, analyzer.analysis_version, report, page_size=page_size
            )
        ]
    finally:
        close_client(listing)
    # The worker's cache reads each transcript again (one GET), so that the
    # list of pending sessions contains ids, not transcripts.
    analyse_pending(
        todo,
        connect,
        close_client,
        analyzer,
        report,
        concurrency=concurrency,
        progress=progress,
        progress_file=progress_file,
    )
    return report


def close_client(client: Client) -> None:
    """
    Close the HTTP connections of a sync supabase ``Client``.

    ``Client`` has no ``close``: its auth client has an ``httpx.Client``
    from the start, and its PostgREST client one from its first request.
    """
    client.auth.close()
    # The private slot: the public property would create a client only to
    # close it.
    postgrest = getattr(client, "_postgrest", None)
    if postgrest is not None:
        postgrest.aclose()


def _check_page_size(page_size: object) -> None:
    if (
        isinstance(page_size, bool)
        or not isinstance(page_size, int)
        or not 1 <= page_size <= MAX_PAGE_SIZE
    ):
        raise InvalidInputError(
            f"invalid page size {page_size!r}: expected 1 to {MAX_PAGE_SIZE}"
        )


def _check_service_key(client: Client) -> None:
    headers = client.table(SESSIONS_TABLE).headers
    role = _role_of(headers)
    publishable = _PUBLISHABLE_KEY.match(str(headers.get("apikey", "")))
    if role in _API_ROLES or publishable:
        shown = "a publishable key" if publishable else f"role {role}"
        raise ConfigurationError(
            f"the Supabase key runs requests as {shown}, which row-level "
            f"security limits to some sessions of {SESSIONS_TABLE}: use the "
            "service-role key (SUPABASE_SERVICE_ROLE_KEY) or a secret key "
            "(SUPABASE_SECRET_KEY)"
        )


def _read_page(
    client: Client, after: str | None, page_size: int
) -> list[Mapping[str, Any]]:
    action = "listing the sessions to backfill"

    def read() -> APIResponse:
        request = (
            client.table(SESSIONS_TABLE)
            .select(LISTING_SELECT)
            .order("id")
            .limit(page_size)
        )
        if after is not None:
            request = request.gt("id", after)
        try:
            response: APIResponse = request.retry(False).execute()
        except (APIError, httpx.HTTPError) as error:
            raise _request_error(
                error,
                action=action,
                table=f"{SESSIONS_TABLE} with {ANALYSIS_TABLE}",
                session_id=None,
                function=None,
                role=lambda: _role_of(client.table(SESSIONS_TABLE).headers),
            ) from error
        return response

    # A page read changes nothing, so a transient failure is retried.
    retrying = tenacity.Retrying(
        **STORE_RETRY.tenacity_kwargs(is_transient, name=action)
    )
    for attempt in retrying:
        with attempt:
            return _row_list(read())
    raise AssertionError("unreachable")  # pragma: no cover  (tenacity raises)


def _candidate(row: Mapping[str, Any]) -> tuple[str, Any, Any, Any]:
    """
    Return ``(session_id, transcript, stored hash, stored version)`` of one
    listed row.
    """
    session_id = row.get("id")
    if not isinstance(session_id, str):
        raise CacheStoreError(
            f"PostgREST listed a session without an id: {sorted(row)} columns"
        )
    embedded = row.get(ANALYSIS_TABLE)
    # PostgREST 11 and later return a one-to-one embed (session_id is unique)
    # as an object or null; earlier versions as an array of at most one.
    if isinstance(embedded, list):
        if len(embedded) > 1:
            raise CacheStoreError(
                f"session {session_id} has {len(embedded)} stored analyses: "
                "apply sql/migrations/001_add_conversation_id_and_caching.sql"
            )
        embedded = embedded[0] if embedded else None
    if embedded is None:
        return session_id, row.get("transcript"), None, None
    if not isinstance(embedded, Mapping):
        raise CacheStoreError(
            f"PostgREST embedded {ANALYSIS_TABLE} of session {session_id} as "
            f"{type(embedded).__name__}, not an object"
        )
    return (
        session_id,
        row.get("transcript"),
        embedded.get("transcript_hash"),
        embedded.get("analysis_version"),
    )
