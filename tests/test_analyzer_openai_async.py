"""
AsyncOpenAIAnalyzer against a mock OpenAI API served by an httpx2
MockTransport; it shares its request and errors with OpenAIAnalyzer, whose
tests cover them in detail.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import openai
import pytest
from test_analyzer_openai import (
    API_KEY,
    REPORTED_MODEL,
    TRANSCRIPT,
    Handler,
    _analysis,
    _completion,
)

from salesai_cache import (
    AnalyzerError,
    AnalyzerOutput,
    AsyncOpenAIAnalyzer,
    InvalidInputError,
    OpenAIAnalyzer,
    RetryPolicy,
    SalesCallAnalysis,
)


async def _no_wait(seconds: float) -> None:
    return None


def _analyzer(handler: Any, **options: Any) -> AsyncOpenAIAnalyzer:
    client = openai.AsyncOpenAI(
        api_key=API_KEY,
        base_url="http://openai.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    options.setdefault("sleep", _no_wait)
    return AsyncOpenAIAnalyzer(client, **options)


def _replies(requests: list[httpx2.Request], *replies: httpx2.Response) -> Handler:
    """
    Answer each request with the next reply; the last one repeats.
    """

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        return replies[min(len(requests), len(replies)) - 1]

    return handler


def _ok_reply() -> httpx2.Response:
    return httpx2.Response(200, json=_completion(json.dumps(_analysis())))


def _unavailable(headers: dict[str, str] | None = None) -> httpx2.Response:
    body = {"error": {"message": "overloaded", "type": "server_error"}}
    return httpx2.Response(503, json=body, headers=headers)


def _ok(requests: list[httpx2.Request]) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        return httpx2.Response(200, json=_completion(json.dumps(_analysis())))

    return handler


def _analyze(analyzer: AsyncOpenAIAnalyzer) -> AnalyzerOutput[SalesCallAnalysis]:
    return asyncio.run(analyzer.analyze(TRANSCRIPT))


def test_async_openai_analysis() -> None:
    output = _analyze(_analyzer(_ok([])))
    assert output.analysis == SalesCallAnalysis.model_validate(_analysis())


def test_async_openai_reported_model() -> None:
    assert _analyze(_analyzer(_ok([]))).model == REPORTED_MODEL


def test_async_openai_same_request() -> None:
    sent: list[httpx2.Request] = []
    _analyze(_analyzer(_ok(sent)))
    sync_sent: list[httpx2.Request] = []
    client = openai.OpenAI(
        api_key=API_KEY,
        base_url="http://openai.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(_ok(sync_sent))),
    )
    OpenAIAnalyzer(client).analyze(TRANSCRIPT)
    assert json.loads(sent[0].content) == json.loads(sync_sent[0].content)


def test_async_openai_same_version() -> None:
    sync = OpenAIAnalyzer(openai.OpenAI(api_key=API_KEY, max_retries=0), model="gpt-4o")
    asynchronous = AsyncOpenAIAnalyzer(
        openai.AsyncOpenAI(api_key=API_KEY, max_retries=0), model="gpt-4o"
    )
    assert asynchronous.analysis_version == sync.analysis_version


def test_async_openai_http_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            500, json={"error": {"message": "boom", "type": "server_error"}}
        )

    with pytest.raises(AnalyzerError, match="HTTP 500"):
        _analyze(_analyzer(handler))


def test_async_openai_error_cause() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(429, json={"error": {"message": "slow down"}})

    with pytest.raises(AnalyzerError) as caught:
        _analyze(_analyzer(handler))
    assert isinstance(caught.value.__cause__, openai.RateLimitError)


def test_async_openai_empty_transcript() -> None:
    with pytest.raises(InvalidInputError):
        asyncio.run(_analyzer(_ok([])).analyze(()))


def test_async_openai_key_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        _analyze(_analyzer(_ok([])))
    assert API_KEY not in caplog.text


# Retries, shared with OpenAIAnalyzer through the base class and _retry


def test_async_openai_retries_transient() -> None:
    sent: list[httpx2.Request] = []
    _analyze(_analyzer(_replies(sent, _unavailable(), _unavailable(), _ok_reply())))
    assert len(sent) == 3


def test_async_openai_waits_retry_after() -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    handler = _replies([], _unavailable({"retry-after": "7"}), _ok_reply())
    _analyze(_analyzer(handler, sleep=record))
    assert waits == [7.0]


def test_async_openai_permanent_not_retried() -> None:
    sent: list[httpx2.Request] = []
    bad = httpx2.Response(400, json={"error": {"message": "bad", "type": "invalid"}})
    with pytest.raises(AnalyzerError):
        _analyze(_analyzer(_replies(sent, bad)))
    assert len(sent) == 1


def test_async_openai_error_fields() -> None:
    with pytest.raises(AnalyzerError) as raised:
        _analyze(_analyzer(_replies([], _unavailable()), retry=RetryPolicy(1)))
    assert (raised.value.status_code, raised.value.retryable) == (503, True)


def test_async_openai_refusal_requested_again() -> None:
    sent: list[httpx2.Request] = []
    refused = httpx2.Response(200, json=_completion(None, refusal="no"))
    _analyze(_analyzer(_replies(sent, refused, _ok_reply())))
    assert len(sent) == 2


def test_async_openai_transcript_too_long() -> None:
    sent: list[httpx2.Request] = []
    with pytest.raises(InvalidInputError, match="max_transcript_tokens=1"):
        _analyze(_analyzer(_ok(sent), max_transcript_tokens=1))
    assert sent == []


def test_async_openai_sdk_retries_off() -> None:
    client = openai.AsyncOpenAI(api_key=API_KEY, max_retries=2)
    with pytest.warns(UserWarning, match="max_retries=0"):
        analyzer = AsyncOpenAIAnalyzer(client)
    assert analyzer.client.max_retries == 0


def test_async_openai_cancel_stops_retries() -> None:
    sent: list[httpx2.Request] = []
    # A long backoff: the cancellation arrives while the analyzer waits.
    policy = RetryPolicy(initial_wait=30.0, jitter=0.0)

    async def scenario() -> None:
        analyzer = _analyzer(
            _replies(sent, _unavailable()), retry=policy, sleep=asyncio.sleep
        )
        task = asyncio.create_task(analyzer.analyze(TRANSCRIPT))
        while not sent:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert len(sent) == 1
