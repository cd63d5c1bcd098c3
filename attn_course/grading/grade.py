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
import csv
import hashlib
import json
import multiprocessing
import re
import sys
import tempfile
import threading
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nbformat
from tqdm import tqdm

from .. import __version__
from .assign import MASTER_NAME, META_KEY, SOLUTIONS_DIR, AssignError, Master, build_exercise, read_master
from .judge import Verdict, judge
from .result_files import RecordError, read_result, write_inputs
from .sandbox import Limits, RunLog, run_notebook
from .specs import get_exercise

__all__ = ["GRADER_VERSION", "Options", "grade_many", "grade_submission", "main"]

GRADER_VERSION = f"attn_course {__version__}, grader 1"
DEFAULT_MAX_MB = 10.0
_kernels_started_here = False  # set once this process has run a kernel (zmq state that fork must not copy)


@dataclass(frozen=True)
class Options:
    """How to grade: where the masters are, which master to force, size and run limits."""

    solutions: Path = SOLUTIONS_DIR
    master: str | None = None
    max_bytes: int = int(DEFAULT_MAX_MB * 2**20)
    limits: Limits = field(default_factory=Limits)


class SubmissionError(Exception):
    """The submission cannot be graded (not a notebook, too big, no master); the message says why."""


# --------------------------------------------------------------------------- reading a submission


