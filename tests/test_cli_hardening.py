"""
What a new user of ``salesai-cache`` runs into: passwords in error messages,
a reader that stops reading, a database without the tables, unclear
messages about options, an interrupted backfill and misaligned output.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_cli import InterruptingAnalyzer, add_sessions, backfill

import salesai_cache
from salesai_cache.__main__ import main
from salesai_cache._cli import scrub, url_secrets
from salesai_cache._local.database import apply_sql
from salesai_cache._sql import migration_names

NO_SERVER = "host=/nonexistent-socket-dir"
# The subprocesses import the package that the tests import.
SUBPROCESS_ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(salesai_cache.__file__).resolve().parents[1]),
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_usage_error(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[object, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# Passwords: as written and percent-decoded, in the userinfo, a query
# parameter or a conninfo keyword, never printed.

SECRET_URLS = {
    "userinfo-invalid-escape": ("postgresql://root:S3cret%PW@/x", ["S3cret%PW"]),
    "query-invalid-escape": ("postgresql://root@/x?password=S3cret%zz", ["S3cret%zz"]),
    "conninfo": (f"password=S3cret%zz {NO_SERVER} dbname=x", ["S3cret%zz"]),
    "conninfo-quoted": (f"password='S3c ret' {NO_SERVER} dbname=x", ["S3c ret"]),
    "userinfo-encoded": (
        f"postgresql://root:S3cret%41bc@/x?{NO_SERVER}",
        ["S3cret%41bc", "S3cretAbc"],
    ),
    "query-encoded": (
        f"postgresql://root@/x?password=S3cret%2Fx&{NO_SERVER}",
        ["S3cret%2Fx", "S3cret/x"],
    ),
}


@pytest.mark.parametrize("stream", ["out", "err"])
@pytest.mark.parametrize("form", sorted(SECRET_URLS))
def test_cli_password_form_not_printed(
    form: str, stream: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url, secrets = SECRET_URLS[form]
    code, out, err = run(capsys, "verify", "--db-url", url)
    shown = out if stream == "out" else err
    assert code == 2
    assert [s for s in secrets if s in shown] == []


@pytest.mark.parametrize("form", sorted(SECRET_URLS))
def test_cli_password_form_from_environment(
    form: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, secrets = SECRET_URLS[form]
    monkeypatch.setenv("DATABASE_URL", url)
    _, out, err = run(capsys, "status")
    assert [s for s in secrets if s in out + err] == []


def test_url_secrets_password_with_at() -> None:
    url = "postgresql://u:p@ss@h/d"
    assert scrub(url, url_secrets(url)) == "postgresql://u:***@h/d"


def test_url_secrets_conninfo_escaped_quote() -> None:
    assert "it's" in url_secrets(r"host=h password='it\'s' dbname=d")


def test_url_secrets_without_password() -> None:
    assert url_secrets("postgresql://u@h/d?sslmode=require") == set()


def test_cli_unexpected_error_scrubbed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(args: argparse.Namespace, out: Any) -> int:
        raise RuntimeError(f"boom near {args.db_url.partition(':')[2]}")

    monkeypatch.setattr("salesai_cache._cli._cmd_verify", fail)
    # The handler is bound when the parser is built, after the patch.
    code, _, err = run(capsys, "verify", "--db-url", "postgresql://u:S3cretPW@h/d")
    assert code == 2
    assert "S3cretPW" not in err
    assert "RuntimeError" in err


# A reader that closes the pipe early, as "| head -1" does


def run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    read_end, write_end = os.pipe()
    # Closed before the command writes: its first write fails.
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "salesai_cache", "--log-level", "WARNING", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
            env=SUBPROCESS_ENV,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [["sql", "setup"], ["sql", "--list"]])
def test_cli_closed_stdout_exit_141(argv: list[str]) -> None:
    result = run_into_closed_pipe(*argv)
    assert result.returncode == 141
    assert result.stderr == ""


@pytest.mark.sql
@pytest.mark.parametrize("command", ["verify", "stats", "status"])
def test_cli_closed_stdout_database_commands(command: str, database_url: str) -> None:
    result = run_into_closed_pipe(command, "--db-url", database_url)
    assert result.returncode == 141
    assert result.stderr == ""


def test_cli_reader_stops_after_one_line() -> None:
    command = [sys.executable, "-m", "salesai_cache", "sql", "setup"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SUBPROCESS_ENV,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.readline()
        process.stdout.close()
        err = process.stderr.read()
        code = process.wait(timeout=120)
    # The file fits the pipe's buffer, so the write may succeed: either way
    # no traceback.
    assert code in (0, 141)
    assert "Traceback" not in err
    assert "Exception" not in err


# A database without the tables of salesai-cache


@pytest.mark.sql
def test_migrate_bare_exits_2(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "migrate", "--db-url", bare_database_url)
    assert code == 2


@pytest.mark.sql
def test_migrate_bare_says_setup(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = run(capsys, "migrate", "--db-url", bare_database_url)
    assert "public.salesai_sessions" in err
    assert "salesai-cache sql setup" in err


@pytest.mark.sql
def test_migrate_bare_changes_nothing(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate", "--db-url", bare_database_url)
    with psycopg.connect(bare_database_url) as conn:
        row = conn.execute(
            "select to_regclass('public.salesai_schema_migrations')"
        ).fetchone()
    assert row == (None,)


@pytest.mark.sql
def test_migrate_dry_run_bare_promises_nothing(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "migrate", "--dry-run", "--db-url", bare_database_url)
    assert code == 2
    assert "would apply" not in out
    assert "salesai-cache sql setup" in err


@pytest.mark.sql
def test_status_bare_says_setup(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "status", "--db-url", bare_database_url)
    assert code == 0
    assert "salesai-cache sql setup" in out


@pytest.mark.sql
def test_status_legacy_no_setup_note(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "status", "--db-url", bare_database_url)
    assert "sql setup" not in out


@pytest.mark.sql
def test_migrate_failure_names_file(
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
    code, _, err = run(capsys, "migrate", "--db-url", bare_database_url)
    assert code == 2
    assert f"sql/{migration_names()[1]}.sql" in err


# Options checked before anything is printed or connected


@pytest.mark.parametrize("command", ["backfill", "demo"])
def test_cli_openai_without_key(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"postgresql:///x?{NO_SERVER}")
    code, out, err = run(capsys, command, "--analyzer", "openai")
    assert code == 2
    assert out == ""
    assert err == "error: --analyzer openai needs OPENAI_API_KEY in the environment\n"


@pytest.mark.parametrize("value", ["0", "-1", "four"])
def test_backfill_concurrency_rejected_first(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_usage_error(
        capsys, "backfill", "--db-url", f"postgresql:///x?{NO_SERVER}",
        "--concurrency", value,
    )  # fmt: skip
    assert code == 2
    assert out == ""
    assert f"--concurrency: invalid value {value!r}" in err


def test_demo_data_dir_parent_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "no" / "such" / "dir"
    code, _, err = run(
        capsys, "demo", "--analyzer", "metrics", "--data-dir", str(data_dir)
    )
    assert code == 2
    assert "--data-dir" in err
    assert str(data_dir) in err


def test_demo_data_dir_is_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_file = tmp_path / "pgdata"
    data_file.write_text("", encoding="utf-8")
    code, _, err = run(
        capsys, "demo", "--analyzer", "metrics", "--data-dir", str(data_file)
    )
    assert code == 2
    assert f"--data-dir {str(data_file)!r}" in err


@pytest.mark.parametrize(
    "command", ["migrate", "status", "verify", "backfill", "stats"]
)
def test_cli_empty_db_url_rejected(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql:///x?{NO_SERVER}")
    code, out, err = run_usage_error(capsys, command, "--db-url", "")
    assert code == 2
    assert out == ""
    assert "argument --db-url: empty value" in err


def test_stats_empty_since_rejected(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql:///x?{NO_SERVER}")
    code, out, err = run(capsys, "stats", "--since", "")
    assert code == 2
    assert out == ""
    assert "invalid --since ''" in err


def test_stats_repeated_price_rejected(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql:///x?{NO_SERVER}")
    code, out, err = run(capsys, "stats", "--price", "M=1/2", "--price", "M=3/4")
    assert code == 2
    assert out == ""
    assert "--price gives model 'M' more than once" in err


def test_stats_distinct_prices_accepted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql:///x?{NO_SERVER}")
    _, _, err = run(capsys, "stats", "--price", "M=1/2", "--price", "N=3/4")
    assert "--price" not in err


# An interrupted backfill reports what it stored


@pytest.fixture
def interrupted_backfill(
    database_url: str,
    db: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, str]:
    add_sessions(db, 10)

    def make_analyzer(args: argparse.Namespace) -> InterruptingAnalyzer:
        args.analyzer_name, args.analyzer_detail = "counting", "test"
        return InterruptingAnalyzer(interrupt_at=4)

    monkeypatch.setattr("salesai_cache._demo._make_analyzer", make_analyzer)
    code, _, err = run(
        capsys, "backfill", "--db-url", database_url, "--concurrency", "1",
        "--no-progress",
    )  # fmt: skip
    return code, err


@pytest.mark.sql
def test_backfill_interrupt_exit_130(interrupted_backfill: tuple[int, str]) -> None:
    assert interrupted_backfill[0] == 130


@pytest.mark.sql
def test_backfill_interrupt_counts_stored(
    interrupted_backfill: tuple[int, str], db: psycopg.Connection[Any]
) -> None:
    row = db.execute("select count(*) from public.salesai_analysis_results").fetchone()
    assert row is not None
    assert f"analysed and stored {row[0]} of 10 sessions" in interrupted_backfill[1]


@pytest.mark.sql
def test_backfill_interrupt_says_resume(interrupted_backfill: tuple[int, str]) -> None:
    assert "run the command again to resume" in interrupted_backfill[1]


# Output


@pytest.mark.sql
def test_stats_one_analysis_singular(
    database_url: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    add_sessions(db, 1)
    backfill(database_url, InterruptingAnalyzer(interrupt_at=None))
    _, out, _ = run(capsys, "stats", "--db-url", database_url)
    assert "(1 analysis of models without a price left out)" in out


@pytest.mark.sql
def test_stats_served_calls_plural(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "stats", "--db-url", database_url)
    assert "(0 served calls of models" in out


@pytest.mark.sql
def test_status_dates_aligned(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    apply_sql(legacy_db, migration_names()[0])
    run(capsys, "migrate", "--db-url", bare_database_url)
    _, out, _ = run(capsys, "status", "--db-url", bare_database_url)
    columns = {
        match.start()
        for line in out.splitlines()
        if (match := re.search(r"  \d{4}-\d\d-\d\d ", line))
    }
    assert len(columns) == 1


@pytest.mark.sql
def test_migrate_output_aligned(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    apply_sql(legacy_db, migration_names()[0])
    _, out, _ = run(capsys, "migrate", "--dry-run", "--db-url", bare_database_url)
    lines = [line for line in out.splitlines() if "migrations/" in line]
    columns = {line.index("migrations/") for line in lines}
    assert len(columns) == 1
