"""
Access to the SQL files shipped with the package.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable

from ._resources import packaged_folder

__all__ = ["list_sql_files", "migration_names", "read_sql", "sql_root"]


def sql_root() -> Traversable:
    """
    Return the folder that contains ``setup.sql``, ``policies.sql`` and ``migrations/``.
    """
    return packaged_folder("sql")


def list_sql_files() -> list[str]:
    """
    Return the names of every shipped SQL file, such as ``setup`` or
    ``migrations/001_add_conversation_id_and_caching_rollback``.
    """
    root = sql_root()
    names = [entry.name[:-4] for entry in root.iterdir() if entry.name.endswith(".sql")]
    migrations = root / "migrations"
    names += [
        f"migrations/{entry.name[:-4]}"
        for entry in migrations.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(names)


def migration_names() -> list[str]:
    """
    Return the forward migrations in the order they apply, without rollbacks.
    """
    return [
        name
        for name in list_sql_files()
        if name.startswith("migrations/") and not name.endswith("_rollback")
    ]


def read_sql(name: str) -> str:
    """
    Return the text of a shipped SQL file.

    Args:
        name: the path below ``sql/`` without ``.sql``, such as ``setup``,
            ``policies``, ``verify`` or
            ``migrations/001_add_conversation_id_and_caching``.

    Raises:
        FileNotFoundError: no shipped file has that name; the message lists
            the names that exist.
    """
    if name.endswith(".sql"):
        name = name[:-4]
    entry = sql_root().joinpath(*f"{name}.sql".split("/"))
    if not entry.is_file():
        raise FileNotFoundError(
            f"no SQL file named {name!r}: expected one of {list_sql_files()}"
        )
    return entry.read_text(encoding="utf-8")
