"""
OpenAIAnalyzer: a sales-call analysis from an OpenAI model, as structured output.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import openai
from openai.types.chat import ChatCompletionMessageParam, ParsedChatCompletion
from pydantic import ValidationError

from .._keys import analysis_version
from .._models import AnalyzerOutput, TokenUsage, Turn
from ..exceptions import AnalyzerError, InvalidInputError
from .prompt import SYSTEM_PROMPT, render_transcript
from .schemas import SalesCallAnalysis

__all__ = ["DEFAULT_MODEL", "OpenAIAnalyzer"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"

# Validation errors quoted in an AnalyzerError message; the rest are counted.
_MAX_QUOTED_ERRORS = 3


class OpenAIAnalyzer:
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
    def client(self) -> openai.OpenAI:
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
        if not transcript:
            raise InvalidInputError("transcript is empty: expected at least one turn")
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": self._system_prompt},
            {"role": "user", "content": render_transcript(transcript)},
        ]
        logger.debug(
            "Requesting a sales-call analysis from OpenAI model %s", self._model
        )
        completion = self._request(messages)
        return self._output(completion)

    def _request(
        self, messages: list[ChatCompletionMessageParam]
    ) -> ParsedChatCompletion[SalesCallAnalysis]:
        model = self._model
        try:
            return self._client.chat.completions.parse(
                model=model,
                messages=messages,
                response_format=SalesCallAnalysis,
                temperature=openai.omit
                if self._temperature is None
                else self._temperature,
                max_completion_tokens=openai.omit
                if self._max_completion_tokens is None
                else self._max_completion_tokens,
            )
        except openai.APIStatusError as error:
            raise AnalyzerError(
                f"OpenAI request for model {model!r} failed with HTTP "
                f"{error.status_code}{_describe_api_error(error)}"
            ) from error
        except openai.APITimeoutError as error:
            raise AnalyzerError(
                f"OpenAI request for model {model!r} timed out"
            ) from error
        except openai.APIConnectionError as error:
            reason = error.__cause__ or error
            raise AnalyzerError(
                f"OpenAI request for model {model!r} could not reach "
                f"{self._client.base_url}: {type(reason).__name__}: {reason}"
            ) from error
        except openai.LengthFinishReasonError as error:
            limit = self._max_completion_tokens
            raise AnalyzerError(
                f"OpenAI model {model!r} stopped at the length limit "
                f"(max_completion_tokens={limit}) before finishing the analysis; "
                "raise max_completion_tokens or shorten the transcript"
            ) from error
        except openai.ContentFilterFinishReasonError as error:
            raise AnalyzerError(
                f"OpenAI model {model!r} stopped its reply because the content "
                "filter flagged the conversation or the analysis"
            ) from error
        except ValidationError as error:
            raise AnalyzerError(
                f"OpenAI model {model!r} returned an analysis that does not "
                f"validate against SalesCallAnalysis: {_describe_invalid(error)}"
            ) from error
        except openai.OpenAIError as error:
            raise AnalyzerError(
                f"OpenAI request for model {model!r} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        except (AttributeError, TypeError, KeyError) as error:
            # openai builds the response without validating it, so a reply
            # that is not a chat completion (a proxy's HTML page, a wrong
            # base_url) fails inside its parsing helper with one of these.
            raise AnalyzerError(
                f"the reply from {self._client.base_url} to a request for model "
                f"{model!r} is not a chat completion; check the client's base_url"
            ) from error

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
