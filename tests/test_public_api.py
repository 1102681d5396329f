"""
The names that ``salesai_cache`` exports.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import salesai_cache


def test_all_has_no_duplicates() -> None:
    # The order is ruff's (rule RUF022), checked by the lint session.
    assert len(set(salesai_cache.__all__)) == len(salesai_cache.__all__)


def test_all_lists_public_names() -> None:
    public = {
        name
        for name, value in vars(salesai_cache).items()
        if not name.startswith("_") and not isinstance(value, type(salesai_cache))
    }
    assert public - {"annotations", "TYPE_CHECKING", "Any"} <= set(
        salesai_cache.__all__
    )


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


class _Store:
    """
    An object with every store method, enough to construct a cache.
    """

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@pytest.mark.parametrize("lease", [float("inf"), 31_536_001, float("nan")])
def test_cache_rejects_lease_above_year(lease: float) -> None:
    with pytest.raises(salesai_cache.InvalidInputError, match="lease_seconds"):
        salesai_cache.AnalysisCache(
            _Store(), salesai_cache.ConversationMetricsAnalyzer(), lease_seconds=lease
        )


def test_cache_accepts_lease_of_year() -> None:
    cache = salesai_cache.AnalysisCache(
        _Store(),
        salesai_cache.ConversationMetricsAnalyzer(),
        lease_seconds=31_536_000,
    )
    assert cache.analyzer is not None
