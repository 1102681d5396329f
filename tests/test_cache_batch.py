"""
AnalysisCache.get_many and AnalysisCache.stats on a real database, once per
store and cache flavour (sync and async), with the fixtures of
test_cache_behaviour.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
import respx
import supabase
from postgrest_emulator import SERVICE_ROLE_KEY, URL, PostgrestEmulator
from test_cache_behaviour import (
    TRANSCRIPT,
    USAGE,
    Backend,
    Cache,
    CountingAnalyzer,
    Verdict,
    add_session,
    analyzer,
    backend,
    cache,
    loop,
    store_client,
    user_id,
)

from salesai_cache import (
    AnalysisCache,
    CacheStatus,
    InvalidInputError,
    ModelPrice,
)
from salesai_cache._stores.supabase import MAX_URL_BYTES

__all__ = ["analyzer", "backend", "cache", "loop", "store_client", "user_id"]

pytestmark = [
    pytest.mark.sql,
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

PRICES = {"fake-model": ModelPrice(input_per_million=2.0, output_per_million=10.0)}
# 120 prompt tokens at $2/M and 30 completion tokens at $10/M.
SAVED_PER_HIT = (120 * 2.0 + 30 * 10.0) / 1_000_000


def unknown_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def sessions(db: psycopg.Connection[Any], user_id: str) -> list[str]:
    return [add_session(db, user_id) for _ in range(3)]


@pytest.fixture
def computed(cache: Cache, sessions: list[str]) -> list[str]:
    for session_id in sessions[:2]:
        cache.get_or_compute(session_id, TRANSCRIPT)
    return sessions


# get_many


def test_get_many_found_in_caller_order(cache: Cache, computed: list[str]) -> None:
    wanted = [computed[1], computed[0]]
    assert list(cache.get_many(wanted).found) == wanted


def test_get_many_reports_missing(cache: Cache, computed: list[str]) -> None:
    absent = unknown_id()
    batch = cache.get_many([absent, *computed])
    assert batch.missing == [absent, computed[2]]


def test_get_many_status_hit(cache: Cache, computed: list[str]) -> None:
    batch = cache.get_many(computed[:2])
    assert {r.status for r in batch.found.values()} == {CacheStatus.HIT}


def test_get_many_status_stale_for_other_version(
    backend: Backend, store_client: Any, computed: list[str]
) -> None:
    other = backend.cache(store_client, CountingAnalyzer(version="fake-model-1:v2"))
    batch = other.get_many(computed[:1])
    assert batch.found[computed[0]].status is CacheStatus.STALE


def test_get_many_duplicates_once(cache: Cache, computed: list[str]) -> None:
    batch = cache.get_many([computed[0], computed[0].upper(), computed[0]])
    assert list(batch.found) == [computed[0]]


def test_get_many_analysis(cache: Cache, computed: list[str]) -> None:
    batch = cache.get_many(computed[:1])
    assert batch.get(computed[0].upper()) is not None


def test_get_many_calls_no_analyzer(
    cache: Cache, analyzer: CountingAnalyzer, computed: list[str]
) -> None:
    cache.get_many(computed)
    assert analyzer.calls == 2


def test_get_many_empty(cache: Cache) -> None:
    assert cache.get_many([]).found == {}


def test_get_many_invalid_id_named(cache: Cache) -> None:
    with pytest.raises(InvalidInputError, match="'not-a-uuid'"):
        cache.get_many([unknown_id(), "not-a-uuid"])


def test_get_many_rejects_one_string(cache: Cache) -> None:
    with pytest.raises(InvalidInputError, match="not one string"):
        cache.get_many(unknown_id())


@pytest.mark.parametrize("ids", [None, 42], ids=["none", "int"])
def test_get_many_rejects_non_iterable(cache: Cache, ids: Any) -> None:
    with pytest.raises(InvalidInputError, match=f"got {type(ids).__name__}"):
        cache.get_many(ids)


def test_get_many_invalid_id_sends_nothing(
    backend: Backend, analyzer: CountingAnalyzer
) -> None:
    client = backend.connect()
    backend.sever()
    with pytest.raises(InvalidInputError):
        backend.cache(client, analyzer).get_many([unknown_id(), 42])


# get_many over Supabase: request splitting


@pytest.fixture
def emulated(database_url: str) -> Any:
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)
        yield emulator
    emulator.close()


@pytest.fixture
def supabase_cache(emulated: PostgrestEmulator) -> AnalysisCache[Verdict]:
    return AnalysisCache(
        supabase.create_client(URL, SERVICE_ROLE_KEY), CountingAnalyzer()
    )


THOUSAND = [str(uuid.UUID(int=n + 1)) for n in range(1000)]


def test_get_many_supabase_urls_within_limit(
    supabase_cache: AnalysisCache[Verdict], emulated: PostgrestEmulator
) -> None:
    supabase_cache.get_many(THOUSAND)
    longest = max(len(str(r.url).encode()) for r in emulated.requests)
    assert longest <= MAX_URL_BYTES


def test_get_many_supabase_splits_every_id_once(
    supabase_cache: AnalysisCache[Verdict], emulated: PostgrestEmulator
) -> None:
    supabase_cache.get_many(THOUSAND)
    sent = [
        session_id
        for request in emulated.requests
        for session_id in request.url.params["session_id"][4:-1].split(",")
    ]
    assert sent == THOUSAND


def test_get_many_supabase_fills_requests(
    supabase_cache: AnalysisCache[Verdict], emulated: PostgrestEmulator
) -> None:
    supabase_cache.get_many(THOUSAND)
    # Each request but the last would pass the limit with one more id.
    step = len("%2C") + len(THOUSAND[0])
    sizes = [len(str(r.url).encode()) for r in emulated.requests[:-1]]
    assert all(size + step > MAX_URL_BYTES for size in sizes)


def test_get_many_supabase_request_count(
    supabase_cache: AnalysisCache[Verdict], emulated: PostgrestEmulator
) -> None:
    supabase_cache.get_many(THOUSAND)
    # About 230 bytes of base URL, then 39 per id: 204 ids a request.
    assert len(emulated.requests) == 5


def test_get_many_supabase_missing(
    supabase_cache: AnalysisCache[Verdict], emulated: PostgrestEmulator
) -> None:
    assert supabase_cache.get_many(THOUSAND).missing == THOUSAND


def test_get_many_postgres_one_query(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cache = AnalysisCache(conn, CountingAnalyzer())
        cursors: list[object] = []
        original = conn.cursor

        def counting_cursor(*args: Any, **kwargs: Any) -> Any:
            cursors.append(kwargs)
            return original(*args, **kwargs)

        conn.cursor = counting_cursor  # type: ignore[method-assign]
        cache.get_many(THOUSAND)
    assert len(cursors) == 1


# stats


def test_stats_counts_miss(cache: Cache, sessions: list[str]) -> None:
    cache.get_or_compute(sessions[0], TRANSCRIPT)
    assert cache.stats().misses == 1


def test_stats_counts_hit(cache: Cache, sessions: list[str]) -> None:
    cache.get_or_compute(sessions[0], TRANSCRIPT)
    cache.get_or_compute(sessions[0], TRANSCRIPT)
    assert cache.stats().hits == 1


def test_stats_counts_stale_recompute(
    backend: Backend, store_client: Any, sessions: list[str]
) -> None:
    backend.cache(store_client, CountingAnalyzer()).get_or_compute(
        sessions[0], TRANSCRIPT
    )
    newer = backend.cache(store_client, CountingAnalyzer(version="fake-model-1:v2"))
    newer.get_or_compute(sessions[0], TRANSCRIPT)
    assert newer.stats().stale_recomputes == 1


def test_stats_refresh_not_stale_recompute(cache: Cache, sessions: list[str]) -> None:
    cache.get_or_compute(sessions[0], TRANSCRIPT)
    cache.refresh(sessions[0], TRANSCRIPT)
    assert cache.stats().stale_recomputes == 0


def test_stats_counts_stale_served(
    backend: Backend, store_client: Any, sessions: list[str]
) -> None:
    backend.cache(store_client, CountingAnalyzer()).get_or_compute(
        sessions[0], TRANSCRIPT
    )
    newer = backend.cache(store_client, CountingAnalyzer(version="fake-model-1:v2"))
    newer.get_or_compute(sessions[0], TRANSCRIPT, allow_stale=True)
    assert newer.stats().stale_served == 1


def test_stats_saved_tokens_per_hit(cache: Cache, sessions: list[str]) -> None:
    for _ in range(3):
        cache.get_or_compute(sessions[0], TRANSCRIPT)
    assert cache.stats().saved_usage.total_tokens == 2 * USAGE.total_tokens


def test_stats_get_many_counts_nothing(cache: Cache, computed: list[str]) -> None:
    cache.get_many(computed)
    assert cache.stats().hits == 0


def test_stats_saved_cost(
    backend: Backend, store_client: Any, sessions: list[str]
) -> None:
    priced = backend.cache(store_client, CountingAnalyzer(), prices=PRICES)
    priced.get_or_compute(sessions[0], TRANSCRIPT)
    priced.get_or_compute(sessions[0], TRANSCRIPT)
    assert priced.stats().saved_cost_usd == pytest.approx(SAVED_PER_HIT)
