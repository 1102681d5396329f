"""
ConversationMetricsAnalyzer on small transcripts with hand-computed metrics.
"""

from __future__ import annotations

import pytest

from salesai_cache import (
    ConversationMetrics,
    ConversationMetricsAnalyzer,
    InvalidInputError,
    TokenUsage,
    Turn,
)
from salesai_cache._analyzers.metrics import Monologue, SpeakerMetrics

# Words per turn: 6, 4, 3, 5, 2, 3 (total 23). Rep speaks turns 0, 3, 4, 5
# (16 words), Customer turns 1 and 2 (7 words). Runs: Rep 6, Customer 4+3=7,
# Rep 5+2+3=10. Questions: "right?", "How many?", "Why?!", "Really??".
CALL = (
    Turn(speaker="Rep", text="Hi! You run a team, right?"),
    Turn(speaker="Customer", text="Yes, twelve sales reps."),
    Turn(speaker=" Customer ", text="Why?! Just curious."),
    Turn(speaker="Rep", text="How many? Are they remote"),
    Turn(speaker="Rep", text="Really?? Great."),
    Turn(speaker="Rep", text="Let's book time."),
)


@pytest.fixture
def metrics() -> ConversationMetrics:
    return ConversationMetricsAnalyzer().analyze(CALL).analysis


def _speaker(metrics: ConversationMetrics, name: str) -> SpeakerMetrics:
    return next(stats for stats in metrics.speakers if stats.speaker == name)


def test_metrics_total_turns(metrics: ConversationMetrics) -> None:
    assert metrics.total_turns == 6


def test_metrics_total_words(metrics: ConversationMetrics) -> None:
    assert metrics.total_words == 23


def test_metrics_question_count(metrics: ConversationMetrics) -> None:
    assert metrics.question_count == 4


def test_metrics_speaker_switches(metrics: ConversationMetrics) -> None:
    assert metrics.speaker_switches == 2


def test_metrics_first_speaker(metrics: ConversationMetrics) -> None:
    assert metrics.first_speaker == "Rep"


def test_metrics_speakers_in_order_of_appearance(metrics: ConversationMetrics) -> None:
    assert [stats.speaker for stats in metrics.speakers] == ["Rep", "Customer"]


def test_metrics_speaker_whitespace_stripped(metrics: ConversationMetrics) -> None:
    assert _speaker(metrics, "Customer").turns == 2


def test_metrics_rep_stats(metrics: ConversationMetrics) -> None:
    assert _speaker(metrics, "Rep") == SpeakerMetrics(
        speaker="Rep",
        turns=4,
        words=16,
        talk_ratio=0.696,
        questions=3,
        longest_monologue_words=10,
        average_words_per_turn=4.0,
    )


def test_metrics_customer_stats(metrics: ConversationMetrics) -> None:
    assert _speaker(metrics, "Customer") == SpeakerMetrics(
        speaker="Customer",
        turns=2,
        words=7,
        talk_ratio=0.304,
        questions=1,
        longest_monologue_words=7,
        average_words_per_turn=3.5,
    )


def test_metrics_longest_monologue(metrics: ConversationMetrics) -> None:
    assert metrics.longest_monologue == Monologue(
        speaker="Rep", words=10, turns=3, start_turn=3
    )


def test_metrics_longest_monologue_tie_is_earliest() -> None:
    turns = [
        Turn(speaker="A", text="one two"),
        Turn(speaker="B", text="three four"),
    ]
    metrics = ConversationMetricsAnalyzer().analyze(turns).analysis
    assert metrics.longest_monologue.speaker == "A"


def test_metrics_speakers_case_sensitive() -> None:
    turns = [Turn(speaker="rep", text="hi"), Turn(speaker="Rep", text="hello")]
    metrics = ConversationMetricsAnalyzer().analyze(turns).analysis
    assert [stats.speaker for stats in metrics.speakers] == ["rep", "Rep"]


def test_metrics_output_model_and_usage() -> None:
    output = ConversationMetricsAnalyzer().analyze(CALL)
    assert output.model == "salesai-cache/conversation-metrics@1"
    assert output.usage == TokenUsage()


def test_metrics_output_model_property() -> None:
    assert ConversationMetricsAnalyzer().output_model is ConversationMetrics


def test_metrics_deterministic() -> None:
    first = ConversationMetricsAnalyzer().analyze(CALL).analysis
    second = ConversationMetricsAnalyzer().analyze(list(CALL)).analysis
    assert first.model_dump_json() == second.model_dump_json()


def test_metrics_round_trips_through_json(metrics: ConversationMetrics) -> None:
    stored = metrics.model_dump(mode="json")
    assert ConversationMetrics.model_validate(stored) == metrics


def test_metrics_single_speaker() -> None:
    turns = [Turn(speaker="Rep", text="Hello there."), Turn(speaker="Rep", text="Hi?")]
    metrics = ConversationMetricsAnalyzer().analyze(turns).analysis
    assert metrics.speakers == [
        SpeakerMetrics(
            speaker="Rep",
            turns=2,
            words=3,
            talk_ratio=1.0,
            questions=1,
            longest_monologue_words=3,
            average_words_per_turn=1.5,
        )
    ]


def test_metrics_single_speaker_no_switches() -> None:
    turns = [Turn(speaker="Rep", text="Hello."), Turn(speaker="Rep", text="Hi.")]
    metrics = ConversationMetricsAnalyzer().analyze(turns).analysis
    assert metrics.speaker_switches == 0


def test_metrics_unicode_words() -> None:
    turns = [
        Turn(speaker="Verkäufer", text="Grüß Gott, wie läuft's?"),
        Turn(speaker="顧客", text="元気です\u3000ありがとう\uff1f"),
    ]
    metrics = ConversationMetricsAnalyzer().analyze(turns).analysis
    assert [stats.words for stats in metrics.speakers] == [4, 2]


def test_metrics_unicode_questions() -> None:
    turns = [
        Turn(speaker="顧客", text="いくらですか\uff1f"),
        Turn(speaker="عميل", text="كم السعر؟"),
    ]
    metrics = ConversationMetricsAnalyzer().analyze(turns).analysis
    assert metrics.question_count == 2


def test_metrics_empty_texts() -> None:
    turns = [Turn(speaker="Rep", text=""), Turn(speaker="Customer", text=" ")]
    metrics = ConversationMetricsAnalyzer().analyze(turns).analysis
    assert [stats.talk_ratio for stats in metrics.speakers] == [0.0, 0.0]


def test_metrics_empty_transcript() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        ConversationMetricsAnalyzer().analyze([])
