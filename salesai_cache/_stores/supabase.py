"""
AnalysisStore over Supabase's REST API (PostgREST), through supabase-py.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from postgrest import (
    APIError,
    APIResponse,
    CountMethod,
    ReturnMethod,
    SyncPostgrestClient,
    SyncRequestBuilder,
    SyncRPCFilterRequestBuilder,
    SyncSelectRequestBuilder,
)
from postgrest.base_request_builder import SingleAPIResponse
from supabase import Client

from .._models import Lookup, StoredAnalysis, TokenUsage
from .._stats import StatsRow
from ..exceptions import (
    CacheStoreError,
    ConfigurationError,
    SalesAICacheError,
    SessionNotFoundError,
)
from ._rows import (
    ANALYSIS_COLUMNS,
    ANALYSIS_TABLE,
    CLAIMS_TABLE,
    LOOKUP_FUNCTION,
    SAVE_FUNCTION,
    SESSIONS_TABLE,
    STATS_TABLE,
    lookup_params,
    row_to_lookup,
    row_to_stored,
    translate_error,
)

__all__ = ["SupabaseStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_SELECT = ",".join(ANALYSIS_COLUMNS)
# The inner join keeps only analyses whose session has the conversation id,
# so the lookup is one request instead of one per session.
_SELECT_BY_CONVERSATION = f"{_SELECT},{SESSIONS_TABLE}!inner(conversation_id)"
_FUNCTION_TABLES = f"{ANALYSIS_TABLE} and {CLAIMS_TABLE}"
_MINIMAL = ReturnMethod("minimal")
# The longest request URL that get_many sends, in bytes once percent-encoded.
# 8 KB is the limit this library documents, chosen as a common request-line
# limit of proxies in front of PostgREST (an estimate, not a PostgREST limit).
MAX_URL_BYTES = 8192
_EXACT = CountMethod("exact")


class SupabaseStore:
    """
    Reads and writes analyses through a supabase-py client.

    Every request runs as the role of the client's key or signed-in user, so
    row-level security applies: with a user's JWT only that user's sessions
    are visible.

    Args:
        client: a sync supabase ``Client``, or a ``postgrest.SyncPostgrestClient``
            pointed at ``<project>/rest/v1``.

    Raises:
        TypeError: ``client`` is neither, such as an async client.
    """

    def __init__(self, client: Client | SyncPostgrestClient) -> None:
        if not isinstance(client, (Client, SyncPostgrestClient)):
            raise TypeError(
                f"unsupported client {type(client).__module__}."
                f"{type(client).__name__}: SupabaseStore needs a sync supabase "
                "Client (from create_client) or a postgrest.SyncPostgrestClient"
            )
        self._client = client

    def fetch(self, session_id: str) -> StoredAnalysis | None:
        """
        Return the stored analysis of a session, or ``None``.
        """
        request = (
            self._table(ANALYSIS_TABLE)
            .select(_SELECT)
            .eq("session_id", session_id)
            .limit(1)
            .retry(False)
        )
        response = self._execute(
            request.execute,
            action=f"reading the analysis of session {session_id}",
            table=ANALYSIS_TABLE,
        )
        rows = _row_list(response)
        logger.debug(
            "Read %d analysis rows of session %s via PostgREST", len(rows), session_id
        )
        return row_to_stored(rows[0]) if rows else None

    def fetch_many(self, session_ids: Sequence[str]) -> list[StoredAnalysis]:
        """
        Return the stored analyses of the given sessions, in no particular
        order; sessions without one are left out.

        The ids go in ``session_id=in.(...)`` filters, split over as few GET
        requests as keep each percent-encoded URL within ``MAX_URL_BYTES``.

        Raises:
            CacheStoreError: a request failed, or one id alone makes the URL
                too long (the project URL is then very long).
        """
        stored: list[StoredAnalysis] = []
        for chunk in _chunks(session_ids, self._url_bytes):
            request = (
                self._table(ANALYSIS_TABLE)
                .select(_SELECT)
                .in_("session_id", chunk)
                .retry(False)
            )
            response = self._execute(
                request.execute,
                action=f"reading the analyses of {len(chunk)} sessions",
                table=ANALYSIS_TABLE,
            )
            stored.extend(row_to_stored(row) for row in _row_list(response))
        logger.debug(
            "Read %d analyses of %d sessions via PostgREST",
            len(stored),
            len(session_ids),
        )
        return stored

    def _url_bytes(self, session_ids: list[str]) -> int:
        return _url_bytes(
            self._table(ANALYSIS_TABLE).select(_SELECT).in_("session_id", session_ids)
        )

    def fetch_by_conversation(self, conversation_id: str) -> StoredAnalysis | None:
        """
        Return the most recently updated analysis of any session with this
        ``conversation_id``, or ``None``.
        """
        # postgrest-py sends an eq. value as it is, and PostgREST reads
        # everything after "eq." of a top-level filter literally, so commas,
        # dots, parentheses and quotes need no escaping here (quoting would
        # make the quotes part of the value).
        request = (
            self._table(ANALYSIS_TABLE)
            .select(_SELECT_BY_CONVERSATION)
            .eq(f"{SESSIONS_TABLE}.conversation_id", conversation_id)
            .order("updated_at", desc=True)
            .limit(1)
            .retry(False)
        )
        response = self._execute(
            request.execute,
            action="looking up an analysis by conversation id",
            table=f"{ANALYSIS_TABLE} joined with {SESSIONS_TABLE}",
        )
        rows = _row_list(response)
        return row_to_stored(rows[0]) if rows else None

    def fetch_transcript(self, session_id: str) -> Any:
        """
        Return the ``transcript`` column of a session.

        Raises:
            SessionNotFoundError: no session with this id is visible to the
                client's role.
        """
        request = (
            self._table(SESSIONS_TABLE)
            .select("transcript")
            .eq("id", session_id)
            .limit(1)
            .retry(False)
        )
        response = self._execute(
            request.execute,
            action=f"reading the transcript of session {session_id}",
            table=SESSIONS_TABLE,
        )
        rows = _row_list(response)
        if not rows:
            raise SessionNotFoundError(session_id)
        return rows[0].get("transcript")

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
        Return the stored analysis with its freshness, taking the compute
        claim when it is not fresh (or ``force``): one ``POST
        /rpc/salesai_lookup_analysis``.

        Raises:
            SessionNotFoundError: a claim was attempted and no session has
                this id.
            SchemaMismatchError: migration 002 is not applied.
        """
        params = lookup_params(
            session_id,
            transcript_hash,
            analysis_version,
            claimant,
            lease_seconds,
            force,
        )
        response = self._execute(
            self._rpc(LOOKUP_FUNCTION, params).execute,
            action=f"looking up the analysis of session {session_id}",
            table=_FUNCTION_TABLES,
            session_id=session_id,
            function=LOOKUP_FUNCTION,
        )
        return _looked_up(response, session_id)

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
        Upsert the analysis of a session, release ``claimant``'s claim and
        return the stored row: one ``POST /rpc/salesai_save_analysis``.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        params = _save_params(
            session_id,
            analysis,
            model,
            usage,
            transcript_hash,
            analysis_version,
            claimant,
        )
        response = self._execute(
            self._rpc(SAVE_FUNCTION, params).execute,
            action=f"saving the analysis of session {session_id}",
            table=_FUNCTION_TABLES,
            session_id=session_id,
            function=SAVE_FUNCTION,
        )
        return _saved(response, session_id, self._role)

    def release(self, session_id: str, claimant: str) -> None:
        """
        Delete ``claimant``'s claim on a session, if the claim is still its own.
        """
        request = (
            self._table(CLAIMS_TABLE)
            .delete(returning=_MINIMAL)
            .eq("session_id", session_id)
            .eq("claimant", claimant)
            .retry(False)
        )
        self._execute(
            request.execute,
            action=f"releasing the claim on session {session_id}",
            table=CLAIMS_TABLE,
        )
        logger.debug("Released the claim on session %s via PostgREST", session_id)

    def invalidate(
        self,
        session_id: str | None = None,
        analysis_version: str | None = None,
    ) -> int:
        """
        Delete the stored analyses that match every given filter and return
        how many were deleted (PostgREST's exact count, without the rows).

        Raises:
            ValueError: neither filter is given.
        """
        _check_filters(session_id, analysis_version)
        request: SyncSelectRequestBuilder = self._table(ANALYSIS_TABLE).delete(
            count=_EXACT, returning=_MINIMAL
        )
        if session_id is not None:
            request = request.eq("session_id", session_id)
        if analysis_version is not None:
            request = request.eq("analysis_version", analysis_version)
        response: APIResponse = self._execute(
            request.retry(False).execute,
            action="invalidating stored analyses",
            table=ANALYSIS_TABLE,
        )
        return _deleted(response)

    def record_stats(self, rows: Sequence[StatsRow]) -> int:
        """
        Insert counter rows into ``salesai_cache_stats`` in one request and
        return ``len(rows)``: an upsert that ignores ids the table has
        (``on conflict (id) do nothing``), returning nothing.

        Raises:
            SchemaMismatchError: the table is missing (migration 003).
        """
        if not rows:
            return 0
        request = _stats_upsert(self._table(STATS_TABLE), rows)
        self._execute(
            request.execute,
            action=f"recording {len(rows)} rows of cache counters",
            table=STATS_TABLE,
        )
        logger.debug("Recorded %d rows of cache counters via PostgREST", len(rows))
        return len(rows)

    def _table(self, name: str) -> SyncRequestBuilder:
        # Asked for on every call: supabase-py builds a new PostgREST client
        # with the new token when the user signs in or out.
        return self._client.table(name)

    def _rpc(
        self, function: str, params: dict[str, Any]
    ) -> SyncRPCFilterRequestBuilder:
        # postgrest-py retries only GET and HEAD, so a POST is not retried now.
        # Turning retries off keeps it that way if postgrest-py's rules change.
        builder: SyncRPCFilterRequestBuilder = self._client.rpc(function, params)
        builder.retry(False)
        return builder

    def _role(self) -> str:
        """
        Return the ``role`` claim of the JWT that requests carry, for error
        messages; the token itself is never shown.
        """
        return _role_of(self._table(ANALYSIS_TABLE).headers)

    def _execute(
        self,
        call: Callable[[], _T],
        *,
        action: str,
        table: str,
        session_id: str | None = None,
        function: str | None = None,
    ) -> _T:
        try:
            return call()
        except (APIError, httpx.HTTPError) as error:
            raise _request_error(
                error,
                action=action,
                table=table,
                session_id=session_id,
                function=function,
                role=self._role,
            ) from error


