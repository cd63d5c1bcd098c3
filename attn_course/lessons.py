"""Running the lesson notebooks: restart, run all, and (for authors) store the outputs.

A lesson is stored executed top to bottom in a fresh kernel, with outputs, so
that strict nbval can compare every cell on every change. This module does the
"restart and run all" with nbclient:

    python -m attn_course.lessons                      # run every lesson, report times, store nothing
    python -m attn_course.lessons --write notebooks/03_*.ipynb   # re-execute and store outputs

Lessons run with the notebook's own folder as working directory, as in JupyterLab.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
LESSONS_DIR = REPO / "notebooks"
CELL_TIMEOUT_SECONDS = 120  # as nbval's --nbval-cell-timeout in the Makefile

__all__ = ["execute_notebook", "lesson_paths", "main"]


def lesson_paths(folder: Path = LESSONS_DIR) -> list[Path]:
    """The lesson notebooks ``NN_topic.ipynb`` of ``folder``, in lesson order."""
    return sorted(path for path in Path(folder).glob("[0-9][0-9]_*.ipynb"))


def execute_notebook(path, *, write: bool = False, timeout: int = CELL_TIMEOUT_SECONDS) -> float:
    """Run a notebook top to bottom in a fresh ``python3`` kernel; returns the wall time in seconds.

    With ``write=True`` the executed notebook (outputs, execution counts 1..N)
    replaces the file. Raises nbclient's ``CellExecutionError`` on an unexpected
    error (cells tagged ``raises-exception`` may raise).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # the kernel's start-up notices are not the lesson's
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    if write:
        nbformat.write(notebook, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_course.lessons", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: every lesson)")
    parser.add_argument("--write", action="store_true", help="store the executed notebooks (outputs) in place")
    args = parser.parse_args(argv)
    paths = args.paths or lesson_paths()
    if not paths:
        print(f"no lesson notebooks in {LESSONS_DIR}")
        return 0
    for path in paths:
        seconds = execute_notebook(path, write=args.write)
        print(f"{path.name:55s} {seconds:7.1f} s{'  (written)' if args.write else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
