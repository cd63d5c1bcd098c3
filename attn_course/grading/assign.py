"""Build the exercise notebooks from the instructors' masters: ``solutions/`` -> ``exercises/``.

    python -m attn_course.assign                 # (re)write exercises/ from solutions/
    python -m attn_course.assign --check         # regenerate into a temporary folder; exit 1 on any difference
    python -m attn_course.assign --solutions DIR --exercises DIR
    python -m attn_course.assign --gradescope 02 --out DIR   # Gradescope's autograder for exercise 02

Without options, solutions/ and exercises/ are those of the course folder the command runs in (or one of
its parents; see ``course_paths``), so the command works from an installed package too.

A master ``solutions/NN_topic.ipynb`` is the one source of truth. Its code
cells carry metadata under the key ``attn_course``:

=========  ==========================================================================
grade_id   unique in the notebook; how the grader matches a learner's cell to the master's
kind       ``solution`` (the learner writes it), ``test`` (a check cell, graded) or
           ``locked`` (setup and demos: restored from the master when grading)
points     on a ``test`` cell: the points of its exercise (must equal the sum of the
           exercise's test points in ``attn_course.grading.specs``); 0 elsewhere
exercise   on a ``test`` cell: the exercise it checks, e.g. ``softmax``
=========  ==========================================================================

Inside a solution cell, the answer sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` lines; the exercise gets instead, at the marker's
indentation::

    # YOUR CODE HERE
    raise NotImplementedError()

Outputs and execution counts are cleared, cell ids and the ``attn_course``
metadata are kept, and locked and test cells are marked read-only for
JupyterLab (``editable``/``deletable`` false). Unclosed or nested markers,
markers outside solution cells, missing or malformed metadata and duplicate
``grade_id`` are errors that name the file and the cell.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .. import course_paths
from .specs import EXERCISES

__all__ = [
    "BEGIN",
    "END",
    "AssignError",
    "Master",
    "MasterCell",
    "assign",
    "build_exercise",
    "check_exercises",
    "find_masters",
    "main",
    "read_master",
    "solution_regions",
    "stub_solutions",
]

REPO = Path(__file__).resolve().parents[2]  # attn_course/grading/assign.py -> the repository
SOLUTIONS_DIR = REPO / "solutions"
EXERCISES_DIR = REPO / "exercises"

META_KEY = "attn_course"
KINDS = ("solution", "test", "locked")
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
GRADE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MASTER_NAME = re.compile(r"\d\d_[a-z0-9_]+")
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")


class AssignError(ValueError):
    """A master notebook is malformed; the message names the file and each faulty cell."""


@dataclass
class MasterCell:
    """A cell of a master that carries ``attn_course`` metadata."""

    index: int  # position in the notebook, from 0
    cell_id: str
    cell_type: str
    grade_id: str
    kind: str
    points: float
    exercise: str | None
    source: str


@dataclass
class Master:
    """A validated master notebook."""

    path: Path
    notebook: nbformat.NotebookNode
    cells: list[MasterCell] = field(default_factory=list)
    sha256: str = ""

    @property
    def name(self) -> str:
        return self.path.stem

    def by_grade_id(self) -> dict[str, MasterCell]:
        return {cell.grade_id: cell for cell in self.cells}

    def test_cells(self) -> list[MasterCell]:
        return [cell for cell in self.cells if cell.kind == "test"]

    @property
    def max_score(self) -> float:
        return sum(cell.points for cell in self.test_cells())


def _where(path: Path, index: int, cell_id: str | None, grade_id: str | None = None) -> str:
    label = f"{path}, cell {index + 1}"
    extra = [f"id {cell_id}" if cell_id else "no id"]
    if grade_id:
        extra.append(f"grade_id {grade_id!r}")
    return f"{label} ({', '.join(extra)})"


def _marker(line: str) -> str | None:
    stripped = line.strip()
    if stripped.startswith(BEGIN):
        return "begin"
    if stripped.startswith(END):
        return "end"
    return None


def _marker_problems(source: str) -> list[str]:
    """What is wrong with the solution markers of ``source`` (empty when they are fine)."""
    problems, open_line, regions = [], None, 0
    for number, line in enumerate(source.splitlines(), 1):
        kind = _marker(line)
        if kind == "begin":
            if open_line is not None:
                problems.append(f"line {number}: {BEGIN} inside the region opened on line {open_line} (nested)")
            else:
                open_line = number
        elif kind == "end":
            if open_line is None:
                problems.append(f"line {number}: {END} without a {BEGIN} before it")
            else:
                open_line, regions = None, regions + 1
    if open_line is not None:
        problems.append(f"line {open_line}: {BEGIN} is never closed by {END}")
    if not problems and regions == 0:
        problems.append(f"a solution cell needs a {BEGIN} / {END} region (else the answer would be handed out)")
    return problems


def solution_regions(source: str) -> list[str]:
    """The texts between the markers of a (valid) solution cell, one string per region."""
    regions, current = [], None
    for line in source.splitlines():
        kind = _marker(line)
        if kind == "begin":
            current = []
        elif kind == "end" and current is not None:
            regions.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return regions


def stub_solutions(source: str) -> str:
    """``source`` with every marked region replaced by the stub, indented like its ``BEGIN`` marker."""
    out, inside = [], False
    for line in source.splitlines():
        kind = _marker(line)
        if kind == "begin":
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + stub_line for stub_line in STUB)
            inside = True
        elif kind == "end":
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def _check_metadata(meta, cell, where: str) -> list[str]:
    """Problems with one cell's ``attn_course`` metadata."""
    if not isinstance(meta, dict):
        return [f"{where}: metadata {META_KEY!r} must be a mapping with grade_id, kind and points"]
    problems = []
    grade_id, kind = meta.get("grade_id"), meta.get("kind")
    if not isinstance(grade_id, str) or not GRADE_ID.fullmatch(grade_id):
        problems.append(f"{where}: grade_id must be a name of letters, digits, '_', '-' or '.'; got {grade_id!r}")
    if kind not in KINDS:
        problems.append(f"{where}: kind must be one of {', '.join(KINDS)}; got {kind!r}")
    elif cell.cell_type != "code" and kind != "locked":
        problems.append(f"{where}: a {cell.cell_type} cell can only be kind 'locked'; got {kind!r}")
    points = meta.get("points", None if kind == "test" else 0)
    if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
        problems.append(f"{where}: points must be a number >= 0; got {points!r}")
    elif kind != "test" and points != 0:
        problems.append(f"{where}: only test cells carry points; this {kind} cell has {points}")
    if kind == "test":
        exercise = meta.get("exercise")
        if exercise not in EXERCISES:
            problems.append(
                f"{where}: a test cell names the exercise it checks (metadata 'exercise'), "
                f"one of {', '.join(EXERCISES)}; got {exercise!r}"
            )
        else:
            total = EXERCISES[exercise].max_score
            if isinstance(points, (int, float)) and points != total:
                problems.append(
                    f"{where}: points {points} differ from the {total:g} points of exercise {exercise!r}'s tests"
                )
            if not re.search(rf"""check\(\s*["']{re.escape(exercise)}["']""", cell.source):
                problems.append(f'{where}: a test cell for {exercise!r} must call check("{exercise}", ...)')
    return problems


