"""
``--log-level`` on either side of the command, and what the demo writes to
stderr by default and with ``--log-level``.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from salesai_cache.__main__ import FOUND_LINES_SHOWN, FoundLinesHandler, main

COMMANDS = ["sql", "migrate", "status", "verify", "backfill", "stats", "demo"]


@pytest.fixture(autouse=True)
def _restore_library_log_level() -> Iterator[None]:
    library = logging.getLogger("salesai_cache")
    level = library.level
    yield
    library.setLevel(level)


def library_level() -> int:
    return logging.getLogger("salesai_cache").level


# --log-level before or after the command


def test_log_level_before_command(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--log-level", "ERROR", "sql", "--list"])
    assert library_level() == logging.ERROR


def test_log_level_after_command(capsys: pytest.CaptureFixture[str]) -> None:
    main(["sql", "--list", "--log-level", "ERROR"])
    assert library_level() == logging.ERROR


def test_log_level_after_wins(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--log-level", "DEBUG", "sql", "--log-level", "ERROR", "--list"])
    assert library_level() == logging.ERROR


def test_log_level_default_info(capsys: pytest.CaptureFixture[str]) -> None:
    main(["sql", "--list"])
    assert library_level() == logging.INFO


@pytest.mark.parametrize("command", COMMANDS)
def test_log_level_in_command_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--log-level" in capsys.readouterr().out


def test_log_level_invalid_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sql", "--list", "--log-level", "LOUD"])
    assert exit_info.value.code == 2
    assert "'LOUD'" in capsys.readouterr().err


# The demo's stderr


def found(number: int) -> logging.LogRecord:
    return logging.LogRecord(
        "salesai_cache._cache",
        logging.INFO,
        __file__,
        1,
        "Found cached analysis in database for session %s",
        (f"s-{number}",),
        None,
    )


def emit_found(count: int) -> str:
    stream = io.StringIO()
    handler = FoundLinesHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for number in range(count):
        handler.handle(found(number))
    return stream.getvalue()


def test_found_lines_handler_shows_first() -> None:
    lines = emit_found(10).splitlines()
    assert lines[:FOUND_LINES_SHOWN] == [
        f"Found cached analysis in database for session s-{n}"
        for n in range(FOUND_LINES_SHOWN)
    ]


def test_found_lines_handler_one_note() -> None:
    lines = emit_found(10).splitlines()
    assert len(lines) == FOUND_LINES_SHOWN + 1


def test_found_lines_handler_note_says_how() -> None:
    assert "--log-level INFO" in emit_found(10).splitlines()[-1]


def test_found_lines_handler_few_no_note() -> None:
    assert len(emit_found(FOUND_LINES_SHOWN).splitlines()) == FOUND_LINES_SHOWN


def test_found_lines_handler_passes_others() -> None:
    stream = io.StringIO()
    handler = FoundLinesHandler(stream)
    for _ in range(FOUND_LINES_SHOWN + 2):
        handler.handle(found(0))
    handler.handle(logging.makeLogRecord({"msg": "Applied migration", "args": ()}))
    assert stream.getvalue().splitlines()[-1] == "Applied migration"


def run_demo(*options: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "salesai_cache", *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )


def found_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "Found cached analysis in database for" in line
    ]


@pytest.mark.sql
def test_demo_default_few_found_lines() -> None:
    stderr = run_demo("demo", "--limit", "6").stderr
    assert len(found_lines(stderr)) == FOUND_LINES_SHOWN


@pytest.mark.sql
def test_demo_default_note() -> None:
    stderr = run_demo("demo", "--limit", "6").stderr
    assert "further 'Found cached analysis in database' lines" in stderr


@pytest.mark.sql
def test_demo_level_after_all_lines() -> None:
    stderr = run_demo("demo", "--limit", "6", "--log-level", "INFO").stderr
    assert len(found_lines(stderr)) == 6


@pytest.mark.sql
def test_demo_level_before_all_lines() -> None:
    stderr = run_demo("--log-level", "INFO", "demo", "--limit", "6").stderr
    assert len(found_lines(stderr)) == 6


@pytest.mark.sql
def test_demo_level_warning_no_lines() -> None:
    stderr = run_demo("demo", "--limit", "2", "--log-level", "WARNING").stderr
    assert found_lines(stderr) == []
