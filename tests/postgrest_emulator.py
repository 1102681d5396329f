"""
A mini PostgREST for the tests, served through respx.

It serves exactly the requests that SupabaseStore, the Supabase backfill and
the stats command send: table reads, the upsert, calls of SQL functions under
``/rpc/``, filtered deletes, the pages of sessions with their analysis
embedded, and the insert of cache counters that ignores known ids. For each
one it runs the SQL that PostgREST would run on the real test database, as
the role named by the request's JWT (service_role, authenticated with its
``sub``, or anon) and with ``request.jwt.claims`` set, so row-level security
applies as on Supabase. Each request runs in its own transaction on its own
connection, so concurrent requests behave as on a real PostgREST. Replies
have PostgREST's shape: status codes from its SQLSTATE table,
``Content-Range``, and error bodies ``{"code", "details", "hint", "message"}``.

Any other request raises ``UnexpectedRequest``, so a change in what the store
sends fails the tests instead of passing against a lenient fake.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import respx
from psycopg import sql
from psycopg.pq import TransactionStatus

from salesai_cache._local.database import as_role

__all__ = [
    "ANON_KEY",
    "HOST",
    "JWT_SECRET",
    "SERVICE_ROLE_KEY",
    "URL",
    "PostgrestEmulator",
    "UnexpectedRequest",
    "make_jwt",
    "user_jwt",
]

HOST = "supabase.test"
URL = f"http://{HOST}"
JWT_SECRET = b"salesai-cache-tests-jwt-secret-at-least-32-bytes"

RESULTS = "salesai_analysis_results"
SESSIONS = "salesai_sessions"
CLAIMS = "salesai_analysis_claims"
STATS = "salesai_cache_stats"
RESULT_COLUMNS = frozenset(
    {
        "id",
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
    }
)
EMBED = f"{SESSIONS}!inner(conversation_id)"
# The URL length that the emulated proxy in front of PostgREST accepts, the
# 8 KB that SupabaseStore.fetch_many keeps to; longer URLs get 414.
MAX_URL_BYTES = 8192
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
# A select of plain columns followed by one embedded resource with its own.
_EMBEDDING_SELECT = re.compile(
    r"^(?P<columns>[a-z0-9_,]+),(?P<embedded>[a-z_][a-z0-9_]*)\((?P<inner>[a-z0-9_,]+)\)$"
)
_ORDER_ITEM = re.compile(r"^(?P<column>[a-z_][a-z0-9_]*)\.(?P<direction>asc|desc)$")


class UnexpectedRequest(AssertionError):
    """
    The store sent a request that the emulator was not written for.
    """


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(claims: Mapping[str, Any], secret: bytes = JWT_SECRET) -> str:
    """
    Return an HS256 JWT, as Supabase signs its API keys and user tokens.
    """
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(dict(claims)).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{_b64(signature.digest())}"


def user_jwt(user_id: str, *, expires_in: int = 3600) -> str:
    """
    Return the access token of a signed-in user.
    """
    return make_jwt(
        {
            "sub": user_id,
            "role": "authenticated",
            "aud": "authenticated",
            "exp": int(time.time()) + expires_in,
        }
    )


SERVICE_ROLE_KEY = make_jwt({"role": "service_role", "iss": "supabase"})
ANON_KEY = make_jwt({"role": "anon", "iss": "supabase"})


def _decode_jwt(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    expected = hmac.new(JWT_SECRET, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256)
    if not hmac.compare_digest(_b64(expected.digest()), parts[2]):
        return None
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


def _error(
    status: int,
    code: str,
    message: str,
    details: str | None = None,
    hint: str | None = None,
) -> httpx.Response:
    body = {"code": code, "details": details, "hint": hint, "message": message}
    return httpx.Response(status, json=body)


def _status_for(sqlstate: str, role: str) -> int:
    """
    Return the HTTP status PostgREST gives a SQLSTATE (its documented table).
    """
    if sqlstate == "42501":
        return 401 if role == "anon" else 403
    exact = {
        "23503": 409,
        "23505": 409,
        "25006": 405,
        "42883": 404,
        "42P01": 404,
        "42P17": 500,
        "53400": 500,
        "P0001": 400,
    }
    if sqlstate in exact:
        return exact[sqlstate]
    prefixes = {
        "08": 503,
        "09": 500,
        "0L": 403,
        "0P": 403,
        "25": 500,
        "28": 403,
        "2D": 500,
        "38": 500,
        "39": 500,
        "3B": 500,
        "40": 500,
        "53": 503,
        "54": 500,
        "55": 500,
        "57": 500,
        "58": 500,
        "F0": 500,
        "HV": 500,
        "P0": 500,
        "XX": 500,
    }
    return prefixes.get(sqlstate[:2], 400)


def _columns(select: str) -> list[str]:
    columns = select.split(",")
    for column in columns:
        if not _IDENTIFIER.match(column):
            raise UnexpectedRequest(f"select item {column!r} is not a plain column")
    return columns


def _eq(value: str, what: str) -> str:
    # PostgREST reads everything after "eq." of a top-level filter as the
    # value, with no unquoting.
    if not value.startswith("eq."):
        raise UnexpectedRequest(f"{what}: expected an eq. filter, got {value!r}")
    return value[len("eq.") :]


def _limit(value: str) -> int:
    if not value.isdigit():
        raise UnexpectedRequest(f"limit {value!r} is not a non-negative integer")
    return int(value)


class _Pool:
    """
    Autocommit connections for the emulator, one per request in flight.

    PostgREST runs each request in a transaction of its own on a pooled
    connection, so requests from several threads run side by side and one may
    wait on a row lock that another holds, as on Supabase.
    """

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._all: list[psycopg.Connection[Any]] = []

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = psycopg.connect(self._url, autocommit=True)
            # Supabase databases run in UTC, so timestamps come back as +00:00.
            conn.execute("set timezone to 'UTC'")
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._idle.clear()
            self._all.clear()


class PostgrestEmulator:
    """
    A respx side effect that plays PostgREST for the store's requests.

    Safe to call from several threads at once: each request runs on a
    connection of its own.

    Args:
        database_url: the test database; the emulator opens its own
            connections, as PostgREST has its own pool.
    """

    def __init__(self, database_url: str) -> None:
        self._pool = _Pool(database_url)
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []

    def close(self) -> None:
        self._pool.close()

    def install(self, router: respx.MockRouter) -> respx.Route:
        """
        Route every request to the emulated host through the emulator.
        """
        return router.route(host=HOST).mock(side_effect=self)

    def __call__(
        self, request: httpx.Request
    ) -> httpx.Response | Coroutine[Any, Any, httpx.Response]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.answer(request)
        # An httpx.AsyncClient on an event loop: respx awaits a coroutine,
        # and the database work runs in a thread so that the loop stays free,
        # as it is while a real PostgREST answers.
        return asyncio.to_thread(self.answer, request)

    def answer(self, request: httpx.Request) -> httpx.Response:
        """
        Answer one request, blocking until the database has run it.
        """
        self.requests.append(request)
        response = self._answer(request)
        self.responses.append(response)
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if len(str(request.url).encode()) > MAX_URL_BYTES:
            return httpx.Response(414, text="414 Request-URI Too Large")
        prefix = "/rest/v1/"
        if not request.url.path.startswith(prefix):
            raise UnexpectedRequest(f"path {request.url.path} is not under {prefix}")
        resource = request.url.path[len(prefix) :]
        if resource not in {
            RESULTS,
            SESSIONS,
            CLAIMS,
            STATS,
        } and not resource.startswith("rpc/"):
            raise UnexpectedRequest(f"resource {resource!r}")
        for header in ("Accept-Profile", "Content-Profile"):
            if request.headers.get(header, "public") != "public":
                raise UnexpectedRequest(f"{header}: {request.headers[header]}")
        if "apikey" not in request.headers:
            raise UnexpectedRequest("no apikey header")

        claims = self._claims(request)
        if isinstance(claims, httpx.Response):
            return claims
        if resource.startswith("rpc/"):
            return self._rpc(claims, request, resource[len("rpc/") :])
        table = resource
        if self._missing_table(table):
            return _error(
                404,
                "PGRST205",
                f"Could not find the table 'public.{table}' in the schema cache",
            )

        params = request.url.params
        keys = sorted(params.keys())
        if any(len(params.get_list(key)) != 1 for key in keys):
            raise UnexpectedRequest(f"repeated query parameter in {params}")
        shape = (request.method, table, tuple(keys))
        if shape == ("GET", RESULTS, ("limit", "select", "session_id")):
            return self._run(claims, *self._fetch(params))
        if shape == ("GET", RESULTS, ("select", "session_id")):
            return self._run(claims, *self._fetch_in(params))
        if shape == (
            "GET",
            RESULTS,
            ("limit", "order", "salesai_sessions.conversation_id", "select"),
        ):
            return self._run(claims, *self._by_conversation(params))
        if shape == ("GET", SESSIONS, ("id", "limit", "select")):
            return self._run(claims, *self._transcript(params))
        if shape in {
            ("GET", SESSIONS, ("limit", "order", "select")),
            ("GET", SESSIONS, ("id", "limit", "order", "select")),
        }:
            return self._run(claims, *self._sessions_page(params))
        if shape == ("POST", RESULTS, ("on_conflict", "select")):
            return self._upsert(claims, request)
        if shape == ("POST", STATS, ("columns", "on_conflict")):
            return self._insert_stats(claims, request)
        if shape == ("DELETE", CLAIMS, ("claimant", "session_id")):
            return self._delete(claims, request, table, {"return=minimal"})
        if request.method == "DELETE" and table == RESULTS and keys:
            if not set(keys) <= {"analysis_version", "session_id"}:
                raise UnexpectedRequest(f"DELETE {table} filtered by {keys}")
            return self._delete(
                claims, request, table, {"return=minimal", "count=exact"}
            )
        raise UnexpectedRequest(f"{request.method} {request.url}")

    def _claims(self, request: httpx.Request) -> dict[str, Any] | httpx.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            raise UnexpectedRequest("no Bearer token in Authorization")
        claims = _decode_jwt(token)
        if claims is None:
            return _error(401, "PGRST301", "No suitable key or wrong key type")
        if "exp" in claims and claims["exp"] <= time.time():
            return _error(401, "PGRST303", "JWT expired")
        if claims.get("role") not in {"anon", "authenticated", "service_role"}:
            raise UnexpectedRequest(f"JWT role {claims.get('role')!r}")
        return claims

    def _missing_table(self, table: str) -> bool:
        with self._pool.connection() as conn:
            row = conn.execute(
                "select to_regclass(%s) is null", (f"public.{table}",)
            ).fetchone()
        return bool(row and row[0])

    def _function_arguments(
        self, function: str, names: set[str]
    ) -> list[tuple[str, str]] | None:
        """
        Return the (name, type) pairs of the arguments in ``names`` of the
        function ``public.<function>`` that accepts exactly those names.

        A function accepts them when ``names`` contains every argument
        without a default and no name that is not an argument, which is how
        PostgREST picks an overload. Returns ``None`` when none accepts them.
        """
        with self._pool.connection() as conn:
            rows = conn.execute(
                "select p.proargnames, p.proargmodes::text[], p.pronargs, "
                "p.pronargdefaults, array(select pg_catalog.format_type(t, null) "
                "from unnest(p.proargtypes::oid[]) with ordinality as u(t, n) "
                "order by n) "
                "from pg_catalog.pg_proc as p "
                "where p.pronamespace = 'public'::regnamespace and p.proname = %s",
                (function,),
            ).fetchall()
        for all_names, modes, count, defaults, types in rows:
            all_names = all_names or []
            if modes is None:
                inputs = all_names[:count]
            else:
                inputs = [
                    name
                    for name, mode in zip(all_names, modes, strict=True)
                    if mode in {"i", "b", "v"}
                ]
            required = set(inputs[: count - defaults])
            if len(inputs) == count and required <= names <= set(inputs):
                return [
                    (name, type_name)
                    for name, type_name in zip(inputs, types, strict=True)
                    if name in names
                ]
        return None

    def _fetch(self, params: httpx.QueryParams) -> tuple[sql.Composable, list[Any]]:
        columns = _columns(params["select"])
        query = sql.SQL("select {} from public.{} where session_id = %s limit %s")
        return (
            query.format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(RESULTS),
            ),
            [_eq(params["session_id"], "session_id"), _limit(params["limit"])],
        )

    def _fetch_in(self, params: httpx.QueryParams) -> tuple[sql.Composable, list[Any]]:
        columns = _columns(params["select"])
        value = params["session_id"]
        if not (value.startswith("in.(") and value.endswith(")")):
            raise UnexpectedRequest(f"session_id: expected an in. filter: {value!r}")
        # Unquoted items, as postgrest-py sends UUIDs; PostgreSQL rejects
        # an item that is not a UUID (22P02), as PostgREST would.
        items = value[len("in.(") : -1].split(",")
        query = sql.SQL("select {} from public.{} where session_id = any(%s::uuid[])")
        return (
            query.format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier(RESULTS),
            ),
            [items],
        )

    def _by_conversation(
        self, params: httpx.QueryParams
    ) -> tuple[sql.Composable, list[Any]]:
        select = params["select"]
        if not select.endswith(f",{EMBED}"):
            raise UnexpectedRequest(f"select {select!r} lacks {EMBED}")
        if params["order"] != "updated_at.desc":
            raise UnexpectedRequest(f"order {params['order']!r}")
        columns = _columns(select[: -len(EMBED) - 1])
        # The embedded resource comes back as an object under its name, as
        # PostgREST returns a many-to-one embed.
        query = sql.SQL(
            "select {}, json_build_object('conversation_id', s.conversation_id) "
            "as {} from public.{} r join public.{} s on s.id = r.session_id "
            "where s.conversation_id = %s order by r.updated_at desc limit %s"
        )
        return (
            query.format(
                sql.SQL(", ").join(sql.Identifier("r", column) for column in columns),
                sql.Identifier(SESSIONS),
                sql.Identifier(RESULTS),
                sql.Identifier(SESSIONS),
            ),
            [
                _eq(params["salesai_sessions.conversation_id"], "conversation_id"),
                _limit(params["limit"]),
            ],
        )

    def _transcript(
        self, params: httpx.QueryParams
    ) -> tuple[sql.Composable, list[Any]]:
        if params["select"] != "transcript":
            raise UnexpectedRequest(f"select {params['select']!r}")
        query = sql.SQL("select transcript from public.{} where id = %s limit %s")
        return (
            query.format(sql.Identifier(SESSIONS)),
            [_eq(params["id"], "id"), _limit(params["limit"])],
        )

    def _sessions_page(
        self, params: httpx.QueryParams
    ) -> tuple[sql.Composable, list[Any]]:
        match = _EMBEDDING_SELECT.match(params["select"])
        if match is None or match["embedded"] != RESULTS:
            raise UnexpectedRequest(f"select {params['select']!r}")
        columns = _columns(match["columns"])
        inner = _columns(match["inner"])
        order = []
        for item in params["order"].split(","):
            parsed = _ORDER_ITEM.match(item)
            if parsed is None:
                raise UnexpectedRequest(f"order item {item!r}")
            direction = sql.SQL(parsed["direction"])
            order.append(
                sql.SQL("{} {}").format(
                    sql.Identifier("s", parsed["column"]), direction
                )
            )
        condition: sql.Composable = sql.SQL("true")
        args: list[Any] = []
        if "id" in params:
            value = params["id"]
            if not value.startswith("gt."):
                raise UnexpectedRequest(f"id: expected a gt. filter, got {value!r}")
            condition = sql.SQL("s.id > %s")
            args.append(value[len("gt.") :])
        # salesai_analysis_results.session_id is a unique foreign key, so
        # PostgREST (11 and later) embeds it one-to-one: an object, or null
        # when the session has no analysis. The subquery runs under the same
        # role, so row-level security filters the embedded rows too.
        query = sql.SQL(
            "select {columns}, (select json_build_object({pairs}) "
            "from public.{results} r where r.session_id = s.id) as {embedded} "
            "from public.{sessions} s where {condition} order by {order} limit %s"
        ).format(
            columns=sql.SQL(", ").join(
                sql.Identifier("s", column) for column in columns
            ),
            pairs=sql.SQL(", ").join(
                sql.SQL("{}, {}").format(
                    sql.Literal(column), sql.Identifier("r", column)
                )
                for column in inner
            ),
            results=sql.Identifier(RESULTS),
            embedded=sql.Identifier(RESULTS),
            sessions=sql.Identifier(SESSIONS),
            condition=condition,
            order=sql.SQL(", ").join(order),
        )
        args.append(_limit(params["limit"]))
        return query, args

    def _upsert(self, claims: dict[str, Any], request: httpx.Request) -> httpx.Response:
        params = request.url.params
        if params["on_conflict"] != "session_id":
            raise UnexpectedRequest(f"on_conflict {params['on_conflict']!r}")
        prefer = {part.strip() for part in request.headers.get("Prefer", "").split(",")}
        if prefer != {"resolution=merge-duplicates", "return=representation"}:
            raise UnexpectedRequest(f"Prefer {request.headers.get('Prefer')!r}")
        if request.headers.get("Content-Type") != "application/json":
            raise UnexpectedRequest(f"Content-Type {request.headers['Content-Type']}")
        body = json.loads(request.content)
        if not isinstance(body, dict):
            raise UnexpectedRequest("the upsert body is not one JSON object")
        known = self._table_columns(RESULTS)
        for key in body:
            if key not in known:
                return _error(
                    400,
                    "PGRST204",
                    f"Could not find the '{key}' column of '{RESULTS}' in the "
                    "schema cache",
                )
        columns = _columns(params["select"])
        keys = list(body)
        # PostgREST's merge-duplicates sets every column of the body.
        query = sql.SQL(
            "insert into public.{table} ({keys}) "
            "select {keys} from json_populate_record(null::public.{table}, %s::json) "
            "on conflict (session_id) do update set {updates} returning {columns}"
        ).format(
            table=sql.Identifier(RESULTS),
            keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
            updates=sql.SQL(", ").join(
                sql.SQL("{} = excluded.{}").format(
                    sql.Identifier(key), sql.Identifier(key)
                )
                for key in keys
            ),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        )
        return self._run(claims, query, [json.dumps(body)], status=201)

    def _insert_stats(
        self, claims: dict[str, Any], request: httpx.Request
    ) -> httpx.Response:
        params = request.url.params
        if params["on_conflict"] != "id":
            raise UnexpectedRequest(f"on_conflict {params['on_conflict']!r}")
        prefer = {part.strip() for part in request.headers.get("Prefer", "").split(",")}
        if prefer != {"resolution=ignore-duplicates", "return=minimal"}:
            raise UnexpectedRequest(f"Prefer {request.headers.get('Prefer')!r}")
        body = json.loads(request.content)
        if not (isinstance(body, list) and body):
            raise UnexpectedRequest("the insert body is not a non-empty JSON array")
        # postgrest-py names the columns of a bulk insert in ?columns=, and
        # the columns left out get their defaults (user_id = auth.uid()).
        # Each name double-quoted, in no particular order.
        columns = [column.strip('"') for column in params["columns"].split(",")]
        known = self._table_columns(STATS)
        for column in columns:
            if not _IDENTIFIER.match(column):
                raise UnexpectedRequest(f"column {column!r}")
            if column not in known:
                return _error(
                    400,
                    "PGRST204",
                    f"Could not find the '{column}' column of '{STATS}' in the "
                    "schema cache",
                )
        query = sql.SQL(
            "insert into public.{table} ({columns}) "
            "select {columns} from json_populate_recordset(null::public.{table}, "
            "%s::json) on conflict (id) do nothing"
        ).format(
            table=sql.Identifier(STATS),
            columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        )
        response = self._run(claims, query, [json.dumps(body)], status=204)
        if response.status_code != 204:
            return response
        # An insert with return=minimal returns 201 without a body.
        return httpx.Response(201, headers={"Content-Range": "*/*"})

    def _table_columns(self, table: str) -> set[str]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "select column_name from information_schema.columns "
                "where table_schema = 'public' and table_name = %s",
                (table,),
            ).fetchall()
        return {row[0] for row in rows}

    def _rpc(
        self, claims: dict[str, Any], request: httpx.Request, function: str
    ) -> httpx.Response:
        # The store calls volatile functions, which PostgREST runs only for a
        # POST with a JSON object of named arguments and no Prefer header.
        if request.method != "POST":
            raise UnexpectedRequest(f"{request.method} rpc/{function}")
        if request.url.params:
            raise UnexpectedRequest(f"query parameters on rpc/{function}")
        if "Prefer" in request.headers:
            raise UnexpectedRequest(f"Prefer {request.headers['Prefer']!r}")
        if request.headers.get("Content-Type") != "application/json":
            raise UnexpectedRequest(f"Content-Type {request.headers['Content-Type']}")
        if not _IDENTIFIER.match(function):
            raise UnexpectedRequest(f"function name {function!r}")
        body = json.loads(request.content)
        if not isinstance(body, dict):
            raise UnexpectedRequest(f"the body of rpc/{function} is not an object")

        arguments = self._function_arguments(function, set(body))
        if arguments is None:
            names = ", ".join(sorted(body))
            return _error(
                404,
                "PGRST202",
                f"Could not find the function public.{function}({names}) in the "
                "schema cache",
                f"Searched for the function public.{function} with parameters "
                f"{names} or with a single unnamed json/jsonb parameter, but no "
                "matches were found in the schema cache.",
            )

        if not arguments:
            query = sql.SQL(
                "select pgrst_call.* from public.{function}() as pgrst_call"
            ).format(function=sql.Identifier(function))
            return self._run(claims, query, [])

        # As PostgREST calls a function: the body becomes a record typed by
        # the function's arguments, passed by name so defaults fill the rest.
        # The types come from the catalog, not from the request.
        query = sql.SQL(
            "with pgrst_args as (select * from json_to_record(%s::json) "
            "as pgrst_body({columns})) "
            "select pgrst_call.* from public.{function}({arguments}) as pgrst_call"
        ).format(
            columns=sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type_name))
                for name, type_name in arguments
            ),
            function=sql.Identifier(function),
            arguments=sql.SQL(", ").join(
                sql.SQL("{name} => (select {name} from pgrst_args)").format(
                    name=sql.Identifier(name)
                )
                for name, _ in arguments
            ),
        )
        return self._run(claims, query, [json.dumps(body)])

    def _delete(
        self,
        claims: dict[str, Any],
        request: httpx.Request,
        table: str,
        expected_prefer: set[str],
    ) -> httpx.Response:
        prefer = {part.strip() for part in request.headers.get("Prefer", "").split(",")}
        if prefer != expected_prefer:
            raise UnexpectedRequest(f"Prefer {request.headers.get('Prefer')!r}")
        params = request.url.params
        columns = sorted(params.keys())
        query = sql.SQL("delete from public.{table} where {conditions}").format(
            table=sql.Identifier(table),
            conditions=sql.SQL(" and ").join(
                sql.SQL("{} = %s").format(sql.Identifier(column)) for column in columns
            ),
        )
        args = [_eq(params[column], column) for column in columns]
        count_rows = "count=exact" in prefer
        return self._run(claims, query, args, status=204, count_rows=count_rows)

    def _run(
        self,
        claims: dict[str, Any],
        query: sql.Composable,
        args: list[Any],
        *,
        status: int = 200,
        count_rows: bool = False,
    ) -> httpx.Response:
        role = claims["role"]
        if status == 204:
            # A DELETE with return=minimal replies with no body, only the
            # number of deleted rows in Content-Range when count=exact is set.
            wrapped = sql.SQL(
                "with pgrst_source as ({} returning 1) select '', count(*) "
                "from pgrst_source"
            ).format(query)
        else:
            wrapped = sql.SQL(
                "with pgrst_source as ({}) "
                "select coalesce(json_agg(pgrst_source), '[]')::text, count(*) "
                "from pgrst_source"
            ).format(query)
        try:
            with (
                self._pool.connection() as conn,
                as_role(conn, role, claims.get("sub"), claims=claims),
            ):
                row = conn.execute(wrapped, args).fetchone()
        except psycopg.Error as error:
            if error.sqlstate is None:
                raise
            diag = error.diag
            return _error(
                _status_for(error.sqlstate, role),
                error.sqlstate,
                diag.message_primary or str(error),
                diag.message_detail,
                diag.message_hint,
            )
        assert row is not None
        body, count = row
        if status == 204:
            total = str(count) if count_rows else "*"
            return httpx.Response(204, headers={"Content-Range": f"*/{total}"})
        content_range = f"0-{count - 1}/*" if count else "*/*"
        if status == 201:
            content_range = "*/*"
        return httpx.Response(
            status,
            content=body.encode(),
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Content-Range": content_range,
            },
        )
