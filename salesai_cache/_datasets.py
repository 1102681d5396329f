"""
The bundled conversations and the user's own transcript folders, for the demo.

Two corpora of real, typed conversations between crowd workers ship in
``data/`` with their licences (see ``data/NOTICE.md``):

- PersuasionForGood: a persuader asks a persuadee to donate to a children's
  charity; the outcome is the donation the persuadee made afterwards.
- CaSiNo: two campers negotiate over food, water and firewood; the outcome is
  the final deal action.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._models import Turn
from ._resources import packaged_folder
from ._transcripts import load_transcript_file

__all__ = ["Conversation", "load_bundled_conversations", "load_transcript_folder"]

_TRANSCRIPT_SUFFIXES = (".json", ".txt")

# CaSiNo's deal actions, which the corpus records as turns of their own.
_CASINO_ACTIONS = ("Submit-Deal", "Accept-Deal", "Reject-Deal", "Walk-Away")


@dataclass(frozen=True)
class Conversation:
    """
    One conversation to analyse: its id, corpus, turns and known outcome.
    """

    conversation_id: str
    source: str
    turns: tuple[Turn, ...]
    outcome: str


def load_bundled_conversations() -> list[Conversation]:
    """
    Return every bundled conversation, PersuasionForGood first, each corpus in
    file order.
    """
    return _load_persuasionforgood() + _load_casino()


def _load_persuasionforgood() -> list[Conversation]:
    folder = packaged_folder("data") / "persuasionforgood"
    donations: dict[str, float] = {}
    with io.StringIO((folder / "outcomes.csv").read_text(encoding="utf-8")) as file:
        for row in csv.DictReader(file):
            donations[row["dialogue_id"]] = float(row["persuadee_donation_usd"])

    turns: dict[str, list[Turn]] = defaultdict(list)
    with io.StringIO((folder / "dialogues.csv").read_text(encoding="utf-8")) as file:
        for row in csv.DictReader(file):
            speaker = row["role"].capitalize()
            turns[row["dialogue_id"]].append(Turn(speaker=speaker, text=row["text"]))

    conversations = []
    for dialogue_id, dialogue in turns.items():
        donation = donations.get(dialogue_id)
        if donation is None:
            outcome = "unknown"
        elif donation > 0:
            outcome = f"donated ${donation:.2f}"
        else:
            outcome = "no donation"
        conversations.append(
            Conversation(
                conversation_id=f"p4g-{dialogue_id}",
                source="PersuasionForGood",
                turns=tuple(dialogue),
                outcome=outcome,
            )
        )
    return conversations


def _load_casino() -> list[Conversation]:
    path = packaged_folder("data") / "casino" / "negotiations.jsonl"
    conversations = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        turns = tuple(
            Turn(speaker=_casino_speaker(turn["speaker"]), text=turn["text"])
            for turn in record["turns"]
            if turn.get("action") is None
        )
        conversations.append(
            Conversation(
                conversation_id=f"casino-{record['dialogue_id']}",
                source="CaSiNo",
                turns=turns,
                outcome=_casino_outcome(record["turns"]),
            )
        )
    return conversations


def _casino_speaker(speaker: str) -> str:
    # The corpus names its two workers mturk_agent_1 and mturk_agent_2.
    return "Camper " + speaker.rsplit("_", 1)[-1]


def _casino_outcome(turns: list[dict[str, Any]]) -> str:
    actions = [turn["action"] for turn in turns if turn.get("action")]
    if not actions:
        return "no deal"
    last: str = actions[-1]
    if last == "Accept-Deal":
        return "deal accepted"
    if last == "Walk-Away":
        return "walked away"
    if last in _CASINO_ACTIONS:
        return last.replace("-", " ").lower()
    return "no deal"


def load_transcript_folder(folder: Path) -> list[Conversation]:
    """
    Return one conversation per ``.json`` or ``.txt`` file in ``folder``,
    sorted by file name; the file stem is the conversation id.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        InvalidInputError: a file is not a transcript; the message names it.
        ValueError: ``folder`` is a file, contains no transcript files, or
            contains two with the same stem (``call.json`` and ``call.txt``).
    """
    if not folder.exists():
        raise FileNotFoundError(f"transcript folder {folder} not found")
    if not folder.is_dir():
        raise ValueError(
            f"invalid transcript folder {folder}: it is a file; pass the folder "
            "that contains the transcript files"
        )
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in _TRANSCRIPT_SUFFIXES
    )
    if not files:
        raise ValueError(
            f"no transcripts in {folder}: expected .json files (a list of turns) "
            "or .txt files ('Speaker: text' lines)"
        )
    stems: dict[str, Path] = {}
    for path in files:
        other = stems.setdefault(path.stem, path)
        if other is not path:
            raise ValueError(
                f"transcripts {other.name} and {path.name} would share the "
                f"conversation id {path.stem!r}: rename one of them"
            )
    return [
        Conversation(
            conversation_id=path.stem,
            source=str(folder.name),
            turns=load_transcript_file(path),
            outcome="-",
        )
        for path in files
    ]
