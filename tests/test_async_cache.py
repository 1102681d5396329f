"""
What only AsyncAnalysisCache does: cancellation, an event loop that never
blocks, and closing what it opened. Its shared behaviour with AnalysisCache
is in test_cache_behaviour.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2
import openai
import psycopg
import pytest
import respx
import supabase
from postgrest_emulator import SERVICE_ROLE_KEY, URL, PostgrestEmulator
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict

from salesai_cache import (
    AnalyzerOutput,
    AsyncAnalysisCache,
    AsyncOpenAIAnalyzer,
    CacheClosedError,
    CacheStatus,
    ConversationMetrics,
    ConversationMetricsAnalyzer,
    InvalidInputError,
    RetryPolicy,
    SalesAICacheError,
    ThreadedAnalyzer,
    TokenUsage,
    Turn,
)
from salesai_cache._async_cache import _make_async_store
from salesai_cache._local.database import create_auth_user
from salesai_cache._stores.async_supabase import close_async_client

pytestmark = [
    pytest.mark.sql,
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

TRANSCRIPT = [
    {"speaker": "Rep", "text": "What is driving the evaluation this quarter?"},
    {"speaker": "Buyer", "text": "Cost, mostly."},
]
VERSION = "fake-model-1:v1"


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    turns: int


class SlowAnalyzer:
    """
    An async analyzer that sleeps ``delays[n]`` seconds on its n-th call,
    like a slow model, and records whether it was cancelled.
    """

    output_model = Verdict
    analysis_version = VERSION

    def __init__(self, *delays: float) -> None:
        self.delays = list(delays)
        self.calls = 0
        self.cancelled = 0
        self.started = asyncio.Event()

    async def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        delay = self.delays[min(self.calls, len(self.delays) - 1)]
        self.calls += 1
        self.started.set()
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return AnalyzerOutput(
            analysis=Verdict(turns=len(transcript)), model="fake", usage=TokenUsage()
        )


Connect = Callable[[], AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["postgres", "supabase"])
def connect(request: pytest.FixtureRequest, database_url: str) -> Iterator[Connect]:
    """
    Opens an async client of the store under test, inside the test's loop.
    """
    if request.param == "postgres":

        @asynccontextmanager
        async def postgres() -> AsyncIterator[Any]:
            conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
            try:
                yield conn
            finally:
                await conn.close()

        yield postgres
        return

    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)

        @asynccontextmanager
        async def rest() -> AsyncIterator[Any]:
            client = await supabase.acreate_client(URL, SERVICE_ROLE_KEY)
            try:
                yield client
            finally:
                await close_async_client(client)

        yield rest
    emulator.close()


@pytest.fixture
def session_id(db: psycopg.Connection[Any]) -> str:
    user_id = create_auth_user(db, "rep@example.test")
    row = db.execute(
        "insert into public.salesai_sessions (user_id, transcript) "
        "values (%s, %s) returning id",
        (user_id, Jsonb(TRANSCRIPT)),
    ).fetchone()
    assert row is not None
    return str(row[0])


def count(db: psycopg.Connection[Any], table: str, session_id: str) -> int:
    row = db.execute(
        f"select count(*) from public.{table} where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


# Cancellation


async def cancel_computing(
    connect: Connect, session_id: str, analyzer: SlowAnalyzer
) -> BaseException | None:
    """
    Start a compute with a slow analyzer, cancel it, and return what the
    cancelled task raised.
    """
    async with connect() as client:
        cache = AsyncAnalysisCache(client, analyzer)
        task = asyncio.create_task(cache.get_or_compute(session_id, TRANSCRIPT))
        await analyzer.started.wait()
        task.cancel()
        try:
            await task
        except BaseException as error:
            return error
    return None


def test_cancel_raises(connect: Connect, session_id: str) -> None:
    raised = asyncio.run(cancel_computing(connect, session_id, SlowAnalyzer(30)))
    assert isinstance(raised, asyncio.CancelledError)


def test_cancel_releases_claim(
    connect: Connect, db: psycopg.Connection[Any], session_id: str
) -> None:
    asyncio.run(cancel_computing(connect, session_id, SlowAnalyzer(30)))
    assert count(db, "salesai_analysis_claims", session_id) == 0


def test_cancel_cancels_analyzer(connect: Connect, session_id: str) -> None:
    analyzer = SlowAnalyzer(30)
    asyncio.run(cancel_computing(connect, session_id, analyzer))
    assert analyzer.cancelled == 1


def test_cancel_stores_nothing(
    connect: Connect, db: psycopg.Connection[Any], session_id: str
) -> None:
    asyncio.run(cancel_computing(connect, session_id, SlowAnalyzer(30)))
    assert count(db, "salesai_analysis_results", session_id) == 0


class CancelOnReturn(SlowAnalyzer):
    """
    An analyzer that cancels its caller's task as it returns the analysis:
    the cancellation arrives while the cache saves what was paid for.
    """

    async def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        output = await super().analyze(transcript)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return output


class SlowSave:
    """
    The store of a client, whose saves wait a moment before they start, so
    that a cancellation finds the save under way.
    """

    def __init__(self, client: Any) -> None:
        self._store = _make_async_store(client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def save(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.05)
        return await self._store.save(*args, **kwargs)


async def cancel_while_saving(
    connect: Connect, session_id: str, analyzer: SlowAnalyzer
) -> list[CacheStatus]:
    """
    Cancel a compute while it saves, close the cache, and return the status
    of the next call on a new cache.
    """
    async with connect() as client:
        cache = AsyncAnalysisCache(SlowSave(client), analyzer)
        task = asyncio.create_task(cache.get_or_compute(session_id, TRANSCRIPT))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await cache.aclose()
        again = AsyncAnalysisCache(client, analyzer)
        return [(await again.get_or_compute(session_id, TRANSCRIPT)).status]


def test_cancel_while_saving_stores(
    connect: Connect, db: psycopg.Connection[Any], session_id: str
) -> None:
    asyncio.run(cancel_while_saving(connect, session_id, CancelOnReturn(0)))
    assert count(db, "salesai_analysis_results", session_id) == 1


def test_cancel_while_saving_releases_claim(
    connect: Connect, db: psycopg.Connection[Any], session_id: str
) -> None:
    asyncio.run(cancel_while_saving(connect, session_id, CancelOnReturn(0)))
    assert count(db, "salesai_analysis_claims", session_id) == 0


def test_cancel_while_saving_pays_once(connect: Connect, session_id: str) -> None:
    analyzer = CancelOnReturn(0)
    statuses = asyncio.run(cancel_while_saving(connect, session_id, analyzer))
    assert (statuses, analyzer.calls) == ([CacheStatus.HIT], 1)


class BlockingAnalyzer:
    """
    A sync analyzer, run by the async cache in a thread, that blocks for
    ``delay`` seconds like a sync model client.
    """

    output_model = Verdict
    analysis_version = VERSION

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self.started = threading.Event()

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        self.calls += 1
        self.started.set()
        time.sleep(self.delay)
        return AnalyzerOutput(
            analysis=Verdict(turns=len(transcript)), model="fake", usage=TokenUsage()
        )


async def cancel_in_thread(
    connect: Connect, session_id: str, analyzer: BlockingAnalyzer
) -> CacheStatus:
    """
    Cancel a compute whose sync analyzer runs in a thread, ask for the
    session again at once from another cache, close both, and return the
    status of the second call.
    """
    async with connect() as first, connect() as second:
        cancelled = AsyncAnalysisCache(first, analyzer)
        task = asyncio.create_task(cancelled.get_or_compute(session_id, TRANSCRIPT))
        while not analyzer.started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        other = AsyncAnalysisCache(second, analyzer, poll_interval=0.02)
        result = await other.get_or_compute(session_id, TRANSCRIPT)
        await cancelled.aclose()
        await other.aclose()
        return result.status


def test_cancel_in_thread_pays_once(connect: Connect, session_id: str) -> None:
    analyzer = BlockingAnalyzer(0.3)
    status = asyncio.run(cancel_in_thread(connect, session_id, analyzer))
    assert (status, analyzer.calls) == (CacheStatus.WAITED, 1)


def test_cancel_in_thread_stores(
    connect: Connect, db: psycopg.Connection[Any], session_id: str
) -> None:
    asyncio.run(cancel_in_thread(connect, session_id, BlockingAnalyzer(0.3)))
    assert count(db, "salesai_analysis_results", session_id) == 1


def test_cancel_in_thread_releases_claim(
    connect: Connect, db: psycopg.Connection[Any], session_id: str
) -> None:
    asyncio.run(cancel_in_thread(connect, session_id, BlockingAnalyzer(0.3)))
    assert count(db, "salesai_analysis_claims", session_id) == 0


async def cancel_during_retry(
    connect: Connect, session_id: str, sent: list[httpx2.Request]
) -> None:
    """
    Compute with an OpenAI analyzer whose API is overloaded, and cancel the
    call while the analyzer waits to retry.
    """

    def overloaded(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        body = {"error": {"message": "overloaded", "type": "server_error"}}
        return httpx2.Response(503, json=body)

    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://openai.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(overloaded)),
    )
    # A long backoff: the cancellation arrives during the wait.
    analyzer = AsyncOpenAIAnalyzer(
        client, retry=RetryPolicy(initial_wait=30.0, jitter=0.0)
    )
    async with connect() as store_client:
        cache = AsyncAnalysisCache(store_client, analyzer)
        task = asyncio.create_task(cache.get_or_compute(session_id, TRANSCRIPT))
        while not sent:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)


def test_cancel_stops_retries(connect: Connect, session_id: str) -> None:
    sent: list[httpx2.Request] = []
    asyncio.run(cancel_during_retry(connect, session_id, sent))
    assert len(sent) == 1


def test_cancel_during_retry_releases_claim(
    connect: Connect, db: psycopg.Connection[Any], session_id: str
) -> None:
    asyncio.run(cancel_during_retry(connect, session_id, []))
    assert count(db, "salesai_analysis_claims", session_id) == 0


def test_cancel_next_caller_computes(connect: Connect, session_id: str) -> None:
    async def scenario() -> CacheStatus:
        await cancel_computing(connect, session_id, SlowAnalyzer(30))
        async with connect() as client:
            # A lease of an hour: only a released claim lets this compute now.
            cache = AsyncAnalysisCache(
                client, SlowAnalyzer(0), lease_seconds=3600, wait_timeout=5
            )
            return (await cache.get_or_compute(session_id, TRANSCRIPT)).status

    assert asyncio.run(scenario()) is CacheStatus.MISS


async def cancel_leader(
    connect: Connect, session_id: str, analyzer: SlowAnalyzer, followers: int
) -> list[Any]:
    """
    Cancel the task leading an in-process compute while ``followers`` tasks
    wait for it; return what the followers got.
    """
    async with connect() as client:
        cache = AsyncAnalysisCache(client, analyzer)
        leader = asyncio.create_task(cache.get_or_compute(session_id, TRANSCRIPT))
        await analyzer.started.wait()
        waiting = [
            asyncio.create_task(cache.get_or_compute(session_id, TRANSCRIPT))
            for _ in range(followers)
        ]
        await asyncio.sleep(0.05)
        leader.cancel()
        return await asyncio.gather(*waiting, return_exceptions=True)


def test_leader_cancel_followers_served(connect: Connect, session_id: str) -> None:
    results = asyncio.run(cancel_leader(connect, session_id, SlowAnalyzer(30, 0), 3))
    assert {getattr(result, "analysis", result) for result in results} == {
        Verdict(turns=2)
    }


def test_leader_cancel_one_takes_over(connect: Connect, session_id: str) -> None:
    analyzer = SlowAnalyzer(30, 0.1)
    asyncio.run(cancel_leader(connect, session_id, analyzer, 3))
    assert analyzer.calls == 2


def test_leader_cancel_statuses(connect: Connect, session_id: str) -> None:
    results = asyncio.run(cancel_leader(connect, session_id, SlowAnalyzer(30, 0.1), 3))
    assert sorted(result.status.value for result in results) == [
        "miss",
        "waited",
        "waited",
    ]


# The event loop never blocks


def test_loop_never_blocks(
    connect: Connect,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A miss, a wait for another worker and a hit, in asyncio's debug mode,
    which logs every callback that blocks the loop for 250 ms or more: less
    than the analyzer takes, more than a loaded machine's scheduling delays.
    A time.sleep on the loop's thread, however short, is caught by itself.
    """
    sleeps_on_loop: list[float] = []
    real_sleep = time.sleep

    def watched_sleep(seconds: float) -> None:
        if asyncio._get_running_loop() is not None:
            sleeps_on_loop.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", watched_sleep)

    async def scenario() -> list[CacheStatus]:
        loop = asyncio.get_running_loop()
        async with connect() as first, connect() as second:
            leader = AsyncAnalysisCache(first, SlowAnalyzer(0.6))
            waiter = AsyncAnalysisCache(second, SlowAnalyzer(0.6))
            # A warm-up on another session: client libraries build their HTTP
            # clients and TLS contexts on first use, once per process.
            await leader.get("00000000-0000-4000-8000-000000000000")
            await waiter.get("00000000-0000-4000-8000-000000000000")
            loop.slow_callback_duration = 0.25
            computing = asyncio.create_task(
                leader.get_or_compute(session_id, TRANSCRIPT)
            )
            await asyncio.sleep(0.1)
            waited = await waiter.get_or_compute(session_id, TRANSCRIPT)
            missed = await computing
            hit = await waiter.get_or_compute(session_id, TRANSCRIPT)
            return [missed.status, waited.status, hit.status]

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        statuses = asyncio.run(scenario(), debug=True)
    assert statuses == [CacheStatus.MISS, CacheStatus.WAITED, CacheStatus.HIT]
    slow = [r.getMessage() for r in caplog.records if "Executing" in r.getMessage()]
    assert slow == []
    assert sleeps_on_loop == []


