"""
AnalysisStore over a direct PostgreSQL connection, through psycopg 3.

psycopg is an optional dependency (``pip install salesai-cache[postgres]``);
only this module imports it, and the package imports this module on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from .._models import StoredAnalysis, TokenUsage
from ..exceptions import CacheStoreError, SessionNotFoundError
from ._rows import (
    ANALYSIS_COLUMNS,
    ANALYSIS_TABLE,
    SESSIONS_TABLE,
    row_to_stored,
    translate_error,
)

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_COLUMNS = sql.SQL(", ").join(sql.Identifier(column) for column in ANALYSIS_COLUMNS)
_RESULT_COLUMNS = sql.SQL(", ").join(
    sql.Identifier("r", column) for column in ANALYSIS_COLUMNS
)
_ANALYSES = sql.Identifier("public", ANALYSIS_TABLE)
_SESSIONS = sql.Identifier("public", SESSIONS_TABLE)

_FETCH = sql.SQL("select {columns} from {analyses} where session_id = %s").format(
    columns=_COLUMNS, analyses=_ANALYSES
)
_FETCH_BY_CONVERSATION = sql.SQL(
    "select {columns} from {analyses} r join {sessions} s on s.id = r.session_id "
    "where s.conversation_id = %s order by r.updated_at desc limit 1"
).format(columns=_RESULT_COLUMNS, analyses=_ANALYSES, sessions=_SESSIONS)
_FETCH_TRANSCRIPT = sql.SQL("select transcript from {sessions} where id = %s").format(
    sessions=_SESSIONS
)
# updated_at is also kept current by a trigger; setting it here keeps the
# ordering of fetch_by_conversation right on databases without the trigger.
_SAVE = sql.SQL(
    "insert into {analyses} (session_id, analysis, model, prompt_tokens, "
    "completion_tokens, total_tokens) values (%s, %s, %s, %s, %s, %s) "
    "on conflict (session_id) do update set analysis = excluded.analysis, "
    "model = excluded.model, prompt_tokens = excluded.prompt_tokens, "
    "completion_tokens = excluded.completion_tokens, "
    "total_tokens = excluded.total_tokens, updated_at = now() "
    "returning {columns}"
).format(analyses=_ANALYSES, columns=_COLUMNS)


class PostgresStore:
    """
    Reads and writes analyses over a psycopg 3 connection.

    Each operation runs in ``conn.transaction()``. On an autocommit connection,
    or an idle one, it is a transaction of its own and commits. Inside a
    transaction that the caller opened, it is a savepoint, so it commits only
    when the caller commits.

    The connection's role must be able to read both tables and write
    ``salesai_analysis_results``; row-level security does not apply to the
    table owner or to roles with BYPASSRLS.

    Args:
        conn: a psycopg 3 ``Connection`` (sync).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def fetch(self, session_id: str) -> StoredAnalysis | None:
        """
        Return the stored analysis of a session, or ``None``.
        """
        row = self._one(
            _FETCH,
            (session_id,),
            action=f"reading the analysis of session {session_id}",
            table=ANALYSIS_TABLE,
        )
        logger.debug(
            "Read %s analysis of session %s via psycopg",
            "an" if row else "no",
            session_id,
        )
        return row_to_stored(row) if row else None

    def fetch_by_conversation(self, conversation_id: str) -> StoredAnalysis | None:
        """
        Return the most recently updated analysis of any session with this
        ``conversation_id``, or ``None``.
        """
        row = self._one(
            _FETCH_BY_CONVERSATION,
            (conversation_id,),
            action="looking up an analysis by conversation id",
            table=f"{ANALYSIS_TABLE} joined with {SESSIONS_TABLE}",
        )
        return row_to_stored(row) if row else None

    def fetch_transcript(self, session_id: str) -> Any:
        """
        Return the ``transcript`` column of a session.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        row = self._one(
            _FETCH_TRANSCRIPT,
            (session_id,),
            action=f"reading the transcript of session {session_id}",
            table=SESSIONS_TABLE,
        )
        if row is None:
            raise SessionNotFoundError(session_id)
        return row["transcript"]

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
        row = self._one(
            _SAVE,
            (
                session_id,
                Jsonb(analysis),
                model,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
            ),
            action=f"saving the analysis of session {session_id}",
            table=ANALYSIS_TABLE,
            session_id=session_id,
        )
        if row is None:
            # An RLS policy can let the insert through yet hide the row from
            # RETURNING's implicit select.
            raise CacheStoreError(
                f"saving the analysis of session {session_id} returned no row: "
                f"check the row-level security policies of {ANALYSIS_TABLE}"
            )
        logger.debug("Saved the analysis of session %s via psycopg", session_id)
        return row_to_stored(row)

    def _one(
        self,
        query: sql.Composed,
        params: tuple[Any, ...],
        *,
        action: str,
        table: str,
        session_id: str | None = None,
    ) -> Mapping[str, Any] | None:
        def run() -> DictRow | None:
            with (
                self._conn.transaction(),
                self._conn.cursor(row_factory=dict_row) as cursor,
            ):
                cursor.execute(query, params)
                return cursor.fetchone()

        return self._guard(run, action=action, table=table, session_id=session_id)

    def _guard(
        self,
        call: Callable[[], _T],
        *,
        action: str,
        table: str,
        session_id: str | None,
    ) -> _T:
        try:
            return call()
        except psycopg.OperationalError as error:
            # A broken socket has no SQLSTATE, so the message names the
            # exception type and the first line of its text.
            logger.debug("%s failed: %s", action, type(error).__name__)
            raise CacheStoreError(
                f"{action} failed: the database connection failed "
                f"({type(error).__name__}: {_first_line(error)}); check that the "
                "server is reachable, then retry with a new connection",
                code=error.sqlstate,
            ) from error
        except psycopg.Error as error:
            logger.debug("%s failed with SQLSTATE %s", action, error.sqlstate)
            diag_message = error.diag.message_primary if error.diag else None
            raise translate_error(
                error.sqlstate,
                diag_message or _first_line(error),
                action=action,
                table=table,
                session_id=session_id,
            ) from error


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
