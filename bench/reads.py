"""
Benchmark of reads on an embedded PostgreSQL, each against a baseline
measured in the same run:

- a cache hit (``get_or_compute`` of a stored, fresh analysis) against the
  raw client's own single-row select of the same row, for each store
  (target: at most 1.3x). PostgreSQL through psycopg; Supabase through
  supabase-py and the PostgREST emulator of tests/ on both sides;
- ``get_many`` of 1,000 sessions against 1,000 single ``get`` lookups on
  PostgreSQL (target: at least 4x faster), and the round trips of each for
  both stores (SQL statements sent, HTTP requests).

Run with ``python3 -m nox -s bench`` or ``python bench/reads.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import respx
import supabase
from psycopg.types.json import Jsonb

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from postgrest_emulator import SERVICE_ROLE_KEY, URL, PostgrestEmulator  # noqa: E402

from salesai_cache import AnalysisCache, ConversationMetricsAnalyzer  # noqa: E402
from salesai_cache._local.database import (  # noqa: E402
    LocalPostgres,
    create_auth_user,
    prepare_supabase_database,
)

SESSIONS = 1000
TRANSCRIPT = [
    {"speaker": "Rep", "text": "What would make this quarter a success?"},
    {"speaker": "Buyer", "text": "Cutting onboarding time in half."},
]
ROUNDS = 15


def compare(
    baseline: Callable[[], object], candidate: Callable[[], object], repeat: int
) -> tuple[float, float, float]:
    """
    Time ``repeat`` calls of each, alternating over ROUNDS rounds so that both
    see the same load on a shared machine.

    Returns:
        The median time per call of each, and the median of the per-round
        ratios candidate / baseline.
    """
    base_times, candidate_times, ratios = [], [], []
    for _ in range(ROUNDS):
        pair = []
        for call in (baseline, candidate):
            started = time.perf_counter()
            for _ in range(repeat):
                call()
            pair.append((time.perf_counter() - started) / repeat)
        base_times.append(pair[0])
        candidate_times.append(pair[1])
        ratios.append(pair[1] / pair[0])
    return (
        statistics.median(base_times),
        statistics.median(candidate_times),
        statistics.median(ratios),
    )


def seed(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        user_id = create_auth_user(conn, f"bench-{uuid.uuid4().hex[:8]}@example.test")
        rows = conn.execute(
            "insert into public.salesai_sessions (user_id, transcript) "
            "select %s, %s from generate_series(1, %s) returning id",
            (user_id, Jsonb(TRANSCRIPT), SESSIONS),
        ).fetchall()
        ids = [str(row[0]) for row in rows]
        cache = AnalysisCache(conn, ConversationMetricsAnalyzer())
        for session_id in ids:
            cache.get_or_compute(session_id, TRANSCRIPT)
    return ids


def postgres(url: str, ids: list[str]) -> None:
    raw_sql = (
        "select session_id, analysis, model, prompt_tokens, completion_tokens, "
        "total_tokens, transcript_hash, analysis_version, created_at, updated_at "
        "from public.salesai_analysis_results where session_id = %s"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        cache = AnalysisCache(conn, ConversationMetricsAnalyzer())
        target = ids[SESSIONS // 2]

        def raw() -> object:
            return conn.execute(raw_sql, (target,)).fetchone()

        def hit() -> object:
            return cache.get_or_compute(target, TRANSCRIPT)

        for _ in range(100):
            raw()
            hit()
        raw_s, hit_s, ratio = compare(raw, hit, 300)
        print("cache hit vs raw select (target <= 1.3x)")
        print(
            f"  postgres  raw {raw_s * 1e6:8.0f} us  hit {hit_s * 1e6:8.0f} us  "
            f"ratio {ratio:5.2f}x"
        )

        statements: list[int] = []
        original = conn.cursor

        def counting(*args: Any, **kwargs: Any) -> Any:
            statements.append(1)
            return original(*args, **kwargs)

        conn.cursor = counting  # type: ignore[method-assign]
        cache.get_many(ids)
        many_trips = len(statements)
        statements.clear()
        for session_id in ids:
            cache.get(session_id)
        single_trips = len(statements)
        conn.cursor = original  # type: ignore[method-assign]

        many_s, single_s, speedup = compare(
            lambda: cache.get_many(ids), lambda: [cache.get(i) for i in ids], 1
        )
        print(f"get_many of {SESSIONS} vs {SESSIONS} single gets (target >= 4x)")
        print(
            f"  postgres  single {single_s * 1e3:8.1f} ms  many {many_s * 1e3:8.1f} ms"
            f"  speedup {speedup:5.1f}x  round trips {single_trips} vs "
            f"{many_trips}"
        )


def supabase_side(url: str, ids: list[str]) -> None:
    emulator = PostgrestEmulator(url)
    try:
        with respx.mock(assert_all_mocked=True) as router:
            emulator.install(router)
            client = supabase.create_client(URL, SERVICE_ROLE_KEY)
            cache = AnalysisCache(client, ConversationMetricsAnalyzer())
            target = ids[SESSIONS // 2]

            def raw() -> object:
                return (
                    client.table("salesai_analysis_results")
                    .select(
                        "session_id,analysis,model,prompt_tokens,completion_tokens,"
                        "total_tokens,transcript_hash,analysis_version,created_at,"
                        "updated_at"
                    )
                    .eq("session_id", target)
                    .limit(1)
                    .execute()
                )

            def hit() -> object:
                return cache.get_or_compute(target, TRANSCRIPT)

            for _ in range(20):
                raw()
                hit()
            raw_s, hit_s, ratio = compare(raw, hit, 50)
            print(
                f"  supabase  raw {raw_s * 1e6:8.0f} us  hit {hit_s * 1e6:8.0f} us  "
                f"ratio {ratio:5.2f}x"
            )
            emulator.requests.clear()
            cache.get_many(ids)
            many_trips = len(emulator.requests)
            emulator.requests.clear()
            for session_id in ids:
                cache.get(session_id)
            single_trips = len(emulator.requests)
            print(
                f"  supabase  round trips {single_trips} single vs {many_trips} "
                "get_many (URLs <= 8 KB)"
            )
    finally:
        emulator.close()


def main() -> None:
    # supabase-py passes options that postgrest-py deprecates.
    warnings.simplefilter("ignore", DeprecationWarning)
    with LocalPostgres.start() as server:
        prepare_supabase_database(server.url)
        ids = seed(server.url)
        postgres(server.url, ids)
        supabase_side(server.url, ids)


if __name__ == "__main__":
    main()
