"""
The analysis of a sales conversation, as a model returns it.

These models double as the OpenAI structured-output schema: every field is
required, no object accepts extra keys, and each ``description`` is sent to the
model as part of the JSON schema, so it is worded as an instruction.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CallOutcome", "SalesCallAnalysis", "SkillAssessment", "SkillScores"]


def _drop_bounds(schema: dict[str, Any]) -> None:
    """
    Remove ``minimum``/``maximum`` from a field's JSON schema.

    Pydantic still enforces the bounds when it validates a reply. Strict
    structured outputs have rejected these keywords on some models and
    OpenAI-compatible endpoints ("'minimum' is not permitted"), failing every
    request, so the schema states the range in the description instead.
    """
    schema.pop("minimum", None)
    schema.pop("maximum", None)


SkillScore = Annotated[
    int,
    Field(
        ge=0,
        le=10,
        json_schema_extra=_drop_bounds,
        description=(
            "Integer from 0 to 10: 0-2 absent or harmful, 3-4 weak, 5-6 adequate, "
            "7-8 strong, 9-10 exemplary."
        ),
    ),
]

OverallScore = Annotated[
    int,
    Field(
        ge=0,
        le=100,
        json_schema_extra=_drop_bounds,
        description=(
            "Integer from 0 to 100 rating the salesperson's whole performance in "
            "this conversation; 50 is an average trainee, 80 or more is ready for "
            "real customers."
        ),
    ),
]

CallOutcome = Literal["won", "advanced", "undecided", "lost"]
"""
Where the conversation left the deal.
"""


class SkillAssessment(BaseModel):
    """
    The score of one sales skill and the evidence for it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: SkillScore
    evidence: str = Field(
        description=(
            "One or two sentences citing what the salesperson said or failed to "
            "say that justifies the score."
        )
    )


class SkillScores(BaseModel):
    """
    Scores of the six skills that the analysis rates.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    discovery: SkillAssessment = Field(
        description=(
            "Asking open questions that uncover the customer's situation, needs, "
            "pain points, budget, timeline and decision process."
        )
    )
    rapport: SkillAssessment = Field(
        description=(
            "Building trust: courtesy, empathy, matching the customer's tone, "
            "personalising the conversation."
        )
    )
    active_listening: SkillAssessment = Field(
        description=(
            "Acknowledging, paraphrasing and building on what the customer said "
            "instead of talking over it or repeating a script."
        )
    )
    value_proposition: SkillAssessment = Field(
        description=(
            "Tying the product's benefits to the needs the customer expressed, "
            "with specifics rather than generic claims."
        )
    )
    objection_handling: SkillAssessment = Field(
        description=(
            "Exploring and answering concerns (price, timing, competitors, risk) "
            "without dismissing them. Score 5 when the customer raised none."
        )
    )
    closing: SkillAssessment = Field(
        description=(
            "Asking for a commitment or a concrete next step (purchase, meeting, "
            "trial) at a suitable moment."
        )
    )


class SalesCallAnalysis(BaseModel):
    """
    A coach's analysis of one sales conversation.

    Scores are range-checked on validation: ``overall_score`` 0 to 100, each
    skill 0 to 10.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    overall_score: OverallScore
    skills: SkillScores = Field(description="A score for each sales skill.")
    outcome: CallOutcome = Field(
        description=(
            "Where the conversation left the deal: 'won' if the customer agreed "
            "to buy, 'advanced' if they agreed to a concrete next step such as a "
            "meeting or a trial, 'lost' if they declined, else 'undecided'."
        )
    )
    strengths: list[str] = Field(
        description=(
            "Two to four things the salesperson did well, each one sentence "
            "citing the conversation."
        )
    )
    improvements: list[str] = Field(
        description=(
            "Two to four specific, actionable changes for the next conversation, "
            "each one sentence."
        )
    )
    next_steps: list[str] = Field(
        description=(
            "Follow-up actions the salesperson committed to or should take with "
            "this customer; empty if there are none."
        )
    )
    summary: str = Field(
        description=(
            "Three sentences at most on how the conversation went, addressed to "
            "the salesperson."
        )
    )
