"""
sql/setup.sql on a real PostgreSQL: what it creates, that it is re-runnable,
and that it matches the legacy schema plus every migration.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from salesai_cache._local.database import (
    apply_sql,
    create_auth_user,
    create_database,
    drop_database,
    run_verify,
    schema_snapshot,
)
from salesai_cache._sql import list_sql_files, migration_names, read_sql

LEGACY_SCHEMA = Path(__file__).with_name("legacy_schema.sql")

VERIFY_CHECKS = [
    "sessions_table_exists",
    "analysis_results_table_exists",
    "conversation_id_column_exists",
    "session_id_unique_constraint_exists",
    "conversation_id_index_exists",
    "no_duplicate_analyses",
    "sessions_rls_enabled",
    "analysis_results_rls_enabled",
    "sessions_policies_exist",
    "analysis_results_policies_exist",
    "freshness_columns_exist",
    "claims_table_exists",
    "claims_rls_enabled",
    "claims_policies_exist",
    "lookup_function_exists",
    "save_function_exists",
    "functions_not_executable_by_anon",
    "cache_stats_table_exists",
    "cache_stats_rls_enabled",
    "cache_stats_policies_exist",
    "stats_functions_exist",
    "stats_functions_for_operators_only",
]


def _apply_migrations(conn: psycopg.Connection[Any]) -> None:
    names = migration_names()
    assert names == [
        "migrations/001_add_conversation_id_and_caching",
        "migrations/002_add_freshness_and_claims",
        "migrations/003_add_cache_stats",
    ]
    for name in names:
        apply_sql(conn, name)


def _function_privileges(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        """
        select p.proname, acl.grantee::regrole::text, acl.privilege_type
        from pg_catalog.pg_proc as p,
             aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) as acl
        where p.pronamespace = 'public'::regnamespace
          and p.proname like 'salesai\\_%'
        order by 1, 2, 3
        """
    ).fetchall()


@pytest.fixture
def other_bare_db(
    postgres_url: str, bare_template_database: str
) -> Iterator[psycopg.Connection[Any]]:
    """
    A second bootstrapped database, for comparing two schemas in one test.
    """
    name = f"salesai_test_other_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_url, name, template=bare_template_database)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            yield conn
    finally:
        drop_database(postgres_url, name)


def _columns(conn: psycopg.Connection[Any], table: str) -> dict[str, tuple[str, bool]]:
    rows = conn.execute(
        """
        select column_name, data_type, is_nullable = 'YES'
        from information_schema.columns
        where table_schema = 'public' and table_name = %s
        """,
        [table],
    ).fetchall()
    return {name: (kind, nullable) for name, kind, nullable in rows}


@pytest.mark.sql
def test_setup_creates_schema(bare_db: psycopg.Connection[Any]) -> None:
    apply_sql(bare_db, "setup")

    sessions = _columns(bare_db, "salesai_sessions")
    assert sessions == {
        "id": ("uuid", False),
        "user_id": ("uuid", False),
        "transcript": ("jsonb", False),
        "conversation_id": ("text", True),
        "created_at": ("timestamp with time zone", False),
        "updated_at": ("timestamp with time zone", False),
    }
    results = _columns(bare_db, "salesai_analysis_results")
    assert results == {
        "id": ("uuid", False),
        "session_id": ("uuid", False),
        "analysis": ("jsonb", False),
        "model": ("text", False),
        "prompt_tokens": ("integer", False),
        "completion_tokens": ("integer", False),
        "total_tokens": ("integer", False),
        "created_at": ("timestamp with time zone", False),
        "updated_at": ("timestamp with time zone", False),
        "transcript_hash": ("text", True),
        "analysis_version": ("text", True),
    }
    claims = _columns(bare_db, "salesai_analysis_claims")
    assert claims == {
        "session_id": ("uuid", False),
        "claimant": ("text", False),
        "claimed_at": ("timestamp with time zone", False),
        "expires_at": ("timestamp with time zone", False),
    }
    stats = _columns(bare_db, "salesai_cache_stats")
    counters = (
        "hits",
        "misses",
        "stale_recomputes",
        "waits",
        "stale_served",
        "prompt_tokens_saved",
        "completion_tokens_saved",
    )
    assert stats == {
        "id": ("uuid", False),
        "recorded_at": ("timestamp with time zone", False),
        "user_id": ("uuid", True),
        "worker": ("text", False),
        "model": ("text", False),
        "analysis_version": ("text", True),
        **{counter: ("bigint", False) for counter in counters},
    }
    snapshot = schema_snapshot(bare_db)
    constraints = {(row[0], row[1]): row[3] for row in snapshot["constraints"]}
    assert constraints[
        ("salesai_analysis_results", "salesai_analysis_results_session_id_key")
    ] == ("UNIQUE (session_id)")
    assert constraints[
        ("salesai_sessions", "salesai_sessions_transcript_array_check")
    ] == ("CHECK ((jsonb_typeof(transcript) = 'array'::text))")
    assert constraints[("salesai_sessions", "salesai_sessions_user_id_fkey")] == (
        "FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE"
    )
    assert constraints[
        ("salesai_analysis_results", "salesai_analysis_results_session_id_fkey")
    ] == ("FOREIGN KEY (session_id) REFERENCES salesai_sessions(id) ON DELETE CASCADE")
    assert constraints[("salesai_analysis_claims", "salesai_analysis_claims_pkey")] == (
        "PRIMARY KEY (session_id)"
    )
    assert constraints[
        ("salesai_analysis_claims", "salesai_analysis_claims_session_id_fkey")
    ] == ("FOREIGN KEY (session_id) REFERENCES salesai_sessions(id) ON DELETE CASCADE")
    for column in ("prompt_tokens", "completion_tokens", "total_tokens"):
        name = f"salesai_analysis_results_{column}_check"
        assert constraints[("salesai_analysis_results", name)] == (
            f"CHECK (({column} >= 0))"
        )
    for counter in counters:
        name = f"salesai_cache_stats_{counter}_check"
        assert constraints[("salesai_cache_stats", name)] == (
            f"CHECK (({counter} >= 0))"
        )
    indexes = {row[1]: row[2] for row in snapshot["indexes"]}
    assert indexes["idx_salesai_sessions_conversation"].endswith(
        "USING btree (conversation_id)"
    )
    assert indexes["salesai_sessions_user_id_idx"].endswith("USING btree (user_id)")
    assert indexes["salesai_cache_stats_recorded_at_idx"].endswith(
        "USING btree (recorded_at)"
    )
    assert {row[1] for row in snapshot["triggers"]} == {
        "salesai_analysis_results_set_updated_at",
        "salesai_sessions_set_updated_at",
    }
    assert all(row[4] for row in snapshot["tables"]), "every table has a comment"
    assert {row[0] for row in snapshot["functions"]} == {
        "salesai_analysis_summary",
        "salesai_cache_stats_summary",
        "salesai_lookup_analysis",
        "salesai_save_analysis",
        "salesai_set_updated_at",
    }


@pytest.mark.sql
def test_setup_passes_schema_checks_of_verify(bare_db: psycopg.Connection[Any]) -> None:
    apply_sql(bare_db, "setup")

    results = {name: passed for name, passed, _ in run_verify(bare_db)}

    schema_checks = {
        name: passed
        for name, passed in results.items()
        if "rls" not in name and "policies" not in name
    }
    assert schema_checks and all(schema_checks.values()), schema_checks
    assert results["sessions_rls_enabled"] is False
    assert results["analysis_results_policies_exist"] is False


@pytest.mark.sql
def test_setup_twice_changes_nothing(bare_db: psycopg.Connection[Any]) -> None:
    apply_sql(bare_db, "setup")
    before = schema_snapshot(bare_db)

    apply_sql(bare_db, "setup")

    assert schema_snapshot(bare_db) == before


@pytest.mark.sql
def test_setup_keeps_rows_when_run_again(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    db.execute(
        "insert into public.salesai_sessions (user_id, conversation_id) "
        "values (%s, 'call-1')",
        [user],
    )

    apply_sql(db, "setup")

    row = db.execute("select conversation_id from public.salesai_sessions").fetchone()
    assert row == ("call-1",)


@pytest.mark.sql
def test_setup_after_legacy_and_migrations_changes_nothing(
    legacy_db: psycopg.Connection[Any],
) -> None:
    _apply_migrations(legacy_db)
    before = schema_snapshot(legacy_db)
    privileges = _function_privileges(legacy_db)

    apply_sql(legacy_db, "setup")

    assert schema_snapshot(legacy_db) == before
    assert _function_privileges(legacy_db) == privileges


@pytest.mark.sql
def test_legacy_plus_migrations_match_setup(
    legacy_db: psycopg.Connection[Any], other_bare_db: psycopg.Connection[Any]
) -> None:
    apply_sql(other_bare_db, "setup")
    from_setup = schema_snapshot(other_bare_db)
    legacy = schema_snapshot(legacy_db)
    assert legacy != from_setup, "the comparison must see the legacy differences"

    _apply_migrations(legacy_db)

    from_migration = schema_snapshot(legacy_db)
    for kind in from_setup:
        assert from_migration[kind] == from_setup[kind], kind
    assert from_setup["columns"], "the snapshot must not be empty"
    assert len(from_setup["functions"]) == 5
    assert _function_privileges(legacy_db) == _function_privileges(other_bare_db)

    apply_sql(legacy_db, "policies")
    apply_sql(other_bare_db, "policies")
    assert schema_snapshot(legacy_db) == schema_snapshot(other_bare_db)


@pytest.mark.sql
def test_setup_stops_on_legacy_duplicates_and_changes_nothing(
    legacy_db: psycopg.Connection[Any],
) -> None:
    user = create_auth_user(legacy_db, "rep@example.com")
    session = legacy_db.execute(
        "insert into public.salesai_sessions (user_id) values (%s) returning id",
        [user],
    ).fetchone()
    assert session is not None
    for _ in range(2):
        legacy_db.execute(
            "insert into public.salesai_analysis_results (session_id, analysis, model)"
            " values (%s, '{}', 'm')",
            [session[0]],
        )
    before = schema_snapshot(legacy_db)

    with pytest.raises(errors.UniqueViolation):
        apply_sql(legacy_db, "setup")

    assert schema_snapshot(legacy_db) == before
    count = legacy_db.execute(
        "select count(*) from public.salesai_analysis_results"
    ).fetchone()
    assert count == (2,)


@pytest.mark.sql
def test_verify_on_database_without_tables(bare_db: psycopg.Connection[Any]) -> None:
    rows = run_verify(bare_db)

    assert [name for name, _, _ in rows] == VERIFY_CHECKS
    assert not any(passed for _, passed, _ in rows)
    assert "run setup.sql" in rows[0][2]


@pytest.mark.sql
def test_verify_passes_after_setup_and_policies(db: psycopg.Connection[Any]) -> None:
    rows = run_verify(db)

    assert all(passed for _, passed, _ in rows), rows
    assert [name for name, _, _ in rows] == VERIFY_CHECKS


@pytest.mark.sql
def test_verify_counts_duplicates(db: psycopg.Connection[Any]) -> None:
    """
    With the constraint dropped, duplicates are counted per session.
    """
    user = create_auth_user(db, "rep@example.com")
    db.execute(
        "alter table public.salesai_analysis_results "
        "drop constraint salesai_analysis_results_session_id_key"
    )
    for _ in range(2):
        session = db.execute(
            "insert into public.salesai_sessions (user_id) values (%s) returning id",
            [user],
        ).fetchone()
        assert session is not None
        for _ in range(3):
            db.execute(
                "insert into public.salesai_analysis_results "
                "(session_id, analysis, model) values (%s, '{}', 'm')",
                [session[0]],
            )

    rows = {name: (passed, detail) for name, passed, detail in run_verify(db)}

    assert rows["no_duplicate_analyses"] == (
        False,
        "2 sessions have several analyses: run migration 001",
    )
    assert rows["session_id_unique_constraint_exists"][0] is False


@pytest.mark.sql
def test_updated_at_trigger(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    old = "2020-01-01 00:00:00+00"
    row = db.execute(
        "insert into public.salesai_sessions (user_id, created_at, updated_at) "
        "values (%s, %s, %s) returning id",
        [user, old, old],
    ).fetchone()
    assert row is not None
    session = row[0]
    db.execute(
        "insert into public.salesai_analysis_results "
        "(session_id, analysis, model, created_at, updated_at) "
        "values (%s, '{}', 'm', %s, %s)",
        [session, old, old],
    )

    db.execute(
        "update public.salesai_sessions set conversation_id = 'c' where id = %s",
        [session],
    )
    db.execute(
        "update public.salesai_analysis_results set model = 'n' where session_id = %s",
        [session],
    )
    touched = db.execute(
        "select s.updated_at > s.created_at, r.updated_at > r.created_at, "
        "s.created_at = r.created_at "
        "from public.salesai_sessions as s "
        "join public.salesai_analysis_results as r on r.session_id = s.id"
    ).fetchone()
    assert touched == (True, True, True)

    explicit = "2021-06-01 00:00:00+00"
    db.execute(
        "update public.salesai_analysis_results set updated_at = %s",
        [explicit],
    )
    kept = db.execute(
        "select updated_at = %s::timestamptz from public.salesai_analysis_results",
        [explicit],
    ).fetchone()
    assert kept == (True,)


@pytest.mark.sql
def test_check_constraints_reject_bad_rows(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    with pytest.raises(errors.CheckViolation, match="transcript_array_check"):
        db.execute(
            "insert into public.salesai_sessions (user_id, transcript) "
            """values (%s, '{"speaker": "Rep"}')""",
            [user],
        )
    session = db.execute(
        "insert into public.salesai_sessions (user_id) values (%s) returning id",
        [user],
    ).fetchone()
    assert session is not None
    with pytest.raises(errors.CheckViolation, match="total_tokens_check"):
        db.execute(
            "insert into public.salesai_analysis_results "
            "(session_id, analysis, model, total_tokens) values (%s, '{}', 'm', -1)",
            [session[0]],
        )
    with pytest.raises(errors.ForeignKeyViolation):
        db.execute(
            "insert into public.salesai_sessions (user_id) "
            "values ('00000000-0000-0000-0000-000000000000')"
        )


def _statements_outside_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("--"))


@pytest.mark.parametrize(
    "name", [name for name in list_sql_files() if name != "verify"] + ["legacy"]
)
def test_sql_file_is_one_transaction_with_header(name: str) -> None:
    text = (
        LEGACY_SCHEMA.read_text(encoding="utf-8")
        if name == "legacy"
        else read_sql(name)
    )
    body = _statements_outside_comments(text)

    assert text.startswith("-- ")
    assert "Re-runnable" in text.split("\nbegin;")[0]
    assert re.findall(r"^(begin|commit);$", body, flags=re.MULTILINE) == [
        "begin",
        "commit",
    ]
    assert not re.search(r"\b(CREATE|ALTER|TABLE|SELECT|BEGIN|COMMIT)\b", body)


def test_verify_is_one_select() -> None:
    body = _statements_outside_comments(read_sql("verify")).strip()

    assert body.startswith("with")
    assert len(re.findall(r";$", body, flags=re.MULTILINE)) == 1
    assert body.endswith(";")
    assert not re.search(r"^(begin|commit)", body, flags=re.MULTILINE)
