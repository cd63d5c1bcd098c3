"""Grade submitted exercise notebooks, trusting nothing that runs inside them.

    python -m attn_course.grade SUBMISSION.ipynb|DIR ... [--out report.json] [--csv grades.csv] [--jobs N]

For each submission (a folder is searched for ``*.ipynb``):

1. **validate** the file: a size cap, UTF-8 JSON, the nbformat schema. Garbage
   is refused with a clear message in its report; the batch goes on;
2. **find its master** in ``solutions/``: the notebook's ``attn_course.master``
   metadata (written by ``attn_course.grading.assign``), else its file name, else
   ``--master``;
3. **rebuild** the notebook from the master: only the learner's solution cells
   (matched by ``grade_id``) are taken; every other cell comes from the
   master. Edited, deleted or retyped locked and test cells are reported as
   tampering (they were restored, so they cost nothing and gain nothing);
   cells the learner added are not run;
4. **run** it in a fresh kernel (``attn_course.grading.sandbox``: per-cell timeout with
   interrupt, wall-clock, memory, CPU and file-size limits, no stdin). In
   that kernel the test cells' ``check(...)`` only records the learner's
   function outputs on inputs the grader wrote (``.npy``, never pickle);
5. **judge** in this process: each recorded output against the package's
   reference computed now, from inputs regenerated here (type, shape,
   dtype, finiteness, values within the dtype's tolerance, invariants). A
   test whose output is missing is ``timeout`` or ``error``, never
   ``passed``; ``NotImplementedError`` is ``not_attempted``; nothing printed
   by the notebook is ever read as a score.

The report is shaped like Gradescope's ``results.json`` (``score``,
``max_score``, ``tests`` with ``name``, ``score``, ``max_score``, ``status``,
``output``); several submissions give ``{"grader_version", "submissions":
{path: report}}``. ``--csv`` writes a gradebook with one row per submission,
the score of every test, the grader's version and the files' SHA-256. The
exit code is 0 whenever grading finished, whatever the scores.

Local grading is an honour-system self-check (the solutions are public);
see the instructor guide in exercises/README.md for grades that matter.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import nbformat
from tqdm import tqdm

from .. import __version__, course_paths
from .answer_scan import bound_names, package_names, scan_answers, used_names
from .assign import MASTER_NAME, META_KEY, SOLUTIONS_DIR, AssignError, Master, build_exercise, read_master
from .gradebook import clean_text, flag_duplicates, report_name, write_atomically, write_gradebook
from .judge import Verdict, judge
from .processes import children, harden_grader, kill_leftovers
from .result_files import RecordError, open_regular, read_result, set_aside, write_inputs
from .sandbox import CellHooks, Limits, RunLog, isolation_support, run_notebook
from .specs import get_exercise

__all__ = ["GRADER_VERSION", "Options", "grade_many", "grade_submission", "main"]

GRADER_VERSION = f"attn_course {__version__}, grader 2"
DEFAULT_MAX_MB = 10.0
MAX_CELLS = 300  # cells in a submitted notebook
VALIDATION_SECONDS = 20.0  # reading and checking one file against the notebook schema
_kernels_started_here = False  # set once this process has run a kernel (zmq state that fork must not copy)


@dataclass(frozen=True)
class Options:
    """How to grade: where the masters are, which master to force, size and run limits."""

    solutions: Path = SOLUTIONS_DIR
    master: str | None = None
    max_bytes: int = int(DEFAULT_MAX_MB * 2**20)
    limits: Limits = field(default_factory=Limits)
    seed: int | None = None  # the secret cases' seed (None: a random one per submission, in its report)
    max_cells: int = MAX_CELLS
    validation_seconds: float = VALIDATION_SECONDS
    private: tuple[Path, ...] = ()  # folders the kernel must not see besides the masters (the batch's submissions)


class SubmissionError(Exception):
    """The submission cannot be graded (not a notebook, too big, no master); the message says why."""


# --------------------------------------------------------------------------- reading a submission


def _file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _time_limit(seconds: float, what: str):
    """Raise :class:`SubmissionError` if the block runs longer than ``seconds`` (main thread only, else unbounded)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(signum, frame):
        raise SubmissionError(f"{what} took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_submission(path: Path, max_bytes: int, max_cells: int = MAX_CELLS, seconds: float = VALIDATION_SECONDS):
    """The file's bytes and its notebook; :class:`SubmissionError` when it is not a valid notebook."""
    try:  # no link, FIFO or device; read without blocking (result_files.open_regular)
        handle, size = open_regular(Path(path), math.inf, name="the file")
    except RecordError as err:
        raise SubmissionError(str(err)) from None
    with handle:
        if size > max_bytes:
            raise SubmissionError(f"the file is {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:g} MB allowed")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SubmissionError(f"the file is more than the {max_bytes / 2**20:g} MB allowed")
    if not data.strip():
        raise SubmissionError("the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("the file is not text (UTF-8): not a notebook") from None
    with _time_limit(seconds, "reading the notebook"):
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise SubmissionError(f"the file is not JSON, so not a notebook ({str(err)[:200]})") from None
        if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
            raise SubmissionError("the file is JSON but not a notebook (no 'cells' or 'nbformat')")
        if isinstance(raw["cells"], list) and len(raw["cells"]) > max_cells:
            raise SubmissionError(f"the notebook has {len(raw['cells'])} cells, more than the {max_cells} allowed")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                notebook = nbformat.reads(text, as_version=4)
                nbformat.validate(notebook)
        except SubmissionError:
            raise
        except Exception as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SubmissionError(f"the notebook does not follow the notebook format: {first_line[:300]}") from None
    return data, notebook


@lru_cache(maxsize=32)
def _master_at(path: Path, mtime: float) -> Master:
    return read_master(path)


def load_master(path: Path) -> Master:
    return _master_at(path, path.stat().st_mtime)


def _named_master(notebook, folder: Path) -> Path | None:
    meta = notebook.metadata.get(META_KEY, {})
    name = meta.get("master") if isinstance(meta, dict) else None
    if isinstance(name, str) and MASTER_NAME.fullmatch(name) and (folder / f"{name}.ipynb").is_file():
        return folder / f"{name}.ipynb"
    return None


def _master_by_file_name(path: Path, folder: Path) -> Path | None:
    masters = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    for master in masters:
        if master.stem in path.stem:
            return master
    numbers = set(re.findall(r"(?<!\d)(\d\d)(?!\d)", path.stem))
    matching = [master for master in masters if master.stem[:2] in numbers]
    return matching[0] if len(matching) == 1 else None


def find_master(notebook, path: Path, options: Options) -> Path:
    """The master that ``notebook`` was generated from (see the module docstring for the order).

    A notebook whose metadata names another master than ``--master`` is refused (exercise 10 handed in as 03
    never grades against 03).
    """
    folder = Path(options.solutions)
    named = _named_master(notebook, folder)
    if options.master:
        forced = Path(options.master)
        candidate = forced if forced.suffix == ".ipynb" else folder / f"{options.master}.ipynb"
        if not candidate.is_file():
            raise SubmissionError(f"--master {options.master}: no master notebook at {candidate}")
        if named is not None and named.stem != candidate.stem:
            why = f"the notebook is exercise {named.stem} (its metadata), not --master {candidate.stem}"
            raise SubmissionError(why)
        return candidate
    if named is not None:
        return named
    by_name = _master_by_file_name(path, folder)
    if by_name is not None:
        return by_name
    raise SubmissionError(
        "cannot tell which exercise this is: the notebook has no attn_course.master metadata and its file "
        f"name names no master in {folder}; pass --master NN_topic"
    )


def _belongs_to(master: Master, submission) -> bool:
    """Whether any answer or test cell of ``master`` is in ``submission`` (by grade_id or cell id; every
    exercise has a cell called ``setup``, so locked cells prove nothing)."""
    own = [cell for cell in master.cells if cell.kind != "locked"]
    grade_ids = {cell.grade_id for cell in own}
    cell_ids = {cell.cell_id for cell in own}
    return any(
        _student_meta(cell).get("grade_id") in grade_ids or cell.get("id") in cell_ids for cell in submission.cells
    )


# --------------------------------------------------------------------------- rebuilding from the master


def _normalise(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _student_meta(cell) -> dict:
    meta = cell.get("metadata", {}).get(META_KEY)
    return meta if isinstance(meta, dict) else {}


def _change(master_cell, cell) -> str:
    """How a learner's copy of a locked or test cell differs from the master's: "" when it does not."""
    if cell is None:
        return "deleted"
    if cell.cell_type != master_cell.cell_type or _student_meta(cell).get("kind") != master_cell.kind:
        return "retyped"
    if _normalise(cell.source) != _normalise(master_cell.source):
        return "edited"
    return ""


@dataclass
class Rebuilt:
    notebook: nbformat.NotebookNode
    tampering: list[str]
    notes: list[str]


def rebuild(master: Master, submission) -> Rebuilt:
    """The notebook to run: the master's cells, with the learner's solution cells put in."""
    notebook = build_exercise(master)  # stubs in the solution cells, outputs cleared
    by_grade_id: dict[str, list] = {}
    by_cell_id: dict[str, list] = {}
    for cell in submission.cells:
        grade_id = _student_meta(cell).get("grade_id")
        if isinstance(grade_id, str):
            by_grade_id.setdefault(grade_id, []).append(cell)
        if isinstance(cell.get("id"), str):
            by_cell_id.setdefault(cell["id"], []).append(cell)
    tampering, notes, matched = [], [], set()
    for master_cell in master.cells:
        # by grade_id; else by cell id (JupyterLab keeps ids, a pasted cell may have lost its metadata)
        found = by_grade_id.get(master_cell.grade_id) or by_cell_id.get(master_cell.cell_id, [])
        matched.update(id(cell) for cell in found)
        if master_cell.kind == "solution":
            code = [cell for cell in found if cell.cell_type == "code"]
            if not code:
                why = "is no longer a code cell" if found else "is missing"
                notes.append(f"answer cell {master_cell.grade_id!r} {why}: graded as not attempted")
            else:
                if len(code) > 1:
                    notes.append(f"{len(code)} cells claim answer cell {master_cell.grade_id!r}: the first is graded")
                notebook.cells[master_cell.index].source = code[0].source
            continue
        change = _change(master_cell, found[0] if found else None)
        if change:
            tampering.append(
                f"{master_cell.kind} cell {master_cell.grade_id!r} was {change} (restored from the master)"
            )
    master_ids = {cell.cell_id for cell in master.cells} | {c.get("id") for c in master.notebook.cells}
    added = [
        cell
        for cell in submission.cells
        if id(cell) not in matched and cell.cell_type == "code" and cell.get("id") not in master_ids
    ]
    if added:
        notes.append(f"{len(added)} code cell(s) added to the notebook were not run; only answer cells count")
    return Rebuilt(notebook, tampering, notes)


# --------------------------------------------------------------------------- judging the recorded outputs


def _missing_verdict(exercise, case, outcome) -> Verdict:
    """A verdict for a case that has no recorded output: why not, from what happened to its cell."""
    status, message = "error", "no result was recorded for this test (was check() replaced?)"
    if outcome is None:
        message = "the test cell was not run"
    elif outcome.status == "timeout":
        status, message = "timeout", f"the test cell was interrupted: {outcome.message}"
    elif outcome.status == "dead":
        message = f"no result: {outcome.message}"
    elif outcome.status == "not_run":
        status = "timeout" if "limit" in outcome.message or "interrupt" in outcome.message else "error"
        message = f"the test cell was not run: {outcome.message}"
    elif outcome.status == "error":
        if outcome.message.startswith("NotImplementedError"):
            status, message = "not_attempted", "not attempted (NotImplementedError)"
        else:
            message = f"the test cell failed before recording a result: {outcome.message}"
    return Verdict(exercise.name, case.name, case.about, status, case.points, detail=message)


def secret_seed(seed: int, sha256: str, exercise: str, case: str) -> int:
    """The seed of one secret case: from the batch's seed and the submission's hash (classmates differ)."""
    digest = hashlib.sha256(f"{seed}:{sha256}:{exercise}:{case}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass
class Plan:
    """What the grader asks of the kernel: per exercise, the records to make and their arguments (secret)."""

    args: dict[tuple[str, str], tuple] = field(default_factory=dict)  # (exercise, record name) -> arguments
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (exercise, case) -> record names


def plan_cases(master: Master, seed: int, sha256: str) -> Plan:
    """Each case of every test cell drawn anew from ``seed`` (same shapes and kinds), and its hidden edge cases."""
    plan = Plan()
    for test_cell in master.test_cells():
        exercise = get_exercise(test_cell.exercise)
        for case in exercise.cases:
            names = [case.name]
            plan.args[exercise.name, case.name] = case.args(secret_seed(seed, sha256, exercise.name, case.name))
            for hidden in exercise.hidden.get(case.name, ()):
                plan.args[exercise.name, hidden.name] = hidden.args(
                    secret_seed(seed, sha256, exercise.name, hidden.name)
                )
                names.append(hidden.name)
            plan.records[exercise.name, case.name] = names
    return plan


class Collector(CellHooks):
    """Clears an exercise's results before its test cell and reads them right after it, into this process:
    what the kernel writes at any other time is never read."""

    def __init__(self, master: Master, record_dir: Path, plan: Plan):
        self.record_dir = record_dir
        self.plan = plan
        self.exercise_at = {cell.index: cell.exercise for cell in master.test_cells()}
        self.results: dict[tuple[str, str], object] = {}

    def before(self, index: int) -> None:
        if index in self.exercise_at:
            set_aside(self.record_dir, self.exercise_at[index])

    def after(self, index: int) -> None:
        exercise = self.exercise_at.get(index)
        if exercise is None:
            return
        for (name, record), _ in self.plan.args.items():
            if name != exercise:
                continue
            try:
                self.results[name, record] = read_result(self.record_dir, name, record)
            except RecordError as err:
                self.results[name, record] = err
        set_aside(self.record_dir, exercise)


def _entry(verdict: Verdict) -> dict:
    return {
        "name": verdict.name,
        "score": verdict.points,
        "max_score": verdict.max_points,
        "status": verdict.status,
        "output": verdict.text(),
    }


def _verdict_on(exercise, case, result, args, outcome) -> Verdict:
    if isinstance(result, RecordError):
        detail = f"unreadable result: {result}"
        return Verdict(exercise.name, case.name, case.about, "error", case.points, detail=detail)
    if result is None:
        return _missing_verdict(exercise, case, outcome)
    return judge(exercise, case, result, args)


def collect_tests(master: Master, log: RunLog, results: dict, plan: Plan, refused: dict[str, str]) -> list[dict]:
    """One Gradescope test entry per case of every test cell, judged here from the results collected in this
    process. ``refused``: exercise -> why its answer was refused (its tests score 0)."""
    tests = []
    for test_cell in master.test_cells():
        exercise = get_exercise(test_cell.exercise)
        outcome = log.cells.get(test_cell.index)
        for public_case in exercise.cases:
            # the learner's check() described the public case; the grade comes from a secret draw of the same kind
            case = replace(public_case, about=f"{public_case.about}; graded on a secret draw of this kind")
            if exercise.name in refused:
                detail = f"refused: {refused[exercise.name]}"
                verdict = Verdict(exercise.name, case.name, case.about, "refused", case.points, detail=detail)
                tests.append(_entry(verdict))
                continue
            key = (exercise.name, case.name)
            verdict = _verdict_on(exercise, case, results.get(key), plan.args[key], outcome)
            if verdict.status == "passed":
                for hidden in exercise.hidden.get(case.name, ()):
                    key = (exercise.name, hidden.name)
                    check = _verdict_on(exercise, hidden, results.get(key), plan.args[key], outcome)
                    if check.status != "passed":
                        detail = f"a hidden test of this case failed ({hidden.about}): " + " ".join(check.details())
                        verdict = Verdict(
                            exercise.name, case.name, case.about, check.status, case.points, detail=detail[:1500]
                        )
                        break
            tests.append(_entry(verdict))
    return tests


def _summary(score: float, max_score: float, tests: list[dict], tampering: list[str], notes: list[str]) -> str:
    counts: dict[str, int] = {}
    for test in tests:
        counts[test["status"]] = counts.get(test["status"], 0) + 1
    parts = [f"Score {score:g} of {max_score:g}."]
    parts.append(", ".join(f"{count} {status.replace('_', ' ')}" for status, count in sorted(counts.items())) + ".")
    if tampering:
        parts.append("Tampering: " + "; ".join(tampering) + ".")
    if notes:
        parts.append("Notes: " + "; ".join(notes) + ".")
    return " ".join(parts)


def _report(path, status, score, max_score, tests, output, extra, seconds) -> dict:
    return {
        "score": score,
        "max_score": max_score,
        "output": output,
        "tests": tests,
        "execution_time": round(seconds, 2),
        "extra_data": {"submission": str(path), "status": status, "grader_version": GRADER_VERSION, **extra},
    }


_FORBIDDEN: dict[str, frozenset] = {}


def _forbidden_names(master: Master) -> frozenset:
    """Names the master's locked cells bind from ``attn_course`` that its own answers never use."""
    if master.sha256 in _FORBIDDEN:
        return _FORBIDDEN[master.sha256]
    locked = [cell.source for cell in master.cells if cell.kind != "solution"]
    answers = [cell.source for cell in master.cells if cell.kind == "solution"]
    allowed = set().union(set(), *(used_names(source) for source in answers))
    _FORBIDDEN[master.sha256] = frozenset(package_names(locked) - allowed)
    return _FORBIDDEN[master.sha256]


def scan(master: Master, rebuilt: Rebuilt) -> dict[str, str]:
    """Scan the learner's answer cells; put the stub back in each flagged one. Returns exercise -> reason."""
    stubs = build_exercise(master)
    answers = {
        cell.grade_id: rebuilt.notebook.cells[cell.index].source for cell in master.cells if cell.kind == "solution"
    }
    flagged = scan_answers(answers, _forbidden_names(master))
    refused_functions: dict[str, str] = {}
    for cell in master.cells:
        if cell.grade_id in flagged:
            reason = f"answer cell {cell.grade_id!r} " + "; ".join(flagged[cell.grade_id][:3])
            rebuilt.notes.append(reason + ": not run, its tests score 0")
            for name in bound_names(answers[cell.grade_id]) | {cell.grade_id}:
                refused_functions.setdefault(name, reason)
            rebuilt.notebook.cells[cell.index].source = stubs.cells[cell.index].source
    refused = {}
    for test_cell in master.test_cells():
        exercise = get_exercise(test_cell.exercise)
        reason = refused_functions.get(exercise.function) or refused_functions.get(exercise.name)
        if reason:
            refused[exercise.name] = reason
    return refused


_hardening: list[str] | None = None


def _run_and_judge(master: Master, rebuilt: Rebuilt, plan: Plan, refused: dict, limits: Limits, hide=()):
    """Run the rebuilt notebook in a fresh folder, collect each test cell's results, kill what the kernel left
    behind, and judge: ``(tests, log)``."""
    with tempfile.TemporaryDirectory(prefix="attn_grade_") as scratch:
        workdir, record_dir = Path(scratch) / "work", Path(scratch) / "record"
        workdir.mkdir()
        record_dir.mkdir()
        for test_cell in master.test_cells():
            name = test_cell.exercise
            write_inputs(record_dir, name, {record: args for (ex, record), args in plan.args.items() if ex == name})
        collector = Collector(master, record_dir, plan)
        before = children()
        try:
            log = run_notebook(rebuilt.notebook, workdir, record_dir, limits, collector, hide=hide)
        finally:
            killed = kill_leftovers(before)
        if killed:
            log.notes.append(f"{killed} process(es) the kernel left running were killed")
        return collect_tests(master, log, collector.results, plan, refused), log


def grade_submission(path, options: Options | None = None) -> dict:
    """Grade one notebook file; always returns a report, whatever the file holds."""
    global _kernels_started_here, _hardening  # noqa: PLW0603 (facts about this process)
    options = options or Options()
    path = Path(path)
    started = time.monotonic()
    if _hardening is None:
        _hardening = harden_grader()
    seed = options.seed if options.seed is not None else secrets.randbits(63)
    extra = {"sha256": None, "master": None, "master_sha256": None, "seed": seed, "tampering": [], "notes": []}
    max_score = 0.0
    try:
        data, submission = read_submission(path, options.max_bytes, options.max_cells, options.validation_seconds)
        extra["sha256"] = _file_hash(data)
        master = load_master(find_master(submission, path, options))
        extra.update(master=master.name, master_sha256=master.sha256)
        max_score = master.max_score
        if not _belongs_to(master, submission):
            raise SubmissionError(f"none of its cells belongs to exercise {master.name}: is it another exercise?")
        by_name = _master_by_file_name(path, Path(options.solutions))
        rebuilt = rebuild(master, submission)
        if by_name is not None and by_name.stem != master.name:
            rebuilt.notes.append(f"the file name suggests {by_name.stem}, but the notebook is {master.name}")
        refused = scan(master, rebuilt)
        extra.update(tampering=rebuilt.tampering, notes=rebuilt.notes)
        plan = plan_cases(master, seed, extra["sha256"])
        _kernels_started_here = True
        hide = (Path(options.solutions), path.resolve().parent, *options.private)
        tests, log = _run_and_judge(master, rebuilt, plan, refused, options.limits, hide)
        extra["notes"] = rebuilt.notes + log.notes + list(_hardening)
        score = sum(test["score"] for test in tests)
        output = _summary(score, max_score, tests, rebuilt.tampering, extra["notes"])
        return _report(path, "graded", score, max_score, tests, output, extra, time.monotonic() - started)
    except SubmissionError as err:
        return _report(path, "invalid", 0.0, max_score, [], f"Not graded: {err}", extra, time.monotonic() - started)
    except AssignError as err:
        message = f"Not graded: the master notebook is broken (an instructor must fix it): {err}"
        return _report(path, "error", 0.0, max_score, [], message, extra, time.monotonic() - started)
    except Exception as err:  # a bug of the grader: still a report, and the batch goes on
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        message = f"Not graded: the grader failed ({detail}); please report this"
        return _report(path, "error", 0.0, max_score, [], message, extra, time.monotonic() - started)


# --------------------------------------------------------------------------- batches


def find_submissions(paths) -> list[Path]:
    """Files as given; folders searched (recursively) for ``*.ipynb``, checkpoints skipped."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and p.is_file())
            )
        else:
            found.append(path)
    unique, seen = [], set()
    for path in found:
        if path not in seen:
            seen.add(path)
            unique.append(path)
    return unique


def _pool_context():
    """How to start workers: fork (instant, everything already imported) when that is safe, else a forkserver
    that imports this module once (importing nbformat costs seconds), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    if sys.platform == "linux" and "fork" in methods and threading.active_count() == 1 and not _kernels_started_here:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def grade_many(paths: list[Path], options: Options, jobs: int = 1, progress: bool = True) -> dict[Path, dict]:
    """Grade every path, ``jobs`` at a time; a crashed worker costs its submissions a report, not the batch."""
    results: dict[Path, dict] = {}
    isolation_support()  # probed once here; the workers inherit the answer (ATTN_COURSE_GRADER_ISOLATION)
    if jobs <= 1 or len(paths) <= 1:
        bar = tqdm(total=len(paths), desc="grading", unit="notebook", disable=not progress, file=sys.stderr)
        for path in paths:
            results[path] = grade_submission(path, options)
            bar.update()
        bar.close()
        return results
    pending, bar = list(paths), None
    for _attempt in range(2):  # a broken pool is rebuilt once for the submissions it had not finished
        broken = []
        with ProcessPoolExecutor(max_workers=jobs, mp_context=_pool_context()) as pool:
            futures = {pool.submit(grade_submission, path, options): path for path in pending}
            if bar is None:  # created after the workers started: tqdm's monitor thread must not be forked
                bar = tqdm(total=len(paths), desc="grading", unit="notebook", disable=not progress, file=sys.stderr)
            for future in as_completed(futures):
                path = futures[future]
                try:
                    results[path] = future.result()
                except BrokenProcessPool:
                    broken.append(path)
                    continue
                except Exception as err:
                    results[path] = _report(path, "error", 0.0, 0.0, [], f"Not graded: {err!r}", {}, 0.0)
                bar.update()
        pending = broken
        if not pending:
            break
    for path in pending:
        results[path] = _report(path, "error", 0.0, 0.0, [], "Not graded: the grading worker died", {}, 0.0)
        bar.update()
    bar.close()
    return {path: results[path] for path in paths}


# --------------------------------------------------------------------------- the gradebook


def check_output_paths(targets, inputs) -> str | None:
    """Why the reports cannot be written where asked (None: they can): checked before any grading."""
    roots = [Path(path).resolve() for path in inputs if Path(path).is_dir()]
    for given, is_folder in targets:
        if given is None:
            continue
        target = Path(given)
        folder = target if is_folder else target.parent
        if is_folder and not folder.exists():
            with contextlib.suppress(OSError):
                folder.mkdir(parents=True)
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            return f"{folder} is not a folder this grader can write"
        if not is_folder and (target.is_symlink() or (target.exists() and not target.is_file())):
            return f"{target} exists and is not a plain file"
        resolved = folder.resolve()
        if any(resolved == root or root in resolved.parents for root in roots):
            return f"{target} lies inside a folder being graded: write reports elsewhere"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attn_course.grade",
        description="Grade exercise notebooks against their masters in solutions/.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="submitted notebooks, or folders of them")
    parser.add_argument("--out", type=Path, help="write the JSON report (Gradescope results.json shape) here")
    parser.add_argument("--csv", type=Path, help="write a CSV gradebook here")
    parser.add_argument("--reports", type=Path, help="write one JSON report per learner into this folder")
    parser.add_argument("--jobs", type=int, default=1, help="grade N submissions at a time (default 1)")
    parser.add_argument(
        "--solutions", type=Path, help="folder of master notebooks (default: solutions/ of the course folder)"
    )
    parser.add_argument("--master", help="grade every submission against this master (NN_topic or a path)")
    parser.add_argument("--seed", type=int, help="seed of the secret cases (default: random, in the report)")
    parser.add_argument("--cell-timeout", type=float, default=Limits.cell_timeout, help="seconds per cell")
    parser.add_argument("--timeout", type=float, default=Limits.total_timeout, help="seconds per notebook run")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_mb, help="kernel address-space limit")
    parser.add_argument("--max-size-mb", type=float, default=DEFAULT_MAX_MB, help="largest notebook file accepted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    # from the option, else the working directory (so a non-editable install works), else a usage error
    args.solutions = course_paths.or_usage_error(parser, course_paths.solutions_dir, args.solutions)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    problem = check_output_paths([(args.out, False), (args.csv, False), (args.reports, True)], args.paths)
    if problem:
        print(f"cannot write the reports: {problem}", file=sys.stderr)
        return 2
    paths = find_submissions(args.paths)
    if not paths:
        print("no notebooks found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    limits = Limits(cell_timeout=args.cell_timeout, total_timeout=args.timeout, memory_mb=args.memory_mb)
    options = Options(
        solutions=args.solutions,
        master=args.master,
        max_bytes=int(args.max_size_mb * 2**20),
        limits=limits,
        seed=seed,
        private=tuple(path.resolve() if path.is_dir() else path.resolve().parent for path in args.paths),
    )
    reports = grade_many(paths, options, jobs=args.jobs, progress=not args.no_progress and len(paths) > 1)
    flag_duplicates(reports)
    warnings_found = []
    masters = sorted({report["extra_data"].get("master") for report in reports.values()} - {None})
    if len(masters) > 1 and not args.master:
        warnings_found.append(
            f"this batch mixes {len(masters)} exercises ({', '.join(masters)}): pass --master NN_topic to grade "
            "one exercise and refuse the others"
        )
    for path, report in reports.items():
        status = report["extra_data"]["status"]
        print(f"{report['score']:6g} / {report['max_score']:<6g} {status:8s} {clean_text(path)}")
    for warning in warnings_found:
        print(f"warning: {warning}", file=sys.stderr)
    if args.reports:
        for report in reports.values():
            write_atomically(args.reports / report_name(report), json.dumps(report, indent=1) + "\n")
    if args.out:
        if len(reports) == 1:
            document = next(iter(reports.values()))
        else:
            document = {
                "grader_version": GRADER_VERSION,
                "seed": seed,
                "warnings": warnings_found,
                "submissions": {str(path): report for path, report in reports.items()},
            }
        write_atomically(args.out, json.dumps(document, indent=1) + "\n")
    if args.csv:
        write_gradebook(reports, args.csv)
    return 0
