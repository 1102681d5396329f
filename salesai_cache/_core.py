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
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ._models import (
    AnalysisResult,
    AnalyzerOutput,
    CacheStatus,
    StoredAnalysis,
    Turn,
)
from ._transcripts import parse_transcript
from .exceptions import InvalidInputError

__all__ = [
    "STORE_METHODS",
    "build_miss",
    "check_conversation_id",
    "check_durations",
    "check_invalidate",
    "client_kind",
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
    return conversation_id


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
