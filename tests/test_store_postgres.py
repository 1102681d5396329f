"""
PostgresStore on a real database: reads, the upsert, transactions, and how
each psycopg error becomes a library exception.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from salesai_cache import (
    AnalysisCache,
    CacheStoreError,
    ConversationMetricsAnalyzer,
    SchemaMismatchError,
    SessionNotFoundError,
    TokenUsage,
)
from salesai_cache._local.database import as_role, create_auth_user
from salesai_cache._stores.postgres import PostgresStore

pytestmark = pytest.mark.sql

TRANSCRIPT = [{"speaker": "Rep", "text": "Shall we book the pilot?"}]
ANALYSIS = {"summary": "Clear next step."}
MODEL = "gpt-4o-mini-2024-07-18"
USAGE = TokenUsage(prompt_tokens=812, completion_tokens=164, total_tokens=976)
UNKNOWN_SESSION = "6f1c2f0e-2b7c-4c55-9d1e-0a4b8c3d2e1f"
MIGRATION = "sql/migrations/001_add_conversation_id_and_caching.sql"
MIGRATION_002 = "sql/migrations/002_add_freshness_and_claims.sql"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        yield connection


@pytest.fixture
def store(conn: psycopg.Connection[Any]) -> PostgresStore:
    return PostgresStore(conn)


@pytest.fixture
def user_id(db: psycopg.Connection[Any]) -> str:
    return create_auth_user(db, "rep@example.test")


@pytest.fixture
def session_id(db: psycopg.Connection[Any], user_id: str) -> str:
    row = db.execute(
        "insert into public.salesai_sessions (user_id, transcript, conversation_id) "
        "values (%s, %s, 'call-7') returning id",
        (user_id, Jsonb(TRANSCRIPT)),
    ).fetchone()
    assert row is not None
    return str(row[0])


def count_rows(db: psycopg.Connection[Any], session_id: str) -> int:
    row = db.execute(
        "select count(*) from public.salesai_analysis_results where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def stamp(value: dt.datetime | None) -> dt.datetime:
    assert value is not None
    return value


# Reads and writes


def test_fetch_none(store: PostgresStore, session_id: str) -> None:
    assert store.fetch(session_id) is None


def test_save_returns_session(store: PostgresStore, session_id: str) -> None:
    assert store.save(session_id, ANALYSIS, MODEL, USAGE).session_id == session_id


def test_save_returns_usage(store: PostgresStore, session_id: str) -> None:
    assert store.save(session_id, ANALYSIS, MODEL, USAGE).usage == USAGE


def test_save_created_at(store: PostgresStore, session_id: str) -> None:
    created_at = store.save(session_id, ANALYSIS, MODEL, USAGE).created_at
    assert isinstance(created_at, dt.datetime) and created_at.tzinfo is not None


def test_fetch_after_save(store: PostgresStore, session_id: str) -> None:
    saved = store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert store.fetch(session_id) == saved


def test_save_jsonb(
    store: PostgresStore, db: psycopg.Connection[Any], session_id: str
) -> None:
    store.save(session_id, ANALYSIS, MODEL, USAGE)
    row = db.execute(
        "select jsonb_typeof(analysis) from public.salesai_analysis_results "
        "where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row == ("object",)


def test_upsert_replaces(store: PostgresStore, session_id: str) -> None:
    store.save(session_id, ANALYSIS, "old-model", USAGE)
    store.save(session_id, {"summary": "Redone."}, MODEL, USAGE)
    found = store.fetch(session_id)
    # The store reads the analysis as JSON text for the cache to validate.
    assert found is not None and json.loads(found.analysis) == {"summary": "Redone."}


def test_upsert_one_row(
    store: PostgresStore, db: psycopg.Connection[Any], session_id: str
) -> None:
    store.save(session_id, ANALYSIS, "old-model", USAGE)
    store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert count_rows(db, session_id) == 1


def test_upsert_advances_updated_at(store: PostgresStore, session_id: str) -> None:
    first = store.save(session_id, ANALYSIS, "old-model", USAGE)
    second = store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert stamp(second.updated_at) > stamp(first.updated_at)


def test_upsert_keeps_created_at(store: PostgresStore, session_id: str) -> None:
    first = store.save(session_id, ANALYSIS, "old-model", USAGE)
    assert store.save(session_id, ANALYSIS, MODEL, USAGE).created_at == first.created_at


def test_fetch_transcript(store: PostgresStore, session_id: str) -> None:
    assert store.fetch_transcript(session_id) == TRANSCRIPT


def test_fetch_transcript_unknown(store: PostgresStore) -> None:
    with pytest.raises(SessionNotFoundError):
        store.fetch_transcript(UNKNOWN_SESSION)


def test_fetch_by_conversation(store: PostgresStore, session_id: str) -> None:
    store.save(session_id, ANALYSIS, MODEL, USAGE)
    found = store.fetch_by_conversation("call-7")
    assert found is not None and found.session_id == session_id


def test_fetch_by_conversation_none(store: PostgresStore, session_id: str) -> None:
    store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert store.fetch_by_conversation("call-8") is None


def test_made_by_cache(conn: psycopg.Connection[Any]) -> None:
    cache = AnalysisCache(conn, ConversationMetricsAnalyzer())
    assert isinstance(cache.store, PostgresStore)


# Transactions


def test_commits_without_autocommit(
    store: PostgresStore, db: psycopg.Connection[Any], session_id: str
) -> None:
    store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert count_rows(db, session_id) == 1


def test_leaves_connection_idle(
    store: PostgresStore, conn: psycopg.Connection[Any], session_id: str
) -> None:
    store.fetch(session_id)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_autocommit_connection(
    database_url: str, db: psycopg.Connection[Any], session_id: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        PostgresStore(conn).save(session_id, ANALYSIS, MODEL, USAGE)
    assert count_rows(db, session_id) == 1


def test_joins_caller_transaction(
    store: PostgresStore,
    conn: psycopg.Connection[Any],
    db: psycopg.Connection[Any],
    session_id: str,
) -> None:
    # Inside the caller's transaction the save is a savepoint: the caller's
    # rollback undoes it.
    with conn.transaction(force_rollback=True):
        store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert count_rows(db, session_id) == 0


def test_error_keeps_caller_transaction(
    store: PostgresStore, conn: psycopg.Connection[Any], session_id: str
) -> None:
    with conn.transaction():
        with pytest.raises(SessionNotFoundError):
            store.save(UNKNOWN_SESSION, ANALYSIS, MODEL, USAGE)
        store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert store.fetch(session_id) is not None


def test_after_error_usable(store: PostgresStore, session_id: str) -> None:
    with pytest.raises(SessionNotFoundError):
        store.save(UNKNOWN_SESSION, ANALYSIS, MODEL, USAGE)
    assert store.save(session_id, ANALYSIS, MODEL, USAGE).model == MODEL


# Errors


def test_fk_session_missing(store: PostgresStore) -> None:
    with pytest.raises(SessionNotFoundError) as info:
        store.save(UNKNOWN_SESSION, ANALYSIS, MODEL, USAGE)
    assert info.value.session_id == UNKNOWN_SESSION


def test_fk_chained(store: PostgresStore) -> None:
    with pytest.raises(SessionNotFoundError) as info:
        store.save(UNKNOWN_SESSION, ANALYSIS, MODEL, USAGE)
    assert isinstance(info.value.__cause__, psycopg.errors.ForeignKeyViolation)


def test_fk_stores_nothing(store: PostgresStore, db: psycopg.Connection[Any]) -> None:
    with pytest.raises(SessionNotFoundError):
        store.save(UNKNOWN_SESSION, ANALYSIS, MODEL, USAGE)
    assert count_rows(db, UNKNOWN_SESSION) == 0


@pytest.fixture
def bare_store(bare_database_url: str) -> Iterator[PostgresStore]:
    with psycopg.connect(bare_database_url) as connection:
        yield PostgresStore(connection)


def test_table_missing(bare_store: PostgresStore) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        bare_store.fetch(UNKNOWN_SESSION)
    assert info.value.code == "42P01"


def test_table_missing_advice(bare_store: PostgresStore) -> None:
    with pytest.raises(SchemaMismatchError, match=re.escape("sql/setup.sql")):
        bare_store.fetch(UNKNOWN_SESSION)


def test_table_missing_chained(bare_store: PostgresStore) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        bare_store.fetch_transcript(UNKNOWN_SESSION)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)


@pytest.fixture
def legacy(
    legacy_db: psycopg.Connection[Any], bare_database_url: str
) -> Iterator[tuple[PostgresStore, str]]:
    user = create_auth_user(legacy_db, "legacy@example.test")
    row = legacy_db.execute(
        "insert into public.salesai_sessions (user_id, transcript) "
        "values (%s, %s) returning id",
        (user, Jsonb(TRANSCRIPT)),
    ).fetchone()
    assert row is not None
    with psycopg.connect(bare_database_url) as connection:
        yield PostgresStore(connection), str(row[0])


def test_legacy_column_missing(legacy: tuple[PostgresStore, str]) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        legacy[0].fetch_by_conversation("call-7")
    assert info.value.code == "42703"


def test_legacy_column_advice(legacy: tuple[PostgresStore, str]) -> None:
    with pytest.raises(SchemaMismatchError, match=re.escape(MIGRATION)):
        legacy[0].fetch_by_conversation("call-7")


def test_legacy_column_chained(legacy: tuple[PostgresStore, str]) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        legacy[0].fetch_by_conversation("call-7")
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedColumn)


def test_legacy_save(legacy: tuple[PostgresStore, str]) -> None:
    # The save runs a function of migration 002, missing here.
    store, session = legacy
    with pytest.raises(SchemaMismatchError) as info:
        store.save(session, ANALYSIS, MODEL, USAGE)
    assert info.value.code == "42883"


def test_legacy_save_advice(legacy: tuple[PostgresStore, str]) -> None:
    store, session = legacy
    with pytest.raises(SchemaMismatchError, match=re.escape(MIGRATION_002)):
        store.save(session, ANALYSIS, MODEL, USAGE)


def test_legacy_save_chained(legacy: tuple[PostgresStore, str]) -> None:
    store, session = legacy
    with pytest.raises(SchemaMismatchError) as info:
        store.save(session, ANALYSIS, MODEL, USAGE)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedFunction)


def test_legacy_fetch(legacy: tuple[PostgresStore, str]) -> None:
    # fetch reads the fingerprint columns of migration 002.
    store, session = legacy
    with pytest.raises(SchemaMismatchError, match=re.escape(MIGRATION_002)):
        store.fetch(session)


def test_legacy_lookup(legacy: tuple[PostgresStore, str]) -> None:
    store, session = legacy
    with pytest.raises(SchemaMismatchError) as info:
        store.lookup(session, "a" * 64, "v1", "worker-a", 30.0)
    # The lookup reads the fingerprint columns before it calls the function.
    assert info.value.code == "42703"


def user_save(
    conn: psycopg.Connection[Any], user_id: str, session_id: str
) -> CacheStoreError:
    # A user's role may read its analyses but only the service role writes
    # them (sql/policies.sql), so row-level security refuses the insert.
    conn.autocommit = True
    with pytest.raises(CacheStoreError) as info:  # noqa: SIM117
        with as_role(conn, "authenticated", user_id):
            PostgresStore(conn).save(session_id, ANALYSIS, MODEL, USAGE)
    return info.value


def test_rls_denied_code(
    conn: psycopg.Connection[Any], user_id: str, session_id: str
) -> None:
    assert user_save(conn, user_id, session_id).code == "42501"


def test_rls_denied_advice(
    conn: psycopg.Connection[Any], user_id: str, session_id: str
) -> None:
    assert "sql/policies.sql" in str(user_save(conn, user_id, session_id))


def test_rls_denied_chained(
    conn: psycopg.Connection[Any], user_id: str, session_id: str
) -> None:
    cause = user_save(conn, user_id, session_id).__cause__
    assert isinstance(cause, psycopg.errors.InsufficientPrivilege)


def test_rls_user_reads_own(
    conn: psycopg.Connection[Any], store: PostgresStore, user_id: str, session_id: str
) -> None:
    store.save(session_id, ANALYSIS, MODEL, USAGE)
    conn.autocommit = True
    with as_role(conn, "authenticated", user_id):
        found = store.fetch(session_id)
    assert found is not None


def test_rls_other_user_sees_nothing(
    conn: psycopg.Connection[Any],
    db: psycopg.Connection[Any],
    store: PostgresStore,
    session_id: str,
) -> None:
    store.save(session_id, ANALYSIS, MODEL, USAGE)
    stranger = create_auth_user(db, "stranger@example.test")
    conn.autocommit = True
    with as_role(conn, "authenticated", stranger):
        found = store.fetch(session_id)
    assert found is None


def test_closed_connection(store: PostgresStore, conn: psycopg.Connection[Any]) -> None:
    conn.close()
    with pytest.raises(CacheStoreError) as info:
        store.fetch(UNKNOWN_SESSION)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


def test_closed_connection_type(
    store: PostgresStore, conn: psycopg.Connection[Any]
) -> None:
    conn.close()
    with pytest.raises(CacheStoreError) as info:
        store.fetch(UNKNOWN_SESSION)
    assert type(info.value) is CacheStoreError


def test_terminated_connection(
    store: PostgresStore, conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    db.execute("select pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(CacheStoreError, match="connection"):
        store.fetch(UNKNOWN_SESSION)


def test_invalid_row(
    store: PostgresStore, db: psycopg.Connection[Any], session_id: str
) -> None:
    # Legacy rows may hold NULL tokens; the store reads them as 0.
    db.execute(
        "alter table public.salesai_analysis_results "
        "alter column total_tokens drop not null"
    )
    db.execute(
        "insert into public.salesai_analysis_results "
        "(session_id, analysis, model, total_tokens) values (%s, '{}', 'm', null)",
        (session_id,),
    )
    found = store.fetch(session_id)
    assert found is not None and found.usage.total_tokens == 0


# Threads


def test_threads_share_store(
    store: PostgresStore, db: psycopg.Connection[Any], user_id: str
) -> None:
    # psycopg lets threads share a connection but not run transactions on it
    # at once; the store's lock makes them take turns.
    sessions = [
        str(row[0])
        for row in db.execute(
            "insert into public.salesai_sessions (user_id) "
            "select %s from generate_series(1, 8) returning id",
            (user_id,),
        ).fetchall()
    ]
    errors: list[Exception] = []

    def worker(number: int) -> None:
        session = sessions[number]
        claimant = f"worker-{number}"
        try:
            for step in range(5):
                store.lookup(session, "a" * 64, "v1", claimant, 30.0)
                store.save(
                    session,
                    {"step": step},
                    MODEL,
                    USAGE,
                    transcript_hash="a" * 64,
                    analysis_version="v1",
                    claimant=claimant,
                )
                store.fetch(session)
                store.release(session, claimant)
        except Exception as error:
            # Kept for the assert: an exception in a thread would otherwise
            # only be printed.
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_threads_leave_idle(
    store: PostgresStore, conn: psycopg.Connection[Any], session_id: str
) -> None:
    def worker() -> None:
        for _ in range(20):
            store.fetch(session_id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
