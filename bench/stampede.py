"""
Benchmark of single-flight and round trips, on an embedded PostgreSQL.

Prints, each measured in this run:

- the analyzer calls made when 4 processes with 25 concurrent calls each ask
  for one new session whose analysis takes 1 s (target: 1);
- how much longer than the compute the waiting callers took, as the time
  from the computing caller's return to each waiter's return (target: under
  0.5 s for the slowest);
- the database round trips of a hit and of a miss, for each store (targets:
  1 for a hit, at most 2 besides the analyzer call for a miss). For the
  PostgreSQL store they are counted from libpq's protocol trace (one per
  Query or Sync message); for the Supabase store, as the HTTP requests that
  reach a PostgREST emulator backed by the same server.

Run with ``python3 -m nox -s bench`` or ``python bench/stampede.py``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import respx
import supabase

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from postgrest_emulator import SERVICE_ROLE_KEY, URL, PostgrestEmulator  # noqa: E402
from stampede_worker import CALLS_TABLE_SQL, SlowAnalyzer  # noqa: E402

from salesai_cache import AnalysisCache  # noqa: E402
from salesai_cache._local.database import (  # noqa: E402
    LocalPostgres,
    create_auth_user,
    prepare_supabase_database,
)

PROCESSES = 4
THREADS = 25
COMPUTE_SECONDS = 1.0
TRANSCRIPT = [
    {"speaker": "Rep", "text": "What would make this quarter a success?"},
    {"speaker": "Buyer", "text": "Cutting onboarding time in half."},
]


def new_session(conn: psycopg.Connection[Any], user_id: str) -> str:
    row = conn.execute(
        "insert into public.salesai_sessions (user_id) values (%s) returning id",
        (user_id,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def stampede(url: str, session_id: str) -> tuple[int, list[float]]:
    start_at = time.time() + 3.0
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(TESTS / "stampede_worker.py"),
                f"--url={url}",
                f"--session={session_id}",
                f"--threads={THREADS}",
                f"--seconds={COMPUTE_SECONDS}",
                f"--start-at={start_at}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    results = [
        json.loads(line)
        for worker in workers
        for line in worker.communicate(timeout=120)[0].splitlines()
    ]
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*) from public.stampede_calls").fetchone()
    calls = int(row[0]) if row else -1
    computed = [result["finished"] for result in results if result["status"] == "miss"]
    if len(computed) != 1:
        raise SystemExit(f"expected one computing caller, got {len(computed)}")
    extra = [
        result["finished"] - computed[0]
        for result in results
        if result["status"] != "miss"
    ]
    return calls, extra


class RoundTrips:
    """
    Counts the round trips of a psycopg connection from libpq's trace.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._file = tempfile.NamedTemporaryFile("w+", suffix=".trace")  # noqa: SIM115

    def __enter__(self) -> RoundTrips:
        self._conn.pgconn.trace(self._file.fileno())
        self._conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.pgconn.untrace()

    def count(self) -> int:
        self._file.seek(0)
        messages = [line.split("\t") for line in self._file.read().splitlines()]
        return sum(
            1
            for message in messages
            if len(message) > 2
            and message[0] == "F"
            and message[2].startswith(("Query", "Sync"))
        )


def postgres_round_trips(url: str, user_id: str) -> tuple[int, int]:
    with (
        psycopg.connect(url, autocommit=True) as setup,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        session_id = new_session(setup, user_id)
        cache = AnalysisCache(conn, SlowAnalyzer(url, 0.0))
        with RoundTrips(conn) as miss:
            cache.get_or_compute(session_id, TRANSCRIPT)
        with RoundTrips(conn) as hit:
            cache.get_or_compute(session_id, TRANSCRIPT)
        return hit.count(), miss.count()


def supabase_round_trips(url: str, user_id: str) -> tuple[int, int]:
    emulator = PostgrestEmulator(url)
    try:
        with (
            respx.mock(assert_all_mocked=True) as router,
            psycopg.connect(url, autocommit=True) as setup,
        ):
            route = emulator.install(router)
            session_id = new_session(setup, user_id)
            with warnings.catch_warnings():
                # supabase-py passes options that postgrest-py deprecates.
                warnings.simplefilter("ignore", DeprecationWarning)
                client = supabase.create_client(URL, SERVICE_ROLE_KEY)
            cache = AnalysisCache(client, SlowAnalyzer(url, 0.0))
            counted: Callable[[], int] = lambda: route.call_count  # noqa: E731
            before = counted()
            cache.get_or_compute(session_id, TRANSCRIPT)
            miss = counted() - before
            before = counted()
            cache.get_or_compute(session_id, TRANSCRIPT)
            hit = counted() - before
            return hit, miss
    finally:
        emulator.close()


def main() -> None:
    with LocalPostgres.start() as server:
        prepare_supabase_database(server.url)
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(CALLS_TABLE_SQL)
            user_id = create_auth_user(
                conn, f"bench-{uuid.uuid4().hex[:8]}@example.test"
            )
            session_id = new_session(conn, user_id)

        calls, extra = stampede(server.url, session_id)
        pg_hit, pg_miss = postgres_round_trips(server.url, user_id)
        sb_hit, sb_miss = supabase_round_trips(server.url, user_id)

    print(
        f"stampede: {PROCESSES} processes x {THREADS} calls, "
        f"{COMPUTE_SECONDS:.1f} s compute"
    )
    print(f"  analyzer calls                {calls:>6}   (target 1)")
    print(
        f"  waiters beyond compute, max   {max(extra):>6.3f} s "
        f"({max(extra) / COMPUTE_SECONDS:.2f}x the compute; target < 0.5 s)"
    )
    print(f"  waiters beyond compute, p50   {statistics.median(extra):>6.3f} s")
    print("round trips (hit target 1, miss target <= 2 besides the analyzer)")
    print(f"  postgres  hit {pg_hit}  miss {pg_miss}")
    print(f"  supabase  hit {sb_hit}  miss {sb_miss}")


if __name__ == "__main__":
    main()