def test_sync_analyzer_in_thread(database_url: str, session_id: str) -> None:
    async def scenario() -> Any:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        async with conn:
            cache = AsyncAnalysisCache(conn, ConversationMetricsAnalyzer())
            return cache.analyzer, await cache.get_or_compute(session_id, TRANSCRIPT)

    analyzer, result = asyncio.run(scenario())
    assert isinstance(analyzer, ThreadedAnalyzer)
    assert isinstance(result.analysis, ConversationMetrics)


# Closing


def backend_connections(db: psycopg.Connection[Any], expected: int = -1) -> int:
    """
    Count the other connections to the test database, waiting up to 5 s for
    the count to reach ``expected``: a server process leaves
    pg_stat_activity shortly after its client has closed the socket.
    """
    deadline = time.monotonic() + 5
    while True:
        row = db.execute(
            "select count(*) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
        ).fetchone()
        assert row is not None
        if int(row[0]) == expected or expected < 0 or time.monotonic() > deadline:
            return int(row[0])
        time.sleep(0.02)


def test_aclose_closes_own_connection(
    database_url: str, db: psycopg.Connection[Any], session_id: str
) -> None:
    before = backend_connections(db)

    async def scenario() -> int:
        async with await AsyncAnalysisCache.from_postgres_url(
            database_url, SlowAnalyzer(0)
        ) as cache:
            await cache.get_or_compute(session_id, TRANSCRIPT)
            return backend_connections(db)

    during = asyncio.run(scenario())
    assert during == before + 1
    assert backend_connections(db, before) == before


