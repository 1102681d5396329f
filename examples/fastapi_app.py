"""
A FastAPI app that serves session analyses through AsyncAnalysisCache.

``GET /sessions/{session_id}/analysis`` returns the session's analysis: the
first request runs the analyzer and stores the result, later ones read it
back. The cache is created when the app starts and closed when it stops
(the lifespan), and endpoints receive it with ``Depends``.

Run it with uvicorn, against a direct connection (``DATABASE_URL``) or a
Supabase project (``SUPABASE_URL`` and ``SUPABASE_SECRET_KEY``)::

    DATABASE_URL=postgresql://... uvicorn examples.fastapi_app:app

With ``OPENAI_API_KEY`` set it analyses with OpenAI, otherwise with the local
``ConversationMetricsAnalyzer``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request

from salesai_cache import (
    AnalyzerError,
    AsyncAnalysisCache,
    AsyncOpenAIAnalyzer,
    CacheStoreError,
    ClaimTimeoutError,
    ConversationMetricsAnalyzer,
    InvalidInputError,
    SessionNotFoundError,
)

CacheFactory = Callable[[], Awaitable[AsyncAnalysisCache[Any]]]

# Library errors and the HTTP status each one becomes. Order matters: the
# first class that matches wins.
ERROR_STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInputError, 422),
    (SessionNotFoundError, 404),
    (AnalyzerError, 502),
    (ClaimTimeoutError, 504),
    (CacheStoreError, 503),
)


async def cache_from_environment() -> AsyncAnalysisCache[Any]:
    """
    Create the cache from ``DATABASE_URL``, or from ``SUPABASE_URL`` and
    ``SUPABASE_SECRET_KEY``.
    """
    analyzer: Any = (
        AsyncOpenAIAnalyzer()
        if os.environ.get("OPENAI_API_KEY")
        else ConversationMetricsAnalyzer()
    )
    if os.environ.get("DATABASE_URL"):
        return await AsyncAnalysisCache.from_postgres_url(
            os.environ["DATABASE_URL"], analyzer
        )
    url = os.environ.get("SUPABASE_URL")
    key = os.environ.get("SUPABASE_SECRET_KEY")
    if not url or not key:
        raise RuntimeError(
            "no database configured: set DATABASE_URL, or SUPABASE_URL and "
            "SUPABASE_SECRET_KEY"
        )
    return await AsyncAnalysisCache.from_supabase_url(url, key, analyzer)


def get_cache(request: Request) -> AsyncAnalysisCache[Any]:
    """
    The dependency that hands an endpoint the app's cache.
    """
    cache: AsyncAnalysisCache[Any] = request.app.state.cache
    return cache


# At module level: FastAPI resolves the annotations of endpoints by name.
Cache = Annotated[AsyncAnalysisCache[Any], Depends(get_cache)]


def create_app(make_cache: CacheFactory = cache_from_environment) -> FastAPI:
    """
    Return the app; ``make_cache`` creates its cache at startup.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with await make_cache() as cache:
            app.state.cache = cache
            yield
            # Analyses whose write failed are kept in memory: write them
            # before the connections close.
            await cache.flush_pending()

    app = FastAPI(title="salesai-cache example", lifespan=lifespan)

    @app.get("/sessions/{session_id}/analysis")
    async def session_analysis(session_id: str, cache: Cache) -> dict[str, Any]:
        """
        Return the analysis of a session, computing it on the first request.
        """
        try:
            result = await cache.get_or_compute(session_id)
        except Exception as error:
            for kind, status in ERROR_STATUSES:
                if isinstance(error, kind):
                    # The library's messages name ids and tables, never
                    # transcript text or keys.
                    raise HTTPException(status, detail=str(error)) from error
            raise
        return {
            "session_id": result.session_id,
            "status": result.status.value,
            "model": result.model,
            "created_at": result.created_at,
            "age_seconds": result.age_seconds,
            "analysis": result.analysis.model_dump(mode="json"),
        }

    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn examples.fastapi_app:app`` builds the app on first access, so
    # importing this module needs no environment.
    if name == "app":
        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)
