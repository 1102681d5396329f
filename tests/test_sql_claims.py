"""
Migration 002 on a real PostgreSQL: its rollback, and the functions
salesai_lookup_analysis and salesai_save_analysis, as each API role and with
concurrent callers on separate connections.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row

from salesai_cache._local.database import (
    apply_sql,
    as_role,
    create_auth_user,
    run_verify,
    schema_snapshot,
)

pytestmark = pytest.mark.sql

UP_001 = "migrations/001_add_conversation_id_and_caching"
DOWN_001 = "migrations/001_add_conversation_id_and_caching_rollback"
UP = "migrations/002_add_freshness_and_claims"
DOWN = "migrations/002_add_freshness_and_claims_rollback"

LOOKUP_SIGNATURE = (
    "public.salesai_lookup_analysis(uuid, text, text, text, double precision, boolean)"
)
SAVE_SIGNATURE = (
    "public.salesai_save_analysis(uuid, jsonb, text, integer, integer, integer, "
    "text, text, text)"
)

# Called with named arguments, as PostgREST calls a function.
LOOKUP = """
    select * from public.salesai_lookup_analysis(
      p_session_id => %(session)s,
      p_transcript_hash => %(hash)s,
      p_analysis_version => %(version)s,
      p_claimant => %(claimant)s,
      p_lease_seconds => %(lease)s,
      p_force => %(force)s
    )
"""
SAVE = """
    select * from public.salesai_save_analysis(
      p_session_id => %(session)s,
      p_analysis => %(analysis)s,
      p_model => 'gpt-test',
      p_prompt_tokens => 1,
      p_completion_tokens => 2,
      p_total_tokens => 3,
      p_transcript_hash => %(hash)s,
      p_analysis_version => %(version)s,
      p_claimant => %(claimant)s
    )
