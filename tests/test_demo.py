"""
The main job, ``salesai-cache demo``, on an embedded PostgreSQL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from salesai_cache.__main__ import main

pytestmark = pytest.mark.sql


@pytest.fixture(autouse=True)
def _restore_library_log_level() -> Iterator[None]:
    library = logging.getLogger("salesai_cache")
    level = library.level
    yield
    library.setLevel(level)


@pytest.fixture(autouse=True)
def _no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_demo_second_pass_all_hits(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="salesai_cache")

    code = main(["demo", "--limit", "5"])

    out = capsys.readouterr().out
    assert code == 0
    assert "Pass 1: 0 hits, 5 misses" in out
    assert "Pass 2: 5 hits, 0 misses" in out
    assert "Conversations: 5" in out
    assert "p4g-" in out
    hits = [
        r for r in caplog.records if "Found cached analysis in database" in r.message
    ]
    assert len(hits) == 5


def test_demo_logs_no_transcript_text(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    main(["demo", "--limit", "3"])

    capsys.readouterr()
    assert "Good morning. How are you doing today?" not in caplog.text


def test_demo_kept_data_dir_hits_first_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    A second run on a kept data directory finds the first run's analyses.
    """
    data_dir = tmp_path / "pgdata"
    assert main(["demo", "--limit", "3", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()

    assert main(["demo", "--limit", "3", "--data-dir", str(data_dir)]) == 0

    out = capsys.readouterr().out
    assert "Pass 1: 3 hits, 0 misses" in out


def test_demo_user_transcripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    turns = [
        {"speaker": "Rep", "text": "Hi, what brings you to us today?"},
        {"speaker": "Buyer", "text": "We need a faster CRM."},
    ]
    (tmp_path / "call-1.json").write_text(json.dumps(turns), encoding="utf-8")
    (tmp_path / "call-2.txt").write_text(
        "Rep: Shall we book a demo?\nBuyer: Yes, Tuesday works.\n", encoding="utf-8"
    )

    code = main(["demo", "--transcripts", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert "call-1" in out
    assert "call-2" in out
    assert "Pass 2: 2 hits, 0 misses" in out


def test_demo_empty_transcript_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--transcripts", str(tmp_path)])

    assert code == 2
    assert "no transcripts in" in capsys.readouterr().err


def test_demo_invalid_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--limit", "0"])

    assert code == 2
    assert "invalid --limit 0" in capsys.readouterr().err


def test_demo_duplicate_stems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "call.txt").write_text("Rep: Hello\n", encoding="utf-8")
    (tmp_path / "call.json").write_text(
        '[{"speaker": "Rep", "text": "Hi"}]', encoding="utf-8"
    )

    code = main(["demo", "--transcripts", str(tmp_path)])

    assert code == 2
    assert "would share the conversation id 'call'" in capsys.readouterr().err


def test_demo_transcripts_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "call.txt"
    path.write_text("Rep: Hello\n", encoding="utf-8")

    code = main(["demo", "--transcripts", str(path)])

    assert code == 2
    assert "it is a file" in capsys.readouterr().err


def test_demo_data_dir_not_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a database", encoding="utf-8")

    code = main(["demo", "--limit", "1", "--data-dir", str(tmp_path)])

    assert code == 2
    assert "must be an empty folder" in capsys.readouterr().err


def test_demo_openai_without_key(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--analyzer", "openai"])

    assert code == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_demo_singular_counts(capsys: pytest.CaptureFixture[str]) -> None:
    main(["demo", "--limit", "1"])

    out = capsys.readouterr().out
    assert "Analysing 1 conversation with" in out
    assert "Pass 2: 1 hit, 0 misses" in out
