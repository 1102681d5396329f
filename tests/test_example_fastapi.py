"""
examples/fastapi_app.py through httpx's ASGI transport, with the psycopg async
store on the test database.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from test_async_cache import backend_connections

from salesai_cache import (
    AnalyzerError,
    AnalyzerOutput,
    AsyncAnalysisCache,
    ConversationMetricsAnalyzer,
    Turn,
)
from salesai_cache._local.database import create_auth_user

pytestmark = pytest.mark.sql

EXAMPLE = Path(__file__).parent.parent / "examples" / "fastapi_app.py"
TRANSCRIPT = [
    {"speaker": "Rep", "text": "What is driving the evaluation this quarter?"},
    {"speaker": "Buyer", "text": "Cost, mostly."},
]
UNKNOWN_SESSION = "6f1c2f0e-2b7c-4c55-9d1e-0a4b8c3d2e1f"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FailingAnalyzer(ConversationMetricsAnalyzer):
    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Any]:
        raise AnalyzerError("model unavailable")


@pytest.fixture
def session_id(db: psycopg.Connection[Any]) -> str:
    user_id = create_auth_user(db, "rep@example.test")
    row = db.execute(
        "insert into public.salesai_sessions (user_id, transcript) "
        "values (%s, %s) returning id",
        (user_id, Jsonb(TRANSCRIPT)),
    ).fetchone()
    assert row is not None
    return str(row[0])


def get(
    database_url: str, paths: list[str], analyzer: Any | None = None
) -> list[httpx.Response]:
    """
    Start the app (its lifespan included), send GET requests in order, stop it.
    """
    example = load_example()

    async def make_cache() -> AsyncAnalysisCache[Any]:
        return await AsyncAnalysisCache.from_postgres_url(
            database_url, analyzer or ConversationMetricsAnalyzer()
        )

    async def scenario() -> list[httpx.Response]:
        app = example.create_app(make_cache)
        # httpx's ASGI transport sends no lifespan events, so the test runs
        # the lifespan itself.
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://app.test"
            ) as client,
        ):
            return [await client.get(path) for path in paths]

    return asyncio.run(scenario())


def test_app_miss(database_url: str, session_id: str) -> None:
    (response,) = get(database_url, [f"/sessions/{session_id}/analysis"])
    assert response.json()["status"] == "miss"


def test_app_hit(database_url: str, session_id: str) -> None:
    path = f"/sessions/{session_id}/analysis"
    responses = get(database_url, [path, path])
    assert responses[1].json()["status"] == "hit"


def test_app_analysis(database_url: str, session_id: str) -> None:
    (response,) = get(database_url, [f"/sessions/{session_id}/analysis"])
    assert response.json()["analysis"]["total_turns"] == 2


def test_app_unknown_session(database_url: str) -> None:
    (response,) = get(database_url, [f"/sessions/{UNKNOWN_SESSION}/analysis"])
    assert response.status_code == 404


def test_app_invalid_session(database_url: str) -> None:
    (response,) = get(database_url, ["/sessions/not-a-uuid/analysis"])
    assert response.status_code == 422


def test_app_analyzer_failure(database_url: str, session_id: str) -> None:
    (response,) = get(
        database_url, [f"/sessions/{session_id}/analysis"], FailingAnalyzer()
    )
    assert response.status_code == 502


def test_app_closes_connection(
    database_url: str, db: psycopg.Connection[Any], session_id: str
) -> None:
    get(database_url, [f"/sessions/{session_id}/analysis"])
    assert backend_connections(db, 0) == 0
