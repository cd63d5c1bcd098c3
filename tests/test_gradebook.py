"""The gradebook rebuilt from a folder of per-learner JSON reports: honest reports give their rows, forged or damaged
ones score 0 with the reason, names cannot fake lines or formulas, identical files are flagged."""

import csv
import hashlib
import json
import os
import subprocess
import sys

import pytest

from attn_course.grading import gradebook


def make_report(submission: str, scores=(2.0, 3.0), maxima=(2.0, 4.0), content: bytes | None = None) -> dict:
    sha = hashlib.sha256(content if content is not None else submission.encode()).hexdigest()
    tests = [
        {"name": f"task_{index}: case", "score": score, "max_score": top, "status": "passed"}
        for index, (score, top) in enumerate(zip(scores, maxima, strict=True))
    ]
    return {
        "score": sum(scores),
        "max_score": sum(maxima),
        "output": "",
        "tests": tests,
        "extra_data": {"submission": submission, "status": "graded", "sha256": sha, "master": "02_softmax", "seed": 5},
    }


def write(folder, report, name=None):
    path = folder / (name or gradebook.report_name(report))
    path.write_text(json.dumps(report))
    return path


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def rebuild(folder, tmp_path):
    target = tmp_path / "grades.csv"
    assert gradebook.main([str(folder), "--csv", str(target)]) == 0
    return rows_of(target)


@pytest.fixture
def folder(tmp_path):
    place = tmp_path / "reports"
    place.mkdir()
    return place


def test_honest_reports_give_one_row_each_with_their_scores(folder, tmp_path):
    write(folder, make_report("in/02_alice.ipynb"))
    write(folder, make_report("in/02_bob.ipynb", scores=(0.0, 4.0)))
    rows = rebuild(folder, tmp_path)
    assert set(rows) == {"02_alice.ipynb", "02_bob.ipynb"}
    assert rows["02_alice.ipynb"]["score"] == "5" and rows["02_alice.ipynb"]["task_1: case"] == "3"
    assert rows["02_bob.ipynb"]["score"] == "4" and rows["02_bob.ipynb"]["max_score"] == "6"
    assert all(row["status"] == "graded" for row in rows.values())


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda r: r.update(score=6.0), "not the sum of its tests"),
        (lambda r: r["tests"][1].update(score=9.0), "within their maxima"),
        (lambda r: r.update(score=-1.0), "not the sum"),
        (lambda r: r.update(score="6"), "not a number"),
        (lambda r: r.update(max_score=float("nan")), "not a number"),
        (lambda r: r.pop("extra_data"), "not a grader report"),
        (lambda r: r["extra_data"].pop("sha256"), "no SHA-256"),
        (lambda r: r.update(max_score=99.0), "maxima"),
    ],
)
def test_a_forged_report_scores_zero_with_the_reason(folder, tmp_path, forge, reason):
    report = make_report("in/02_mallory.ipynb")
    name = gradebook.report_name(report)
    forge(report)
    write(folder, report, name)
    found = gradebook.read_reports([folder])
    (only,) = found.values()
    assert only["score"] == 0 and only["tests"] == []
    assert reason in only["output"], only["output"]


def test_a_report_under_another_file_s_name_is_refused(folder, tmp_path):
    honest = make_report("in/02_alice.ipynb")
    copied = make_report("in/02_alice.ipynb", content=b"someone else's file")
    write(folder, copied, gradebook.report_name(honest))  # a better report renamed over the learner's own
    rows = rebuild(folder, tmp_path)
    assert rows["02_alice.ipynb"]["score"] == "0"
    assert "does not carry the submission's SHA-256" in rows["02_alice.ipynb"]["notes"]


def test_links_pipes_and_garbage_are_refused_without_blocking(folder, tmp_path):
    target = write(tmp_path, make_report("in/02_alice.ipynb"), "elsewhere.json")
    (folder / "02_link-0123456789abcdef.json").symlink_to(target)
    os.mkfifo(folder / "02_pipe-0123456789abcdef.json")
    (folder / "02_garbage-0123456789abcdef.json").write_bytes(b"\xff{not json")
    found = gradebook.read_reports([folder])  # a FIFO opened for reading would block here for ever
    assert len(found) == 3
    assert all(report["score"] == 0 and report["output"].startswith(gradebook.REFUSED) for report in found.values())


def test_odd_names_cannot_fake_lines_or_run_as_formulas(folder, tmp_path):
    report = make_report('in/=HYPERLINK("x")\n\x1b[31mfake.ipynb')
    path = write(folder, report)
    assert "\n" not in path.name and "\x1b" not in path.name and path.name.endswith(".json")
    (row,) = rebuild(folder, tmp_path).values()
    assert row["file"].startswith("'=") and "\n" not in row["file"] and "\x1b" not in row["file"]
    assert row["submission"].startswith("in/=") or row["submission"].startswith("'")


def test_identical_files_are_flagged_in_each_other_s_rows(folder, tmp_path):
    content = b"the same notebook bytes"
    write(folder, make_report("in/02_alice.ipynb", content=content))
    write(folder, make_report("in/02_bob.ipynb", content=content))
    rows = rebuild(folder, tmp_path)
    assert rows["02_alice.ipynb"]["duplicate_of"] == "02_bob.ipynb"
    assert rows["02_bob.ipynb"]["duplicate_of"] == "02_alice.ipynb"


def test_an_unreadable_submission_s_report_counts_with_zero_and_no_hash(folder, tmp_path):
    report = make_report("in/02_broken.ipynb", scores=(), maxima=())
    report["extra_data"].update(status="invalid", sha256=None)
    report["output"] = "Not graded: not a notebook"
    write(folder, report)
    (row,) = rebuild(folder, tmp_path).values()
    assert row["status"] == "invalid" and row["score"] == "0" and row["notes"] == "Not graded: not a notebook"


def test_the_command_line_refuses_a_missing_folder_and_an_empty_one(folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gradebook.main([str(tmp_path / "nowhere"), "--csv", str(tmp_path / "g.csv")])
    assert "REPORTS_DIR" in capsys.readouterr().err
    assert gradebook.main([str(folder), "--csv", str(tmp_path / "g.csv")]) == 2
    command = [sys.executable, "-m", "attn_course.grading.gradebook", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--csv" in done.stderr
