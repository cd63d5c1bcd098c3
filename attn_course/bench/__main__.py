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
    cpu = suites.add_parser("cpu", help="dense, tiled, sparse and linear attention on the CPU, against the goals")
    cpu.add_argument("--quick", action="store_true", help="small sizes: a check that the suite runs, in seconds")
    cpu.add_argument(
        "--out", type=Path, default=None, help="folder for the CSV files and the plot (benchmarks/results)"
    )
    gpu = suites.add_parser("gpu", help="fused CuPy kernels against naive CuPy, torch SDPA and FlexAttention")
    gpu.add_argument("--quick", action="store_true", help="N = 1024, d = 64 only: a check that the suite runs")
    gpu.add_argument(
        "--out", type=Path, default=None, help="folder for the JSON records and the plot (benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if args.suite == "notebooks":
        from .notebooks import run

        run(args.paths or None)
    elif args.suite == "cpu":
        from .cpu import DEFAULT_OUT, run

        run(quick=args.quick, out=args.out or DEFAULT_OUT)
    elif args.suite == "gpu":
        from .gpu import DEFAULT_OUT, run

        return run(quick=args.quick, out=args.out or DEFAULT_OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
