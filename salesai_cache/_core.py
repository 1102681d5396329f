"""
Helpers shared by AnalysisCache and AsyncAnalysisCache: argument checks, the
conversion of stored rows into results, the "found" log lines and the
detection of the client's library. None of them does I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Iterable
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
from ._transcripts import parse_transcript
from .exceptions import ConfigurationError, InvalidInputError

__all__ = [
    "MAX_REMEMBERED",
    "STORE_METHODS",
    "BatchResult",
    "PendingWrite",
    "build_miss",
    "check_conversation_id",
    "check_durations",
    "check_invalidate",
    "check_max_pending",
    "check_session_ids",
    "client_kind",
    "hidden_error",
    "log_found",
    "parse_stored_transcript",
    "read_stored",
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


def check_durations(**durations: float | None) -> None:
    """
    Raise ``InvalidInputError`` for the first duration that is not positive.
    """
    for name, value in durations.items():
        if value is not None and not value > 0:
            raise InvalidInputError(
                f"invalid {name} {value!r}: expected a positive number of seconds"
            )


def check_invalidate(session_id: object | None, analysis_version: str | None) -> None:
    """
    Raise ``InvalidInputError`` when invalidate is given no filter.
    """
    if session_id is None and analysis_version is None:
        raise InvalidInputError(
            "invalidate needs a session_id, an analysis_version or both; "
            "to delete every analysis, truncate salesai_analysis_results"
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
        InvalidInputError: ``session_ids`` is a string, or an id is not a
            UUID.
    """
    if isinstance(session_ids, (str, bytes)):
        raise InvalidInputError(
            f"invalid session ids {session_ids!r}: expected a list of UUIDs, "
            "not one string"
        )
    return list(dict.fromkeys(validate_session_id(item) for item in session_ids))


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


def _new_claimant() -> str:
    """
    Return a claimant id that names this host and process, for operators
    reading ``salesai_analysis_claims``, and is unique per call.
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


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
