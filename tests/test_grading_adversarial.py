"""Hostile submissions graded in one batch beside honest ones: each attack earns what its real work deserves.

One submission per attack class of issue 15 (the answer key, a lookup table of
the public cases, forged results, named pipes where results belong, a process
left behind, a process flood, copying a classmate's results, writing the
grader's memory, forging the report, huge errors, odd file names, the wrong
master, duplicates), graded once by the command line with ``--jobs 2`` beside
honest submissions. Each attack's other answers are honest, so a score tells
exactly which task the attack cost (or, if it worked, won).
"""

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from attn_course.grading import assign
from attn_course.grading.sandbox import Limits
from attn_course.grading.specs import get_exercise
from tests.test_grader import GOOD  # the honest answers of the grader's self-test

pytestmark = pytest.mark.grader

REPO = Path(__file__).resolve().parents[1]
MASTER_02 = "02_softmax_temperature_and_scaling"
MASTER_03 = "03_scaled_dot_product_attention"
SEED = 77
JOBS = 2
LIMITS = {"--cell-timeout": 5, "--timeout": 60, "--memory-mb": 1024}

HONEST_02 = {  # answers that share no function with one another, so refusing one costs only its own task
    **{name: GOOD[name] for name in ("softmax", "softmax_with_temperature", "masked_softmax")},
    "entropy_limits": """
def entropy_limits(x):
    tied = (x == x.max(axis=-1, keepdims=True)).sum(axis=-1)
    return np.log(tied.astype(np.float64)), np.full(x.shape[:-1], math.log(x.shape[-1]))
""",
}
POINTS_02 = {"softmax": 5, "softmax_with_temperature": 3, "masked_softmax": 4, "entropy_limits": 3}
FULL_02 = sum(POINTS_02.values())


def lookup_table_answer() -> str:
    """softmax answered from a table of the public cases' outputs (computed "at home"), zeros otherwise."""
    exercise = get_exercise("softmax")
    table = {}
    for case in exercise.cases:
        (x,) = case.args()
        table[x.tobytes().hex()] = (exercise.reference(x).tolist(), str(x.dtype))
    return f"""
TABLE = {table!r}

def softmax(x):
    if x.tobytes().hex() in TABLE:
        values, dtype = TABLE[x.tobytes().hex()]
        return np.array(values, dtype=dtype)
    return np.zeros_like(x)
"""


FIFO_ANSWER = """
import os
import pathlib

def softmax(x):
    # each call turns the results already recorded into named pipes (a reader that blocks would hang for ever)
    for record in pathlib.Path("../record/outputs/softmax").glob("*.npy"):
        record.unlink()
        os.mkfifo(record)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
"""

FORGED_ANSWER = """
import json, pathlib, threading, time

def forge():
    # results that pass the public cases, written before, during and after the test cell
    folder = pathlib.Path("../record/outputs/masked_softmax")
    end = time.time() + 20
    while time.time() < end:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("some_masked", "broadcast_mask", "row_fully_masked", "large_scores"):
                np.save(folder / f"{name}.npy", np.full((3, 5), 0.2, dtype=np.float32))
                (folder / f"{name}.json").write_text(json.dumps({"status": "returned", "value": {"kind": "array"}}))
        except OSError:
            pass
        time.sleep(0.005)

forge_thread = threading.Thread(target=forge, daemon=True)
forge_thread.start()

def masked_softmax(x, mask):
    return x
"""

CLASSMATE_ANSWER = """
import glob

def softmax(x):
    # copy a classmate's recorded softmax of the same shape and dtype, graded at the same time
    for path in sorted(glob.glob("/tmp/attn_grade_*/record/outputs/softmax/*.npy")):
        try:
            theirs = np.load(path)
        except (OSError, ValueError):
            continue
        if theirs.shape == x.shape and theirs.dtype == x.dtype:
            return theirs
    return np.zeros_like(x)
"""

MEMORY_ANSWER = """
import os

def softmax(x):
    # full marks only if the grader's memory could be opened for writing (where "failed" could become "passed")
    try:
        with open("/pr" + "oc/%d/mem" % os.getppid(), "r+b"):
            pass
    except OSError:
        return np.zeros_like(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
"""

HUGE_ERROR_ANSWER = HONEST_02["softmax"] + '\nraise ValueError("e" * 40_000_000)\n'


