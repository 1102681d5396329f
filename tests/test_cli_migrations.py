"""
What ``status`` and ``migrate`` tell an operator about migrations that are in
the database but not recorded, and about applied files that changed.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from salesai_cache.__main__ import main
from salesai_cache._local.database import apply_sql
from salesai_cache._migrate import describe_changed, migration_states
from salesai_cache._sql import migration_names

pytestmark = pytest.mark.sql


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--log-level", "WARNING", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def statuses(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if "migrations/" in line]


# status on a database set up with setup.sql, a bare one and a half-migrated one


def test_status_setup_shows_found(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "status", "--db-url", database_url)
    assert statuses(out) == ["found"] * len(migration_names())


def test_status_setup_hints_migrate(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "status", "--db-url", database_url)
    assert "run 'salesai-cache migrate' to record them" in out


def test_status_setup_exits_0(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "status", "--db-url", database_url)
    assert code == 0


def test_status_bare_all_pending(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "status", "--db-url", bare_database_url)
    assert statuses(out) == ["pending"] * len(migration_names())


def test_status_bare_no_record_hint(
    bare_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "status", "--db-url", bare_database_url)
    assert "to record them" not in out


def test_status_half_migrated(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    apply_sql(legacy_db, migration_names()[0])
    _, out, _ = run(capsys, "status", "--db-url", bare_database_url)
    assert statuses(out) == ["found"] + ["pending"] * (len(migration_names()) - 1)


def test_status_half_migrated_matches_dry_run(
    legacy_db: psycopg.Connection[Any],
    bare_database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """
    What status calls found is what migrate records as baseline.
    """
    apply_sql(legacy_db, migration_names()[0])
    _, out, _ = run(capsys, "migrate", "--dry-run", "--db-url", bare_database_url)
    baseline = [line.split()[1] for line in out.splitlines() if "baseline" in line]
    found = [
        state.name for state in migration_states(legacy_db) if state.status == "found"
    ]
    assert found == baseline


def test_status_after_migrate_applied(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "migrate", "--db-url", database_url)
    _, out, _ = run(capsys, "status", "--db-url", database_url)
    assert statuses(out) == ["applied"] * len(migration_names())


def test_status_reads_only(
    database_url: str, db: psycopg.Connection[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "status", "--db-url", database_url)
    row = db.execute(
        "select to_regclass('public.salesai_schema_migrations')"
    ).fetchone()
    assert row == (None,)


# migrate when an applied migration's file changed


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


def test_migrate_changed_names_file(
    tampered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = run(capsys, "migrate", "--db-url", tampered)
    assert f"applied migration {migration_names()[0]} has changed" in err


def test_migrate_changed_prints_no_list(
    tampered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = run(capsys, "migrate", "--db-url", tampered)
    assert "['" not in err


def test_describe_changed_one() -> None:
    assert describe_changed(["migrations/001_a"]) == (
        "the file of applied migration migrations/001_a has changed since it "
        "was applied; compare it with 'salesai-cache sql migrations/001_a' "
        "and the database before migrating"
    )


def test_describe_changed_several() -> None:
    message = describe_changed(["m/001", "m/002", "m/003"])
    assert message.startswith(
        "the files of applied migrations m/001, m/002 and m/003 have changed"
    )
