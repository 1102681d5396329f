"""
Deterministic conversation statistics: talk ratios, questions, monologues.

``ConversationMetricsAnalyzer`` needs no network and no API key, so the cache
can run, and be tried out, without a model provider.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from .._keys import analysis_version
from .._models import AnalyzerOutput, TokenUsage, Turn
from ..exceptions import InvalidInputError

__all__ = [
    "ConversationMetrics",
    "ConversationMetricsAnalyzer",
    "Monologue",
    "SpeakerMetrics",
]

# A question is a run of question marks, optionally mixed with "!" ("really?!"),
# so "Why?? Who?" counts two. The full-width and Arabic marks cover transcripts
# in languages that do not use "?".
_QUESTION = re.compile(r"[?\uff1f\u061f][?!\uff1f\u061f\uff01]*")


class SpeakerMetrics(BaseModel):
    """
    Statistics of one speaker in a conversation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: str
    turns: int = Field(ge=0)
    words: int = Field(ge=0)
    talk_ratio: float = Field(
        ge=0,
        le=1,
        description="Share of all words spoken by this speaker, rounded to 3 places.",
    )
    questions: int = Field(
        ge=0, description="Questions asked: runs of question marks, as in 'Why?!'."
    )
    longest_monologue_words: int = Field(
        ge=0,
        description="Words in this speaker's longest run of consecutive turns.",
    )
    average_words_per_turn: float = Field(
        ge=0, description="Words per turn, rounded to 2 places."
    )


class Monologue(BaseModel):
    """
    A run of consecutive turns by one speaker.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: str
    words: int = Field(ge=0)
    turns: int = Field(ge=1)
    start_turn: int = Field(ge=0, description="Index of the run's first turn.")


class ConversationMetrics(BaseModel):
    """
    Statistics of a whole conversation.

    Words are whitespace-separated tokens. Speakers are compared after
    stripping surrounding whitespace, case-sensitively, and listed in order of
    first appearance.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_turns: int = Field(ge=1)
    total_words: int = Field(ge=0)
    question_count: int = Field(ge=0)
    speaker_switches: int = Field(
        ge=0, description="Times the next turn is by a different speaker."
    )
    first_speaker: str
    longest_monologue: Monologue = Field(
        description="The run with the most words; the earliest one on a tie."
    )
    speakers: list[SpeakerMetrics]


@dataclass
class _Tally:
    turns: int = 0
    words: int = 0
    questions: int = 0
    longest_monologue_words: int = 0


class ConversationMetricsAnalyzer:
    """
    Computes ``ConversationMetrics`` from a transcript, locally and repeatably.

    The same transcript always yields the same metrics, token usage is zero,
    and ``AnalyzerOutput.model`` is ``MODEL``, which changes whenever the
    metrics are computed differently.
    """

    MODEL = "salesai-cache/conversation-metrics@1"

    @property
    def output_model(self) -> type[ConversationMetrics]:
        """
        ``ConversationMetrics``.
        """
        return ConversationMetrics

    @property
    def model(self) -> str:
        """
        The name and version of the computation, recorded with each analysis.
        """
        return self.MODEL

    @functools.cached_property
    def analysis_version(self) -> str:
        """
        ``MODEL`` with a digest of the ``ConversationMetrics`` schema.
        """
        return analysis_version(self.MODEL, "", ConversationMetrics)

    def analyze(
        self, transcript: Sequence[Turn]
    ) -> AnalyzerOutput[ConversationMetrics]:
        """
        Compute the metrics of one conversation.

        Args:
            transcript: the turns in order.

        Returns:
            The metrics, with ``model`` set to ``MODEL`` and zero token usage.

        Raises:
            InvalidInputError: the transcript has no turns.
        """
        return AnalyzerOutput(
            analysis=compute_metrics(transcript),
            model=self.MODEL,
            usage=TokenUsage(),
        )


def compute_metrics(transcript: Sequence[Turn]) -> ConversationMetrics:
    """
    Return the metrics of a conversation.

    Raises:
        InvalidInputError: the transcript has no turns.
    """
    if not transcript:
        raise InvalidInputError("transcript is empty: expected at least one turn")

    tallies: dict[str, _Tally] = {}  # insertion order is first appearance
    runs: list[Monologue] = []
    total_words = 0
    question_count = 0
    for index, turn in enumerate(transcript):
        speaker = turn.speaker.strip()
        words = len(turn.text.split())
        questions = len(_QUESTION.findall(turn.text))
        total_words += words
        question_count += questions

        tally = tallies.setdefault(speaker, _Tally())
        tally.turns += 1
        tally.words += words
        tally.questions += questions

        if runs and runs[-1].speaker == speaker:
            last = runs[-1]
            runs[-1] = last.model_copy(
                update={"words": last.words + words, "turns": last.turns + 1}
            )
        else:
            runs.append(
                Monologue(speaker=speaker, words=words, turns=1, start_turn=index)
            )

    for run in runs:
        tally = tallies[run.speaker]
        tally.longest_monologue_words = max(tally.longest_monologue_words, run.words)

    # max() keeps the first of equal runs, so ties resolve to the earliest.
    longest = max(runs, key=lambda run: run.words)
    speakers = [
        SpeakerMetrics(
            speaker=speaker,
            turns=tally.turns,
            words=tally.words,
            talk_ratio=round(tally.words / total_words, 3) if total_words else 0.0,
            questions=tally.questions,
            longest_monologue_words=tally.longest_monologue_words,
            average_words_per_turn=round(tally.words / tally.turns, 2),
        )
        for speaker, tally in tallies.items()
    ]
    return ConversationMetrics(
        total_turns=len(transcript),
        total_words=total_words,
        question_count=question_count,
        speaker_switches=len(runs) - 1,
        first_speaker=runs[0].speaker,
        longest_monologue=longest,
        speakers=speakers,
    )