def leftover_answer(marker: Path) -> str:
    return f"""
import os
import time

if os.fork() == 0:  # a daemon: fork twice, new session, outlive the kernel
    os.setsid()
    if os.fork() == 0:
        with open("{marker}", "a") as handle:
            handle.write(f"{{os.getpid()}}\\n")
        time.sleep(600)
    os._exit(0)
""" + HONEST_02["masked_softmax"]


def flood_answer(marker: Path) -> str:
    return f"""
import os
import time

started = 0
for _ in range(60):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        with open("{marker}", "a") as handle:
            handle.write(f"{{os.getpid()}}\\n")
        time.sleep(600)
        os._exit(0)
    started += 1
""" + HONEST_02["softmax_with_temperature"]


def forged_report_answer(out: Path, gradebook: Path) -> str:
    return f"""
import os
import pathlib

try:  # a kernel of its own user (a root grader) may write neither: the forger goes on either way
    pathlib.Path("{out}").write_text('{{"forged": true}}')
    if not os.path.exists("{gradebook}"):
        os.mkfifo("{gradebook}")
except OSError:
    pass
""" + HONEST_02["entropy_limits"]


def notebook_for(master: str, answers: dict, keep_metadata: bool = True):
    notebook = nbformat.read(assign.EXERCISES_DIR / f"{master}.ipynb", as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("attn_course", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id].strip("\n")
    if not keep_metadata:
        del notebook.metadata["attn_course"]
    return notebook


def with_02(**answers) -> dict:
    return {**HONEST_02, **answers}


ODD_NAME = '=HYPERLINK("x")\n\x1b[31mfake line.ipynb'


def build(root: Path, markers: Path) -> dict:
    """Write the batch's submissions; returns the attack table: file name -> (expected score, statuses)."""
    folder, outside = root / "submissions", root / "out"
    folder.mkdir(parents=True)
    outside.mkdir()
    out, gradebook = outside / "report.json", outside / "grades.csv"
    hostile = {
        "answer_key_02": (with_02(softmax="def softmax(x):\n    return package_softmax(x)\n"), FULL_02 - 5),
        "answer_key_import_02": (
            with_02(
                masked_softmax="from attn_course.softmax import softmax as s\n\n"
                "def masked_softmax(x, mask):\n    return s(x, mask=mask)\n"
            ),
            FULL_02 - 4,
        ),
        "answer_key_solutions_02": (
            with_02(softmax="exec(open('../../solutions/02_softmax_temperature_and_scaling.ipynb').read())\n"),
            FULL_02 - 5,
        ),
        "lookup_table_02": (with_02(softmax=lookup_table_answer()), FULL_02 - 5),
        "forged_results_02": (with_02(masked_softmax=FORGED_ANSWER), FULL_02 - 4),
        "fifo_02": (with_02(softmax=FIFO_ANSWER), FULL_02 - 5 + 1),  # the last case's record stays a file: 1 point
        "leftover_02": (with_02(masked_softmax=leftover_answer(markers / "leftover")), FULL_02),
        "flood_02": (with_02(softmax_with_temperature=flood_answer(markers / "flood")), FULL_02),
        "classmate_02": (with_02(softmax=CLASSMATE_ANSWER), FULL_02 - 5),
        "memory_02": (with_02(softmax=MEMORY_ANSWER), FULL_02 - 5),
        "forged_report_02": (with_02(entropy_limits=forged_report_answer(out, gradebook)), FULL_02),
        "huge_error_02": (with_02(softmax=HUGE_ERROR_ANSWER), FULL_02),
    }
    for name, (answers, _) in hostile.items():
        nbformat.write(notebook_for(MASTER_02, answers), folder / f"{name}.ipynb")
    honest = notebook_for(MASTER_02, HONEST_02)
    for index in range(3):  # honest learners graded while the attacks run
        honest.metadata["learner"] = index
        nbformat.write(honest, folder / f"honest_{index}_02.ipynb")
    nbformat.write(honest, folder / "honest_copy_02.ipynb")  # the same file as honest_2_02: a duplicate
    nbformat.write(notebook_for(MASTER_02, HONEST_02), folder / ODD_NAME)
    masters_03 = assign.read_master(assign.SOLUTIONS_DIR / f"{MASTER_03}.ipynb")
    nbformat.write(masters_03.notebook, folder / f"honest_{MASTER_03}.ipynb")
    nbformat.write(  # exercise 10 handed in under 03's number, without its metadata
        notebook_for("10_the_cost_of_attention", {}, keep_metadata=False), folder / "03_wrong_master.ipynb"
    )
    return {"hostile": hostile, "out": out, "gradebook": gradebook, "markers": markers, "folder": folder}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    # where the process attacks note their pids: a folder any user may write, since a root grader runs each kernel
    # as a user of its own (pytest's own folders are root's, closed to others)
    with tempfile.TemporaryDirectory(prefix="attn_markers_") as markers:
        os.chmod(markers, 0o1777)
        yield from _graded_batch(root, Path(markers))


def _graded_batch(root: Path, markers: Path):
    built = build(root, markers)
    command = [sys.executable, "-m", "attn_course.grade", str(built["folder"]), "--jobs", str(JOBS)]
    command += ["--out", str(built["out"]), "--csv", str(built["gradebook"]), "--reports", str(root / "out" / "each")]
    command += ["--seed", str(SEED), "--no-progress"] + [str(x) for pair in LIMITS.items() for x in pair]
    started = time.monotonic()
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=900, cwd=REPO)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(built["out"].read_text())
    with open(built["gradebook"], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    yield {
        **built,
        "document": document,
        "rows": rows,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "seconds": seconds,
        "root": root,
    }


def report(batch, name: str) -> dict:
    for path, found in batch["document"]["submissions"].items():
        if Path(path).name == f"{name}.ipynb" or Path(path).name == name:
            return found
    raise KeyError(name)


def by_exercise(found: dict) -> dict:
    """exercise -> (points scored, {status})."""
    scores: dict = {}
    for test in found["tests"]:
        exercise = test["name"].split(":")[0]
        points, statuses = scores.get(exercise, (0.0, set()))
        scores[exercise] = (points + test["score"], statuses | {test["status"]})
    return scores


def test_every_attack_scores_what_its_real_work_deserves(batch):
    for name, (_, expected) in batch["hostile"].items():
        found = report(batch, name)
        assert found["extra_data"]["status"] == "graded", (name, found["output"])
        assert found["score"] == expected, (name, found["score"], found["output"][:2000])


def test_honest_submissions_score_full_marks_beside_the_attacks(batch):
    for name in ("honest_0_02", "honest_1_02", "honest_2_02", "honest_copy_02", f"honest_{MASTER_03}"):
        found = report(batch, name)
        assert found["score"] == found["max_score"] > 0, (name, found["output"][:1500])
    assert report(batch, ODD_NAME)["score"] == FULL_02


def test_the_answer_key_is_refused_with_the_reason(batch):
    refused = by_exercise(report(batch, "answer_key_02"))["softmax"]
    assert refused == (0, {"refused"})
    tests = report(batch, "answer_key_02")["tests"]
    assert "package_softmax" in next(t["output"] for t in tests if t["name"] == "softmax: rows")
    imported = report(batch, "answer_key_import_02")
    assert by_exercise(imported)["masked_softmax"] == (0, {"refused"})
    assert "imports attn_course.softmax" in imported["output"]
    solutions = report(batch, "answer_key_solutions_02")
    assert by_exercise(solutions)["softmax"] == (0, {"refused"}) and "exec" in solutions["output"]


def test_a_table_of_the_public_cases_earns_nothing(batch):
    assert by_exercise(report(batch, "lookup_table_02"))["softmax"] == (0, {"failed"})
    assert report(batch, "lookup_table_02")["extra_data"]["seed"] == SEED
    assert batch["document"]["seed"] == SEED


def test_forged_and_piped_results_are_not_read(batch):
    assert by_exercise(report(batch, "forged_results_02"))["masked_softmax"][0] == 0
    piped = report(batch, "fifo_02")
    status = {test["name"]: test for test in piped["tests"]}
    for case in ("rows", "batched", "large_scores"):
        assert status[f"softmax: {case}"]["status"] == "error"
        assert "not a regular file" in status[f"softmax: {case}"]["output"]
    assert status["softmax: float64_input"]["status"] == "passed"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("name", ["leftover", "flood"])
def test_processes_left_behind_are_killed_and_reported(batch, name):
    pids = [int(line) for line in (batch["markers"] / name).read_text().split()]
    assert pids and not any(alive(pid) for pid in pids)
    notes = " ".join(report(batch, f"{name}_02")["extra_data"]["notes"])
    assert "left running were killed" in notes


def test_classmates_and_the_grader_memory_are_out_of_reach(batch):
    assert by_exercise(report(batch, "classmate_02"))["softmax"][0] == 0
    assert by_exercise(report(batch, "memory_02"))["softmax"][0] == 0


def test_reports_are_the_grader_s_own(batch):
    assert "forged" not in batch["document"]
    assert batch["gradebook"].is_file() and not batch["gradebook"].is_symlink()
    each = sorted((batch["root"] / "out" / "each").glob("*.json"))
    assert len(each) == len(batch["document"]["submissions"])
    for path in each:
        found = json.loads(path.read_text())
        assert path.name.endswith(f"-{found['extra_data']['sha256'][:16]}.json")


def test_the_gradebook_rebuilt_from_the_reports_is_the_batch_s(batch, tmp_path):
    """``python -m attn_course.grading.gradebook DIR --csv`` gives the batch's own rows back, from its JSON files."""
    rebuilt = tmp_path / "rebuilt.csv"
    command = [sys.executable, "-m", "attn_course.grading.gradebook", str(batch["root"] / "out" / "each")]
    done = subprocess.run([*command, "--csv", str(rebuilt)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "0 refused" in done.stdout
    with open(rebuilt, newline="", encoding="utf-8") as handle:
        rows = {row["submission"]: row for row in csv.DictReader(handle)}
    assert rows == {row["submission"]: row for row in batch["rows"]}


def test_huge_errors_cost_a_bounded_output(batch):
    found = report(batch, "huge_error_02")
    assert len(json.dumps(found)) < 200_000
    assert by_exercise(found)["softmax"] == (5, {"passed"})


def test_odd_file_names_cannot_fake_lines_or_formulas(batch):
    lines = batch["stdout"].splitlines()
    assert len(lines) == len(batch["document"]["submissions"])
    assert "\x1b" not in batch["stdout"]
    row = next(row for row in batch["rows"] if "HYPERLINK" in row["file"])
    assert row["file"].startswith("'=") and "\n" not in row["file"]
    for row in batch["rows"]:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value


def test_wrong_master_is_refused_and_the_mix_is_warned(batch):
    found = report(batch, "03_wrong_master")
    assert found["extra_data"]["status"] == "invalid" and "another exercise" in found["output"]
    assert "mixes" in batch["stderr"] and "--master" in batch["stderr"]


def test_duplicates_are_flagged(batch):
    copy = report(batch, "honest_copy_02")
    assert [Path(p).name for p in copy["extra_data"]["duplicate_of"]] == ["honest_2_02.ipynb"]
    row = next(row for row in batch["rows"] if row["file"] == "honest_copy_02.ipynb")
    assert row["duplicate_of"] == "honest_2_02.ipynb"


def test_the_batch_finishes_within_its_bound(batch):
    count = len(batch["document"]["submissions"])
    limits = Limits(cell_timeout=LIMITS["--cell-timeout"], total_timeout=LIMITS["--timeout"])
    assert batch["seconds"] < count * limits.wall_seconds / JOBS + 60


def test_grader_process_is_not_dumpable_and_leftovers_are_killed(tmp_path):
    code = (
        "import os, subprocess, sys, time\n"
        "from attn_course.grading.processes import harden_grader, is_dumpable, children, kill_leftovers\n"
        "assert harden_grader() == [] and not is_dumpable()\n"
        "before = children()\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n"
        "    time.sleep(60)\\nos._exit(0)']).wait()\n"
        "time.sleep(0.3)\n"
        "print(kill_leftovers(before), len(children() - before))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert done.returncode == 0, done.stderr
    killed, left = map(int, done.stdout.split())
    assert killed >= 1 and left == 0


def test_result_files_never_block_on_a_pipe(tmp_path):
    from attn_course.grading.result_files import RecordError, read_result

    folder = tmp_path / "outputs" / "softmax"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "rows.json")
    with pytest.raises(RecordError, match="not a regular file"):
        read_result(tmp_path, "softmax", "rows")
    assert np.isfinite(1.0)
