"""
How AnalysisCache and AsyncAnalysisCache behave on a real database, once per
flavour and store: over a psycopg connection, and over a supabase client
whose requests a PostgREST emulator runs on the same database.

The async cache runs through a facade with sync methods (tests/async_support.py)
on an event loop in a thread of its own, so every test here runs unchanged for
both flavours; threads that call the facade at once run concurrent tasks on
that one loop.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import respx
import supabase
from async_support import AsyncCacheFacade, LoopThread
from postgrest_emulator import SERVICE_ROLE_KEY, URL, PostgrestEmulator
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict

from salesai_cache import (
    AnalysisCache,
    AnalyzerError,
    AnalyzerOutput,
    AsyncAnalysisCache,
    CacheClosedError,
    CacheStatus,
    ClaimTimeoutError,
    InvalidInputError,
    SessionNotFoundError,
    TokenUsage,
    Turn,
)
from salesai_cache._local.database import create_auth_user
from salesai_cache._stores.async_supabase import close_async_client

pytestmark = [
    pytest.mark.sql,
    # supabase-py passes timeout and verify to its own PostgREST client,
    # which postgrest-py deprecates.
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

SECRET_PHRASE = "our budget is exactly 48,250 euros"
TRANSCRIPT = [
    {"speaker": "Rep", "text": "What is driving the evaluation this quarter?"},
    {"speaker": "Buyer", "text": f"Honestly, {SECRET_PHRASE}."},
    {"speaker": "Rep", "text": "Then let us scope a pilot that fits."},
]
USAGE = TokenUsage(prompt_tokens=120, completion_tokens=30, total_tokens=150)
MODEL = "fake-model-1"
UNKNOWN_SESSION = "6f1c2f0e-2b7c-4c55-9d1e-0a4b8c3d2e1f"


class Verdict(BaseModel):
    """
    The fake analyzer's output.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    turns: int
    first_speaker: str


class CountingAnalyzer:
    """
    An analyzer that records its calls instead of calling a model.
    """

    output_model = Verdict

    def __init__(self, version: str = "fake-model-1:v1") -> None:
        self.transcripts: list[tuple[Turn, ...]] = []
        self.analysis_version = version

    @property
    def calls(self) -> int:
        return len(self.transcripts)

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        self.transcripts.append(tuple(transcript))
        verdict = Verdict(turns=len(transcript), first_speaker=transcript[0].speaker)
        return AnalyzerOutput(analysis=verdict, model=MODEL, usage=USAGE)


Cache = AnalysisCache[Verdict] | AsyncCacheFacade


@dataclass
class Backend:
    """
    One way of reaching the test database, how to cut it off, and the cache
    flavour to build on it.
    """

    kind: str
    connect: Callable[[], Any]
    sever: Callable[[], None]
    loop: LoopThread | None = None

    def cache(self, client: Any, analyzer: Any, **options: Any) -> Cache:
        if self.loop is None:
            return AnalysisCache(client, analyzer, **options)
        return AsyncCacheFacade(
            AsyncAnalysisCache(client, analyzer, **options), self.loop
        )


@pytest.fixture(params=["sync", "async"])
def loop(request: pytest.FixtureRequest) -> Iterator[LoopThread | None]:
    if request.param == "sync":
        yield None
        return
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(params=["postgres", "supabase"])
def backend(
    request: pytest.FixtureRequest, database_url: str, loop: LoopThread | None
) -> Iterator[Backend]:
    if request.param == "postgres":
        connections: list[Any] = []

        def connect_postgres() -> Any:
            # Not autocommit: the store must commit its own writes.
            if loop is None:
                conn: Any = psycopg.connect(database_url)
            else:
                conn = loop.run(psycopg.AsyncConnection.connect(database_url))
            connections.append(conn)
            return conn

        def sever_postgres() -> None:
            for conn in connections:
                if loop is None:
                    conn.close()
                else:
                    loop.run(conn.close())

        yield Backend("postgres", connect_postgres, sever_postgres, loop)
        sever_postgres()
        return

    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = emulator.install(router)
        clients: list[Any] = []

        def connect_supabase() -> Any:
            if loop is None:
                return supabase.create_client(URL, SERVICE_ROLE_KEY)
            client = loop.run(supabase.acreate_client(URL, SERVICE_ROLE_KEY))
            clients.append(client)
            return client

        def sever_supabase() -> None:
            route.side_effect = AssertionError("the store sent a request")

        yield Backend("supabase", connect_supabase, sever_supabase, loop)
        if loop is not None:
            for client in clients:
                loop.run(close_async_client(client))
    emulator.close()