def _file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_submission(path: Path, max_bytes: int) -> tuple[bytes, nbformat.NotebookNode]:
    """The file's bytes and its notebook; :class:`SubmissionError` when it is not a valid notebook."""
    if not path.is_file():
        raise SubmissionError(f"{path} is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise SubmissionError(f"the file is {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:g} MB allowed")
    data = path.read_bytes()[: max_bytes + 1]
    if not data.strip():
        raise SubmissionError("the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("the file is not text (UTF-8): not a notebook") from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise SubmissionError(f"the file is not JSON, so not a notebook ({str(err)[:200]})") from None
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise SubmissionError("the file is JSON but not a notebook (no 'cells' or 'nbformat')")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            notebook = nbformat.reads(text, as_version=4)
            nbformat.validate(notebook)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SubmissionError(f"the notebook does not follow the notebook format: {first_line[:300]}") from None
    return data, notebook


@lru_cache(maxsize=32)
def _master_at(path: Path, mtime: float) -> Master:
    return read_master(path)


def load_master(path: Path) -> Master:
    return _master_at(path, path.stat().st_mtime)


def find_master(notebook, path: Path, options: Options) -> Path:
    """The master that ``notebook`` was generated from (see the module docstring for the order)."""
    folder = Path(options.solutions)
    if options.master:
        named = Path(options.master)
        candidate = named if named.suffix == ".ipynb" else folder / f"{options.master}.ipynb"
        if not candidate.is_file():
            raise SubmissionError(f"--master {options.master}: no master notebook at {candidate}")
        return candidate
    meta = notebook.metadata.get(META_KEY, {})
    name = meta.get("master") if isinstance(meta, dict) else None
    if isinstance(name, str) and MASTER_NAME.fullmatch(name) and (folder / f"{name}.ipynb").is_file():
        return folder / f"{name}.ipynb"
    masters = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    for master in masters:
        if master.stem in path.stem:
            return master
    numbers = set(re.findall(r"(?<!\d)(\d\d)(?!\d)", path.stem))
    matching = [master for master in masters if master.stem[:2] in numbers]
    if len(matching) == 1:
        return matching[0]
    raise SubmissionError(
        "cannot tell which exercise this is: the notebook has no attn_course.master metadata and its file "
        f"name names no master in {folder}; pass --master NN_topic"
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


def collect_tests(master: Master, log: RunLog, record_dir: Path, args_by_case: dict) -> list[dict]:
    """One Gradescope test entry per case of every test cell, judged here."""
    tests = []
    for test_cell in master.test_cells():
        exercise = get_exercise(test_cell.exercise)
        outcome = log.cells.get(test_cell.index)
        for case in exercise.cases:
            try:
                result = read_result(record_dir, exercise.name, case.name)
            except RecordError as err:
                verdict = Verdict(
                    exercise.name, case.name, case.about, "error", case.points, detail=f"unreadable result: {err}"
                )
            else:
                if result is None:
                    verdict = _missing_verdict(exercise, case, outcome)
                else:
                    verdict = judge(exercise, case, result, args_by_case[exercise.name, case.name])
            tests.append(
                {
                    "name": verdict.name,
                    "score": verdict.points,
                    "max_score": verdict.max_points,
                    "status": verdict.status,
                    "output": verdict.text(),
                }
            )
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


def grade_submission(path, options: Options | None = None) -> dict:
    """Grade one notebook file; always returns a report, whatever the file holds."""
    global _kernels_started_here  # noqa: PLW0603 (a fact about this process)
    options = options or Options()
    path = Path(path)
    started = time.monotonic()
    extra = {"sha256": None, "master": None, "master_sha256": None, "tampering": [], "notes": []}
    max_score = 0.0
    try:
        data, submission = read_submission(path, options.max_bytes)
        extra["sha256"] = _file_hash(data)
        master = load_master(find_master(submission, path, options))
        extra.update(master=master.name, master_sha256=master.sha256)
        max_score = master.max_score
        rebuilt = rebuild(master, submission)
        extra.update(tampering=rebuilt.tampering, notes=rebuilt.notes)
        with tempfile.TemporaryDirectory(prefix="attn_grade_") as scratch:
            workdir, record_dir = Path(scratch) / "work", Path(scratch) / "record"
            workdir.mkdir()
            record_dir.mkdir()
            args_by_case = {}
            for test_cell in master.test_cells():
                exercise = get_exercise(test_cell.exercise)
                cases = {case.name: case.args() for case in exercise.cases}
                write_inputs(record_dir, exercise.name, cases)
                # the grader judges against its own copy of the inputs, never against files the kernel could touch
                args_by_case.update({(exercise.name, case.name): case.args() for case in exercise.cases})
            _kernels_started_here = True
            log = run_notebook(rebuilt.notebook, workdir, record_dir, options.limits)
            tests = collect_tests(master, log, record_dir, args_by_case)
        extra["notes"] = rebuilt.notes + log.notes
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


def write_gradebook(reports: dict[Path, dict], target: Path) -> None:
    """A CSV gradebook: one row per submission, one column per test, hashes and the grader's version."""
    test_names: list[str] = []
    for report in reports.values():
        for test in report["tests"]:
            if test["name"] not in test_names:
                test_names.append(test["name"])
    columns = ["submission", "status", "master", "score", "max_score", *test_names]
    columns += ["tampering", "notes", "sha256", "master_sha256", "grader_version"]
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for path, report in reports.items():
            extra = report["extra_data"]
            row = {
                "submission": str(path),
                "status": extra.get("status"),
                "master": extra.get("master") or "",
                "score": f"{report['score']:g}",
                "max_score": f"{report['max_score']:g}",
                "tampering": " | ".join(extra.get("tampering") or []),
                "notes": " | ".join(extra.get("notes") or [])
                or ("" if extra.get("status") == "graded" else report["output"]),
                "sha256": extra.get("sha256") or "",
                "master_sha256": extra.get("master_sha256") or "",
                "grader_version": extra.get("grader_version", GRADER_VERSION),
            }
            row.update({test["name"]: f"{test['score']:g}" for test in report["tests"]})
            writer.writerow(row)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attn_course.grade",
        description="Grade exercise notebooks against their masters in solutions/.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="submitted notebooks, or folders of them")
    parser.add_argument("--out", type=Path, help="write the JSON report (Gradescope results.json shape) here")
    parser.add_argument("--csv", type=Path, help="write a CSV gradebook here")
    parser.add_argument("--jobs", type=int, default=1, help="grade N submissions at a time (default 1)")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR, help="folder of master notebooks")
    parser.add_argument("--master", help="grade every submission against this master (NN_topic or a path)")
    parser.add_argument("--cell-timeout", type=float, default=Limits.cell_timeout, help="seconds per cell")
    parser.add_argument("--timeout", type=float, default=Limits.total_timeout, help="seconds per notebook run")
    parser.add_argument("--memory-mb", type=int, default=Limits.memory_mb, help="kernel address-space limit")
    parser.add_argument("--max-size-mb", type=float, default=DEFAULT_MAX_MB, help="largest notebook file accepted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    paths = find_submissions(args.paths)
    if not paths:
        print("no notebooks found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    limits = Limits(cell_timeout=args.cell_timeout, total_timeout=args.timeout, memory_mb=args.memory_mb)
    options = Options(
        solutions=args.solutions, master=args.master, max_bytes=int(args.max_size_mb * 2**20), limits=limits
    )
    reports = grade_many(paths, options, jobs=args.jobs, progress=not args.no_progress and len(paths) > 1)
    for path, report in reports.items():
        status = report["extra_data"]["status"]
        print(f"{report['score']:6g} / {report['max_score']:<6g} {status:8s} {path}")
    if args.out:
        if len(reports) == 1:
            document = next(iter(reports.values()))
        else:
            document = {
                "grader_version": GRADER_VERSION,
                "submissions": {str(path): report for path, report in reports.items()},
            }
        args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    if args.csv:
        write_gradebook(reports, args.csv)
    return 0
