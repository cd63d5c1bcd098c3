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

from . import course_paths

CELL_TIMEOUT_SECONDS = 120  # as nbval's --nbval-cell-timeout in the Makefile

__all__ = ["execute_notebook", "lesson_paths", "main", "render_line", "render_streams"]


def lesson_paths(folder=None) -> list[Path]:
    """The lesson notebooks ``NN_topic.ipynb`` of ``folder`` (default: the course's ``notebooks/``), in order."""
    folder = course_paths.notebooks_dir(folder)
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
        render_streams(notebook)
        nbformat.write(notebook, path)
    return seconds


def render_line(text: str) -> str:
    """What a terminal shows of ``text``: on each line, only what follows its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def render_streams(notebook) -> None:
    """Store each cell's printed text as a terminal shows it, in place.

    A progress bar (tqdm) redraws its line with a carriage return, and the kernel
    sends every redraw as a separate piece of output: stored as such, a 600-step
    bar is dozens of fragments. Consecutive pieces of the same stream are joined
    and each line keeps only its final state, so a bar is stored as one line.
    """
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            previous = outputs[-1] if outputs else None
            if (output.output_type == "stream" and previous is not None and previous.output_type == "stream"
                    and previous.name == output.name):  # fmt: skip
                previous.text += output.text
            else:
                outputs.append(output)
        for output in outputs:
            if output.output_type == "stream":
                output.text = render_line(output.text)
        cell.outputs = outputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_course.lessons", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: every lesson)")
    parser.add_argument("--write", action="store_true", help="store the executed notebooks (outputs) in place")
    parser.add_argument("--notebooks", type=Path, help="the lessons' folder (default: notebooks/ of the course)")
    args = parser.parse_args(argv)
    if args.paths:
        paths = args.paths
    else:
        folder = course_paths.or_usage_error(parser, course_paths.notebooks_dir, args.notebooks)
        paths = lesson_paths(folder)
        if not paths:
            print(f"no lesson notebooks in {folder}")
            return 0
    for path in paths:
        seconds = execute_notebook(path, write=args.write)
        print(f"{path.name:55s} {seconds:7.1f} s{'  (written)' if args.write else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
