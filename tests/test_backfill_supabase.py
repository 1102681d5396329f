"""
Backfill through Supabase's REST API, with a PostgREST emulator running the
requests on a real database, and the refusal of a PostgreSQL role that
row-level security limits.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import psycopg
import pytest
import respx
import supabase
from postgrest_emulator import (
    ANON_KEY,
    SERVICE_ROLE_KEY,
    URL,
    PostgrestEmulator,
    make_jwt,
    user_jwt,
)
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from test_cache_behaviour import TRANSCRIPT, CountingAnalyzer, Verdict
from test_cli import InterruptingAnalyzer, add_sessions, run

from salesai_cache import (
    AnalyzerError,
    AnalyzerOutput,
    CacheStoreError,
    ConfigurationError,
    InvalidInputError,
    Turn,
)
from salesai_cache._backfill import BackfillReport, is_current, run_backfill
from salesai_cache._backfill_supabase import (
    LISTING_SELECT,
    _candidate,
    find_pending_supabase,
    run_backfill_supabase,
)
from salesai_cache._keys import transcript_hash
from salesai_cache._transcripts import parse_transcript

pytestmark = [
    # supabase-py passes timeout and verify to its own PostgREST client,
    # which postgrest-py deprecates.
    pytest.mark.filterwarnings(
        "ignore:The 'timeout' parameter is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The 'verify' parameter is deprecated:DeprecationWarning"
    ),
]

SESSIONS_URL = f"{URL}/rest/v1/salesai_sessions"
HASH = transcript_hash(parse_transcript(TRANSCRIPT))
VERSION = "fake-model-1:v1"
# Signed with another secret: PostgREST refuses it with 401.
FOREIGN_KEY = make_jwt({"role": "service_role"}, secret=b"x" * 48)


@pytest.fixture(autouse=True)
def keep_log_level() -> Iterator[None]:
    # main() sets the library logger's level, which later tests' caplog reads.
    library = logging.getLogger("salesai_cache")
    level = library.level
    yield
    library.setLevel(level)


@pytest.fixture
def emulator(database_url: str) -> Iterator[PostgrestEmulator]:
    emulator = PostgrestEmulator(database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        emulator.install(router)
        yield emulator
    emulator.close()


def connect() -> supabase.Client:
    return supabase.create_client(URL, SERVICE_ROLE_KEY)


def rest_backfill(analyzer: CountingAnalyzer, **options: Any) -> BackfillReport:
    return run_backfill_supabase(connect, analyzer, progress=False, **options)


def listings(emulator: PostgrestEmulator) -> list[httpx.Request]:
    return [
        request
        for request in emulator.requests
        if request.method == "GET"
        and request.url.path.endswith("/salesai_sessions")
        and "order" in request.url.params
    ]


class FailingAnalyzer(CountingAnalyzer):
    """
    Fails for transcripts of ``fail_turns`` turns, as a refused model call.
    """

    def __init__(self, fail_turns: int) -> None:
        super().__init__()
        self.fail_turns = fail_turns

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        if len(transcript) == self.fail_turns:
            raise AnalyzerError("the model refused", retryable=False)
        return super().analyze(transcript)


# is_current, shared by both backfills


def test_is_current_same() -> None:
    assert is_current(TRANSCRIPT, HASH, VERSION, VERSION)


@pytest.mark.parametrize(
    ("stored_hash", "stored_version"),
    [(None, None), (HASH, "fake-model-1:v0"), ("0" * 64, VERSION), (None, VERSION)],
)
def test_is_current_stale(stored_hash: str | None, stored_version: str | None) -> None:
    assert not is_current(TRANSCRIPT, stored_hash, stored_version, VERSION)


def test_is_current_invalid_transcript() -> None:
    assert not is_current([], HASH, VERSION, VERSION)


# The listing's rows


def test_candidate_object() -> None:
    row: dict[str, Any] = {
        "id": "a",
        "transcript": TRANSCRIPT,
        "salesai_analysis_results": {
            "transcript_hash": HASH,
            "analysis_version": VERSION,
        },
    }
    assert _candidate(row) == ("a", TRANSCRIPT, HASH, VERSION)


def test_candidate_null() -> None:
    row: dict[str, Any] = {
        "id": "a",
        "transcript": [],
        "salesai_analysis_results": None,
    }
    assert _candidate(row) == ("a", [], None, None)


def test_candidate_array_of_one() -> None:
    # PostgREST before 11 embeds a one-to-one resource as an array.
    fingerprint = {"transcript_hash": HASH, "analysis_version": VERSION}
    row = {"id": "a", "transcript": [], "salesai_analysis_results": [fingerprint]}
    assert _candidate(row)[2:] == (HASH, VERSION)


def test_candidate_array_of_two() -> None:
    fingerprint = {"transcript_hash": HASH, "analysis_version": VERSION}
    row = {"id": "a", "salesai_analysis_results": [fingerprint, fingerprint]}
    with pytest.raises(CacheStoreError, match="session a has 2 stored analyses"):
        _candidate(row)


def test_candidate_without_id() -> None:
    with pytest.raises(CacheStoreError, match="without an id"):
        _candidate({"transcript": []})


# Exact requests, against canned PostgREST replies


def page_reply(rows: list[dict[str, Any]]) -> httpx.Response:
    content_range = f"0-{len(rows) - 1}/*" if rows else "*/*"
    return httpx.Response(200, json=rows, headers={"Content-Range": content_range})


def session_row(session_id: str) -> dict[str, Any]:
    return {
        "id": session_id,
        "transcript": TRANSCRIPT,
        "salesai_analysis_results": None,
    }


FIRST = "00000000-0000-4000-8000-000000000001"
SECOND = "00000000-0000-4000-8000-000000000002"


def test_listing_requests() -> None:
    with respx.mock(assert_all_mocked=True) as router:
        route = router.get(SESSIONS_URL).mock(
            side_effect=[page_reply([session_row(FIRST)]), page_reply([])]
        )
        found = list(
            find_pending_supabase(connect(), VERSION, BackfillReport(), page_size=50)
        )
    sent = [list(call.request.url.params.multi_items()) for call in route.calls]
    base = [("select", LISTING_SELECT), ("order", "id.asc"), ("limit", "50")]
    assert found == [FIRST]
    assert sent == [base, [*base, ("id", f"gt.{FIRST}")]]


def test_listing_request_headers() -> None:
    with respx.mock(assert_all_mocked=True) as router:
        route = router.get(SESSIONS_URL).mock(return_value=page_reply([]))
        list(find_pending_supabase(connect(), VERSION, BackfillReport()))
    headers = route.calls.last.request.headers
    assert headers["apikey"] == SERVICE_ROLE_KEY
    assert headers["Accept-Profile"] == "public"


def test_listing_short_page_continues() -> None:
    # PostgREST's max-rows may cut a page short of the limit asked for.
    with respx.mock(assert_all_mocked=True) as router:
        router.get(SESSIONS_URL).mock(
            side_effect=[
                page_reply([session_row(FIRST)]),
                page_reply([session_row(SECOND)]),
                page_reply([]),
            ]
        )
        found = list(
            find_pending_supabase(connect(), VERSION, BackfillReport(), page_size=5)
        )
    assert found == [FIRST, SECOND]


def test_listing_retries_503() -> None:
    unavailable = httpx.Response(
        503,
        json={"code": "PGRST000", "details": None, "hint": None, "message": "down"},
    )
    with respx.mock(assert_all_mocked=True) as router:
        route = router.get(SESSIONS_URL).mock(side_effect=[unavailable, page_reply([])])
        list(find_pending_supabase(connect(), VERSION, BackfillReport()))
    assert route.call_count == 2


def test_listing_error_names_action() -> None:
    refused = httpx.Response(
        401,
        json={
            "code": "PGRST301",
            "details": None,
            "hint": None,
            "message": "No suitable key or wrong key type",
        },
    )
    with respx.mock(assert_all_mocked=True) as router:
        router.get(SESSIONS_URL).mock(return_value=refused)
        with pytest.raises(CacheStoreError, match=r"listing the sessions .*PGRST301"):
            list(find_pending_supabase(connect(), VERSION, BackfillReport()))


@pytest.mark.parametrize("page_size", [0, 1001, True, "5"])
def test_backfill_rejects_page_size(page_size: Any) -> None:
    with pytest.raises(InvalidInputError, match=f"page size {page_size!r}"):
        run_backfill_supabase(connect, CountingAnalyzer(), page_size=page_size)


@pytest.mark.parametrize("key", [ANON_KEY, user_jwt(FIRST), "sb_publishable_abc"])
def test_backfill_rejects_filtered_key(key: str) -> None:
    with (
        respx.mock(assert_all_mocked=True),
        pytest.raises(ConfigurationError, match="service-role key"),
    ):
        run_backfill_supabase(
            lambda: supabase.create_client(URL, key), CountingAnalyzer()
        )


# Through the emulator, on a real database


@pytest.mark.sql
def test_rest_backfill_analyses_every_session(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 12)
    analyzer = CountingAnalyzer()
    rest_backfill(analyzer, concurrency=3, page_size=5)
    assert analyzer.calls == 12


@pytest.mark.sql
def test_rest_backfill_pages(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 12)
    rest_backfill(CountingAnalyzer(), page_size=5)
    # Pages of 5, 5 and 2 sessions, then the empty page that ends the listing.
    assert len(listings(emulator)) == 4


@pytest.mark.sql
def test_rest_backfill_lists_in_id_order(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    sessions = add_sessions(db, 7)
    found = list(
        find_pending_supabase(connect(), VERSION, BackfillReport(), page_size=3)
    )
    assert found == sorted(sessions)


@pytest.mark.sql
def test_rest_backfill_every_user(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 2)
    add_sessions(db, 3)  # another user's
    report = rest_backfill(CountingAnalyzer())
    assert report.sessions == 5


@pytest.mark.sql
def test_rest_backfill_second_run_pays_nothing(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 5)
    rest_backfill(CountingAnalyzer())
    again = CountingAnalyzer()
    report = rest_backfill(again)
    assert again.calls == 0
    assert report.current == 5


@pytest.mark.sql
@pytest.mark.parametrize("concurrency", [1, 3])
def test_rest_backfill_resumes_after_interrupt(
    concurrency: int, emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 10)
    first = InterruptingAnalyzer(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        rest_backfill(first, concurrency=concurrency, page_size=3)
    second = InterruptingAnalyzer(interrupt_at=None)
    rest_backfill(second, concurrency=concurrency, page_size=3)
    third = InterruptingAnalyzer(interrupt_at=None)
    rest_backfill(third, concurrency=concurrency, page_size=3)
    assert first.calls + second.calls == 10
    assert third.calls == 0


@pytest.mark.sql
def test_rest_backfill_interrupt_stores_earlier(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 10)
    analyzer = InterruptingAnalyzer(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        rest_backfill(analyzer, concurrency=1)
    row = db.execute("select count(*) from public.salesai_analysis_results").fetchone()
    assert row == (analyzer.calls,)


@pytest.mark.sql
def test_rest_backfill_recomputes_stale_version(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 4)
    rest_backfill(CountingAnalyzer())
    report = rest_backfill(CountingAnalyzer(version="fake-model-1:v2"))
    assert report.stats.stale_recomputes == 4


@pytest.mark.sql
def test_rest_backfill_recomputes_changed_transcript(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    sessions = add_sessions(db, 4)
    rest_backfill(CountingAnalyzer())
    db.execute(
        "update public.salesai_sessions set transcript = %s where id = %s",
        (Jsonb([*TRANSCRIPT, {"speaker": "Rep", "text": "Thanks."}]), sessions[0]),
    )
    again = CountingAnalyzer()
    rest_backfill(again)
    assert again.calls == 1


@pytest.mark.sql
def test_rest_backfill_failure_reported(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    sessions = add_sessions(db, 3)
    db.execute(
        "update public.salesai_sessions set transcript = %s where id = %s",
        (Jsonb(TRANSCRIPT[:2]), sessions[1]),
    )
    analyzer = FailingAnalyzer(fail_turns=2)
    report = rest_backfill(analyzer, concurrency=2)
    assert list(report.failed) == [sessions[1]]
    assert analyzer.calls == 2


@pytest.mark.sql
def test_rest_backfill_invalid_transcript_reported(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    sessions = add_sessions(db, 2)
    db.execute(
        "update public.salesai_sessions set transcript = '[]' where id = %s",
        (sessions[1],),
    )
    report = rest_backfill(CountingAnalyzer())
    assert list(report.failed) == [sessions[1]]


@pytest.mark.sql
def test_rest_embed_null_without_analysis(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 1)
    client = connect()
    rows: Any = (
        client.table("salesai_sessions")
        .select(LISTING_SELECT)
        .order("id")
        .limit(1)
        .execute()
        .data
    )
    assert rows[0]["salesai_analysis_results"] is None


@pytest.mark.sql
def test_rest_embed_object_with_analysis(
    emulator: PostgrestEmulator, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 1)
    rest_backfill(CountingAnalyzer())
    client = connect()
    rows: Any = (
        client.table("salesai_sessions")
        .select(LISTING_SELECT)
        .order("id")
        .limit(1)
        .execute()
        .data
    )
    assert rows[0]["salesai_analysis_results"] == {
        "transcript_hash": HASH,
        "analysis_version": VERSION,
    }


# The command line through Supabase


@pytest.fixture
def supabase_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("DATABASE_URL", "OPENAI_API_KEY", "SUPABASE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUPABASE_URL", URL)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", SERVICE_ROLE_KEY)
    return monkeypatch


BACKFILL = ("backfill", "--analyzer", "metrics", "--no-progress")


@pytest.mark.sql
def test_cli_rest_backfill(
    emulator: PostgrestEmulator,
    db: psycopg.Connection[Any],
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_sessions(db, 3)
    code, out, _ = run(capsys, *BACKFILL)
    assert code == 0
    assert "analysed now: 3" in out


@pytest.mark.sql
def test_cli_rest_backfill_key_never_printed(
    emulator: PostgrestEmulator,
    db: psycopg.Connection[Any],
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_sessions(db, 2)
    main_args = ("--log-level", "DEBUG")
    _, out, err = run(capsys, *main_args, *BACKFILL)
    assert SERVICE_ROLE_KEY not in out + err


@pytest.mark.sql
def test_cli_rest_backfill_refused_key_not_printed(
    emulator: PostgrestEmulator,
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    supabase_env.setenv("SUPABASE_SERVICE_ROLE_KEY", FOREIGN_KEY)
    code, out, err = run(capsys, *BACKFILL)
    assert code == 2
    assert FOREIGN_KEY not in out + err
    assert "PGRST301" in err


@pytest.mark.sql
def test_cli_rest_backfill_failure_exits_1(
    emulator: PostgrestEmulator,
    db: psycopg.Connection[Any],
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sessions = add_sessions(db, 2)
    db.execute(
        "update public.salesai_sessions set transcript = '[]' where id = %s",
        (sessions[0],),
    )
    code, out, _ = run(capsys, *BACKFILL)
    assert code == 1
    assert f"failed {sessions[0]}" in out


@pytest.mark.sql
def test_cli_rest_backfill_interrupt_exits_130(
    emulator: PostgrestEmulator,
    db: psycopg.Connection[Any],
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_sessions(db, 3)
    analyzer = InterruptingAnalyzer(interrupt_at=1)

    def make_analyzer(args: Any) -> InterruptingAnalyzer:
        args.analyzer_name, args.analyzer_detail = "counting", "test"
        return analyzer

    supabase_env.setattr("salesai_cache._demo._make_analyzer", make_analyzer)
    code, _, err = run(capsys, *BACKFILL)
    assert code == 130
    assert "run the command again" in err


@pytest.mark.sql
def test_cli_supabase_flag_over_database_url(
    emulator: PostgrestEmulator,
    db: psycopg.Connection[Any],
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    supabase_env.setenv("DATABASE_URL", "postgresql://nobody@/nowhere")
    add_sessions(db, 1)
    code, out, _ = run(capsys, *BACKFILL, "--supabase")
    assert code == 0
    assert f"Supabase: {URL} (key from SUPABASE_SERVICE_ROLE_KEY)" in out


@pytest.mark.sql
def test_cli_database_url_over_supabase(
    database_url: str,
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    supabase_env.setenv("DATABASE_URL", database_url)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        code, out, _ = run(capsys, *BACKFILL)
    assert code == 0
    assert "Database: " in out
    assert router.calls.call_count == 0


@pytest.mark.sql
def test_cli_secret_key_variable(
    emulator: PostgrestEmulator,
    supabase_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    supabase_env.delenv("SUPABASE_SERVICE_ROLE_KEY")
    supabase_env.setenv("SUPABASE_SECRET_KEY", SERVICE_ROLE_KEY)
    code, out, _ = run(capsys, *BACKFILL)
    assert code == 0
    assert "key from SUPABASE_SECRET_KEY" in out


def test_cli_supabase_and_db_url_exit_2(
    supabase_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *BACKFILL, "--supabase", "--db-url", "postgresql:///x")
    assert code == 2
    assert "--supabase and --db-url" in err


def test_cli_supabase_without_key_exit_2(
    supabase_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    supabase_env.delenv("SUPABASE_SERVICE_ROLE_KEY")
    code, _, err = run(capsys, *BACKFILL)
    expected = "needs SUPABASE_SERVICE_ROLE_KEY or SUPABASE_SECRET_KEY"
    assert code == 2
    assert expected in err


def test_cli_supabase_without_url_exit_2(
    supabase_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    supabase_env.delenv("SUPABASE_URL")
    code, out, err = run(capsys, *BACKFILL)
    assert code == 2
    assert "needs SUPABASE_URL" in err
    assert SERVICE_ROLE_KEY not in out + err


def test_cli_supabase_flag_without_variables_exit_2(
    supabase_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    supabase_env.delenv("SUPABASE_URL")
    supabase_env.delenv("SUPABASE_SERVICE_ROLE_KEY")
    code, _, err = run(capsys, *BACKFILL, "--supabase")
    assert code == 2
    assert "needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY" in err


def test_cli_two_different_keys_exit_2(
    supabase_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    supabase_env.setenv("SUPABASE_SECRET_KEY", "sb_secret_other")
    code, out, err = run(capsys, *BACKFILL)
    leaked = SERVICE_ROLE_KEY in out + err or "sb_secret_other" in out + err
    assert code == 2
    assert "both set" in err
    assert not leaked


def test_cli_no_configuration_names_variables(
    supabase_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    supabase_env.delenv("SUPABASE_URL")
    supabase_env.delenv("SUPABASE_SERVICE_ROLE_KEY")
    code, _, err = run(capsys, *BACKFILL)
    assert code == 2
    assert "DATABASE_URL" in err
    assert "SUPABASE_SERVICE_ROLE_KEY" in err


def test_cli_invalid_supabase_url_exit_2(
    supabase_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    supabase_env.setenv("SUPABASE_URL", "supabase.test")
    code, out, err = run(capsys, *BACKFILL)
    assert code == 2
    assert "'supabase.test'" in err
    assert SERVICE_ROLE_KEY not in out + err


# PostgreSQL roles under row-level security


def as_role_url(database_url: str, role: str) -> str:
    return make_conninfo(database_url, options=f"-c role={role}")


@pytest.mark.sql
def test_backfill_refuses_rls_role(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 2)
    url = as_role_url(database_url, "authenticated")
    with pytest.raises(ConfigurationError, match=r"role authenticated .* BYPASSRLS"):
        run_backfill(
            lambda: psycopg.connect(url, autocommit=True),
            CountingAnalyzer(),
            progress=False,
        )


@pytest.mark.sql
def test_cli_backfill_rls_role_exit_2(
    database_url: str,
    db: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    add_sessions(db, 2)
    url = as_role_url(database_url, "authenticated")
    code, _, err = run(capsys, *BACKFILL, "--db-url", url)
    assert code == 2
    assert "owner" in err
    assert "BYPASSRLS" in err


@pytest.mark.sql
def test_backfill_bypassrls_role(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    add_sessions(db, 2)
    url = as_role_url(database_url, "service_role")
    analyzer = CountingAnalyzer()
    run_backfill(
        lambda: psycopg.connect(url, autocommit=True), analyzer, progress=False
    )
    assert analyzer.calls == 2


@pytest.mark.sql
def test_backfill_refuses_forced_rls_owner(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    # Roles belong to the whole server: a unique one, dropped at the end.
    owner = f"salesai_owner_{uuid.uuid4().hex[:12]}"
    admin = db.execute("select current_user").fetchone()
    assert admin is not None
    db.execute(sql.SQL("create role {} nologin").format(sql.Identifier(owner)))
    try:
        db.execute(
            sql.SQL("alter table public.salesai_sessions owner to {}").format(
                sql.Identifier(owner)
            )
        )
        db.execute("alter table public.salesai_sessions force row level security")
        url = as_role_url(database_url, owner)
        with pytest.raises(ConfigurationError, match=f"role {owner}"):
            run_backfill(
                lambda: psycopg.connect(url, autocommit=True),
                CountingAnalyzer(),
                progress=False,
            )
    finally:
        db.execute(
            sql.SQL("alter table public.salesai_sessions owner to {}").format(
                sql.Identifier(admin[0])
            )
        )
        db.execute(sql.SQL("drop role {}").format(sql.Identifier(owner)))