def _request_error(
    error: APIError | httpx.HTTPError,
    *,
    action: str,
    table: str,
    session_id: str | None,
    function: str | None,
    role: Callable[[], str],
) -> SalesAICacheError:
    """
    Return the library exception for a failed PostgREST request; ``role``
    is asked for the requests' role only to name it in a permission error.
    """
    if isinstance(error, APIError):
        logger.debug("%s failed with PostgREST code %s", action, error.code)
        return translate_error(
            error.code,
            error.message,
            action=action,
            table=table,
            session_id=session_id,
            schema_cache=True,
            function=function,
            role=role() if error.code == "42501" else None,
        )
    # The message names the host only, because the URL's query contains
    # filter values and the headers contain the API key.
    host = error.request.url.host if _has_request(error) else "Supabase"
    if isinstance(error, httpx.TimeoutException) and not isinstance(
        error, httpx.ConnectTimeout
    ):
        problem = f"timed out waiting for {host} to answer"
        advice = "the server is slow or overloaded; retry later"
    else:
        problem = f"could not reach {host}"
        advice = "check the project URL and the network, then retry"
    return CacheStoreError(
        f"{action} failed: {problem} ({type(error).__name__}); {advice}",
        # A timeout or a dropped connection may pass next time; an invalid
        # URL or a refused TLS handshake will not either way.
        retryable=isinstance(error, httpx.TransportError),
    )


