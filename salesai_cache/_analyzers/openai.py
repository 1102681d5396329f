"""
OpenAIAnalyzer and AsyncOpenAIAnalyzer: a sales-call analysis from an OpenAI
model, as structured output.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import openai
import tenacity
from openai.types.chat import ChatCompletionMessageParam, ParsedChatCompletion
from pydantic import ValidationError

from .._keys import analysis_version
from .._models import AnalyzerOutput, TokenUsage, Turn
from .._retry import ANALYZER_RETRY, RetryPolicy, is_transient, is_transient_status
from ..exceptions import AnalyzerError, InvalidInputError
from .prompt import SYSTEM_PROMPT, render_transcript
from .schemas import SalesCallAnalysis

__all__ = ["CHARS_PER_TOKEN", "DEFAULT_MODEL", "AsyncOpenAIAnalyzer", "OpenAIAnalyzer"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"

# Validation errors quoted in an AnalyzerError message; the rest are counted.
_MAX_QUOTED_ERRORS = 3

# The size check estimates tokens as characters / 4, a common estimate for
# English text that needs no tokenizer. It errs either way for other
# languages, so the default limit keeps a margin below the context window.
CHARS_PER_TOKEN = 4

_ClientT = TypeVar("_ClientT", openai.OpenAI, openai.AsyncOpenAI)

# Exceptions of the client's parse call for a failed request or a bad reply.
_REQUEST_ERRORS = (
    openai.OpenAIError,
    ValidationError,
    AttributeError,
    TypeError,
    KeyError,
)


class _OpenAIAnalyzerBase(Generic[_ClientT]):
    """
    The parts of the sync and async analyzers that do no I/O: the checks of
    the arguments and the transcript, the request, the analysis version, the
    retry settings, the reply's checks and the error messages.
    """

    _client: _ClientT

    def __init__(
        self,
        client: _ClientT,
        *,
        model: str,
        system_prompt: str | None,
        temperature: float | None,
        max_completion_tokens: int | None,
        max_transcript_tokens: int | None,
        retry: RetryPolicy,
        output_retries: int,
    ) -> None:
        self._client = client
        self._retry = retry
        self._output_retries = output_retries
        self._max_transcript_tokens = max_transcript_tokens
        self._model = model
        self._system_prompt = SYSTEM_PROMPT if system_prompt is None else system_prompt
        self._temperature = temperature
        self._max_completion_tokens = max_completion_tokens
        self._analysis_version = analysis_version(
            model,
            self._system_prompt,
            SalesCallAnalysis,
            {"temperature": temperature},
        )

    @property
    def output_model(self) -> type[SalesCallAnalysis]:
        """
        ``SalesCallAnalysis``.
        """
        return SalesCallAnalysis

    @property
    def model(self) -> str:
        """
        The model name sent in requests, such as ``gpt-4o-mini``.

        ``AnalyzerOutput.model`` is instead the model the API reports, often a
        dated snapshot such as ``gpt-4o-mini-2024-07-18``.
        """
        return self._model

    @property
    def analysis_version(self) -> str:
        """
        The requested model with a digest of the system prompt, the
        temperature and the ``SalesCallAnalysis`` schema. Changing any of
        them makes analyses stored before the change stale.
        """
        return self._analysis_version

    @property
    def client(self) -> _ClientT:
        """
        The OpenAI client that requests are sent with.
        """
        return self._client

    @property
    def system_prompt(self) -> str:
        """
        The instructions sent before each transcript.
        """
        return self._system_prompt

    def _messages(self, transcript: Sequence[Turn]) -> list[ChatCompletionMessageParam]:
        """
        Return the messages of the request for a transcript.

        Raises:
            InvalidInputError: the transcript has no turns, or its estimated
                size exceeds ``max_transcript_tokens``.
        """
        if not transcript:
            raise InvalidInputError("transcript is empty: expected at least one turn")
        rendered = render_transcript(transcript)
        limit = self._max_transcript_tokens
        if limit is not None and len(rendered) > limit * CHARS_PER_TOKEN:
            raise InvalidInputError(
                f"transcript too long: {len(rendered)} characters, about "
                f"{len(rendered) // CHARS_PER_TOKEN} tokens (estimated at "
                f"{CHARS_PER_TOKEN} characters a token), exceeds "
                f"max_transcript_tokens={limit}"
            )
        return [
            {"role": "system", "content": self._system_prompt},
            {"role": "user", "content": rendered},
        ]

    def _arguments(self, messages: list[ChatCompletionMessageParam]) -> dict[str, Any]:
        """
        Return the arguments of ``chat.completions.parse``.
        """
        logger.debug(
            "Requesting a sales-call analysis from OpenAI model %s", self._model
        )
        return {
            "model": self._model,
            "messages": messages,
            "response_format": SalesCallAnalysis,
            "temperature": openai.omit
            if self._temperature is None
            else self._temperature,
            "max_completion_tokens": openai.omit
            if self._max_completion_tokens is None
            else self._max_completion_tokens,
        }

    def _output_retry_kwargs(self) -> dict[str, Any]:
        """
        Return the tenacity arguments of the loop that requests a new reply
        after an unusable one, without waiting.
        """
        return {
            "stop": tenacity.stop_after_attempt(self._output_retries + 1),
            "retry": tenacity.retry_if_exception(_invalid_output),
            "before_sleep": _log_invalid_output(self._model),
            "reraise": True,
        }

    def _request_retry_kwargs(self) -> dict[str, Any]:
        """
        Return the tenacity arguments of the loop that retries transient
        failures of one request.
        """
        return self._retry.tenacity_kwargs(
            is_transient, name=f"OpenAI request for model {self._model!r}"
        )

    def _request_error(self, error: Exception) -> AnalyzerError:
        """
        Return the ``AnalyzerError`` for an exception of the parse call; the
        caller raises it ``from`` the exception.
        """
        model = self._model
        if isinstance(error, openai.APIStatusError):
            code = error.code if isinstance(error.code, str) else None
            return AnalyzerError(
                f"OpenAI request for model {model!r} failed with HTTP "
                f"{error.status_code}{_describe_api_error(error)}",
                status_code=error.status_code,
                code=code,
                retryable=is_transient_status(error.status_code, code),
            )
        if isinstance(error, openai.APITimeoutError):
            return AnalyzerError(
                f"OpenAI request for model {model!r} timed out", retryable=True
            )
        if isinstance(error, openai.APIConnectionError):
            reason = error.__cause__ or error
            return AnalyzerError(
                f"OpenAI request for model {model!r} could not reach "
                f"{self._client.base_url}: {type(reason).__name__}: {reason}",
                retryable=True,
            )
        if isinstance(error, openai.LengthFinishReasonError):
            limit = self._max_completion_tokens
            return AnalyzerError(
                f"OpenAI model {model!r} stopped at the length limit "
                f"(max_completion_tokens={limit}) before finishing the analysis; "
                "raise max_completion_tokens or shorten the transcript",
                invalid_output=True,
            )
        if isinstance(error, openai.ContentFilterFinishReasonError):
            return AnalyzerError(
                f"OpenAI model {model!r} stopped its reply because the content "
                "filter flagged the conversation or the analysis",
                invalid_output=True,
            )
        if isinstance(error, ValidationError):
            return AnalyzerError(
                f"OpenAI model {model!r} returned an analysis that does not "
                f"validate against SalesCallAnalysis: {_describe_invalid(error)}",
                invalid_output=True,
            )
        if isinstance(error, openai.OpenAIError):
            return AnalyzerError(
                f"OpenAI request for model {model!r} failed: "
                f"{type(error).__name__}: {error}"
            )
        # openai builds the response without validating it, so a reply that
        # is not a chat completion (a proxy's HTML page, a wrong base_url)
        # fails inside its parsing helper with AttributeError, TypeError or
        # KeyError.
        return AnalyzerError(
            f"the reply from {self._client.base_url} to a request for model "
            f"{model!r} is not a chat completion; check the client's base_url"
        )

    def _output(
        self, completion: ParsedChatCompletion[SalesCallAnalysis]
    ) -> AnalyzerOutput[SalesCallAnalysis]:
        # openai does not validate replies, so an OpenAI-compatible server
        # that omits the model would otherwise store None as the model.
        reported = completion.model
        model = reported if isinstance(reported, str) and reported else self._model
        usage = _usage(completion)
        logger.debug(
            "OpenAI model %s used %d prompt and %d completion tokens",
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        if not completion.choices:
            raise AnalyzerError(
                f"OpenAI model {model!r} returned no choices", invalid_output=True
            )
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            # The refusal text is model output and may quote the conversation,
            # so it stays out of the message, which applications log.
            raise AnalyzerError(
                f"OpenAI model {model!r} refused to analyse the conversation "
                f"(a refusal of {len(message.refusal)} characters)",
                invalid_output=True,
            )
        if message.parsed is None:
            raise AnalyzerError(
                f"OpenAI model {model!r} returned no analysis "
                f"(finish_reason={choice.finish_reason!r})",
                invalid_output=True,
            )
        return AnalyzerOutput(analysis=message.parsed, model=model, usage=usage)


class OpenAIAnalyzer(_OpenAIAnalyzerBase[openai.OpenAI]):
    """
    Analyses a sales conversation with an OpenAI chat model.

    The request uses structured outputs: the JSON schema of
    ``SalesCallAnalysis`` is sent in strict mode, and the reply is validated
    against the model again locally, including the score ranges.

    Retries: a rate limit (429), a 5xx reply, a timeout or a lost connection
    is retried by ``retry`` (tenacity). It waits the time that the
    ``retry-after-ms`` or ``Retry-After`` header requests, up to a cap, else
    backs off exponentially with jitter, within a total deadline. The openai
    SDK's own retries are turned off (``client.with_options(max_retries=0)``),
    so the two layers do not multiply. 400, 401, 403, 404 and a 429 with code
    ``insufficient_quota`` fail at once. A reply that does not validate, a
    refusal, or a reply cut off by the length limit or the content filter is
    requested again up to ``output_retries`` times; it is never returned.

    Every failure raises ``AnalyzerError`` with ``status_code``, ``code``,
    ``retryable`` and ``invalid_output``, and the original exception, if any,
    as ``__cause__``: an ``openai.APIStatusError``, an
    ``openai.APIConnectionError``, an ``openai.LengthFinishReasonError``, an
    ``openai.ContentFilterFinishReasonError`` or a pydantic ``ValidationError``.

    Args:
        client: the OpenAI client to call. When omitted, ``openai.OpenAI()``
            is created, which reads ``OPENAI_API_KEY`` and the other
            ``OPENAI_*`` variables.
        model: the chat model to request; it must support structured
            outputs.
        system_prompt: the instructions sent before the transcript; defaults
            to ``SYSTEM_PROMPT``, a sales-coaching rubric.
        temperature: the sampling temperature; low values make scores of
            similar conversations more consistent. ``None`` leaves it to the
            API, which reasoning models such as o3 or gpt-5 require.
        max_completion_tokens: the maximum number of tokens in the reply
            (for reasoning models, including reasoning tokens), or ``None`` for
            no limit. A reply cut off at the limit raises ``AnalyzerError``.
        max_transcript_tokens: the largest transcript accepted, in tokens
            estimated as characters / ``CHARS_PER_TOKEN`` (an estimate, not
            the model's tokenizer); a longer one raises ``InvalidInputError``
            with its size and the limit, before any request. ``None`` turns
            the check off. The default suits 128k-token models.
        retry: how transient failures are retried; ``RetryPolicy(attempts=1)``
            turns retries off.
        output_retries: how many times an unusable reply is requested again.
        sleep: what waits between retries; tests pass a recorder.

    Raises:
        AnalyzerError: ``client`` is omitted and ``openai.OpenAI()`` cannot be
            created, usually because ``OPENAI_API_KEY`` is not set.
        InvalidInputError: ``max_transcript_tokens`` or ``output_retries`` is
            out of range.
    """

    def __init__(
        self,
        client: openai.OpenAI | None = None,
        *,
        model: str = DEFAULT_MODEL,
        system_prompt: str | None = None,
        temperature: float | None = 0.2,
        max_completion_tokens: int | None = 4096,
        max_transcript_tokens: int | None = 100_000,
        retry: RetryPolicy = ANALYZER_RETRY,
        output_retries: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        _check_limits(max_transcript_tokens, output_retries)
        client = _without_sdk_retries(client, openai.OpenAI, type(self).__name__)
        self._sleep = sleep
        super().__init__(
            client,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_completion_tokens=max_completion_tokens,
            max_transcript_tokens=max_transcript_tokens,
            retry=retry,
            output_retries=output_retries,
        )

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[SalesCallAnalysis]:
        """
        Analyse one conversation with a single chat completion request.

        Args:
            transcript: the turns in order; they are sent as ``Speaker: text``
                lines.

        Returns:
            The analysis, the model that the API reports having used, and the
            token usage of the request.

        Raises:
            InvalidInputError: the transcript has no turns, or its estimated
                size exceeds ``max_transcript_tokens``.
            AnalyzerError: the request failed after its retries, or every
                reply was refused, cut off, filtered or did not validate
                against ``SalesCallAnalysis``.
        """
        messages = self._messages(transcript)
        # An unusable reply is asked for again without waiting; each of those
        # attempts retries transient failures with backoff.
        for attempt in tenacity.Retrying(**self._output_retry_kwargs()):
            with attempt:
                return self._output(self._send(messages))
        raise AssertionError(
            "unreachable: tenacity returns or raises"
        )  # pragma: no cover

    def _send(
        self, messages: list[ChatCompletionMessageParam]
    ) -> ParsedChatCompletion[SalesCallAnalysis]:
        retrying = tenacity.Retrying(sleep=self._sleep, **self._request_retry_kwargs())
        for attempt in retrying:
            with attempt:
                try:
                    return self._client.chat.completions.parse(
                        **self._arguments(messages)
                    )
                except _REQUEST_ERRORS as error:
                    raise self._request_error(error) from error
        raise AssertionError(
            "unreachable: tenacity returns or raises"
        )  # pragma: no cover


class AsyncOpenAIAnalyzer(_OpenAIAnalyzerBase[openai.AsyncOpenAI]):
    """
    ``OpenAIAnalyzer`` over ``openai.AsyncOpenAI``, for ``AsyncAnalysisCache``.

    Same request, analysis version, retries, size check, errors and
    arguments as ``OpenAIAnalyzer``; an analysis stored by one is a hit for
    the other. Waits between retries use ``sleep`` (``asyncio.sleep``), so
    cancelling ``analyze`` cancels the HTTP request or the wait at once and
    sends no further request.

    Raises:
        AnalyzerError: ``client`` is omitted and ``openai.AsyncOpenAI()``
            cannot be created, usually because ``OPENAI_API_KEY`` is not set.
        InvalidInputError: ``max_transcript_tokens`` or ``output_retries`` is
            out of range.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI | None = None,
        *,
        model: str = DEFAULT_MODEL,
        system_prompt: str | None = None,
        temperature: float | None = 0.2,
        max_completion_tokens: int | None = 4096,
        max_transcript_tokens: int | None = 100_000,
        retry: RetryPolicy = ANALYZER_RETRY,
        output_retries: int = 1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        _check_limits(max_transcript_tokens, output_retries)
        client = _without_sdk_retries(client, openai.AsyncOpenAI, type(self).__name__)
        self._sleep = sleep
        super().__init__(
            client,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_completion_tokens=max_completion_tokens,
            max_transcript_tokens=max_transcript_tokens,
            retry=retry,
            output_retries=output_retries,
        )

    # analyze and _send mirror OpenAIAnalyzer's; they are separate because
    # the request and the waits are awaited. The retry settings, the request
    # and the error classification are the base class's.

    async def analyze(
        self, transcript: Sequence[Turn]
    ) -> AnalyzerOutput[SalesCallAnalysis]:
        """
        Analyse one conversation, as ``OpenAIAnalyzer.analyze`` does.

        Returns:
            As ``OpenAIAnalyzer.analyze``.

        Raises:
            InvalidInputError: as ``OpenAIAnalyzer.analyze``.
            AnalyzerError: as ``OpenAIAnalyzer.analyze``.
        """
        messages = self._messages(transcript)
        async for attempt in tenacity.AsyncRetrying(**self._output_retry_kwargs()):
            with attempt:
                return self._output(await self._send(messages))
        raise AssertionError(
            "unreachable: tenacity returns or raises"
        )  # pragma: no cover

    async def _send(
        self, messages: list[ChatCompletionMessageParam]
    ) -> ParsedChatCompletion[SalesCallAnalysis]:
        retrying = tenacity.AsyncRetrying(
            sleep=self._sleep, **self._request_retry_kwargs()
        )
        async for attempt in retrying:
            with attempt:
                try:
                    return await self._client.chat.completions.parse(
                        **self._arguments(messages)
                    )
                except _REQUEST_ERRORS as error:
                    raise self._request_error(error) from error
        raise AssertionError(
            "unreachable: tenacity returns or raises"
        )  # pragma: no cover


def _check_limits(max_transcript_tokens: int | None, output_retries: int) -> None:
    if max_transcript_tokens is not None and not max_transcript_tokens > 0:
        raise InvalidInputError(
            f"invalid max_transcript_tokens {max_transcript_tokens!r}: "
            "expected a positive number of tokens or None"
        )
    if not (isinstance(output_retries, int) and output_retries >= 0):
        raise InvalidInputError(
            f"invalid output_retries {output_retries!r}: expected an integer >= 0"
        )


def _without_sdk_retries(
    client: _ClientT | None, factory: type[_ClientT], analyzer: str
) -> _ClientT:
    """
    Return ``client``, or a new ``factory`` client when it is ``None``, with
    the SDK's own retries turned off.

    Raises:
        AnalyzerError: the client cannot be created, usually because
            ``OPENAI_API_KEY`` is not set.
    """
    if client is None:
        try:
            return factory(max_retries=0)
        except openai.OpenAIError as error:
            raise AnalyzerError(
                f"cannot create an OpenAI client: {str(error).rstrip('.')}. "
                "Set OPENAI_API_KEY "
                f"or pass client=openai.{factory.__name__}(api_key=...)"
            ) from error
    if not client.max_retries:
        return client
    # The SDK would retry inside each of the analyzer's attempts.
    warnings.warn(
        f"the OpenAI client retries {client.max_retries} times; "
        f"{analyzer} retries itself, so it sends with max_retries=0",
        stacklevel=3,
    )
    return client.with_options(max_retries=0)


def _invalid_output(error: BaseException) -> bool:
    return isinstance(error, AnalyzerError) and error.invalid_output


def _log_invalid_output(model: str) -> Callable[[tenacity.RetryCallState], None]:
    def log(retry_state: tenacity.RetryCallState) -> None:
        logger.warning(
            "OpenAI model %s returned an unusable analysis (attempt %d); "
            "requesting it again",
            model,
            retry_state.attempt_number,
        )

    return log


def _usage(completion: ParsedChatCompletion[SalesCallAnalysis]) -> TokenUsage:
    usage = completion.usage
    if usage is None:
        return TokenUsage()
    # "or 0": OpenAI-compatible servers may send null counts.
    return TokenUsage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        total_tokens=usage.total_tokens or 0,
    )


def _describe_api_error(error: openai.APIStatusError) -> str:
    """
    Return the `` (code): message`` suffix of an error message, from the
    parts of the API error body that are present.
    """
    kind = error.code or error.type
    detail = f" ({kind})" if kind else ""
    body = error.body
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str) and message:
        detail += f": {message}"
    return detail


def _describe_invalid(error: ValidationError) -> str:
    """
    Summarise a validation error without the invalid values, which are model
    output.
    """
    details = error.errors(include_url=False, include_input=False)
    described = [
        f"{'.'.join(str(part) for part in detail['loc']) or 'reply'}: {detail['msg']}"
        for detail in details[:_MAX_QUOTED_ERRORS]
    ]
    if len(details) > _MAX_QUOTED_ERRORS:
        described.append(f"and {len(details) - _MAX_QUOTED_ERRORS} more errors")
    return "; ".join(described)
