"""
Benchmark of hit latency against table size, on an embedded PostgreSQL.

Prints the median latency of a cache hit (``get_or_compute`` of a fresh,
stored analysis, PostgreSQL store) in a database of 1,000 stored analyses and
in one of 1,000,000 on the same server, measured in alternating rounds, their
ratio (target: at most 1.5x), and the plan of the cache's lookup statement
(target: an index scan). Rows are generated in SQL with generate_series.

Run with ``python3 -m nox -s bench`` or ``python bench/scale.py``.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import psycopg

from salesai_cache import AnalysisCache, ConversationMetricsAnalyzer
from salesai_cache._keys import transcript_hash
from salesai_cache._local.database import (
    LocalPostgres,
    create_auth_user,
    create_database,
    prepare_supabase_database,
)
from salesai_cache._transcripts import parse_transcript

TRANSCRIPT = [
    {"speaker": "Rep", "text": "What would make this quarter a success?"},
    {"speaker": "Buyer", "text": "Cutting onboarding time in half."},
]
SMALL = 1_000
LARGE = 1_000_000

_GENERATE = """
with new_sessions as (
  insert into public.salesai_sessions (user_id, transcript)
  select %(user)s, %(transcript)s from generate_series(1, %(count)s)
  returning id
)
insert into public.salesai_analysis_results
  (session_id, analysis, model, prompt_tokens, completion_tokens, total_tokens,
   transcript_hash, analysis_version)
select id, %(analysis)s, 'metrics', 0, 0, 0, %(hash)s, %(version)s
from new_sessions
"""


def generate(conn: psycopg.Connection[Any], params: dict[str, Any], count: int) -> None:
    conn.execute(_GENERATE, {**params, "count": count})
    conn.execute("analyze public.salesai_sessions, public.salesai_analysis_results")


ROUNDS = 15


def random_session(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "select session_id::text from public.salesai_analysis_results "
        "order by random() limit 1"
    ).fetchone()
    assert row is not None
    return str(row[0])


def lookup_plan(conn: psycopg.Connection[Any], session_id: str) -> str:
    """
    Return the plan node that reads the stored analysis in the cache's own
    lookup statement.
    """
    from salesai_cache._stores._rows import lookup_params
    from salesai_cache._stores.postgres import _LOOKUP

    params = lookup_params(
        session_id,
        transcript_hash(parse_transcript(TRANSCRIPT)),
        ConversationMetricsAnalyzer().analysis_version,
        "bench",
        30.0,
        False,
    )
    rows = conn.execute(b"explain " + _LOOKUP, params).fetchall()
    return next(str(row[0]).strip("-> ") for row in rows if "Scan" in str(row[0]))


def main() -> None:
    with LocalPostgres.start() as server:
        urls = {}
        for count in (SMALL, LARGE):
            url = create_database(server.url, f"salesai_scale_{count}")
            prepare_supabase_database(url)
            urls[count] = url
        started = time.perf_counter()
        connections: dict[int, psycopg.Connection[Any]] = {}
        for count, url in urls.items():
            conn = psycopg.connect(url, autocommit=True)
            connections[count] = conn
            analyzer = ConversationMetricsAnalyzer()
            analysis = analyzer.analyze(parse_transcript(TRANSCRIPT)).analysis
            generate(
                conn,
                {
                    "user": create_auth_user(conn, f"b-{uuid.uuid4().hex[:8]}@x.test"),
                    "transcript": psycopg.types.json.Jsonb(TRANSCRIPT),
                    "analysis": psycopg.types.json.Jsonb(
                        analysis.model_dump(mode="json")
                    ),
                    "hash": transcript_hash(parse_transcript(TRANSCRIPT)),
                    "version": analyzer.analysis_version,
                },
                count,
            )
            conn.execute("vacuum analyze public.salesai_analysis_results")
        filled = time.perf_counter() - started
        # The two sizes alternate round by round, so that both see the same
        # load on a shared machine.
        calls = {}
        for count, conn in connections.items():
            cache = AnalysisCache(conn, ConversationMetricsAnalyzer())
            target = random_session(conn)
            calls[count] = (cache, target)
            for _ in range(100):
                cache.get_or_compute(target, TRANSCRIPT)
        samples: dict[int, list[float]] = {SMALL: [], LARGE: []}
        for _ in range(ROUNDS):
            for count, (cache, target) in calls.items():
                begun = time.perf_counter()
                for _ in range(200):
                    cache.get_or_compute(target, TRANSCRIPT)
                samples[count].append((time.perf_counter() - begun) / 200)
        ratios = [
            large / small
            for small, large in zip(samples[SMALL], samples[LARGE], strict=True)
        ]
        plans = {
            count: lookup_plan(conn, calls[count][1])
            for count, conn in connections.items()
        }
        for conn in connections.values():
            conn.close()
    print(f"hit latency by table size (target <= 1.5x; {filled:.0f} s to fill)")
    for count in (SMALL, LARGE):
        median = statistics.median(samples[count])
        print(f"  {count:>9} analyses  {median * 1e6:7.0f} us  plan: {plans[count]}")
    print(f"  ratio {statistics.median(ratios):5.2f}x (median of per-round ratios)")


if __name__ == "__main__":
    main()
