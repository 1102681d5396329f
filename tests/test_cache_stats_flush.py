"""
Flushing the cache's counters to salesai_cache_stats, for the sync and async
caches over psycopg and over a supabase client. A PostgREST emulator runs the
client's requests on the same database, and one test checks the exact
PostgREST request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import respx
import supabase
from async_support import AsyncCacheFacade, LoopThread
from postgrest_emulator import (
    ANON_KEY,
    SERVICE_ROLE_KEY,
    URL,
    PostgrestEmulator,
    user_jwt,
)
from psycopg.types.json import Jsonb
from supabase.lib.client_options import SyncClientOptions
from test_cache_behaviour import TRANSCRIPT, USAGE, CountingAnalyzer

from salesai_cache import AnalysisCache, AsyncAnalysisCache, CacheStoreError
from salesai_cache._local.database import create_auth_user
from salesai_cache._stats import StatsRecorder, StatsRow
from salesai_cache._stats_flush import MAX_UNSENT_ROWS, StatsFlusher
from salesai_cache._stores._retrying import RetryingStore
from salesai_cache._stores.async_supabase import close_async_client
from salesai_cache._stores.supabase import SupabaseStore
from salesai_cache.exceptions import InvalidInputError

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

VERSION = "fake-model-1:v1"
STATS_SUM = (
    "select coalesce(sum(hits), 0)::int, coalesce(sum(misses), 0)::int, "
    "coalesce(sum(waits), 0)::int, coalesce(sum(prompt_tokens_saved), 0)::int, "
    "coalesce(sum(completion_tokens_saved), 0)::int "
    "from public.salesai_cache_stats"
)


class Flavour:
    """
    A cache flavour on one way of reaching the database.
    """

    def __init__(
        self, kind: str, client: Any, loop: LoopThread | None, emulator: Any
    ) -> None:
        self.kind = kind
        self.client = client
        self.loop = loop
        self.emulator: PostgrestEmulator | None = emulator

    def cache(self, **options: Any) -> Any:
        analyzer = CountingAnalyzer(VERSION)
        if self.loop is None:
            return AnalysisCache(self.client, analyzer, **options)
        return AsyncCacheFacade(
            AsyncAnalysisCache(self.client, analyzer, **options), self.loop
        )


@pytest.fixture(
    params=["sync-postgres", "sync-supabase", "async-postgres", "async-supabase"]
)
def flavour(request: pytest.FixtureRequest, database_url: str) -> Iterator[Flavour]:
    yield from _flavour(request.param, database_url)


@pytest.fixture(params=["sync-supabase", "async-supabase"])
def rest_flavour(
    request: pytest.FixtureRequest, database_url: str
) -> Iterator[Flavour]:
    """
    The Supabase flavours, whose requests the emulator counts.
    """
    yield from _flavour(request.param, database_url)


def _flavour(name: str, database_url: str) -> Iterator[Flavour]:
    mode, kind = name.split("-")
    loop = LoopThread() if mode == "async" else None
    try:
        if kind == "postgres":
            if loop is None:
                conn: Any = psycopg.connect(database_url, autocommit=True)
                yield Flavour(kind, conn, None, None)
                conn.close()
            else:
                conn = loop.run(
                    psycopg.AsyncConnection.connect(database_url, autocommit=True)
                )
                yield Flavour(kind, conn, loop, None)
                loop.run(conn.close())
            return
        emulator = PostgrestEmulator(database_url)
        with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
            emulator.install(router)
            if loop is None:
                client: Any = supabase.create_client(URL, SERVICE_ROLE_KEY)
                yield Flavour(kind, client, None, emulator)
            else:
                client = loop.run(supabase.acreate_client(URL, SERVICE_ROLE_KEY))
                yield Flavour(kind, client, loop, emulator)
                loop.run(close_async_client(client))
        emulator.close()
    finally:
        if loop is not None:
            loop.close()


def add_session(db: psycopg.Connection[Any]) -> str:
    user = create_auth_user(db, f"rep-{id(db)}@example.test")
    row = db.execute(
        "insert into public.salesai_sessions (user_id, transcript) values (%s, %s) "
        "returning id",
        (user, Jsonb(TRANSCRIPT)),
    ).fetchone()
    assert row is not None
    return str(row[0])


def sums(db: psycopg.Connection[Any]) -> tuple[int, ...]:
    row = db.execute(STATS_SUM).fetchone()
    assert row is not None
    return tuple(row)


def stats_rows(db: psycopg.Connection[Any]) -> int:
    row = db.execute("select count(*) from public.salesai_cache_stats").fetchone()
    assert row is not None
    return int(row[0])


# Flushing on both flavours and stores


@pytest.mark.sql
def test_flush_writes_counters(flavour: Flavour, db: psycopg.Connection[Any]) -> None:
    cache = flavour.cache(stats_flush_interval=None)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.get_or_compute(session_id, TRANSCRIPT)

    assert cache.flush_stats() == 1
    assert sums(db) == (2, 1, 0, 2 * USAGE.prompt_tokens, 2 * USAGE.completion_tokens)


@pytest.mark.sql
def test_flush_twice_counts_once(flavour: Flavour, db: psycopg.Connection[Any]) -> None:
    cache = flavour.cache(stats_flush_interval=None)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.flush_stats()
    cache.get_or_compute(session_id, TRANSCRIPT)

    assert cache.flush_stats() == 1
    assert cache.flush_stats() == 0
    assert sums(db)[:2] == (1, 1)


@pytest.mark.sql
def test_flush_matches_stats(flavour: Flavour, db: psycopg.Connection[Any]) -> None:
    cache = flavour.cache(stats_flush_interval=None)
    session_id = add_session(db)
    for _ in range(4):
        cache.get_or_compute(session_id, TRANSCRIPT)
    cache.flush_stats()

    stats = cache.stats()
    assert sums(db) == (
        stats.hits,
        stats.misses,
        stats.waits,
        stats.saved_usage.prompt_tokens,
        stats.saved_usage.completion_tokens,
    )


@pytest.mark.sql
def test_flush_row_labels(flavour: Flavour, db: psycopg.Connection[Any]) -> None:
    cache = flavour.cache(stats_flush_interval=None)
    cache.get_or_compute(add_session(db), TRANSCRIPT)
    cache.flush_stats()

    row = db.execute(
        "select model, analysis_version, user_id, worker "
        "from public.salesai_cache_stats"
    ).fetchone()
    assert row is not None
    assert row[:3] == ("fake-model-1", VERSION, None)
    assert ":" in row[3]


@pytest.mark.sql
def test_close_flushes_keeps_client(
    flavour: Flavour, db: psycopg.Connection[Any]
) -> None:
    cache = flavour.cache(stats_flush_interval=None)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)

    cache.close()

    assert sums(db)[1] == 1
    other = flavour.cache(stats_flush_interval=None)
    assert other.get_or_compute(session_id, TRANSCRIPT).status.value == "hit"


@pytest.mark.sql
def test_interval_flushes_on_later_call(
    flavour: Flavour, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("salesai_cache._stats_flush.time.monotonic", lambda: clock[0])
    cache = flavour.cache(stats_flush_interval=60)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert stats_rows(db) == 0

    clock[0] += 61
    cache.get_or_compute(session_id, TRANSCRIPT)

    assert sums(db)[:2] == (1, 1)


@pytest.mark.sql
def test_missing_table_warns_once(
    flavour: Flavour, db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    db.execute("drop table public.salesai_cache_stats")
    cache = flavour.cache(stats_flush_interval=None)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)

    with caplog.at_level(logging.WARNING, logger="salesai_cache"):
        assert cache.flush_stats() == 0
        cache.get_or_compute(session_id, TRANSCRIPT)
        assert cache.flush_stats() == 0

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "003_add_cache_stats.sql" in warnings[0].getMessage()


@pytest.mark.sql
def test_missing_table_sends_nothing_after(
    rest_flavour: Flavour, db: psycopg.Connection[Any]
) -> None:
    flavour = rest_flavour
    assert flavour.emulator is not None
    db.execute("drop table public.salesai_cache_stats")
    cache = flavour.cache(stats_flush_interval=None)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.flush_stats()
    sent = len(flavour.emulator.requests)

    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.flush_stats()

    # The hit's lookup only.
    assert len(flavour.emulator.requests) == sent + 1


@pytest.mark.sql
def test_hit_before_interval_one_request(
    rest_flavour: Flavour, db: psycopg.Connection[Any]
) -> None:
    flavour = rest_flavour
    assert flavour.emulator is not None
    cache = flavour.cache(stats_flush_interval=60)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)
    sent = len(flavour.emulator.requests)

    cache.get_or_compute(session_id, TRANSCRIPT)

    assert len(flavour.emulator.requests) == sent + 1


@pytest.mark.sql
def test_user_key_records_own_user_id(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    user = create_auth_user(db, "coach@example.test")
    token = user_jwt(user)
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True) as router:
        emulator.install(router)
        options = SyncClientOptions(headers={"Authorization": f"Bearer {token}"})
        store = SupabaseStore(supabase.create_client(URL, ANON_KEY, options=options))
        store.record_stats([StatsRow(model="m", analysis_version="v", hits=3)])
    emulator.close()

    row = db.execute("select user_id::text, hits from public.salesai_cache_stats")
    assert row.fetchone() == (user, 3)


# Failures


class FlakyStore:
    """
    A store whose record_stats fails the first ``failures`` times, after the
    inner store wrote the rows (a reply lost after the commit).
    """

    def __init__(self, inner: Any, failures: int) -> None:
        self._inner = inner
        self.failures = failures
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def record_stats(self, rows: list[StatsRow]) -> int:
        self.calls += 1
        written: int = self._inner.record_stats(rows)
        if self.failures:
            self.failures -= 1
            raise CacheStoreError("the reply was lost")
        return written


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.mark.sql
def test_failed_flush_keeps_rows(
    conn: psycopg.Connection[Any],
    db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from salesai_cache._stores.postgres import PostgresStore

    store = FlakyStore(PostgresStore(conn), failures=1)
    cache = AnalysisCache(store, CountingAnalyzer(VERSION), stats_flush_interval=None)
    session_id = add_session(db)
    cache.get_or_compute(session_id, TRANSCRIPT)

    with caplog.at_level(logging.WARNING, logger="salesai_cache"):
        assert cache.flush_stats() == 0
    assert "kept for the next flush" in caplog.text
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.flush_stats() == 2

    # The first row reached the database twice and counts once.
    assert sums(db)[:2] == (1, 1)


@pytest.mark.sql
def test_failed_auto_flush_returns_result(
    conn: psycopg.Connection[Any],
    db: psycopg.Connection[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from salesai_cache._stores.postgres import PostgresStore

    clock = [0.0]
    monkeypatch.setattr("salesai_cache._stats_flush.time.monotonic", lambda: clock[0])
    store = FlakyStore(PostgresStore(conn), failures=5)
    cache = AnalysisCache(store, CountingAnalyzer(VERSION), stats_flush_interval=1)
    clock[0] = 5.0

    result = cache.get_or_compute(add_session(db), TRANSCRIPT)

    assert result.status.value == "miss"
    assert store.calls == 1


class TransientStore(FlakyStore):
    def record_stats(self, rows: list[StatsRow]) -> int:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise CacheStoreError("connection reset", retryable=True)
        written: int = self._inner.record_stats(rows)
        return written


@pytest.mark.sql
def test_retrying_store_retries_record(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    from salesai_cache._stores.postgres import PostgresStore

    store = TransientStore(PostgresStore(conn), failures=1)
    retrying = RetryingStore(store, sleep=lambda _: None)  # type: ignore[arg-type]

    assert retrying.record_stats([StatsRow(model="m", analysis_version=None)]) == 1
    assert store.calls == 2
    assert stats_rows(db) == 1


class NoStatsStore:
    """
    A custom store without record_stats.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "record_stats":
            raise AttributeError(name)
        return getattr(self._inner, name)