"""

LOOKUP_COLUMNS = [
    "session_id",
    "analysis",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "transcript_hash",
    "analysis_version",
    "created_at",
    "updated_at",
    "age_seconds",
    "fresh",
    "claimed",
    "claim_expires_at",
]

HASH = "sha256:transcript-1"
VERSION = "gpt-test:prompt-1"

# A service role without BYPASSRLS, as in tests/test_sql_policies.py: a
# member of service_role that inherits its privileges and policies but not
# the attribute. Roles are cluster-wide; it is created once and kept.
NO_BYPASS_ROLE = "salesai_test_service_without_bypassrls"


def _lookup(
    conn: psycopg.Connection[Any],
    session: str,
    claimant: str | None = "worker-a",
    *,
    transcript_hash: str | None = HASH,
    version: str | None = VERSION,
    lease: float | None = 60.0,
    force: bool | None = False,
) -> dict[str, Any]:
    params = {
        "session": session,
        "hash": transcript_hash,
        "version": version,
        "claimant": claimant,
        "lease": lease,
        "force": force,
    }
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(LOOKUP, params).fetchall()
    assert len(rows) == 1
    return rows[0]


def _save(
    conn: psycopg.Connection[Any],
    session: str,
    claimant: str | None = "worker-a",
    *,
    transcript_hash: str | None = HASH,
    version: str | None = VERSION,
    analysis: dict[str, Any] | None = None,
) -> dict[str, Any]:
    params = {
        "session": session,
        "analysis": json.dumps(analysis if analysis is not None else {"score": 1}),
        "hash": transcript_hash,
        "version": version,
        "claimant": claimant,
    }
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(SAVE, params).fetchall()
    assert len(rows) == 1
    return rows[0]


def _claims(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select session_id::text, claimant from public.salesai_analysis_claims "
        "order by session_id"
    ).fetchall()


def _new_session(conn: psycopg.Connection[Any], user: str) -> str:
    row = conn.execute(
        "insert into public.salesai_sessions (user_id) values (%s) returning id::text",
        [user],
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def user_id(db: psycopg.Connection[Any]) -> str:
    return create_auth_user(db, "rep@example.com")


@pytest.fixture
def session_id(db: psycopg.Connection[Any], user_id: str) -> str:
    return _new_session(db, user_id)


@pytest.fixture
def no_bypass_role(db: psycopg.Connection[Any]) -> str:
    db.execute(
        f"""
        do $$
        begin
          if not exists (select from pg_roles where rolname = '{NO_BYPASS_ROLE}') then
            create role {NO_BYPASS_ROLE} nologin inherit nobypassrls;
          end if;
        end
        $$
        """
    )
    granted = db.execute(
        "select pg_has_role(%s, 'service_role', 'usage')", [NO_BYPASS_ROLE]
    ).fetchone()
    if granted != (True,):
        db.execute(f"grant service_role to {NO_BYPASS_ROLE}")
    return NO_BYPASS_ROLE


# Migration and rollback.


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


def _analyses(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select id, session_id, analysis, model, total_tokens, created_at, "
        "updated_at from public.salesai_analysis_results order by id"
    ).fetchall()


@pytest.fixture
def migrated_001(legacy_db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """
    The legacy schema with migration 001 applied and one analysed session.
    """
    apply_sql(legacy_db, UP_001)
    user = create_auth_user(legacy_db, "rep@example.com")
    session = _new_session(legacy_db, user)
    legacy_db.execute(
        "insert into public.salesai_analysis_results (session_id, analysis, model) "
        """values (%s, '{"score": 4}', 'gpt-old')""",
        [session],
    )
    _new_session(legacy_db, user)
    return legacy_db


def test_migration_up_twice_down_up(migrated_001: psycopg.Connection[Any]) -> None:
    conn = migrated_001
    before = schema_snapshot(conn)
    analyses = _analyses(conn)

    apply_sql(conn, UP)
    migrated = schema_snapshot(conn)
    privileges = _function_privileges(conn)
    stale = conn.execute(
        "select transcript_hash, analysis_version from public.salesai_analysis_results"
    ).fetchall()
    assert stale == [(None, None)], "older analyses have no fingerprints"
    assert _analyses(conn) == analyses

    sessions = conn.execute(
        "select id::text from public.salesai_sessions order by id"
    ).fetchall()
    for (session,) in sessions:
        _lookup(conn, session)
    apply_sql(conn, UP)

    assert schema_snapshot(conn) == migrated
    assert _function_privileges(conn) == privileges
    assert len(_claims(conn)) == len(sessions), "a second run keeps the claims"

    apply_sql(conn, DOWN)
    assert schema_snapshot(conn) == before
    assert _analyses(conn) == analyses
    apply_sql(conn, DOWN)
    assert schema_snapshot(conn) == before

    apply_sql(conn, UP)
    assert schema_snapshot(conn) == migrated
    assert _function_privileges(conn) == privileges
    assert _claims(conn) == [], "the rollback dropped the claims"


def test_rollbacks_restore_legacy_schema(legacy_db: psycopg.Connection[Any]) -> None:
    legacy = schema_snapshot(legacy_db)

    apply_sql(legacy_db, UP_001)
    apply_sql(legacy_db, UP)
    apply_sql(legacy_db, DOWN)
    apply_sql(legacy_db, DOWN_001)

    assert schema_snapshot(legacy_db) == legacy
    leftovers = legacy_db.execute(
        "select to_regclass('public.salesai_analysis_claims'), "
        "to_regprocedure(%s), to_regprocedure(%s)",
        [LOOKUP_SIGNATURE, SAVE_SIGNATURE],
    ).fetchone()
    assert leftovers == (None, None, None)


def test_migration_on_setup_database_is_a_no_op(db: psycopg.Connection[Any]) -> None:
    schema = schema_snapshot(db)
    privileges = _function_privileges(db)

    apply_sql(db, UP)

    assert schema_snapshot(db) == schema
    assert _function_privileges(db) == privileges


def test_verify_lists_missing_002_objects(
    migrated_001: psycopg.Connection[Any],
) -> None:
    rows = {name: (passed, detail) for name, passed, detail in run_verify(migrated_001)}

    for name in (
        "freshness_columns_exist",
        "claims_table_exists",
        "claims_rls_enabled",
        "claims_policies_exist",
        "lookup_function_exists",
        "save_function_exists",
    ):
        passed, detail = rows[name]
        assert passed is False, name
        assert detail.endswith("run migration 002"), detail
    assert rows["functions_not_executable_by_anon"][0] is False

    apply_sql(migrated_001, UP)
    apply_sql(migrated_001, "migrations/003_add_cache_stats")
    apply_sql(migrated_001, "policies")

    failed = [row for row in run_verify(migrated_001) if not row[1]]
    assert failed == []


def test_verify_reports_anon_execute(db: psycopg.Connection[Any]) -> None:
    db.execute(f"grant execute on function {SAVE_SIGNATURE} to anon")

    rows = {name: (passed, detail) for name, passed, detail in run_verify(db)}

    assert rows["functions_not_executable_by_anon"] == (
        False,
        "anon or PUBLIC may execute salesai_save_analysis(uuid,jsonb,text,integer,"
        "integer,integer,text,text,text): run migration 002 again, which revokes it",
    )
    apply_sql(db, UP)
    assert all(passed for _, passed, _ in run_verify(db))


def test_verify_reports_public_execute(db: psycopg.Connection[Any]) -> None:
    db.execute(f"grant execute on function {LOOKUP_SIGNATURE} to public")

    rows = {name: passed for name, passed, _ in run_verify(db)}

    assert rows["functions_not_executable_by_anon"] is False


def test_migration_gives_up_on_lock_timeout(
    migrated_001: psycopg.Connection[Any], bare_database_url: str
) -> None:
    """
    A transaction that holds the analyses table makes the migration stop with
    55P03 after its lock_timeout, leaving everything as it was.
    """
    schema = schema_snapshot(migrated_001)
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
            apply_sql(migrated_001, UP)
    finally:
        release.set()
        holder.join()

    assert schema_snapshot(migrated_001) == schema


# Catalog: privileges and settings of the functions.


def test_functions_pin_search_path(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        "select proname, proconfig, prosecdef, provolatile from pg_proc "
        "where oid in (%s::regprocedure, %s::regprocedure) order by proname",
        [LOOKUP_SIGNATURE, SAVE_SIGNATURE],
    ).fetchall()

    assert [row[0] for row in rows] == [
        "salesai_lookup_analysis",
        "salesai_save_analysis",
    ]
    for name, config, security_definer, volatility in rows:
        assert config == ['search_path=""'], name
        assert security_definer is False, name
        assert volatility == "v", name


@pytest.mark.parametrize("signature", [LOOKUP_SIGNATURE, SAVE_SIGNATURE])
@pytest.mark.parametrize(
    ("role", "allowed"),
    [("anon", False), ("authenticated", True), ("service_role", True)],
)
def test_function_execute_privilege(
    db: psycopg.Connection[Any], signature: str, role: str, allowed: bool
) -> None:
    row = db.execute(
        "select has_function_privilege(%s, %s, 'execute')", [role, signature]
    ).fetchone()

    assert row == (allowed,)


@pytest.mark.parametrize("signature", [LOOKUP_SIGNATURE, SAVE_SIGNATURE])
def test_public_cannot_execute(db: psycopg.Connection[Any], signature: str) -> None:
    row = db.execute(
        "select count(*) from pg_proc, "
        "aclexplode(coalesce(proacl, acldefault('f', proowner))) as acl "
        "where oid = %s::regprocedure and acl.grantee = 0",
        [signature],
    ).fetchone()

    assert row == (0,)


def test_default_privileges_let_anon_execute(db: psycopg.Connection[Any]) -> None:
    """
    The control of the tests above: as on Supabase, a new function in public
    is executable by anon until it is revoked.
    """
    db.execute("create function public.probe_privileges() returns int return 1")

    row = db.execute(
        "select has_function_privilege('anon', 'public.probe_privileges()', 'execute')"
    ).fetchone()

    assert row == (True,)


# The lookup and the save, as the superuser.


def test_lookup_claims_missing_analysis(
    db: psycopg.Connection[Any], session_id: str
) -> None:
    row = _lookup(db, session_id, lease=60)

    assert list(row) == LOOKUP_COLUMNS
    assert row["claimed"] is True
    assert row["fresh"] is False
    assert row["session_id"] is None
    assert row["analysis"] is None
    assert row["age_seconds"] is None
    assert _claims(db) == [(session_id, "worker-a")]
    lease = db.execute(
        "select expires_at = %s, expires_at - claimed_at "
        "from public.salesai_analysis_claims",
        [row["claim_expires_at"]],
    ).fetchone()
    assert lease is not None
    assert lease[0] is True
    assert lease[1].total_seconds() == 60


def test_lookup_other_claimant_not_claimed(
    db: psycopg.Connection[Any], session_id: str
) -> None:
    first = _lookup(db, session_id, "worker-a")

    second = _lookup(db, session_id, "worker-b")

    assert second["claimed"] is False
    assert second["fresh"] is False
    assert second["claim_expires_at"] == first["claim_expires_at"]
    assert _claims(db) == [(session_id, "worker-a")]


def test_lookup_same_claimant_renews(
    db: psycopg.Connection[Any], session_id: str
) -> None:
    first = _lookup(db, session_id, "worker-a", lease=30)
    claimed_at = db.execute(
        "select claimed_at from public.salesai_analysis_claims"
    ).fetchone()

    again = _lookup(db, session_id, "worker-a", lease=60)

    assert again["claimed"] is True
    assert again["claim_expires_at"] > first["claim_expires_at"]
    kept = db.execute("select claimed_at from public.salesai_analysis_claims")
    assert kept.fetchone() == claimed_at, "a renewal keeps claimed_at"


def test_expired_lease_taken_over(db: psycopg.Connection[Any], session_id: str) -> None:
    _lookup(db, session_id, "worker-a", lease=0.2)
    assert _lookup(db, session_id, "worker-b")["claimed"] is False

    time.sleep(0.3)
    row = _lookup(db, session_id, "worker-b")

    assert row["claimed"] is True
    assert _claims(db) == [(session_id, "worker-b")]
    assert _lookup(db, session_id, "worker-a")["claimed"] is False


def test_expired_claim_row_taken_over(
    db: psycopg.Connection[Any], session_id: str
) -> None:
    db.execute(
        "insert into public.salesai_analysis_claims "
        "(session_id, claimant, claimed_at, expires_at) "
        "values (%s, 'crashed', now() - interval '2 min', now() - interval '1 s')",
        [session_id],
    )

    row = _lookup(db, session_id, "worker-b")

    assert row["claimed"] is True
    assert _claims(db) == [(session_id, "worker-b")]


def test_save_stores_and_releases(db: psycopg.Connection[Any], session_id: str) -> None:
    _lookup(db, session_id, "worker-a")

    saved = _save(db, session_id, "worker-a", analysis={"score": 7})

    assert saved["session_id"] == uuid.UUID(session_id)
    assert saved["analysis"] == {"score": 7}
    assert saved["transcript_hash"] == HASH
    assert saved["analysis_version"] == VERSION
    assert (saved["prompt_tokens"], saved["total_tokens"]) == (1, 3)
    assert _claims(db) == []

    row = _lookup(db, session_id, "worker-b")

    assert row["fresh"] is True
    assert row["claimed"] is False
    assert row["claim_expires_at"] is None
    assert row["analysis"] == {"score": 7}
    assert row["updated_at"] == saved["updated_at"]
    assert 0 <= row["age_seconds"] < 5
    assert _claims(db) == []


def test_save_replaces_analysis(db: psycopg.Connection[Any], session_id: str) -> None:
    first = _save(db, session_id, analysis={"score": 1})

    second = _save(db, session_id, transcript_hash="sha256:new", analysis={"x": 2})

    assert second["id"] == first["id"]
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]
    assert second["transcript_hash"] == "sha256:new"
    count = db.execute("select count(*) from public.salesai_analysis_results")
    assert count.fetchone() == (1,)


def test_save_keeps_other_claim(db: psycopg.Connection[Any], session_id: str) -> None:
    _lookup(db, session_id, "worker-b")

    _save(db, session_id, "worker-a")
    _save(db, session_id, None)

    assert _claims(db) == [(session_id, "worker-b")]


@pytest.mark.parametrize(
    "changed",
    [{"transcript_hash": "sha256:other"}, {"version": "gpt-test:prompt-2"}],
)
def test_changed_fingerprint_is_stale(
    db: psycopg.Connection[Any], session_id: str, changed: dict[str, str]
) -> None:
    _save(db, session_id, analysis={"score": 5})

    row = _lookup(db, session_id, "worker-b", **changed)

    assert row["fresh"] is False
    assert row["claimed"] is True
    assert row["analysis"] == {"score": 5}, "the stale analysis is returned"
    assert row["transcript_hash"] == HASH


def test_force_claims_fresh_analysis(
    db: psycopg.Connection[Any], session_id: str
) -> None:
    _save(db, session_id)

    row = _lookup(db, session_id, "worker-b", force=True)

    assert row["fresh"] is True
    assert row["claimed"] is True
    assert _claims(db) == [(session_id, "worker-b")]
    assert _lookup(db, session_id, "worker-c", force=True)["claimed"] is False


@pytest.mark.parametrize(
    ("stored", "given"),
    [
        ((None, None), (HASH, VERSION)),
        ((HASH, None), (HASH, VERSION)),
        ((None, None), (None, None)),
        ((HASH, VERSION), (None, VERSION)),
    ],
)
def test_null_fingerprint_never_fresh(
    db: psycopg.Connection[Any],
    session_id: str,
    stored: tuple[str | None, str | None],
    given: tuple[str | None, str | None],
) -> None:
    db.execute(
        "insert into public.salesai_analysis_results "
        "(session_id, analysis, model, transcript_hash, analysis_version) "
        "values (%s, '{}', 'gpt-old', %s, %s)",
        [session_id, *stored],
    )

    row = _lookup(db, session_id, transcript_hash=given[0], version=given[1])

    assert row["fresh"] is False
    assert row["claimed"] is True


def test_unknown_session_is_23503(db: psycopg.Connection[Any]) -> None:
    unknown = str(uuid.uuid4())

    with pytest.raises(errors.ForeignKeyViolation) as lookup_error:
        _lookup(db, unknown)
    with pytest.raises(errors.ForeignKeyViolation) as save_error:
        _save(db, unknown)

    assert lookup_error.value.sqlstate == "23503"
    assert lookup_error.value.diag.constraint_name == (
        "salesai_analysis_claims_session_id_fkey"
    )
    assert save_error.value.sqlstate == "23503"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"lease": 0}, "invalid lease of 0 seconds"),
        ({"lease": -1.5}, "invalid lease of -1.5 seconds"),
        ({"lease": None}, "invalid lease of NULL seconds"),
        ({"lease": float("nan")}, "invalid lease of NaN seconds"),
        ({"lease": float("inf")}, "invalid lease of Infinity seconds"),
        ({"lease": 4e7}, "at most 31536000 (one year)"),
        ({"claimant": None}, "invalid claimant NULL"),
        ({"claimant": ""}, "invalid claimant ''"),
        ({"force": None}, "invalid p_force NULL"),
    ],
)
def test_invalid_argument_is_22023(
    db: psycopg.Connection[Any],
    session_id: str,
    arguments: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(errors.InvalidParameterValue) as caught:
        _lookup(db, session_id, **arguments)

    assert caught.value.sqlstate == "22023"
    assert message in str(caught.value)
    assert _claims(db) == []


def test_null_session_is_22023(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.InvalidParameterValue, match="invalid session id"):
        _lookup(db, None)  # type: ignore[arg-type]


def test_deleting_session_deletes_claim(
    db: psycopg.Connection[Any], session_id: str
) -> None:
    _lookup(db, session_id)

    db.execute("delete from public.salesai_sessions where id = %s", [session_id])

    assert _claims(db) == []


# Concurrency: each caller has its own connection, as separate workers have.


def _run_at_once(
    database_url: str, calls: list[Callable[[psycopg.Connection[Any]], Any]]
) -> list[Any]:
    """
    Run each call on its own connection, released together by a barrier.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    failures: list[BaseException] = []

    def run(index: int, connection: psycopg.Connection[Any]) -> None:
        try:
            barrier.wait(10)
            results[index] = calls[index](connection)
        except BaseException as error:
            failures.append(error)

    connections = [psycopg.connect(database_url, autocommit=True) for _ in calls]
    try:
        threads = [
            threading.Thread(target=run, args=(index, connection))
            for index, connection in enumerate(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for connection in connections:
            connection.close()
    assert failures == []
    return results


@pytest.mark.parametrize("round_number", range(5))
def test_concurrent_lookups_one_claim(
    db: psycopg.Connection[Any],
    database_url: str,
    session_id: str,
    round_number: int,
) -> None:
    claimants = [f"worker-{index}" for index in range(8)]

    rows = _run_at_once(
        database_url,
        [
            lambda conn, claimant=claimant: _lookup(conn, session_id, claimant)
            for claimant in claimants
        ],
    )

    winners = [row["claimed"] for row in rows].count(True)
    assert winners == 1
    holder = _claims(db)
    assert len(holder) == 1
    assert holder[0][1] in claimants
    assert {row["claim_expires_at"] for row in rows} != {None}


@pytest.mark.parametrize("round_number", range(5))
def test_concurrent_takeover_one_claim(
    db: psycopg.Connection[Any],
    database_url: str,
    session_id: str,
    round_number: int,
) -> None:
    db.execute(
        "insert into public.salesai_analysis_claims "
        "(session_id, claimant, expires_at) "
        "values (%s, 'crashed', now() - interval '1 s')",
        [session_id],
    )
    claimants = [f"worker-{index}" for index in range(8)]

    rows = _run_at_once(
        database_url,
        [
            lambda conn, claimant=claimant: _lookup(conn, session_id, claimant)
            for claimant in claimants
        ],
    )

    assert [row["claimed"] for row in rows].count(True) == 1
    holder = _claims(db)
    assert len(holder) == 1
    assert holder[0][1] != "crashed"


def test_lookup_during_save_returns_saved(
    db: psycopg.Connection[Any], database_url: str, session_id: str
) -> None:
    """
    A lookup whose claim insert waits for a save that releases the claim
    rereads the analysis, and finds it fresh instead of claiming.
    """
    _lookup(db, session_id, "worker-a")
    result: dict[str, Any] = {}

    with (
        psycopg.connect(database_url) as saver,
        psycopg.connect(database_url, autocommit=True) as waiter,
    ):
        _save(saver, session_id, "worker-a")
        waiter_pid = waiter.info.backend_pid

        def look_up() -> None:
            result.update(_lookup(waiter, session_id, "worker-b"))

        thread = threading.Thread(target=look_up)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                state = db.execute(
                    "select wait_event_type from pg_stat_activity where pid = %s",
                    [waiter_pid],
                ).fetchone()
                if state == ("Lock",):
                    break
                time.sleep(0.01)
            assert state == ("Lock",), "the lookup waits for the save"
            saver.commit()
        finally:
            thread.join(30)

    assert result["fresh"] is True
    assert result["claimed"] is False
    assert _claims(db) == []


# As each API role, the way PostgREST runs a request.


def test_anon_cannot_execute(db: psycopg.Connection[Any], session_id: str) -> None:
    with (
        pytest.raises(errors.InsufficientPrivilege) as lookup_error,
        as_role(db, "anon"),
    ):
        _lookup(db, session_id)
    with (
        pytest.raises(errors.InsufficientPrivilege) as save_error,
        as_role(db, "anon"),
    ):
        _save(db, session_id)

    assert lookup_error.value.sqlstate == "42501"
    assert "permission denied for function salesai_lookup_analysis" in str(
        lookup_error.value
    )
    assert "permission denied for function salesai_save_analysis" in str(
        save_error.value
    )
    assert _claims(db) == []


def test_authenticated_cannot_claim_or_save(
    db: psycopg.Connection[Any], session_id: str, user_id: str
) -> None:
    with (
        pytest.raises(errors.InsufficientPrivilege) as claim_error,
        as_role(db, "authenticated", user_id),
    ):
        _lookup(db, session_id)
    with (
        pytest.raises(errors.InsufficientPrivilege) as save_error,
        as_role(db, "authenticated", user_id),
    ):
        _save(db, session_id)

    assert "row-level security" in str(claim_error.value)
    assert "salesai_analysis_claims" in str(claim_error.value)
    assert "row-level security" in str(save_error.value)
    assert _claims(db) == []


def test_authenticated_reads_fresh_not_claims(
    db: psycopg.Connection[Any], session_id: str, user_id: str
) -> None:
    _save(db, session_id, analysis={"score": 8})
    _lookup(db, session_id, "worker-b", force=True)

    with as_role(db, "authenticated", user_id):
        row = _lookup(db, session_id, "user")
        visible = db.execute(
            "select count(*) from public.salesai_analysis_claims"
        ).fetchone()
        changed = db.execute("delete from public.salesai_analysis_claims").rowcount

    assert row["fresh"] is True
    assert row["claimed"] is False
    assert row["analysis"] == {"score": 8}
    assert row["claim_expires_at"] is None, "the claim is invisible to users"
    assert visible == (0,)
    assert changed == 0
    assert _claims(db) == [(session_id, "worker-b")]


def test_other_user_gets_no_analysis(
    db: psycopg.Connection[Any], session_id: str
) -> None:
    """
    Another user's analysis is invisible, so the lookup tries to claim and
    fails instead of returning it.
    """
    _save(db, session_id)
    stranger = create_auth_user(db, "other@example.com")

    with (
        pytest.raises(errors.InsufficientPrivilege),
        as_role(db, "authenticated", stranger),
    ):
        _lookup(db, session_id, "user")


@pytest.mark.parametrize("role", ["service_role", "no_bypass"])
def test_service_role_cycle(
    db: psycopg.Connection[Any],
    session_id: str,
    no_bypass_role: str,
    role: str,
) -> None:
    name = no_bypass_role if role == "no_bypass" else role

    with as_role(db, name):
        claimed = _lookup(db, session_id, "worker-a", lease=0.2)
    with as_role(db, name):
        waiting = _lookup(db, session_id, "worker-b")
    time.sleep(0.3)
    with as_role(db, name):
        taken = _lookup(db, session_id, "worker-b")
    with as_role(db, name):
        renewed = _lookup(db, session_id, "worker-b")
    with as_role(db, name):
        saved = _save(db, session_id, "worker-b", analysis={"score": 9})
    with as_role(db, name):
        fresh = _lookup(db, session_id, "worker-c")
        claims = _claims(db)

    assert claimed["claimed"] is True
    assert waiting["claimed"] is False
    assert taken["claimed"] is True
    assert renewed["claimed"] is True
    assert saved["analysis"] == {"score": 9}
    assert fresh["fresh"] is True
    assert fresh["claimed"] is False
    assert claims == []
