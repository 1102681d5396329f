"""
The names that ``salesai_cache`` exports.
"""

from __future__ import annotations

import subprocess
import sys

import salesai_cache


def test_all_is_sorted() -> None:
    assert salesai_cache.__all__ == sorted(salesai_cache.__all__, key=str.lower)


def test_all_names_resolve() -> None:
    for name in salesai_cache.__all__:
        assert getattr(salesai_cache, name) is not None, name


def test_version_is_set() -> None:
    assert salesai_cache.__version__.count(".") == 2


def test_import_loads_no_optional_client() -> None:
    """
    ``import salesai_cache`` leaves openai and psycopg unloaded until used.
    """
    code = (
        "import sys, salesai_cache; "
        "print(','.join(m for m in ('openai', 'psycopg') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert loaded == ""


def test_unknown_attribute_raises() -> None:
    try:
        salesai_cache.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as error:
        assert "NoSuchName" in str(error)
    else:
        raise AssertionError("expected AttributeError")
