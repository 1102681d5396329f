"""
Retry policy shared by the analyzers, the stores and the caches.

A ``RetryPolicy`` sets how often and how long to retry; ``tenacity_kwargs``
turns it into the arguments of ``tenacity.Retrying`` or
``tenacity.AsyncRetrying`` (add ``sleep`` for the async one). The
classification functions decide what is worth retrying: a rate limit, a 5xx
reply, a timeout or a lost connection is; a bad request, a rejected key or an
exhausted quota is not.

This module imports neither openai nor psycopg nor postgrest: it reads the
attributes that the library exceptions carry.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tenacity
from tenacity.wait import wait_base

from .exceptions import AnalyzerError, CacheStoreError, InvalidInputError

__all__ = [
    "ANALYZER_RETRY",
    "STORE_RETRY",
    "RetryPolicy",
    "WaitRetryAfter",
    "is_transient",
    "is_transient_status",
    "is_transient_store_code",
    "retry_after_seconds",
]

logger = logging.getLogger(__name__)

# HTTP statuses worth another attempt: request timeout, conflict (the openai
# SDK retries 409 as a lock timeout), rate limit, and server errors.
_TRANSIENT_STATUSES = frozenset({408, 409, 429})
# A 429 with this code means the account is out of credit: waiting does not
# help, so it fails at once.
_PERMANENT_429_CODES = frozenset({"insufficient_quota"})


@dataclass(frozen=True)
class RetryPolicy:
    """
    How a failed call is retried: up to ``attempts`` calls in all, stopping
    before a wait would end later than ``deadline`` seconds after the first.

    Between two attempts it waits the time the server requested in
    ``retry-after-ms`` or ``Retry-After``, at most ``retry_after_cap`` seconds.
    Without such a header, it waits an exponential backoff from
    ``initial_wait`` up to ``max_wait`` plus a random jitter of up to
    ``jitter`` seconds, so that many clients failing together do not retry
    together.

    Raises:
        InvalidInputError: ``attempts`` is below 1 or a duration is negative.
    """

    attempts: int = 4
    deadline: float = 120.0
    initial_wait: float = 1.0
    max_wait: float = 20.0
    jitter: float = 1.0
    retry_after_cap: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not (
            isinstance(self.attempts, int) and self.attempts >= 1
        ):
            raise InvalidInputError(
                f"invalid attempts {self.attempts!r}: expected an integer >= 1"
            )
        for name in ("deadline", "initial_wait", "max_wait", "jitter"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise InvalidInputError(
                    f"invalid {name} {value!r}: expected a number of seconds >= 0"
                )
        if not self.retry_after_cap >= 0:
            raise InvalidInputError(
                f"invalid retry_after_cap {self.retry_after_cap!r}: expected a "
                "number of seconds >= 0"
            )

    def tenacity_kwargs(
        self,
        retryable: Callable[[BaseException], bool],
        *,
        name: str,
    ) -> dict[str, Any]:
        """
        Return the keyword arguments of ``tenacity.Retrying`` or
        ``AsyncRetrying`` for this policy.

        Args:
            retryable: whether an exception is worth another attempt.
            name: what is retried, for the WARNING logged before each retry.

        Returns:
            ``stop``, ``wait``, ``retry``, ``before_sleep`` and ``reraise``:
            the last exception is raised as it is when the retries run out.
        """
        return {
            "stop": tenacity.stop_after_attempt(self.attempts)
            | tenacity.stop_before_delay(self.deadline),
            "wait": WaitRetryAfter(self),
            "retry": tenacity.retry_if_exception(retryable),
            "before_sleep": _log_retry(name),
            "reraise": True,
        }


# 4 calls over up to about a minute: a model call is worth waiting for.
ANALYZER_RETRY = RetryPolicy()
# Database calls sit in a web request: 3 calls within a few seconds.
STORE_RETRY = RetryPolicy(
    attempts=3,
    deadline=10.0,
    initial_wait=0.2,
    max_wait=2.0,
    jitter=0.2,
    retry_after_cap=5.0,
)


class WaitRetryAfter(wait_base):
    """
    Wait the time that the failed reply's ``retry-after-ms`` or
    ``Retry-After`` header requests, capped, else back off exponentially with
    jitter.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        # wait_exponential plus wait_random rather than wait_exponential_jitter,
        # whose arguments differ between tenacity 8 and 9.
        self._backoff = tenacity.wait_exponential(
            multiplier=policy.initial_wait, max=policy.max_wait
        ) + tenacity.wait_random(0, policy.jitter)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        asked = retry_after_seconds(error) if error is not None else None
        if asked is not None:
            return min(asked, self._policy.retry_after_cap)
        return float(self._backoff(retry_state))


