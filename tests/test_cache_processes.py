"""
One analyzer call per session across real processes sharing one database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel
from stampede_worker import CALLS_TABLE_SQL

from salesai_cache import AnalysisCache, AnalyzerOutput, CacheStatus, TokenUsage
from salesai_cache._local.database import create_auth_user

pytestmark = pytest.mark.sql

WORKER = Path(__file__).with_name("stampede_worker.py")


@pytest.fixture
def session_id(db: psycopg.Connection[Any]) -> str:
    db.execute(CALLS_TABLE_SQL)
    user_id = create_auth_user(db, "stampede@example.test")
    row = db.execute(
        "insert into public.salesai_sessions (user_id) values (%s) returning id",
        (user_id,),
    ).fetchone()
    assert row is not None
    return str(row[0])


def start_worker(
    url: str,
    session_id: str,
    *,
    threads: int,
    seconds: float,
    lease: float,
    start_at: float,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            f"--url={url}",
            f"--session={session_id}",
            f"--threads={threads}",
            f"--seconds={seconds}",
            f"--lease={lease}",
            f"--start-at={start_at}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def analyzer_calls(db: psycopg.Connection[Any]) -> list[int]:
    return [row[0] for row in db.execute("select pid from public.stampede_calls")]


def test_stampede_one_call(
    database_url: str, db: psycopg.Connection[Any], session_id: str
) -> None:
    """
    4 processes with 25 concurrent calls each make one analyzer call.
    """
    start_at = time.time() + 3.0
    workers = [
        start_worker(
            database_url,
            session_id,
            threads=25,
            seconds=1.0,
            lease=30,
            start_at=start_at,
        )
        for _ in range(4)
    ]
    outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    results = [json.loads(line) for output in outputs for line in output.splitlines()]

    assert [worker.returncode for worker in workers] == [0, 0, 0, 0]
    assert len(results) == 100
    assert len(analyzer_calls(db)) == 1
    assert len({json.dumps(result["analysis"]) for result in results}) == 1
    statuses = sorted(result["status"] for result in results)
    assert statuses == ["miss"] + ["waited"] * 99


class QuickVerdict(BaseModel):
    turns: int
    computed_by: int


class QuickAnalyzer:
    output_model = QuickVerdict
    analysis_version = "stampede-model:v1"

    def __init__(self) -> None:
        self.calls = 0

    def analyze(self, transcript: Any) -> AnalyzerOutput[QuickVerdict]:
        self.calls += 1
        return AnalyzerOutput(
            analysis=QuickVerdict(turns=len(transcript), computed_by=os.getpid()),
            model="stampede-model",
            usage=TokenUsage(),
        )


def wait_for_compute(db: psycopg.Connection[Any], session_id: str) -> str:
    """
    Wait until the worker's analyzer has started, and return its claimant.
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = db.execute(
            "select claim.claimant from public.salesai_analysis_claims as claim "
            "where claim.session_id = %s "
            "and exists (select from public.stampede_calls)",
            (session_id,),
        ).fetchone()
        if row is not None:
            return str(row[0])
        time.sleep(0.05)
    raise AssertionError("the worker never started computing")


def test_killed_worker_claim_expires(
    database_url: str, db: psycopg.Connection[Any], session_id: str
) -> None:
    """
    A worker killed mid-compute leaves a claim that expires; the next caller
    then computes.
    """
    worker = start_worker(
        database_url, session_id, threads=1, seconds=600, lease=1.5, start_at=0
    )
    try:
        claimant = wait_for_compute(db, session_id)
        assert claimant.split(":")[1] == str(worker.pid)
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=10)
        killed_at = time.monotonic()

        analyzer = QuickAnalyzer()
        with psycopg.connect(database_url, autocommit=True) as conn:
            result = AnalysisCache(conn, analyzer).get_or_compute(
                session_id, [{"speaker": "Rep", "text": "Hello"}]
            )
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate(timeout=10)

    assert worker.returncode == -signal.SIGKILL
    assert result.status is CacheStatus.MISS
    assert analyzer.calls == 1
    assert time.monotonic() - killed_at < 10
    assert analyzer_calls(db) == [worker.pid]
