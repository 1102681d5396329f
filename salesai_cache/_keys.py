"""
Fingerprints that decide whether a stored analysis is still fresh.

A stored analysis is fresh when both its transcript hash and its analysis
version equal those of the request. The transcript hash covers what was said;
the analysis version covers how it was analysed (model, prompt, output schema).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ._models import Turn

__all__ = ["analysis_version", "normalize_transcript", "transcript_hash"]


def normalize_transcript(turns: Sequence[Turn]) -> list[list[str]]:
    """
    Return the canonical form of a transcript that ``transcript_hash`` hashes.

    Each turn becomes ``[speaker, text]``, both in Unicode NFC with every run
    of whitespace (spaces, tabs, line breaks) folded into one space and none
    at either end. So the JSON key order of a turn, the spelling of its keys
    (``speaker``/``role``, ``text``/``content``) and whitespace around or
    between words make no difference; words, their case, punctuation,
    speakers and the order and number of turns do. Turns left empty are kept,
    because an empty reply is still a turn.
    """
    return [[_fold(turn.speaker), _fold(turn.text)] for turn in turns]


def _fold(text: str) -> str:
    # ASCII text is already in NFC, and isascii() only reads a flag.
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def transcript_hash(turns: Sequence[Turn]) -> str:
    """
    Return the SHA-256 hex digest of the normalised transcript.
    """
    canonical = json.dumps(
        normalize_transcript(turns), ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def analysis_version(
    model: str,
    prompt: str,
    output_model: type[BaseModel],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """
    Return a version string for analyses made by one model, prompt and schema.

    The string is ``<model>:<digest>``, where the digest is the first 16 hex
    digits of the SHA-256 of the prompt, the output model's JSON schema and
    ``extra`` (such as the temperature). Changing any of them changes the
    version, so analyses stored under the old one become stale.
    """
    material = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "schema": output_model.model_json_schema(),
            "extra": dict(extra or {}),
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]
    return f"{model}:{digest}"
