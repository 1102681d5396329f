"""
The operator commands of ``salesai-cache``: sql, migrate, status, verify,
backfill and stats, run through ``main`` on real databases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.types.json import Jsonb
from test_cache_behaviour import TRANSCRIPT, CountingAnalyzer, Verdict

from salesai_cache import AnalyzerOutput, Turn
from salesai_cache.__main__ import main
from salesai_cache._backfill import run_backfill
from salesai_cache._cli import mask_url
from salesai_cache._local.database import apply_sql, create_auth_user
from salesai_cache._sql import migration_names

PASSWORD = "s3cr3t-Pa55word"
COMMANDS = ["sql", "migrate", "status", "verify", "backfill", "stats", "demo"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def with_password(url: str) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


# Help and sql


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0


def test_cli_sql_list(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "sql", "--list")
    assert "migrations/002_add_freshness_and_claims_rollback" in out.split()


def test_cli_sql_prints_file(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "sql", "verify")
    assert "check_name" in out


def test_cli_sql_unknown_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, "sql", "nope")
    assert code == 2


def test_cli_sql_unknown_named(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run(capsys, "sql", "nope")
    assert "'nope'" in err


def test_cli_no_database_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code, _, _ = run(capsys, "status")
    assert code == 2


def test_mask_url_password() -> None:
    assert mask_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"


def test_mask_url_conninfo() -> None:
    assert mask_url("host=h password=pw dbname=d") == "host=h password=*** dbname=d"


def test_mask_url_without_password() -> None:
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"


# migrate and status


@pytest.mark.sql
def test_cli_migrate_legacy_applies_all(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "migrate", "--db-url", bare_database_url)
    applied = [line.split()[1] for line in out.splitlines() if line.startswith("app")]
    assert applied == migration_names()


@pytest.mark.sql
def test_cli_migrate_legacy_records(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(capsys, "migrate", "--db-url", bare_database_url)
    rows = legacy_db.execute(
        "select name from public.salesai_schema_migrations "
        "where applied_by = 'migrate' order by name"
    ).fetchall()
    assert [row[0] for row in rows] == migration_names()


@pytest.mark.sql
def test_cli_migrate_twice_up_to_date(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(capsys, "migrate", "--db-url", bare_database_url)
    _, out, _ = run(capsys, "migrate", "--db-url", bare_database_url)
    assert "Up to date" in out


@pytest.mark.sql
def test_cli_migrate_after_rollback_reapplies(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """
    A rollback file forgets its migration, so migrate applies it again.
    """
    run(capsys, "migrate", "--db-url", bare_database_url)
    apply_sql(legacy_db, "migrations/003_add_cache_stats_rollback")
    apply_sql(legacy_db, "migrations/002_add_freshness_and_claims_rollback")
    _, out, _ = run(capsys, "migrate", "--db-url", bare_database_url)
    assert out.splitlines()[1:] == [
        "applied     migrations/002_add_freshness_and_claims",
        "applied     migrations/003_add_cache_stats",
    ]


@pytest.mark.sql
def test_cli_migrate_dry_run_changes_nothing(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(capsys, "migrate", "--dry-run", "--db-url", bare_database_url)
    row = legacy_db.execute(
        "select to_regclass('public.salesai_analysis_claims')"
    ).fetchone()
    assert row == (None,)


@pytest.mark.sql
def test_cli_migrate_dry_run_lists(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "migrate", "--dry-run", "--db-url", bare_database_url)
    assert out.count("would apply migrations/") == len(migration_names())


@pytest.mark.sql
def test_cli_migrate_after_001_applies_the_rest(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from salesai_cache._local.database import apply_sql

    apply_sql(legacy_db, migration_names()[0])
    _, out, _ = run(capsys, "migrate", "--db-url", bare_database_url)
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "baseline",
        "applied",
        "applied",
    ]


@pytest.mark.sql
def test_cli_migrate_after_002_applies_003_only(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from salesai_cache._local.database import apply_sql

    for name in migration_names()[:2]:
        apply_sql(legacy_db, name)
    _, out, _ = run(capsys, "migrate", "--db-url", bare_database_url)
    assert out.splitlines()[1:] == [
        "baseline    migrations/001_add_conversation_id_and_caching (found in the "
        "database; did record)",
        "baseline    migrations/002_add_freshness_and_claims (found in the "
        "database; did record)",
        "applied     migrations/003_add_cache_stats",
    ]


@pytest.mark.sql
def test_cli_migrate_setup_is_baseline(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "migrate", "--db-url", database_url)
    assert out.count("baseline") == len(migration_names())


@pytest.mark.sql
def test_cli_migrate_setup_applies_nothing(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "migrate", "--db-url", database_url)
    assert "applied" not in out


@pytest.mark.sql
def test_cli_status_found_before_migrate(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "status", "--db-url", database_url)
    assert out.count("found    migrations/") == len(migration_names())


@pytest.mark.sql
def test_cli_status_applied_after_migrate(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate", "--db-url", database_url)
    _, out, _ = run(capsys, "status", "--db-url", database_url)
    assert out.count("applied ") == len(migration_names())


@pytest.mark.sql
def test_cli_status_lists_three_migrations(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate", "--db-url", database_url)
    _, out, _ = run(capsys, "status", "--db-url", database_url)
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["applied", "migrations/001_add_conversation_id_and_caching"],
        ["applied", "migrations/002_add_freshness_and_claims"],
        ["applied", "migrations/003_add_cache_stats"],
    ]


@pytest.fixture
def tampered(
    database_url: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> str:
    run(capsys, "migrate", "--db-url", database_url)
    db.execute(
        "update public.salesai_schema_migrations set checksum = 'abc' where name = %s",
        (migration_names()[0],),
    )
    return database_url


@pytest.mark.sql
def test_cli_status_checksum_mismatch_exits_1(
    tampered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "status", "--db-url", tampered)
    assert code == 1


@pytest.mark.sql
def test_cli_status_checksum_mismatch_shown(
    tampered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "status", "--db-url", tampered)
    assert f"changed  {migration_names()[0]}" in out


@pytest.mark.sql
def test_cli_migrate_checksum_mismatch_refuses(
    tampered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "migrate", "--db-url", tampered)
    assert code == 2


@pytest.mark.sql
def test_cli_migrate_failure_keeps_earlier(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A function named like 002's but returning another type makes 002 fail.
    legacy_db.execute(
        "create function public.salesai_save_analysis(p_session_id uuid, "
        "p_analysis jsonb, p_model text, p_prompt_tokens integer, "
        "p_completion_tokens integer, p_total_tokens integer, "
        "p_transcript_hash text, p_analysis_version text, p_claimant text) "
        "returns integer language sql as 'select 1'"
    )
    run(capsys, "migrate", "--db-url", bare_database_url)
    rows = legacy_db.execute(
        "select name from public.salesai_schema_migrations"
    ).fetchall()
    assert rows == [(migration_names()[0],)]


# verify


@pytest.mark.sql
def test_cli_verify_passes(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "verify", "--db-url", database_url)
    assert code == 0


@pytest.mark.sql
def test_cli_verify_fails_on_bare(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "verify", "--db-url", bare_database_url)
    assert code == 1


@pytest.mark.sql
def test_cli_verify_prints_failures(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "verify", "--db-url", bare_database_url)
    assert "FAIL" in out


@pytest.mark.sql
def test_cli_database_url_from_environment(
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    code, _, _ = run(capsys, "verify")
    assert code == 0


# Secrets


@pytest.mark.sql
@pytest.mark.parametrize(
    "argv",
    [["migrate"], ["status"], ["verify"], ["stats"], ["backfill", "--no-progress"]],
)
def test_cli_password_never_printed(
    argv: list[str],
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", with_password(database_url))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _, out, err = run(capsys, *argv)
    assert PASSWORD not in out + err


def test_cli_password_not_in_connection_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://app:{PASSWORD}@/salesai?host=/nonexistent-socket-dir"
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = run(capsys, "status")
    assert (code, PASSWORD in out + err) == (2, False)


# backfill and stats


def add_sessions(db: psycopg.Connection[Any], count: int) -> list[str]:
    user_id = create_auth_user(db, "rep@example.test")
    rows = db.execute(
        "insert into public.salesai_sessions (user_id, transcript) "
        "select %s, %s from generate_series(1, %s) returning id",
        (user_id, Jsonb(TRANSCRIPT), count),
    ).fetchall()
    return [str(row[0]) for row in rows]


class InterruptingAnalyzer(CountingAnalyzer):
    """
    Raises KeyboardInterrupt on its ``interrupt_at``-th call, as Ctrl-C would.
    """

    def __init__(self, interrupt_at: int | None) -> None:
        super().__init__()
        self.interrupt_at = interrupt_at
        self.attempts = 0

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        self.attempts += 1
        if self.attempts == self.interrupt_at:
            raise KeyboardInterrupt
        return super().analyze(transcript)


def backfill(database_url: str, analyzer: CountingAnalyzer, **options: Any) -> Any:
    return run_backfill(
        lambda: psycopg.connect(database_url, autocommit=True),
        analyzer,
        progress=False,
        **options,
    )


@pytest.mark.sql
def test_backfill_analyses_every_session(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 12)
    analyzer = CountingAnalyzer()
    backfill(database_url, analyzer, concurrency=3)
    assert analyzer.calls == 12


@pytest.mark.sql
def test_backfill_second_run_pays_nothing(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 5)
    backfill(database_url, CountingAnalyzer())
    again = CountingAnalyzer()
    backfill(database_url, again)
    assert again.calls == 0


@pytest.mark.sql
@pytest.mark.parametrize("concurrency", [1, 3])
def test_backfill_resumes_after_interrupt(
    concurrency: int, database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 10)
    first = InterruptingAnalyzer(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        backfill(database_url, first, concurrency=concurrency)
    second = InterruptingAnalyzer(interrupt_at=None)
    backfill(database_url, second, concurrency=concurrency)
    assert first.calls + second.calls == 10


@pytest.mark.sql
def test_backfill_interrupt_stores_earlier(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 10)
    analyzer = InterruptingAnalyzer(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        backfill(database_url, analyzer, concurrency=1)
    row = db.execute("select count(*) from public.salesai_analysis_results").fetchone()
    # Every analysis paid for before the interrupt took effect is stored.
    assert row == (analyzer.calls,)


@pytest.mark.sql
def test_backfill_interrupt_stops_early(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 10)
    analyzer = InterruptingAnalyzer(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        backfill(database_url, analyzer, concurrency=1)
    assert analyzer.calls < 9


@pytest.mark.sql
def test_backfill_recomputes_stale_version(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 4)
    backfill(database_url, CountingAnalyzer())
    report = backfill(database_url, CountingAnalyzer(version="fake-model-1:v2"))
    assert report.stats.stale_recomputes == 4


@pytest.mark.sql
def test_backfill_recomputes_changed_transcript(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    sessions = add_sessions(db, 4)
    backfill(database_url, CountingAnalyzer())
    db.execute(
        "update public.salesai_sessions set transcript = %s where id = %s",
        (Jsonb([*TRANSCRIPT, {"speaker": "Rep", "text": "Thanks."}]), sessions[0]),
    )
    again = CountingAnalyzer()
    backfill(database_url, again)
    assert again.calls == 1


@pytest.mark.sql
def test_backfill_reports_invalid_transcript(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    sessions = add_sessions(db, 2)
    db.execute(
        "update public.salesai_sessions set transcript = '[]' where id = %s",
        (sessions[1],),
    )
    report = backfill(database_url, CountingAnalyzer())
    assert list(report.failed) == [sessions[1]]


@pytest.mark.sql
def test_backfill_rejects_zero_concurrency(database_url: str) -> None:
    with pytest.raises(ValueError, match="concurrency 0"):
        backfill(database_url, CountingAnalyzer(), concurrency=0)


@pytest.mark.sql
def test_cli_backfill_metrics(
    database_url: str,
    db: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    add_sessions(db, 3)
    _, out, _ = run(
        capsys, "backfill", "--analyzer", "metrics", "--db-url", database_url
    )
    assert "analysed now: 3" in out


@pytest.mark.sql
def test_cli_stats_counts_analyses(
    database_url: str,
    db: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_sessions(db, 3)
    backfill(database_url, CountingAnalyzer())
    _, out, _ = run(capsys, "stats", "--db-url", database_url)
    assert "        3          360           90        n/a  fake-model-1" in out


@pytest.mark.sql
def test_cli_stats_sessions_without_analysis(
    database_url: str,
    db: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_sessions(db, 2)
    _, out, _ = run(capsys, "stats", "--db-url", database_url)
    assert "Sessions: 2, without an analysis: 2" in out
