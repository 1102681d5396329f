"""
Faults and their outcomes: model calls that fail or answer badly, database
calls that fail, rows hidden by policies, and strange input. Each test checks
what the caller gets and what the database holds after: a paid analysis is
never lost and a wrong one never stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import httpx2
import openai
import psycopg
import pytest
import respx
import supabase
from hypothesis import given
from hypothesis import strategies as st
from postgrest_emulator import SERVICE_ROLE_KEY, URL, PostgrestEmulator
from test_cache_behaviour import (
    SECRET_PHRASE,
    TRANSCRIPT,
    Backend,
    CountingAnalyzer,
    Verdict,
    add_session,
    backend,
    loop,
    stored_rows,
    user_id,
)

from salesai_cache import (
    AnalysisCache,
    AnalyzerError,
    CacheStatus,
    CacheStoreError,
    ConfigurationError,
    InvalidInputError,
    OpenAIAnalyzer,
    RetryPolicy,
    Turn,
    parse_transcript,
)
from salesai_cache._keys import transcript_hash
from salesai_cache._models import Lookup, StoredAnalysis
from salesai_cache._protocols import AnalysisStore
from salesai_cache._stores.async_postgres import AsyncPostgresStore
from salesai_cache._stores.async_supabase import AsyncSupabaseStore
from salesai_cache._stores.postgres import PostgresStore
from salesai_cache._stores.supabase import SupabaseStore

# Fixtures shared with test_cache_behaviour: the cache-level tests run for
# the sync and the async cache.
__all__ = ["backend", "loop", "user_id"]

SUPABASE_WARNINGS = [
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]
# Retries without waiting, so that the tests do not sleep.
NO_WAIT = RetryPolicy(attempts=3, initial_wait=0, max_wait=0, jitter=0)

API_KEY = "sk-test-faults-7c1d9e"


# The analyzer: retries of transient failures


def _skill() -> dict[str, Any]:
    return {"score": 7, "evidence": "Asked an open question early."}


ANALYSIS: dict[str, Any] = {
    "overall_score": 72,
    "skills": {
        name: _skill()
        for name in (
            "discovery",
            "rapport",
            "active_listening",
            "value_proposition",
            "objection_handling",
            "closing",
        )
    },
    "outcome": "advanced",
    "strengths": ["Opened with an open question."],
    "improvements": ["Quantify the value."],
    "next_steps": ["Send the invitation."],
    "summary": "A friendly call.",
}


def _completion(
    content: str | None = None,
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": json.dumps(ANALYSIS) if content is None else content,
                    "refusal": refusal,
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


OK = httpx2.Response(200, json=_completion())
Reply = httpx2.Response | Exception


class Script:
    """
    A mock OpenAI API that answers each request with the next scripted reply
    (or raises it), and the sleeps the analyzer asked for.
    """

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[httpx2.Request] = []
        self.waits: list[float] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def analyzer(self, *, max_retries: int = 0, **options: Any) -> OpenAIAnalyzer:
        client = openai.OpenAI(
            api_key=API_KEY,
            base_url="http://openai.test/v1",
            max_retries=max_retries,
            http_client=httpx2.Client(transport=httpx2.MockTransport(self)),
        )
        options.setdefault(
            "retry", RetryPolicy(initial_wait=1.0, max_wait=20.0, jitter=0)
        )
        return OpenAIAnalyzer(client, sleep=self.waits.append, **options)


TURNS = (Turn(speaker="Rep", text="Hello"), Turn(speaker="Buyer", text="Hi"))


def _error(status: int, code: str | None = None, **headers: str) -> httpx2.Response:
    body = {"error": {"message": "failed", "type": "error", "code": code}}
    return httpx2.Response(status, json=body, headers=headers)


def _raises(script: Script, **options: Any) -> AnalyzerError:
    with pytest.raises(AnalyzerError) as caught:
        script.analyzer(**options).analyze(TURNS)
    return caught.value


def test_retry_429_retry_after_ms_requests() -> None:
    script = Script(
        _error(429, "rate_limit_exceeded", **{"retry-after-ms": "1500"}), OK
    )
    script.analyzer().analyze(TURNS)
    assert len(script.requests) == 2


def test_retry_429_retry_after_ms_wait() -> None:
    script = Script(
        _error(429, "rate_limit_exceeded", **{"retry-after-ms": "1500"}), OK
    )
    script.analyzer().analyze(TURNS)
    assert script.waits == [1.5]


def test_retry_retry_after_seconds() -> None:
    script = Script(_error(503, **{"retry-after": "7"}), OK)
    script.analyzer().analyze(TURNS)
    assert script.waits == [7.0]


def test_retry_retry_after_capped() -> None:
    script = Script(_error(429, **{"retry-after": "600"}), OK)
    retry = RetryPolicy(retry_after_cap=30.0, deadline=1000.0, jitter=0)
    script.analyzer(retry=retry).analyze(TURNS)
    assert script.waits == [30.0]


def test_retry_500_500_200_requests() -> None:
    script = Script(_error(500), _error(500), OK)
    script.analyzer().analyze(TURNS)
    assert len(script.requests) == 3


def test_retry_500_500_200_backoff() -> None:
    script = Script(_error(500), _error(500), OK)
    script.analyzer().analyze(TURNS)
    assert script.waits == [1.0, 2.0]


def test_retry_backoff_jitter_bounded() -> None:
    script = Script(_error(502), OK)
    retry = RetryPolicy(initial_wait=1.0, jitter=0.5)
    script.analyzer(retry=retry).analyze(TURNS)
    assert 1.0 <= script.waits[0] <= 1.5


def test_retry_timeouts() -> None:
    script = Script(httpx2.ReadTimeout("slow"), httpx2.ReadTimeout("slow"), OK)
    script.analyzer().analyze(TURNS)
    assert len(script.requests) == 3


def test_retry_connection_error() -> None:
    script = Script(httpx2.ConnectError("refused"), OK)
    script.analyzer().analyze(TURNS)
    assert len(script.requests) == 2


def test_retry_gives_up_requests() -> None:
    script = Script(*[_error(503)] * 4)
    _raises(script)
    assert len(script.requests) == 4


def test_retry_gives_up_error() -> None:
    error = _raises(Script(*[_error(503)] * 4))
    assert error.status_code == 503
    assert error.retryable


def test_retry_deadline_stops_before_long_wait() -> None:
    script = Script(_error(429, **{"retry-after": "50"}), OK)
    _raises(script, retry=RetryPolicy(deadline=10.0))
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, None), (401, None), (403, None), (404, None), (429, "insufficient_quota")],
)
def test_permanent_not_retried(status: int, code: str | None) -> None:
    script = Script(_error(status, code), OK)
    _raises(script)
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, None), (401, None), (429, "insufficient_quota")],
)
def test_permanent_error_attributes(status: int, code: str | None) -> None:
    error = _raises(Script(_error(status, code)))
    assert error.status_code == status
    assert error.code == code
    assert not error.retryable


def test_permanent_error_cause() -> None:
    error = _raises(Script(_error(401)))
    assert isinstance(error.__cause__, openai.AuthenticationError)


def test_client_retries_turned_off() -> None:
    with pytest.warns(UserWarning, match="max_retries=0"):
        analyzer = Script().analyzer(max_retries=3)
    assert analyzer.client.max_retries == 0


def test_client_retries_do_not_multiply() -> None:
    script = Script(*[_error(500)] * 10)
    with pytest.warns(UserWarning):
        analyzer = script.analyzer(max_retries=3)
    with pytest.raises(AnalyzerError):
        analyzer.analyze(TURNS)
    assert len(script.requests) == 4


# The analyzer: unusable replies


def test_invalid_output_retried() -> None:
    script = Script(httpx2.Response(200, json=_completion('{"overall": 1}')), OK)
    script.analyzer().analyze(TURNS)
    assert len(script.requests) == 2


def test_invalid_output_raised_after_bound() -> None:
    bad = httpx2.Response(200, json=_completion('{"overall": 1}'))
    error = _raises(Script(bad, bad, bad), output_retries=1)
    assert error.invalid_output


def test_invalid_output_bounded_requests() -> None:
    bad = httpx2.Response(200, json=_completion('{"overall": 1}'))
    script = Script(bad, bad, bad, OK)
    _raises(script, output_retries=2)
    assert len(script.requests) == 3


def test_refusal_raised() -> None:
    refused = httpx2.Response(200, json=_completion("", refusal="I cannot help."))
    script = Script(refused, refused)
    _raises(script)
    assert len(script.requests) == 2


def test_length_cut_off_not_retried_without_output_retries() -> None:
    cut = httpx2.Response(200, json=_completion('{"overall', finish_reason="length"))
    script = Script(cut, OK)
    _raises(script, output_retries=0)
    assert len(script.requests) == 1


def test_output_retries_invalid() -> None:
    with pytest.raises(InvalidInputError, match="-1"):
        Script().analyzer(output_retries=-1)


# The analyzer: transcript size


def test_transcript_too_long_names_sizes() -> None:
    long_turns = (Turn(speaker="Rep", text="word " * 100),)
    with pytest.raises(InvalidInputError, match=r"50[0-9] characters.*=100"):
        Script().analyzer(max_transcript_tokens=100).analyze(long_turns)


def test_transcript_too_long_sends_nothing() -> None:
    script = Script(OK)
    long_turns = (Turn(speaker="Rep", text="word " * 100),)
    with pytest.raises(InvalidInputError):
        script.analyzer(max_transcript_tokens=100).analyze(long_turns)
    assert script.requests == []


# The stores and the cache: faults injected at the store interface


class FlakyStore:
    """
    A real store whose chosen methods fail with a transient CacheStoreError
    the next ``failures[method]`` times, and whose reads can be told to hide
    stored rows, as a policy without SELECT would.
    """

    def __init__(self, inner: AnalysisStore) -> None:
        self.inner = inner
        self.failures: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.hide = False

    def _enter(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            raise CacheStoreError(
                f"{name} failed (57P01)", code="57P01", retryable=True
            )

    def fetch(self, session_id: str) -> StoredAnalysis | None:
        self._enter("fetch")
        return None if self.hide else self.inner.fetch(session_id)

    def fetch_by_conversation(self, conversation_id: str) -> StoredAnalysis | None:
        self._enter("fetch_by_conversation")
        return self.inner.fetch_by_conversation(conversation_id)

    def fetch_transcript(self, session_id: str) -> Any:
        self._enter("fetch_transcript")
        return self.inner.fetch_transcript(session_id)

    def lookup(self, session_id: str, *args: Any, **kwargs: Any) -> Lookup:
        self._enter("lookup")
        found = self.inner.lookup(session_id, *args, **kwargs)
        if self.hide and not found.claimed:
            # What a role that cannot read the row gets: nothing, and a claim.
            found = self.inner.lookup(session_id, *args, **{**kwargs, "force": True})
        if self.hide:
            return Lookup(None, False, True, found.claim_expires_at)
        return found

    def save(self, session_id: str, *args: Any, **kwargs: Any) -> StoredAnalysis:
        self._enter("save")
        return self.inner.save(session_id, *args, **kwargs)

    def release(self, session_id: str, claimant: str) -> None:
        self._enter("release")
        self.inner.release(session_id, claimant)

    def invalidate(
        self, session_id: str | None = None, analysis_version: str | None = None
    ) -> int:
        self._enter("invalidate")
        return self.inner.invalidate(session_id, analysis_version)


class AsyncFlakyStore(FlakyStore):
    """
    FlakyStore over an AsyncAnalysisStore, for the async cache: the same
    failures, counts and hidden rows, awaited.
    """

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.inner_async = inner

    async def fetch(self, session_id: str) -> StoredAnalysis | None:  # type: ignore[override]
        self._enter("fetch")
        return None if self.hide else await self.inner_async.fetch(session_id)

    async def fetch_by_conversation(  # type: ignore[override]
        self, conversation_id: str
    ) -> StoredAnalysis | None:
        self._enter("fetch_by_conversation")
        return await self.inner_async.fetch_by_conversation(conversation_id)

    async def fetch_transcript(self, session_id: str) -> Any:
        self._enter("fetch_transcript")
        return await self.inner_async.fetch_transcript(session_id)

    async def lookup(self, session_id: str, *args: Any, **kwargs: Any) -> Lookup:  # type: ignore[override]
        self._enter("lookup")
        found = await self.inner_async.lookup(session_id, *args, **kwargs)
        if self.hide and not found.claimed:
            found = await self.inner_async.lookup(
                session_id, *args, **{**kwargs, "force": True}
            )
        if self.hide:
            return Lookup(None, False, True, found.claim_expires_at)
        return found

    async def save(self, session_id: str, *args: Any, **kwargs: Any) -> StoredAnalysis:  # type: ignore[override]
        self._enter("save")
        return await self.inner_async.save(session_id, *args, **kwargs)

    async def release(self, session_id: str, claimant: str) -> None:  # type: ignore[override]
        self._enter("release")
        await self.inner_async.release(session_id, claimant)

    async def invalidate(  # type: ignore[override]
        self, session_id: str | None = None, analysis_version: str | None = None
    ) -> int:
        self._enter("invalidate")
        return await self.inner_async.invalidate(session_id, analysis_version)


def _real_store(backend: Backend) -> Any:
    """
    Return the store of the backend's kind and cache flavour.
    """
    client = backend.connect()
    if backend.loop is not None:
        if backend.kind == "postgres":
            return AsyncPostgresStore(client)
        return AsyncSupabaseStore(client)
    if backend.kind == "postgres":
        return PostgresStore(client)
    return SupabaseStore(client)


@pytest.fixture
def flaky(backend: Backend) -> FlakyStore:
    store = _real_store(backend)
    return FlakyStore(store) if backend.loop is None else AsyncFlakyStore(store)


@pytest.fixture
def analyzer() -> CountingAnalyzer:
    return CountingAnalyzer()


@pytest.fixture
def cache(
    backend: Backend, flaky: FlakyStore, analyzer: CountingAnalyzer
) -> AnalysisCache[Verdict]:
    return backend.cache(flaky, analyzer, store_retry=NO_WAIT)  # type: ignore[return-value]


@pytest.fixture
def session_id(db: psycopg.Connection[Any], user_id: str) -> str:
    return add_session(db, user_id, conversation_id="call-faults-1")


def _stored_hash(db: psycopg.Connection[Any], session_id: str) -> str | None:
    row = db.execute(
        "select transcript_hash from public.salesai_analysis_results "
        "where session_id = %s",
        (session_id,),
    ).fetchone()
    return None if row is None else row[0]


def _claims(db: psycopg.Connection[Any], session_id: str) -> int:
    row = db.execute(
        "select count(*) from public.salesai_analysis_claims where session_id = %s",
        (session_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


# The loggers of AnalysisCache and AsyncAnalysisCache.
CACHE_LOGGERS = ("salesai_cache._cache", "salesai_cache._async_cache")

FINGERPRINT = transcript_hash(parse_transcript(TRANSCRIPT))


@pytest.mark.sql
@pytest.mark.parametrize("method", ["lookup", "save"])
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_store_transient_retried_status(
    cache: AnalysisCache[Verdict], flaky: FlakyStore, session_id: str, method: str
) -> None:
    flaky.failures[method] = 2
    assert cache.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.MISS


@pytest.mark.sql
@pytest.mark.parametrize("method", ["lookup", "save"])
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_store_transient_retried_stored(
    cache: AnalysisCache[Verdict],
    flaky: FlakyStore,
    db: psycopg.Connection[Any],
    session_id: str,
    method: str,
) -> None:
    flaky.failures[method] = 2
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert _stored_hash(db, session_id) == FINGERPRINT


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_store_transient_transcript_read(
    cache: AnalysisCache[Verdict], flaky: FlakyStore, session_id: str
) -> None:
    flaky.failures["fetch_transcript"] = 2
    assert cache.get_or_compute(session_id).status is CacheStatus.MISS


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_store_lookup_gives_up(
    cache: AnalysisCache[Verdict],
    flaky: FlakyStore,
    analyzer: CountingAnalyzer,
    session_id: str,
) -> None:
    flaky.failures["lookup"] = 3
    with pytest.raises(CacheStoreError):
        cache.get_or_compute(session_id, TRANSCRIPT)
    assert analyzer.calls == 0


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_store_invalidate_not_retried(
    cache: AnalysisCache[Verdict], flaky: FlakyStore, session_id: str
) -> None:
    flaky.failures["invalidate"] = 1
    with pytest.raises(CacheStoreError):
        cache.invalidate(session_id)
    assert flaky.calls["invalidate"] == 1


# A write that fails after a paid analysis


@pytest.fixture
def unwritten(
    cache: AnalysisCache[Verdict], flaky: FlakyStore, session_id: str
) -> CacheStatus:
    """
    Compute the analysis of the session while every save fails.
    """
    flaky.failures["save"] = 3
    return cache.get_or_compute(session_id, TRANSCRIPT).status


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_failed_write_still_served(unwritten: CacheStatus) -> None:
    assert unwritten is CacheStatus.MISS


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_failed_write_nothing_stored(
    unwritten: CacheStatus, db: psycopg.Connection[Any], session_id: str
) -> None:
    assert stored_rows(db, session_id) == 0


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_failed_write_claim_released(
    unwritten: CacheStatus, db: psycopg.Connection[Any], session_id: str
) -> None:
    assert _claims(db, session_id) == 0


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_failed_write_pending(
    unwritten: CacheStatus, cache: AnalysisCache[Verdict]
) -> None:
    assert cache.pending_writes == 1


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_failed_write_warning(
    cache: AnalysisCache[Verdict],
    flaky: FlakyStore,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky.failures["save"] = 3
    with caplog.at_level(logging.WARNING, logger="salesai_cache"):
        cache.get_or_compute(session_id, TRANSCRIPT)
    warnings = [r.getMessage() for r in caplog.records if r.name in CACHE_LOGGERS]
    assert any(session_id in message for message in warnings)


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_failed_write_warning_hides_transcript(
    cache: AnalysisCache[Verdict],
    flaky: FlakyStore,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky.failures["save"] = 3
    with caplog.at_level(logging.DEBUG):
        cache.get_or_compute(session_id, TRANSCRIPT)
    assert SECRET_PHRASE not in caplog.text


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_next_request_writes_pending(
    unwritten: CacheStatus,
    cache: AnalysisCache[Verdict],
    db: psycopg.Connection[Any],
    session_id: str,
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert _stored_hash(db, session_id) == FINGERPRINT


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_next_request_skips_analyzer(
    unwritten: CacheStatus,
    cache: AnalysisCache[Verdict],
    analyzer: CountingAnalyzer,
    session_id: str,
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert analyzer.calls == 1


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_next_request_clears_pending(
    unwritten: CacheStatus, cache: AnalysisCache[Verdict], session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    assert cache.pending_writes == 0


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_next_request_still_failing_served(
    unwritten: CacheStatus,
    cache: AnalysisCache[Verdict],
    flaky: FlakyStore,
    analyzer: CountingAnalyzer,
    session_id: str,
) -> None:
    flaky.failures["save"] = 3
    result = cache.get_or_compute(session_id, TRANSCRIPT)
    assert result.status is CacheStatus.HIT
    assert analyzer.calls == 1
    assert cache.pending_writes == 1


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_changed_transcript_drops_pending(
    unwritten: CacheStatus,
    cache: AnalysisCache[Verdict],
    flaky: FlakyStore,
    db: psycopg.Connection[Any],
    session_id: str,
) -> None:
    flaky.failures["save"] = 3
    changed = [*TRANSCRIPT, {"speaker": "Buyer", "text": "One more thing."}]
    cache.get_or_compute(session_id, changed)
    cache.flush_pending()
    assert _stored_hash(db, session_id) == transcript_hash(parse_transcript(changed))


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_flush_pending_count(
    unwritten: CacheStatus, cache: AnalysisCache[Verdict]
) -> None:
    assert cache.flush_pending() == 1


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_flush_pending_stores(
    unwritten: CacheStatus,
    cache: AnalysisCache[Verdict],
    db: psycopg.Connection[Any],
    session_id: str,
) -> None:
    cache.flush_pending()
    assert _stored_hash(db, session_id) == FINGERPRINT


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_flush_pending_failing_keeps(
    unwritten: CacheStatus, cache: AnalysisCache[Verdict], flaky: FlakyStore
) -> None:
    flaky.failures["save"] = 3
    assert cache.flush_pending() == 0
    assert cache.pending_writes == 1


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_close_writes_pending(
    unwritten: CacheStatus,
    cache: AnalysisCache[Verdict],
    db: psycopg.Connection[Any],
    session_id: str,
) -> None:
    cache.close()
    assert _stored_hash(db, session_id) == FINGERPRINT


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_close_warns_unwritten(
    unwritten: CacheStatus,
    cache: AnalysisCache[Verdict],
    flaky: FlakyStore,
    session_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky.failures["save"] = 3
    with caplog.at_level(logging.WARNING, logger="salesai_cache"):
        cache.close()
    closing = [r.getMessage() for r in caplog.records if "Closing" in r.getMessage()]
    assert len(closing) == 1
    assert session_id in closing[0]


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_pending_bounded(
    backend: Backend,
    flaky: FlakyStore,
    db: psycopg.Connection[Any],
    user_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = backend.cache(
        flaky, CountingAnalyzer(), store_retry=NO_WAIT, max_pending_writes=1
    )
    first, second = add_session(db, user_id), add_session(db, user_id)
    flaky.failures["save"] = 6
    with caplog.at_level(logging.ERROR, logger="salesai_cache"):
        cache.get_or_compute(first, TRANSCRIPT)
        cache.get_or_compute(second, TRANSCRIPT)
    assert cache.pending_writes == 1
    assert first in caplog.text


# Rows hidden from the role in use


@pytest.fixture
def hidden(
    cache: AnalysisCache[Verdict], flaky: FlakyStore, session_id: str
) -> FlakyStore:
    """
    Store the analysis, then hide stored rows from every read.
    """
    cache.get_or_compute(session_id, TRANSCRIPT)
    flaky.hide = True
    return flaky


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_hidden_rows_configuration_error(
    hidden: FlakyStore, cache: AnalysisCache[Verdict], session_id: str
) -> None:
    with pytest.raises(ConfigurationError, match=session_id):
        cache.get_or_compute(session_id, TRANSCRIPT)


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_hidden_rows_stop_paying(
    hidden: FlakyStore,
    cache: AnalysisCache[Verdict],
    analyzer: CountingAnalyzer,
    session_id: str,
) -> None:
    for _ in range(3):
        with pytest.raises(ConfigurationError):
            cache.get_or_compute(session_id, TRANSCRIPT)
    assert analyzer.calls == 2


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_deleted_elsewhere_recomputed(
    cache: AnalysisCache[Verdict], db: psycopg.Connection[Any], session_id: str
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    db.execute(
        "delete from public.salesai_analysis_results where session_id = %s",
        (session_id,),
    )
    assert cache.get_or_compute(session_id, TRANSCRIPT).status is CacheStatus.MISS


# Session ids in other forms and odd values


def _id_forms(session_id: str) -> list[object]:
    value = uuid.UUID(session_id)
    return [
        session_id.upper(),
        value,
        f"{{{session_id}}}",
        f"urn:uuid:{session_id}",
        value.hex,
    ]


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
@pytest.mark.parametrize("form", range(5))
def test_session_id_forms_hit(
    cache: AnalysisCache[Verdict], session_id: str, form: int
) -> None:
    cache.get_or_compute(session_id, TRANSCRIPT)
    other = _id_forms(session_id)[form]
    assert cache.get_or_compute(other, TRANSCRIPT).status is CacheStatus.HIT


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
@pytest.mark.parametrize("form", range(5))
def test_session_id_forms_one_row(
    cache: AnalysisCache[Verdict],
    db: psycopg.Connection[Any],
    session_id: str,
    form: int,
) -> None:
    cache.get_or_compute(_id_forms(session_id)[form], TRANSCRIPT)
    assert stored_rows(db, session_id) == 1


@pytest.mark.parametrize(
    "bad", ["", "not-a-uuid", "1234", "' or 1=1 --", 12, None, b"\x00"]
)
def test_session_id_invalid_named(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="invalid session id"):
        AnalysisCache(FlakyStore(_never()), CountingAnalyzer()).get(bad)


def _never() -> AnalysisStore:
    class Never:
        def __getattr__(self, name: str) -> Callable[..., Any]:
            raise AssertionError(f"the store was called: {name}")

    store: Any = Never()
    return store


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_nul_transcript_rejected(
    cache: AnalysisCache[Verdict], db: psycopg.Connection[Any], session_id: str
) -> None:
    with pytest.raises(InvalidInputError, match=r"turn 1.*NUL"):
        cache.get_or_compute(
            session_id,
            [{"speaker": "Rep", "text": "a"}, {"speaker": "B", "text": "\x00"}],
        )
    assert stored_rows(db, session_id) == 0


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_nul_conversation_id_rejected(cache: AnalysisCache[Verdict]) -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        cache.get_by_conversation("call\x00")


@pytest.mark.parametrize(
    ("transcript", "message"),
    [
        ("", "empty"),
        ([], "empty"),
        (b"\xff\xfe", "UTF-8"),
        ("Rep: caf\udce9", "UTF-8"),
        ({"speaker": "Rep"}, "unknown transcript format"),
        (42, "unknown transcript format"),
        ('{"speaker": "Rep", "text": "hi"}', "JSON object"),
    ],
)
def test_transcript_invalid_named(transcript: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_transcript(transcript)


def test_control_characters_kept() -> None:
    (turn,) = parse_transcript([{"speaker": "Rep", "text": "a\x07b\x1bc"}])
    assert turn.text == "a\x07b\x1bc"


# Supabase: HTTP-level faults on the real request path


@pytest.fixture
def emulated(database_url: str) -> Iterator[tuple[respx.Route, PostgrestEmulator]]:
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield emulator.install(router), emulator
    emulator.close()


def _failing_first(
    emulator: PostgrestEmulator, path: str, replies: list[httpx.Response | Exception]
) -> Callable[[httpx.Request], httpx.Response]:
    def side_effect(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(path) and replies:
            reply = replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        return emulator(request)

    return side_effect


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
@pytest.mark.parametrize(
    "fault",
    [
        httpx.Response(502, text="<html>Bad gateway</html>"),
        httpx.Response(503, json={"code": "PGRST003", "message": "Timed out"}),
        httpx.ConnectTimeout("slow"),
        httpx.ReadError("reset"),
    ],
    ids=["502-html", "PGRST003", "connect-timeout", "read-error"],
)
def test_supabase_save_fault_retried(
    emulated: tuple[respx.Route, PostgrestEmulator],
    db: psycopg.Connection[Any],
    user_id: str,
    fault: httpx.Response | Exception,
) -> None:
    route, emulator = emulated
    session = add_session(db, user_id)
    route.side_effect = _failing_first(
        emulator, "/rpc/salesai_save_analysis", [fault, fault]
    )
    cache = AnalysisCache(
        supabase.create_client(URL, SERVICE_ROLE_KEY),
        CountingAnalyzer(),
        store_retry=NO_WAIT,
    )
    cache.get_or_compute(session, TRANSCRIPT)
    assert _stored_hash(db, session) == FINGERPRINT


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_called=False) as router:
        yield router


SESSION = "0b5f6c1e-8d2a-4c2e-9a55-3f1f4f0c7a11"


def _supabase_fetch_error(
    api: respx.MockRouter, status: int, body: dict[str, Any]
) -> CacheStoreError:
    route = api.get("/salesai_analysis_results").mock(
        return_value=httpx.Response(status, json=body)
    )
    store = SupabaseStore(supabase.create_client(URL, SERVICE_ROLE_KEY))
    with pytest.raises(CacheStoreError) as caught:
        AnalysisCache(store, CountingAnalyzer(), store_retry=NO_WAIT).get(SESSION)
    caught.value.calls = route.call_count  # type: ignore[attr-defined]
    return caught.value


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"code": "PGRST301", "message": "JWT expired"}),
        (403, {"code": "42501", "message": "permission denied"}),
        (400, {"code": "PGRST204", "message": "column not found"}),
        (404, {"code": "PGRST205", "message": "table not found"}),
    ],
)
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_supabase_permanent_not_retried(
    api: respx.MockRouter, status: int, body: dict[str, Any]
) -> None:
    error = _supabase_fetch_error(api, status, body)
    assert not error.retryable
    assert error.calls == 1  # type: ignore[attr-defined]


@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_supabase_rls_names_role(api: respx.MockRouter) -> None:
    error = _supabase_fetch_error(api, 403, {"code": "42501", "message": "denied"})
    assert "as role service_role" in str(error)


@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_supabase_rls_hides_key(api: respx.MockRouter) -> None:
    error = _supabase_fetch_error(api, 403, {"code": "42501", "message": "denied"})
    assert SERVICE_ROLE_KEY not in str(error)


@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_supabase_stale_schema_cache_hint(api: respx.MockRouter) -> None:
    error = _supabase_fetch_error(api, 400, {"code": "PGRST204", "message": "x"})
    assert "notify pgrst, 'reload schema'" in str(error)


@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_supabase_auth_failure(api: respx.MockRouter) -> None:
    error = _supabase_fetch_error(api, 401, {"code": "PGRST301", "message": "x"})
    assert "API key or user JWT was rejected" in str(error)


@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_supabase_5xx_retried(api: respx.MockRouter) -> None:
    error = _supabase_fetch_error(api, 500, {"code": "57P01", "message": "restart"})
    assert error.retryable
    assert error.calls == 3  # type: ignore[attr-defined]


# PostgreSQL: permission errors name the role


@pytest.mark.sql
def test_postgres_rls_names_role(database_url: str, session_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("set role anon")
        cache = AnalysisCache(conn, CountingAnalyzer(), store_retry=NO_WAIT)
        with pytest.raises(CacheStoreError, match="as role anon"):
            cache.get_or_compute(session_id, TRANSCRIPT)


@pytest.mark.sql
def test_postgres_closed_connection_not_retried(database_url: str) -> None:
    conn = psycopg.connect(database_url, autocommit=True)
    conn.close()
    with pytest.raises(CacheStoreError) as caught:
        AnalysisCache(conn, CountingAnalyzer()).get(SESSION)
    assert caught.value.retryable is False


# Logs: no keys, no JWTs, no transcript text, through failures and retries


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_logs_hold_no_secrets(
    emulated: tuple[respx.Route, PostgrestEmulator],
    db: psycopg.Connection[Any],
    user_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    route, emulator = emulated
    session = add_session(db, user_id)
    route.side_effect = _failing_first(
        emulator,
        "/rpc/salesai_save_analysis",
        [httpx.Response(503, json={"code": "PGRST001", "message": "down"})] * 4,
    )
    script = Script(
        _error(429, "rate_limit_exceeded", **{"retry-after-ms": "10"}),
        httpx2.ReadTimeout("slow"),
        httpx2.Response(200, json=_completion('{"overall": 1}')),
        OK,
    )
    cache = AnalysisCache(
        supabase.create_client(URL, SERVICE_ROLE_KEY),
        script.analyzer(),
        store_retry=NO_WAIT,
    )
    with caplog.at_level(logging.DEBUG):
        cache.get_or_compute(session, TRANSCRIPT)
        cache.get_or_compute(session, TRANSCRIPT)
    text = caplog.text
    assert API_KEY not in text
    assert SERVICE_ROLE_KEY not in text
    assert SECRET_PHRASE not in text


# Properties


ids = st.uuids().map(str)
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
turn_dicts = st.lists(
    st.fixed_dictionaries({"speaker": texts, "text": texts}), max_size=4
)


@given(st.one_of(texts, st.binary(max_size=40), turn_dicts, st.integers()))
def test_parse_transcript_raises_only_invalid_input(value: Any) -> None:
    with contextlib.suppress(InvalidInputError):
        parse_transcript(value)


@given(st.lists(st.tuples(texts.filter(str.strip), texts), min_size=1, max_size=4))
def test_hash_ignores_key_order_and_whitespace(pairs: list[tuple[str, str]]) -> None:
    pairs = [(speaker, text) for speaker, text in pairs if "\x00" not in speaker + text]
    if not pairs:
        return
    plain = [{"speaker": s, "text": t} for s, t in pairs]
    reordered = [{"text": f"  {t}\n", "speaker": f" {s} "} for s, t in pairs]
    assert transcript_hash(parse_transcript(plain)) == transcript_hash(
        parse_transcript(reordered)
    )


@pytest.mark.sql
@SUPABASE_WARNINGS[0]
@SUPABASE_WARNINGS[1]
def test_any_text_round_trips(
    backend: Backend, db: psycopg.Connection[Any], user_id: str
) -> None:
    store = _real_store(backend)

    class Echo(CountingAnalyzer):
        def analyze(self, transcript: Sequence[Turn]) -> Any:
            output = super().analyze(transcript)
            speaker = transcript[-1].text
            return type(output)(
                analysis=Verdict(turns=len(transcript), first_speaker=speaker),
                model=output.model,
                usage=output.usage,
            )

    @given(texts.filter(lambda text: "\x00" not in text and text.strip()), ids)
    def round_trip(text: str, conversation: str) -> None:
        session = add_session(db, user_id, conversation_id=conversation + text)
        cache = backend.cache(store, Echo(), store_retry=NO_WAIT)
        cache.get_or_compute(session, [{"speaker": "Rep", "text": text}])
        found = cache.get_by_conversation(conversation + text)
        assert found is not None and found.analysis.first_speaker == text.strip()

    round_trip()
