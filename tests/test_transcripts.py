"""
parse_transcript and load_transcript_file on each accepted form and the errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from salesai_cache import (
    InvalidInputError,
    Turn,
    load_transcript_file,
    parse_transcript,
)
from salesai_cache._datasets import load_transcript_folder
from salesai_cache._keys import transcript_hash

TURNS = (
    Turn(speaker="Rep", text="Hi, how is the quarter going?"),
    Turn(speaker="Customer", text="Busy. Pipeline is thin."),
)
AS_JSON = [
    {"speaker": "Rep", "text": "Hi, how is the quarter going?"},
    {"speaker": "Customer", "text": "Busy. Pipeline is thin."},
]


def test_parse_turns() -> None:
    assert parse_transcript(list(TURNS)) == TURNS


def test_parse_mappings() -> None:
    assert parse_transcript(AS_JSON) == TURNS


def test_parse_json_string() -> None:
    assert parse_transcript(json.dumps(AS_JSON)) == TURNS


def test_parse_json_bytes() -> None:
    assert parse_transcript(json.dumps(AS_JSON).encode()) == TURNS


def test_parse_json_bytes_with_bom() -> None:
    assert parse_transcript(b"\xef\xbb\xbf" + json.dumps(AS_JSON).encode()) == TURNS


def test_parse_role_content() -> None:
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
    ]
    assert parse_transcript(messages) == (
        Turn(speaker="user", text="Hello"),
        Turn(speaker="assistant", text="Hi there"),
    )


def test_parse_strips_whitespace() -> None:
    turns = parse_transcript([{"speaker": " Rep ", "text": "  Hi \n"}])
    assert turns == (Turn(speaker="Rep", text="Hi"),)


def test_parse_lines() -> None:
    text = "Rep: Hi, how is the quarter going?\nCustomer: Busy. Pipeline is thin.\n"
    assert parse_transcript(text) == TURNS


def test_parse_lines_continuation() -> None:
    text = "Rep: Three things.\nFirst, price.\n\nSecond, support.\nCustomer: Go on."
    assert parse_transcript(text) == (
        Turn(speaker="Rep", text="Three things.\nFirst, price.\nSecond, support."),
        Turn(speaker="Customer", text="Go on."),
    )


def test_parse_lines_time_continues_turn() -> None:
    text = "Rep: When suits you?\n10:30 on Friday works."
    assert parse_transcript(text) == (
        Turn(speaker="Rep", text="When suits you?\n10:30 on Friday works."),
    )


def test_parse_lines_url_continues_turn() -> None:
    text = "Rep: Here is the deck.\nhttps://example.com/deck"
    assert parse_transcript(text) == (
        Turn(speaker="Rep", text="Here is the deck.\nhttps://example.com/deck"),
    )


def test_parse_lines_speaker_needs_no_space() -> None:
    assert parse_transcript("Rep:Hello") == (Turn(speaker="Rep", text="Hello"),)


def test_parse_lines_long_label_continues_turn() -> None:
    long_line = "x" * 65 + ": not a speaker"
    turns = parse_transcript(f"Rep: Hi\n{long_line}")
    assert turns == (Turn(speaker="Rep", text=f"Hi\n{long_line}"),)


def test_parse_lines_without_speaker() -> None:
    with pytest.raises(InvalidInputError, match="line 1"):
        parse_transcript("no speaker here\nRep: Hi")


def test_parse_lines_error_counts_blank_lines() -> None:
    with pytest.raises(InvalidInputError, match="line 3"):
        parse_transcript("\n\nno speaker here")


def test_parse_invalid_utf8() -> None:
    with pytest.raises(InvalidInputError, match=r"byte 5 is b'\\xff'"):
        parse_transcript(b"Rep: \xff")


def test_parse_empty_list() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        parse_transcript([])


def test_parse_empty_string() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        parse_transcript("  \n\n ")


def test_parse_empty_json_list() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        parse_transcript("[]")


def test_parse_unknown_format() -> None:
    value: Any = 42
    with pytest.raises(InvalidInputError, match="unknown transcript format int"):
        parse_transcript(value)


def test_parse_json_object() -> None:
    with pytest.raises(InvalidInputError, match="JSON object"):
        parse_transcript('{"turns": []}')


def test_parse_invalid_json() -> None:
    with pytest.raises(InvalidInputError, match="looks like JSON"):
        parse_transcript('[{"speaker": "Rep",')


def test_parse_turn_not_object() -> None:
    with pytest.raises(InvalidInputError, match=r"turn 1: .* got str"):
        turns: list[Any] = [AS_JSON[0], "Customer: hi"]
        parse_transcript(turns)


def test_parse_turn_missing_text() -> None:
    with pytest.raises(InvalidInputError, match=r"turn 0: .*\['speaker'\]"):
        parse_transcript([{"speaker": "Rep"}])


def test_parse_turn_text_not_string() -> None:
    with pytest.raises(InvalidInputError, match="turn 0: 'text' is int"):
        parse_transcript([{"speaker": "Rep", "text": 3}])


def test_parse_turn_role_not_string() -> None:
    with pytest.raises(InvalidInputError, match="turn 1: 'role' is NoneType"):
        parse_transcript([AS_JSON[0], {"role": None, "content": "Hi"}])


def test_parse_turn_type_error_hides_value() -> None:
    with pytest.raises(InvalidInputError) as raised:
        parse_transcript([{"speaker": "Rep", "text": 48250}])
    assert "48250" not in str(raised.value)


def test_parse_turn_missing_speaker() -> None:
    with pytest.raises(InvalidInputError, match=r"turn 0: no 'speaker' \(or 'role'\)"):
        parse_transcript([{"text": "Hi"}])


def test_parse_turn_blank_speaker() -> None:
    with pytest.raises(InvalidInputError, match="turn 0: the speaker is empty"):
        parse_transcript([{"speaker": "  ", "text": "Hi"}])


def test_parse_unicode() -> None:
    text = "Verkäufer: Grüß Gott 👋\n顧客: こんにちは"
    assert parse_transcript(text.encode()) == (
        Turn(speaker="Verkäufer", text="Grüß Gott 👋"),
        Turn(speaker="顧客", text="こんにちは"),
    )


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_text(json.dumps(AS_JSON), encoding="utf-8")
    assert load_transcript_file(path) == TURNS


def test_load_text_file(tmp_path: Path) -> None:
    path = tmp_path / "call.txt"
    path.write_text(
        "Rep: Hi, how is the quarter going?\r\nCustomer: Busy. Pipeline is thin.\r\n",
        encoding="utf-8",
    )
    assert load_transcript_file(path) == TURNS


def test_load_file_by_str(tmp_path: Path) -> None:
    path = tmp_path / "call.txt"
    path.write_text("Rep: Hi", encoding="utf-8")
    assert load_transcript_file(str(path)) == (Turn(speaker="Rep", text="Hi"),)


def test_load_invalid_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[1]", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"broken\.json: invalid transcript"):
        load_transcript_file(path)


@pytest.mark.parametrize(
    ("content", "position"),
    [("not json", "line 1, column 1"), ('[{"speaker": "Rep",\n', "line 2, column 1")],
    ids=["text", "truncated"],
)
def test_load_json_file_invalid(tmp_path: Path, content: str, position: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(
        InvalidInputError, match=rf"bad\.json: invalid JSON at {position}"
    ):
        load_transcript_file(path)


def test_load_json_file_invalid_hides_content(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("Buyer: our budget is 48,250", encoding="utf-8")
    with pytest.raises(InvalidInputError) as raised:
        load_transcript_file(path)
    assert "48,250" not in str(raised.value)


def test_load_json_file_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_text('"Rep: Hi"', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="expected a JSON list of turns"):
        load_transcript_file(path)


def test_load_json_file_object(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_text('{"turns": []}', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="JSON object with keys"):
        load_transcript_file(path)


def test_load_json_file_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(AS_JSON).encode())
    assert load_transcript_file(path) == TURNS


def test_load_folder_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("not json", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"bad\.json: invalid JSON at line 1"):
        load_transcript_folder(tmp_path)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_transcript_file(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    "text",
    [
        "Rep: hello\n10:31 Buyer: hi there?",
        "[10:30] Rep: hello\n[10:31] Buyer: hi there?",
        "00:00:01 Rep: hello\n00:00:05 Buyer: hi there?",
        "9:05 PM Rep: hello\n9:06 PM Buyer: hi there?",
    ],
    ids=["plain", "bracketed", "seconds", "am-pm"],
)
def test_lines_time_stamps_dropped(text: str) -> None:
    assert parse_transcript(text) == (
        Turn(speaker="Rep", text="hello"),
        Turn(speaker="Buyer", text="hi there?"),
    )


def test_lines_time_in_text_continues() -> None:
    turns = parse_transcript("Rep: Shall we say 10:30?\n10:30 works for me too")
    assert turns == (
        Turn(speaker="Rep", text="Shall we say 10:30?\n10:30 works for me too"),
    )


# The transcript hash: stored fingerprints depend on it staying the same.

MIXED = [
    {"speaker": "Rep", "text": "Caf\u00e9 at  10:30?\n"},
    {"role": "Buyer", "content": "Cafe\u0301 works."},
]


def test_hash_pinned() -> None:
    # A change here makes every stored analysis stale: it needs a new
    # analysis_version scheme, not an edit of this value.
    assert transcript_hash(parse_transcript(MIXED)) == (
        "ce88b9ed36f559c4c290007d2c84e25fb25c51ecb95aa43e30f2fab70d044c13"
    )


def test_hash_composed_equals_decomposed() -> None:
    composed = [{"speaker": "Rep", "text": "Caf\u00e9"}]
    decomposed = [{"speaker": "Rep", "text": "Cafe\u0301"}]
    assert transcript_hash(parse_transcript(composed)) == transcript_hash(
        parse_transcript(decomposed)
    )


def test_hash_folds_whitespace() -> None:
    spaced = [{"speaker": " Rep ", "text": "a \t b\n\nc "}]
    plain = [{"speaker": "Rep", "text": "a b c"}]
    assert transcript_hash(parse_transcript(spaced)) == transcript_hash(
        parse_transcript(plain)
    )


def test_hash_keeps_case() -> None:
    upper = [{"speaker": "Rep", "text": "Yes"}]
    lower = [{"speaker": "Rep", "text": "yes"}]
    assert transcript_hash(parse_transcript(upper)) != transcript_hash(
        parse_transcript(lower)
    )
