"""
``salesai-cache stats`` over a PostgreSQL URL and through Supabase's API
(respx and the PostgREST emulator on the same database): the counters that
the caches recorded, --since, --price, and keys that are never printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import respx
from postgrest_emulator import ANON_KEY, SERVICE_ROLE_KEY, URL, PostgrestEmulator
from test_cache_behaviour import CountingAnalyzer
from test_cli import add_sessions, backfill, run

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

INSERT = """
    insert into public.salesai_cache_stats (worker, model, analysis_version,
      hits, misses, stale_recomputes, waits, stale_served, prompt_tokens_saved,
      completion_tokens_saved, recorded_at)
    values ('web-1:42', %s, 'v1', %s, %s, 1, %s, 0, %s, %s, %s)
"""


@pytest.fixture
def counters(db: psycopg.Connection[Any]) -> None:
    # gpt-4o-mini: 6 hits + 2 waits saved 8 calls of 1000 prompt and 250
    # completion tokens each.
    db.execute(INSERT, ["gpt-4o-mini", 4, 1, 1, 5000, 1250, "2026-03-01T00:00Z"])
    db.execute(INSERT, ["gpt-4o-mini", 2, 1, 1, 3000, 750, "2026-04-01T00:00Z"])


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "DATABASE_URL",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_SECRET_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def api(database_url: str, environment: pytest.MonkeyPatch) -> Iterator[Any]:
    environment.setenv("SUPABASE_URL", URL)
    environment.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_ROLE_KEY)
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)
        yield emulator
    emulator.close()


# Over a PostgreSQL URL


@pytest.mark.sql
def test_stats_prints_totals(
    database_url: str, counters: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "stats", "--db-url", database_url)
    assert code == 0
    assert (
        "Hits: 6, misses: 2 (stale recomputes: 2), waits: 2, stale served: 0; "
        "served without a model call (hit ratio): 80.0%" in out
    )
    # 8000 * 0.15 / 1e6 + 2000 * 0.60 / 1e6
    assert (
        "Tokens saved: 8000 prompt, 2000 completion; estimated cost saved: "
        "$0.0024 (0 served calls" in out
    )


@pytest.mark.sql
def test_stats_row_per_model(
    database_url: str, counters: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "stats", "--db-url", database_url)
    row = (
        "        6         2       2       2       0         8000         2000"
        "     0.0024  gpt-4o-mini / v1"
    )
    assert row in out.splitlines()


@pytest.mark.sql
def test_stats_since_filters(
    database_url: str, counters: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "stats", "--db-url", database_url, "--since", "2026-03-15")
    assert "Hits: 2, misses: 1" in out
    assert "since 2026-03-15T00:00:00+00:00" in out


@pytest.mark.sql
def test_stats_price_override(
    database_url: str, counters: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(
        capsys, "stats", "--db-url", database_url, "--price", "gpt-4o-mini=1/2"
    )
    # 8000 * 1 / 1e6 + 2000 * 2 / 1e6
    assert "estimated cost saved: $0.0120" in out


@pytest.mark.sql
def test_stats_without_migration_003(
    database_url: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from salesai_cache._local.database import apply_sql

    add_sessions(db, 2)
    apply_sql(db, "migrations/003_add_cache_stats_rollback")
    code, out, _ = run(capsys, "stats", "--db-url", database_url)
    assert code == 0
    assert "apply sql/migrations/003_add_cache_stats.sql" in out
    assert "Sessions: 2, without an analysis: 2" in out


@pytest.mark.parametrize(
    "price", ["gpt-4o", "gpt-4o=1", "=1/2", "gpt-4o=a/2", "gpt-4o=-1/2", "m=inf/1"]
)
def test_stats_invalid_price(
    price: str, environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "stats", "--price", price)
    assert code == 2
    assert f"invalid --price {price!r}" in err


def test_stats_invalid_since(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "stats", "--since", "last tuesday")
    assert code == 2
    assert "invalid --since 'last tuesday'" in err


def test_stats_supabase_needs_settings(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "stats", "--supabase")
    assert code == 2
    assert "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY" in err


# Through Supabase's API


@pytest.mark.sql
def test_stats_api_matches_postgres(
    database_url: str,
    db: psycopg.Connection[Any],
    counters: None,
    api: PostgrestEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_sessions(db, 3)
    backfill(database_url, CountingAnalyzer())
    _, over_postgres, _ = run(capsys, "stats", "--db-url", database_url)

    code, over_api, _ = run(capsys, "stats")

    assert code == 0
    first = f"Supabase: {URL} (key from SUPABASE_SERVICE_ROLE_KEY)"
    assert over_api.splitlines()[0] == first
    assert over_api.splitlines()[1:] == over_postgres.splitlines()[1:]
    assert {request.url.path for request in api.requests} == {
        "/rest/v1/rpc/salesai_cache_stats_summary",
        "/rest/v1/rpc/salesai_analysis_summary",
    }


@pytest.mark.sql
def test_stats_secret_key_variable(
    database_url: str,
    counters: None,
    api: PostgrestEmulator,
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environment.delenv("SUPABASE_SERVICE_ROLE_KEY")
    environment.setenv("SUPABASE_SECRET_KEY", SERVICE_ROLE_KEY)
    code, out, _ = run(capsys, "stats", "--since", "2026-03-15")
    assert code == 0
    assert "Hits: 2, misses: 1" in out


@pytest.mark.sql
def test_stats_supabase_flag_over_url(
    database_url: str,
    counters: None,
    api: PostgrestEmulator,
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environment.setenv("DATABASE_URL", database_url)
    _, out, _ = run(capsys, "stats", "--supabase")
    assert out.startswith("Supabase: ")
    assert "Hits: 6" in out


@pytest.mark.sql
def test_stats_anon_key_refused(
    database_url: str,
    api: PostgrestEmulator,
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environment.setenv("SUPABASE_SERVICE_ROLE_KEY", ANON_KEY)
    code, out, err = run(capsys, "stats")
    assert code == 2
    assert "only the service role may read" in err
    assert ANON_KEY not in out + err


@pytest.mark.sql
@pytest.mark.parametrize("migrated", [True, False])
def test_stats_key_never_printed(
    migrated: bool,
    db: psycopg.Connection[Any],
    api: PostgrestEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not migrated:
        from salesai_cache._local.database import apply_sql

        apply_sql(db, "migrations/003_add_cache_stats_rollback")
    code, out, err = run(capsys, "--log-level", "DEBUG", "stats")
    assert code == (0 if migrated else 2)
    assert SERVICE_ROLE_KEY not in out + err
    if not migrated:
        assert "Apply sql/migrations/003_add_cache_stats.sql" in err


def test_stats_rpc_request(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environment.setenv("SUPABASE_URL", URL)
    environment.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_ROLE_KEY)
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_mocked=True) as router:
        stats = router.post("/rpc/salesai_cache_stats_summary").mock(
            return_value=httpx.Response(200, json=[])
        )
        analyses = router.post("/rpc/salesai_analysis_summary").mock(
            return_value=httpx.Response(200, json=[])
        )
        code, _, _ = run(capsys, "stats", "--since", "2026-05-01T08:00:00+02:00")

    assert code == 0
    request: httpx.Request = stats.calls.last.request
    assert json.loads(request.content) == {"p_since": "2026-05-01T08:00:00+02:00"}
    assert request.headers["Authorization"] == f"Bearer {SERVICE_ROLE_KEY}"
    assert json.loads(analyses.calls.last.request.content) == {}
