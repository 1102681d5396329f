"""
Migration 001 and its rollback on legacy data, on a real PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import errors

from salesai_cache._local.database import (
    apply_sql,
    create_auth_user,
    run_verify,
    schema_snapshot,
)

pytestmark = pytest.mark.sql

UP = "migrations/001_add_conversation_id_and_caching"
DOWN = "migrations/001_add_conversation_id_and_caching_rollback"

T1 = "2024-01-01 00:00:00+00"
T2 = "2024-02-01 00:00:00+00"
T3 = "2024-03-01 00:00:00+00"


@dataclass
class LegacyData:
    """
    Legacy rows, and the analysis that migration 001 must keep per session.
    """

    sessions: dict[str, str] = field(default_factory=dict)
    analyses: dict[str, list[str]] = field(default_factory=dict)
    expected_kept: dict[str, str] = field(default_factory=dict)


def _session(conn: psycopg.Connection[Any], user: str) -> str:
    row = conn.execute(
        "insert into public.salesai_sessions (user_id, transcript) "
        """values (%s, '[{"speaker": "Rep", "text": "Hello"}]') returning id""",
        [user],
    ).fetchone()
    assert row is not None
    return str(row[0])


def _analysis(
    conn: psycopg.Connection[Any],
    session: str,
    created_at: str | None,
    updated_at: str | None,
    analysis_id: str | None = None,
) -> str:
    row = conn.execute(
        "insert into public.salesai_analysis_results "
        "(id, session_id, analysis, model, total_tokens, created_at, updated_at) "
        "values (coalesce(%s::uuid, gen_random_uuid()), %s, '{}', 'gpt-test', 7, "
        "%s, %s) returning id",
        [analysis_id, session, created_at, updated_at],
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def legacy_data(legacy_db: psycopg.Connection[Any]) -> LegacyData:
    """
    Sessions covering every case of the duplicate removal.
    """
    conn = legacy_db
    user = create_auth_user(conn, "rep@example.com")
    data = LegacyData()

    def add(case: str, *rows: tuple[str | None, str | None]) -> list[str]:
        session = _session(conn, user)
        data.sessions[case] = session
        ids = [_analysis(conn, session, created, updated) for created, updated in rows]
        data.analyses[case] = ids
        return ids

    # Distinct updated_at: the newest stays, whatever the insertion order.
    ids = add("distinct", (T1, T2), (T1, T3), (T3, T1))
    data.expected_kept["distinct"] = ids[1]
    # Same updated_at: the greater created_at decides.
    ids = add("updated_tie", (T1, T3), (T2, T3), (T1, T3))
    data.expected_kept["updated_tie"] = ids[1]
    # Both timestamps tie: the greatest id stays, exactly one.
    ids = add("full_tie", (T1, T2), (T1, T2), (T1, T2))
    data.expected_kept["full_tie"] = max(ids, key=uuid.UUID)
    # NULL updated_at counts as oldest, even with a newer created_at.
    ids = add("null_updated", (T3, None), (T1, T1))
    data.expected_kept["null_updated"] = ids[1]
    # Both NULL loses to any time.
    ids = add("null_both", (None, None), (None, T1), (None, None))
    data.expected_kept["null_both"] = ids[1]
    # All NULL: exactly one stays, the greatest id.
    ids = add("all_null", (None, None), (None, None), (None, None))
    data.expected_kept["all_null"] = max(ids, key=uuid.UUID)
    # A single analysis with NULL timestamps stays and gets them filled in.
    ids = add("single", (None, T2))
    data.expected_kept["single"] = ids[0]
    # A session without analysis is untouched.
    add("none")
    return data


def _rows(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "sessions": conn.execute(
            "select id, user_id, transcript, created_at, updated_at "
            "from public.salesai_sessions order by id"
        ).fetchall(),
        "analyses": conn.execute(
            "select id, session_id, analysis, model, total_tokens, created_at, "
            "updated_at from public.salesai_analysis_results order by id"
        ).fetchall(),
    }


def _verify(conn: psycopg.Connection[Any]) -> dict[str, bool]:
    return {name: passed for name, passed, _ in run_verify(conn)}


def test_migration_keeps_newest_analysis(
    legacy_db: psycopg.Connection[Any], legacy_data: LegacyData
) -> None:
    apply_sql(legacy_db, UP)

    kept = dict(
        legacy_db.execute(
            "select session_id::text, id::text from public.salesai_analysis_results"
        ).fetchall()
    )
    expected = {
        legacy_data.sessions[case]: analysis
        for case, analysis in legacy_data.expected_kept.items()
    }
    assert kept == expected
    counts = legacy_db.execute(
        "select count(*), count(distinct session_id) "
        "from public.salesai_analysis_results"
    ).fetchone()
    assert counts == (len(expected), len(expected))


def test_migration_fills_null_timestamps(
    legacy_db: psycopg.Connection[Any], legacy_data: LegacyData
) -> None:
    apply_sql(legacy_db, UP)

    rows = dict(
        legacy_db.execute(
            "select session_id::text, (created_at::text, updated_at::text) "
            "from public.salesai_analysis_results"
        ).fetchall()
    )
    single = rows[legacy_data.sessions["single"]]
    assert single[0] == single[1], "created_at takes the known updated_at"
    nulls = legacy_db.execute(
        "select count(*) from public.salesai_analysis_results "
        "where created_at is null or updated_at is null"
    ).fetchone()
    assert nulls == (0,)


def test_migration_adds_column_constraint_index(
    legacy_db: psycopg.Connection[Any], legacy_data: LegacyData
) -> None:
    apply_sql(legacy_db, UP)

    session = legacy_data.sessions["distinct"]
    legacy_db.execute(
        "update public.salesai_sessions set conversation_id = 'call-7' where id = %s",
        [session],
    )
    found = legacy_db.execute(
        "select id::text from public.salesai_sessions where conversation_id = 'call-7'"
    ).fetchall()
    assert found == [(session,)]
    with pytest.raises(errors.UniqueViolation) as caught:
        _analysis(legacy_db, session, T1, T1)
    assert caught.value.sqlstate == "23505"
    assert caught.value.diag.constraint_name == (
        "salesai_analysis_results_session_id_key"
    )


def test_migration_twice_is_a_no_op(
    legacy_db: psycopg.Connection[Any], legacy_data: LegacyData
) -> None:
    apply_sql(legacy_db, UP)
    schema = schema_snapshot(legacy_db)
    rows = _rows(legacy_db)

    apply_sql(legacy_db, UP)

    assert schema_snapshot(legacy_db) == schema
    assert _rows(legacy_db) == rows


def test_verify_legacy_then_migrated(
    legacy_db: psycopg.Connection[Any], legacy_data: LegacyData
) -> None:
    legacy = _verify(legacy_db)
    assert legacy == {
        "sessions_table_exists": True,
        "analysis_results_table_exists": True,
        "conversation_id_column_exists": False,
        "session_id_unique_constraint_exists": False,
        "conversation_id_index_exists": False,
        "no_duplicate_analyses": False,
        "sessions_rls_enabled": False,
        "analysis_results_rls_enabled": False,
        "sessions_policies_exist": False,
        "analysis_results_policies_exist": False,
        "freshness_columns_exist": False,
        "claims_table_exists": False,
        "claims_rls_enabled": False,
        "claims_policies_exist": False,
        "lookup_function_exists": False,
        "save_function_exists": False,
        "functions_not_executable_by_anon": False,
        "cache_stats_table_exists": False,
        "cache_stats_rls_enabled": False,
        "cache_stats_policies_exist": False,
        "stats_functions_exist": False,
        "stats_functions_for_operators_only": False,
    }

    apply_sql(legacy_db, UP)
    migrated = _verify(legacy_db)
    assert {name for name, passed in migrated.items() if not passed} == {
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
    }

    apply_sql(legacy_db, "migrations/002_add_freshness_and_claims")
    apply_sql(legacy_db, "migrations/003_add_cache_stats")
    apply_sql(legacy_db, "policies")
    assert all(_verify(legacy_db).values())


def test_rollback_restores_legacy_schema_and_keeps_data(
    legacy_db: psycopg.Connection[Any], legacy_data: LegacyData
) -> None:
    legacy_schema = schema_snapshot(legacy_db)
    apply_sql(legacy_db, UP)
    legacy_db.execute("update public.salesai_sessions set conversation_id = 'call'")
    rows = _rows(legacy_db)

    apply_sql(legacy_db, DOWN)

    assert schema_snapshot(legacy_db) == legacy_schema
    assert _rows(legacy_db) == rows
    column = legacy_db.execute(
        "select count(*) from information_schema.columns "
        "where table_name = 'salesai_sessions' and column_name = 'conversation_id'"
    ).fetchone()
    assert column == (0,)
    leftovers = legacy_db.execute(
        "select to_regclass('public.idx_salesai_sessions_conversation'), "
        "to_regclass('public.salesai_analysis_results_session_id_key'), "
        "(select count(*) from pg_constraint "
        " where conname = 'salesai_analysis_results_session_id_key')"
    ).fetchone()
    assert leftovers == (None, None, 0)
    # Duplicates are allowed again.
    _analysis(legacy_db, legacy_data.sessions["distinct"], T1, T1)


def test_rollback_twice_then_migration_again(
    legacy_db: psycopg.Connection[Any], legacy_data: LegacyData
) -> None:
    apply_sql(legacy_db, UP)
    migrated_schema = schema_snapshot(legacy_db)
    legacy_db.execute("update public.salesai_sessions set conversation_id = 'call'")

    apply_sql(legacy_db, DOWN)
    apply_sql(legacy_db, DOWN)
    apply_sql(legacy_db, UP)

    assert schema_snapshot(legacy_db) == migrated_schema
    lost = legacy_db.execute(
        "select count(*) from public.salesai_sessions where conversation_id is null"
    ).fetchone()
    assert lost == (len(legacy_data.sessions),), "conversation ids are lost"
    assert _verify(legacy_db)["no_duplicate_analyses"] is True


def test_migration_on_setup_database_is_a_no_op(db: psycopg.Connection[Any]) -> None:
    schema = schema_snapshot(db)

    apply_sql(db, UP)

    assert schema_snapshot(db) == schema


def test_migration_gives_up_on_lock_timeout(
    legacy_db: psycopg.Connection[Any],
    legacy_data: LegacyData,
    bare_database_url: str,
) -> None:
    """
    A transaction that holds the analyses table makes the migration stop
    with 55P03 after its lock_timeout, leaving everything as it was.
    """
    schema = schema_snapshot(legacy_db)
    holding = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(bare_database_url) as other:
            other.execute("select count(*) from public.salesai_analysis_results")
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(errors.LockNotAvailable):
            apply_sql(legacy_db, UP)
    finally:
        release.set()
        holder.join()

    assert schema_snapshot(legacy_db) == schema
    apply_sql(legacy_db, UP)
    assert _verify(legacy_db)["no_duplicate_analyses"] is True


def test_002_needs_001(legacy_db: psycopg.Connection[Any]) -> None:
    before = schema_snapshot(legacy_db)
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
        apply_sql(legacy_db, "migrations/002_add_freshness_and_claims")
    assert "migration 001 is not applied" in str(info.value)
    assert schema_snapshot(legacy_db) == before


def test_001_rollback_needs_002_rollback(legacy_db: psycopg.Connection[Any]) -> None:
    apply_sql(legacy_db, UP)
    apply_sql(legacy_db, "migrations/002_add_freshness_and_claims")
    before = schema_snapshot(legacy_db)
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as info:
        apply_sql(legacy_db, DOWN)
    assert "migration 002 is still applied" in str(info.value)
    assert schema_snapshot(legacy_db) == before