@pytest.fixture
def store_client(backend: Backend) -> Any:
    return backend.connect()


@pytest.fixture
def analyzer() -> CountingAnalyzer:
    return CountingAnalyzer()


@pytest.fixture
def cache(store_client: Any, backend: Backend, analyzer: CountingAnalyzer) -> Cache:
    return backend.cache(store_client, analyzer)


@pytest.fixture
def user_id(db: psycopg.Connection[Any]) -> str:
    return create_auth_user(db, "rep@example.test")


def add_session(
    db: psycopg.Connection[Any],
    user_id: str,
    *,
    conversation_id: str | None = None,
    transcript: list[dict[str, str]] | None = None,
) -> str:
    row = db.execute(
        "insert into public.salesai_sessions (user_id, transcript, conversation_id) "
        "values (%s, %s, %s) returning id",
        (user_id, Jsonb(transcript or TRANSCRIPT), conversation_id),
    ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def session_id(db: psycopg.Connection[Any], user_id: str) -> str:
    return add_session(db, user_id, conversation_id="call-2026-001")


def stored_rows(db: psycopg.Connection[Any], session_id: str) -> int:
    row = db.execute(
        "select count(*) from public.salesai_analysis_results where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


EXPECTED = Verdict(turns=3, first_speaker="Rep")


# Miss, then hit


def test_first_call_misses(cache: Cache, session_id: str) -> None:
    assert cache.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.MISS


def test_miss_calls_analyzer(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert analyzer.calls == 1


def test_miss_returns_analysis(cache: Cache, session_id: str) -> None:
    assert cache.get_or_compute(session_id, TRANSCRIPT).analysis == EXPECTED


def test_miss_stores_row(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert stored_rows(db, session_id) == 1


def test_miss_created_at(cache: Cache, session_id: str) -> None:
    created_at = cache.get_or_compute(session_id, TRANSCRIPT).created_at
    assert created_at is not None and created_at.tzinfo is not None


def test_second_call_hits(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.HIT


def test_hit_skips_analyzer(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert analyzer.calls == 1


def test_hit_same_analysis(cache: Cache, session_id: str) -> None:
    first = cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.get_or_compute(session_id, TRANSCRIPT).analysis == first.analysis


def test_hit_same_created_at(cache: Cache, session_id: str) -> None:
    first = cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.get_or_compute(session_id, TRANSCRIPT).created_at == first.created_at


def test_hit_keeps_one_row(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert stored_rows(db, session_id) == 1


def hit_records(
    cache: Cache, session_id: str, caplog: pytest.LogCaptureFixture
) -> list[logging.LogRecord]:
    cache.get_or_compute(session_id, TRANSCRIPT)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        cache.get_or_compute(session_id, TRANSCRIPT)
    return caplog.records


def test_hit_logs(
    cache: Cache, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    found = [
        record
        for record in hit_records(cache, session_id, caplog)
        if record.levelno == logging.INFO
        and "Found cached analysis in database" in record.getMessage()
    ]
    assert len(found) == 1


def test_hit_log_names_session(
    cache: Cache, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [r.getMessage() for r in hit_records(cache, session_id, caplog)]
    assert any(session_id in message for message in messages)


def test_logs_hide_transcript(
    cache: Cache, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        cache.get_or_compute(session_id, TRANSCRIPT)
        cache.get_or_compute(session_id, TRANSCRIPT)
    assert SECRET_PHRASE not in caplog.text


def test_hit_from_other_process(
    cache: Cache, backend: Backend, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    other = backend.cache(backend.connect(), CountingAnalyzer())
    assert other.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.HIT


def test_other_process_skips_analyzer(
    cache: Cache, backend: Backend, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    other_analyzer = CountingAnalyzer()
    backend.cache(backend.connect(), other_analyzer).get_or_compute(
        session_id, TRANSCRIPT
    )
    assert other_analyzer.calls == 0


# get and get_by_conversation


def test_get_before(cache: Cache, session_id: str) -> None:
    assert cache.get(session_id) is None


def test_get_after(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    found = cache.get(session_id)
    assert found is not None and found.analysis == EXPECTED


def test_get_does_not_compute(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get(session_id)
    assert analyzer.calls == 0


def test_by_conversation(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    found = cache.get_by_conversation("call-2026-001")
    assert found is not None and found.session_id == session_id


def test_by_conversation_analysis(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    found = cache.get_by_conversation("call-2026-001")
    assert found is not None and found.analysis == EXPECTED


def test_by_conversation_unknown(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.get_by_conversation("call-2026-999") is None


def test_by_conversation_not_analysed(cache: Cache, session_id: str) -> None:
    assert cache.get_by_conversation("call-2026-001") is None


def test_by_conversation_latest(
    cache: Cache, db: psycopg.Connection[Any], user_id: str
) -> None:
    older = add_session(db, user_id, conversation_id="shared")
    newer = add_session(db, user_id, conversation_id="shared")
    cache.get_or_compute(older, TRANSCRIPT)
    cache.get_or_compute(newer, TRANSCRIPT)
    found = cache.get_by_conversation("shared")
    assert found is not None and found.session_id == newer


def test_by_conversation_hit_logs(
    cache: Cache, session_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    with caplog.at_level(logging.INFO):
        cache.get_by_conversation("call-2026-001")
    assert "Found cached analysis in database" in caplog.text


TRICKY_CONVERSATION_IDS = [
    'say "hello"',
    "a,b,c",
    "fn(x)",
    "v1.2.3",
    "back\\slash",
    "eq.looks-like-a-filter",
    "Gespräch über Verträge — 会話 🚀",
    "a&b=c?d#e%20f+g",
    "in.(1,2)",
    'mixed "q", (p). \\ ü',
]


@pytest.mark.parametrize("conversation_id", TRICKY_CONVERSATION_IDS)
def test_conversation_id_round_trip(
    cache: Cache,
    db: psycopg.Connection[Any],
    user_id: str,
    conversation_id: str,
) -> None:
    # A decoy with the reserved characters stripped must not match instead.
    add_session(
        db, user_id, conversation_id="".join(filter(str.isalnum, conversation_id))
    )
    session = add_session(db, user_id, conversation_id=conversation_id)
    cache.get_or_compute(session, TRANSCRIPT)
    found = cache.get_by_conversation(conversation_id)
    assert found is not None and found.session_id == session


# Transcript from the session row


def test_transcript_from_session(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get_or_compute(session_id)
    assert analyzer.transcripts == [
        tuple(Turn(speaker=t["speaker"], text=t["text"]) for t in TRANSCRIPT)
    ]


def test_transcript_from_session_stored(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    cache.get_or_compute(session_id)
    assert stored_rows(db, session_id) == 1


def test_hit_needs_no_transcript(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.get_or_compute(session_id).status is CacheStatus.HIT


# Unknown and invalid sessions


def test_unknown_session(cache: Cache) -> None:
    with pytest.raises(SessionNotFoundError):
        cache.get_or_compute(UNKNOWN_SESSION, TRANSCRIPT)


def test_unknown_session_names_id(cache: Cache) -> None:
    with pytest.raises(SessionNotFoundError) as info:
        cache.get_or_compute(UNKNOWN_SESSION, TRANSCRIPT)
    assert info.value.session_id == UNKNOWN_SESSION


def test_unknown_session_stores_nothing(
    cache: Cache, db: psycopg.Connection[Any]
) -> None:
    with pytest.raises(SessionNotFoundError):
        cache.get_or_compute(UNKNOWN_SESSION, TRANSCRIPT)
    assert stored_rows(db, UNKNOWN_SESSION) == 0


def test_unknown_session_no_transcript(
    cache: Cache, analyzer: CountingAnalyzer
) -> None:
    with pytest.raises(SessionNotFoundError):
        cache.get_or_compute(UNKNOWN_SESSION)
    assert analyzer.calls == 0


def test_invalid_session_id(cache: Cache, backend: Backend) -> None:
    # Cut the database off: a request would fail with another error.
    backend.sever()
    with pytest.raises(InvalidInputError):
        cache.get_or_compute("not-a-uuid", TRANSCRIPT)


def test_invalid_session_id_get(cache: Cache, backend: Backend) -> None:
    backend.sever()
    with pytest.raises(InvalidInputError):
        cache.get("12345")


# Stored analyses that no longer validate


def store_raw(db: psycopg.Connection[Any], session_id: str, analysis: object) -> None:
    db.execute(
        "insert into public.salesai_analysis_results (session_id, analysis, model) "
        "values (%s, %s, 'old-model')",
        (session_id, Jsonb(analysis)),
    )


@pytest.mark.parametrize(
    "analysis",
    [
        {"score": "high"},
        {"turns": "three", "first_speaker": "Rep"},
        ["not", "a", "dict"],
    ],
    ids=["other-shape", "wrong-type", "array"],
)
def test_invalid_stored_recomputed(
    cache: Cache,
    db: psycopg.Connection[Any],
    session_id: str,
    analysis: object,
) -> None:
    store_raw(db, session_id, analysis)
    assert cache.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.MISS


def test_invalid_stored_replaced(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    store_raw(db, session_id, {"score": "high"})
    cache.get_or_compute(session_id, TRANSCRIPT)
    found = cache.get(session_id)
    assert found is not None and found.model == MODEL


def test_invalid_stored_get(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    store_raw(db, session_id, {"score": "high"})
    assert cache.get(session_id) is None


# Token usage and model


def test_usage_round_trip(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.get_or_compute(session_id, TRANSCRIPT).usage == USAGE


def test_model_round_trip(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.get_or_compute(session_id, TRANSCRIPT).model == MODEL


def test_usage_in_database(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    row = db.execute(
        "select prompt_tokens, completion_tokens, total_tokens "
        "from public.salesai_analysis_results where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row == (120, 30, 150)


# Freshness


def reordered(transcript: list[dict[str, str]]) -> list[dict[str, str]]:
    """
    The same turns with the keys in another order and extra whitespace.
    """
    return [
        {"text": f"  {turn['text']}\n", "speaker": turn["speaker"]}
        for turn in transcript
    ]


CHANGED = [*TRANSCRIPT, {"speaker": "Buyer", "text": "Send me the pilot terms."}]


def test_key_order_still_hits(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    result = cache.get_or_compute(session_id, reordered(TRANSCRIPT))
    assert result.status is CacheStatus.HIT


def test_changed_transcript_recomputes(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    result = cache.get_or_compute(session_id, CHANGED)
    assert result.status is CacheStatus.MISS
    assert result.analysis.turns == 4
    assert analyzer.calls == 2


def test_changed_transcript_replaces_row(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.get_or_compute(session_id, CHANGED)
    assert stored_rows(db, session_id) == 1
    assert cache.get_or_compute(session_id, CHANGED).status is CacheStatus.HIT


def test_changed_words_recompute(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    edited = [dict(turn) for turn in TRANSCRIPT]
    edited[2]["text"] = "Then let us scope a bigger pilot that fits."
    assert cache.get_or_compute(session_id, edited).status is CacheStatus.MISS


def test_new_version_recomputes(
    store_client: Any, backend: Backend, session_id: str
) -> None:
    backend.cache(store_client, CountingAnalyzer("v1")).get_or_compute(
        session_id, TRANSCRIPT
    )
    newer = CountingAnalyzer("v2")
    result = backend.cache(backend.connect(), newer).get_or_compute(
        session_id, TRANSCRIPT
    )
    assert result.status is CacheStatus.MISS
    assert newer.calls == 1


def test_allow_stale_serves_old(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    result = cache.get_or_compute(session_id, CHANGED, allow_stale=True)
    assert result.status is CacheStatus.STALE
    assert result.stale
    assert result.analysis.turns == 3
    assert analyzer.calls == 1


def test_allow_stale_fresh_hits(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    result = cache.get_or_compute(session_id, TRANSCRIPT, allow_stale=True)
    assert result.status is CacheStatus.HIT


def test_allow_stale_empty_computes(cache: Cache, session_id: str) -> None:
    result = cache.get_or_compute(session_id, TRANSCRIPT, allow_stale=True)
    assert result.status is CacheStatus.MISS


def test_get_changed_transcript_stale(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    found = cache.get(session_id, CHANGED)
    assert found is not None and found.status is CacheStatus.STALE


def test_legacy_row_recomputed(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    """
    A row stored before fingerprints existed is stale, however valid.
    """
    store_raw(db, session_id, EXPECTED.model_dump())
    assert cache.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.MISS


def test_result_fingerprints(cache: Cache, session_id: str) -> None:
    miss = cache.get_or_compute(session_id, TRANSCRIPT)
    hit = cache.get_or_compute(session_id, TRANSCRIPT)
    assert hit.transcript_hash == miss.transcript_hash
    assert hit.analysis_version == "fake-model-1:v1"


def test_hit_age(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    age = cache.get_or_compute(session_id, TRANSCRIPT).age_seconds
    assert 0.0 <= age < 60.0


# refresh and invalidate


def test_refresh_recomputes(
    cache: Cache, analyzer: CountingAnalyzer, session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.refresh(session_id, TRANSCRIPT).status is CacheStatus.MISS
    assert analyzer.calls == 2


def test_refresh_keeps_one_row(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.refresh(session_id)
    assert stored_rows(db, session_id) == 1


def test_invalidate_session(cache: Cache, backend: Backend, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    other = backend.cache(backend.connect(), CountingAnalyzer())
    assert other.invalidate(session_id) == 1
    assert cache.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.MISS


def test_invalidate_version(
    cache: Cache, db: psycopg.Connection[Any], user_id: str
) -> None:
    first = add_session(db, user_id)
    second = add_session(db, user_id)
    cache.get_or_compute(first, TRANSCRIPT)
    cache.get_or_compute(second, TRANSCRIPT)
    assert cache.invalidate(analysis_version="fake-model-1:v1") == 2
    assert cache.invalidate(analysis_version="fake-model-1:v1") == 0


def test_invalidate_needs_filter(cache: Cache) -> None:
    with pytest.raises(InvalidInputError, match="session_id, an analysis_version"):
        cache.invalidate()


@pytest.mark.parametrize("version", ["", "  ", 3], ids=["empty", "blank", "int"])
def test_invalidate_bad_version(cache: Cache, backend: Backend, version: Any) -> None:
    backend.sever()
    with pytest.raises(InvalidInputError, match=f"analysis_version {version!r}"):
        cache.invalidate(analysis_version=version)


# A closed cache

CLOSED_CALLS: dict[str, Callable[[Cache, str], object]] = {
    "get_or_compute": lambda cache, key: cache.get_or_compute(key, TRANSCRIPT),
    "refresh": lambda cache, key: cache.refresh(key, TRANSCRIPT),
    "get": lambda cache, key: cache.get(key),
    "get_by_conversation": lambda cache, key: cache.get_by_conversation("call-1"),
    "get_many": lambda cache, key: cache.get_many([key]),
    "invalidate": lambda cache, key: cache.invalidate(key),
    "flush_pending": lambda cache, key: cache.flush_pending(),
    "flush_stats": lambda cache, key: cache.flush_stats(),
}


@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_closed_raises(
    cache: Cache, backend: Backend, session_id: str, call: str
) -> None:
    cache.close()
    # Cut the database off: a request would fail with another error.
    backend.sever()
    with pytest.raises(CacheClosedError, match="AnalysisCache is closed"):
        CLOSED_CALLS[call](cache, session_id)


def test_closed_computes_nothing(
    cache: Cache,
    analyzer: CountingAnalyzer,
    db: psycopg.Connection[Any],
    session_id: str,
) -> None:
    cache.close()
    with pytest.raises(CacheClosedError):
        cache.get_or_compute(session_id, TRANSCRIPT)
    assert (analyzer.calls, stored_rows(db, session_id)) == (0, 0)


def test_close_twice(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.close()
    cache.close()
    assert cache.pending_writes == 0


def test_closed_stats_readable(cache: Cache, session_id: str) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.get_or_compute(session_id, TRANSCRIPT)
    cache.close()
    stats = cache.stats()
    assert (stats.misses, stats.hits) == (1, 1)


def test_closed_sync_with_block(
    db: psycopg.Connection[Any], analyzer: CountingAnalyzer, session_id: str
) -> None:
    with AnalysisCache(db, analyzer) as cache:
        cache.get_or_compute(session_id, TRANSCRIPT)
    with pytest.raises(CacheClosedError, match=r"close\(\) or at the end of 'with'"):
        cache.get_or_compute(session_id, TRANSCRIPT)


def test_closed_sync_reentry(db: psycopg.Connection[Any]) -> None:
    cache = AnalysisCache(db, CountingAnalyzer())
    with cache:
        pass
    with pytest.raises(CacheClosedError), cache:
        pass


# Analyzers that are not analyzers


class NoVersion:
    output_model = Verdict

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        raise AssertionError("not called")


class DictModel(NoVersion):
    analysis_version = "v1"
    output_model = dict  # type: ignore[assignment]


class IntVersion(NoVersion):
    analysis_version = 1


class NoAnalyze:
    output_model = Verdict
    analysis_version = "v1"
    analyze = None


BAD_ANALYZERS: dict[str, tuple[object, str]] = {
    "none": (None, "NoneType: missing analysis_version, output_model, analyze"),
    "no-version": (NoVersion(), "NoVersion: missing analysis_version"),
    "model-not-pydantic": (DictModel(), "output_model is class dict, not a pydantic"),
    "version-not-string": (IntVersion(), "IntVersion: analysis_version is int"),
    "analyze-not-callable": (NoAnalyze(), "NoAnalyze: analyze is not callable"),
}


@pytest.mark.parametrize("name", sorted(BAD_ANALYZERS))
def test_bad_analyzer_rejected(store_client: Any, backend: Backend, name: str) -> None:
    bad, message = BAD_ANALYZERS[name]
    with pytest.raises(InvalidInputError, match=message):
        backend.cache(store_client, bad)


def test_sync_cache_rejects_async_analyzer(db: psycopg.Connection[Any]) -> None:
    class Coroutines(CountingAnalyzer):
        async def analyze(  # type: ignore[override]
            self, transcript: Sequence[Turn]
        ) -> AnalyzerOutput[Verdict]:
            raise AssertionError("not called")

    with pytest.raises(InvalidInputError, match="AsyncAnalysisCache"):
        AnalysisCache(db, Coroutines())


# One computation per session


class GatedAnalyzer(CountingAnalyzer):
    """
    A counting analyzer that blocks until ``gate`` is set, like a slow model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()
        self._lock = threading.Lock()

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        with self._lock:
            return super().analyze(transcript)


def run_together(count: int, call: Callable[[], Any]) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return [future.result() for future in [pool.submit(call) for _ in range(count)]]


def test_threads_share_one_call(
    store_client: Any, backend: Backend, session_id: str
) -> None:
    analyzer = GatedAnalyzer()
    cache = backend.cache(store_client, analyzer)
    threading.Timer(0.3, analyzer.gate.set).start()
    results = run_together(10, lambda: cache.get_or_compute(session_id, TRANSCRIPT))
    assert analyzer.calls == 1
    assert {result.analysis for result in results} == {EXPECTED}
    assert (
        sorted(result.status.value for result in results) == ["miss"] + ["waited"] * 9
    )


def test_caches_share_one_call(backend: Backend, session_id: str) -> None:
    """
    Four caches on their own connections, like four processes, compute once.
    """
    analyzer = GatedAnalyzer()
    caches = [backend.cache(backend.connect(), analyzer) for _ in range(4)]
    threading.Timer(0.5, analyzer.gate.set).start()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(cache.get_or_compute, session_id, TRANSCRIPT)
            for cache in caches
        ]
        results = [future.result() for future in futures]
    assert analyzer.calls == 1
    assert {result.analysis for result in results} == {EXPECTED}
    assert (
        sorted(result.status.value for result in results) == ["miss"] + ["waited"] * 3
    )


class FailingAnalyzer(CountingAnalyzer):
    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        super().analyze(transcript)
        raise AnalyzerError("model unavailable")


def test_failure_releases_claim(
    store_client: Any, backend: Backend, session_id: str
) -> None:
    with pytest.raises(AnalyzerError):
        backend.cache(store_client, FailingAnalyzer()).get_or_compute(
            session_id, TRANSCRIPT
        )
    # A lease of an hour: only a released claim lets this call compute at once.
    other = backend.cache(backend.connect(), CountingAnalyzer(), lease_seconds=3600)
    assert other.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.MISS


def hold_claim(db: psycopg.Connection[Any], session_id: str, seconds: float) -> None:
    """
    Record a claim by a worker that will never finish, as a crashed one.
    """
    db.execute(
        "insert into public.salesai_analysis_claims (session_id, claimant, expires_at) "
        "values (%s, 'crashed-worker', now() + make_interval(secs => %s))",
        (session_id, seconds),
    )


def test_expired_claim_taken_over(
    cache: Cache, db: psycopg.Connection[Any], session_id: str
) -> None:
    hold_claim(db, session_id, 0.5)
    started = time.monotonic()
    result = cache.get_or_compute(session_id, TRANSCRIPT)
    assert result.status is CacheStatus.MISS
    assert time.monotonic() - started >= 0.4


def test_held_claim_times_out(
    store_client: Any, backend: Backend, db: psycopg.Connection[Any], session_id: str
) -> None:
    hold_claim(db, session_id, 60)
    cache = backend.cache(store_client, CountingAnalyzer(), wait_timeout=0.3)
    with pytest.raises(ClaimTimeoutError) as info:
        cache.get_or_compute(session_id, TRANSCRIPT)
    assert info.value.session_id == session_id


def test_waiter_logs_wait(
    store_client: Any,
    backend: Backend,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    analyzer = GatedAnalyzer()
    leader = backend.cache(store_client, analyzer)
    waiter = backend.cache(backend.connect(), CountingAnalyzer())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        computing = pool.submit(leader.get_or_compute, session_id, TRANSCRIPT)
        assert analyzer.started.wait(10)
        threading.Timer(0.2, analyzer.gate.set).start()
        with caplog.at_level(logging.INFO, logger="salesai_cache"):
            result = waiter.get_or_compute(session_id, TRANSCRIPT)
        computing.result()
    assert result.status is CacheStatus.WAITED
    assert "after waiting" in caplog.text
