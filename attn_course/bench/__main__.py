"""``python -m attn_course.bench SUITE``: run one benchmark suite and print its table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_course.bench", description="The course's benchmarks.")
    suites = parser.add_subparsers(dest="suite", required=True)
    lessons = suites.add_parser("notebooks", help="wall time of each lesson notebook, run top to bottom")
    lessons.add_argument("paths", nargs="*", type=Path, help="notebooks to time (default: every lesson)")
    args = parser.parse_args(argv)
    if args.suite == "notebooks":
        from .notebooks import run

        run(args.paths or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
