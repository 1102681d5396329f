"""
Helpers shared by AnalysisCache and AsyncAnalysisCache: argument checks, the
conversion of stored rows into results, the "found" log lines and the
detection of the client's library. None of them does I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import logging
import os
import socket
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ._models import (
    AnalysisResult,
    AnalyzerOutput,
    CacheStatus,
    StoredAnalysis,
    Turn,
    validate_session_id,
)
from ._stats import StatsRecorder
from ._transcripts import parse_transcript
from .exceptions import (
    CacheStoreError,
    ConfigurationError,
    InvalidInputError,
    SessionNotFoundError,
)

__all__ = [
    "MAX_REMEMBERED",
    "PENDING_WRITE_ERRORS",
    "STORE_METHODS",
    "BatchResult",
    "PendingWrite",
    "WriteMemory",
    "build_batch",
    "build_miss",
    "check_analyzer",
    "check_conninfo",
    "check_conversation_id",
    "check_durations",
    "check_invalidate",
    "check_max_pending",
    "check_session_ids",
    "check_supabase_url",
    "client_kind",
    "hidden_error",
    "log_found",
    "parse_stored_transcript",
    "read_stored",
    "settle_flight",
    "validate_stored",
]

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)

STORE_METHODS = (
    "fetch",
    "fetch_by_conversation",
    "fetch_transcript",
    "lookup",
    "save",
    "release",
    "invalidate",
)


# salesai_lookup_analysis rejects longer leases: more is a unit mistake.
MAX_LEASE_SECONDS = 31_536_000


def check_durations(**durations: float | None) -> None:
    """
    Raise ``InvalidInputError`` for the first duration that is not positive,
    or for a ``lease_seconds`` above ``MAX_LEASE_SECONDS`` (one year), which
    the database would reject on every call.
    """
    for name, value in durations.items():
        if value is not None and not value > 0:
            raise InvalidInputError(
                f"invalid {name} {value!r}: expected a positive number of seconds"
            )
    lease = durations.get("lease_seconds")
    if lease is not None and not lease <= MAX_LEASE_SECONDS:
        raise InvalidInputError(
            f"invalid lease_seconds {lease!r}: expected at most "
            f"{MAX_LEASE_SECONDS} seconds (one year)"
        )


def check_analyzer(analyzer: object, *, coroutines: bool) -> None:
    """
    Raise ``InvalidInputError`` unless ``analyzer`` has what the
    ``Analyzer`` protocol requires: a non-empty string ``analysis_version``, a
    pydantic model class ``output_model`` and a callable ``analyze``, which
    is a coroutine function only when ``coroutines`` is true.

    Checked when the cache is made, so that a wrong analyzer fails there
    instead of on the first miss.
    """
    problems = []
    missing = [
        name
        for name in ("analysis_version", "output_model", "analyze")
        if not hasattr(analyzer, name)
    ]
    if missing:
        problems.append("missing " + ", ".join(missing))
    version = getattr(analyzer, "analysis_version", "")
    if not isinstance(version, str):
        problems.append(f"analysis_version is {type(version).__name__}, not a string")
    elif "analysis_version" not in missing and not version.strip():
        problems.append("analysis_version is empty")
    model = getattr(analyzer, "output_model", BaseModel)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        got = f"class {model.__name__}" if isinstance(model, type) else _type(model)
        problems.append(f"output_model is {got}, not a pydantic model class")
    analyze = getattr(analyzer, "analyze", print)
    if not callable(analyze):
        problems.append("analyze is not callable")
    elif not coroutines and inspect.iscoroutinefunction(analyze):
        problems.append(
            "analyze is a coroutine function: use AsyncAnalysisCache for an "
            "async analyzer such as AsyncOpenAIAnalyzer"
        )
    if problems:
        raise InvalidInputError(
            f"invalid analyzer of type {_type(analyzer)}: {'; '.join(problems)}. "
            "An analyzer, such as OpenAIAnalyzer, has a string analysis_version, "
            "a pydantic output_model and an analyze method"
        )


def _type(value: object) -> str:
    return type(value).__name__


# Prefixes of Supabase API keys: legacy JWTs, then secret and publishable
# keys. A URL argument with one of them is a key passed in the wrong place.
_KEY_PREFIXES = ("eyJ", "sb_secret_", "sb_publishable_")


def check_supabase_url(url: object, key: object) -> None:
    """
    Raise ``InvalidInputError`` unless ``url`` is an http(s) URL with a host
    and ``key`` a non-empty string, as supabase-py requires. The message
    names the URL but never the key, nor a URL that looks like a key.
    """
    if not isinstance(url, str):
        raise InvalidInputError(
            f"invalid Supabase URL of type {_type(url)}: expected a string such "
            "as https://<ref>.supabase.co"
        )
    if url.startswith(_KEY_PREFIXES):
        raise InvalidInputError(
            "invalid Supabase URL: it looks like an API key; pass the project "
            "URL first, such as https://<ref>.supabase.co, then the key"
        )
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        host = None
    if not url.startswith(("http://", "https://")) or not host:
        raise InvalidInputError(
            f"invalid Supabase URL {url!r}: expected the project URL, such as "
            "https://<ref>.supabase.co"
        )
    if not isinstance(key, str) or not key.strip():
        got = "an empty string" if isinstance(key, str) else _type(key)
        raise InvalidInputError(
            f"invalid Supabase key: expected the service-role key, got {got}"
        )


def check_conninfo(conninfo: object) -> None:
    """
    Raise ``InvalidInputError`` unless libpq can parse ``conninfo``. The
    message leaves the string and libpq's reason out, since either may
    contain the password.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if not isinstance(conninfo, str):
        raise InvalidInputError(
            f"invalid PostgreSQL connection string of type {_type(conninfo)}: "
            "expected a string"
        )
    try:
        conninfo_to_dict(conninfo)
    except ProgrammingError:
        raise InvalidInputError(
            "invalid PostgreSQL connection string: libpq cannot parse it; "
            "expected a URL such as postgresql://user:password@host:5432/postgres "
            "or key=value pairs such as 'host=localhost dbname=postgres'"
        ) from None


