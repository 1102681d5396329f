"""
Command line of salesai_cache: ``python -m salesai_cache`` or ``salesai-cache``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["main"]


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
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of the log lines written to stderr (default: INFO)",
    )
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line and return its exit code.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    # The library's own lines at the chosen level, other libraries' (the
    # embedded server's, the HTTP clients') from WARNING up.
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("salesai_cache").setLevel(args.log_level)

    if args.command == "demo":
        from ._demo import run_demo

        try:
            return run_demo(args, sys.stdout)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if hasattr(args, "handler"):
        from ._cli import run_operator_command

        return run_operator_command(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
