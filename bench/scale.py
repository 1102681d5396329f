"""
Benchmark of hit latency against table size, on an embedded PostgreSQL.

Prints the median latency of a cache hit (``get_or_compute`` of a fresh,
stored analysis, PostgreSQL store) with 1,000 stored analyses and again with
1,000,000, and their ratio (target: at most 1.5x), with the plan of the
lookup's select by session_id (target: an index scan). Rows are generated
in SQL with generate_series.

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


def hit_latency(conn: psycopg.Connection[Any]) -> tuple[float, str]:
    row = conn.execute(
        "select session_id::text from public.salesai_analysis_results "
        "order by random() limit 1"
    ).fetchone()
    assert row is not None
    target = row[0]
    cache = AnalysisCache(conn, ConversationMetricsAnalyzer())
    cache.get_or_compute(target, TRANSCRIPT)
    samples = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(200):
            cache.get_or_compute(target, TRANSCRIPT)
        samples.append((time.perf_counter() - started) / 200)
    plan = conn.execute(
        "explain select * from public.salesai_analysis_results where session_id = %s",
        (target,),
    ).fetchall()
    return statistics.median(samples), plan[0][0]


def main() -> None:
    with LocalPostgres.start() as server:
        prepare_supabase_database(server.url)
        with psycopg.connect(server.url, autocommit=True) as conn:
            analyzer = ConversationMetricsAnalyzer()
            analysis = analyzer.analyze(parse_transcript(TRANSCRIPT)).analysis
            params = {
                "user": create_auth_user(conn, f"b-{uuid.uuid4().hex[:8]}@x.test"),
                "transcript": psycopg.types.json.Jsonb(TRANSCRIPT),
                "analysis": psycopg.types.json.Jsonb(analysis.model_dump(mode="json")),
                "hash": transcript_hash(parse_transcript(TRANSCRIPT)),
                "version": analyzer.analysis_version,
            }
            generate(conn, params, SMALL)
            small, small_plan = hit_latency(conn)
            started = time.perf_counter()
            generate(conn, params, LARGE - SMALL)
            filled = time.perf_counter() - started
            large, large_plan = hit_latency(conn)
    print(f"hit latency by table size (target <= 1.5x; {filled:.0f} s to fill)")
    print(f"  {SMALL:>9} analyses  {small * 1e6:7.0f} us  plan: {small_plan}")
    print(f"  {LARGE:>9} analyses  {large * 1e6:7.0f} us  plan: {large_plan}")
    print(f"  ratio {large / small:5.2f}x")


if __name__ == "__main__":
    main()