def test_aclose_keeps_passed_connection(database_url: str) -> None:
    async def scenario() -> bool:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        async with AsyncAnalysisCache(conn, SlowAnalyzer(0)):
            pass
        closed = conn.closed
        await conn.close()
        return closed

    assert asyncio.run(scenario()) is False


@pytest.fixture
def emulated(database_url: str) -> Iterator[PostgrestEmulator]:
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)
        yield emulator
    emulator.close()


def http_clients(client: supabase.AsyncClient) -> list[Any]:
    return [client.postgrest.session, client.auth._http_client]


def test_aclose_closes_own_supabase(
    emulated: PostgrestEmulator, session_id: str
) -> None:
    async def scenario() -> list[bool]:
        cache = await AsyncAnalysisCache.from_supabase_url(
            URL, SERVICE_ROLE_KEY, SlowAnalyzer(0)
        )
        await cache.get_or_compute(session_id, TRANSCRIPT)
        client = cache.store.client  # type: ignore[attr-defined]
        await cache.aclose()
        return [session.is_closed for session in http_clients(client)]

    assert asyncio.run(scenario()) == [True, True]


def test_aclose_keeps_passed_supabase(
    emulated: PostgrestEmulator, session_id: str
) -> None:
    async def scenario() -> list[bool]:
        client = await supabase.acreate_client(URL, SERVICE_ROLE_KEY)
        async with AsyncAnalysisCache(client, SlowAnalyzer(0)) as cache:
            await cache.get_or_compute(session_id, TRANSCRIPT)
        states = [session.is_closed for session in http_clients(client)]
        await close_async_client(client)
        return states

    assert asyncio.run(scenario()) == [False, False]


