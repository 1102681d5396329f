"""
A worker process for the cross-process tests and the stampede benchmark.

It runs ``get_or_compute`` for one session from several threads at once, over
its own psycopg connection, and prints one JSON object per call on stdout.
Its analyzer records each call in the table ``stampede_calls`` before it
sleeps, so the parent can count calls across processes.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from pydantic import BaseModel

from salesai_cache import AnalysisCache, AnalyzerOutput, TokenUsage, Turn

CALLS_TABLE_SQL = (
    "create table if not exists public.stampede_calls "
    "(pid integer not null, called_at timestamptz not null default now())"
)


class Verdict(BaseModel):
    turns: int
    computed_by: int


class SlowAnalyzer:
    """
    An analyzer that takes ``seconds`` to answer, like a model call.
    """

    output_model = Verdict
    analysis_version = "stampede-model:v1"

    def __init__(self, url: str, seconds: float) -> None:
        self._url = url
        self._seconds = seconds

    def analyze(self, transcript: Sequence[Turn]) -> AnalyzerOutput[Verdict]:
        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute(
                "insert into public.stampede_calls (pid) values (%s)", (os.getpid(),)
            )
        time.sleep(self._seconds)
        return AnalyzerOutput(
            analysis=Verdict(turns=len(transcript), computed_by=os.getpid()),
            model="stampede-model",
            usage=TokenUsage(
                prompt_tokens=900, completion_tokens=100, total_tokens=1000
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()

    transcript = [
        {"speaker": "Rep", "text": "What would make this quarter a success?"},
        {"speaker": "Buyer", "text": "Cutting onboarding time in half."},
    ]
    conn = psycopg.connect(args.url, autocommit=True)
    cache = AnalysisCache(
        conn, SlowAnalyzer(args.url, args.seconds), lease_seconds=args.lease
    )
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        started = time.time()
        result = cache.get_or_compute(args.session, transcript)
        finished = time.time()
        with lock:
            results.append(
                {
                    "status": result.status.value,
                    "analysis": result.analysis.model_dump(),
                    "started": started,
                    "finished": finished,
                }
            )

    threads = [threading.Thread(target=call) for _ in range(args.threads)]
    time.sleep(max(0.0, args.start_at - time.time()))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    conn.close()
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
