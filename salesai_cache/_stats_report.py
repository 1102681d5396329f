"""
The report of ``salesai-cache stats``: the counters that the caches recorded
in ``salesai_cache_stats`` and the stored analyses, read over psycopg or
through Supabase's REST API with the same two SQL functions (migration 003).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ._models import TokenUsage
from ._stats import (
    DEFAULT_PRICES,
    PRICES_AS_OF,
    PRICES_SOURCE,
    ModelPrice,
    estimate_cost,
)
from ._stores._rows import STATS_COLUMNS
from .exceptions import InvalidInputError

__all__ = [
    "AnalysisGroup",
    "CounterGroup",
    "StatsReport",
    "merged_prices",
    "parse_price",
    "parse_since",
    "print_report",
    "read_over_postgres",
    "read_over_supabase",
]

logger = logging.getLogger(__name__)

STATS_SUMMARY = "salesai_cache_stats_summary"
ANALYSIS_SUMMARY = "salesai_analysis_summary"
MIGRATION_003 = "sql/migrations/003_add_cache_stats.sql"

# The summary function returns the columns a flush writes, less id and worker.
_COUNTER_COLUMNS = STATS_COLUMNS[2:]
_ANALYSIS_COLUMNS = (
    "model",
    "analysis_version",
    "sessions",
    "analyses",
    "prompt_tokens",
    "completion_tokens",
)
# For a database without migration 003: the stored analyses only, in the
# shape of salesai_analysis_summary().
_LEGACY_ANALYSES = """
select r.model, r.analysis_version, count(s.id), count(r.session_id),
  coalesce(sum(r.prompt_tokens), 0), coalesce(sum(r.completion_tokens), 0)
