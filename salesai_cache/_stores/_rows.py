"""
Helpers shared by both stores: the columns they read, the conversion of a row
to ``StoredAnalysis``, and the translation of database error codes into library
exceptions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from .._models import Lookup, StoredAnalysis, TokenUsage
from .._retry import is_transient_store_code
from ..exceptions import (
    CacheStoreError,
    SalesAICacheError,
    SchemaMismatchError,
    SessionNotFoundError,
)

__all__ = [
    "ANALYSIS_COLUMNS",
    "ANALYSIS_TABLE",
    "CLAIMS_TABLE",
    "LOOKUP_FUNCTION",
    "MIGRATION_001",
    "MIGRATION_002",
    "SAVE_FUNCTION",
    "SESSIONS_TABLE",
    "SETUP_SQL",
    "STATS_COLUMNS",
    "STATS_TABLE",
    "lookup_params",
    "parse_timestamp",
    "row_to_lookup",
    "row_to_stored",
    "translate_error",
]

ANALYSIS_TABLE = "salesai_analysis_results"
SESSIONS_TABLE = "salesai_sessions"
CLAIMS_TABLE = "salesai_analysis_claims"
LOOKUP_FUNCTION = "salesai_lookup_analysis"
SAVE_FUNCTION = "salesai_save_analysis"
STATS_TABLE = "salesai_cache_stats"
# The columns of salesai_cache_stats that a flush writes, in StatsRow's order.
STATS_COLUMNS = (
    "id",
    "worker",
    "model",
    "analysis_version",
    "hits",
    "misses",
    "stale_recomputes",
    "waits",
    "stale_served",
    "prompt_tokens_saved",
    "completion_tokens_saved",
)

# Named explicitly rather than ``*`` so that a database missing one of them
# fails with "column does not exist" instead of returning a row without it.
ANALYSIS_COLUMNS = (
    "session_id",
    "analysis",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "transcript_hash",
    "analysis_version",
    "created_at",
    "updated_at",
)

SETUP_SQL = "sql/setup.sql"
MIGRATION_001 = "sql/migrations/001_add_conversation_id_and_caching.sql"
MIGRATION_002 = "sql/migrations/002_add_freshness_and_claims.sql"
MIGRATION_003 = "sql/migrations/003_add_cache_stats.sql"

# Objects that migration 002 creates. An error that names one of them means
# that this migration is missing, whichever older ones are applied.
_MIGRATION_002_NAMES = (
    CLAIMS_TABLE,
    LOOKUP_FUNCTION,
    SAVE_FUNCTION,
    "transcript_hash",
    "analysis_version",
)

_RELOAD_HINT = (
    "If you applied it just now, reload the PostgREST schema cache with "
    "\"notify pgrst, 'reload schema'\" (or restart the API)."
)


def parse_timestamp(value: object) -> dt.datetime | None:
    """
    Return a timestamp column as a datetime.

    Accepts the datetimes that psycopg returns and the ISO 8601 strings that
    PostgREST returns, such as ``2026-12-04T15:18:44.12345+00:00``.

    Raises:
        ValueError: ``value`` is neither ``None``, a datetime nor an ISO
            8601 timestamp.
    """
    if value is None or isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    # Since Python 3.11, fromisoformat reads every form PostgreSQL prints:
    # 0 to 6 fractional digits, "Z", "+00" and "+05:30" offsets.
    try:
        return dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"invalid timestamp {value!r}") from None


def _count(value: object) -> int:
    # A NULL token count, possible in rows written before the columns had
    # defaults, means "not recorded", which TokenUsage spells 0.
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer token count, got {value!r}")
    return value


def _optional_text(value: object, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"expected text or NULL in {column}, got {value!r}")


def _optional_seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    return float(value)


def _flag(value: object, column: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false in {column}, got {value!r}")
    return value


def row_to_stored(row: Mapping[str, Any]) -> StoredAnalysis:
    """
    Return one ``salesai_analysis_results`` row as a ``StoredAnalysis``.

    ``analysis`` is passed on as it came, decoded or as JSON text; when it is
    not a JSON object the cache's validation rejects it and the analysis is
    computed again. The
    fingerprints and ``age_seconds`` are ``None`` when the row lacks them.

    Raises:
        CacheStoreError: the row lacks a column or a value has the wrong type.
    """
    try:
        return StoredAnalysis(
            session_id=str(row["session_id"]),
            analysis=row["analysis"],
            model=str(row["model"]),
            usage=TokenUsage(
                prompt_tokens=_count(row.get("prompt_tokens")),
                completion_tokens=_count(row.get("completion_tokens")),
                total_tokens=_count(row.get("total_tokens")),
            ),
            created_at=parse_timestamp(row.get("created_at")),
            updated_at=parse_timestamp(row.get("updated_at")),
            transcript_hash=_optional_text(
                row.get("transcript_hash"), "transcript_hash"
            ),
            analysis_version=_optional_text(
                row.get("analysis_version"), "analysis_version"
            ),
            age_seconds=_optional_seconds(row.get("age_seconds")),
        )
    except KeyError as error:
        raise CacheStoreError(
            f"row of {ANALYSIS_TABLE} has no column {error.args[0]!r}: compare "
            f"the table with {SETUP_SQL}"
        ) from error
    except ValueError as error:
        # pydantic's ValidationError is a ValueError too (negative counts).
        raise CacheStoreError(
            f"row of {ANALYSIS_TABLE} has an invalid value: {error}"
        ) from error


def row_to_lookup(row: Mapping[str, Any]) -> Lookup:
    """
    Return the row of ``salesai_lookup_analysis`` as a ``Lookup``.

    The analysis columns are NULL when the session has no stored analysis.

    Raises:
        CacheStoreError: the row lacks a column or a value has the wrong type.
    """
    try:
        stored = None if row["session_id"] is None else row_to_stored(row)
        return Lookup(
            stored=stored,
            fresh=_flag(row["fresh"], "fresh"),
            claimed=_flag(row["claimed"], "claimed"),
            claim_expires_at=parse_timestamp(row["claim_expires_at"]),
        )
    except KeyError as error:
        raise CacheStoreError(
            f"the row of {LOOKUP_FUNCTION} has no column {error.args[0]!r}: "
            f"apply {MIGRATION_002} again"
        ) from error
    except ValueError as error:
        raise CacheStoreError(
            f"the row of {LOOKUP_FUNCTION} has an invalid value: {error}"
        ) from error


def translate_error(
    code: str | None,
    server_message: str | None,
    *,
    action: str,
    table: str,
    session_id: str | None = None,
    schema_cache: bool = False,
    function: str | None = None,
    role: str | None = None,
) -> SalesAICacheError:
    """
    Return the library exception for a failed database call.

    Args:
        code: the SQLSTATE or PostgREST code, such as ``42P01`` or ``PGRST205``.
        server_message: the server's one-line message. PostgreSQL puts the
            values of a failing row in the detail, which is left out.
        action: what the store was doing, such as ``"reading the analysis of
            session <id>"``.
        table: the table (or tables) the call used.
        session_id: the session the call was about; a foreign key violation
            then becomes ``SessionNotFoundError``.
        schema_cache: the call went through PostgREST, whose schema cache can
            lag behind the database.
        function: the SQL function the call ran, such as
            ``salesai_lookup_analysis``; a missing function then means a
            missing migration.
        role: the database role the call ran as, named in a permission
            error.

    Returns:
        The exception; the caller raises it ``from`` the original error.
    """
    server_text = f" Server message: {server_message.strip()}" if server_message else ""
    failed = f"{action} failed ({code or 'no error code'})"
    reload_hint = f" {_RELOAD_HINT}" if schema_cache else ""
    as_role = f" as role {role}" if role else ""
    if code == "PGRST204" and schema_cache:
        # PostgREST answers PGRST204 from its schema cache, which lags behind
        # DDL until reloaded: the likelier cause after a migration.
        reload_hint = (
            " PostgREST's schema cache may be stale: run \"notify pgrst, "
            "'reload schema'\" in the SQL editor (or restart the API) if the "
            "migration is applied."
        )

    if code == "23503" and session_id is not None:
        return SessionNotFoundError(session_id)
    # Objects of migration 002 can be missing on a database that has every
    # older object, so the advice names that migration rather than setup.sql.
    names_002 = table == CLAIMS_TABLE or any(
        name in (server_message or "") for name in _MIGRATION_002_NAMES
    )
    if code in {"42883", "PGRST202"} and function is not None:
        return SchemaMismatchError(
            f"{failed}: the function public.{function} does not exist or takes "
            f"other arguments. Apply {MIGRATION_002} (it creates "
            f"{LOOKUP_FUNCTION} and {SAVE_FUNCTION}), after {MIGRATION_001} if "
            f"that is not applied yet.{reload_hint}{server_text}",
            code=code,
        )
    if code in {"42P01", "PGRST205"} and table == STATS_TABLE:
        return SchemaMismatchError(
            f"{failed}: table {STATS_TABLE} does not exist. Apply {MIGRATION_003} "
            f"(it creates the table).{reload_hint}{server_text}",
            code=code,
        )
    if code in {"42P01", "PGRST205"} and names_002:
        return SchemaMismatchError(
            f"{failed}: table {CLAIMS_TABLE} does not exist. Apply {MIGRATION_002} "
            f"(it creates the table).{reload_hint}{server_text}",
            code=code,
        )
    if code in {"42P01", "PGRST205"}:
        return SchemaMismatchError(
            f"{failed}: table {table} does not exist. Apply {SETUP_SQL} to create "
            f"the tables.{reload_hint}{server_text}",
            code=code,
        )
    if code in {"42703", "PGRST204"} and names_002:
        return SchemaMismatchError(
            f"{failed}: a column of {table} does not exist. Apply {MIGRATION_002} "
            f"(it adds {ANALYSIS_TABLE}.transcript_hash and analysis_version), "
            f"after {MIGRATION_001} if that is not applied yet.{reload_hint}"
            f"{server_text}",
            code=code,
        )
    if code in {"42703", "PGRST204"}:
        return SchemaMismatchError(
            f"{failed}: a column of {table} does not exist. Apply {MIGRATION_001} "
            f"(it adds salesai_sessions.conversation_id), then {MIGRATION_002}, "
            f"or compare the table with {SETUP_SQL}.{reload_hint}{server_text}",
            code=code,
        )
    if code == "PGRST200":
        return SchemaMismatchError(
            f"{failed}: PostgREST finds no foreign key from {ANALYSIS_TABLE}."
            f"session_id to {SESSIONS_TABLE}.id. Apply {SETUP_SQL}.{reload_hint}"
            f"{server_text}",
            code=code,
        )
    if code == "42P10":
        return SchemaMismatchError(
            f"{failed}: {ANALYSIS_TABLE} has no unique constraint on session_id, "
            f"which the upsert needs. Apply {MIGRATION_001} (it adds "
            f"{ANALYSIS_TABLE}_session_id_key).{reload_hint}{server_text}",
            code=code,
        )
    if code == "42501" and function is not None:
        return CacheStoreError(
            f"{failed}: permission denied{as_role} on {table} or "
            f"public.{function}. "
            f"{LOOKUP_FUNCTION} and {SAVE_FUNCTION} run with the caller's rights, "
            "and sql/policies.sql and migration 002 let only the service role "
            "take compute claims and write analyses, so run the cache on the "
            f"server with the service-role key or a database role.{server_text}",
            code=code,
        )
    if code == "42501":
        return CacheStoreError(
            f"{failed}: permission denied{as_role} on {table}. sql/policies.sql "
            "lets users "
            "read only their own sessions and analyses, and lets only the service "
            "role write analyses, so run the cache on the server with the "
            f"service-role key or a database role.{server_text}",
            code=code,
        )
    if code == "22023" and function is not None:
        return CacheStoreError(
            f"{failed}: public.{function} rejected an argument.{server_text}",
            code=code,
        )
    if code in {"PGRST301", "PGRST302", "PGRST303", "401"}:
        return CacheStoreError(
            f"{failed}: the API key or user JWT was rejected. Check the key passed "
            "to create_client and that the user's session has not expired."
            f"{server_text}",
            code=code,
        )
    if code == "23505":
        return CacheStoreError(
            f"{failed}: a row of {table} with the same key exists and was not "
            f"merged. Check that the unique constraint on session_id exists "
            f"({MIGRATION_001}).{server_text}",
            code=code,
        )
    if code is not None and code.startswith(("08", "53", "57P", "PGRST00")):
        return CacheStoreError(
            f"{failed}: the database is unavailable or overloaded, so retry later."
            f"{server_text}",
            code=code,
            retryable=True,
        )
    return CacheStoreError(
        f"{failed} on {table}.{server_text}",
        code=code,
        retryable=is_transient_store_code(code),
    )


def lookup_params(
    session_id: str,
    transcript_hash: str,
    analysis_version: str,
    claimant: str,
    lease_seconds: float,
    force: bool,
) -> dict[str, Any]:
    """
    Return the named arguments of ``salesai_lookup_analysis``.
    """
    return {
        "p_session_id": session_id,
        "p_transcript_hash": transcript_hash,
        "p_analysis_version": analysis_version,
        "p_claimant": claimant,
        "p_lease_seconds": float(lease_seconds),
        "p_force": force,
    }
