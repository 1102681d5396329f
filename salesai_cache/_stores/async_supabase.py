"""
AsyncAnalysisStore over Supabase's REST API (PostgREST), through supabase-py's
``AsyncClient``.

The requests, the row conversion and the error translation are those of
``SupabaseStore``; only the I/O differs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx
from postgrest import (
    APIError,
    APIResponse,
    AsyncPostgrestClient,
    AsyncRequestBuilder,
    AsyncRPCFilterRequestBuilder,
    AsyncSelectRequestBuilder,
)
from supabase import AsyncClient

from .._models import Lookup, StoredAnalysis, TokenUsage
from .._stats import StatsRow
from ..exceptions import SessionNotFoundError
from ._rows import (
    ANALYSIS_TABLE,
    CLAIMS_TABLE,
    LOOKUP_FUNCTION,
    SAVE_FUNCTION,
    SESSIONS_TABLE,
    STATS_TABLE,
    lookup_params,
    row_to_stored,
)
from .supabase import (
    _EXACT,
    _FUNCTION_TABLES,
    _MINIMAL,
    _SELECT,
    _SELECT_BY_CONVERSATION,
    _check_filters,
    _chunks,
    _deleted,
    _looked_up,
    _request_error,
    _role_of,
    _row_list,
    _save_params,
    _saved,
    _stats_upsert,
    _url_bytes,
)

__all__ = ["AsyncSupabaseStore", "close_async_client"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class AsyncSupabaseStore:
    """
    Reads and writes analyses through a supabase-py ``AsyncClient``.

    Every request runs as the role of the client's key or signed-in user, as
    with ``SupabaseStore``.

    Args:
        client: an async supabase ``AsyncClient`` (from ``acreate_client``),
            or a ``postgrest.AsyncPostgrestClient`` pointed at
            ``<project>/rest/v1``.

    Raises:
        TypeError: ``client`` is neither, such as a sync client.
    """

    def __init__(self, client: AsyncClient | AsyncPostgrestClient) -> None:
        if not isinstance(client, (AsyncClient, AsyncPostgrestClient)):
            raise TypeError(
                f"unsupported client {type(client).__module__}."
                f"{type(client).__name__}: AsyncSupabaseStore needs an async "
                "supabase AsyncClient (from acreate_client) or a "
                "postgrest.AsyncPostgrestClient"
            )
        self._client = client

    @property
    def client(self) -> AsyncClient | AsyncPostgrestClient:
        """
        The client the store sends requests with.
        """
        return self._client

    async def fetch(self, session_id: str) -> StoredAnalysis | None:
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
        response = await self._execute(
            request.execute,
            action=f"reading the analysis of session {session_id}",
            table=ANALYSIS_TABLE,
        )
        rows = _row_list(response)
        logger.debug(
            "Read %d analysis rows of session %s via PostgREST", len(rows), session_id
        )
        return row_to_stored(rows[0]) if rows else None

    async def fetch_many(self, session_ids: Sequence[str]) -> list[StoredAnalysis]:
        """
        Return the stored analyses of the given sessions, in no particular
        order, split over requests as ``SupabaseStore.fetch_many`` does;
        sessions without one are left out.

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
            response = await self._execute(
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

    async def fetch_by_conversation(
        self, conversation_id: str
    ) -> StoredAnalysis | None:
        """
        Return the most recently updated analysis of any session with this
        ``conversation_id``, or ``None``.
        """
        request = (
            self._table(ANALYSIS_TABLE)
            .select(_SELECT_BY_CONVERSATION)
            .eq(f"{SESSIONS_TABLE}.conversation_id", conversation_id)
            .order("updated_at", desc=True)
            .limit(1)
            .retry(False)
        )
        response = await self._execute(
            request.execute,
            action="looking up an analysis by conversation id",
            table=f"{ANALYSIS_TABLE} joined with {SESSIONS_TABLE}",
        )
        rows = _row_list(response)
        return row_to_stored(rows[0]) if rows else None

    async def fetch_transcript(self, session_id: str) -> Any:
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
        response = await self._execute(
            request.execute,
            action=f"reading the transcript of session {session_id}",
            table=SESSIONS_TABLE,
        )
        rows = _row_list(response)
        if not rows:
            raise SessionNotFoundError(session_id)
        return rows[0].get("transcript")

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
        response = await self._execute(
            self._rpc(LOOKUP_FUNCTION, params).execute,
            action=f"looking up the analysis of session {session_id}",
            table=_FUNCTION_TABLES,
            session_id=session_id,
            function=LOOKUP_FUNCTION,
        )
        return _looked_up(response, session_id)

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
        response = await self._execute(
            self._rpc(SAVE_FUNCTION, params).execute,
            action=f"saving the analysis of session {session_id}",
            table=_FUNCTION_TABLES,
            session_id=session_id,
            function=SAVE_FUNCTION,
        )
        return _saved(response, session_id, self._role)

    async def release(self, session_id: str, claimant: str) -> None:
        """
        Delete ``claimant``'s claim on a session, if it still holds it.
        """
        request = (
            self._table(CLAIMS_TABLE)
            .delete(returning=_MINIMAL)
            .eq("session_id", session_id)
            .eq("claimant", claimant)
            .retry(False)
        )
        await self._execute(
            request.execute,
            action=f"releasing the claim on session {session_id}",
            table=CLAIMS_TABLE,
        )
        logger.debug("Released the claim on session %s via PostgREST", session_id)

    async def invalidate(
        self,
        session_id: str | None = None,
        analysis_version: str | None = None,
    ) -> int:
        """
        Delete the stored analyses that match every given filter and return
        how many were deleted.

        Raises:
            ValueError: neither filter is given.
        """
        _check_filters(session_id, analysis_version)
        request: AsyncSelectRequestBuilder = self._table(ANALYSIS_TABLE).delete(
            count=_EXACT, returning=_MINIMAL
        )
        if session_id is not None:
            request = request.eq("session_id", session_id)
        if analysis_version is not None:
            request = request.eq("analysis_version", analysis_version)
        response: APIResponse = await self._execute(
            request.retry(False).execute,
            action="invalidating stored analyses",
            table=ANALYSIS_TABLE,
        )
        return _deleted(response)

    async def record_stats(self, rows: Sequence[StatsRow]) -> int:
        """
        Insert counter rows into ``salesai_cache_stats`` in one request, as
        ``SupabaseStore.record_stats`` does.
        """
        if not rows:
            return 0
        request = _stats_upsert(self._table(STATS_TABLE), rows)
        await self._execute(
            request.execute,
            action=f"recording {len(rows)} rows of cache counters",
            table=STATS_TABLE,
        )
        logger.debug("Recorded %d rows of cache counters via PostgREST", len(rows))
        return len(rows)

    async def aclose(self) -> None:
        """
        Close the HTTP clients of the supabase client (see
        ``close_async_client``).
        """
        await close_async_client(self._client)

    def _table(self, name: str) -> AsyncRequestBuilder:
        # Asked for on every call: supabase-py builds a new PostgREST client
        # with the new token when the user signs in or out.
        return self._client.table(name)

    def _rpc(
        self, function: str, params: dict[str, Any]
    ) -> AsyncRPCFilterRequestBuilder:
        builder: AsyncRPCFilterRequestBuilder = self._client.rpc(function, params)
        builder.retry(False)
        return builder

    def _role(self) -> str:
        return _role_of(self._table(ANALYSIS_TABLE).headers)

    async def _execute(
        self,
        call: Callable[[], Awaitable[_T]],
        *,
        action: str,
        table: str,
        session_id: str | None = None,
        function: str | None = None,
    ) -> _T:
        try:
            return await call()
        except (APIError, httpx.HTTPError) as error:
            raise _request_error(
                error,
                action=action,
                table=table,
                session_id=session_id,
                function=function,
                role=self._role,
            ) from error


async def close_async_client(client: AsyncClient | AsyncPostgrestClient) -> None:
    """
    Close the HTTP connections that a supabase ``AsyncClient`` holds.

    ``AsyncClient`` has no ``aclose``: it holds an ``httpx.AsyncClient`` in
    its auth client from the start, and one in each of the PostgREST, storage
    and functions clients that it creates on first use. Each one that exists
    is closed here; realtime opens no socket until a channel subscribes.
    """
    if isinstance(client, AsyncPostgrestClient):
        await client.aclose()
        return
    await client.auth.close()
    # Read the private slots: the public properties would create a client
    # only to close it.
    postgrest: AsyncPostgrestClient | None = getattr(client, "_postgrest", None)
    if postgrest is not None:
        await postgrest.aclose()
    sessions = (
        getattr(getattr(client, "_storage", None), "session", None),
        getattr(getattr(client, "_functions", None), "_client", None),
    )
    for session in sessions:
        if isinstance(session, httpx.AsyncClient):
            await session.aclose()
