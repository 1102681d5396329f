"""
OpenAIAnalyzer and AsyncOpenAIAnalyzer: a sales-call analysis from an OpenAI
model, as structured output.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import openai
from openai.types.chat import ChatCompletionMessageParam, ParsedChatCompletion
from pydantic import ValidationError

from .._keys import analysis_version
from .._models import AnalyzerOutput, TokenUsage, Turn
from ..exceptions import AnalyzerError, InvalidInputError
from .prompt import SYSTEM_PROMPT, render_transcript
from .schemas import SalesCallAnalysis

__all__ = ["DEFAULT_MODEL", "AsyncOpenAIAnalyzer", "OpenAIAnalyzer"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"

# Validation errors quoted in an AnalyzerError message; the rest are counted.
_MAX_QUOTED_ERRORS = 3

_ClientT = TypeVar("_ClientT", openai.OpenAI, openai.AsyncOpenAI)

# What the client's parse call raises for a failed request or a bad reply.
_REQUEST_ERRORS = (
    openai.OpenAIError,
    ValidationError,
    AttributeError,
    TypeError,
    KeyError,
)


class _OpenAIAnalyzerBase(Generic[_ClientT]):
    """
    The parts of the sync and async analyzers that do no I/O: the request,
    the analysis version, the reply's checks and the error messages.
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
    ) -> None:
        self._client = client
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
        temperature and the ``SalesCallAnalysis`` schema; changing any of
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

    def _request_arguments(self, transcript: Sequence[Turn]) -> dict[str, Any]:
        """
        Return the arguments of ``chat.completions.parse`` for a transcript.

        Raises:
            InvalidInputError: the transcript has no turns.
        """
        if not transcript:
            raise InvalidInputError("transcript is empty: expected at least one turn")
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": self._system_prompt},
            {"role": "user", "content": render_transcript(transcript)},
        ]
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

    def _request_error(self, error: Exception) -> AnalyzerError:
        """
        Return the ``AnalyzerError`` for an exception of the parse call; the
        caller raises it ``from`` the exception.
        """
        model = self._model
        if isinstance(error, openai.APIStatusError):
            return AnalyzerError(
                f"OpenAI request for model {model!r} failed with HTTP "
                f"{error.status_code}{_describe_api_error(error)}"
            )
        if isinstance(error, openai.APITimeoutError):
            return AnalyzerError(f"OpenAI request for model {model!r} timed out")
        if isinstance(error, openai.APIConnectionError):
            reason = error.__cause__ or error
            return AnalyzerError(
                f"OpenAI request for model {model!r} could not reach "
                f"{self._client.base_url}: {type(reason).__name__}: {reason}"
            )
        if isinstance(error, openai.LengthFinishReasonError):
            limit = self._max_completion_tokens
            return AnalyzerError(
                f"OpenAI model {model!r} stopped at the length limit "
                f"(max_completion_tokens={limit}) before finishing the analysis; "
                "raise max_completion_tokens or shorten the transcript"
            )
        if isinstance(error, openai.ContentFilterFinishReasonError):
            return AnalyzerError(
                f"OpenAI model {model!r} stopped its reply because the content "
                "filter flagged the conversation or the analysis"
            )
        if isinstance(error, ValidationError):
            return AnalyzerError(
                f"OpenAI model {model!r} returned an analysis that does not "
                f"validate against SalesCallAnalysis: {_describe_invalid(error)}"
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
            raise AnalyzerError(f"OpenAI model {model!r} returned no choices")
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            # The refusal text is model output and may quote the conversation,
            # so it stays out of the message, which applications log.
            raise AnalyzerError(
                f"OpenAI model {model!r} refused to analyse the conversation "
                f"(a refusal of {len(message.refusal)} characters)"
            )
        if message.parsed is None:
            raise AnalyzerError(
                f"OpenAI model {model!r} returned no analysis "
                f"(finish_reason={choice.finish_reason!r})"
            )
        return AnalyzerOutput(analysis=message.parsed, model=model, usage=usage)


class OpenAIAnalyzer(_OpenAIAnalyzerBase[openai.OpenAI]):
    """
    Analyses a sales conversation with an OpenAI chat model.

    The request uses structured outputs: the JSON schema of
    ``SalesCallAnalysis`` is sent in strict mode, and the reply is validated
    against the model again locally, including the score ranges.

    Nothing is retried here; configure ``max_retries`` on the client, or wrap
    the analyzer, to retry. Every failure raises ``AnalyzerError`` with the
    original exception, if any, as ``__cause__``: an ``openai.APIStatusError``
    (which has ``status_code`` and ``code``), an ``openai.APIConnectionError``,
    an ``openai.LengthFinishReasonError``, an
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

    Raises:
        AnalyzerError: ``client`` is omitted and ``openai.OpenAI()`` cannot be
            created, usually because ``OPENAI_API_KEY`` is not set.
    """

    def __init__(
        self,
        client: openai.OpenAI | None = None,
        *,
        model: str = DEFAULT_MODEL,
        system_prompt: str | None = None,
        temperature: float | None = 0.2,
        max_completion_tokens: int | None = 4096,
    ) -> None:
        if client is None:
            try:
                client = openai.OpenAI()
            except openai.OpenAIError as error:
                raise AnalyzerError(
                    f"cannot create an OpenAI client: {error}. Set OPENAI_API_KEY "
                    "or pass client=openai.OpenAI(api_key=...)"
                ) from error
        super().__init__(
            client,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_completion_tokens=max_completion_tokens,
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
            InvalidInputError: the transcript has no turns.
            AnalyzerError: the request failed, the model refused, the reply
                was cut off or filtered, or it does not validate against
                ``SalesCallAnalysis``.
        """
        arguments = self._request_arguments(transcript)
        try:
            completion = self._client.chat.completions.parse(**arguments)
        except _REQUEST_ERRORS as error:
            raise self._request_error(error) from error
        return self._output(completion)


class AsyncOpenAIAnalyzer(_OpenAIAnalyzerBase[openai.AsyncOpenAI]):
    """
    ``OpenAIAnalyzer`` over ``openai.AsyncOpenAI``, for ``AsyncAnalysisCache``.

    Same request, analysis version, errors and arguments as
    ``OpenAIAnalyzer``; an analysis stored by one is a hit for the other.
    Cancelling ``analyze`` cancels the HTTP request.

    Raises:
        AnalyzerError: ``client`` is omitted and ``openai.AsyncOpenAI()``
            cannot be created, usually because ``OPENAI_API_KEY`` is not set.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI | None = None,
        *,
        model: str = DEFAULT_MODEL,
        system_prompt: str | None = None,
        temperature: float | None = 0.2,
        max_completion_tokens: int | None = 4096,
    ) -> None:
        if client is None:
            try:
                client = openai.AsyncOpenAI()
            except openai.OpenAIError as error:
                raise AnalyzerError(
                    f"cannot create an OpenAI client: {error}. Set OPENAI_API_KEY "
                    "or pass client=openai.AsyncOpenAI(api_key=...)"
                ) from error
        super().__init__(
            client,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_completion_tokens=max_completion_tokens,
        )

    async def analyze(
        self, transcript: Sequence[Turn]
    ) -> AnalyzerOutput[SalesCallAnalysis]:
        """
        Analyse one conversation with a single chat completion request.

        Returns:
            As ``OpenAIAnalyzer.analyze``.

        Raises:
            InvalidInputError: the transcript has no turns.
            AnalyzerError: as ``OpenAIAnalyzer.analyze``.
        """
        arguments = self._request_arguments(transcript)
        try:
            completion = await self._client.chat.completions.parse(**arguments)
        except _REQUEST_ERRORS as error:
            raise self._request_error(error) from error
        return self._output(completion)


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
