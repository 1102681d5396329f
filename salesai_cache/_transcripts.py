"""
Parsing of transcripts: a JSON list of turns, or plain ``Speaker: text`` lines.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._models import Turn
from .exceptions import InvalidInputError

__all__ = ["load_transcript_file", "parse_transcript", "transcript_to_json"]

# Keys accepted for the speaker and the text of a turn given as a mapping.
# ``role``/``content`` is the OpenAI chat message shape.
_SPEAKER_KEYS = ("speaker", "role")
_TEXT_KEYS = ("text", "content")

# A time stamp that recording tools put before the speaker: 10:31, 00:01:05,
# [10:32], (1:02:03.5), 9:05 PM, followed by white space.
_TIMESTAMP = re.compile(
    r"[\[(]?\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?(?:\s?[AaPp][Mm])?[\])]?\s+"
)

# JSON type names of the values json.loads returns other than lists and objects.
_JSON_TYPES: dict[type, str] = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

TranscriptInput = str | bytes | Sequence[Turn | Mapping[str, Any]]


def parse_transcript(value: TranscriptInput) -> tuple[Turn, ...]:
    """
    Parse a transcript into turns.

    Args:
        value: a sequence of ``Turn`` objects or of mappings with a speaker
            (``speaker`` or ``role``) and a text (``text`` or ``content``);
            or a string, either a JSON list of such mappings or lines of the
            form ``Speaker: text``. Bytes must be UTF-8.

    Returns:
        The turns in order, with surrounding whitespace stripped.

    Raises:
        InvalidInputError: the transcript is empty, not valid UTF-8 (bytes
            that do not decode, or a str with lone surrogates), contains a
            NUL character (which PostgreSQL text and jsonb cannot store), or
            is in no format above. The message names the offending turn or
            line. Other control characters are kept.
    """
    if isinstance(value, bytes):
        value = _decode(value)
    if isinstance(value, str):
        turns = _parse_text(value)
    elif isinstance(value, Sequence):
        turns = tuple(_parse_turn(item, index) for index, item in enumerate(value))
    else:
        raise InvalidInputError(
            f"unknown transcript format {type(value).__name__}: expected a list "
            "of turns, a JSON string or 'Speaker: text' lines"
        )
    if not turns:
        raise InvalidInputError("transcript is empty: expected at least one turn")
    for index, turn in enumerate(turns):
        _check_storable(turn.speaker, index, "speaker")
        _check_storable(turn.text, index, "text")
    return turns


def _decode(data: bytes) -> str:
    try:
        # utf-8-sig drops the byte-order mark that Windows editors write,
        # which would otherwise hide a JSON list behind "\ufeff".
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            f"transcript is not valid UTF-8: byte {error.start} is "
            f"{data[error.start : error.start + 1]!r}"
        ) from None


def _check_storable(text: str, index: int, field: str) -> None:
    # The message gives positions, not the text, which may be confidential.
    position = text.find("\x00")
    if position < 0 and text.isascii():
        # isascii() reads a flag of the string: ASCII text encodes as is.
        return
    if position >= 0:
        raise InvalidInputError(
            f"invalid transcript turn {index}: its {field} contains a NUL "
            f"character at position {position}, which PostgreSQL cannot store"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"invalid transcript turn {index}: its {field} is not valid UTF-8 "
            f"(a lone surrogate at position {error.start})"
        ) from None


def _parse_text(text: str) -> tuple[Turn, ...]:
    stripped = text.strip()
    if stripped.startswith("[") and not _TIMESTAMP.match(stripped):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise InvalidInputError(
                f"transcript looks like JSON but is invalid: {error}"
            ) from None
        return tuple(_parse_turn(item, index) for index, item in enumerate(data))
    if stripped.startswith("{"):
        # Read as lines, a JSON object would become one turn whose speaker is
        # its first key, so name the mistake instead.
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            pass
        else:
            raise InvalidInputError(
                f"transcript is a JSON object with keys {sorted(data)}: expected "
                "a JSON list of turns"
            )
    # The unstripped text keeps line numbers in messages true to the input.
    return _parse_lines(text)


def _parse_lines(text: str) -> tuple[Turn, ...]:
    """
    Parse ``Speaker: text`` lines; a line without a speaker continues the turn.

    A time stamp before the speaker, as in ``10:31 Rep: hello`` or
    ``[00:01:05] Rep: hello``, is dropped.
    """
    turns: list[Turn] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        labelled = _split_speaker(line)
        if labelled is not None:
            turns.append(Turn(speaker=labelled[0], text=labelled[1]))
        elif turns:
            previous = turns[-1]
            joined = f"{previous.text}\n{line.strip()}".strip()
            turns[-1] = Turn(speaker=previous.speaker, text=joined)
        else:
            raise InvalidInputError(
                f"invalid transcript line {number}: expected 'Speaker: text', "
                f"got a line of {len(line)} characters without a speaker"
            )
    return tuple(turns)


def _split_speaker(line: str) -> tuple[str, str] | None:
    """
    Return the speaker and text of a ``Speaker: text`` line, else ``None``.
    """
    body = line.strip()
    stamp = _TIMESTAMP.match(body)
    candidates = [body] if stamp is None else [body[stamp.end() :], body]
    for candidate in candidates:
        label, separator, rest = candidate.partition(":")
        if separator and _is_speaker(label, rest):
            return label.strip(), rest.strip()
    return None


def _is_speaker(label: str, rest: str) -> bool:
    """
    Return whether ``label``, the text before a line's first colon, is a
    speaker label.

    A colon inside a time ("at 10:30") or a URL ("https://") belongs to a
    continuation line, not to a speaker.
    """
    label = label.strip()
    if not label or len(label) > 64:
        return False
    if label[-1].isdigit() and rest[:1].isdigit():
        return False
    return not rest.startswith("//")


def _parse_turn(item: object, index: int) -> Turn:
    if isinstance(item, Turn):
        return item
    # dict first: checking against the Mapping ABC costs more, on every turn.
    if not isinstance(item, (dict, Mapping)):
        raise InvalidInputError(
            f"invalid transcript turn {index}: expected an object with speaker "
            f"and text, got {type(item).__name__}"
        )
    speaker = _turn_field(item, index, _SPEAKER_KEYS)
    text = _turn_field(item, index, _TEXT_KEYS)
    try:
        return Turn(speaker=speaker.strip(), text=text.strip())
    except ValidationError:
        raise InvalidInputError(
            f"invalid transcript turn {index}: the speaker is empty"
        ) from None


def _turn_field(item: Mapping[Any, Any], index: int, keys: tuple[str, str]) -> str:
    """
    Return the value of the first of ``keys`` in a turn, which must be a
    string. The message names the key and the type, never the value, which
    may be confidential.
    """
    for key in keys:
        if key in item:
            value = item[key]
            if not isinstance(value, str):
                raise InvalidInputError(
                    f"invalid transcript turn {index}: {key!r} is "
                    f"{type(value).__name__}, expected a string"
                )
            return value
    raise InvalidInputError(
        f"invalid transcript turn {index}: no {keys[0]!r} (or {keys[1]!r}) key, "
        f"got keys {sorted(str(key) for key in item)}"
    )


def transcript_to_json(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """
    Return the turns as JSON objects, the form stored in ``salesai_sessions``.
    """
    return [{"speaker": turn.speaker, "text": turn.text} for turn in turns]


def load_transcript_file(path: str | os.PathLike[str]) -> tuple[Turn, ...]:
    """
    Read and parse one transcript file: a ``.json`` file contains a JSON list
    of turns, any other file ``Speaker: text`` lines or a JSON list.

    Raises:
        OSError: the file cannot be read.
        InvalidInputError: the file is not a transcript; the message names it,
            and for invalid JSON the line and column of the error.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        if path.suffix.lower() == ".json":
            return _parse_json_file(_decode(data))
        return parse_transcript(data)
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None


def _parse_json_file(text: str) -> tuple[Turn, ...]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        # The position, not the document: transcripts are confidential.
        raise InvalidInputError(
            f"invalid JSON at line {error.lineno}, column {error.colno}: "
            f"{error.msg}; expected a list of turns"
        ) from None
    if isinstance(data, dict):
        # parse_transcript names the keys of an object.
        return parse_transcript(text)
    if not isinstance(data, list):
        raise InvalidInputError(
            f"expected a JSON list of turns, got a JSON {_JSON_TYPES[type(data)]}"
        )
    return parse_transcript(data)
