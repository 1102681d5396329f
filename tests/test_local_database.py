"""
The local database helpers: the Supabase bootstrap, requests as API roles,
database copies and the embedded server.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from salesai_cache._local import database
from salesai_cache._local.database import (
    LocalPostgres,
    apply_sql,
    as_role,
    bootstrap_supabase,
    create_auth_user,
    create_database,
    drop_database,
    prepare_supabase_database,
    run_verify,
    schema_snapshot,
    setup_lock,
)


@pytest.mark.sql
def test_bootstrap_is_rerunnable(bare_db: psycopg.Connection[Any]) -> None:
    bootstrap_supabase(bare_db)
    bootstrap_supabase(bare_db)

    rows = bare_db.execute(
        "select rolname, rolcanlogin, rolinherit, rolbypassrls from pg_roles "
        "where rolname in ('anon', 'authenticated', 'service_role', "
        "'authenticator')"
    ).fetchall()
    roles = {name: tuple(flags) for name, *flags in rows}
    assert roles == {
        "anon": (False, False, False),
        "authenticated": (False, False, False),
        "service_role": (False, False, True),
        "authenticator": (True, False, False),
    }
    members = bare_db.execute(
        "select array_agg(r.rolname order by r.rolname) from pg_auth_members as m "
        "join pg_roles as r on r.oid = m.roleid "
        "where m.member = 'authenticator'::regrole"
    ).fetchone()
    assert members == (["anon", "authenticated", "service_role"],)


@pytest.mark.sql
def test_api_roles_get_privileges_on_new_tables(
    bare_db: psycopg.Connection[Any],
) -> None:
    """
    As on Supabase, tables created later are fully granted to the API roles.
    """
    bare_db.execute("create table public.later (id int)")

    granted = bare_db.execute(
        "select has_table_privilege(role, 'public.later', 'select, insert, update, "
        "delete') from unnest(array['anon', 'authenticated', 'service_role']) as role"
    ).fetchall()
    assert granted == [(True,), (True,), (True,)]


@pytest.mark.sql
def test_as_role_sets_role_and_claims(bare_db: psycopg.Connection[Any]) -> None:
    user = str(uuid.uuid4())

    with as_role(bare_db, "authenticated", user, claims={"email": "a@example.com"}):
        row = bare_db.execute(
            "select current_user, auth.uid()::text, auth.role(), auth.email(), "
            "auth.jwt() ->> 'sub'"
        ).fetchone()

    assert row == ("authenticated", user, "authenticated", "a@example.com", user)
    after = bare_db.execute(
        "select current_user = session_user, auth.uid(), "
        "coalesce(current_setting('request.jwt.claims', true), '')"
    ).fetchone()
    assert after == (True, None, "")


@pytest.mark.sql
def test_as_role_anon_has_no_user(bare_db: psycopg.Connection[Any]) -> None:
    with as_role(bare_db, "anon"):
        row = bare_db.execute("select current_user, auth.uid(), auth.role()").fetchone()

    assert row == ("anon", None, "anon")


@pytest.mark.sql
def test_auth_uid_reads_older_claim_setting(bare_db: psycopg.Connection[Any]) -> None:
    user = str(uuid.uuid4())
    with bare_db.transaction():
        bare_db.execute("select set_config('request.jwt.claim.sub', %s, true)", [user])
        row = bare_db.execute("select auth.uid()::text").fetchone()
    assert row == (user,)


@pytest.mark.sql
def test_as_role_refuses_open_transaction(bare_db: psycopg.Connection[Any]) -> None:
    with (
        bare_db.transaction(),
        pytest.raises(ValueError, match="idle connection"),
        as_role(bare_db, "anon"),
    ):
        pass


@pytest.mark.sql
def test_as_role_rolls_back_on_error(db: psycopg.Connection[Any]) -> None:
    user = create_auth_user(db, "rep@example.com")

    with pytest.raises(RuntimeError), as_role(db, "service_role"):
        db.execute("insert into public.salesai_sessions (user_id) values (%s)", [user])
        raise RuntimeError("abort the request")

    count = db.execute("select count(*) from public.salesai_sessions").fetchone()
    assert count == (0,)


@pytest.mark.sql
def test_apply_sql_failure_leaves_connection_usable(
    bare_db: psycopg.Connection[Any],
) -> None:
    """
    policies.sql needs the tables; its failed transaction is rolled back.
    """
    with pytest.raises(errors.UndefinedTable):
        apply_sql(bare_db, "policies")

    assert bare_db.execute("select 1").fetchone() == (1,)


@pytest.mark.sql
def test_apply_sql_needs_autocommit(bare_database_url: str) -> None:
    with (
        psycopg.connect(bare_database_url) as conn,
        pytest.raises(ValueError, match="autocommit"),
    ):
        apply_sql(conn, "setup")


@pytest.mark.sql
def test_prepare_supabase_database(postgres_url: str) -> None:
    name = f"salesai_test_prepare_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_url, name)
    try:
        prepare_supabase_database(url)
        prepare_supabase_database(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert all(passed for _, passed, _ in run_verify(conn))
    finally:
        drop_database(postgres_url, name)

    with psycopg.connect(postgres_url) as conn:
        left = conn.execute(
            "select count(*) from pg_database where datname = %s", [name]
        ).fetchone()
    assert left == (0,)


@pytest.fixture
def fresh_database_url(postgres_url: str, bare_template_database: str) -> Iterator[str]:
    """
    URL of a new, empty database; the bare template has created the roles.
    """
    name = f"salesai_test_fresh_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_url, name)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)


def prepare_at_once(url: str, workers: int) -> list[BaseException]:
    """
    Run prepare_supabase_database from ``workers`` threads, each with its own
    connection, released together; return what they raised.
    """
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            prepare_supabase_database(url)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.sql
def test_prepare_concurrent_fresh(fresh_database_url: str) -> None:
    assert prepare_at_once(fresh_database_url, 4) == []


@pytest.mark.sql
def test_prepare_concurrent_rerun(fresh_database_url: str) -> None:
    """
    Two demos on one kept data directory set up the same database again.
    """
    prepare_supabase_database(fresh_database_url)
    errors = [
        error for _ in range(3) for error in prepare_at_once(fresh_database_url, 4)
    ]
    assert errors == []


@pytest.mark.sql
def test_prepare_concurrent_verified(fresh_database_url: str) -> None:
    prepare_at_once(fresh_database_url, 4)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        assert all(passed for _, passed, _ in run_verify(conn))


@pytest.mark.sql
def test_prepare_waits_for_setup_lock(fresh_database_url: str) -> None:
    """
    A setup waits while another session holds the lock, instead of running
    alongside it.
    """
    with psycopg.connect(fresh_database_url, autocommit=True) as holder:
        with setup_lock(holder):
            worker = threading.Thread(
                target=prepare_supabase_database, args=(fresh_database_url,)
            )
            worker.start()
            waiting = wait_for_lock_waiter(holder)
        worker.join()
    assert waiting


def wait_for_lock_waiter(conn: psycopg.Connection[Any]) -> bool:
    """
    Whether another session of the database waits for an advisory lock
    within 10 s.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute(
            "select count(*) from pg_locks as l join pg_stat_activity as a "
            "on a.pid = l.pid where l.locktype = 'advisory' and not l.granted "
            "and a.datname = current_database()"
        ).fetchone()
        if row and row[0]:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.sql
