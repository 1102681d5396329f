"""
Location of the folders that the wheel ships inside the package.

A wheel carries the repository's ``sql/`` and ``data/`` folders as
``salesai_cache/sql`` and ``salesai_cache/data``. In a source checkout (an
editable install) they are not inside the package, so the repository's own
folders are used instead.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["packaged_folder"]


def packaged_folder(name: str) -> Traversable:
    """
    Return the shipped folder ``name`` (``sql`` or ``data``).

    Raises:
        FileNotFoundError: the folder is neither in the package nor in a
            source checkout.
    """
    packaged = resources.files("salesai_cache") / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"the salesai_cache folder {name!r} is missing from the installed "
        "package: reinstall salesai-cache"
    )