@pytest.mark.sql
def test_custom_store_skips_flush(
    conn: psycopg.Connection[Any], db: psycopg.Connection[Any]
) -> None:
    from salesai_cache._stores.postgres import PostgresStore

    store = NoStatsStore(PostgresStore(conn))
    with AnalysisCache(store, CountingAnalyzer(VERSION)) as cache:
        cache.get_or_compute(add_session(db), TRANSCRIPT)
        assert cache.flush_stats() == 0
    assert stats_rows(db) == 0


@pytest.mark.parametrize("interval", [0, -1, float("nan"), float("inf"), "60", True])
def test_flush_interval_invalid(interval: object) -> None:
    store = SupabaseStore(supabase.create_client(URL, SERVICE_ROLE_KEY))
    with pytest.raises(InvalidInputError, match=f"stats_flush_interval {interval!r}"):
        AnalysisCache(store, CountingAnalyzer(), stats_flush_interval=interval)  # type: ignore[arg-type]


# The exact PostgREST request


def test_record_stats_request() -> None:
    row = StatsRow(
        model="gpt-4o-mini",
        analysis_version="gpt-4o-mini:abc",
        hits=5,
        misses=1,
        stale_recomputes=1,
        waits=2,
        stale_served=0,
        prompt_tokens_saved=700,
        completion_tokens_saved=140,
        worker="web-1:42",
        id="6f1c2f0e-2b7c-4c55-9d1e-0a4b8c3d2e1f",
    )
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_mocked=True) as api:
        route = api.post("/salesai_cache_stats").mock(
            return_value=httpx.Response(201, headers={"Content-Range": "*/*"})
        )
        store = SupabaseStore(supabase.create_client(URL, SERVICE_ROLE_KEY))
        assert store.record_stats([row]) == 1

    request: httpx.Request = route.calls.last.request
    assert route.call_count == 1
    assert dict(request.url.params) == {
        "on_conflict": "id",
        "columns": request.url.params["columns"],
    }
    columns = request.url.params["columns"].split(",")
    assert {column.strip('"') for column in columns} == set(row.as_record())
    prefer = {part.strip() for part in request.headers["Prefer"].split(",")}
    assert prefer == {"return=minimal", "resolution=ignore-duplicates"}
    assert json.loads(request.content) == [row.as_record()]


