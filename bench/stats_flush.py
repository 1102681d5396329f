"""
Benchmark of flushing the cache's counters (migration 003) on an embedded
PostgreSQL, against a baseline measured in the same run: hits of a cache
that never flushes automatically (``stats_flush_interval=None``).

- round trips of 1,000 hits with the default interval (60 s) against the
  baseline (target: no more, because a hit between flushes only reads the
  clock);
- the median latency of a hit with the default interval, and with a flush
  after every call, against the baseline (target for the default: at most
  1.1x).

Run with ``python3 -m nox -s bench`` or ``python bench/stats_flush.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from stampede import RoundTrips, new_session  # noqa: E402
from stampede_worker import CALLS_TABLE_SQL, SlowAnalyzer  # noqa: E402

from salesai_cache import AnalysisCache  # noqa: E402
from salesai_cache._local.database import (  # noqa: E402
    LocalPostgres,
    create_auth_user,
    prepare_supabase_database,
)

HITS = 1_000
TRANSCRIPT = [
    {"speaker": "Rep", "text": "What would make this quarter a success?"},
    {"speaker": "Buyer", "text": "Cutting onboarding time in half."},
]
# Smaller than any gap between two calls: every call flushes.
EVERY_CALL = 1e-9


def hits(url: str, session_id: str, interval: float | None) -> tuple[int, float]:
    """
    Return the round trips of HITS hits and the median seconds of one.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        cache: AnalysisCache[Any] = AnalysisCache(
            conn, SlowAnalyzer(url, 0.0), stats_flush_interval=interval
        )
        cache.get_or_compute(session_id, TRANSCRIPT)
        durations = []
        with RoundTrips(conn) as trips:
            for _ in range(HITS):
                started = time.perf_counter()
                cache.get_or_compute(session_id, TRANSCRIPT)
                durations.append(time.perf_counter() - started)
        cache.close()
        return trips.count(), statistics.median(durations)


def main() -> None:
    with LocalPostgres.start() as server:
        prepare_supabase_database(server.url)
        with psycopg.connect(server.url, autocommit=True) as setup:
            setup.execute(CALLS_TABLE_SQL)
            user_id = create_auth_user(setup, "bench@example.test")
            session_id = new_session(setup, user_id)
        base_trips, base_time = hits(server.url, session_id, None)
        default_trips, default_time = hits(server.url, session_id, 60.0)
        every_trips, every_time = hits(server.url, session_id, EVERY_CALL)
    print(f"round trips of {HITS} hits (target: default = baseline)")
    print(f"  baseline (no automatic flush) {base_trips}")
    print(f"  default interval (60 s)       {default_trips}")
    print(f"  flush after every call        {every_trips}")
    print("median hit latency against the baseline (target: default <= 1.1x)")
    print(f"  baseline                      {base_time * 1e6:8.0f} us")
    print(f"  default interval (60 s)       {default_time / base_time:8.2f}x")
    print(f"  flush after every call        {every_time / base_time:8.2f}x")


if __name__ == "__main__":
    main()