def _log_retry(name: str) -> Callable[[tenacity.RetryCallState], None]:
    def log(retry_state: tenacity.RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        # The type and code only: messages may quote server text.
        logger.warning(
            "%s failed (attempt %d, %s%s); retrying in %.2f s",
            name,
            retry_state.attempt_number,
            type(error).__name__,
            _code_suffix(error),
            wait,
        )

    return log


def _code_suffix(error: BaseException | None) -> str:
    status = getattr(error, "status_code", None)
    code = getattr(error, "code", None)
    parts = [str(part) for part in (status, code) if part is not None]
    return f" {' '.join(parts)}" if parts else ""


def is_transient_status(status_code: int | None, code: str | None = None) -> bool:
    """
    Return whether an HTTP reply with this status (and provider error code)
    may succeed if the request is sent again.

    429 is transient unless its code is ``insufficient_quota``; 408, 409 and
    every 5xx are transient; other statuses (400, 401, 403, 404, 422) are not.
    """
    if status_code is None:
        return False
    if status_code == 429:
        return code not in _PERMANENT_429_CODES
    return status_code in _TRANSIENT_STATUSES or status_code >= 500


def is_transient_store_code(code: str | None) -> bool:
    """
    Return whether a SQLSTATE or PostgREST error code names a failure that may
    pass on a later attempt.

    Transient: connection exceptions (``08``), insufficient resources
    (``53``), operator intervention such as a restart (``57P``), a statement
    timeout (``57014``), serialization failures and deadlocks (``40001``,
    ``40P01``), PostgREST's connection errors (``PGRST000`` to ``PGRST003``)
    and HTTP 5xx statuses that postgrest-py reports as the code of a reply
    that was not PostgREST JSON, such as a gateway's 502 page.
    """
    if code is None:
        return False
    if code.startswith(("08", "53", "57P", "PGRST00")):
        return True
    if code in {"57014", "40001", "40P01"}:
        return True
    return len(code) == 3 and code.isdigit() and is_transient_status(int(code))


def is_transient(error: BaseException) -> bool:
    """
    Return whether the library exception ``error`` is worth retrying: a
    ``CacheStoreError`` or ``AnalyzerError`` whose ``retryable`` is true.
    """
    if isinstance(error, (CacheStoreError, AnalyzerError)):
        return error.retryable
    return False


def retry_after_seconds(error: BaseException) -> float | None:
    """
    Return the wait that the reply behind ``error`` requested, in seconds.

    Reads ``retry-after-ms`` (milliseconds, as OpenAI sends it), then
    ``Retry-After`` (seconds or an HTTP date) from the headers of
    ``error.response``, or of the exception it was raised from.

    Returns:
        The wait, or ``None`` when no reply or no valid header is found.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        headers = getattr(getattr(current, "response", None), "headers", None)
        if isinstance(headers, Mapping) or hasattr(headers, "get"):
            wait = _header_wait(headers)
            if wait is not None:
                return wait
        current = current.__cause__
    return None


def _header_wait(headers: Any) -> float | None:
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    value = headers.get("retry-after")
    if not isinstance(value, str):
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


def _number(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number != number or number < 0 or number == float("inf"):
        return None
    return number