from public.salesai_sessions as s
left join public.salesai_analysis_results as r on r.session_id = s.id
group by 1, 2 order by 4 desc, 1, 2
"""


@dataclass(frozen=True)
class CounterGroup:
    """
    The counters of every worker for one model and analysis version.
    """

    model: str
    analysis_version: str | None
    hits: int
    misses: int
    stale_recomputes: int
    waits: int
    stale_served: int
    prompt_tokens_saved: int
    completion_tokens_saved: int


@dataclass(frozen=True)
class AnalysisGroup:
    """
    The stored analyses of one model and analysis version; ``model`` is
    ``None`` for the sessions without an analysis.
    """

    model: str | None
    analysis_version: str | None
    sessions: int
    analyses: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class StatsReport:
    """
    The statistics read from the database; ``counters`` is ``None`` when
    migration 003 is not applied.
    """

    counters: list[CounterGroup] | None
    analyses: list[AnalysisGroup]


def parse_price(text: str) -> tuple[str, ModelPrice]:
    """
    Return the model and price of a ``--price MODEL=INPUT/OUTPUT`` option,
    in US dollars per one million tokens.

    Raises:
        ValueError: the text is not of that form, or a price is negative.
    """
    model, equals, prices = text.partition("=")
    input_text, slash, output_text = prices.partition("/")
    expected = (
        "expected MODEL=INPUT/OUTPUT in US dollars per 1M tokens, such as "
        "gpt-4o-mini=0.15/0.60"
    )
    if not (model.strip() and equals and slash):
        raise ValueError(f"invalid --price {text!r}: {expected}")
    try:
        price = ModelPrice(float(input_text), float(output_text))
    except (ValueError, InvalidInputError):
        raise ValueError(f"invalid --price {text!r}: {expected}") from None
    if not all(map(math.isfinite, (price.input_per_million, price.output_per_million))):
        raise ValueError(f"invalid --price {text!r}: {expected}")
    return model.strip(), price


def parse_since(text: str) -> dt.datetime:
    """
    Return the ``--since`` date or time; one without a time zone is UTC.

    Raises:
        ValueError: the text is not an ISO 8601 date or date and time.
    """
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: expected an ISO 8601 date or date and "
            "time, such as 2026-05-01 or 2026-05-01T08:00:00+02:00"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def read_over_postgres(conn: Any, since: dt.datetime | None) -> StatsReport:
    """
    Return the report over a psycopg connection; without migration 003 only
    the stored analyses, with ``counters`` ``None``.
    """
    present = conn.execute(
        "select to_regprocedure('public.salesai_cache_stats_summary(timestamptz)') "
        "is not null and to_regprocedure('public.salesai_analysis_summary()') "
        "is not null"
    ).fetchone()
    if not (present and present[0]):
        rows = conn.execute(_LEGACY_ANALYSES).fetchall()
        return StatsReport(None, [AnalysisGroup(*row) for row in rows])
    counters = conn.execute(
        f"select {', '.join(_COUNTER_COLUMNS)} "
        f"from public.{STATS_SUMMARY}(p_since => %s)",
        (since,),
    ).fetchall()
    analyses = conn.execute(
        f"select {', '.join(_ANALYSIS_COLUMNS)} from public.{ANALYSIS_SUMMARY}()"
    ).fetchall()
    return StatsReport(
        [CounterGroup(*row) for row in counters],
        [AnalysisGroup(*row) for row in analyses],
    )


def read_over_supabase(client: Any, since: dt.datetime | None) -> StatsReport:
    """
    Return the report through PostgREST: two calls of the summary functions
    of migration 003, which only the service role may execute.

    Raises:
        ValueError: a call failed; the message names migration 003 when a
            function is missing. The key never appears in it.
    """
    import httpx
    from postgrest import APIError

    calls: tuple[tuple[str, dict[str, Any]], ...] = (
        (STATS_SUMMARY, {"p_since": since.isoformat() if since else None}),
        (ANALYSIS_SUMMARY, {}),
    )
    replies: list[list[Mapping[str, Any]]] = []
    for function, params in calls:
        try:
            response = client.rpc(function, params).execute()
        except APIError as error:
            raise ValueError(_rpc_error(function, error)) from None
        except httpx.HTTPError as error:
            # The URL of the request carries no key: the key is a header.
            raise ValueError(
                f"calling {function} failed: {type(error).__name__}: {error}; "
                "check SUPABASE_URL and that the project is reachable"
            ) from None
        replies.append(list(response.data or []))
    counters, analyses = replies
    return StatsReport(
        [CounterGroup(*(row[name] for name in _COUNTER_COLUMNS)) for row in counters],
        [AnalysisGroup(*(row[name] for name in _ANALYSIS_COLUMNS)) for row in analyses],
    )


def _rpc_error(function: str, error: Any) -> str:
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or str(error)
    if code in {"PGRST202", "42883"}:
        return (
            f"calling {function} failed ({code}): the function does not exist. "
            f"Apply {MIGRATION_003}; if you applied it just now, reload the "
            "PostgREST schema cache with \"notify pgrst, 'reload schema'\". "
            f"Server message: {message}"
        )
    if code in {"42501", "PGRST301", "PGRST302", "PGRST303"}:
        return (
            f"calling {function} failed ({code}): only the service role may "
            "read the cache's statistics; set SUPABASE_SERVICE_ROLE_KEY (or "
            f"SUPABASE_SECRET_KEY) to the project's secret key. Server message: "
            f"{message}"
        )
    return f"calling {function} failed ({code or 'no error code'}): {message}"


def print_report(
    report: StatsReport,
    out: TextIO,
    *,
    prices: Mapping[str, ModelPrice],
    since: dt.datetime | None,
) -> None:
    """
    Print the recorded counters, their totals and the stored analyses.
    """
    _print_counters(report.counters, out, prices=prices, since=since)
    _print_analyses(report.analyses, out, prices=prices)
    print(
        f"(estimated from list prices of {PRICES_AS_OF}, {PRICES_SOURCE}, "
        "unless --price gives them)",
        file=out,
    )


def _print_counters(
    groups: Sequence[CounterGroup] | None,
    out: TextIO,
    *,
    prices: Mapping[str, ModelPrice],
    since: dt.datetime | None,
) -> None:
    if groups is None:
        print(
            "Hits and misses are not recorded in this database: apply "
            f"{MIGRATION_003} (salesai-cache migrate).",
            file=out,
        )
        return
    period = f" since {since.isoformat()}" if since else ""
    print(f"Recorded by the caches of every process{period}:", file=out)
    print(
        f"{'hits':>9} {'misses':>9} {'stale':>7} {'waits':>7} {'served':>7} "
        f"{'prompt':>12} {'completion':>12} {'est. USD':>10}  "
        "model / analysis version",
        file=out,
    )
    totals = CounterGroup("", None, 0, 0, 0, 0, 0, 0, 0)
    saved_cost = 0.0
    unpriced = 0
    for group in groups:
        usage = TokenUsage(
            prompt_tokens=group.prompt_tokens_saved,
            completion_tokens=group.completion_tokens_saved,
        )
        cost = estimate_cost(group.model, usage, prices)
        saved_cost += cost or 0.0
        served = group.hits + group.waits + group.stale_served
        unpriced += served if cost is None else 0
        shown = "n/a" if cost is None else f"{cost:.4f}"
        print(
            f"{group.hits:>9} {group.misses:>9} {group.stale_recomputes:>7} "
            f"{group.waits:>7} {group.stale_served:>7} "
            f"{group.prompt_tokens_saved:>12} {group.completion_tokens_saved:>12} "
            f"{shown:>10}  {group.model} / {group.analysis_version or '(none)'}",
            file=out,
        )
        totals = _add(totals, group)
    calls = totals.hits + totals.misses + totals.waits + totals.stale_served
    ratio = (calls - totals.misses) / calls if calls else 0.0
    print(
        f"Hits: {totals.hits}, misses: {totals.misses} (stale recomputes: "
        f"{totals.stale_recomputes}), waits: {totals.waits}, stale served: "
        f"{totals.stale_served}; served without a model call (hit ratio): "
        f"{ratio:.1%}",
        file=out,
    )
    print(
        f"Tokens saved: {totals.prompt_tokens_saved} prompt, "
        f"{totals.completion_tokens_saved} completion; estimated cost saved: "
        f"${saved_cost:.4f} ({_count(unpriced, 'served call', 'served calls')} "
        "of models without a price left out)",
        file=out,
    )


def _add(total: CounterGroup, group: CounterGroup) -> CounterGroup:
    return CounterGroup(
        "",
        None,
        total.hits + group.hits,
        total.misses + group.misses,
        total.stale_recomputes + group.stale_recomputes,
        total.waits + group.waits,
        total.stale_served + group.stale_served,
        total.prompt_tokens_saved + group.prompt_tokens_saved,
        total.completion_tokens_saved + group.completion_tokens_saved,
    )


def _print_analyses(
    groups: Sequence[AnalysisGroup],
    out: TextIO,
    *,
    prices: Mapping[str, ModelPrice],
) -> None:
    sessions = sum(group.sessions for group in groups)
    without = sum(group.sessions for group in groups if group.model is None)
    print(f"Sessions: {sessions}, without an analysis: {without}", file=out)
    print(
        f"{'analyses':>9} {'prompt':>12} {'completion':>12} {'est. USD':>10}  "
        "model / analysis version",
        file=out,
    )
    total_cost = 0.0
    unpriced = 0
    for group in groups:
        if group.model is None:
            continue
        usage = TokenUsage(
            prompt_tokens=group.prompt_tokens,
            completion_tokens=group.completion_tokens,
        )
        cost = estimate_cost(group.model, usage, prices)
        if cost is None:
            unpriced += group.analyses
        total_cost += cost or 0.0
        shown = "n/a" if cost is None else f"{cost:.4f}"
        figures = (
            f"{group.analyses:>9} {group.prompt_tokens:>12} "
            f"{group.completion_tokens:>12} {shown:>10}"
        )
        version = group.analysis_version or "(none)"
        print(f"{figures}  {group.model} / {version}", file=out)
    print(
        f"Each view of every stored analysis served from the cache saves about "
        f"${total_cost:.4f} in model calls "
        f"({_count(unpriced, 'analysis', 'analyses')} of models without a price "
        "left out)",
        file=out,
    )


def merged_prices(overrides: Sequence[str] | None) -> dict[str, ModelPrice]:
    """
    Return ``DEFAULT_PRICES`` with the ``--price`` options applied.

    Raises:
        ValueError: an option is invalid, or two give the same model (the
            one that should count is not clear); the message names it.
    """
    prices = dict(DEFAULT_PRICES)
    given: set[str] = set()
    for text in overrides or ():
        model, price = parse_price(text)
        if model in given:
            raise ValueError(
                f"--price gives model {model!r} more than once: pass one price "
                "per model"
            )
        given.add(model)
        prices[model] = price
    return prices


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"
