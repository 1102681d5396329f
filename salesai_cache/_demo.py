"""
The main job: analyse real conversations through the cache, twice.

It starts an embedded PostgreSQL, emulates Supabase's roles and ``auth.uid()``
there, applies ``sql/setup.sql`` and ``sql/policies.sql``, stores each
conversation as a ``salesai_sessions`` row and runs every conversation
through ``AnalysisCache`` twice. The first pass computes (or, with a kept
``--data-dir``, finds what an earlier run stored); the second pass must be all
cache hits.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from ._analyzers.metrics import ConversationMetrics, ConversationMetricsAnalyzer
from ._analyzers.schemas import SalesCallAnalysis
from ._cache import AnalysisCache
from ._datasets import Conversation, load_bundled_conversations, load_transcript_folder
from ._models import AnalysisResult
from ._protocols import Analyzer
from ._transcripts import transcript_to_json

__all__ = ["add_demo_arguments", "check_analyzer_key", "run_demo"]

logger = logging.getLogger(__name__)

# Session ids are derived from conversation ids, so a kept --data-dir maps each
# conversation to the same session on every run.
_SESSION_NAMESPACE = uuid.UUID("6f0f3b6e-2b59-4a53-a1d2-6c8e8d1b2a47")

# Each OpenAI call costs money and takes tens of seconds, so the demo analyses
# only this many conversations with OpenAI unless --limit says otherwise.
_OPENAI_DEFAULT_LIMIT = 10

_TRAINEE_EMAIL = "trainee@example.com"


@dataclass
class _Row:
    conversation: Conversation
    session_id: str
    statuses: list[str]
    summary: str = ""


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the demo's options to ``parser``.
    """
    parser.add_argument(
        "--transcripts",
        type=Path,
        metavar="DIR",
        help="analyse the .json (list of turns) and .txt ('Speaker: text' lines) "
        "files in DIR instead of the bundled conversations",
    )
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="analyse only the first N conversations (default: all with the "
        f"local analyzer, {_OPENAI_DEFAULT_LIMIT} with OpenAI)",
    )
    parser.add_argument(
        "--analyzer",
        choices=("auto", "openai", "metrics"),
        default="auto",
        help="'openai' calls the OpenAI API, 'metrics' computes conversation "
        "metrics locally; 'auto' uses OpenAI when OPENAI_API_KEY is set "
        "(default: auto)",
    )
    parser.add_argument(
        "--model",
        default="gpt-4o-mini",
        help="OpenAI model for --analyzer openai (default: gpt-4o-mini)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="keep the embedded PostgreSQL data in DIR, so that a later run "
        "finds the analyses of this one (default: a temporary folder, deleted "
        "at exit)",
    )


def run_demo(args: argparse.Namespace, out: TextIO) -> int:
    """
    Run the demo with parsed ``args``, printing the table to ``out``.

    Returns:
        The process exit code: 0 when the second pass was all cache hits.
    """
    import psycopg

    from ._local.database import (
        LocalPostgres,
        create_auth_user,
        prepare_supabase_database,
    )

    check_analyzer_key(args)
    _check_data_dir(args.data_dir)
    conversations = _load_conversations(args)
    analyzer = _make_analyzer(args)
    limit = args.limit
    if limit is None and args.analyzer_name == "openai":
        limit = _OPENAI_DEFAULT_LIMIT
    if limit is not None:
        if limit < 1:
            raise ValueError(f"invalid --limit {limit}: expected at least 1")
        conversations = conversations[:limit]

    print(
        f"Analysing {_count(len(conversations), 'conversation')} with "
        f"{args.analyzer_name} ({args.analyzer_detail}) through the cache, twice.",
        file=out,
    )
    with LocalPostgres.start(args.data_dir) as server:
        print(f"Embedded PostgreSQL started at {server.url}", file=out)
        prepare_supabase_database(server.url)
        with psycopg.connect(server.url, autocommit=True) as conn:
            user_id = _trainee_id(conn, create_auth_user)
            rows = [_store_session(conn, user_id, item) for item in conversations]
            cache = AnalysisCache(conn, analyzer)
            durations = [_run_pass(cache, rows), _run_pass(cache, rows)]
    _print_table(rows, out)
    return _print_summary(rows, durations, out)


def _load_conversations(args: argparse.Namespace) -> list[Conversation]:
    if args.transcripts is not None:
        return load_transcript_folder(args.transcripts)
    return load_bundled_conversations()


def check_analyzer_key(args: argparse.Namespace) -> None:
    """
    Fail when ``--analyzer openai`` is chosen without ``OPENAI_API_KEY``.

    Raises:
        ValueError: the key is missing or empty; the message names it.
    """
    if args.analyzer == "openai" and not os.environ.get("OPENAI_API_KEY", "").strip():
        raise ValueError("--analyzer openai needs OPENAI_API_KEY in the environment")


