"""
Parsing of transcripts: a JSON list of turns, or plain ``Speaker: text`` lines.
"""

from __future__ import annotations

import json
import os
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
        try:
            # utf-8-sig drops the byte-order mark that Windows editors write,
            # which would otherwise hide a JSON list behind "\ufeff".
            value = value.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise InvalidInputError(
                f"transcript is not valid UTF-8: byte {error.start} is "
                f"{value[error.start : error.start + 1]!r}"
            ) from None
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


def _check_storable(text: str, index: int, field: str) -> None:
    # The message gives positions, not the text, which may be confidential.
    position = text.find("\x00")
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
    if stripped.startswith("["):
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
    """
    turns: list[Turn] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        speaker, separator, said = line.partition(":")
        if separator and _is_speaker(speaker, said):
            turns.append(Turn(speaker=speaker.strip(), text=said.strip()))
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
    if not isinstance(item, Mapping):
        raise InvalidInputError(
            f"invalid transcript turn {index}: expected an object with speaker "
            f"and text, got {type(item).__name__}"
        )
    speaker = next((item[key] for key in _SPEAKER_KEYS if key in item), None)
    text = next((item[key] for key in _TEXT_KEYS if key in item), None)
    if not isinstance(speaker, str) or not isinstance(text, str):
        raise InvalidInputError(
            f"invalid transcript turn {index}: expected string 'speaker' (or "
            f"'role') and 'text' (or 'content'), got keys {sorted(item)}"
        )
    try:
        return Turn(speaker=speaker.strip(), text=text.strip())
    except ValidationError:
        raise InvalidInputError(
            f"invalid transcript turn {index}: the speaker is empty"
        ) from None


def transcript_to_json(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """
    Return the turns as JSON objects, the form stored in ``salesai_sessions``.
    """
    return [{"speaker": turn.speaker, "text": turn.text} for turn in turns]


def load_transcript_file(path: str | os.PathLike[str]) -> tuple[Turn, ...]:
    """
    Read and parse one transcript file (``.json`` or ``Speaker: text`` lines).

    Raises:
        OSError: the file cannot be read.
        InvalidInputError: the file is not a transcript; the message names it.
    """
    path = Path(path)
    try:
        return parse_transcript(path.read_bytes())
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None
