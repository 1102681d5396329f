"""
The SQL files and data that ship inside the package.
"""

from __future__ import annotations

import pytest

from salesai_cache._datasets import load_bundled_conversations
from salesai_cache._resources import packaged_folder
from salesai_cache._sql import list_sql_files, migration_names, read_sql


def test_sql_files_listed() -> None:
    names = list_sql_files()
    for expected in (
        "setup",
        "policies",
        "verify",
        "migrations/001_add_conversation_id_and_caching",
        "migrations/001_add_conversation_id_and_caching_rollback",
        "migrations/002_add_freshness_and_claims",
        "migrations/002_add_freshness_and_claims_rollback",
        "migrations/003_add_cache_stats",
        "migrations/003_add_cache_stats_rollback",
    ):
        assert expected in names


def test_migrations_exclude_rollbacks() -> None:
    assert migration_names()[0] == "migrations/001_add_conversation_id_and_caching"
    assert not [name for name in migration_names() if name.endswith("_rollback")]


def test_read_sql_accepts_suffix() -> None:
    assert read_sql("setup.sql") == read_sql("setup")


def test_read_sql_unknown_name() -> None:
    with pytest.raises(FileNotFoundError, match="no SQL file named 'nope'"):
        read_sql("nope")


def test_data_licences_ship() -> None:
    data = packaged_folder("data")
    assert (data / "NOTICE.md").is_file()
    assert (data / "persuasionforgood" / "LICENSE").is_file()
    assert (data / "casino" / "LICENSE").is_file()


def test_bundled_conversations_load() -> None:
    conversations = load_bundled_conversations()
    sources = {item.source for item in conversations}
    assert len(conversations) == 300
    assert sources == {"PersuasionForGood", "CaSiNo"}
    assert all(item.turns for item in conversations)
    assert len({item.conversation_id for item in conversations}) == 300


def test_bundled_outcomes_known() -> None:
    outcomes = {item.outcome for item in load_bundled_conversations()}
    assert "unknown" not in outcomes
    assert "no donation" in outcomes
    assert "deal accepted" in outcomes
