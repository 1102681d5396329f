"""
Value types shared by the cache, its stores and its analyzers.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .exceptions import InvalidInputError

__all__ = [
    "AnalysisResult",
    "AnalyzerOutput",
    "CacheStatus",
    "Lookup",
    "StoredAnalysis",
    "TokenUsage",
    "Turn",
    "validate_session_id",
]

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)

_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII
)


class Turn(BaseModel):
    """
    One utterance of a conversation: who spoke and what they said.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    speaker: str = Field(min_length=1)
    text: str


class TokenUsage(BaseModel):
    """
    Tokens that one analyzer call consumed, as reported by the model provider.
    """

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    total_tokens: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class AnalyzerOutput(Generic[AnalysisT]):
    """
    An analysis as the analyzer produced it, with the model and its token usage.
    """

    analysis: AnalysisT
    model: str
    usage: TokenUsage


@dataclass(frozen=True)
class StoredAnalysis:
    """
    One ``salesai_analysis_results`` row as a store returns it.

    ``analysis`` is the ``analysis`` column as a decoded JSON object, or as
    JSON text when the store leaves the parsing to the cache, which
    validates either against the analyzer's output model (text in one pass).
    ``transcript_hash`` and ``analysis_version`` are ``None`` for rows stored
    before migration 002.
    ``age_seconds`` is the time since ``updated_at`` by the database's clock,
    when the query computed it.
    """

    session_id: str
    analysis: dict[str, Any] | str
    model: str
    usage: TokenUsage
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    transcript_hash: str | None = None
    analysis_version: str | None = None
    age_seconds: float | None = None


@dataclass(frozen=True)
class Lookup:
    """
    What ``AnalysisStore.lookup`` found, and whether it took the compute claim.

    ``fresh`` is true when the stored analysis matches the requested
    transcript hash and analysis version. ``claimed`` is true when this
    caller now holds the claim and must compute, save (which releases the
    claim) or release it. ``claim_expires_at`` is when the current claim's
    lease ends, whoever holds it, or ``None`` when there is no claim.
    """

    stored: StoredAnalysis | None
    fresh: bool
    claimed: bool
    claim_expires_at: dt.datetime | None


class CacheStatus(enum.StrEnum):
    """
    How ``get_or_compute`` obtained an analysis.
    """

    HIT = "hit"
    """Read from the database, fresh; the analyzer was not called."""

    MISS = "miss"
    """Computed by the analyzer in this call and stored."""

    STALE = "stale"
    """Read from the database although its transcript or analysis version
    differs from the request, because the caller passed ``allow_stale``."""

    WAITED = "waited"
    """Computed by another caller, in this process or another, while this
    call waited for it."""


@dataclass(frozen=True)
class AnalysisResult(Generic[AnalysisT]):
    """
    An analysis returned by the cache, with where it came from.

    ``usage`` is the token usage stored with the analysis: on a hit, the tokens
    that the cache saved by not calling the analyzer again. ``age_seconds``
    is the time since the analysis was stored, 0 for one computed by this
    call.
    """

    session_id: str
    analysis: AnalysisT
    model: str
    usage: TokenUsage
    status: CacheStatus
    created_at: dt.datetime | None
    age_seconds: float = 0.0
    transcript_hash: str | None = None
    analysis_version: str | None = None

    @property
    def from_cache(self) -> bool:
        """
        Whether this call did not compute the analysis itself.
        """
        return self.status is not CacheStatus.MISS

    @property
    def stale(self) -> bool:
        """
        Whether the analysis was made from another transcript or version.
        """
        return self.status is CacheStatus.STALE


def validate_session_id(session_id: object) -> str:
    """
    Return ``session_id`` as a canonical lowercase UUID string.

    Raises:
        InvalidInputError: ``session_id`` is not a UUID or a UUID string.
    """
    if isinstance(session_id, uuid.UUID):
        return str(session_id)
    if isinstance(session_id, str) and _CANONICAL_UUID.fullmatch(session_id):
        # Already in the form uuid.UUID would return, without parsing it.
        return session_id
    if not isinstance(session_id, str):
        raise InvalidInputError(
            f"invalid session id {session_id!r}: expected a UUID string, "
            f"got {type(session_id).__name__}"
        )
    try:
        return str(uuid.UUID(session_id))
    except ValueError:
        raise InvalidInputError(
            f"invalid session id {session_id!r}: expected a UUID such as "
            "'0b5f6c1e-8d2a-4c2e-9a55-3f1f4f0c7a11'"
        ) from None