def check_invalidate(session_id: object | None, analysis_version: object) -> None:
    """
    Raise ``InvalidInputError`` when invalidate is given no filter, or an
    ``analysis_version`` that is not a non-empty string.
    """
    if session_id is None and analysis_version is None:
        raise InvalidInputError(
            "invalidate needs a session_id, an analysis_version or both; "
            "to delete every analysis, truncate salesai_analysis_results"
        )
    if analysis_version is not None and (
        not isinstance(analysis_version, str) or not analysis_version.strip()
    ):
        # An empty version matches no row, so the call would delete nothing.
        raise InvalidInputError(
            f"invalid analysis_version {analysis_version!r}: expected a non-empty "
            "string, such as the analyzer's analysis_version"
        )


def check_conversation_id(conversation_id: object) -> str:
    """
    Return ``conversation_id`` if it is a non-empty string.

    Raises:
        InvalidInputError: it is not.
    """
    if not isinstance(conversation_id, str) or not conversation_id:
        raise InvalidInputError(
            f"invalid conversation id {conversation_id!r}: expected a non-empty string"
        )
    if "\x00" in conversation_id:
        # PostgreSQL text cannot hold NUL, so no stored id can match.
        raise InvalidInputError(
            f"invalid conversation id {conversation_id!r}: it contains a NUL character"
        )
    return conversation_id


def check_max_pending(max_pending_writes: object) -> None:
    """
    Raise ``InvalidInputError`` unless ``max_pending_writes`` is an integer
    of at least 1.
    """
    if not (isinstance(max_pending_writes, int) and max_pending_writes >= 1):
        raise InvalidInputError(
            f"invalid max_pending_writes {max_pending_writes!r}: expected an "
            "integer >= 1"
        )


def check_session_ids(session_ids: Iterable[object]) -> list[str]:
    """
    Return the canonical ids of ``session_ids``, each once, in order.

    Raises:
        InvalidInputError: ``session_ids`` is a string or not iterable, or
            an id is not a UUID.
    """
    if isinstance(session_ids, (str, bytes)):
        raise InvalidInputError(
            f"invalid session ids {session_ids!r}: expected a list of UUIDs, "
            "not one string"
        )
    try:
        ids = iter(session_ids)
    except TypeError:
        raise InvalidInputError(
            f"invalid session ids: expected a list of UUIDs, got {_type(session_ids)}"
        ) from None
    return list(dict.fromkeys(validate_session_id(item) for item in ids))


def parse_stored_transcript(session_id: str, raw: Any) -> tuple[Turn, ...]:
    """
    Parse the ``transcript`` column of a session.

    Raises:
        InvalidInputError: the stored transcript is invalid.
    """
    try:
        return parse_transcript(raw)
    except InvalidInputError as error:
        raise InvalidInputError(
            f"transcript stored for session {session_id} is invalid: {error}"
        ) from None


