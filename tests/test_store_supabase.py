"""
SupabaseStore against canned PostgREST replies: the exact requests it sends,
and how each PostgREST error becomes a library exception.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import respx
import supabase
from postgrest import APIError, AsyncPostgrestClient, CountMethod, SyncPostgrestClient
from postgrest_emulator import (
    ANON_KEY,
    SERVICE_ROLE_KEY,
    PostgrestEmulator,
    UnexpectedRequest,
    make_jwt,
    user_jwt,
)
from psycopg.types.json import Jsonb
from supabase.lib.client_options import SyncClientOptions

from salesai_cache import (
    CacheStoreError,
    ConfigurationError,
    Lookup,
    SchemaMismatchError,
    SessionNotFoundError,
    StoredAnalysis,
    TokenUsage,
)
from salesai_cache._local.database import create_auth_user
from salesai_cache._stores._rows import parse_timestamp
from salesai_cache._stores.supabase import SupabaseStore

# supabase-py passes timeout and verify to its own PostgREST client, which
# postgrest-py deprecates; users see the same warnings without this library.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

BASE_URL = "http://supabase.test"
REST_URL = f"{BASE_URL}/rest/v1"
API_KEY = "test-service-role-key-not-a-secret"
SESSION_ID = "0b5f6c1e-8d2a-4c2e-9a55-3f1f4f0c7a11"
COLUMNS = (
    "session_id,analysis,model,prompt_tokens,completion_tokens,total_tokens,"
    "transcript_hash,analysis_version,created_at,updated_at"
)
HASH = "9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c0b2d4f6e8a0c2e4f6a8b0c2d4e6f8a0b"
VERSION = "gpt-4o-mini-2024-07-18:5d41402abc4b"
CLAIMANT = "worker-1:4242"
ROW: dict[str, Any] = {
    "session_id": SESSION_ID,
    "analysis": {"summary": "Good discovery questions."},
    "model": "gpt-4o-mini-2024-07-18",
    "prompt_tokens": 812,
    "completion_tokens": 164,
    "total_tokens": 976,
    "transcript_hash": HASH,
    "analysis_version": VERSION,
    "created_at": "2026-12-04T15:18:44.12345+00:00",
    "updated_at": "2026-12-04T15:18:44.123456+00:00",
}
RPC_SAVE = "/rpc/salesai_save_analysis"
RPC_LOOKUP = "/rpc/salesai_lookup_analysis"
CLAIMS = "/salesai_analysis_claims"
USAGE = TokenUsage(prompt_tokens=812, completion_tokens=164, total_tokens=976)
TRICKY_CONVERSATION_ID = 'conv "a,b" (x.y) \\ z: é€ & + # % = ?'


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(
        base_url=REST_URL, assert_all_mocked=True, assert_all_called=False
    ) as router:
        yield router


@pytest.fixture
def store() -> SupabaseStore:
    return SupabaseStore(supabase.create_client(BASE_URL, API_KEY))


def rows_reply(rows: list[dict[str, Any]], status: int = 200) -> httpx.Response:
    last = f"{len(rows) - 1}" if rows else "*"
    content_range = f"0-{last}/*" if rows else "*/*"
    return httpx.Response(status, json=rows, headers={"Content-Range": content_range})


def error_reply(status: int, code: str | None, message: str) -> httpx.Response:
    body = {"code": code, "details": None, "hint": None, "message": message}
    return httpx.Response(status, json=body)


def only_request(route: respx.Route) -> httpx.Request:
    assert route.call_count == 1
    request: httpx.Request = route.calls.last.request
    return request


def query(request: httpx.Request) -> list[tuple[str, str]]:
    return list(request.url.params.multi_items())


def prefer(request: httpx.Request) -> set[str]:
    return {part.strip() for part in request.headers["Prefer"].split(",")}


# Request shapes


def test_fetch_request(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.get("/salesai_analysis_results").mock(return_value=rows_reply([]))
    store.fetch(SESSION_ID)
    assert query(only_request(route)) == [
        ("select", COLUMNS),
        ("session_id", f"eq.{SESSION_ID}"),
        ("limit", "1"),
    ]


def test_fetch_sends_api_key(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.get("/salesai_analysis_results").mock(return_value=rows_reply([]))
    store.fetch(SESSION_ID)
    assert only_request(route).headers["apikey"] == API_KEY


def test_fetch_sends_bearer(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.get("/salesai_analysis_results").mock(return_value=rows_reply([]))
    store.fetch(SESSION_ID)
    assert only_request(route).headers["Authorization"] == f"Bearer {API_KEY}"


def test_fetch_public_schema(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.get("/salesai_analysis_results").mock(return_value=rows_reply([]))
    store.fetch(SESSION_ID)
    assert only_request(route).headers["Accept-Profile"] == "public"


def test_fetch_hit(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.get("/salesai_analysis_results").mock(return_value=rows_reply([ROW]))
    assert store.fetch(SESSION_ID) == StoredAnalysis(
        session_id=SESSION_ID,
        analysis={"summary": "Good discovery questions."},
        model="gpt-4o-mini-2024-07-18",
        usage=USAGE,
        created_at=dt.datetime(2026, 12, 4, 15, 18, 44, 123450, tzinfo=dt.UTC),
        updated_at=dt.datetime(2026, 12, 4, 15, 18, 44, 123456, tzinfo=dt.UTC),
        transcript_hash=HASH,
        analysis_version=VERSION,
    )


def test_fetch_legacy_row(api: respx.MockRouter, store: SupabaseStore) -> None:
    row = {**ROW, "transcript_hash": None, "analysis_version": None}
    api.get("/salesai_analysis_results").mock(return_value=rows_reply([row]))
    found = store.fetch(SESSION_ID)
    assert found is not None and found.transcript_hash is None


def test_fetch_miss(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.get("/salesai_analysis_results").mock(return_value=rows_reply([]))
    assert store.fetch(SESSION_ID) is None


def test_conversation_request(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.get("/salesai_analysis_results").mock(return_value=rows_reply([]))
    store.fetch_by_conversation("conv-42")
    assert query(only_request(route)) == [
        ("select", f"{COLUMNS},salesai_sessions!inner(conversation_id)"),
        ("salesai_sessions.conversation_id", "eq.conv-42"),
        ("order", "updated_at.desc"),
        ("limit", "1"),
    ]


def test_conversation_value_verbatim(
    api: respx.MockRouter, store: SupabaseStore
) -> None:
    # PostgREST takes everything after "eq." of a top-level filter literally,
    # so the value must arrive unquoted and unescaped.
    route = api.get("/salesai_analysis_results").mock(return_value=rows_reply([]))
    store.fetch_by_conversation(TRICKY_CONVERSATION_ID)
    params = only_request(route).url.params
    assert params["salesai_sessions.conversation_id"] == f"eq.{TRICKY_CONVERSATION_ID}"


def test_conversation_hit(api: respx.MockRouter, store: SupabaseStore) -> None:
    row = {**ROW, "salesai_sessions": {"conversation_id": "conv-42"}}
    api.get("/salesai_analysis_results").mock(return_value=rows_reply([row]))
    found = store.fetch_by_conversation("conv-42")
    assert found is not None and found.session_id == SESSION_ID


def test_transcript_request(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.get("/salesai_sessions").mock(
        return_value=rows_reply([{"transcript": []}])
    )
    store.fetch_transcript(SESSION_ID)
    assert query(only_request(route)) == [
        ("select", "transcript"),
        ("id", f"eq.{SESSION_ID}"),
        ("limit", "1"),
    ]


def test_transcript_value(api: respx.MockRouter, store: SupabaseStore) -> None:
    transcript = [{"speaker": "Rep", "text": "Hi"}]
    api.get("/salesai_sessions").mock(
        return_value=rows_reply([{"transcript": transcript}])
    )
    assert store.fetch_transcript(SESSION_ID) == transcript


def test_transcript_missing(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.get("/salesai_sessions").mock(return_value=rows_reply([]))
    with pytest.raises(SessionNotFoundError):
        store.fetch_transcript(SESSION_ID)


def save(store: SupabaseStore) -> StoredAnalysis:
    return store.save(
        SESSION_ID,
        ROW["analysis"],
        ROW["model"],
        USAGE,
        transcript_hash=HASH,
        analysis_version=VERSION,
        claimant=CLAIMANT,
    )


def test_save_path(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    save(store)
    assert only_request(route).url.path == "/rest/v1/rpc/salesai_save_analysis"


def test_save_no_query(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    save(store)
    assert query(only_request(route)) == []


def test_save_no_prefer(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    save(store)
    assert "Prefer" not in only_request(route).headers


def test_save_body(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    save(store)
    assert json.loads(only_request(route).content) == {
        "p_session_id": SESSION_ID,
        "p_analysis": {"summary": "Good discovery questions."},
        "p_model": "gpt-4o-mini-2024-07-18",
        "p_prompt_tokens": 812,
        "p_completion_tokens": 164,
        "p_total_tokens": 976,
        "p_transcript_hash": HASH,
        "p_analysis_version": VERSION,
        "p_claimant": CLAIMANT,
    }


def test_save_body_defaults(api: respx.MockRouter, store: SupabaseStore) -> None:
    # Every parameter is sent, as null when not given: the function has no
    # defaults, and PostgREST matches a function by its parameter names.
    route = api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    store.save(SESSION_ID, ROW["analysis"], ROW["model"], USAGE)
    body = json.loads(only_request(route).content)
    assert [body[key] for key in ("p_transcript_hash", "p_claimant")] == [None, None]


def test_save_content_type(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    save(store)
    assert only_request(route).headers["Content-Type"] == "application/json"


def test_save_public_schema(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    save(store)
    assert only_request(route).headers["Content-Profile"] == "public"


def test_save_returns_row(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    assert save(store).usage == USAGE


def test_save_returns_hash(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_SAVE).mock(return_value=rows_reply([ROW]))
    assert save(store).transcript_hash == HASH


def test_save_hidden_row(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_SAVE).mock(return_value=rows_reply([]))
    with pytest.raises(ConfigurationError, match="policies"):
        save(store)


LOOKUP_ROW: dict[str, Any] = {
    **ROW,
    "age_seconds": 12.5,
    "fresh": True,
    "claimed": False,
    "claim_expires_at": None,
}
EMPTY_LOOKUP_ROW: dict[str, Any] = {
    **{column: None for column in COLUMNS.split(",")},
    "age_seconds": None,
    "fresh": False,
    "claimed": True,
    "claim_expires_at": "2026-12-04T15:19:14.5+00:00",
}


def lookup(store: SupabaseStore, *, force: bool = False) -> Lookup:
    return store.lookup(SESSION_ID, HASH, VERSION, CLAIMANT, 30.0, force=force)


def test_lookup_path(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    lookup(store)
    assert only_request(route).url.path == "/rest/v1/rpc/salesai_lookup_analysis"


def test_lookup_body(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    lookup(store, force=True)
    assert json.loads(only_request(route).content) == {
        "p_session_id": SESSION_ID,
        "p_transcript_hash": HASH,
        "p_analysis_version": VERSION,
        "p_claimant": CLAIMANT,
        "p_lease_seconds": 30.0,
        "p_force": True,
    }


def test_lookup_no_query(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    lookup(store)
    assert query(only_request(route)) == []


def test_lookup_no_prefer(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    lookup(store)
    assert "Prefer" not in only_request(route).headers


def test_lookup_accept(api: respx.MockRouter, store: SupabaseStore) -> None:
    # For any type PostgREST returns a JSON array of rows. The single-object
    # type would turn a missing row into PGRST116 instead of the store's error.
    route = api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    lookup(store)
    assert only_request(route).headers["Accept"] == "*/*"


def test_lookup_content_type(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    lookup(store)
    assert only_request(route).headers["Content-Type"] == "application/json"


def test_lookup_sends_bearer(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    lookup(store)
    assert only_request(route).headers["Authorization"] == f"Bearer {API_KEY}"


def test_lookup_fresh(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_LOOKUP).mock(return_value=rows_reply([LOOKUP_ROW]))
    assert lookup(store) == Lookup(
        stored=StoredAnalysis(
            session_id=SESSION_ID,
            analysis={"summary": "Good discovery questions."},
            model="gpt-4o-mini-2024-07-18",
            usage=USAGE,
            created_at=dt.datetime(2026, 12, 4, 15, 18, 44, 123450, tzinfo=dt.UTC),
            updated_at=dt.datetime(2026, 12, 4, 15, 18, 44, 123456, tzinfo=dt.UTC),
            transcript_hash=HASH,
            analysis_version=VERSION,
            age_seconds=12.5,
        ),
        fresh=True,
        claimed=False,
        claim_expires_at=None,
    )


def test_lookup_nothing_stored(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_LOOKUP).mock(return_value=rows_reply([EMPTY_LOOKUP_ROW]))
    assert lookup(store).stored is None


def test_lookup_claimed(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_LOOKUP).mock(return_value=rows_reply([EMPTY_LOOKUP_ROW]))
    assert lookup(store).claimed is True


def test_lookup_expiry(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_LOOKUP).mock(return_value=rows_reply([EMPTY_LOOKUP_ROW]))
    assert lookup(store).claim_expires_at == dt.datetime(
        2026, 12, 4, 15, 19, 14, 500000, tzinfo=dt.UTC
    )


def test_lookup_no_row(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_LOOKUP).mock(return_value=rows_reply([]))
    with pytest.raises(CacheStoreError, match="returned 0 rows"):
        lookup(store)


def test_lookup_bad_flag(api: respx.MockRouter, store: SupabaseStore) -> None:
    row = {**LOOKUP_ROW, "fresh": None}
    api.post(RPC_LOOKUP).mock(return_value=rows_reply([row]))
    with pytest.raises(CacheStoreError, match="fresh"):
        lookup(store)


def test_lookup_fk(api: respx.MockRouter, store: SupabaseStore) -> None:
    message = (
        'insert or update on table "salesai_analysis_claims" violates foreign '
        'key constraint "salesai_analysis_claims_session_id_fkey"'
    )
    api.post(RPC_LOOKUP).mock(return_value=error_reply(409, "23503", message))
    with pytest.raises(SessionNotFoundError):
        lookup(store)


def test_lookup_no_retry(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.post(RPC_LOOKUP).mock(
        return_value=error_reply(503, "PGRST002", "Could not query the database")
    )
    with pytest.raises(CacheStoreError):
        lookup(store)
    assert route.call_count == 1


def test_release_method(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete(CLAIMS).mock(return_value=httpx.Response(204))
    store.release(SESSION_ID, CLAIMANT)
    assert only_request(route).method == "DELETE"


def test_release_request(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete(CLAIMS).mock(return_value=httpx.Response(204))
    store.release(SESSION_ID, CLAIMANT)
    assert query(only_request(route)) == [
        ("session_id", f"eq.{SESSION_ID}"),
        ("claimant", f"eq.{CLAIMANT}"),
    ]


def test_release_prefer(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete(CLAIMS).mock(return_value=httpx.Response(204))
    store.release(SESSION_ID, CLAIMANT)
    assert prefer(only_request(route)) == {"return=minimal"}


def test_release_returns_none(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.delete(CLAIMS).mock(return_value=httpx.Response(204))
    assert store.release(SESSION_ID, CLAIMANT) is None  # type: ignore[func-returns-value]


def deleted_reply(count: int) -> httpx.Response:
    return httpx.Response(204, headers={"Content-Range": f"*/{count}"})


def test_invalidate_session(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete("/salesai_analysis_results").mock(return_value=deleted_reply(1))
    store.invalidate(session_id=SESSION_ID)
    assert query(only_request(route)) == [("session_id", f"eq.{SESSION_ID}")]


def test_invalidate_version(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete("/salesai_analysis_results").mock(return_value=deleted_reply(3))
    store.invalidate(analysis_version=VERSION)
    assert query(only_request(route)) == [("analysis_version", f"eq.{VERSION}")]


def test_invalidate_both(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete("/salesai_analysis_results").mock(return_value=deleted_reply(0))
    store.invalidate(session_id=SESSION_ID, analysis_version=VERSION)
    assert query(only_request(route)) == [
        ("session_id", f"eq.{SESSION_ID}"),
        ("analysis_version", f"eq.{VERSION}"),
    ]


def test_invalidate_prefer(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete("/salesai_analysis_results").mock(return_value=deleted_reply(1))
    store.invalidate(session_id=SESSION_ID)
    assert prefer(only_request(route)) == {"return=minimal", "count=exact"}


def test_invalidate_count(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.delete("/salesai_analysis_results").mock(return_value=deleted_reply(3))
    assert store.invalidate(analysis_version=VERSION) == 3


def test_invalidate_no_count(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.delete("/salesai_analysis_results").mock(
        return_value=httpx.Response(204, headers={"Content-Range": "*/*"})
    )
    with pytest.raises(CacheStoreError, match="no count"):
        store.invalidate(session_id=SESSION_ID)


def test_invalidate_needs_filter(api: respx.MockRouter, store: SupabaseStore) -> None:
    with pytest.raises(ValueError, match="session_id, an analysis_version"):
        store.invalidate()


def test_invalidate_sends_nothing(api: respx.MockRouter, store: SupabaseStore) -> None:
    route = api.delete("/salesai_analysis_results").mock(return_value=deleted_reply(0))
    with pytest.raises(ValueError):
        store.invalidate()
    assert route.call_count == 0


def test_bare_postgrest_client(api: respx.MockRouter) -> None:
    client = SyncPostgrestClient(
        REST_URL, headers={"apikey": API_KEY, "Authorization": f"Bearer {API_KEY}"}
    )
    api.get("/salesai_analysis_results").mock(return_value=rows_reply([ROW]))
    found = SupabaseStore(client).fetch(SESSION_ID)
    assert found is not None and found.model == ROW["model"]


def test_async_client_rejected() -> None:
    client = AsyncPostgrestClient(REST_URL)
    with pytest.raises(TypeError, match="sync supabase Client"):
        SupabaseStore(client)  # type: ignore[arg-type]


def test_no_retry_on_503(api: respx.MockRouter, store: SupabaseStore) -> None:
    # postgrest-py would retry a GET on 503 after a 1 s sleep; the store turns
    # that off so that the library's own retries do not multiply with it.
    route = api.get("/salesai_analysis_results").mock(
        return_value=error_reply(503, "PGRST002", "Could not query the database")
    )
    with pytest.raises(CacheStoreError):
        store.fetch(SESSION_ID)
    assert route.call_count == 1


# Errors: (operation, status, code, server message, exception, code, words)

SAVE, FETCH, CONVERSATION, TRANSCRIPT = "save", "fetch", "conversation", "transcript"
LOOKUP, RELEASE, INVALIDATE = "lookup", "release", "invalidate"
MIGRATION = "sql/migrations/001_add_conversation_id_and_caching.sql"
MIGRATION_002 = "sql/migrations/002_add_freshness_and_claims.sql"
RELOAD = "notify pgrst, 'reload schema'"

ERRORS: dict[
    str, tuple[str, int, str | None, str, type[Exception], str | None, str]
] = {
    "single-row": (
        TRANSCRIPT,
        406,
        "PGRST116",
        "Cannot coerce the result to a single JSON object",
        CacheStoreError,
        "PGRST116",
        "salesai_sessions",
    ),
    "unique-violation": (
        SAVE,
        409,
        "23505",
        "duplicate key value violates unique constraint "
        '"salesai_analysis_results_pkey"',
        CacheStoreError,
        "23505",
        MIGRATION,
    ),
    "permission-denied": (
        SAVE,
        403,
        "42501",
        "permission denied for table salesai_analysis_results",
        CacheStoreError,
        "42501",
        "service-role key",
    ),
    "rls-anon": (
        SAVE,
        401,
        "42501",
        "new row violates row-level security policy for table "
        '"salesai_analysis_results"',
        CacheStoreError,
        "42501",
        "sql/policies.sql",
    ),
    "invalid-jwt": (
        FETCH,
        401,
        "PGRST301",
        "No suitable key or wrong key type",
        CacheStoreError,
        "PGRST301",
        "API key or user JWT was rejected",
    ),
    "expired-jwt": (
        FETCH,
        401,
        "PGRST303",
        "JWT expired",
        CacheStoreError,
        "PGRST303",
        "has not expired",
    ),
    "gateway-key": (
        FETCH,
        401,
        None,
        "Invalid API key",
        CacheStoreError,
        None,
        "Invalid API key",
    ),
    "column-cache": (
        SAVE,
        400,
        "PGRST204",
        "Could not find the 'total_tokens' column of 'salesai_analysis_results' "
        "in the schema cache",
        SchemaMismatchError,
        "PGRST204",
        RELOAD,
    ),
    "column-migration": (
        CONVERSATION,
        400,
        "42703",
        "column salesai_sessions_1.conversation_id does not exist",
        SchemaMismatchError,
        "42703",
        MIGRATION,
    ),
    "table-cache": (
        FETCH,
        404,
        "PGRST205",
        "Could not find the table 'public.salesai_analysis_results' in the "
        "schema cache",
        SchemaMismatchError,
        "PGRST205",
        "sql/setup.sql",
    ),
    "table-missing": (
        FETCH,
        404,
        "42P01",
        'relation "public.salesai_analysis_results" does not exist',
        SchemaMismatchError,
        "42P01",
        "sql/setup.sql",
    ),
    "relationship": (
        CONVERSATION,
        400,
        "PGRST200",
        "Could not find a relationship between 'salesai_analysis_results' and "
        "'salesai_sessions' in the schema cache",
        SchemaMismatchError,
        "PGRST200",
        RELOAD,
    ),
    "no-unique-constraint": (
        SAVE,
        400,
        "42P10",
        "there is no unique or exclusion constraint matching the ON CONFLICT "
        "specification",
        SchemaMismatchError,
        "42P10",
        MIGRATION,
    ),
    "internal": (
        FETCH,
        500,
        "XX000",
        "internal error",
        CacheStoreError,
        "XX000",
        "salesai_analysis_results",
    ),
    "database-down": (
        FETCH,
        503,
        "PGRST001",
        "Database client error. Retrying the connection.",
        CacheStoreError,
        "PGRST001",
        "retry later",
    ),
    "function-missing": (
        LOOKUP,
        404,
        "PGRST202",
        "Could not find the function public.salesai_lookup_analysis(p_analysis_"
        "version, p_claimant, p_force, p_lease_seconds, p_session_id, p_transcript"
        "_hash) in the schema cache",
        SchemaMismatchError,
        "PGRST202",
        MIGRATION_002,
    ),
    "function-cache": (
        SAVE,
        404,
        "PGRST202",
        "Could not find the function public.salesai_save_analysis(p_analysis, "
        "p_analysis_version, p_claimant, p_completion_tokens, p_model, "
        "p_prompt_tokens, p_session_id, p_total_tokens, p_transcript_hash) in the "
        "schema cache",
        SchemaMismatchError,
        "PGRST202",
        RELOAD,
    ),
    "invalid-lease": (
        LOOKUP,
        400,
        "22023",
        "invalid lease of -1 seconds: expected a positive number",
        CacheStoreError,
        "22023",
        "invalid lease of -1 seconds",
    ),
    "rpc-permission": (
        LOOKUP,
        403,
        "42501",
        'new row violates row-level security policy for table "salesai_analysis_'
        'claims"',
        CacheStoreError,
        "42501",
        "service-role key",
    ),
    "rpc-anon": (
        SAVE,
        401,
        "42501",
        "permission denied for function salesai_save_analysis",
        CacheStoreError,
        "42501",
        "salesai_save_analysis run with the caller's rights",
    ),
    "claims-table": (
        RELEASE,
        404,
        "PGRST205",
        "Could not find the table 'public.salesai_analysis_claims' in the schema cache",
        SchemaMismatchError,
        "PGRST205",
        MIGRATION_002,
    ),
    "fingerprint-column": (
        INVALIDATE,
        400,
        "42703",
        "column salesai_analysis_results.analysis_version does not exist",
        SchemaMismatchError,
        "42703",
        MIGRATION_002,
    ),
    "fingerprint-read": (
        FETCH,
        400,
        "42703",
        "column salesai_analysis_results.transcript_hash does not exist",
        SchemaMismatchError,
        "42703",
        MIGRATION_002,
    ),
}


def call(store: SupabaseStore, operation: str) -> object:
    if operation == SAVE:
        return save(store)
    if operation == LOOKUP:
        return lookup(store)
    if operation == RELEASE:
        return store.release(SESSION_ID, CLAIMANT)  # type: ignore[func-returns-value]
    if operation == INVALIDATE:
        return store.invalidate(analysis_version=VERSION)
    if operation == FETCH:
        return store.fetch(SESSION_ID)
    if operation == CONVERSATION:
        return store.fetch_by_conversation("conv-42")
    return store.fetch_transcript(SESSION_ID)


ROUTES = {
    SAVE: ("POST", RPC_SAVE),
    LOOKUP: ("POST", RPC_LOOKUP),
    RELEASE: ("DELETE", CLAIMS),
    INVALIDATE: ("DELETE", "/salesai_analysis_results"),
    FETCH: ("GET", "/salesai_analysis_results"),
    CONVERSATION: ("GET", "/salesai_analysis_results"),
    TRANSCRIPT: ("GET", "/salesai_sessions"),
}


def mock_reply(api: respx.MockRouter, operation: str, reply: httpx.Response) -> None:
    method, path = ROUTES[operation]
    api.route(method=method, path=path).mock(return_value=reply)


def raised(api: respx.MockRouter, store: SupabaseStore, name: str) -> Exception:
    operation, status, code, message, _, _, _ = ERRORS[name]
    mock_reply(api, operation, error_reply(status, code, message))
    with pytest.raises(Exception) as info:
        call(store, operation)
    return info.value


@pytest.mark.parametrize("name", ERRORS)
def test_error_type(api: respx.MockRouter, store: SupabaseStore, name: str) -> None:
    assert type(raised(api, store, name)) is ERRORS[name][4]


@pytest.mark.parametrize("name", ERRORS)
def test_error_code(api: respx.MockRouter, store: SupabaseStore, name: str) -> None:
    error = raised(api, store, name)
    assert isinstance(error, CacheStoreError) and error.code == ERRORS[name][5]


@pytest.mark.parametrize("name", ERRORS)
def test_error_advice(api: respx.MockRouter, store: SupabaseStore, name: str) -> None:
    assert ERRORS[name][6] in str(raised(api, store, name))


@pytest.mark.parametrize("name", ERRORS)
def test_error_names_code(
    api: respx.MockRouter, store: SupabaseStore, name: str
) -> None:
    assert f"({ERRORS[name][2] or 'no error code'})" in str(raised(api, store, name))


@pytest.mark.parametrize("name", ERRORS)
def test_error_hides_key(
    api: respx.MockRouter, store: SupabaseStore, name: str
) -> None:
    assert API_KEY not in str(raised(api, store, name))


@pytest.mark.parametrize("name", ERRORS)
def test_error_chained(api: respx.MockRouter, store: SupabaseStore, name: str) -> None:
    assert type(raised(api, store, name).__cause__).__name__ == "APIError"


FK_MESSAGE = (
    'insert or update on table "salesai_analysis_results" violates foreign key '
    'constraint "salesai_analysis_results_session_id_fkey"'
)


def test_fk_session_missing(api: respx.MockRouter, store: SupabaseStore) -> None:
    mock_reply(api, SAVE, error_reply(409, "23503", FK_MESSAGE))
    with pytest.raises(SessionNotFoundError) as info:
        save(store)
    assert info.value.session_id == SESSION_ID


def test_fk_chained(api: respx.MockRouter, store: SupabaseStore) -> None:
    mock_reply(api, SAVE, error_reply(409, "23503", FK_MESSAGE))
    with pytest.raises(SessionNotFoundError) as info:
        save(store)
    assert type(info.value.__cause__).__name__ == "APIError"


def test_gateway_html(api: respx.MockRouter, store: SupabaseStore) -> None:
    mock_reply(api, FETCH, httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(CacheStoreError) as info:
        store.fetch(SESSION_ID)
    assert info.value.code == "502"


def test_connect_error(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.get("/salesai_analysis_results").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    with pytest.raises(CacheStoreError) as info:
        store.fetch(SESSION_ID)
    assert info.value.code is None


def test_connect_error_host(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.get("/salesai_analysis_results").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    with pytest.raises(CacheStoreError, match=r"could not reach supabase\.test"):
        store.fetch(SESSION_ID)


def test_read_timeout_says_timed_out(
    api: respx.MockRouter, store: SupabaseStore
) -> None:
    api.get("/salesai_analysis_results").mock(
        side_effect=httpx.ReadTimeout("no answer")
    )
    with pytest.raises(CacheStoreError, match=r"timed out waiting for supabase\.test"):
        store.fetch(SESSION_ID)


def test_connect_error_hides_key(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.post(RPC_SAVE).mock(side_effect=httpx.ConnectError(f"refused, key={API_KEY}"))
    with pytest.raises(CacheStoreError) as info:
        save(store)
    assert API_KEY not in str(info.value)


def test_timeout(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.get("/salesai_sessions").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(CacheStoreError, match="ReadTimeout"):
        store.fetch_transcript(SESSION_ID)


def test_timeout_chained(api: respx.MockRouter, store: SupabaseStore) -> None:
    api.get("/salesai_sessions").mock(side_effect=httpx.ReadTimeout("timed out"))
    with pytest.raises(CacheStoreError) as info:
        store.fetch_transcript(SESSION_ID)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_bad_timestamp(api: respx.MockRouter, store: SupabaseStore) -> None:
    row = {**ROW, "created_at": "yesterday"}
    api.get("/salesai_analysis_results").mock(return_value=rows_reply([row]))
    with pytest.raises(CacheStoreError, match="invalid timestamp"):
        store.fetch(SESSION_ID)


# Timestamps as PostgREST prints them


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04T15:18:44+00:00", dt.datetime(2026, 12, 4, 15, 18, 44)),
        ("2026-12-04T15:18:44.1+00:00", dt.datetime(2026, 12, 4, 15, 18, 44, 100000)),
        ("2026-12-04T15:18:44.12345Z", dt.datetime(2026, 12, 4, 15, 18, 44, 123450)),
        ("2026-12-04 15:18:44.123456+00", dt.datetime(2026, 12, 4, 15, 18, 44, 123456)),
    ],
)
def test_timestamp_utc(text: str, expected: dt.datetime) -> None:
    assert parse_timestamp(text) == expected.replace(tzinfo=dt.UTC)


def test_timestamp_offset() -> None:
    parsed = parse_timestamp("2026-12-04T20:48:44.5+05:30")
    assert parsed == dt.datetime(2026, 12, 4, 15, 18, 44, 500000, tzinfo=dt.UTC)


# Against the PostgREST emulator on a real database: roles and schemas


@pytest.fixture
def emulated(database_url: str) -> Iterator[PostgrestEmulator]:
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)
        yield emulator
    emulator.close()


def client_as(token: str) -> supabase.Client:
    options = SyncClientOptions(headers={"Authorization": f"Bearer {token}"})
    return supabase.create_client(BASE_URL, ANON_KEY, options=options)


@pytest.fixture
def user_id(db: psycopg.Connection[Any]) -> str:
    return create_auth_user(db, "rep@example.test")


@pytest.fixture
def session_id(db: psycopg.Connection[Any], user_id: str) -> str:
    row = db.execute(
        "insert into public.salesai_sessions (user_id, transcript, conversation_id) "
        "values (%s, %s, 'call-7') returning id",
        (user_id, Jsonb([{"speaker": "Rep", "text": "Hi"}])),
    ).fetchone()
    assert row is not None
    return str(row[0])


def service_store() -> SupabaseStore:
    return SupabaseStore(supabase.create_client(BASE_URL, SERVICE_ROLE_KEY))


@pytest.mark.sql
def test_emulated_round_trip(emulated: PostgrestEmulator, session_id: str) -> None:
    store = service_store()
    saved = store.save(session_id, ROW["analysis"], ROW["model"], USAGE)
    assert store.fetch(session_id) == saved


@pytest.mark.sql
def test_emulated_upsert(
    emulated: PostgrestEmulator, db: psycopg.Connection[Any], session_id: str
) -> None:
    store = service_store()
    store.save(session_id, {"v": 1}, "old-model", USAGE)
    store.save(session_id, {"v": 2}, ROW["model"], USAGE)
    row = db.execute(
        "select count(*), max(model) from public.salesai_analysis_results "
        "where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row == (1, ROW["model"])


@pytest.mark.sql
def test_user_reads_own_transcript(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    store = SupabaseStore(client_as(user_jwt(user_id)))
    assert store.fetch_transcript(session_id) == [{"speaker": "Rep", "text": "Hi"}]


@pytest.mark.sql
def test_user_reads_own_analysis(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    service_store().save(session_id, ROW["analysis"], ROW["model"], USAGE)
    store = SupabaseStore(client_as(user_jwt(user_id)))
    assert store.fetch(session_id) is not None


@pytest.mark.sql
def test_stranger_sees_no_session(
    emulated: PostgrestEmulator, db: psycopg.Connection[Any], session_id: str
) -> None:
    stranger = create_auth_user(db, "stranger@example.test")
    store = SupabaseStore(client_as(user_jwt(stranger)))
    with pytest.raises(SessionNotFoundError):
        store.fetch_transcript(session_id)


@pytest.mark.sql
def test_stranger_sees_no_analysis(
    emulated: PostgrestEmulator, db: psycopg.Connection[Any], session_id: str
) -> None:
    service_store().save(session_id, ROW["analysis"], ROW["model"], USAGE)
    stranger = create_auth_user(db, "stranger@example.test")
    store = SupabaseStore(client_as(user_jwt(stranger)))
    assert store.fetch_by_conversation("call-7") is None


def denied(store: SupabaseStore, session_id: str) -> CacheStoreError:
    with pytest.raises(CacheStoreError) as info:
        store.save(session_id, ROW["analysis"], ROW["model"], USAGE)
    return info.value


@pytest.mark.sql
def test_user_write_denied(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    # Only the service role writes analyses (sql/policies.sql).
    error = denied(SupabaseStore(client_as(user_jwt(user_id))), session_id)
    assert error.code == "42501"


@pytest.mark.sql
def test_user_write_status(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    denied(SupabaseStore(client_as(user_jwt(user_id))), session_id)
    assert emulated.responses[-1].status_code == 403


@pytest.mark.sql
def test_anon_write_status(emulated: PostgrestEmulator, session_id: str) -> None:
    denied(SupabaseStore(supabase.create_client(BASE_URL, ANON_KEY)), session_id)
    assert emulated.responses[-1].status_code == 401


@pytest.mark.sql
def test_forged_jwt(emulated: PostgrestEmulator, session_id: str) -> None:
    forged = make_jwt({"role": "service_role"}, secret=b"x" * 32)
    store = SupabaseStore(supabase.create_client(BASE_URL, forged))
    with pytest.raises(CacheStoreError) as info:
        store.fetch(session_id)
    assert info.value.code == "PGRST301"


@pytest.mark.sql
def test_expired_jwt(
    emulated: PostgrestEmulator, user_id: str, session_id: str
) -> None:
    store = SupabaseStore(client_as(user_jwt(user_id, expires_in=-60)))
    with pytest.raises(CacheStoreError) as info:
        store.fetch(session_id)
    assert info.value.code == "PGRST303"


@pytest.mark.sql
def test_emulated_unknown_session(emulated: PostgrestEmulator) -> None:
    with pytest.raises(SessionNotFoundError):
        service_store().save(SESSION_ID, ROW["analysis"], ROW["model"], USAGE)


@pytest.mark.sql
def test_emulated_fk_status(emulated: PostgrestEmulator) -> None:
    with pytest.raises(SessionNotFoundError):
        service_store().save(SESSION_ID, ROW["analysis"], ROW["model"], USAGE)
    assert emulated.responses[-1].status_code == 409


@pytest.mark.sql
def test_emulated_column_missing(
    emulated: PostgrestEmulator, db: psycopg.Connection[Any], session_id: str
) -> None:
    # The save function names the column, so PostgreSQL reports it missing.
    db.execute("alter table public.salesai_analysis_results drop column total_tokens")
    with pytest.raises(SchemaMismatchError) as info:
        service_store().save(session_id, ROW["analysis"], ROW["model"], USAGE)
    assert info.value.code == "42703"


@pytest.fixture
def emulated_bare(bare_database_url: str) -> Iterator[PostgrestEmulator]:
    emulator = PostgrestEmulator(bare_database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)
        yield emulator
    emulator.close()


@pytest.mark.sql
def test_emulated_table_missing(emulated_bare: PostgrestEmulator) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        service_store().fetch(SESSION_ID)
    assert info.value.code == "PGRST205"


@pytest.fixture
def legacy_session(legacy_db: psycopg.Connection[Any]) -> str:
    user = create_auth_user(legacy_db, "legacy@example.test")
    row = legacy_db.execute(
        "insert into public.salesai_sessions (user_id) values (%s) returning id",
        (user,),
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.sql
def test_emulated_legacy_save(
    emulated_bare: PostgrestEmulator, legacy_session: str
) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        service_store().save(legacy_session, ROW["analysis"], ROW["model"], USAGE)
    assert info.value.code == "PGRST202"


@pytest.mark.sql
def test_emulated_legacy_save_advice(
    emulated_bare: PostgrestEmulator, legacy_session: str
) -> None:
    with pytest.raises(SchemaMismatchError, match=MIGRATION_002):
        service_store().save(legacy_session, ROW["analysis"], ROW["model"], USAGE)


@pytest.mark.sql
def test_emulated_legacy_lookup(
    emulated_bare: PostgrestEmulator, legacy_session: str
) -> None:
    with pytest.raises(SchemaMismatchError) as info:
        service_store().fetch_by_conversation("call-7")
    assert info.value.code == "42703"


@pytest.mark.sql
def test_emulator_rejects_unknown(emulated: PostgrestEmulator) -> None:
    client = supabase.create_client(BASE_URL, SERVICE_ROLE_KEY)
    with pytest.raises(UnexpectedRequest):
        client.table("salesai_analysis_results").select("*").execute()


@pytest.mark.sql
def test_emulator_rejects_session_delete(emulated: PostgrestEmulator) -> None:
    client = supabase.create_client(BASE_URL, SERVICE_ROLE_KEY)
    with pytest.raises(UnexpectedRequest):
        client.table("salesai_sessions").delete().eq("id", SESSION_ID).execute()


@pytest.mark.sql
def test_emulator_rejects_rpc_count(emulated: PostgrestEmulator) -> None:
    client = supabase.create_client(BASE_URL, SERVICE_ROLE_KEY)
    with pytest.raises(UnexpectedRequest):
        client.rpc("salesai_lookup_analysis", {}, count=CountMethod.exact).execute()


@pytest.mark.sql
def test_emulator_unknown_function(emulated: PostgrestEmulator) -> None:
    client = supabase.create_client(BASE_URL, SERVICE_ROLE_KEY)
    with pytest.raises(APIError) as info:
        client.rpc("salesai_no_such_function", {"p_x": 1}).execute()
    assert info.value.code == "PGRST202"


@pytest.mark.sql
def test_emulator_unknown_function_status(emulated: PostgrestEmulator) -> None:
    client = supabase.create_client(BASE_URL, SERVICE_ROLE_KEY)
    with pytest.raises(APIError):
        client.rpc("salesai_no_such_function", {"p_x": 1}).execute()
    assert emulated.responses[-1].status_code == 404


@pytest.mark.sql
def test_emulator_wrong_parameters(emulated: PostgrestEmulator) -> None:
    # PostgREST matches a function by its parameter names, so a missing
    # required one is a missing function too.
    client = supabase.create_client(BASE_URL, SERVICE_ROLE_KEY)
    with pytest.raises(APIError) as info:
        client.rpc("salesai_lookup_analysis", {"p_session_id": SESSION_ID}).execute()
    assert info.value.code == "PGRST202"
