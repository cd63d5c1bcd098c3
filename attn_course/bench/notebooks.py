"""How long each lesson takes to run top to bottom (the course's goal: under 2 minutes each, 12 in all)."""

from __future__ import annotations

from ..lessons import execute_notebook, lesson_paths
from .machine import describe_machine

LESSON_LIMIT_SECONDS = 120
ALL_LESSONS_LIMIT_SECONDS = 12 * 60


def run(paths=None) -> list[tuple[str, float]]:
    """Execute each lesson (outputs not stored) and print its wall time; returns ``[(name, seconds)]``."""
    paths = paths or lesson_paths()
    print(f"lesson notebooks, run top to bottom in a fresh kernel on: {describe_machine()}")
    print(f"{'lesson':55s} {'seconds':>8s}  within {LESSON_LIMIT_SECONDS} s")
    results = []
    for path in paths:
        seconds = execute_notebook(path)
        results.append((path.name, seconds))
        print(f"{path.name:55s} {seconds:8.1f}  {'yes' if seconds <= LESSON_LIMIT_SECONDS else 'NO'}", flush=True)
    total = sum(seconds for _, seconds in results)
    print(f"{'all lessons':55s} {total:8.1f}  {'yes' if total <= ALL_LESSONS_LIMIT_SECONDS else 'NO'} (limit 12 min)")
    return results