def read_stored(
    stored: StoredAnalysis | None,
    fingerprint: str | None,
    output_model: type[AnalysisT],
    analysis_version: str,
    logger: logging.Logger,
) -> AnalysisResult[AnalysisT] | None:
    """
    Turn a fetched row into a result, ``STALE`` unless its version (and its
    transcript hash, when ``fingerprint`` is given) match.
    """
    if stored is None:
        return None
    fresh = stored.analysis_version == analysis_version and (
        fingerprint is None or stored.transcript_hash == fingerprint
    )
    status = CacheStatus.HIT if fresh else CacheStatus.STALE
    return validate_stored(stored, status, output_model, logger)


def validate_stored(
    stored: StoredAnalysis,
    status: CacheStatus,
    output_model: type[AnalysisT],
    logger: logging.Logger,
) -> AnalysisResult[AnalysisT] | None:
    """
    Return a stored analysis as a result, or ``None`` when it does not
    validate against ``output_model``.
    """
    try:
        if isinstance(stored.analysis, str):
            analysis = output_model.model_validate_json(stored.analysis)
        else:
            analysis = output_model.model_validate(stored.analysis)
    except ValidationError as error:
        logger.debug(
            "Ignoring the stored analysis of session %s: it does not "
            "validate against %s (%d errors)",
            stored.session_id,
            output_model.__name__,
            error.error_count(),
        )
        return None
    return AnalysisResult(
        session_id=stored.session_id,
        analysis=analysis,
        model=stored.model,
        usage=stored.usage,
        status=status,
        created_at=stored.created_at,
        age_seconds=_age_seconds(stored),
        transcript_hash=stored.transcript_hash,
        analysis_version=stored.analysis_version,
    )


def build_miss(
    session_id: str,
    output: AnalyzerOutput[AnalysisT],
    stored: StoredAnalysis,
    fingerprint: str,
    analysis_version: str,
) -> AnalysisResult[AnalysisT]:
    """
    Return the result of an analysis computed and saved by this caller.
    """
    return AnalysisResult(
        session_id=session_id,
        analysis=output.analysis,
        model=output.model,
        usage=output.usage,
        status=CacheStatus.MISS,
        created_at=stored.created_at,
        age_seconds=0.0,
        transcript_hash=fingerprint,
        analysis_version=analysis_version,
    )


def log_found(
    logger: logging.Logger,
    result: AnalysisResult[Any],
    *,
    waited: float | None = None,
) -> None:
    """
    Log the "Found cached analysis in database" line of a served analysis.
    """
    if result.status is CacheStatus.STALE:
        logger.info(
            "Found cached analysis in database for session %s, stale "
            "(made from another transcript or analysis version)",
            result.session_id,
        )
    elif waited is not None:
        logger.info(
            "Found cached analysis in database for session %s after "
            "waiting %.2f s for another worker",
            result.session_id,
            waited,
        )
    else:
        logger.info(
            "Found cached analysis in database for session %s", result.session_id
        )


