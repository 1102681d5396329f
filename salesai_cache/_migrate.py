"""
Applying the shipped migrations and recording them in
``public.salesai_schema_migrations``.

Each migration file carries its own ``begin;`` and ``commit;``. The runner
puts the row that records the migration just before the file's final
``commit;``, so a migration and its record commit together or not at all.

A database that has no recorded migration yet, such as one set up with
``setup.sql`` (which includes every migration) or migrated by hand, is
recognised by the objects each migration creates: those found are recorded
as applied without running them (``baseline`` in the table's ``applied_by``).
``status`` shows those as ``found`` until ``migrate`` records them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

import psycopg

from ._sql import migration_names, read_sql
from .exceptions import SalesAICacheError

__all__ = [
    "MIGRATIONS_TABLE",
    "MigrationFailedError",
    "MigrationState",
    "apply_migrations",
    "checksum",
    "describe_changed",
    "migration_states",
    "missing_tables",
    "setup_advice",
]

logger = logging.getLogger(__name__)

MIGRATIONS_TABLE = "public.salesai_schema_migrations"

_CREATE_TABLE = f"""
create table if not exists {MIGRATIONS_TABLE} (
  name text primary key,
  applied_at timestamptz not null default now(),
  checksum text not null,
  applied_by text not null default 'migrate'
);
comment on table {MIGRATIONS_TABLE} is
  'Migrations of salesai-cache applied to this database (salesai-cache migrate).';