def test_record_stats_missing_table_error() -> None:
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_mocked=True) as api:
        api.post("/salesai_cache_stats").mock(
            return_value=httpx.Response(
                404,
                json={
                    "code": "PGRST205",
                    "details": None,
                    "hint": None,
                    "message": "Could not find the table "
                    "'public.salesai_cache_stats' in the schema cache",
                },
            )
        )
        store = SupabaseStore(supabase.create_client(URL, SERVICE_ROLE_KEY))
        with pytest.raises(CacheStoreError, match="003_add_cache_stats") as info:
            store.record_stats([StatsRow(model="m", analysis_version=None)])
    assert info.value.code == "PGRST205"


def test_unsent_rows_bounded(caplog: pytest.LogCaptureFixture) -> None:
    flusher = StatsFlusher(
        StatsRecorder(), None, enabled=True, logger=logging.getLogger("salesai_cache")
    )
    rows = [StatsRow(model="m", analysis_version="v", hits=1) for _ in range(1500)]
    with caplog.at_level(logging.WARNING, logger="salesai_cache"):
        flusher.failed(rows, CacheStoreError("connection refused"))
    assert len(flusher.take()) == MAX_UNSENT_ROWS
    assert "Dropped the 500 oldest" in caplog.text


def test_unsent_rows_keep_newest() -> None:
    flusher = StatsFlusher(
        StatsRecorder(), None, enabled=True, logger=logging.getLogger("salesai_cache")
    )
    rows = [
        StatsRow(model="m", analysis_version="v", hits=index) for index in range(1200)
    ]
    flusher.failed(rows, CacheStoreError("connection refused"))
    assert flusher.take()[0].hits == 200
