"""Gradescope's autograder: ``python -m attn_course.assign --gradescope NN --out DIR`` writes a bundle without the
answer key, whose ``run_autograder``, run against a fake ``/autograder`` tree, writes Gradescope's results.json:
full marks for the master, zero for the untouched exercise, a reason for a submission without a notebook."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attn_course.grading import assign, container, gradescope

REPO = Path(__file__).resolve().parents[1]
MASTER = "02_softmax_temperature_and_scaling"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    assert assign.main(["--gradescope", "02", "--out", str(out)]) == 0
    return out


def answers_of(master_path) -> list[str]:
    regions = []
    for cell in assign.read_master(master_path).cells:
        if cell.kind == "solution":
            regions += [r.strip() for r in assign.solution_regions(cell.source) if r.strip()]
    return regions


def test_the_bundle_holds_the_scripts_the_package_and_a_master_without_answers(bundle):
    for name in ("setup.sh", "run_autograder"):
        assert os.access(bundle / name, os.X_OK), f"{name} must be executable"
        assert (bundle / name).read_text().startswith("#!/usr/bin/env bash")
        syntax = subprocess.run(["bash", "-n", str(bundle / name)], capture_output=True, text=True, check=False)
        assert syntax.returncode == 0, syntax.stderr
    assert (bundle / "course" / "attn_course" / "grading" / "grade.py").is_file()
    assert not list(bundle.rglob("__pycache__"))
    notebooks = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*.ipynb"))
    assert notebooks == [f"masters/{MASTER}.ipynb"], "one master, and nothing of solutions/ or exercises/"
    sources = "\n".join(cell.source for cell in nbformat.read(bundle / notebooks[0], as_version=4).cells)
    answers = answers_of(assign.SOLUTIONS_DIR / f"{MASTER}.ipynb")
    assert answers and not [answer for answer in answers if answer in sources]
    requirements = (bundle / "requirements.txt").read_text().splitlines()
    assert requirements[0] == f"--extra-index-url {gradescope.TORCH_CPU_INDEX}"
    names = {line.split("<")[0].split(">")[0].split("=")[0].split(";")[0] for line in requirements[1:]}
    assert {"numpy", "torch", "ipykernel", "nbclient", "nbformat"} <= names
    assert f"--master {MASTER}" in (bundle / "run_autograder").read_text()


def test_assign_refuses_an_unknown_exercise_and_a_lone_option(tmp_path, capsys):
    assert assign.main(["--gradescope", "99", "--out", str(tmp_path / "b")]) == 2
    assert "--gradescope 99: 0 masters match" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit):
        assign.main(["--gradescope", "02"])
    assert "go together" in capsys.readouterr().err


def fake_autograder(tmp_path, bundle, submission: Path | None) -> Path:
    """A fake /autograder: the bundle unpacked in source/, the submission in submission/, an empty results/."""
    root = tmp_path / "autograder"
    shutil.copytree(bundle, root / "source")
    (root / "submission").mkdir()
    (root / "results").mkdir()
    if submission is not None:
        shutil.copy(submission, root / "submission" / submission.name)
    return root


def run_autograder(root: Path, sandbox: str) -> dict:
    env = {
        **os.environ,
        gradescope.ROOT_VARIABLE: str(root),
        gradescope.SANDBOX_VARIABLE: sandbox,
        "ATTN_AUTOGRADER_PYTHON": sys.executable,
    }
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(root / "source" / "run_autograder")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((root / "results" / "results.json").read_text())


def check_format(results: dict, max_score: float) -> None:
    """Gradescope's results.json: the keys it reads, with the types it expects."""
    assert isinstance(results["score"], (int, float)) and isinstance(results["output"], str)
    assert results["visibility"] == "visible" and results["stdout_visibility"] == "hidden"
    assert isinstance(results["execution_time"], (int, float))
    assert results["tests"], "Gradescope shows the points of the tests"
    for test in results["tests"]:
        assert set(test) == {"name", "score", "max_score", "status", "output", "visibility"}
        assert test["status"] in ("passed", "failed") and 0 <= test["score"] <= test["max_score"]
    assert sum(test["max_score"] for test in results["tests"]) == pytest.approx(max_score)
    assert results["score"] == pytest.approx(sum(test["score"] for test in results["tests"]))


def test_no_notebook_in_the_submission_scores_zero_with_the_reason(tmp_path, bundle):
    root = fake_autograder(tmp_path, bundle, None)
    (root / "submission" / "answers.py").write_text("print('hi')\n")
    results = run_autograder(root, "none")
    max_score = assign.read_master(assign.SOLUTIONS_DIR / f"{MASTER}.ipynb").max_score
    check_format(results, max_score)
    assert results["score"] == 0 and "no notebook (.ipynb) was submitted" in results["output"]


SANDBOXES = ["none"] + (["namespace"] if container.namespaces_unavailable() is None else [])


@pytest.mark.grader
@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_run_autograder_gives_the_master_full_marks_and_the_exercise_zero(tmp_path, bundle, sandbox):
    max_score = assign.read_master(assign.SOLUTIONS_DIR / f"{MASTER}.ipynb").max_score
    master_copy = tmp_path / "alice_02.ipynb"
    shutil.copy(assign.SOLUTIONS_DIR / f"{MASTER}.ipynb", master_copy)
    results = run_autograder(fake_autograder(tmp_path / "full", bundle, master_copy), sandbox)
    check_format(results, max_score)
    assert results["score"] == pytest.approx(max_score), results["output"]
    assert {test["status"] for test in results["tests"]} == {"passed"}
    assert results["extra_data"]["sandbox"] == sandbox and results["extra_data"]["master"] == MASTER

    stub = tmp_path / "bob_02.ipynb"
    shutil.copy(REPO / "exercises" / f"{MASTER}.ipynb", stub)
    results = run_autograder(fake_autograder(tmp_path / "zero", bundle, stub), sandbox)
    check_format(results, max_score)
    assert results["score"] == 0
    assert {test["status"] for test in results["tests"]} == {"failed"}
