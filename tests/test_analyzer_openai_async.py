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
    SalesCallAnalysis,
)


def _analyzer(handler: Any, **options: Any) -> AsyncOpenAIAnalyzer:
    client = openai.AsyncOpenAI(
        api_key=API_KEY,
        base_url="http://openai.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    return AsyncOpenAIAnalyzer(client, **options)


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
    sync = OpenAIAnalyzer(
        openai.OpenAI(api_key=API_KEY, max_retries=0), model="gpt-4o"
    )
    asynchronous = AsyncOpenAIAnalyzer(
        openai.AsyncOpenAI(api_key=API_KEY), model="gpt-4o"
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
