"""The course's own prose as a training text: the markdown of lessons 00-08, stored in the package.

Lessons 09, 18 and 19 train small character-level language models on what the
learner has just read. They read it from this snapshot rather than from the
notebooks next to them, so that rewording an earlier lesson does not change
their results (losses, generated text, timings of the same work).

    text = course_text()  # str: the markdown cells of lessons 00-08, in order, joined by blank lines

``snapshot(notebooks_dir)`` builds the same string from notebooks on disk;
``python -m attn_course.data.corpus NOTEBOOKS_DIR`` rewrites the stored
file from them (then lessons 09, 18 and 19 must be run again).
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

__all__ = ["LESSONS", "course_text", "snapshot"]

LESSONS = "0[0-8]_*.ipynb"  # the lessons before the first model is trained
STORED = Path(__file__).with_name("course_text.txt.gz")


def course_text() -> str:
    """The stored markdown of lessons 00-08: every markdown cell, in lesson order, joined by blank lines."""
    with gzip.open(STORED, "rt", encoding="utf-8") as file:
        return file.read()


def snapshot(notebooks_dir) -> str:
    """The same text, built from the lesson notebooks in ``notebooks_dir``."""
    import nbformat

    paths = sorted(Path(notebooks_dir).glob(LESSONS))
    if len(paths) != 9:
        raise FileNotFoundError(
            f"notebooks_dir must hold the lessons 00-08 ({LESSONS}); found {len(paths)} in {notebooks_dir}"
        )
    notebooks = [nbformat.read(path, as_version=4) for path in paths]
    return "\n\n".join(cell.source for notebook in notebooks for cell in notebook.cells if cell.cell_type == "markdown")


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m attn_course.data.corpus NOTEBOOKS_DIR", file=sys.stderr)
        return 2
    text = snapshot(args[0])
    with gzip.GzipFile(STORED, "wb", mtime=0) as file:  # mtime 0: the same text gives the same bytes
        file.write(text.encode("utf-8"))
    print(f"wrote {STORED.name}: {len(text):,} characters of lessons 00-08")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
