"""The gradebook: one JSON report per learner, and a CSV built from those reports alone.

    python -m attn_course.grading.gradebook REPORTS_DIR [REPORTS_DIR ...] --csv grades.csv

A batch (``python -m attn_course.grade ... --reports DIR``, or the sandbox runner
``attn_course.grading.container``) writes each learner's report to its own file,
``<cleaned file stem>-<sha256[:16]>.json``. This module holds what both write with
and what an instructor runs afterwards to rebuild the CSV from a folder of reports
(after a regrade of a few submissions, or to merge two batches):

* every report is read as data (a regular file, not a link, FIFO or device, at most
  16 MB, opened without blocking) and checked before it counts: Gradescope's shape
  (``score``, ``max_score``, ``tests``), a score that is the sum of its tests and at
  most the maximum, and a file name that matches the SHA-256 inside the report;
  a report that fails a check gets a row scoring 0 with the reason, never its claim;
* one row per report, with the learner's file name in every row, control characters
  removed and a leading ``= + - @`` quoted (:func:`clean_text`), so a crafted file
  name neither fakes a terminal line nor runs as a spreadsheet formula;
* files with the same SHA-256 are flagged (``duplicate_of``) in each other's rows;
* files are written to a temporary file and renamed into place (:func:`write_atomically`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

from .result_files import RecordError, open_regular

__all__ = [
    "clean_text",
    "flag_duplicates",
    "gradebook_text",
    "main",
    "read_reports",
    "report_name",
    "report_problems",
    "safe_stem",
    "score_problems",
    "write_atomically",
    "write_gradebook",
]

MAX_REPORT_BYTES = 16 * 2**20
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
REFUSED = "report refused: "
OPTIONAL_COLUMNS = ("sandbox", "sandbox_problems")  # written by the sandbox runner only


def clean_text(text, limit: int = 300) -> str:
    """``text`` safe for a terminal and a spreadsheet: no control or format characters (a newline or an escape
    cannot fake a line), no formula (a leading ``= + - @`` gets a quote), at most ``limit`` characters."""
    flat = str(text).replace("\n", " ")
    text = "".join(char if unicodedata.category(char)[0] != "C" else "?" for char in flat)[:limit]
    return "'" + text if text.startswith(FORMULA_START) else text


def safe_stem(name) -> str:
    """A file name's stem made only of letters, digits, ``.``, ``_`` and ``-``, at most 80 characters (digits kept:
    they name the exercise, and nothing adds digits the grader could read as another exercise's number)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).stem).strip("._-")[:80]
    return stem or "submission"


def report_name(report: dict) -> str:
    """The file name of a learner's own JSON report: the submission's file name (cleaned) and its SHA-256."""
    extra = report["extra_data"]
    return f"{safe_stem(extra['submission'])}-{(extra.get('sha256') or 'unreadable')[:16]}.json"


def flag_duplicates(reports: dict) -> None:
    """Note, in each report, the other submissions of the batch whose file has the same SHA-256."""
    by_hash: dict[str, list] = {}
    for key, report in reports.items():
        sha = report["extra_data"].get("sha256")
        if sha:
            by_hash.setdefault(sha, []).append(key)
    for keys in by_hash.values():
        for key in keys if len(keys) > 1 else ():
            others = [str(reports[other]["extra_data"]["submission"]) for other in keys if other != key]
            extra = reports[key]["extra_data"]
            extra["duplicate_of"] = others
            names = ", ".join(clean_text(Path(other).name, 80) for other in others)
            notes = extra.setdefault("notes", [])
            if f"the same file as {names}" not in notes:
                notes.append(f"the same file as {names}")


def write_atomically(target: Path, text: str) -> None:
    """Write ``text`` to a fresh temporary file beside ``target``, then rename it into place (a planted link,
    pipe or half-written file at ``target`` is replaced, never followed)."""
    target = Path(target)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def gradebook_text(reports) -> str:
    """The CSV gradebook of ``reports`` (a dict of reports, or a list): one row per submission, one column per test,
    the learner's file name, hashes, seed and the grader's version; every cell cleaned (:func:`clean_text`)."""
    reports = list(reports.values()) if isinstance(reports, dict) else list(reports)
    test_names: list[str] = []
    for report in reports:
        for test in report["tests"]:
            if test["name"] not in test_names:
                test_names.append(test["name"])
    optional = [name for name in OPTIONAL_COLUMNS if any(name in report["extra_data"] for report in reports)]
    columns = ["submission", "file", "status", "master", "score", "max_score", *test_names]
    columns += ["tampering", "notes", "sha256", "duplicate_of", "master_sha256", "seed", "grader_version", *optional]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for report in reports:
        extra = report["extra_data"]
        row = {
            "submission": str(extra.get("submission", "")),
            "file": Path(str(extra.get("submission", ""))).name,
            "status": extra.get("status"),
            "master": extra.get("master") or "",
            "score": f"{report['score']:g}",
            "max_score": f"{report['max_score']:g}",
            "tampering": " | ".join(extra.get("tampering") or []),
            "notes": " | ".join(extra.get("notes") or [])
            or ("" if extra.get("status") == "graded" else report.get("output", "")),
            "sha256": extra.get("sha256") or "",
            "duplicate_of": " | ".join(Path(str(other)).name for other in extra.get("duplicate_of") or []),
            "master_sha256": extra.get("master_sha256") or "",
            "seed": extra.get("seed", ""),
            "grader_version": extra.get("grader_version", ""),
        }
        for name in optional:
            value = extra.get(name, "")
            row[name] = " | ".join(map(str, value)) if isinstance(value, list) else value
        row.update({test["name"]: f"{test['score']:g}" for test in report["tests"]})
        writer.writerow({key: clean_text(value, 2000) for key, value in row.items()})
    return buffer.getvalue()


