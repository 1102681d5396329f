"""
``--log-level`` on either side of the command.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from salesai_cache.__main__ import main

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
    assert (exit_info.value.code, "'LOUD'" in capsys.readouterr().err) == (2, True)
