"""
Benchmark of migration 001 on a large legacy table, on an embedded
PostgreSQL.

Builds the schema from before migration 001 (tests/legacy_schema.sql),
fills it in SQL with 1,000,000 analyses of which 10% are duplicates of
another session's analysis, then applies the migration and prints how long
it took (target: under 5 s on 2 cores) and how long it held its lock on
salesai_sessions, as seen from another connection polling pg_locks every
5 ms. The baseline in the same run is a plain ``select count(*)`` of the
filled table.

Run with ``python3 -m nox -s bench`` or ``python bench/migration_001.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg

from salesai_cache._local.database import (
    LocalPostgres,
    apply_sql,
    create_auth_user,
    prepare_supabase_database,
)

LEGACY = Path(__file__).resolve().parent.parent / "tests" / "legacy_schema.sql"
ROWS = 1_000_000
DUPLICATES = ROWS // 10

_FILL = """
insert into public.salesai_sessions (id, user_id, transcript)
select md5(n::text)::uuid, %(user)s, '[{"speaker": "Rep", "text": "Hi"}]'
from generate_series(1, %(sessions)s) as n;
"""
_ANALYSES = """
insert into public.salesai_analysis_results
  (session_id, analysis, model, prompt_tokens, completion_tokens, total_tokens,
   created_at, updated_at)
select md5((case when n > %(sessions)s then n - %(sessions)s else n end)::text)::uuid,
  '{"score": 1}', 'gpt-4o-mini', 100, 20, 120,
  now() - n * interval '1 second', now() - n * interval '1 second'
from generate_series(1, %(rows)s) as n;
"""
_LOCKED = """
select count(*) from pg_locks
where relation = 'public.salesai_sessions'::regclass
  and mode = 'AccessExclusiveLock' and granted
"""


def watch_lock(url: str, stop: threading.Event, seen: list[float]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(_LOCKED).fetchone()
            if row and row[0]:
                seen.append(time.perf_counter())
            time.sleep(0.005)


def main() -> None:
    with LocalPostgres.start() as server:
        prepare_supabase_database(server.url)
        with psycopg.connect(server.url, autocommit=True) as conn:
            for table in ("salesai_analysis_claims", "salesai_analysis_results"):
                conn.execute(f"drop table if exists public.{table} cascade")
            conn.execute("drop table if exists public.salesai_sessions cascade")
            conn.execute(LEGACY.read_text(encoding="utf-8").encode("utf-8"))
            user = create_auth_user(conn, f"b-{uuid.uuid4().hex[:8]}@x.test")
            sizes = {"user": user, "sessions": ROWS - DUPLICATES, "rows": ROWS}
            conn.execute(_FILL, sizes)
            conn.execute(_ANALYSES, sizes)
            conn.execute("vacuum analyze")
            started = time.perf_counter()
            conn.execute("select count(*) from public.salesai_analysis_results")
            count_s = time.perf_counter() - started

            stop = threading.Event()
            seen: list[float] = []
            watcher = threading.Thread(target=watch_lock, args=(server.url, stop, seen))
            watcher.start()
            time.sleep(0.05)
            started = time.perf_counter()
            apply_sql(conn, "migrations/001_add_conversation_id_and_caching")
            migrate_s = time.perf_counter() - started
            stop.set()
            watcher.join()
            left = conn.execute(
                "select count(*) from public.salesai_analysis_results"
            ).fetchone()
    held = (seen[-1] - seen[0]) if seen else 0.0
    print(f"migration 001 on {ROWS:,} analyses, {DUPLICATES:,} duplicates")
    print(f"  count(*) baseline   {count_s:6.2f} s")
    print(f"  migration           {migrate_s:6.2f} s  (target < 5 s)")
    print(f"  ratio to baseline   {migrate_s / count_s:6.1f}x")
    print(
        f"  lock on sessions    {held:6.2f} s held (ACCESS EXCLUSIVE, seen by polling)"
    )
    print(f"  analyses left       {left[0] if left else '?':>9}")


if __name__ == "__main__":
    main()
