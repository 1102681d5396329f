"""
sql/policies.sql on a real PostgreSQL, exercised as each API role the way
PostgREST runs a request: ``set local role`` and ``request.jwt.claims``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors

from salesai_cache._local.database import (
    apply_sql,
    as_role,
    create_auth_user,
    schema_snapshot,
)

pytestmark = pytest.mark.sql

# A service role without BYPASSRLS: a member of service_role, which inherits
# its privileges and policies but not the BYPASSRLS attribute. Roles are
# cluster-wide, so it is created once and kept. It owns nothing and cannot
# log in.
NO_BYPASS_ROLE = "salesai_test_service_without_bypassrls"

UPSERT = """
    insert into public.salesai_analysis_results
      (session_id, analysis, model, prompt_tokens, completion_tokens, total_tokens)
    values (%s, %s, %s, 1, 2, 3)
    on conflict (session_id) do update set
      analysis = excluded.analysis,
      model = excluded.model,
      prompt_tokens = excluded.prompt_tokens,
      completion_tokens = excluded.completion_tokens,
      total_tokens = excluded.total_tokens
    returning id
"""


@dataclass(frozen=True)
class Owner:
    user_id: str
    session_id: str
    analysis_id: str


@dataclass(frozen=True)
class Tenants:
    a: Owner
    b: Owner


def _owner(conn: psycopg.Connection[Any], email: str) -> Owner:
    user = create_auth_user(conn, email)
    session = conn.execute(
        "insert into public.salesai_sessions (user_id, conversation_id) "
        "values (%s, %s) returning id::text",
        [user, f"call-{email}"],
    ).fetchone()
    assert session is not None
    analysis = conn.execute(
        "insert into public.salesai_analysis_results (session_id, analysis, model) "
        """values (%s, '{"score": 1}', 'gpt-test') returning id::text""",
        [session[0]],
    ).fetchone()
    assert analysis is not None
    return Owner(user, session[0], analysis[0])


@pytest.fixture
def tenants(db: psycopg.Connection[Any]) -> Tenants:
    """
    Users A and B, each with one session and its analysis.
    """
    return Tenants(_owner(db, "a@example.com"), _owner(db, "b@example.com"))


def _ids(
    conn: psycopg.Connection[Any], role: str, user: str | None, table: str
) -> set[str]:
    with as_role(conn, role, user):
        rows = conn.execute(f"select id::text from public.{table}").fetchall()
    return {row[0] for row in rows}


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"select count(*) from public.{table}").fetchone()
    assert row is not None
    return int(row[0])


def test_anon_reads_nothing(db: psycopg.Connection[Any], tenants: Tenants) -> None:
    assert _ids(db, "anon", None, "salesai_sessions") == set()
    assert _ids(db, "anon", None, "salesai_analysis_results") == set()
    assert _ids(db, "service_role", None, "salesai_sessions") == {
        tenants.a.session_id,
        tenants.b.session_id,
    }


def test_anon_inserts_fail_with_42501(
    db: psycopg.Connection[Any], tenants: Tenants
) -> None:
    with pytest.raises(errors.InsufficientPrivilege) as caught, as_role(db, "anon"):
        db.execute(
            "insert into public.salesai_sessions (user_id) values (%s)",
            [tenants.a.user_id],
        )
    assert caught.value.sqlstate == "42501"
    assert "row-level security" in str(caught.value)

    with pytest.raises(errors.InsufficientPrivilege), as_role(db, "anon"):
        db.execute(
            "insert into public.salesai_analysis_results (session_id, analysis, model)"
            " values (%s, '{}', 'm')",
            [tenants.a.session_id],
        )
    assert _count(db, "salesai_sessions") == 2
    assert _count(db, "salesai_analysis_results") == 2


def test_anon_updates_and_deletes_change_nothing(
    db: psycopg.Connection[Any], tenants: Tenants
) -> None:
    with as_role(db, "anon"):
        updated = db.execute(
            "update public.salesai_analysis_results set model = 'forged'"
        ).rowcount
        deleted = db.execute("delete from public.salesai_sessions").rowcount

    assert (updated, deleted) == (0, 0)
    assert _count(db, "salesai_sessions") == 2
    models = db.execute("select distinct model from public.salesai_analysis_results")
    assert models.fetchall() == [("gpt-test",)]


@pytest.mark.parametrize("who", ["a", "b"])
def test_user_reads_only_own_rows(
    db: psycopg.Connection[Any], tenants: Tenants, who: str
) -> None:
    me: Owner = getattr(tenants, who)

    assert _ids(db, "authenticated", me.user_id, "salesai_sessions") == {me.session_id}
    assert _ids(db, "authenticated", me.user_id, "salesai_analysis_results") == {
        me.analysis_id
    }


def test_authenticated_without_user_reads_nothing(
    db: psycopg.Connection[Any], tenants: Tenants
) -> None:
    assert _ids(db, "authenticated", None, "salesai_sessions") == set()
    assert _ids(db, "authenticated", None, "salesai_analysis_results") == set()


@pytest.mark.parametrize("who", ["a", "b"])
def test_user_cannot_write_analyses(
    db: psycopg.Connection[Any], tenants: Tenants, who: str
) -> None:
    me: Owner = getattr(tenants, who)
    before = db.execute(
        "select id, analysis, model, updated_at from public.salesai_analysis_results "
        "order by id"
    ).fetchall()

    with (
        pytest.raises(errors.InsufficientPrivilege),
        as_role(db, "authenticated", me.user_id),
    ):
        db.execute(UPSERT, [me.session_id, json.dumps({"score": 9}), "forged"])
    with as_role(db, "authenticated", me.user_id):
        updated = db.execute(
            "update public.salesai_analysis_results set model = 'forged' "
            "where session_id = %s",
            [me.session_id],
        ).rowcount
        deleted = db.execute("delete from public.salesai_analysis_results").rowcount

    assert (updated, deleted) == (0, 0)
    after = db.execute(
        "select id, analysis, model, updated_at from public.salesai_analysis_results "
        "order by id"
    ).fetchall()
    assert after == before


def test_user_manages_own_sessions_only(
    db: psycopg.Connection[Any], tenants: Tenants
) -> None:
    a, b = tenants.a, tenants.b
    with as_role(db, "authenticated", a.user_id):
        created = db.execute(
            "insert into public.salesai_sessions (user_id) values (%s) returning id",
            [a.user_id],
        ).fetchone()
        renamed = db.execute(
            "update public.salesai_sessions set conversation_id = 'renamed' "
            "where id = %s",
            [a.session_id],
        ).rowcount
        others = db.execute(
            "update public.salesai_sessions set conversation_id = 'hijacked' "
            "where id = %s",
            [b.session_id],
        ).rowcount
        others_deleted = db.execute(
            "delete from public.salesai_sessions where id = %s", [b.session_id]
        ).rowcount
    assert created is not None
    assert (renamed, others, others_deleted) == (1, 0, 0)

    with (
        pytest.raises(errors.InsufficientPrivilege),
        as_role(db, "authenticated", a.user_id),
    ):
        db.execute(
            "insert into public.salesai_sessions (user_id) values (%s)", [b.user_id]
        )
    with (
        pytest.raises(errors.InsufficientPrivilege),
        as_role(db, "authenticated", a.user_id),
    ):
        db.execute(
            "update public.salesai_sessions set user_id = %s where id = %s",
            [b.user_id, a.session_id],
        )

    owners = dict(
        db.execute(
            "select id::text, (user_id::text, conversation_id) "
            "from public.salesai_sessions"
        ).fetchall()
    )
    assert owners[a.session_id] == (a.user_id, "renamed")
    assert owners[b.session_id] == (b.user_id, "call-b@example.com")
    assert len(owners) == 3


def test_user_deleting_session_removes_its_analysis(
    db: psycopg.Connection[Any], tenants: Tenants
) -> None:
    with as_role(db, "authenticated", tenants.a.user_id):
        deleted = db.execute(
            "delete from public.salesai_sessions where id = %s",
            [tenants.a.session_id],
        ).rowcount

    assert deleted == 1
    remaining = db.execute(
        "select id::text from public.salesai_analysis_results"
    ).fetchall()
    assert remaining == [(tenants.b.analysis_id,)]


def test_deleting_user_cascades(db: psycopg.Connection[Any], tenants: Tenants) -> None:
    db.execute("delete from auth.users where id = %s", [tenants.b.user_id])

    assert _count(db, "salesai_sessions") == 1
    assert _count(db, "salesai_analysis_results") == 1


def _service_role_cycle(
    conn: psycopg.Connection[Any], role: str, tenants: Tenants
) -> None:
    """
    What the library does with the service-role key: read, insert, upsert and
    delete analyses, and delete a session (its analysis goes with it).
    """
    conn.execute(
        "delete from public.salesai_analysis_results where id = %s",
        [tenants.b.analysis_id],
    )
    with as_role(conn, role):
        seen = conn.execute(
            "select count(*) from public.salesai_analysis_results"
        ).fetchone()
        inserted = conn.execute(
            UPSERT, [tenants.b.session_id, json.dumps({"score": 2}), "first"]
        ).fetchone()
        replaced = conn.execute(
            UPSERT, [tenants.b.session_id, json.dumps({"score": 3}), "second"]
        ).fetchone()
        sessions = conn.execute(
            "select count(*) from public.salesai_sessions"
        ).fetchone()
    assert seen == (1,)
    assert sessions == (2,)
    assert inserted is not None and replaced == inserted
    stored = conn.execute(
        "select analysis, model, total_tokens from public.salesai_analysis_results "
        "where session_id = %s",
        [tenants.b.session_id],
    ).fetchall()
    assert stored == [({"score": 3}, "second", 3)]

    with as_role(conn, role):
        deleted = conn.execute(
            "delete from public.salesai_analysis_results where session_id = %s",
            [tenants.a.session_id],
        ).rowcount
        dropped = conn.execute(
            "delete from public.salesai_sessions where id = %s",
            [tenants.b.session_id],
        ).rowcount
    assert (deleted, dropped) == (1, 1)
    assert _count(conn, "salesai_analysis_results") == 0
    assert _count(conn, "salesai_sessions") == 1


def test_service_role_does_everything(
    db: psycopg.Connection[Any], tenants: Tenants
) -> None:
    _service_role_cycle(db, "service_role", tenants)


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


def test_service_policies_work_without_bypassrls(
    db: psycopg.Connection[Any], tenants: Tenants, no_bypass_role: str
) -> None:
    bypass = db.execute(
        "select rolbypassrls from pg_roles where rolname = %s", [no_bypass_role]
    ).fetchone()
    assert bypass == (False,)

    _service_role_cycle(db, no_bypass_role, tenants)


def test_upsert_fails_without_service_policy(
    db: psycopg.Connection[Any], tenants: Tenants, no_bypass_role: str
) -> None:
    """
    The control of the test above: the explicit policies are what let it pass.
    """
    db.execute(
        'drop policy "Service role can create analyses" '
        "on public.salesai_analysis_results"
    )

    with pytest.raises(errors.InsufficientPrivilege), as_role(db, no_bypass_role):
        db.execute(UPSERT, [tenants.a.session_id, json.dumps({}), "m"])


def test_policies_twice_changes_nothing(db: psycopg.Connection[Any]) -> None:
    before = schema_snapshot(db)

    apply_sql(db, "policies")

    assert schema_snapshot(db) == before
    assert len(before["policies"]) == 23


def test_policies_follow_conventions(db: psycopg.Connection[Any]) -> None:
    rows = db.execute(
        "select tablename, policyname, cmd, roles::text[], qual, with_check "
        "from pg_policies where schemaname = 'public'"
    ).fetchall()

    assert rows
    for _table, name, command, roles, using, check in rows:
        assert command != "ALL", name
        assert len(roles) == 1, name
        assert roles[0] != "public", name
        assert not name.endswith("."), name
        assert name[0].isupper(), name
        if roles[0] == "authenticated":
            assert "( SELECT auth.uid() AS uid)" in (using or check), name
    per_role = {(table, command, roles[0]) for table, _, command, roles, _, _ in rows}
    assert len(per_role) == len(rows), "one policy per table, operation and role"
    assert not any(roles == ["anon"] for _, _, _, roles, _, _ in rows)