@dataclass(frozen=True)
class BatchResult(Generic[AnalysisT]):
    """
    What ``AnalysisCache.get_many`` found.

    ``found`` maps session ids (canonical lowercase UUID strings) to their
    analyses in the order they were requested; ``missing`` lists the
    requested sessions that have no usable analysis, in the same order.
    """

    found: dict[str, AnalysisResult[AnalysisT]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def get(self, session_id: object) -> AnalysisResult[AnalysisT] | None:
        """
        Return the analysis of one requested session, or ``None``.

        Raises:
            InvalidInputError: ``session_id`` is not a UUID.
        """
        return self.found.get(validate_session_id(session_id))


def warn_unwritten(logger: logging.Logger, sessions: Sequence[str]) -> None:
    """
    Log the sessions whose computed analysis is still unwritten when a cache
    closes: they are lost with it and will be computed again.
    """
    if sessions:
        logger.warning(
            "Closing the cache with %d computed analyses that could not be "
            "written to the database; they are lost and will be computed "
            "again: sessions %s",
            len(sessions),
            ", ".join(sessions),
        )


def settle_flight(
    result: AnalysisResult[AnalysisT], shared: bool, stats: StatsRecorder
) -> AnalysisResult[AnalysisT]:
    """
    Return the result of an in-process flight as this caller sees it
    (``WAITED`` when it shared another caller's compute), counting it in
    ``stats`` unless it is the computing caller's miss, counted already.
    """
    if shared and result.status is CacheStatus.MISS:
        result = _with_status(result, CacheStatus.WAITED)
    if result.status is not CacheStatus.MISS:
        stats.record(result)
    return result


def build_batch(
    keys: Sequence[str],
    rows: Iterable[StoredAnalysis],
    read: Callable[[StoredAnalysis | None], AnalysisResult[AnalysisT] | None],
    logger: logging.Logger,
) -> BatchResult[AnalysisT]:
    """
    Return what ``get_many`` found: the fetched ``rows`` turned into results
    by ``read``, in the order of ``keys``.
    """
    by_id = {row.session_id: row for row in rows}
    found: dict[str, AnalysisResult[AnalysisT]] = {}
    missing: list[str] = []
    for key in keys:
        result = read(by_id.get(key))
        if result is None:
            missing.append(key)
        else:
            found[key] = result
    logger.debug(
        "Read %d of %d requested analyses from the database", len(found), len(keys)
    )
    return BatchResult(found=found, missing=missing)


def hidden_error(session_id: str) -> ConfigurationError:
    """
    Return the error for an analysis that was stored but cannot be read back.
    """
    return ConfigurationError(
        f"the analysis of session {session_id} was stored, yet reading it back "
        "finds none: row-level security or a view hides "
        "salesai_analysis_results from the role in use, so every view would pay "
        "for a new analysis. Check the select policy in sql/policies.sql, or use "
        "the service-role key",
        session_id=session_id,
    )


# What writing a pending analysis may raise without losing it by mistake:
# the write is kept for later, or dropped when its session is gone.
PENDING_WRITE_ERRORS = (CacheStoreError, ConfigurationError, SessionNotFoundError)

# Sessions remembered as stored by a cache, to tell hidden rows apart.
MAX_REMEMBERED = 10_000


@dataclasses.dataclass(frozen=True)
class PendingWrite(Generic[AnalysisT]):
    """
    A computed analysis whose database write failed, kept to write later.
    """

    output: AnalyzerOutput[AnalysisT]
    fingerprint: str
    version: str

    def result(self, session_id: str, status: CacheStatus) -> AnalysisResult[AnalysisT]:
        """
        Return the analysis as a result with ``status``, never stored.
        """
        return AnalysisResult(
            session_id=session_id,
            analysis=self.output.analysis,
            model=self.output.model,
            usage=self.output.usage,
            status=status,
            created_at=None,
            age_seconds=0.0,
            transcript_hash=self.fingerprint,
            analysis_version=self.version,
        )

    def save_arguments(self) -> dict[str, Any]:
        """
        Return the keyword arguments of ``save`` that write this analysis.
        """
        return {
            "analysis": self.output.analysis.model_dump(mode="json"),
            "model": self.output.model,
            "usage": self.output.usage,
            "transcript_hash": self.fingerprint,
            "analysis_version": self.version,
        }


class WriteMemory(Generic[AnalysisT]):
    """
    What a cache remembers of its writes, in memory and without I/O: the
    analyses whose write failed (pending), the sessions it stored (so that
    a lookup that then finds nothing points at hidden rows) and the
    sessions whose read-back found nothing. ``AnalysisCache`` and
    ``AsyncAnalysisCache`` each hold one; its lock is held only around
    dictionary updates, never across I/O, so the async cache may take it.
    """

    def __init__(self, max_pending: int, logger: logging.Logger) -> None:
        self._max_pending = max_pending
        self._logger = logger
        self._pending: OrderedDict[str, PendingWrite[AnalysisT]] = OrderedDict()
        self._saved: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._hidden: set[str] = set()
        self._lock = threading.Lock()

    def pending_count(self) -> int:
        """
        Return how many analyses wait for their write.
        """
        with self._lock:
            return len(self._pending)

    def pending_sessions(self) -> list[str]:
        """
        Return the sessions with a pending write, oldest first.
        """
        with self._lock:
            return list(self._pending)

    def pending(self, session_id: str) -> PendingWrite[AnalysisT] | None:
        """
        Return the pending write of a session, or ``None``.
        """
        with self._lock:
            return self._pending.get(session_id)

    def keep(
        self, session_id: str, write: PendingWrite[AnalysisT], error: CacheStoreError
    ) -> None:
        """
        Keep an analysis whose write failed with ``error``, dropping the
        oldest beyond the limit with an ERROR.
        """
        with self._lock:
            self._pending[session_id] = write
            self._pending.move_to_end(session_id)
            dropped = []
            while len(self._pending) > self._max_pending:
                dropped.append(self._pending.popitem(last=False)[0])
        self._logger.warning(
            "Could not store the analysis of session %s (%s, code %s); "
            "serving it and keeping it in memory to write later",
            session_id,
            type(error).__name__,
            error.code,
        )
        for lost in dropped:
            self._logger.error(
                "Dropped the unwritten analysis of session %s: more than %d "
                "analyses wait for the database",
                lost,
                self._max_pending,
            )

    def written(
        self, session_id: str, write: PendingWrite[AnalysisT], error: Exception | None
    ) -> bool:
        """
        Record the outcome of writing a pending analysis: ``error`` is
        ``None`` when it was written, else one of ``PENDING_WRITE_ERRORS``.
        Return whether it left memory.
        """
        if isinstance(error, SessionNotFoundError):
            self._logger.warning(
                "Dropped the unwritten analysis of session %s: the session "
                "no longer exists",
                session_id,
            )
        elif error is not None:
            self._logger.warning(
                "Could not write the pending analysis of session %s (%s); "
                "keeping it in memory",
                session_id,
                type(error).__name__,
            )
            return False
        else:
            self._logger.info("Wrote the pending analysis of session %s", session_id)
            self.saved(session_id, write.fingerprint, write.version)
        self.discard(session_id, write)
        return True

    def discard(self, session_id: str, write: PendingWrite[AnalysisT]) -> None:
        """
        Forget the pending write of a session if it is still ``write``.
        """
        with self._lock:
            if self._pending.get(session_id) is write:
                del self._pending[session_id]

    def serve(
        self,
        session_id: str,
        write: PendingWrite[AnalysisT],
        fingerprint: str,
        version: str,
    ) -> AnalysisResult[AnalysisT] | None:
        """
        Return a pending analysis (after its write was tried) as a ``HIT``
        when it matches the request; otherwise forget it and return ``None``.
        """
        if (write.fingerprint, write.version) != (fingerprint, version):
            # The request replaces it: writing it later could overwrite the
            # newer analysis.
            self.discard(session_id, write)
            return None
        self._logger.info(
            "Found analysis in memory for session %s (its database write had failed)",
            session_id,
        )
        return write.result(session_id, CacheStatus.HIT)

    def saved(self, session_id: str, fingerprint: str, version: str) -> None:
        """
        Remember that this cache stored the analysis of a session.
        """
        with self._lock:
            self._saved[session_id] = (fingerprint, version)
            self._saved.move_to_end(session_id)
            while len(self._saved) > MAX_REMEMBERED:
                self._saved.popitem(last=False)

    def hide(self, session_id: str) -> ConfigurationError:
        """
        Remember that a session's read-back found nothing; return the error.
        """
        with self._lock:
            self._hidden.add(session_id)
        return hidden_error(session_id)

    def forget(self, session_id: str | None) -> None:
        """
        Forget what was stored for a session, or for all when ``None``.
        """
        with self._lock:
            if session_id is None:
                self._saved.clear()
                self._hidden.clear()
            else:
                self._saved.pop(session_id, None)
                self._hidden.discard(session_id)

    def suspect_hidden(
        self, session_id: str, fingerprint: str, version: str
    ) -> tuple[bool, bool]:
        """
        Return whether a session is known hidden, and whether a lookup that
        found nothing for it may be hidden: this cache stored an analysis
        with the same fingerprints.

        Another process may have deleted it (``invalidate``), so the caller
        computes again and reads it back after the write, which tells the
        two apart.
        """
        with self._lock:
            hidden = session_id in self._hidden
            suspect = self._saved.get(session_id) == (fingerprint, version)
        return hidden, suspect


def client_kind(client: Any) -> Literal["supabase", "psycopg", "store"] | None:
    """
    Return which library ``client`` comes from, ``"store"`` for an object
    with every method of a store, or ``None``.
    """
    module = type(client).__module__
    if module.startswith(("supabase", "postgrest")):
        return "supabase"
    if module.startswith("psycopg"):
        return "psycopg"
    if all(callable(getattr(client, name, None)) for name in STORE_METHODS):
        return "store"
    return None


@functools.cache
def _claimant_prefix(pid: int) -> str:
    # Keyed by the process id, so that a forked worker names itself.
    return f"{socket.gethostname()}:{pid}:"


def _new_claimant() -> str:
    """
    Return a claimant id that names this host and process, for operators
    reading ``salesai_analysis_claims``, and is unique per call.
    """
    return _claimant_prefix(os.getpid()) + os.urandom(6).hex()


def _stored_within(stored: StoredAnalysis, seconds: float) -> bool:
    return stored.age_seconds is not None and stored.age_seconds <= seconds


def _age_seconds(stored: StoredAnalysis) -> float:
    if stored.age_seconds is not None:
        return max(stored.age_seconds, 0.0)
    if stored.updated_at is None:
        return 0.0

    age = dt.datetime.now(dt.UTC) - stored.updated_at
    return max(age.total_seconds(), 0.0)


def _with_status(
    result: AnalysisResult[AnalysisT], status: CacheStatus
) -> AnalysisResult[AnalysisT]:

    return dataclasses.replace(result, status=status)
