"""
ThreadedAnalyzer: a sync analyzer made awaitable by running it in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Generic, TypeVar

from pydantic import BaseModel

from .._models import AnalyzerOutput, Turn
from .._protocols import Analyzer

__all__ = ["ThreadedAnalyzer"]

AnalysisT = TypeVar("AnalysisT", bound=BaseModel)


class ThreadedAnalyzer(Generic[AnalysisT]):
    """
    Runs a sync analyzer, such as ``ConversationMetricsAnalyzer``, in a
    worker thread with ``asyncio.to_thread`` so that it does not block the
    event loop. ``AsyncAnalysisCache`` wraps sync analyzers in it by itself.

    A thread cannot be interrupted: when the awaiting task is cancelled, the
    analysis runs on to its end in the thread. ``AsyncAnalysisCache`` keeps
    its claim meanwhile and saves the analysis when the thread returns.

    Args:
        analyzer: the sync analyzer.
    """

    def __init__(self, analyzer: Analyzer[AnalysisT]) -> None:
        self._analyzer = analyzer

    @property
    def wrapped(self) -> Analyzer[AnalysisT]:
        """
        The sync analyzer.
        """
        return self._analyzer

    @property
    def output_model(self) -> type[AnalysisT]:
        """
        The wrapped analyzer's output model.
        """
        return self._analyzer.output_model

    @property
    def analysis_version(self) -> str:
        """
        The wrapped analyzer's analysis version.
        """
        return self._analyzer.analysis_version

    async def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[AnalysisT]:
        """
        Run the wrapped analyzer's ``analyze`` in a thread.

        Raises:
            The exceptions of the wrapped analyzer.
        """
        return await asyncio.to_thread(self._analyzer.analyze, transcript)