def test_rejects_sync_connection(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(TypeError, match="AsyncConnection"):
        AsyncAnalysisCache(db, SlowAnalyzer(0))


# Bad arguments of the constructors that create their client


@pytest.mark.parametrize("url", ["not a url", "ftp://example.test", ""])
def test_from_supabase_url_rejects_url(url: str) -> None:
    with pytest.raises(InvalidInputError, match=f"invalid Supabase URL {url!r}"):
        asyncio.run(
            AsyncAnalysisCache.from_supabase_url(url, SERVICE_ROLE_KEY, SlowAnalyzer(0))
        )


def test_from_supabase_url_hides_key() -> None:
    with pytest.raises(InvalidInputError) as raised:
        asyncio.run(
            AsyncAnalysisCache.from_supabase_url(
                "not a url", SERVICE_ROLE_KEY, SlowAnalyzer(0)
            )
        )
    assert SERVICE_ROLE_KEY not in str(raised.value)


def test_from_supabase_url_swapped_arguments() -> None:
    with pytest.raises(InvalidInputError, match="looks like an API key") as raised:
        asyncio.run(
            AsyncAnalysisCache.from_supabase_url(SERVICE_ROLE_KEY, URL, SlowAnalyzer(0))
        )
    assert SERVICE_ROLE_KEY not in str(raised.value)


def test_from_supabase_url_rejects_analyzer() -> None:
    with pytest.raises(InvalidInputError, match="NoneType"):
        asyncio.run(AsyncAnalysisCache.from_supabase_url(URL, SERVICE_ROLE_KEY, None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "conninfo",
    ["not a url", "postgresql://rep:s3cret@localhost/db?bogus=1"],
    ids=["text", "unknown-parameter"],
)
def test_from_postgres_url_rejects_conninfo(conninfo: str) -> None:
    with pytest.raises(
        InvalidInputError, match="invalid PostgreSQL connection"
    ) as raised:
        asyncio.run(AsyncAnalysisCache.from_postgres_url(conninfo, SlowAnalyzer(0)))
    assert "s3cret" not in str(raised.value)


# Using a closed cache

CALLS: dict[str, Callable[[AsyncAnalysisCache[Any], str], Any]] = {
    "get_or_compute": lambda cache, key: cache.get_or_compute(key, TRANSCRIPT),
    "refresh": lambda cache, key: cache.refresh(key, TRANSCRIPT),
    "get": lambda cache, key: cache.get(key),
    "get_by_conversation": lambda cache, key: cache.get_by_conversation("call-1"),
    "get_many": lambda cache, key: cache.get_many([key]),
    "invalidate": lambda cache, key: cache.invalidate(key),
    "flush_pending": lambda cache, key: cache.flush_pending(),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_closed_cache_raises(call: str, database_url: str, session_id: str) -> None:
    async def scenario() -> None:
        cache = await AsyncAnalysisCache.from_postgres_url(
            database_url, SlowAnalyzer(0)
        )
        await cache.aclose()
        await CALLS[call](cache, session_id)

    with pytest.raises(CacheClosedError, match="AsyncAnalysisCache is closed"):
        asyncio.run(scenario())


def test_closed_cache_computes_nothing(
    database_url: str, db: psycopg.Connection[Any], session_id: str
) -> None:
    """
    The client passed in stays open, yet the closed cache refuses before
    calling the analyzer or the database.
    """
    analyzer = SlowAnalyzer(0)

    async def scenario() -> BaseException | None:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        async with conn:
            async with AsyncAnalysisCache(conn, analyzer) as cache:
                pass
            try:
                await cache.get_or_compute(session_id, TRANSCRIPT)
            except CacheClosedError as error:
                return error
        return None

    raised = asyncio.run(scenario())
    assert (type(raised), analyzer.calls) == (CacheClosedError, 0)
    assert count(db, "salesai_analysis_results", session_id) == 0


def test_closed_cache_error_is_library_error() -> None:
    assert issubclass(CacheClosedError, SalesAICacheError)


def test_closed_cache_reentry_raises(database_url: str) -> None:
    async def scenario() -> None:
        cache = await AsyncAnalysisCache.from_postgres_url(
            database_url, SlowAnalyzer(0)
        )
        async with cache:
            pass
        async with cache:
            pass

    with pytest.raises(CacheClosedError):
        asyncio.run(scenario())
