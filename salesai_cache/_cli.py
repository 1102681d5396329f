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
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import unquote

from ._sql import list_sql_files, read_sql

__all__ = ["add_operator_commands", "mask_url"]

logger = logging.getLogger(__name__)

# Exit codes: 1 when a check fails, 2 for bad input or a failed command.
_CHECK_FAILED = 1
_ERROR = 2

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@/\s]*@")
_PASSWORD_PARAM = re.compile(r"(?P<head>password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
# A conninfo value: quoted with backslash escapes, or up to the next space.
_CONNINFO_PASSWORD = re.compile(
    r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE
)
# Read from the environment whatever the command, so that an error of any
# command masks them.
_KEY_VARIABLES = ("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SECRET_KEY", "OPENAI_API_KEY")


def mask_url(url: str) -> str:
    """
    Return a database URL or connection string with its password as ``***``.
    """
    masked = _PASSWORD_IN_URL.sub(r"\g<head>***@", url)
    return _PASSWORD_PARAM.sub(r"\g<head>***", masked)


def url_secrets(url: str) -> set[str]:
    """
    Return the passwords that a database URL or conninfo string contains, each
    as written and percent-decoded, so that a message quoting either form
    can be masked.

    The URL is taken apart by hand rather than by a parser, since the URLs
    to mask are also the ones a parser refuses (an invalid ``%`` escape).
    """
    raw: set[str] = set()
    scheme, sep, rest = url.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
        # The host follows the last "@", so a password may contain an "@".
        userinfo, at, _ = netloc.rpartition("@")
        if at and ":" in userinfo:
            raw.add(userinfo.partition(":")[2])
        query = rest.partition("?")[2].partition("#")[0]
        for pair in query.split("&"):
            name, equals, value = pair.partition("=")
            if equals and unquote(name).strip().lower() == "password":
                raw.add(value)
    else:
        for match in _CONNINFO_PASSWORD.finditer(url):
            value = match.group(1)
            raw.add(value)
            if value.startswith("'"):
                inner = value[1:-1] if value.endswith("'") else value[1:]
                raw.add(inner)
                raw.add(re.sub(r"\\(.)", r"\1", inner))
    found = set()
    for value in raw:
        found.add(value)
        found.add(unquote(value))
        found.add(value.replace("+", " "))
    found.discard("")
    return found


def scrub(text: str, secrets: Iterable[str]) -> str:
    """
    Return ``text`` with each secret replaced by ``***`` and the passwords
    of the URLs and conninfo strings in it masked.
    """
    # The longest first, so that a secret containing another is masked whole.
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return mask_url(text)


def _non_empty_url(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "empty value: pass a PostgreSQL URL, or leave the option out to "
            "use DATABASE_URL"
        )
    return text


def positive_int(text: str) -> int:
    """
    Return ``text`` as an int of 1 or more; an argparse ``type``.

    Raises:
        argparse.ArgumentTypeError: it is not, naming the value.
    """
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected 1 or more")
    return number


def _db_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db-url",
        default=None,
        # An error of a type function that is not an ArgumentTypeError would
        # print the value, password included.
        type=_non_empty_url,
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
        type=positive_int,
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

    Every message of a failure goes through ``scrub``: no password of the
    database URL and no key read from the environment reaches the output.
    """
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout)
    except KeyboardInterrupt as interrupt:
        done = f" {interrupt.args[0]};" if isinstance(interrupt, Interrupted) else ""
        print(f"interrupted:{done} run the command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The entry point handles a closed stdout for every command.
        raise
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
        # An unexpected failure keeps its traceback, for a bug report, but
        # its messages may quote a secret too.
        lines = traceback.format_exception(error)
        print(_scrub("".join(lines), args), end="", file=sys.stderr)
        return _ERROR


class Interrupted(KeyboardInterrupt):
    """
    A ``KeyboardInterrupt`` whose first argument describes what was done before it.
    """


def _secrets(args: argparse.Namespace) -> set[str]:
    found: set[str] = set()
    urls = [getattr(args, "db_url", None), getattr(args, "resolved_url", None)]
    urls.append(os.environ.get("DATABASE_URL"))
    for url in urls:
        if url:
            found |= url_secrets(url)
    for name in _KEY_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            found.add(value)
    key = getattr(args, "resolved_key", None)
    if key:
        found.add(key)
    return found


def _scrub(text: str, args: argparse.Namespace) -> str:
    return scrub(text, _secrets(args))


def _shown(url: str, args: argparse.Namespace) -> str:
    return scrub(url, _secrets(args))


def _url(args: argparse.Namespace) -> str:
    url = args.db_url or os.environ.get("DATABASE_URL")
    if not url:
        raise ValueError("no database: pass --db-url or set DATABASE_URL")
    args.resolved_url = url
    return str(url)


def _connect(args: argparse.Namespace, out: TextIO) -> Any:
    import psycopg

    url = _url(args)
    print(f"Database: {_shown(url, args)}", file=out)
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
        note = f"(found in the database; {verb} record)"
        print(f"{'baseline':<11} {name} {note}", file=out)
    for name in applied:
        action = "would apply" if args.dry_run else "applied"
        print(f"{action:<11} {name}", file=out)
    if not baseline and not applied:
        print("Up to date: no pending migration.", file=out)
    return 0


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    from ._migrate import migration_states, missing_tables, setup_advice

    with _connect(args, out) as conn:
        states = migration_states(conn)
        missing = missing_tables(conn)
    width = max((len(state.name) for state in states), default=0)
    for state in states:
        when = f"  {state.applied_at} ({state.applied_by})" if state.applied_at else ""
        name = state.name.ljust(width) if when else state.name
        print(f"{state.status:<8} {name}{when}", file=out)
        if state.status == "changed":
            print(
                f"         recorded checksum {state.recorded_checksum}, shipped "
                f"file {state.checksum}",
                file=out,
            )
    if missing and states and states[0].status == "pending":
        print(f"Note: {setup_advice(missing)}.", file=out)
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
    from ._backfill import BackfillReport
    from ._demo import _make_analyzer, check_analyzer_key

    check_analyzer_key(args)
    supabase = _supabase_target(args)
    if supabase is None:
        url = _url(args)
        print(f"Database: {_shown(url, args)}", file=out)
    else:
        print(
            f"Supabase: {_shown(supabase.url, args)} (key from "
            f"{supabase.key_variable})",
            file=out,
        )
    analyzer = _make_analyzer(args)
    print(f"Analyzer: {args.analyzer_name} ({args.analyzer_detail})", file=out)
    report = BackfillReport()
    try:
        if supabase is None:
            import psycopg

            from ._backfill import run_backfill

            run_backfill(
                lambda: psycopg.connect(url, autocommit=True),
                analyzer,
                concurrency=args.concurrency,
                progress=not args.no_progress,
                report=report,
            )
        else:
            from ._backfill_supabase import run_backfill_supabase

            run_backfill_supabase(
                supabase.connect,
                analyzer,
                concurrency=args.concurrency,
                progress=not args.no_progress,
                report=report,
            )
    except KeyboardInterrupt:
        stats = report.stats
        raise Interrupted(
            f"analysed and stored {stats.misses} of {report.pending} sessions "
            f"to analyse, found {stats.hits + stats.waits} analysed by another "
            f"worker, {len(report.failed)} failed"
        ) from None
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
    # An empty --since is refused by parse_since, not taken for no --since.
    since = parse_since(args.since) if args.since is not None else None
    target = _supabase_target(args)
    if target is not None:
        print(
            f"Supabase: {_shown(target.url, args)} (key from {target.key_variable})",
            file=out,
        )
        report = read_over_supabase(target.connect(), since)
    else:
        with _connect(args, out) as conn:
            report = read_over_postgres(conn, since)
    print_report(report, out, prices=prices, since=since)
    return 0