def _save_params(
    session_id: str,
    analysis: dict[str, Any],
    model: str,
    usage: TokenUsage,
    transcript_hash: str | None,
    analysis_version: str | None,
    claimant: str | None,
) -> dict[str, Any]:
    return {
        "p_session_id": session_id,
        "p_analysis": analysis,
        "p_model": model,
        "p_prompt_tokens": usage.prompt_tokens,
        "p_completion_tokens": usage.completion_tokens,
        "p_total_tokens": usage.total_tokens,
        "p_transcript_hash": transcript_hash,
        "p_analysis_version": analysis_version,
        "p_claimant": claimant,
    }


def _looked_up(response: APIResponse, session_id: str) -> Lookup:
    rows = _row_list(response)
    if len(rows) != 1:
        raise CacheStoreError(
            f"{LOOKUP_FUNCTION} returned {len(rows)} rows for session "
            f"{session_id} instead of one: apply "
            "sql/migrations/002_add_freshness_and_claims.sql again"
        )
    found = row_to_lookup(rows[0])
    logger.debug(
        "Looked up session %s via PostgREST: fresh=%s claimed=%s",
        session_id,
        found.fresh,
        found.claimed,
    )
    return found


def _saved(
    response: APIResponse, session_id: str, role: Callable[[], str]
) -> StoredAnalysis:
    rows = _row_list(response)
    if not rows:
        # The function returns no row when an RLS policy lets the write
        # through but hides the row from the same role's SELECT.
        raise ConfigurationError(
            f"saving the analysis of session {session_id} returned no row: "
            f"role {role()} may write {ANALYSIS_TABLE} but not read "
            "it back, so every view would compute again; check the select "
            "policy in sql/policies.sql or use the service-role key",
            session_id=session_id,
        )
    logger.debug("Saved the analysis of session %s via PostgREST", session_id)
    return row_to_stored(rows[0])


