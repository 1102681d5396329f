"""
AnalysisStore over a direct PostgreSQL connection, through psycopg 3.

psycopg is an optional dependency (``pip install salesai-cache[postgres]``);
only this module imports it, and the package imports this module on first use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from .._models import Lookup, StoredAnalysis, TokenUsage
from .._retry import is_transient_store_code
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
    MIGRATION_002,
    SAVE_FUNCTION,
    SESSIONS_TABLE,
    STATS_COLUMNS,
    STATS_TABLE,
    lookup_params,
    row_to_lookup,
    row_to_stored,
    translate_error,
)

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


# Columns read as text. pydantic validates JSON text in one pass, faster than
# psycopg decoding a dict for pydantic to walk again. The cache wants the
# session id as a string anyway.
_AS_TEXT = frozenset({"session_id", "analysis"})


def _columns(*qualifier: str) -> sql.Composed:
    return sql.SQL(", ").join(
        sql.SQL("{}::text as {}").format(
            sql.Identifier(*qualifier, column), sql.Identifier(column)
        )
        if column in _AS_TEXT
        else sql.Identifier(*qualifier, column)
        for column in ANALYSIS_COLUMNS
    )


_COLUMNS = _columns()
_RESULT_COLUMNS = _columns("r")
_ANALYSES = sql.Identifier("public", ANALYSIS_TABLE)
_SESSIONS = sql.Identifier("public", SESSIONS_TABLE)
_CLAIMS = sql.Identifier("public", CLAIMS_TABLE)


def _render(query: sql.Composed) -> bytes:
    # psycopg renders a Composed query again on every execute, which costs
    # about as much as a single-row select on a local socket. These queries
    # are constant, so they are rendered once.
    return query.as_bytes()


_FETCH = _render(
    sql.SQL("select {columns} from {analyses} where session_id = %s").format(
        columns=_COLUMNS, analyses=_ANALYSES
    )
)
_FETCH_MANY = _render(
    sql.SQL(
        "select {columns} from {analyses} where session_id = any(%s::uuid[])"
    ).format(columns=_COLUMNS, analyses=_ANALYSES)
)
_FETCH_BY_CONVERSATION = _render(
    sql.SQL(
        "select {columns} from {analyses} r join {sessions} s "
        "on s.id = r.session_id "
        "where s.conversation_id = %s order by r.updated_at desc limit 1"
    ).format(columns=_RESULT_COLUMNS, analyses=_ANALYSES, sessions=_SESSIONS)
)
_FETCH_TRANSCRIPT = _render(
    sql.SQL("select transcript from {sessions} where id = %s").format(
        sessions=_SESSIONS
    )
)
# A fresh analysis is read with a plain select. The function, which may take
# the claim, runs only when that select finds nothing, because the Append node
# runs its branches in order and the limit stops it after the first row. So a
# hit costs about what a single-row select costs, and a miss is still one
# statement. The function is parallel-unsafe, so the plan is never parallel
# and the order holds. Its arguments are named, so that a function whose
# parameters were renamed fails as undefined (42883) instead of receiving
# values in the wrong places.
_LOOKUP = _render(
    sql.SQL(
        "(select {columns}, extract(epoch from pg_catalog.clock_timestamp() "
        "- updated_at)::double precision as age_seconds, true as fresh, "
        "false as claimed, null::timestamptz as claim_expires_at "
        "from {analyses} where session_id = %(p_session_id)s "
        "and transcript_hash = %(p_transcript_hash)s "
        "and analysis_version = %(p_analysis_version)s "
        "and not %(p_force)s) "
        "union all "
        "(select {columns}, age_seconds, fresh, claimed, claim_expires_at "
        "from {function}(p_session_id => %(p_session_id)s, "
        "p_transcript_hash => %(p_transcript_hash)s, "
        "p_analysis_version => %(p_analysis_version)s, "
        "p_claimant => %(p_claimant)s, p_lease_seconds => %(p_lease_seconds)s, "
        "p_force => %(p_force)s)) "
        "limit 1"
    ).format(
        columns=_COLUMNS,
        analyses=_ANALYSES,
        function=sql.Identifier("public", LOOKUP_FUNCTION),
    )
)
_SAVE = _render(
    sql.SQL(
        "select {columns} from {function}(p_session_id => %s, p_analysis => %s, "
        "p_model => %s, p_prompt_tokens => %s, p_completion_tokens => %s, "
        "p_total_tokens => %s, p_transcript_hash => %s, "
        "p_analysis_version => %s, p_claimant => %s)"
    ).format(columns=_COLUMNS, function=sql.Identifier("public", SAVE_FUNCTION))
)
_RELEASE = _render(
    sql.SQL("delete from {claims} where session_id = %s and claimant = %s").format(
        claims=_CLAIMS
    )
)
_FUNCTION_TABLES = f"{ANALYSIS_TABLE} and {CLAIMS_TABLE}"
# One statement for any number of rows: each column is sent as an array. A
# row whose id the table has was written by an earlier attempt and is skipped.
_RECORD_STATS = sql.SQL(
    "insert into {table} ({columns}) select * from unnest("
    "%s::uuid[], %s::text[], %s::text[], %s::text[], %s::bigint[], "
    "%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
    "%s::bigint[]) on conflict (id) do nothing"
).format(
    table=sql.Identifier("public", STATS_TABLE),
    columns=sql.SQL(", ").join(map(sql.Identifier, STATS_COLUMNS)),
)


class PostgresStore:
    """
    Reads and writes analyses over a psycopg 3 connection.

    Each operation is one statement. On an idle autocommit connection it runs
    as it is (one round trip); otherwise it runs in ``conn.transaction()``:
    on an idle connection, a transaction of its own that commits. Inside a
    transaction that the caller opened, it is a savepoint, so it commits only
    when the caller commits.

    The connection's role must be able to read both tables, write
    ``salesai_analysis_results`` and ``salesai_analysis_claims``, and execute
    the functions of migration 002; row-level security does not apply to the
    table owner or to roles with BYPASSRLS.

    Threads: one store, and its connection, may be shared by several threads.
    psycopg 3 lets threads share a connection but not run transactions on it
    at the same time, so the store holds a lock around each operation's
    transaction and the threads take turns. A lookup that waits for another
    worker's row lock therefore holds up every thread of this store. Under
    load, give each thread or process its own connection and store, for
    example from a ``psycopg_pool.ConnectionPool``.

    Args:
        conn: a psycopg 3 ``Connection`` (sync).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._lock = threading.Lock()

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

    def fetch_many(self, session_ids: Sequence[str]) -> list[StoredAnalysis]:
        """
        Return the stored analyses of the given sessions, in no particular
        order, in one query; sessions without one are left out.
        """

        def run() -> list[DictRow]:
            with (
                self._lock,
                self._transaction(),
                self._conn.cursor(row_factory=dict_row) as cursor,
            ):
                cursor.execute(_FETCH_MANY, (list(session_ids),))
                return cursor.fetchall()

        rows = self._guard(
            run,
            action=f"reading the analyses of {len(session_ids)} sessions",
            table=ANALYSIS_TABLE,
            session_id=None,
        )
        logger.debug(
            "Read %d analyses of %d sessions via psycopg", len(rows), len(session_ids)
        )
        return [row_to_stored(row) for row in rows]

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
        claim when it is not fresh (or ``force``): one call of
        ``salesai_lookup_analysis``.

        Raises:
            SessionNotFoundError: a claim was attempted and no session has
                this id.
            SchemaMismatchError: migration 002 is not applied.
        """
        row = self._one(
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
        return the stored row: one call of ``salesai_save_analysis``.

        Raises:
            SessionNotFoundError: no session has this id.
        """
        row = self._one(
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
            raise _hidden_row_error(session_id, self._role())
        return _saved(row, session_id)

    def release(self, session_id: str, claimant: str) -> None:
        """
        Delete ``claimant``'s claim on a session, if the claim is still its own.
        """
        self._rowcount(
            _RELEASE,
            (session_id, claimant),
            action=f"releasing the claim on session {session_id}",
            table=CLAIMS_TABLE,
        )
        logger.debug("Released the claim on session %s via psycopg", session_id)

    def invalidate(
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
        deleted = self._rowcount(
            query,
            params,
            action="invalidating stored analyses",
            table=ANALYSIS_TABLE,
        )
        logger.debug("Invalidated %d analyses via psycopg", deleted)
        return deleted

    def record_stats(self, rows: Sequence[StatsRow]) -> int:
        """
        Insert counter rows into ``salesai_cache_stats`` in one statement,
        skipping ids the table has, and return ``len(rows)``.

        Raises:
            SchemaMismatchError: the table is missing (migration 003).
        """
        if not rows:
            return 0
        self._rowcount(
            _RECORD_STATS,
            stats_params(rows),
            action=f"recording {len(rows)} rows of cache counters",
            table=STATS_TABLE,
        )
        logger.debug("Recorded %d rows of cache counters via psycopg", len(rows))
        return len(rows)

    def _one(
        self,
        query: sql.Composed | bytes,
        params: Sequence[Any] | Mapping[str, Any],
        *,
        action: str,
        table: str,
        session_id: str | None = None,
        function: str | None = None,
    ) -> Mapping[str, Any] | None:
        def run() -> DictRow | None:
            with (
                self._lock,
                self._transaction(),
                self._conn.cursor(row_factory=dict_row) as cursor,
            ):
                cursor.execute(query, params)
                return cursor.fetchone()

        return self._guard(
            run, action=action, table=table, session_id=session_id, function=function
        )

    def _rowcount(
        self,
        query: sql.Composed | bytes,
        params: tuple[Any, ...],
        *,
        action: str,
        table: str,
    ) -> int:
        def run() -> int:
            with self._lock, self._transaction(), self._conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.rowcount

        return self._guard(run, action=action, table=table, session_id=None)

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """
        Return ``conn.transaction()``, or nothing on an idle autocommit
        connection: every operation is one statement, which then commits by
        itself, and BEGIN and COMMIT would cost two more round trips.
        """
        idle = self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if self._conn.autocommit and idle:
            return contextlib.nullcontext()
        return self._conn.transaction()

    def _role(self) -> str:
        # For error messages only; in a transaction of its own, so that a
        # non-autocommit connection is not left inside an open transaction.
        try:
            with self._lock, self._transaction(), self._conn.cursor() as cursor:
                row = cursor.execute("select current_user").fetchone()
        except psycopg.Error:
            return "unknown"
        return str(row[0]) if row else "unknown"

    def _guard(
        self,
        call: Callable[[], _T],
        *,
        action: str,
        table: str,
        session_id: str | None,
        function: str | None = None,
    ) -> _T:
        try:
            return call()
        except psycopg.Error as error:
            raise _store_error(
                error,
                action=action,
                table=table,
                session_id=session_id,
                function=function,
                closed=self._conn.closed,
                role=self._role() if error.sqlstate == "42501" else None,
            ) from error


def _save_params(
    session_id: str,
    analysis: dict[str, Any],
    model: str,
    usage: TokenUsage,
    transcript_hash: str | None,
    analysis_version: str | None,
    claimant: str | None,
) -> tuple[Any, ...]:
    return (
        session_id,
        Jsonb(analysis),
        model,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        transcript_hash,
        analysis_version,
        claimant,
    )


def stats_params(rows: Sequence[StatsRow]) -> tuple[list[Any], ...]:
    """
    Return the column arrays of ``_RECORD_STATS`` for ``rows``.
    """
    records = [row.as_record() for row in rows]
    return tuple([record[column] for record in records] for column in STATS_COLUMNS)


def _looked_up(row: Mapping[str, Any] | None, session_id: str) -> Lookup:
    if row is None:
        raise CacheStoreError(
            f"{LOOKUP_FUNCTION} returned no row for session {session_id}: "
            f"apply {MIGRATION_002} again"
        )
    found = row_to_lookup(row)
    logger.debug(
        "Looked up session %s via psycopg: fresh=%s claimed=%s",
        session_id,
        found.fresh,
        found.claimed,
    )
    return found


def _saved(row: Mapping[str, Any], session_id: str) -> StoredAnalysis:
    logger.debug("Saved the analysis of session %s via psycopg", session_id)
    return row_to_stored(row)


def _hidden_row_error(session_id: str, role: str) -> ConfigurationError:
    # An RLS policy can let the insert through yet hide the row from
    # RETURNING's implicit select.
    return ConfigurationError(
        f"saving the analysis of session {session_id} returned no row: "
        f"role {role} may write {ANALYSIS_TABLE} but not read it "
        "back, so every view would compute again; check the row-level "
        f"security policies of {ANALYSIS_TABLE}",
        session_id=session_id,
    )


def _invalidate_query(
    session_id: str | None, analysis_version: str | None
) -> tuple[sql.Composed, tuple[Any, ...]]:
    """
    Return the delete statement of ``invalidate`` and its parameters.

    Raises:
        ValueError: neither filter is given.
    """
    filters = {"session_id": session_id, "analysis_version": analysis_version}
    given = {column: value for column, value in filters.items() if value is not None}
    if not given:
        raise ValueError(
            "invalidate needs a session_id, an analysis_version or both: "
            "deleting every analysis is not supported"
        )
    query = sql.SQL("delete from {analyses} where {conditions}").format(
        analyses=_ANALYSES,
        conditions=sql.SQL(" and ").join(
            sql.SQL("{} = %s").format(sql.Identifier(column)) for column in given
        ),
    )
    return query, tuple(given.values())


def _store_error(
    error: psycopg.Error,
    *,
    action: str,
    table: str,
    session_id: str | None,
    function: str | None,
    closed: bool,
    role: str | None,
) -> SalesAICacheError:
    """
    Return the library exception for a failed psycopg call. ``closed`` is
    whether the connection is closed, and ``role`` names the role in a
    permission error.
    """
    if isinstance(error, psycopg.OperationalError):
        # A broken socket has no SQLSTATE, so the message names the
        # exception type and the first line of its text.
        logger.debug("%s failed: %s", action, type(error).__name__)
        return CacheStoreError(
            f"{action} failed: the database connection failed "
            f"({type(error).__name__}: {_first_line(error)}); check that the "
            "server is reachable, then retry with a new connection",
            code=error.sqlstate,
            # On a closed connection every retry fails the same way.
            retryable=not closed
            and (error.sqlstate is None or is_transient_store_code(error.sqlstate)),
        )
    logger.debug("%s failed with SQLSTATE %s", action, error.sqlstate)
    diag_message = error.diag.message_primary if error.diag else None
    return translate_error(
        error.sqlstate,
        diag_message or _first_line(error),
        action=action,
        table=table,
        session_id=session_id,
        function=function,
        role=role,
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
