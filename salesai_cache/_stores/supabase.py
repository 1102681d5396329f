"""
AnalysisStore over Supabase's REST API (PostgREST), through supabase-py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
from postgrest import APIError, APIResponse, SyncPostgrestClient, SyncRequestBuilder
from supabase import Client

from .._models import StoredAnalysis, TokenUsage
from ..exceptions import CacheStoreError, SessionNotFoundError
from ._rows import (
    ANALYSIS_COLUMNS,
    ANALYSIS_TABLE,
    SESSIONS_TABLE,
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

    def save(
        self,
        session_id: str,
        analysis: dict[str, Any],
        model: str,
        usage: TokenUsage,
    ) -> StoredAnalysis:
        """
        Upsert the analysis of a session and return the stored row.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        row = {
            "session_id": session_id,
            "analysis": analysis,
            "model": model,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        request = (
            self._table(ANALYSIS_TABLE)
            .upsert(row, on_conflict="session_id")
            .select(_SELECT)
            .retry(False)
        )
        response = self._execute(
            request.execute,
            action=f"saving the analysis of session {session_id}",
            table=ANALYSIS_TABLE,
            session_id=session_id,
        )
        rows = _row_list(response)
        if not rows:
            # PostgREST returns no row when an RLS policy lets the write
            # through but hides the row from the same role's SELECT.
            raise CacheStoreError(
                f"saving the analysis of session {session_id} returned no row: "
                f"the role may write {ANALYSIS_TABLE} but not read it back; "
                "check the select policy in sql/policies.sql"
            )
        logger.debug("Saved the analysis of session %s via PostgREST", session_id)
        return row_to_stored(rows[0])

    def _table(self, name: str) -> SyncRequestBuilder:
        # Asked for on every call: supabase-py builds a new PostgREST client
        # with the new token when the user signs in or out.
        return self._client.table(name)

    def _execute(
        self,
        call: Callable[[], _T],
        *,
        action: str,
        table: str,
        session_id: str | None = None,
    ) -> _T:
        try:
            return call()
        except APIError as error:
            logger.debug("%s failed with PostgREST code %s", action, error.code)
            raise translate_error(
                error.code,
                error.message,
                action=action,
                table=table,
                session_id=session_id,
                schema_cache=True,
            ) from error
        except httpx.HTTPError as error:
            # The message names the host only: the URL's query holds filter
            # values and the headers hold the API key.
            host = error.request.url.host if _has_request(error) else "Supabase"
            raise CacheStoreError(
                f"{action} failed: could not reach {host} "
                f"({type(error).__name__}); check the project URL and the network, "
                "then retry"
            ) from error


def _has_request(error: httpx.HTTPError) -> bool:
    try:
        error.request  # noqa: B018  (raises when the error has no request)
    except RuntimeError:
        return False
    return True


def _row_list(response: APIResponse) -> list[Mapping[str, Any]]:
    data = response.data
    rows: list[Mapping[str, Any]] = []
    if isinstance(data, list):
        rows = [row for row in data if isinstance(row, Mapping)]
    if not isinstance(data, list) or len(rows) != len(data):
        raise CacheStoreError(
            "PostgREST answered with something other than a list of rows: check "
            "that the client points at <project>/rest/v1"
        )
    return rows
