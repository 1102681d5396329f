"""
The operator commands of ``salesai-cache``: sql, migrate, status, verify,
backfill and stats.

Database options: ``--db-url`` or ``DATABASE_URL``. Secrets are read from the
environment and never printed: URLs are shown with the password masked.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._sql import list_sql_files, read_sql

__all__ = ["add_operator_commands", "mask_url"]

logger = logging.getLogger(__name__)

# Exit codes: 1 when a check fails, 2 for bad input or a failed command.
_CHECK_FAILED = 1
_ERROR = 2

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/\s]*@")
_PASSWORD_PARAM = re.compile(r"(?P<head>password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """
    Return a database URL or connection string with its password as ``***``.
    """
    masked = _PASSWORD_IN_URL.sub(r"\g<head>***@", url)
    return _PASSWORD_PARAM.sub(r"\g<head>***", masked)


def _db_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db-url",
        default=None,
        metavar="URL",
        help="PostgreSQL URL of the database, as its owner (default: the "
        "DATABASE_URL environment variable; prefer it, so that the password "
        "stays out of the shell history)",
    )


def add_operator_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """
    Add the operator commands to the ``salesai-cache`` parser.
    """
    sql = commands.add_parser(
        "sql",
        help="print a packaged SQL file",
        description="Print a SQL file shipped with the package, such as setup, "
        "policies, verify or a migration, to paste into Supabase's SQL editor.",
    )
    sql.add_argument("name", nargs="?", help="the file, e.g. setup or policies")
    sql.add_argument("--list", action="store_true", help="list the file names")
    sql.set_defaults(handler=_cmd_sql)

    migrate = commands.add_parser(
        "migrate",
        help="apply pending migrations",
        description="Apply the pending migrations in order, each in its own "
        "transaction, and record them in public.salesai_schema_migrations. A "
        "database without records (set up with setup.sql, or migrated by hand) "
        "is recognised by the objects each migration creates, which are "
        "recorded as applied without running them.",
    )
    _db_url_option(migrate)
    migrate.add_argument(
        "--dry-run", action="store_true", help="list what would happen; change nothing"
    )
    migrate.set_defaults(handler=_cmd_migrate)

    status = commands.add_parser(
        "status",
        help="show applied and pending migrations",
        description="List each migration as applied, pending, changed (its "
        "file differs from the one applied) or found (its objects exist, as "
        "after setup.sql, but it is not recorded yet: migrate records it "
        "without running it); exit 1 if one changed.",
    )
    _db_url_option(status)
    status.set_defaults(handler=_cmd_status)

    verify = commands.add_parser(
        "verify",
        help="run sql/verify.sql and fail if a check fails",
        description="Run the checks of sql/verify.sql, print them, and exit 1 "
        "if one fails.",
    )
    _db_url_option(verify)
    verify.set_defaults(handler=_cmd_verify)

    backfill = commands.add_parser(
        "backfill",
        help="analyse every session without a current analysis",
        description="Analyse every session whose analysis is missing or was "
        "made by another analysis version or from another transcript. "
        "Interrupt it at any time: a new run resumes without paying twice. "
        "It connects to --db-url, else DATABASE_URL, else through Supabase's "
        "REST API with SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or "
        "SUPABASE_SECRET_KEY); --supabase picks the REST API even when "
        "DATABASE_URL is set.",
    )
    _db_url_option(backfill)
    backfill.add_argument(
        "--supabase",
        action="store_true",
        help="go through Supabase's REST API with SUPABASE_URL and "
        "SUPABASE_SERVICE_ROLE_KEY or SUPABASE_SECRET_KEY (the key is read "
        "from the environment only, and never printed)",
    )
    backfill.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="analyses in flight, each with its own connection or Supabase "
        "client (default: 4)",
    )
    backfill.add_argument(
        "--analyzer",
        choices=("auto", "openai", "metrics"),
        default="auto",
        help="'openai' calls the OpenAI API (OPENAI_API_KEY), 'metrics' computes "
        "conversation metrics locally; 'auto' uses OpenAI when OPENAI_API_KEY "
        "is set (default: auto)",
    )
    backfill.add_argument(
        "--model", default="gpt-4o-mini", help="OpenAI model (default: gpt-4o-mini)"
    )
    backfill.add_argument(
        "--no-progress", action="store_true", help="show no progress bar"
    )
    backfill.set_defaults(handler=_cmd_backfill)

    stats = commands.add_parser(
        "stats",
        help="show hits, misses and savings of every worker, and stored analyses",
        description="Print the hits, misses, stale recomputes, waits, hit "
        "ratio, tokens saved and estimated cost saved that the caches of "
        "every process recorded in salesai_cache_stats (migration 003), per "
        "model and analysis version, then the stored analyses and what "
        "serving each once more saves. Reads over --db-url or DATABASE_URL, "
        "or, when neither is given (or with --supabase), through Supabase's "
        "API with SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or "
        "SUPABASE_SECRET_KEY).",
    )
    _db_url_option(stats)
    stats.add_argument(
        "--supabase",
        action="store_true",
        help="read through Supabase's API even when a database URL is set",
    )
    stats.add_argument(
        "--since",
        metavar="WHEN",
        help="count only what was recorded from this ISO date or time on, "
        "such as 2026-05-01 or 2026-05-01T08:00:00+02:00 (UTC without a zone)",
    )
    stats.add_argument(
        "--price",
        action="append",
        metavar="MODEL=INPUT/OUTPUT",
        help="US dollars per 1M prompt/completion tokens of a model, such as "
        "gpt-4o-mini=0.15/0.60; repeatable; overrides the built-in list prices",
    )
    stats.set_defaults(handler=_cmd_stats)


def run_operator_command(args: argparse.Namespace) -> int:
    """
    Run the command chosen in ``args`` and return its exit code.
    """
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout)
    except KeyboardInterrupt:
        print("interrupted: run the command again to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {_scrub(str(error), args)}", file=sys.stderr)
        return _ERROR
    except Exception as error:
        if type(error).__module__.startswith(("psycopg", "salesai_cache")):
            print(
                f"error: {type(error).__name__}: {_scrub(str(error), args)}",
                file=sys.stderr,
            )
            return _ERROR
        raise


def _scrub(text: str, args: argparse.Namespace) -> str:
    url = getattr(args, "resolved_url", None)
    if url:
        text = text.replace(url, mask_url(url))
    key = getattr(args, "resolved_key", None)
    if key:
        text = text.replace(key, "***")
    return mask_url(text)


def _url(args: argparse.Namespace) -> str:
    url = args.db_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ValueError("no database: pass --db-url or set DATABASE_URL")
    args.resolved_url = url
    return str(url)


def _connect(args: argparse.Namespace, out: TextIO) -> Any:
    import psycopg

    url = _url(args)
    print(f"Database: {mask_url(url)}", file=out)
    return psycopg.connect(url, autocommit=True)


def _cmd_sql(args: argparse.Namespace, out: TextIO) -> int:
    if args.list:
        for name in list_sql_files():
            print(name, file=out)
        return 0
    if not args.name:
        raise ValueError("name a SQL file, or pass --list")
    out.write(read_sql(args.name))
    return 0


def _cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    from ._migrate import apply_migrations

    with _connect(args, out) as conn:
        baseline, applied = apply_migrations(conn, dry_run=args.dry_run)
    verb = "would" if args.dry_run else "did"
    for name in baseline:
        print(f"baseline  {name} (found in the database; {verb} record)", file=out)
    for name in applied:
        action = "would apply" if args.dry_run else "applied"
        print(f"{action:<11} {name}", file=out)
    if not baseline and not applied:
        print("Up to date: no pending migration.", file=out)
    return 0


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from ._migrate import migration_states

    with _connect(args, out) as conn:
        states = migration_states(conn)
    for state in states:
        when = f"  {state.applied_at} ({state.applied_by})" if state.applied_at else ""
        print(f"{state.status:<8} {state.name}{when}", file=out)
        if state.status == "changed":
            print(
                f"         recorded checksum {state.recorded_checksum}, shipped "
                f"file {state.checksum}",
                file=out,
            )
    found = sum(state.status == "found" for state in states)
    if found:
        print(
            f"{found} found: their objects exist but are not recorded; run "
            "'salesai-cache migrate' to record them as baseline (it does not "
            "run them again).",
            file=out,
        )
    if any(state.status == "changed" for state in states):
        print("An applied migration's file has changed since.", file=sys.stderr)
        return _CHECK_FAILED
    return 0


def _cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from ._local.database import run_verify

    with _connect(args, out) as conn:
        rows = run_verify(conn)
    width = max((len(name) for name, _, _ in rows), default=10)
    for name, passed, detail in rows:
        print(f"{'ok' if passed else 'FAIL':<5}{name:<{width}}  {detail}", file=out)
    failed = [name for name, passed, _ in rows if not passed]
    if failed:
        print(f"{len(failed)} of {len(rows)} checks failed", file=sys.stderr)
        return _CHECK_FAILED
    print(f"All {len(rows)} checks passed.", file=out)
    return 0


def _cmd_backfill(args: argparse.Namespace, out: TextIO) -> int:
    from ._demo import _make_analyzer

    supabase = _supabase_target(args)
    if supabase is None:
        url = _url(args)
        print(f"Database: {mask_url(url)}", file=out)
    else:
        print(
            f"Supabase: {mask_url(supabase.url)} (key from {supabase.key_variable})",
            file=out,
        )
    analyzer = _make_analyzer(args)
    print(f"Analyzer: {args.analyzer_name} ({args.analyzer_detail})", file=out)
    if supabase is None:
        import psycopg

        from ._backfill import run_backfill

        report = run_backfill(
            lambda: psycopg.connect(url, autocommit=True),
            analyzer,
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )
    else:
        from ._backfill_supabase import run_backfill_supabase

        report = run_backfill_supabase(
            supabase.connect,
            analyzer,
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )
    stats = report.stats
    print(
        f"Sessions: {report.sessions}, already current: {report.current}, "
        f"analysed now: {stats.misses} (of which {stats.stale_recomputes} "
        f"replaced stale ones), found by another worker: "
        f"{stats.hits + stats.waits}, failed: {len(report.failed)}",
        file=out,
    )
    for session_id, message in report.failed.items():
        print(f"failed {session_id}: {message}", file=out)
    return _CHECK_FAILED if report.failed else 0


_SUPABASE_KEYS = ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SECRET_KEY")


@dataclass(frozen=True)
class _SupabaseTarget:
    url: str
    key: str = field(repr=False)
    key_variable: str

    def connect(self) -> Any:
        import supabase

        try:
            return supabase.create_client(self.url, self.key)
        except supabase.SupabaseException as error:
            raise ValueError(
                f"SUPABASE_URL {mask_url(self.url)!r} or the key in "
                f"{self.key_variable} was refused: {error.message}"
            ) from None


def _supabase_target(args: argparse.Namespace) -> _SupabaseTarget | None:
    """
    Return the Supabase project to work through, or ``None`` to use a
    PostgreSQL URL: ``--supabase``, else ``--db-url``, else ``DATABASE_URL``,
    else the Supabase variables when one of them is set.

    Raises:
        ValueError: the configuration is missing, partial or ambiguous; the
            message names the variables, never a key.
    """
    url = os.environ.get("SUPABASE_URL", "")
    keys = {name: os.environ.get(name, "") for name in _SUPABASE_KEYS}
    if args.supabase and args.db_url:
        raise ValueError("--supabase and --db-url exclude each other: pass one")
    if not args.supabase and (args.db_url or os.environ.get("DATABASE_URL")):
        return None
    if not args.supabase and not url and not any(keys.values()):
        raise ValueError(
            "no database: pass --db-url or set DATABASE_URL, or set "
            "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or SUPABASE_SECRET_KEY)"
        )
    given = [name for name, value in keys.items() if value]
    if len(given) == 2 and keys[given[0]] != keys[given[1]]:
        raise ValueError(
            f"{given[0]} and {given[1]} are both set, to different keys: unset one"
        )
    missing = []
    if not url:
        missing.append("SUPABASE_URL")
    if not given:
        missing.append(" or ".join(_SUPABASE_KEYS))
    if missing:
        raise ValueError(
            f"{args.command} through Supabase needs {' and '.join(missing)} "
            "(or pass --db-url or set DATABASE_URL for a PostgreSQL URL)"
        )
    args.resolved_key = keys[given[0]]
    return _SupabaseTarget(url, keys[given[0]], given[0])


def _cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    from ._stats_report import (
        merged_prices,
        parse_since,
        print_report,
        read_over_postgres,
        read_over_supabase,
    )

    prices = merged_prices(args.price)
    since = parse_since(args.since) if args.since else None
    target = _supabase_target(args)
    if target is not None:
        print(
            f"Supabase API: {mask_url(target.url)} (key from {target.key_variable})",
            file=out,
        )
        report = read_over_supabase(target.connect(), since)
    else:
        with _connect(args, out) as conn:
            report = read_over_postgres(conn, since)
    print_report(report, out, prices=prices, since=since)
    return 0