def test_drop_database_ends_open_sessions(postgres_url: str) -> None:
    name = f"salesai_test_drop_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_url, name)
    lingering = psycopg.connect(url)
    try:
        drop_database(postgres_url, name)
        drop_database(postgres_url, name)
    finally:
        lingering.close()


def test_database_url_keeps_its_form() -> None:
    with_dbname = database._with_dbname

    assert (
        with_dbname("postgresql://postgres:@/postgres?host=/tmp/x", "other")
        == "postgresql://postgres:@/other?host=/tmp/x"
    )
    assert (
        with_dbname("postgresql:///postgres?host=/var/run/postgresql", "db")
        == "postgresql:///db?host=/var/run/postgresql"
    )
    converted = with_dbname("host=/tmp/x user=postgres dbname=postgres", "db")
    assert psycopg.conninfo.conninfo_to_dict(converted) == {
        "host": "/tmp/x",
        "user": "postgres",
        "dbname": "db",
    }


@pytest.mark.sql
def test_local_postgres_keeps_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    with (
        LocalPostgres.start(data_dir) as server,
        psycopg.connect(server.url, autocommit=True) as conn,
    ):
        conn.execute("create table kept (id int)")

    assert (data_dir / "PG_VERSION").is_file()
    with LocalPostgres.start(data_dir) as server, psycopg.connect(server.url) as conn:
        row = conn.execute("select to_regclass('public.kept')::text").fetchone()
    assert row == ("kept",)


@pytest.mark.sql
def test_schema_snapshot_sees_a_changed_default(db: psycopg.Connection[Any]) -> None:
    before = schema_snapshot(db)

    db.execute(
        "alter table public.salesai_analysis_results "
        "alter column model set default 'unknown'"
    )

    after = schema_snapshot(db)
    assert after["columns"] != before["columns"]
    assert {kind for kind in before if before[kind] != after[kind]} == {"columns"}
