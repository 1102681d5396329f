"""
Freshness, compute claims and invalidation on a real database, through both
stores: PostgresStore directly, and SupabaseStore through the PostgREST
emulator, so that both meet the same SQL functions of migration 002.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import respx
import supabase
from postgrest_emulator import (
    ANON_KEY,
    SERVICE_ROLE_KEY,
    URL,
    PostgrestEmulator,
    user_jwt,
)
from psycopg.types.json import Jsonb
from supabase.lib.client_options import SyncClientOptions

from salesai_cache import (
    CacheStoreError,
    Lookup,
    SchemaMismatchError,
    SessionNotFoundError,
    StoredAnalysis,
    TokenUsage,
)
from salesai_cache._local.database import apply_sql, create_auth_user
from salesai_cache._stores.postgres import PostgresStore
from salesai_cache._stores.supabase import SupabaseStore

pytestmark = [
    pytest.mark.sql,
    # supabase-py passes timeout and verify to its own PostgREST client, which
    # postgrest-py deprecates.
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

Store = PostgresStore | SupabaseStore

ANALYSIS = {"summary": "Clear next step."}
MODEL = "gpt-4o-mini-2024-07-18"
USAGE = TokenUsage(prompt_tokens=812, completion_tokens=164, total_tokens=976)
HASH = "a" * 64
OTHER_HASH = "b" * 64
VERSION = "gpt-4o-mini-2024-07-18:5d41402abc4b"
OTHER_VERSION = "gpt-4o-2024-08-06:5d41402abc4b"
LEASE = 30.0
UNKNOWN_SESSION = "6f1c2f0e-2b7c-4c55-9d1e-0a4b8c3d2e1f"
MIGRATION_002 = "sql/migrations/002_add_freshness_and_claims.sql"


@contextmanager
def open_store(kind: str, database_url: str) -> Iterator[Store]:
    if kind == "postgres":
        with psycopg.connect(database_url) as conn:
            yield PostgresStore(conn)
        return
    emulator = PostgrestEmulator(database_url)
    try:
        with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
            emulator.install(router)
            yield SupabaseStore(supabase.create_client(URL, SERVICE_ROLE_KEY))
    finally:
        emulator.close()


@pytest.fixture(params=["postgres", "supabase"])
def store(request: pytest.FixtureRequest, database_url: str) -> Iterator[Store]:
    with open_store(request.param, database_url) as opened:
        yield opened


@pytest.fixture
def user_id(db: psycopg.Connection[Any]) -> str:
    return create_auth_user(db, "rep@example.test")


def new_session(db: psycopg.Connection[Any], user_id: str) -> str:
    row = db.execute(
        "insert into public.salesai_sessions (user_id, transcript) "
        "values (%s, %s) returning id",
        (user_id, Jsonb([{"speaker": "Rep", "text": "Hi"}])),
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def session_id(db: psycopg.Connection[Any], user_id: str) -> str:
    return new_session(db, user_id)


def look(
    store: Store,
    session_id: str,
    claimant: str = "worker-a",
    *,
    transcript_hash: str = HASH,
    analysis_version: str = VERSION,
    lease: float = LEASE,
    force: bool = False,
) -> Lookup:
    return store.lookup(
        session_id,
        transcript_hash,
        analysis_version,
        claimant,
        lease,
        force=force,
    )


def save(
    store: Store,
    session_id: str,
    claimant: str | None = "worker-a",
    version: str = VERSION,
) -> StoredAnalysis:
    return store.save(
        session_id,
        ANALYSIS,
        MODEL,
        USAGE,
        transcript_hash=HASH,
        analysis_version=version,
        claimant=claimant,
    )


def claim_count(db: psycopg.Connection[Any], session_id: str) -> int:
    row = db.execute(
        "select count(*) from public.salesai_analysis_claims where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


# A session without an analysis


def test_new_claimed(store: Store, session_id: str) -> None:
    assert look(store, session_id).claimed is True


def test_new_not_fresh(store: Store, session_id: str) -> None:
    assert look(store, session_id).fresh is False


def test_new_nothing_stored(store: Store, session_id: str) -> None:
    assert look(store, session_id).stored is None


def test_new_lease_ahead(store: Store, session_id: str) -> None:
    expires_at = look(store, session_id).claim_expires_at
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
    assert expires_at is not None and expires_at > soon


def test_second_not_claimed(store: Store, session_id: str) -> None:
    look(store, session_id, "worker-a")
    assert look(store, session_id, "worker-b").claimed is False


def test_second_sees_expiry(store: Store, session_id: str) -> None:
    first = look(store, session_id, "worker-a")
    assert look(store, session_id, "worker-b").claim_expires_at == (
        first.claim_expires_at
    )


def test_holder_renews(store: Store, session_id: str) -> None:
    look(store, session_id, "worker-a")
    assert look(store, session_id, "worker-a").claimed is True


def test_expired_claim_taken(store: Store, session_id: str) -> None:
    look(store, session_id, "worker-a", lease=0.001)
    time.sleep(0.05)
    assert look(store, session_id, "worker-b").claimed is True


def test_invalid_lease(store: Store, session_id: str) -> None:
    with pytest.raises(CacheStoreError) as info:
        look(store, session_id, lease=0)
    assert info.value.code == "22023"


def test_invalid_lease_message(store: Store, session_id: str) -> None:
    with pytest.raises(CacheStoreError, match="invalid lease"):
        look(store, session_id, lease=-1)


def test_unknown_session(store: Store) -> None:
    with pytest.raises(SessionNotFoundError):
        look(store, UNKNOWN_SESSION)


def test_one_claim_among_threads(store: Store, session_id: str) -> None:
    results: list[bool] = []
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            results.append(look(store, session_id, f"worker-{number}").claimed)
        except Exception as error:
            # Kept for the assert: an exception in a thread would otherwise
            # only be printed.
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (errors, sorted(results)) == ([], [False] * 7 + [True])


# Save and fresh lookups


def test_save_releases(
    store: Store, db: psycopg.Connection[Any], session_id: str
) -> None:
    look(store, session_id, "worker-a")
    save(store, session_id, "worker-a")
    assert claim_count(db, session_id) == 0


def test_save_keeps_other_claim(
    store: Store, db: psycopg.Connection[Any], session_id: str
) -> None:
    # A late save by a worker whose lease moved on leaves the new holder's
    # claim in place.
    look(store, session_id, "worker-b")
    save(store, session_id, "worker-a")
    assert claim_count(db, session_id) == 1


def test_save_fingerprints(store: Store, session_id: str) -> None:
    saved = save(store, session_id)
    assert (saved.transcript_hash, saved.analysis_version) == (HASH, VERSION)


def test_save_without_fingerprints(store: Store, session_id: str) -> None:
    saved = store.save(session_id, ANALYSIS, MODEL, USAGE)
    assert saved.analysis_version is None


def test_save_unknown_session(store: Store) -> None:
    with pytest.raises(SessionNotFoundError):
        save(store, UNKNOWN_SESSION)


def test_fetch_fingerprints(store: Store, session_id: str) -> None:
    save(store, session_id)
    found = store.fetch(session_id)
    assert found is not None and found.transcript_hash == HASH


def test_fresh_after_save(store: Store, session_id: str) -> None:
    look(store, session_id)
    save(store, session_id)
    assert look(store, session_id, "worker-b").fresh is True


def test_fresh_not_claimed(store: Store, session_id: str) -> None:
    save(store, session_id)
    assert look(store, session_id, "worker-b").claimed is False


def test_fresh_no_claim_expiry(store: Store, session_id: str) -> None:
    save(store, session_id)
    assert look(store, session_id, "worker-b").claim_expires_at is None


def test_fresh_age(store: Store, session_id: str) -> None:
    save(store, session_id)
    age = getattr(look(store, session_id).stored, "age_seconds", None)
    assert age is not None and age >= 0


def test_fresh_stored(store: Store, session_id: str) -> None:
    saved = save(store, session_id)
    stored = look(store, session_id).stored
    assert stored is not None and stored.updated_at == saved.updated_at


def test_other_hash_stale(store: Store, session_id: str) -> None:
    save(store, session_id)
    assert look(store, session_id, transcript_hash=OTHER_HASH).fresh is False


def test_other_hash_claimed(store: Store, session_id: str) -> None:
    save(store, session_id)
    assert look(store, session_id, transcript_hash=OTHER_HASH).claimed is True


def test_other_version_stale(store: Store, session_id: str) -> None:
    save(store, session_id)
    assert look(store, session_id, analysis_version=OTHER_VERSION).fresh is False


def test_stale_keeps_stored(store: Store, session_id: str) -> None:
    save(store, session_id)
    stored = look(store, session_id, analysis_version=OTHER_VERSION).stored
    assert stored is not None and stored.analysis_version == VERSION


def test_force_claims(store: Store, session_id: str) -> None:
    save(store, session_id)
    assert look(store, session_id, force=True).claimed is True


def test_force_still_fresh(store: Store, session_id: str) -> None:
    save(store, session_id)
    assert look(store, session_id, force=True).fresh is True


def test_legacy_row_not_fresh(
    store: Store, db: psycopg.Connection[Any], session_id: str
) -> None:
    # Rows stored before migration 002 have no fingerprints.
    db.execute(
        "insert into public.salesai_analysis_results (session_id, analysis, model) "
        "values (%s, '{}', 'm')",
        (session_id,),
    )
    assert look(store, session_id).fresh is False


def test_legacy_row_claimed(
    store: Store, db: psycopg.Connection[Any], session_id: str
) -> None:
    db.execute(
        "insert into public.salesai_analysis_results (session_id, analysis, model) "
        "values (%s, '{}', 'm')",
        (session_id,),
    )
    assert look(store, session_id).claimed is True


# Release


def test_release_frees(store: Store, session_id: str) -> None:
    look(store, session_id, "worker-a")
    store.release(session_id, "worker-a")
    assert look(store, session_id, "worker-b").claimed is True


def test_release_by_other_ignored(store: Store, session_id: str) -> None:
    look(store, session_id, "worker-a")
    store.release(session_id, "worker-b")
    assert look(store, session_id, "worker-c").claimed is False


def test_release_without_claim(
    store: Store, db: psycopg.Connection[Any], session_id: str
) -> None:
    store.release(session_id, "worker-a")
    assert claim_count(db, session_id) == 0


# Invalidate


@pytest.fixture
def three_saved(
    store: Store, db: psycopg.Connection[Any], user_id: str, session_id: str
) -> list[str]:
    sessions = [session_id, new_session(db, user_id), new_session(db, user_id)]
    save(store, sessions[0], None, VERSION)
    save(store, sessions[1], None, VERSION)
    save(store, sessions[2], None, OTHER_VERSION)
    return sessions


def test_invalidate_session(store: Store, three_saved: list[str]) -> None:
    assert store.invalidate(session_id=three_saved[0]) == 1


def test_invalidate_session_gone(store: Store, three_saved: list[str]) -> None:
    store.invalidate(session_id=three_saved[0])
    assert store.fetch(three_saved[0]) is None


def test_invalidate_keeps_others(store: Store, three_saved: list[str]) -> None:
    store.invalidate(session_id=three_saved[0])
    assert store.fetch(three_saved[1]) is not None


def test_invalidate_version(store: Store, three_saved: list[str]) -> None:
    assert store.invalidate(analysis_version=VERSION) == 2


def test_invalidate_version_keeps(store: Store, three_saved: list[str]) -> None:
    store.invalidate(analysis_version=VERSION)
    assert store.fetch(three_saved[2]) is not None


def test_invalidate_both(store: Store, three_saved: list[str]) -> None:
    deleted = store.invalidate(session_id=three_saved[2], analysis_version=VERSION)
    assert deleted == 0


def test_invalidate_unknown(store: Store, three_saved: list[str]) -> None:
    assert store.invalidate(session_id=UNKNOWN_SESSION) == 0


def test_invalidate_needs_filter(store: Store) -> None:
    with pytest.raises(ValueError, match="session_id, an analysis_version"):
        store.invalidate()


# A database with migration 001 but not 002


@pytest.fixture(params=["postgres", "supabase"])
def old_store(
    request: pytest.FixtureRequest,
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
) -> Iterator[tuple[Store, str]]:
    apply_sql(legacy_db, "migrations/001_add_conversation_id_and_caching")
    session = new_session(legacy_db, create_auth_user(legacy_db, "old@example.test"))
    with open_store(request.param, bare_database_url) as opened:
        yield opened, session


def test_old_lookup(old_store: tuple[Store, str]) -> None:
    store, session = old_store
    with pytest.raises(SchemaMismatchError, match=MIGRATION_002):
        look(store, session)


def test_old_save(old_store: tuple[Store, str]) -> None:
    store, session = old_store
    with pytest.raises(SchemaMismatchError, match=MIGRATION_002):
        save(store, session)


def test_old_release(old_store: tuple[Store, str]) -> None:
    store, session = old_store
    with pytest.raises(SchemaMismatchError, match=MIGRATION_002):
        store.release(session, "worker-a")


def test_old_fetch(old_store: tuple[Store, str]) -> None:
    store, session = old_store
    with pytest.raises(SchemaMismatchError, match=MIGRATION_002):
        store.fetch(session)


def test_old_invalidate_version(old_store: tuple[Store, str]) -> None:
    store, _ = old_store
    with pytest.raises(SchemaMismatchError, match=MIGRATION_002):
        store.invalidate(analysis_version=VERSION)


# Roles through the emulator: the functions run with the caller's rights


@pytest.fixture
def emulated(database_url: str) -> Iterator[PostgrestEmulator]:
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)
        yield emulator
    emulator.close()


def client_as(token: str) -> supabase.Client:
    options = SyncClientOptions(headers={"Authorization": f"Bearer {token}"})
    return supabase.create_client(URL, ANON_KEY, options=options)


def test_user_claim_denied(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    store = SupabaseStore(client_as(user_jwt(user_id)))
    with pytest.raises(CacheStoreError, match="service-role key"):
        look(store, session_id)


def test_user_claim_status(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    with pytest.raises(CacheStoreError):
        look(SupabaseStore(client_as(user_jwt(user_id))), session_id)
    assert emulated.responses[-1].status_code == 403


def test_user_reads_fresh(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    # A fresh analysis needs no claim, so the user's own lookup works.
    save(SupabaseStore(supabase.create_client(URL, SERVICE_ROLE_KEY)), session_id)
    store = SupabaseStore(client_as(user_jwt(user_id)))
    assert look(store, session_id).fresh is True


def test_anon_lookup_denied(emulated: PostgrestEmulator, session_id: str) -> None:
    store = SupabaseStore(supabase.create_client(URL, ANON_KEY))
    with pytest.raises(CacheStoreError) as info:
        look(store, session_id)
    assert info.value.code == "42501"


def test_anon_lookup_status(emulated: PostgrestEmulator, session_id: str) -> None:
    store = SupabaseStore(supabase.create_client(URL, ANON_KEY))
    with pytest.raises(CacheStoreError):
        look(store, session_id)
    assert emulated.responses[-1].status_code == 401