def _read_cell(master: Master, index: int, cell, cell_id) -> list[str]:
    """Check one cell of a master; a well-formed graded cell is added to ``master.cells``."""
    meta = cell.get("metadata", {}).get(META_KEY)
    grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
    where = _where(master.path, index, cell_id, grade_id if isinstance(grade_id, str) else None)
    has_markers = any(_marker(line) for line in cell.source.splitlines())
    problems = [] if cell_id else [f"{where}: the cell has no id"]
    if meta is None:
        if cell.cell_type == "code":
            problems.append(f"{where}: code cell without {META_KEY!r} metadata (grade_id, kind, points)")
        if has_markers:
            problems.append(f"{where}: solution markers outside a solution cell")
        return problems
    metadata_problems = _check_metadata(meta, cell, where)
    if metadata_problems:
        return problems + metadata_problems
    earlier = master.by_grade_id().get(grade_id)
    if earlier is not None:
        problems.append(f"{where}: grade_id {grade_id!r} is already used by cell {earlier.index + 1}")
    kind = meta["kind"]
    if kind == "solution":
        problems.extend(f"{where}: {problem}" for problem in _marker_problems(cell.source))
    elif has_markers:
        problems.append(f"{where}: solution markers outside a solution cell (this cell is {kind!r})")
    exercise = meta.get("exercise") if kind == "test" else None
    for other in master.test_cells():
        if exercise is not None and other.exercise == exercise:
            problems.append(f"{where}: exercise {exercise!r} is already checked by cell {other.index + 1}")
    if earlier is None:
        points = float(meta.get("points", 0))
        master.cells.append(MasterCell(index, cell_id, cell.cell_type, grade_id, kind, points, exercise, cell.source))
    return problems