def write_gradebook(reports, target: Path) -> None:
    """A CSV gradebook (see :func:`gradebook_text`), written atomically."""
    write_atomically(Path(target), gradebook_text(reports))


# --------------------------------------------------------------------------- rebuilding from a folder of reports


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def score_problems(report) -> list[str]:
    """Why ``report`` is not a consistent grader report: Gradescope's shape (``score``, ``max_score``, ``tests``,
    plus ``extra_data``), every test within its points, a score that is the sum of its tests and at most the
    maximum. Empty when it is consistent (what it claims about its file is checked by the caller)."""
    if not isinstance(report, dict) or not isinstance(report.get("extra_data"), dict):
        return ["not a grader report (no extra_data)"]
    tests = report.get("tests")
    if not _number(report.get("score")) or not _number(report.get("max_score")):
        return ["score or max_score is not a number"]
    if not isinstance(tests, list) or not all(
        isinstance(test, dict)
        and isinstance(test.get("name"), str)
        and _number(test.get("score"))
        and _number(test.get("max_score"))
        and 0 <= test["score"] <= test["max_score"]
        for test in tests
    ):
        return ["its tests are not a list of named scores within their maxima"]
    problems = []
    if not 0 <= report["score"] <= report["max_score"]:
        problems.append(f"score {report['score']:g} is outside 0..{report['max_score']:g}")
    if abs(sum(test["score"] for test in tests) - report["score"]) > 1e-6:
        problems.append("score is not the sum of its tests")
    if abs(sum(test["max_score"] for test in tests) - report["max_score"]) > 1e-6 and tests:
        problems.append("max_score is not the sum of its tests' maxima")
    return problems


def report_problems(report, file_name: str) -> list[str]:
    """Why ``report`` (read from ``file_name``) cannot count as it stands: :func:`score_problems`, a submission
    named, and a file name that carries the SHA-256 inside the report. Empty when it can count."""
    problems = score_problems(report)
    if problems:  # inconsistent: what else it claims does not matter
        return problems
    extra = report["extra_data"]
    if not isinstance(extra.get("submission"), str):
        problems.append("it names no submission")
    sha = extra.get("sha256")
    if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        if report["score"] > 0:  # an unreadable file has no hash, and scores nothing
            problems.append("no SHA-256 of the submission")
    elif not file_name.endswith(f"-{sha[:16]}.json"):
        problems.append(f"its file name does not carry the submission's SHA-256 ({sha[:16]})")
    return problems


def _refused(file_name: str, problems: list[str], report=None) -> dict:
    extra = report.get("extra_data") if isinstance(report, dict) else None
    extra = extra if isinstance(extra, dict) else {}
    submission = extra.get("submission") if isinstance(extra.get("submission"), str) else file_name
    reason = REFUSED + "; ".join(problems)
    return {
        "score": 0.0,
        "max_score": report["max_score"] if isinstance(report, dict) and _number(report.get("max_score")) else 0.0,
        "output": reason,
        "tests": [],
        "extra_data": {
            "submission": submission,
            "status": "refused",
            "notes": [f"{reason} (file {file_name})"],
            "sha256": extra.get("sha256") if isinstance(extra.get("sha256"), str) else "",
            "master": extra.get("master") if isinstance(extra.get("master"), str) else "",
        },
    }


def read_reports(folders) -> dict[str, dict]:
    """Every ``*.json`` report in ``folders`` (file path -> report), each checked (:func:`report_problems`);
    a report that fails a check is replaced by one scoring 0 that says why."""
    reports: dict[str, dict] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"REPORTS_DIR {folder} is not a folder")
        for path in sorted(folder.glob("*.json")):
            try:
                handle, _ = open_regular(path, MAX_REPORT_BYTES)
                with handle:
                    report = json.loads(handle.read().decode("utf-8"))
            except (RecordError, ValueError) as err:  # JSON and Unicode errors are ValueErrors
                reports[str(path)] = _refused(path.name, [f"unreadable ({clean_text(err, 200)})"])
                continue
            problems = report_problems(report, path.name)
            reports[str(path)] = _refused(path.name, problems, report) if problems else report
    flag_duplicates(reports)
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attn_course.grading.gradebook",
        description="Build the CSV gradebook from folders of per-learner JSON reports (grade --reports DIR).",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="folders of JSON reports")
    parser.add_argument("--csv", type=Path, required=True, help="write the CSV gradebook here")
    args = parser.parse_args(argv)
    try:
        reports = read_reports(args.folders)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not reports:
        print("no reports (*.json) in " + ", ".join(map(str, args.folders)), file=sys.stderr)
        return 2
    target = args.csv
    if target.is_symlink() or (target.exists() and not target.is_file()):
        print(f"cannot write the gradebook: {target} exists and is not a plain file", file=sys.stderr)
        return 2
    write_gradebook(reports, target)
    refused = {path: report for path, report in reports.items() if report["output"].startswith(REFUSED)}
    print(f"{len(reports)} reports, {len(refused)} refused; gradebook written to {clean_text(target)}")
    for path, report in refused.items():
        print(f"  {clean_text(Path(path).name)}: {clean_text(report['output'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