def _check_filters(session_id: str | None, analysis_version: str | None) -> None:
    if session_id is None and analysis_version is None:
        raise ValueError(
            "invalidate needs a session_id, an analysis_version or both: "
            "deleting every analysis is not supported"
        )


def _deleted(response: APIResponse) -> int:
    if response.count is None:
        raise CacheStoreError(
            "invalidating stored analyses returned no count: PostgREST sent "
            "no Content-Range total for Prefer: count=exact"
        )
    logger.debug("Invalidated %d analyses via PostgREST", response.count)
    return response.count


def _role_of(headers: Mapping[str, Any]) -> str:
    """
    Return the ``role`` claim of the JWT in request ``headers``, for error
    messages; the token itself is never shown.
    """
    token = str(headers.get("authorization", "")).removeprefix("Bearer ")
    return (
        _jwt_role(token)
        or _jwt_role(str(headers.get("apikey", "")))
        or ("unknown (the key is not a JWT)")
    )


def _jwt_role(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    role = claims.get("role") if isinstance(claims, dict) else None
    return role if isinstance(role, str) else None


def _chunks(
    session_ids: Sequence[str], url_bytes: Callable[[list[str]], int]
) -> Iterator[list[str]]:
    """
    Split ``session_ids`` into the longest runs whose request URL, as
    ``url_bytes`` measures it, stays within ``MAX_URL_BYTES``.
    """
    pending = list(session_ids)
    while pending:
        chunk = [pending.pop(0)]
        size = url_bytes(chunk)
        if size > MAX_URL_BYTES:
            raise CacheStoreError(
                f"reading the analysis of session {chunk[0]} would need a "
                f"URL longer than {MAX_URL_BYTES} bytes: shorten the project "
                "URL"
            )
        # Each further id adds an encoded comma and itself; the estimate
        # is checked against the real URL below.
        while pending:
            step = len("%2C") + len(quote(pending[0], safe=""))
            if size + step > MAX_URL_BYTES:
                break
            size += step
            chunk.append(pending.pop(0))
        while len(chunk) > 1 and url_bytes(chunk) > MAX_URL_BYTES:
            pending.insert(0, chunk.pop())
        yield chunk


def _url_bytes(builder: Any) -> int:
    """
    Return the length of the URL that httpx would send for ``builder``.
    """
    config = builder.request
    url = httpx.URL(str(config.path), params=config.params)
    return len(str(url).encode("ascii"))


def _has_request(error: httpx.HTTPError) -> bool:
    try:
        error.request  # noqa: B018  (raises when the error has no request)
    except RuntimeError:
        return False
    return True


def _row_list(response: APIResponse | SingleAPIResponse) -> list[Mapping[str, Any]]:
    data = response.data
    rows: list[Mapping[str, Any]] = []
    if isinstance(data, list):
        rows = [row for row in data if isinstance(row, Mapping)]
    if not isinstance(data, list) or len(rows) != len(data):
        raise CacheStoreError(
            "PostgREST returned something other than a list of rows: check "
            "that the client points at <project>/rest/v1"
        )
    return rows


def _stats_upsert(table: Any, rows: Sequence[StatsRow]) -> Any:
    """
    Return the request that inserts counter rows and ignores the ids the
    table has, built the same way on a sync or an async request builder.
    """
    return table.upsert(
        [row.as_record() for row in rows],
        on_conflict="id",
        ignore_duplicates=True,
        returning=_MINIMAL,
    ).retry(False)
