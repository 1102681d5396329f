"""
OpenAIAnalyzer against a mock OpenAI API served by an httpx2 MockTransport.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pydantic
import pytest

from salesai_cache import (
    AnalyzerError,
    InvalidInputError,
    OpenAIAnalyzer,
    SalesCallAnalysis,
    TokenUsage,
    Turn,
)
from salesai_cache._analyzers.prompt import SYSTEM_PROMPT

API_KEY = "sk-test-4f9c2b7e1d"
SECRET_TEXT = "our budget is exactly 48213 dollars"
TRANSCRIPT = (
    Turn(speaker="Salesperson", text="Hi Dana, what made you take this call?"),
    Turn(speaker="Customer", text=f"Honestly, {SECRET_TEXT}."),
    Turn(speaker="Salesperson", text="Could we book a demo on Friday?\nSay 10am?"),
)
RENDERED = (
    "Salesperson: Hi Dana, what made you take this call?\n"
    f"Customer: Honestly, {SECRET_TEXT}.\n"
    "Salesperson: Could we book a demo on Friday?\n"
    "  Say 10am?"
)
REPORTED_MODEL = "gpt-4o-mini-2024-07-18"

Handler = Callable[[httpx2.Request], httpx2.Response]


def _skill(score: int) -> dict[str, Any]:
    return {"score": score, "evidence": "Asked an open question early."}


def _analysis(**changes: Any) -> dict[str, Any]:
    analysis: dict[str, Any] = {
        "overall_score": 72,
        "skills": {
            name: _skill(7)
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
        "improvements": ["Quantify the value before asking for the demo."],
        "next_steps": ["Send the demo invitation for Friday 10am."],
        "summary": "A friendly call that ended with a demo booked.",
    }
    analysis.update(changes)
    return analysis


def _completion(
    content: str | None,
    *,
    refusal: str | None = None,
    finish_reason: str = "stop",
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": REPORTED_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": refusal,
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 812, "completion_tokens": 245, "total_tokens": 1057},
    }


def _reply(body: dict[str, Any], status: int = 200) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=body)

    return handler


def _analyzer(handler: Handler, **options: Any) -> OpenAIAnalyzer:
    client = openai.OpenAI(
        api_key=API_KEY,
        base_url="http://openai.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    # Transient failures are retried; the tests do not wait for the backoff.
    options.setdefault("sleep", lambda seconds: None)
    return OpenAIAnalyzer(client, **options)


def _error(handler: Handler) -> AnalyzerError:
    with pytest.raises(AnalyzerError) as caught:
        _analyzer(handler).analyze(TRANSCRIPT)
    return caught.value


@pytest.fixture
def requests() -> list[httpx2.Request]:
    return []


@pytest.fixture
def recorded(requests: list[httpx2.Request]) -> Handler:
    """
    A handler that records each request and replies with a valid analysis.
    """

    def handler(request: httpx2.Request) -> httpx2.Response:
        requests.append(request)
        return httpx2.Response(200, json=_completion(json.dumps(_analysis())))

    return handler


def _sent(requests: list[httpx2.Request]) -> dict[str, Any]:
    (request,) = requests
    body: dict[str, Any] = json.loads(request.content)
    return body


def test_openai_request_path(recorded: Handler, requests: list[httpx2.Request]) -> None:
    _analyzer(recorded).analyze(TRANSCRIPT)
    (request,) = requests
    assert (request.method, request.url.path) == ("POST", "/v1/chat/completions")


def test_openai_request_authorization(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded).analyze(TRANSCRIPT)
    assert requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_openai_request_model(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded, model="gpt-4.1-mini").analyze(TRANSCRIPT)
    assert _sent(requests)["model"] == "gpt-4.1-mini"


def test_openai_request_messages(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded).analyze(TRANSCRIPT)
    assert _sent(requests)["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": RENDERED},
    ]


def test_openai_request_custom_prompt(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded, system_prompt="Be brief.").analyze(TRANSCRIPT)
    assert _sent(requests)["messages"][0] == {"role": "system", "content": "Be brief."}


def test_openai_request_response_format(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded).analyze(TRANSCRIPT)
    response_format = _sent(requests)["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "SalesCallAnalysis"
    assert response_format["json_schema"]["strict"] is True


def test_openai_request_schema_is_strict(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded).analyze(TRANSCRIPT)
    schema = _sent(requests)["response_format"]["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == list(schema["properties"])


def test_openai_request_schema_has_no_bounds(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded).analyze(TRANSCRIPT)
    schema = json.dumps(_sent(requests)["response_format"])
    assert '"minimum"' not in schema
    assert '"maximum"' not in schema


def test_openai_request_sampling_options(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded, temperature=0.0, max_completion_tokens=900).analyze(TRANSCRIPT)
    body = _sent(requests)
    assert body["temperature"] == 0.0
    assert body["max_completion_tokens"] == 900


def test_openai_request_omits_unset_options(
    recorded: Handler, requests: list[httpx2.Request]
) -> None:
    _analyzer(recorded, temperature=None, max_completion_tokens=None).analyze(
        TRANSCRIPT
    )
    body = _sent(requests)
    assert "temperature" not in body
    assert "max_completion_tokens" not in body


def test_openai_success_analysis(recorded: Handler) -> None:
    output = _analyzer(recorded).analyze(TRANSCRIPT)
    assert output.analysis == SalesCallAnalysis.model_validate(_analysis())


def test_openai_success_reported_model(recorded: Handler) -> None:
    output = _analyzer(recorded).analyze(TRANSCRIPT)
    assert output.model == REPORTED_MODEL


def test_openai_success_usage(recorded: Handler) -> None:
    output = _analyzer(recorded).analyze(TRANSCRIPT)
    assert output.usage == TokenUsage(
        prompt_tokens=812, completion_tokens=245, total_tokens=1057
    )


def test_openai_success_without_usage() -> None:
    body = _completion(json.dumps(_analysis()))
    del body["usage"]
    output = _analyzer(_reply(body)).analyze(TRANSCRIPT)
    assert output.usage == TokenUsage()


def test_openai_success_without_model() -> None:
    body = _completion(json.dumps(_analysis()))
    del body["model"]
    output = _analyzer(_reply(body)).analyze(TRANSCRIPT)
    assert output.model == "gpt-4o-mini"


def test_openai_no_choices() -> None:
    error = _error(_reply({**_completion(None), "choices": []}))
    assert "no choices" in str(error)


def test_openai_reply_not_a_completion() -> None:
    error = _error(lambda request: httpx2.Response(200, text="<html>proxy</html>"))
    assert "not a chat completion" in str(error)


def test_openai_properties(recorded: Handler) -> None:
    analyzer = _analyzer(recorded, model="gpt-4.1")
    assert analyzer.model == "gpt-4.1"
    assert analyzer.output_model is SalesCallAnalysis


def test_openai_empty_transcript(recorded: Handler) -> None:
    with pytest.raises(InvalidInputError):
        _analyzer(recorded).analyze([])


def test_openai_refusal() -> None:
    error = _error(_reply(_completion(None, refusal="I can't help with that.")))
    assert "refused" in str(error)


def test_openai_refusal_text_not_in_message() -> None:
    error = _error(_reply(_completion(None, refusal="I can't help with that.")))
    assert "help with that" not in str(error)


def test_openai_missing_content() -> None:
    error = _error(_reply(_completion(None)))
    assert "no analysis" in str(error)


def test_openai_length_limit() -> None:
    truncated = json.dumps(_analysis())[:40]
    error = _error(_reply(_completion(truncated, finish_reason="length")))
    assert isinstance(error.__cause__, openai.LengthFinishReasonError)
    assert "length limit" in str(error)


def test_openai_content_filter() -> None:
    error = _error(_reply(_completion(None, finish_reason="content_filter")))
    assert isinstance(error.__cause__, openai.ContentFilterFinishReasonError)


def test_openai_invalid_json() -> None:
    error = _error(_reply(_completion('{"overall_score": 72, "skills": ')))
    assert isinstance(error.__cause__, pydantic.ValidationError)
    assert "does not validate" in str(error)


def test_openai_score_out_of_range() -> None:
    error = _error(_reply(_completion(json.dumps(_analysis(overall_score=150)))))
    assert isinstance(error.__cause__, pydantic.ValidationError)
    assert "overall_score" in str(error)


def test_openai_skill_out_of_range() -> None:
    analysis = _analysis()
    analysis["skills"]["closing"] = _skill(11)
    error = _error(_reply(_completion(json.dumps(analysis))))
    assert "skills.closing.score" in str(error)


def test_openai_invalid_output_not_in_message() -> None:
    content = json.dumps(_analysis(summary=SECRET_TEXT, outcome="maybe"))
    error = _error(_reply(_completion(content)))
    assert SECRET_TEXT not in str(error)
    assert "maybe" not in str(error)


def test_openai_quota_exceeded() -> None:
    body = {
        "error": {
            "message": "You exceeded your current quota.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    error = _error(_reply(body, status=429))
    assert isinstance(error.__cause__, openai.RateLimitError)
    assert str(error) == (
        "OpenAI request for model 'gpt-4o-mini' failed with HTTP 429 "
        "(insufficient_quota): You exceeded your current quota."
    )


def test_openai_quota_exceeded_keeps_code() -> None:
    body = {"error": {"message": "Quota.", "type": "x", "code": "insufficient_quota"}}
    error = _error(_reply(body, status=429))
    assert isinstance(error.__cause__, openai.APIStatusError)
    assert error.__cause__.status_code == 429
    assert error.__cause__.code == "insufficient_quota"


def test_openai_server_error() -> None:
    body = {"error": {"message": "The server had an error.", "type": "server_error"}}
    error = _error(_reply(body, status=500))
    assert isinstance(error.__cause__, openai.InternalServerError)
    assert "HTTP 500" in str(error)


def test_openai_server_error_without_json() -> None:
    error = _error(lambda request: httpx2.Response(502, text="Bad Gateway"))
    assert str(error) == "OpenAI request for model 'gpt-4o-mini' failed with HTTP 502"


def test_openai_unauthorized() -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-tes*******2b7e.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    error = _error(_reply(body, status=401))
    assert isinstance(error.__cause__, openai.AuthenticationError)
    assert "HTTP 401 (invalid_api_key)" in str(error)


def test_openai_connection_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    error = _error(handler)
    assert isinstance(error.__cause__, openai.APIConnectionError)
    assert "ConnectError: connection refused" in str(error)


def test_openai_timeout() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("read timed out", request=request)

    error = _error(handler)
    assert isinstance(error.__cause__, openai.APITimeoutError)


def test_openai_client_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    analyzer = OpenAIAnalyzer()
    assert analyzer.client.api_key == API_KEY


def test_openai_client_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(AnalyzerError, match="OPENAI_API_KEY") as caught:
        OpenAIAnalyzer()
    assert isinstance(caught.value.__cause__, openai.OpenAIError)


def test_openai_logs_no_secrets(
    recorded: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _analyzer(recorded).analyze(TRANSCRIPT)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET_TEXT not in logged
    assert API_KEY not in logged
    assert SYSTEM_PROMPT[:40] not in logged


def test_openai_logs_model_and_tokens(
    recorded: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="salesai_cache")
    _analyzer(recorded).analyze(TRANSCRIPT)
    assert (
        f"OpenAI model {REPORTED_MODEL} used 812 prompt and 245 completion tokens"
        in caplog.messages
    )


def test_openai_failure_logs_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"error": {"message": "Quota.", "code": "insufficient_quota"}}
    _error(_reply(body, status=429))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET_TEXT not in logged
    assert API_KEY not in logged
