"""Where the course's folders are: ``solutions/`` (the masters), ``exercises/`` and ``notebooks/``.

The command-line tools (``python -m attn_course.assign``, ``python -m attn_course.grade``,
the container runner) find a folder in this order:

1. the option the user passed (``--solutions DIR``, ``--exercises DIR``), which must exist;
2. the working directory or one of its parents that holds the folder (as git finds ``.git``),
   so that the tools work from an installed package (``pip install .``), run inside the course;
3. the source checkout this package was imported from (an editable install, ``pip install -e .``).

A course folder is one that holds ``solutions/`` with at least one master ``NN_topic.ipynb``
(for the masters) or the named folder itself (for ``exercises/`` and ``notebooks/``). When none
is found, :class:`CoursePathError` says what was looked for, where, and which option to pass.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CHECKOUT",
    "CoursePathError",
    "course_root",
    "exercises_dir",
    "has_masters",
    "notebooks_dir",
    "or_usage_error",
    "solutions_dir",
]

CHECKOUT = Path(__file__).resolve().parents[1]  # attn_course/course_paths.py -> the folder holding the package
MASTER_GLOB = "[0-9][0-9]_*.ipynb"


class CoursePathError(FileNotFoundError):
    """A course folder the command needs was not found; the message names it and the option to pass."""


def has_masters(folder: Path) -> bool:
    """Whether ``folder`` holds at least one master notebook ``NN_topic.ipynb``."""
    return folder.is_dir() and any(path.is_file() for path in folder.glob(MASTER_GLOB))


def _candidates(start: Path | None) -> list[Path]:
    """The working directory (or ``start``), its parents, then the checkout beside the package."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    return [here, *here.parents, CHECKOUT]


def course_root(start: Path | None = None) -> Path | None:
    """The first of ``start`` (default: the working directory), its parents and the checkout with masters in
    ``solutions/``; ``None`` when there is none."""
    for folder in _candidates(start):
        if has_masters(folder / "solutions"):
            return folder
    return None


def _given(option, what: str, flag: str, *, masters: bool) -> Path:
    folder = Path(option).expanduser()
    if not folder.is_dir():
        raise CoursePathError(f"{flag} {folder}: no such folder ({what})")
    if masters and not has_masters(folder):
        raise CoursePathError(f"{flag} {folder}: the folder holds no master notebook named NN_topic.ipynb ({what})")
    return folder


def _not_found(name: str, what: str, flag: str, start: Path | None) -> CoursePathError:
    here = Path(start if start is not None else os.getcwd()).resolve()
    return CoursePathError(
        f"no {name}/ folder ({what}) in {here}, its parents or {CHECKOUT}: "
        f"run the command from the course folder, or pass {flag} DIR"
    )


def solutions_dir(option=None, *, start: Path | None = None) -> Path:
    """The folder of master notebooks: ``option`` (``--solutions``) if given, else found (see the module doc)."""
    what = "the instructor's master notebooks"
    if option is not None:
        return _given(option, what, "--solutions", masters=True)
    root = course_root(start)
    if root is None:
        raise _not_found("solutions", what + ", NN_topic.ipynb", "--solutions", start)
    return root / "solutions"


def exercises_dir(option=None, *, start: Path | None = None, must_exist: bool = False) -> Path:
    """The folder of generated exercises: ``option`` (``--exercises``) if given, else ``exercises/`` of the course
    folder (the one with the masters). With ``must_exist`` the folder must already be there (``--check``)."""
    what = "the generated exercise notebooks"
    if option is not None:
        folder = Path(option).expanduser()
        if must_exist and not folder.is_dir():
            raise CoursePathError(f"--exercises {folder}: no such folder ({what})")
        return folder
    for folder in _candidates(start):
        if (folder / "exercises").is_dir() or has_masters(folder / "solutions"):
            if must_exist and not (folder / "exercises").is_dir():
                continue
            return folder / "exercises"
    raise _not_found("exercises", what, "--exercises", start)


def notebooks_dir(option=None, *, start: Path | None = None) -> Path:
    """The folder of lesson notebooks: ``option`` if given, else ``notebooks/`` of the working directory, one of
    its parents or the checkout."""
    what = "the lesson notebooks"
    if option is not None:
        return _given(option, what, "--notebooks", masters=False)
    for folder in _candidates(start):
        if (folder / "notebooks").is_dir():
            return folder / "notebooks"
    raise _not_found("notebooks", what, "--notebooks", start)


def or_usage_error(parser, find, option=None, **options) -> Path:
    """``find(option, **options)`` (one of the functions above), or the ``argparse`` usage error (exit code 2)
    with the message that says what is missing."""
    try:
        return find(option, **options)
    except CoursePathError as err:
        parser.error(str(err))
        raise  # parser.error exits; this line is never reached
