"""
Benchmark of ``import salesai_cache`` against ``import supabase``.

Each import runs in a fresh interpreter, alternating, several times; the
figures are medians of the wall time, and of the same minus an interpreter
that imports nothing (target: salesai_cache at most 1.1x supabase). openai,
psycopg and the CLI's extras are loaded only when used.

Run with ``python3 -m nox -s bench`` or ``python bench/import_time.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

REPEAT = 9


def run(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    codes = {"nothing": "pass", "supabase": "import supabase"}
    codes["salesai_cache"] = "import salesai_cache"
    times: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(REPEAT):
        for name, code in codes.items():
            times[name].append(run(code))
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["nothing"]
    print(f"import time, median of {REPEAT} fresh interpreters (target <= 1.1x)")
    for name in ("supabase", "salesai_cache"):
        print(
            f"  {name:<14} {median[name] * 1e3:7.1f} ms  "
            f"({(median[name] - base) * 1e3:6.1f} ms beyond an empty interpreter)"
        )
    net = (median["salesai_cache"] - base) / (median["supabase"] - base)
    print(
        f"  ratio {median['salesai_cache'] / median['supabase']:5.2f}x wall, "
        f"{net:5.2f}x beyond startup"
    )


if __name__ == "__main__":
    main()