def read_master(path) -> Master:
    """Read and validate a master notebook; raises :class:`AssignError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
        with warnings.catch_warnings():  # a missing cell id is reported below, by cell
            warnings.simplefilter("ignore")
            notebook = nbformat.reads(text, as_version=4)
            nbformat.validate(notebook)
    except (OSError, ValueError, nbformat.ValidationError) as err:
        raise AssignError(f"{path}: not a valid notebook ({err})") from None
    problems = []
    if not MASTER_NAME.fullmatch(path.stem):
        problems.append(f"{path}: masters are named NN_topic.ipynb, like the lesson they belong to")
    if raw.get("nbformat") != 4 or raw.get("nbformat_minor", 0) < 5:
        problems.append(f"{path}: cells need stable ids (nbformat 4.5 or later); save it with a recent JupyterLab")
    stored_ids = [cell.get("id") if isinstance(cell, dict) else None for cell in raw.get("cells", [])]
    master = Master(path, notebook, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    for index, cell in enumerate(notebook.cells):
        cell_id = stored_ids[index] if index < len(stored_ids) else None  # as stored, not as repaired on reading
        problems.extend(_read_cell(master, index, cell, cell_id))
    if not problems and not master.test_cells():
        problems.append(f"{path}: no test cell, so nothing would be graded")
    if problems:
        raise AssignError("\n".join(problems))
    return master


def build_exercise(master: Master) -> nbformat.NotebookNode:
    """The exercise notebook generated from ``master``: stubs for solutions, no outputs, read-only locked cells."""
    notebook = copy.deepcopy(master.notebook)
    for cell in notebook.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        meta = cell.metadata.get(META_KEY)
        if not meta:
            continue
        if meta["kind"] == "solution":
            cell.source = stub_solutions(cell.source)
        else:
            cell.metadata["editable"] = False
            cell.metadata["deletable"] = False
    metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        META_KEY: {**master.notebook.metadata.get(META_KEY, {}), "master": master.name},
    }
    notebook.metadata = nbformat.from_dict(metadata)
    return notebook


def _notebook_text(notebook) -> str:
    text = nbformat.writes(notebook, version=4)
    return text if text.endswith("\n") else text + "\n"


def find_masters(solutions_dir=SOLUTIONS_DIR) -> list[Path]:
    """The master notebooks of ``solutions_dir``, in lesson order."""
    return sorted(Path(solutions_dir).glob("[0-9][0-9]_*.ipynb"))


def assign(solutions_dir=SOLUTIONS_DIR, exercises_dir=EXERCISES_DIR) -> list[Path]:
    """Write one exercise per master into ``exercises_dir``; returns the paths written.

    Every master is validated before anything is written, so a faulty master
    leaves ``exercises_dir`` untouched.
    """
    masters, problems = [], []
    for path in find_masters(solutions_dir):
        try:
            masters.append(read_master(path))
        except AssignError as err:
            problems.append(str(err))
    if problems:
        raise AssignError("\n".join(problems))
    exercises_dir = Path(exercises_dir)
    exercises_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for master in masters:
        target = exercises_dir / master.path.name
        target.write_text(_notebook_text(build_exercise(master)), encoding="utf-8")
        written.append(target)
    return written


def check_exercises(solutions_dir=SOLUTIONS_DIR, exercises_dir=EXERCISES_DIR) -> list[str]:
    """Regenerate into a temporary folder and list every difference with ``exercises_dir`` (empty: up to date)."""
    exercises_dir = Path(exercises_dir)
    with tempfile.TemporaryDirectory(prefix="attn_course_assign_") as scratch:
        fresh = {path.name: path.read_bytes() for path in assign(solutions_dir, scratch)}
    current = {path.name: path.read_bytes() for path in exercises_dir.glob("*.ipynb")}
    differences = []
    for name in sorted(fresh.keys() | current.keys()):
        if name not in current:
            differences.append(f"{exercises_dir / name} is missing")
        elif name not in fresh:
            differences.append(f"{exercises_dir / name} has no master in {solutions_dir}")
        elif fresh[name] != current[name]:
            differences.append(f"{exercises_dir / name} differs from what {Path(solutions_dir) / name} generates")
    return differences


def _write_gradescope(number: str, solutions: Path, out: Path) -> int:
    """``--gradescope NN --out DIR``: the autograder bundle of one exercise (``attn_course.grading.gradescope``)."""
    from .gradescope import master_for, write_bundle

    try:
        master = master_for(number, solutions)
        write_bundle(master, out)
    except (ValueError, AssignError) as err:
        print(err, file=sys.stderr)
        return 2
    print(f"wrote Gradescope's autograder for {master.stem} to {out}: zip the folder's contents and upload them")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn_course.assign", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--solutions", type=Path, help="folder of masters (default: solutions/ of the course folder you are in)"
    )
    parser.add_argument(
        "--exercises", type=Path, help="folder to write the exercises to (default: exercises/ of the course folder)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if exercises/ differs from a fresh build"
    )
    parser.add_argument("--gradescope", metavar="NN", help="write Gradescope's autograder for exercise NN (see --out)")
    parser.add_argument("--out", type=Path, help="the folder --gradescope writes the autograder's files to")
    args = parser.parse_args(argv)
    if (args.gradescope is None) != (args.out is None):
        parser.error("--gradescope NN and --out DIR go together")
    try:
        solutions = course_paths.solutions_dir(args.solutions)
        if args.gradescope is not None:
            return _write_gradescope(args.gradescope, solutions, args.out)
        exercises = course_paths.exercises_dir(args.exercises, must_exist=args.check)
    except course_paths.CoursePathError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        if args.check:
            differences = check_exercises(solutions, exercises)
            for line in differences:
                print(line, file=sys.stderr)
            if differences:
                print("run `python -m attn_course.assign` to regenerate the exercises", file=sys.stderr)
                return 1
            print(f"{exercises}: up to date with {solutions}")
            return 0
        for path in assign(solutions, exercises):
            print(f"wrote {path}")
        return 0
    except AssignError as err:
        print(err, file=sys.stderr)
        return 2
