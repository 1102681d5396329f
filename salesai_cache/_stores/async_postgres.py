"""
AsyncAnalysisStore over a direct PostgreSQL connection, through psycopg 3's
``AsyncConnection``.

The statements, the row conversion and the error translation are those of
``PostgresStore``; only the I/O differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row

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
from .postgres import (
    _FETCH,
    _FETCH_BY_CONVERSATION,
    _FETCH_MANY,
    _FETCH_TRANSCRIPT,
    _FUNCTION_TABLES,
    _LOOKUP,
    _RECORD_STATS,
    _RELEASE,
    _SAVE,
    _hidden_row_error,
    _invalidate_query,
    _looked_up,
    _save_params,
    _saved,
    _store_error,
    stats_params,
)

__all__ = ["AsyncPostgresStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class AsyncPostgresStore:
    """
    Reads and writes analyses over a psycopg 3 ``AsyncConnection``.

    Each operation is one statement, run as ``PostgresStore`` runs it: as it
    is on an idle autocommit connection, else in ``conn.transaction()``. A
    connection runs one statement at a time, so the store holds an
    ``asyncio.Lock`` around each operation and concurrent tasks take turns;
    under load, give each worker its own connection (for example from a
    ``psycopg_pool.AsyncConnectionPool``).

    Args:
        conn: a psycopg 3 ``AsyncConnection``.

    Raises:
        TypeError: ``conn`` is not an ``AsyncConnection``, such as a sync one.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not isinstance(conn, psycopg.AsyncConnection):
            raise TypeError(
                f"unsupported connection {type(conn).__module__}."
                f"{type(conn).__name__}: AsyncPostgresStore needs a "
                "psycopg.AsyncConnection"
            )
        self._conn = conn
        self._lock = asyncio.Lock()

    @property
    def connection(self) -> psycopg.AsyncConnection[Any]:
        """
        The connection the store uses.
        """
        return self._conn

    async def fetch(self, session_id: str) -> StoredAnalysis | None:
        """
        Return the stored analysis of a session, or ``None``.
        """
        row = await self._one(
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

    async def fetch_many(self, session_ids: Sequence[str]) -> list[StoredAnalysis]:
        """
        Return the stored analyses of the given sessions, in no particular
        order, in one query; sessions without one are left out.
        """

        async def run() -> list[DictRow]:
            async with (
                self._lock,
                self._transaction(),
                self._conn.cursor(row_factory=dict_row) as cursor,
            ):
                await cursor.execute(_FETCH_MANY, (list(session_ids),))
                return await cursor.fetchall()

        rows = await self._guard(
            run,
            action=f"reading the analyses of {len(session_ids)} sessions",
            table=ANALYSIS_TABLE,
            session_id=None,
        )
        logger.debug(
            "Read %d analyses of %d sessions via psycopg", len(rows), len(session_ids)
        )
        return [row_to_stored(row) for row in rows]

    async def fetch_by_conversation(
        self, conversation_id: str
    ) -> StoredAnalysis | None:
        """
        Return the most recently updated analysis of any session with this
        ``conversation_id``, or ``None``.
        """
        row = await self._one(
            _FETCH_BY_CONVERSATION,
            (conversation_id,),
            action="looking up an analysis by conversation id",
            table=f"{ANALYSIS_TABLE} joined with {SESSIONS_TABLE}",
        )
        return row_to_stored(row) if row else None

    async def fetch_transcript(self, session_id: str) -> Any:
        """
        Return the ``transcript`` column of a session.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        row = await self._one(
            _FETCH_TRANSCRIPT,
            (session_id,),
            action=f"reading the transcript of session {session_id}",
            table=SESSIONS_TABLE,
        )
        if row is None:
            raise SessionNotFoundError(session_id)
        return row["transcript"]

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
        claim when it is not fresh (or ``force``): one call of
        ``salesai_lookup_analysis``.

        Raises:
            SessionNotFoundError: a claim was attempted and no session has
                this id.
            SchemaMismatchError: migration 002 is not applied.
        """
        row = await self._one(
            _LOOKUP,
            lookup_params(
                session_id,
                transcript_hash,
                analysis_version,
                claimant,
                lease_seconds,
                force,
            ),
            action=f"looking up the analysis of session {session_id}",
            table=_FUNCTION_TABLES,
            session_id=session_id,
            function=LOOKUP_FUNCTION,
        )
        return _looked_up(row, session_id)

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
        return the stored row: one call of ``salesai_save_analysis``.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        row = await self._one(
            _SAVE,
            _save_params(
                session_id,
                analysis,
                model,
                usage,
                transcript_hash,
                analysis_version,
                claimant,
            ),
            action=f"saving the analysis of session {session_id}",
            table=_FUNCTION_TABLES,
            session_id=session_id,
            function=SAVE_FUNCTION,
        )
        if row is None:
            raise _hidden_row_error(session_id, await self._role())
        return _saved(row, session_id)

    async def release(self, session_id: str, claimant: str) -> None:
        """
        Delete ``claimant``'s claim on a session, if it still holds it.
        """
        await self._rowcount(
            _RELEASE,
            (session_id, claimant),
            action=f"releasing the claim on session {session_id}",
            table=CLAIMS_TABLE,
        )
        logger.debug("Released the claim on session %s via psycopg", session_id)

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
        query, params = _invalidate_query(session_id, analysis_version)
        deleted = await self._rowcount(
            query,
            params,
            action="invalidating stored analyses",
            table=ANALYSIS_TABLE,
        )
        logger.debug("Invalidated %d analyses via psycopg", deleted)
        return deleted

    async def record_stats(self, rows: Sequence[StatsRow]) -> int:
        """
        Insert counter rows into ``salesai_cache_stats`` in one statement, as
        ``PostgresStore.record_stats`` does.
        """
        if not rows:
            return 0
        await self._rowcount(
            _RECORD_STATS,
            stats_params(rows),
            action=f"recording {len(rows)} rows of cache counters",
            table=STATS_TABLE,
        )
        logger.debug("Recorded %d rows of cache counters via psycopg", len(rows))
        return len(rows)

    async def aclose(self) -> None:
        """
        Close the connection.
        """
        await self._conn.close()

    async def _one(
        self,
        query: sql.Composed | bytes,
        params: Sequence[Any] | Mapping[str, Any],
        *,
        action: str,
        table: str,
        session_id: str | None = None,
        function: str | None = None,
    ) -> Mapping[str, Any] | None:
        async def run() -> DictRow | None:
            async with (
                self._lock,
                self._transaction(),
                self._conn.cursor(row_factory=dict_row) as cursor,
            ):
                await cursor.execute(query, params)
                return await cursor.fetchone()

        return await self._guard(
            run, action=action, table=table, session_id=session_id, function=function
        )

    async def _rowcount(
        self,
        query: sql.Composed | bytes,
        params: tuple[Any, ...],
        *,
        action: str,
        table: str,
    ) -> int:
        async def run() -> int:
            async with self._lock, self._transaction(), self._conn.cursor() as cursor:
                await cursor.execute(query, params)
                return cursor.rowcount

        return await self._guard(run, action=action, table=table, session_id=None)

    def _transaction(self) -> contextlib.AbstractAsyncContextManager[Any]:
        # As in PostgresStore: no BEGIN and COMMIT on an idle autocommit
        # connection, where the one statement commits by itself.
        idle = self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if self._conn.autocommit and idle:
            return contextlib.nullcontext()
        return self._conn.transaction()

    async def _role(self) -> str:
        # As PostgresStore._role: for error messages only.
        try:
            async with self._lock, self._transaction(), self._conn.cursor() as cursor:
                row = await (await cursor.execute("select current_user")).fetchone()
        except psycopg.Error:
            return "unknown"
        return str(row[0]) if row else "unknown"

    async def _guard(
        self,
        call: Callable[[], Awaitable[_T]],
        *,
        action: str,
        table: str,
        session_id: str | None,
        function: str | None = None,
    ) -> _T:
        try:
            return await call()
        except psycopg.Error as error:
            raise _store_error(
                error,
                action=action,
                table=table,
                session_id=session_id,
                function=function,
                closed=self._conn.closed,
                role=await self._role() if error.sqlstate == "42501" else None,
            ) from error