"""

# What each migration creates, checked when no migration is recorded yet.
_MARKERS = {
    "migrations/001_add_conversation_id_and_caching": """
        select exists (
          select 1 from pg_catalog.pg_attribute
          where attrelid = to_regclass('public.salesai_sessions')
            and attname = 'conversation_id' and not attisdropped
        ) and exists (
          select 1 from pg_catalog.pg_constraint
          where conname = 'salesai_analysis_results_session_id_key'
            and conrelid = to_regclass('public.salesai_analysis_results')
        )
    """,
    "migrations/002_add_freshness_and_claims": """
        select to_regclass('public.salesai_analysis_claims') is not null
          and to_regprocedure('public.salesai_lookup_analysis(uuid, text, text, '
            'text, double precision, boolean)') is not null
          and to_regprocedure('public.salesai_save_analysis(uuid, jsonb, text, '
            'integer, integer, integer, text, text, text)') is not null
    """,
    "migrations/003_add_cache_stats": """
        select to_regclass('public.salesai_cache_stats') is not null
          and to_regprocedure('public.salesai_cache_stats_summary(timestamptz)')
            is not null
          and to_regprocedure('public.salesai_analysis_summary()') is not null
    """,
}

# Migration 001 alters these tables, which only setup.sql creates.
_BASE_TABLES = ("public.salesai_sessions", "public.salesai_analysis_results")

_FINAL_COMMIT = re.compile(r"\bcommit\s*;\s*\Z", re.IGNORECASE)


class MigrationFailedError(SalesAICacheError):
    """
    A migration failed; its transaction was rolled back. The message names
    the migration's file and the database's error, which is the cause.
    """


@dataclass(frozen=True)
class MigrationState:
    """
    One shipped migration and what the database has recorded of it.

    ``status`` is ``applied``, ``pending``, ``changed`` (applied, but the
    shipped file's checksum differs from the recorded one) or ``found`` (not
    recorded, but its objects exist: ``migrate`` records it as baseline
    without running it).
    """

    name: str
    status: str
    checksum: str
    recorded_checksum: str | None = None
    applied_at: str | None = None
    applied_by: str | None = None


def checksum(name: str) -> str:
    """
    Return the SHA-256 of a shipped SQL file, in hex.
    """
    return hashlib.sha256(read_sql(name).encode("utf-8")).hexdigest()


def _recorded(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str, str]]:
    exists = conn.execute(
        "select to_regclass(%s) is not null", (MIGRATIONS_TABLE,)
    ).fetchone()
    if not (exists and exists[0]):
        return {}
    rows = conn.execute(
        f"select name, checksum, applied_at::text, applied_by from {MIGRATIONS_TABLE}"
    ).fetchall()
    return {str(name): (str(sum_), str(at), str(by)) for name, sum_, at, by in rows}


def migration_states(conn: psycopg.Connection[Any]) -> list[MigrationState]:
    """
    Return the state of every shipped migration, in the order they apply.

    Reads only. On a database without recorded migrations, those whose
    objects exist are ``found``, as ``migrate`` would record them.
    """
    recorded = _recorded(conn)
    found = set() if recorded else set(_detect_applied(conn))
    states = []
    for name in migration_names():
        current = checksum(name)
        if name not in recorded:
            status = "found" if name in found else "pending"
            states.append(MigrationState(name, status, current))
            continue
        stored, applied_at, applied_by = recorded[name]
        states.append(
            MigrationState(
                name,
                "applied" if stored == current else "changed",
                current,
                recorded_checksum=stored,
                applied_at=applied_at,
                applied_by=applied_by,
            )
        )
    return states


def missing_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """
    Return the tables of salesai-cache that migration 001 needs and the
    database lacks, such as all of them in a new database.
    """
    missing = []
    for table in _BASE_TABLES:
        row = conn.execute("select to_regclass(%s) is null", (table,)).fetchone()
        if row and row[0]:
            missing.append(table)
    return missing


def setup_advice(missing: list[str]) -> str:
    """
    Return a sentence saying that the ``missing`` tables keep the migrations
    from applying and that the database needs setup.sql instead.
    """
    tables = " and ".join(missing)
    verb = "does" if len(missing) == 1 else "do"
    return (
        f"{tables} {verb} not exist, so the migrations, which change those "
        "tables, cannot apply: set the database up with the SQL that "
        "'salesai-cache sql setup' prints (it includes every migration), "
        "then 'salesai-cache sql policies'"
    )


def describe_changed(names: list[str]) -> str:
    """
    Return a sentence naming the applied migrations whose files changed.
    """
    if len(names) == 1:
        return (
            f"the file of applied migration {names[0]} has changed since it was "
            f"applied; compare it with 'salesai-cache sql {names[0]}' and the "
            "database before migrating"
        )
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    return (
        f"the files of applied migrations {listed} have changed since they "
        "were applied; compare each with 'salesai-cache sql NAME' and the "
        "database before migrating"
    )


def _detect_applied(conn: psycopg.Connection[Any]) -> list[str]:
    found = []
    for name in migration_names():
        marker = _MARKERS.get(name)
        row = conn.execute(marker).fetchone() if marker else None
        if not (row and row[0]):
            # Migrations build on each other: stop at the first one missing.
            break
        found.append(name)
    return found


def apply_migrations(
    conn: psycopg.Connection[Any], *, dry_run: bool = False
) -> tuple[list[str], list[str]]:
    """
    Record the migrations that a database without records already has, then
    apply the pending ones in order, each in its own transaction.

    Args:
        conn: a connection in autocommit mode as the tables' owner.
        dry_run: only work out what would happen; change nothing.

    Returns:
        The migrations recorded as already applied (baseline) and those
        applied now (or that would be, with ``dry_run``).

    Raises:
        ValueError: the connection is not in autocommit mode, an applied
            migration's file has changed since, or the tables that the first
            migration changes do not exist (nothing is applied then).
        MigrationFailedError: a migration failed; its transaction was rolled
            back and the earlier ones stay applied and recorded.
    """
    if not conn.autocommit:
        raise ValueError("migrate needs a connection in autocommit mode")
    changed = [s.name for s in migration_states(conn) if s.status == "changed"]
    if changed:
        raise ValueError(describe_changed(changed))
    recorded = _recorded(conn)
    baseline = [] if recorded else _detect_applied(conn)
    pending = [
        name
        for name in migration_names()
        if name not in recorded and name not in baseline
    ]
    if pending and pending[0] == migration_names()[0]:
        missing = missing_tables(conn)
        if missing:
            raise ValueError(setup_advice(missing))
    if dry_run:
        return baseline, pending
    conn.execute(_CREATE_TABLE.encode("utf-8"))
    for name in baseline:
        conn.execute(
            f"insert into {MIGRATIONS_TABLE} (name, checksum, applied_by) "
            "values (%s, %s, 'baseline') on conflict (name) do nothing",
            (name, checksum(name)),
        )
        logger.info("Recorded migration %s as applied (found its objects)", name)
    for name in pending:
        _apply_one(conn, name)
    return baseline, pending


def _apply_one(conn: psycopg.Connection[Any], name: str) -> None:
    text = read_sql(name)
    if not _FINAL_COMMIT.search(text):
        # Without its own commit the record could not share its transaction.
        raise ValueError(f"migration {name} does not end with 'commit;'")
    # Literals, since a multi-statement script takes no parameters; the
    # name and checksum are ours (file names and hex), quoted all the same.
    record = (
        f"insert into {MIGRATIONS_TABLE} (name, checksum) values "
        f"({_literal(name)}, {_literal(checksum(name))});\ncommit;\n"
    )
    script = _FINAL_COMMIT.sub(lambda _: record, text)
    started = conn.execute("select clock_timestamp()").fetchone()
    try:
        _execute(conn, script)
    except psycopg.Error as error:
        raise MigrationFailedError(
            f"migration {name} (sql/{name}.sql) failed and was rolled back, "
            f"the earlier ones stay applied: {type(error).__name__}: {error}"
        ) from error
    logger.info("Applied migration %s (started %s)", name, started and started[0])


def _execute(conn: psycopg.Connection[Any], script: str) -> None:
    try:
        conn.execute(script.encode("utf-8"))
    except psycopg.Error:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        raise


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
