"""
Savings of the cache: in-process counters and estimated model prices.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._models import AnalysisResult, CacheStatus, TokenUsage
from .exceptions import InvalidInputError

__all__ = [
    "DEFAULT_PRICES",
    "PRICES_AS_OF",
    "PRICES_SOURCE",
    "CacheStats",
    "ModelPrice",
    "StatsRecorder",
    "StatsRow",
    "estimate_cost",
    "price_for",
]


@dataclass(frozen=True)
class ModelPrice:
    """
    The price of a model in US dollars per one million tokens.

    Args:
        input_per_million: price of one million prompt tokens.
        output_per_million: price of one million completion tokens.

    Raises:
        InvalidInputError: a price is negative or not a number.
    """

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInputError(
                    f"invalid {name} {value!r}: expected a number of US dollars"
                )
            if not value >= 0:
                raise InvalidInputError(
                    f"invalid {name} {value!r}: expected zero or more US dollars"
                )

    def cost(self, usage: TokenUsage) -> float:
        """
        Return the price of ``usage`` in US dollars.
        """
        return (
            usage.prompt_tokens * self.input_per_million
            + usage.completion_tokens * self.output_per_million
        ) / 1_000_000


PRICES_AS_OF = "2026-05"
PRICES_SOURCE = (
    "OpenAI's standard-tier text token prices, as quoted from "
    "platform.openai.com/docs/pricing by aimodelcalc.pages.dev/guides/"
    "openai-api-pricing.html"
)

# Estimates: list prices as quoted for PRICES_AS_OF, without batch or
# cached-input discounts, for the models whose prices that page gives. Pass
# ``prices=`` to AnalysisCache with the prices of your contract and models.
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o-mini": ModelPrice(0.15, 0.60),
    "gpt-4o": ModelPrice(2.50, 10.00),
}


def price_for(model: str, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """
    Return the price of ``model``, matching the longest name that it starts
    with, so that a dated snapshot such as ``gpt-4o-mini-2024-07-18`` gets
    the price of ``gpt-4o-mini``; ``None`` when no name matches.
    """
    matches = [name for name in prices if model == name or model.startswith(f"{name}-")]
    return prices[max(matches, key=len)] if matches else None


def estimate_cost(
    model: str, usage: TokenUsage, prices: Mapping[str, ModelPrice]
) -> float | None:
    """
    Return the estimated price of ``usage`` on ``model`` in US dollars, or
    ``None`` when ``prices`` has no price for the model.
    """
    price = price_for(model, prices)
    return None if price is None else price.cost(usage)


@dataclass(frozen=True)
class CacheStats:
    """
    A snapshot of what one ``AnalysisCache`` did since it was created.

    Every call of ``get_or_compute`` or ``refresh`` that returns counts once,
    under the status of its result:

    - ``hits``: read fresh from the database (``HIT``);
    - ``misses``: computed by this call (``MISS``), of which
      ``stale_recomputes`` replaced a stored analysis made from another
      transcript or analysis version (refreshes are misses, not stale
      recomputes);
    - ``waits``: computed by another caller while this one waited
      (``WAITED``), in this process or another;
    - ``stale_served``: a stale analysis returned because of
      ``allow_stale`` (``STALE``).

    A hit, a wait and a stale serve each spared one model call, so each adds
    the token usage stored with the analysis it returned to ``saved_usage``,
    and its estimated price to ``saved_cost_usd``: N callers waiting on one
    compute save N calls, and the compute itself saves nothing. Failed calls,
    ``get``, ``get_many`` and ``get_by_conversation`` count nowhere: they
    never call the model. ``unpriced_calls`` counts the saved calls whose
    model has no price, whose cost is left out of ``saved_cost_usd``.
    """

    hits: int = 0
    misses: int = 0
    stale_recomputes: int = 0
    waits: int = 0
    stale_served: int = 0
    saved_usage: TokenUsage = field(default_factory=TokenUsage)
    saved_cost_usd: float = 0.0
    unpriced_calls: int = 0

    @property
    def calls(self) -> int:
        """
        Every counted call: hits, misses, waits and stale serves.
        """
        return self.hits + self.misses + self.waits + self.stale_served

    @property
    def hit_ratio(self) -> float:
        """
        The share of counted calls that did not call the model, 0 without calls.
        """
        if not self.calls:
            return 0.0
        return (self.calls - self.misses) / self.calls

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(
            hits=self.hits + other.hits,
            misses=self.misses + other.misses,
            stale_recomputes=self.stale_recomputes + other.stale_recomputes,
            waits=self.waits + other.waits,
            stale_served=self.stale_served + other.stale_served,
            saved_usage=_add_usage(self.saved_usage, other.saved_usage),
            saved_cost_usd=self.saved_cost_usd + other.saved_cost_usd,
            unpriced_calls=self.unpriced_calls + other.unpriced_calls,
        )


@dataclass(frozen=True)
class StatsRow:
    """
    A row of ``salesai_cache_stats``: the counters of one worker for one
    model and analysis version since its previous flush.

    ``id`` is chosen here, so that a row sent again after a lost reply is
    ignored by the database instead of counted twice. ``analysis_version``
    is ``None`` for stale analyses stored before migration 002.
    """

    model: str
    analysis_version: str | None
    hits: int = 0
    misses: int = 0
    stale_recomputes: int = 0
    waits: int = 0
    stale_served: int = 0
    prompt_tokens_saved: int = 0
    completion_tokens_saved: int = 0
    worker: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def as_record(self) -> dict[str, Any]:
        """
        Return the row as the columns of ``salesai_cache_stats`` to insert.
        """
        return {
            "id": self.id,
            "worker": self.worker,
            "model": self.model,
            "analysis_version": self.analysis_version,
            "hits": self.hits,
            "misses": self.misses,
            "stale_recomputes": self.stale_recomputes,
            "waits": self.waits,
            "stale_served": self.stale_served,
            "prompt_tokens_saved": self.prompt_tokens_saved,
            "completion_tokens_saved": self.completion_tokens_saved,
        }


class StatsRecorder:
    """
    Thread-safe counters behind ``AnalysisCache.stats()``, and the deltas
    per model and analysis version not yet flushed to the database.

    Args:
        prices: price per model; ``DEFAULT_PRICES`` when ``None``.
    """

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        if prices is not None:
            for model, price in prices.items():
                if not isinstance(price, ModelPrice):
                    raise InvalidInputError(
                        f"invalid price {price!r} for model {model!r}: expected "
                        "a ModelPrice"
                    )
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)
        self._lock = threading.Lock()
        self._total = _Tally()
        self._deltas: dict[tuple[str, str | None], _Tally] = {}

    @property
    def prices(self) -> Mapping[str, ModelPrice]:
        """
        The prices the saved cost is estimated with.
        """
        return dict(self._prices)

    def record(self, result: AnalysisResult[Any], *, stale: bool = False) -> None:
        """
        Count one returned call; ``stale`` marks a miss that replaced a
        stale analysis.
        """
        status = result.status
        cost = None
        if status is not CacheStatus.MISS:
            cost = estimate_cost(result.model, result.usage, self._prices)
        # The same counts feed both, so the database sums what stats() shows.
        key = (result.model, result.analysis_version)
        with self._lock:
            self._total.add(status, stale, result.usage, cost)
            delta = self._deltas.get(key)
            if delta is None:
                delta = self._deltas[key] = _Tally()
            delta.add(status, stale, result.usage, cost)

    def take_rows(self, worker: str) -> list[StatsRow]:
        """
        Return the deltas recorded since the previous call as rows of
        ``salesai_cache_stats`` labelled ``worker``, and start new deltas.
        """
        with self._lock:
            deltas, self._deltas = self._deltas, {}
        return [
            StatsRow(
                model=model,
                analysis_version=version,
                hits=delta.hits,
                misses=delta.misses,
                stale_recomputes=delta.stale_recomputes,
                waits=delta.waits,
                stale_served=delta.stale_served,
                prompt_tokens_saved=delta.prompt_tokens,
                completion_tokens_saved=delta.completion_tokens,
                worker=worker,
            )
            for (model, version), delta in deltas.items()
        ]

    def snapshot(self) -> CacheStats:
        """
        Return the counters as they are now.
        """
        with self._lock:
            return self._total.snapshot()


class _Tally:
    """
    Counters bumped in place on every call: cheaper on a hit than building a
    frozen ``CacheStats`` and adding it.
    """

    __slots__ = (
        "completion_tokens",
        "cost_usd",
        "hits",
        "misses",
        "prompt_tokens",
        "stale_recomputes",
        "stale_served",
        "total_tokens",
        "unpriced_calls",
        "waits",
    )

    def __init__(self) -> None:
        self.hits = self.misses = self.stale_recomputes = 0
        self.waits = self.stale_served = self.unpriced_calls = 0
        self.prompt_tokens = self.completion_tokens = self.total_tokens = 0
        self.cost_usd = 0.0

    def add(
        self, status: CacheStatus, stale: bool, usage: TokenUsage, cost: float | None
    ) -> None:
        """
        Count one call as ``CacheStats`` describes; ``cost`` is ``None``
        for a saved call whose model has no price.
        """
        if status is CacheStatus.MISS:
            self.misses += 1
            self.stale_recomputes += int(stale)
            return
        if status is CacheStatus.HIT:
            self.hits += 1
        elif status is CacheStatus.WAITED:
            self.waits += 1
        else:
            self.stale_served += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += cost

    def snapshot(self) -> CacheStats:
        """
        Return the counters as a ``CacheStats``.
        """
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            stale_recomputes=self.stale_recomputes,
            waits=self.waits,
            stale_served=self.stale_served,
            saved_usage=TokenUsage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                total_tokens=self.total_tokens,
            ),
            saved_cost_usd=self.cost_usd,
            unpriced_calls=self.unpriced_calls,
        )


def _add_usage(first: TokenUsage, second: TokenUsage) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        completion_tokens=first.completion_tokens + second.completion_tokens,
        total_tokens=first.total_tokens + second.total_tokens,
    )