def _check_data_dir(data_dir: Path | None) -> None:
    # The embedded server creates the folder but not its parents, and its
    # own message does not name the option.
    if data_dir is None:
        return
    parent = data_dir.absolute().parent
    if not parent.is_dir():
        raise ValueError(
            f"--data-dir {str(data_dir)!r}: its parent folder {str(parent)!r} "
            "does not exist"
        )
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"--data-dir {str(data_dir)!r} is a file, not a folder")


def _make_analyzer(args: argparse.Namespace) -> Analyzer[Any]:
    use_openai = args.analyzer == "openai" or (
        args.analyzer == "auto" and bool(os.environ.get("OPENAI_API_KEY"))
    )
    if use_openai:
        from ._analyzers.openai import OpenAIAnalyzer

        args.analyzer_name = "openai"
        args.analyzer_detail = args.model
        return OpenAIAnalyzer(model=args.model)
    args.analyzer_name = "metrics"
    args.analyzer_detail = "local conversation metrics, no API key needed"
    return ConversationMetricsAnalyzer()


def _trainee_id(conn: Any, create_auth_user: Any) -> str:
    row = conn.execute(
        "select id from auth.users where email = %s", (_TRAINEE_EMAIL,)
    ).fetchone()
    if row is not None:
        return str(row[0])
    return str(create_auth_user(conn, _TRAINEE_EMAIL))


def _store_session(conn: Any, user_id: str, conversation: Conversation) -> _Row:
    from psycopg.types.json import Jsonb

    session_id = str(uuid.uuid5(_SESSION_NAMESPACE, conversation.conversation_id))
    conn.execute(
        """
        insert into public.salesai_sessions (id, user_id, transcript, conversation_id)
        values (%s, %s, %s, %s)
        on conflict (id) do update
            set transcript = excluded.transcript,
                conversation_id = excluded.conversation_id
        """,
        (
            session_id,
            user_id,
            Jsonb(transcript_to_json(conversation.turns)),
            conversation.conversation_id,
        ),
    )
    return _Row(conversation=conversation, session_id=session_id, statuses=[])


def _run_pass(cache: AnalysisCache[Any], rows: Sequence[_Row]) -> float:
    started = time.perf_counter()
    for row in rows:
        result = cache.get_or_compute(row.session_id, row.conversation.turns)
        row.statuses.append(result.status.value)
        row.summary = _summarise(result)
    return time.perf_counter() - started


def _summarise(result: AnalysisResult[Any]) -> str:
    analysis: BaseModel = result.analysis
    if isinstance(analysis, SalesCallAnalysis):
        return f"score {analysis.overall_score}/100"
    if isinstance(analysis, ConversationMetrics):
        return _summarise_metrics(analysis)
    return type(analysis).__name__


def _summarise_metrics(metrics: ConversationMetrics) -> str:
    first = metrics.speakers[0]
    return (
        f"{_count(metrics.total_turns, 'turn')}, {first.speaker} talks "
        f"{first.talk_ratio:.0%}, {_count(metrics.question_count, 'question')}"
    )


def _print_table(rows: Sequence[_Row], out: TextIO) -> None:
    headers: tuple[str, ...] = (
        "conversation",
        "outcome",
        "key results",
        "pass 1",
        "pass 2",
    )
    table: list[tuple[str, ...]] = [headers]
    table += [
        (
            row.conversation.conversation_id,
            row.conversation.outcome,
            row.summary,
            row.statuses[0],
            row.statuses[1],
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(5)]
    table.insert(1, tuple("-" * width for width in widths))
    print("", file=out)
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


def _print_summary(
    rows: Sequence[_Row], durations: Sequence[float], out: TextIO
) -> int:
    print("", file=out)
    print(f"Conversations: {len(rows)}", file=out)
    for number, duration in enumerate(durations, start=1):
        statuses = [row.statuses[number - 1] for row in rows]
        print(
            f"Pass {number}: {_count(statuses.count('hit'), 'hit')}, "
            f"{_count(statuses.count('miss'), 'miss', 'misses')} in {duration:.2f} s",
            file=out,
        )
    second_pass = [row.statuses[1] for row in rows]
    if second_pass.count("hit") != len(rows):
        print("ERROR: the second pass was not all cache hits", file=out)
        return 1
    return 0


def _count(number: int, singular: str, plural: str | None = None) -> str:
    noun = singular if number == 1 else (plural or f"{singular}s")
    return f"{number} {noun}"
