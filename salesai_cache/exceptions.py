"""
Exceptions raised by salesai_cache.

Runtime failures share one root, so ``except SalesAICacheError`` catches every
failure of the cache, its stores and its analyzers::

    SalesAICacheError
    ├── CacheStoreError          a database or PostgREST call failed
    │   └── SchemaMismatchError  a table, column or constraint is missing
    ├── ConfigurationError       the database hides what the cache wrote
    ├── SessionNotFoundError     no salesai_sessions row has the session id
    ├── ClaimTimeoutError        another worker's compute took too long
    ├── CacheClosedError         the cache was used after it was closed
    └── AnalyzerError            the analyzer (for example OpenAI) failed

``CacheStoreError`` and ``AnalyzerError`` have ``retryable``: whether the same
call may succeed later (a timeout, a 5xx, a rate limit). The cache has retried
those already when it raises them.

Misuse, such as a session id that is not a UUID or an empty transcript, raises
``InvalidInputError``. It derives from ``ValueError`` and stays outside the
runtime root, because retrying the same call cannot succeed.
"""

from __future__ import annotations

__all__ = [
    "AnalyzerError",
    "CacheClosedError",
    "CacheStoreError",
    "ClaimTimeoutError",
    "ConfigurationError",
    "InvalidInputError",
    "SalesAICacheError",
    "SchemaMismatchError",
    "SessionNotFoundError",
]


class SalesAICacheError(Exception):
    """
    Base class of every runtime failure raised by salesai_cache.
    """


class CacheStoreError(SalesAICacheError):
    """
    A call to the database failed.

    ``code`` is the PostgreSQL SQLSTATE or PostgREST error code (for example
    ``42501`` or ``PGRST116``) when the server sent one, else ``None``. The
    original exception is chained as ``__cause__``. ``retryable`` is true for
    failures that may pass on a later attempt: a lost connection, a timeout,
    an overloaded server or a 5xx reply.
    """

    def __init__(
        self, message: str, *, code: str | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class SchemaMismatchError(CacheStoreError):
    """
    The database lacks a table, column or constraint that the cache uses.

    The message names the SQL file to apply.
    """


class ConfigurationError(SalesAICacheError):
    """
    The database accepted a write but hides its result from the same role,
    usually because a row-level security policy lets the role write
    ``salesai_analysis_results`` but not read it.

    Without this error every view would pay for a new model call. The
    message names the session and the table.
    """

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class SessionNotFoundError(SalesAICacheError):
    """
    No ``salesai_sessions`` row has the requested session id.
    """

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id} not found in salesai_sessions: create the "
            "session row before analysing it"
        )
        self.session_id = session_id


class ClaimTimeoutError(SalesAICacheError):
    """
    Another worker held the compute claim of a session for longer than the
    cache's ``wait_timeout``, and no analysis appeared.
    """

    def __init__(self, session_id: str, waited_seconds: float) -> None:
        super().__init__(
            f"timed out after {waited_seconds:.1f} s waiting for another worker "
            f"to analyse session {session_id}; try again, or raise wait_timeout "
            "if analyses take longer than that"
        )
        self.session_id = session_id
        self.waited_seconds = waited_seconds


class CacheClosedError(SalesAICacheError):
    """
    A cache was used after it was closed; nothing was read, computed or
    stored.

    Args:
        cache_name: the cache's class, such as ``AsyncAnalysisCache``.
        closed_by: how it was closed, such as ``aclose()``.
    """

    def __init__(self, cache_name: str, closed_by: str) -> None:
        super().__init__(
            f"this {cache_name} is closed ({closed_by}); create a new cache to "
            "read or compute analyses"
        )
        self.cache_name = cache_name


class AnalyzerError(SalesAICacheError):
    """
    The analyzer failed to produce an analysis, so nothing was stored.

    The original exception, such as an ``openai.APIError``, is chained as
    ``__cause__``.

    Attributes:
        status_code: the HTTP status of the failed request, or ``None``.
        code: the provider's error code, such as ``insufficient_quota``.
        retryable: whether the same request may succeed later (a rate
            limit, a 5xx, a timeout or a lost connection).
        invalid_output: the reply arrived but is unusable: it does not
            validate, the model refused, or it was cut off or filtered.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        invalid_output: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.retryable = retryable
        self.invalid_output = invalid_output


class InvalidInputError(ValueError):
    """
    An argument is invalid. The message names the value.
    """
