"""
Migration 003 on a real PostgreSQL: the table salesai_cache_stats as each API
role, its summary functions, the order of the migrations, the rollback and
verify.sql's checks.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors

from salesai_cache._local.database import (
    apply_sql,
    as_role,
    create_auth_user,
    run_verify,
    schema_snapshot,
)

pytestmark = pytest.mark.sql

UP_001 = "migrations/001_add_conversation_id_and_caching"
UP_002 = "migrations/002_add_freshness_and_claims"
DOWN_002 = "migrations/002_add_freshness_and_claims_rollback"
UP = "migrations/003_add_cache_stats"
DOWN = "migrations/003_add_cache_stats_rollback"

INSERT = """
    insert into public.salesai_cache_stats
      (worker, model, analysis_version, hits, misses, prompt_tokens_saved)
    values ('host:1', %s, 'v1', %s, %s, %s)
"""
SUMMARY = "select * from public.salesai_cache_stats_summary(p_since => %s)"
STATS_CHECKS = (
    "cache_stats_table_exists",
    "cache_stats_rls_enabled",
    "cache_stats_policies_exist",
    "stats_functions_exist",
    "stats_functions_for_operators_only",
)


def _insert(
    conn: psycopg.Connection[Any], model: str = "gpt-4o-mini", hits: int = 1
) -> None:
    conn.execute(INSERT, [model, hits, 0, 10 * hits])


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from public.salesai_cache_stats").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def migrated_002(legacy_db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    apply_sql(legacy_db, UP_001)
    apply_sql(legacy_db, UP_002)
    return legacy_db


# Roles


def test_stats_service_role_inserts_without_user(db: psycopg.Connection[Any]) -> None:
    with as_role(db, "service_role"):
        _insert(db)
    row = db.execute("select user_id, recorded_at from public.salesai_cache_stats")
    user_id, recorded_at = row.fetchone() or (None, None)
    assert user_id is None
    assert isinstance(recorded_at, dt.datetime)


def test_stats_user_inserts_own_row(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    with as_role(db, "authenticated", user):
        _insert(db)
    row = db.execute("select user_id::text from public.salesai_cache_stats")
    assert row.fetchone() == (user,)


def test_stats_user_cannot_insert_for_another(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    other = create_auth_user(db, "other@example.com")
    with (
        pytest.raises(errors.InsufficientPrivilege),
        as_role(db, "authenticated", user),
    ):
        db.execute(
            "insert into public.salesai_cache_stats (user_id, worker, model) "
            "values (%s, 'w', 'm')",
            [other],
        )


def test_stats_user_reads_only_own_rows(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    other = create_auth_user(db, "other@example.com")
    for account in (user, other):
        with as_role(db, "authenticated", account):
            _insert(db)
    _insert(db)

    with as_role(db, "authenticated", user):
        rows = db.execute("select user_id::text from public.salesai_cache_stats")
        assert rows.fetchall() == [(user,)]


def test_stats_user_cannot_update_or_delete(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    with as_role(db, "authenticated", user):
        _insert(db)
        updated = db.execute("update public.salesai_cache_stats set hits = 100")
        deleted = db.execute("delete from public.salesai_cache_stats")
        assert (updated.rowcount, deleted.rowcount) == (0, 0)


def test_stats_anon_cannot_insert(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.InsufficientPrivilege), as_role(db, "anon"):
        _insert(db)


def test_stats_anon_reads_nothing(db: psycopg.Connection[Any]) -> None:
    _insert(db)
    with as_role(db, "anon"):
        assert _count(db) == 0


def test_stats_service_role_reads_all(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    with as_role(db, "authenticated", user):
        _insert(db)
    _insert(db)
    with as_role(db, "service_role"):
        assert _count(db) == 2


def test_stats_negative_counter_rejected(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.CheckViolation, match="salesai_cache_stats_hits_check"):
        _insert(db, hits=-1)


def test_stats_duplicate_id_ignored_on_conflict(db: psycopg.Connection[Any]) -> None:
    row_id = uuid.uuid4()
    for _ in range(2):
        with as_role(db, "service_role"):
            db.execute(
                "insert into public.salesai_cache_stats (id, worker, model, hits) "
                "values (%s, 'w', 'm', 1) on conflict (id) do nothing",
                [row_id],
            )
    assert _count(db) == 1


# Summary functions


def test_stats_summary_sums_per_model(db: psycopg.Connection[Any]) -> None:
    _insert(db, "gpt-4o-mini", hits=2)
    _insert(db, "gpt-4o-mini", hits=3)
    _insert(db, "gpt-4o", hits=1)

    with as_role(db, "service_role"):
        rows = db.execute(SUMMARY, [None]).fetchall()

    assert [(row[0], row[1], row[2], row[7], row[9]) for row in rows] == [
        ("gpt-4o", "v1", 1, 10, 1),
        ("gpt-4o-mini", "v1", 5, 50, 2),
    ]
    assert all(isinstance(value, int) for value in rows[0][2:10])


def test_stats_summary_filters_since(db: psycopg.Connection[Any]) -> None:
    _insert(db, hits=2)
    db.execute("update public.salesai_cache_stats set recorded_at = '2026-01-01'")
    _insert(db, hits=3)

    with as_role(db, "service_role"):
        rows = db.execute(SUMMARY, ["2026-02-01T00:00:00Z"]).fetchall()

    assert [row[2] for row in rows] == [3]


def test_stats_summary_empty_table(db: psycopg.Connection[Any]) -> None:
    with as_role(db, "service_role"):
        assert db.execute(SUMMARY, [None]).fetchall() == []


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    "call",
    [
        "select * from public.salesai_cache_stats_summary()",
        "select * from public.salesai_analysis_summary()",
    ],
)
def test_stats_summaries_refuse_api_roles(
    db: psycopg.Connection[Any], role: str, call: str
) -> None:
    user = create_auth_user(db, "rep@example.com") if role == "authenticated" else None
    with pytest.raises(errors.InsufficientPrivilege), as_role(db, role, user):
        db.execute(call)


def test_analysis_summary_counts_sessions(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")
    sessions = [
        db.execute(
            "insert into public.salesai_sessions (user_id) values (%s) returning id",
            [user],
        ).fetchone()
        for _ in range(3)
    ]
    for session in sessions[:2]:
        assert session is not None
        db.execute(
            "insert into public.salesai_analysis_results (session_id, analysis, "
            "model, prompt_tokens, completion_tokens, total_tokens, "
            "analysis_version) values (%s, '{}', 'gpt-4o', 100, 20, 120, 'v1')",
            [session[0]],
        )

    with as_role(db, "service_role"):
        rows = db.execute("select * from public.salesai_analysis_summary()").fetchall()

    assert rows == [("gpt-4o", "v1", 2, 2, 200, 40, 240), (None, None, 1, 0, 0, 0, 0)]


# Migration order, rollback, verify


def test_003_needs_002(legacy_db: psycopg.Connection[Any]) -> None:
    apply_sql(legacy_db, UP_001)
    before = schema_snapshot(legacy_db)
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
        apply_sql(legacy_db, UP)
    assert "migration 002 is not applied" in str(info.value)
    assert schema_snapshot(legacy_db) == before


def test_002_rollback_needs_003_rollback(migrated_002: psycopg.Connection[Any]) -> None:
    apply_sql(migrated_002, UP)
    before = schema_snapshot(migrated_002)
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
        apply_sql(migrated_002, DOWN_002)
    assert "migration 003 is still applied" in str(info.value)
    assert schema_snapshot(migrated_002) == before


def test_003_up_twice_down_twice_up(migrated_002: psycopg.Connection[Any]) -> None:
    before = schema_snapshot(migrated_002)
    apply_sql(migrated_002, UP)
    migrated = schema_snapshot(migrated_002)
    apply_sql(migrated_002, UP)
    assert schema_snapshot(migrated_002) == migrated

    apply_sql(migrated_002, DOWN)
    apply_sql(migrated_002, DOWN)
    assert schema_snapshot(migrated_002) == before

    apply_sql(migrated_002, UP)
    assert schema_snapshot(migrated_002) == migrated


def test_003_rollback_drops_counters(db: psycopg.Connection[Any]) -> None:
    _insert(db)
    apply_sql(db, DOWN)
    row = db.execute(
        "select to_regclass('public.salesai_cache_stats'), "
        "to_regprocedure('public.salesai_cache_stats_summary(timestamptz)'), "
        "to_regprocedure('public.salesai_analysis_summary()')"
    ).fetchone()
    assert row == (None, None, None)


def test_003_rollback_forgets_record(db: psycopg.Connection[Any]) -> None:
    db.execute(
        "create table public.salesai_schema_migrations (name text primary key, "
        "applied_at timestamptz not null default now(), checksum text not null, "
        "applied_by text not null default 'migrate')"
    )
    db.execute(
        "insert into public.salesai_schema_migrations (name, checksum) values "
        "('migrations/002_add_freshness_and_claims', 'a'), "
        "('migrations/003_add_cache_stats', 'b')"
    )
    apply_sql(db, DOWN)
    rows = db.execute("select name from public.salesai_schema_migrations").fetchall()
    assert rows == [("migrations/002_add_freshness_and_claims",)]


def test_003_on_setup_database_is_a_no_op(db: psycopg.Connection[Any]) -> None:
    before = schema_snapshot(db)
    apply_sql(db, UP)
    assert schema_snapshot(db) == before


def test_verify_lists_missing_003_objects(
    migrated_002: psycopg.Connection[Any],
) -> None:
    rows = {name: (passed, detail) for name, passed, detail in run_verify(migrated_002)}

    for name in STATS_CHECKS:
        assert rows[name][0] is False, name
    for name in ("cache_stats_table_exists", "cache_stats_rls_enabled"):
        assert rows[name][1].endswith("run migration 003"), rows[name]
    assert rows["cache_stats_policies_exist"][1].endswith("run migration 003")
    assert rows["stats_functions_exist"][1].endswith("run migration 003")

    apply_sql(migrated_002, UP)
    apply_sql(migrated_002, "policies")

    assert [row for row in run_verify(migrated_002) if not row[1]] == []


def test_verify_reports_open_summary(db: psycopg.Connection[Any]) -> None:
    db.execute(
        "grant execute on function public.salesai_analysis_summary() to authenticated"
    )

    rows = {name: (passed, detail) for name, passed, detail in run_verify(db)}

    assert rows["stats_functions_for_operators_only"] == (
        False,
        "anon, authenticated or PUBLIC may execute salesai_analysis_summary(): "
        "run migration 003 again, which revokes it",
    )


def test_verify_reports_missing_stats_policy(db: psycopg.Connection[Any]) -> None:
    db.execute(
        'drop policy "Users can record their own cache stats" '
        "on public.salesai_cache_stats"
    )

    rows = {name: (passed, detail) for name, passed, detail in run_verify(db)}

    assert rows["cache_stats_policies_exist"] == (
        False,
        'missing on salesai_cache_stats: "Users can record their own cache stats"; '
        "run policies.sql",
    )
