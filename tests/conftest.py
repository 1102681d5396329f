"""
Database fixtures for the SQL tests.

Every test that takes a database gets its own, copied from a template that
the session prepared once, so tests never see each other's rows. The server
is the one named by ``DATABASE_URL``, else an embedded PostgreSQL started for
the session. ``DATABASE_URL`` must name a superuser, because the Supabase
bootstrap creates roles (one with BYPASSRLS) and the tests create databases;
for example ``postgresql:///postgres?host=/var/run/postgresql``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from salesai_cache._local.database import (
    LocalPostgres,
    apply_sql,
    bootstrap_supabase,
    create_database,
    drop_database,
)

LEGACY_SCHEMA = Path(__file__).with_name("legacy_schema.sql")

# Few, reproducible examples: the machine is small and failures must repeat.
settings.register_profile(
    "salesai",
    max_examples=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("salesai")


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """
    Admin URL of the PostgreSQL server for this test session.
    """
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    with LocalPostgres.start() as server:
        yield server.url


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> Iterator[str]:
    """
    Name of a database with the Supabase bootstrap, setup.sql and
    policies.sql applied: the template of ``database_url``.
    """
    name = _unique_name("salesai_template")
    url = create_database(postgres_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            bootstrap_supabase(conn)
            apply_sql(conn, "setup")
            apply_sql(conn, "policies")
        yield name
    finally:
        drop_database(postgres_url, name)


@pytest.fixture(scope="session")
def bare_template_database(postgres_url: str) -> Iterator[str]:
    """
    Name of a database with only the Supabase bootstrap applied: the template
    of ``bare_database_url``.
    """
    name = _unique_name("salesai_bare_template")
    url = create_database(postgres_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            bootstrap_supabase(conn)
        yield name
    finally:
        drop_database(postgres_url, name)


def _copy_of(postgres_url: str, template: str) -> Iterator[str]:
    name = _unique_name("salesai_test")
    url = create_database(postgres_url, name, template=template)
    try:
        yield url
    finally:
        drop_database(postgres_url, name)


@pytest.fixture
def database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """
    URL of a fresh database with the bootstrap, setup.sql and policies.sql
    applied, as the superuser; dropped after the test.
    """
    yield from _copy_of(postgres_url, template_database)


@pytest.fixture
def bare_database_url(postgres_url: str, bare_template_database: str) -> Iterator[str]:
    """
    URL of a fresh database with only the Supabase bootstrap applied, as the
    superuser; dropped after the test.
    """
    yield from _copy_of(postgres_url, bare_template_database)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """
    Superuser connection in autocommit mode to ``database_url``.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def bare_db(bare_database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """
    Superuser connection in autocommit mode to ``bare_database_url``.
    """
    with psycopg.connect(bare_database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def legacy_db(bare_db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """
    Superuser connection in autocommit mode to a fresh database with the
    schema as it was before migration 001 (``tests/legacy_schema.sql``).
    """
    bare_db.execute(LEGACY_SCHEMA.read_text(encoding="utf-8").encode("utf-8"))
    return bare_db
