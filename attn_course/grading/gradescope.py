"""A Gradescope autograder for one exercise: the bundle, and the run that turns a grade into ``results.json``.

    python -m attn_course.assign --gradescope 02 --out DIR     # write the bundle; zip DIR's contents, upload it

The bundle (Gradescope unpacks it into ``/autograder/source``):

==========================  ===============================================================================
``setup.sh``                run once when Gradescope builds the image: a virtual environment in
                            ``/opt/attn-course`` with the grader's dependencies (``requirements.txt``,
                            torch's CPU wheels)
``run_autograder``          run for every submission: ``python -m attn_course.grading.gradescope``
``requirements.txt``        what the package and its grader need (from the installed package's metadata)
``course/attn_course/``     the package's source, put on ``PYTHONPATH`` (nothing of ``solutions/``)
``masters/NN_topic.ipynb``  the exercise's *key-less* master: cell ids, locked and test cells and points,
                            the answer regions emptied, no outputs. Grading needs nothing else
                            (see :mod:`attn_course.grading.container`), so the answer key is not in the
                            autograder, and so not in the image the learner's code runs in
==========================  ===============================================================================

The run grades the notebook in ``$ROOT/submission`` (``ROOT``: ``/autograder``, or the environment variable
``ATTN_AUTOGRADER_ROOT``, as the tests set it) with ``python -m attn_course.grade --master NN_topic``, in the
namespace sandbox of :mod:`attn_course.grading.container` where unprivileged namespaces work, else directly
(said in the output), and writes ``$ROOT/results/results.json`` in Gradescope's format: a top-level
``score``, ``output``, ``execution_time``, ``visibility`` and ``stdout_visibility``, and ``tests``, each with
``name``, ``score``, ``max_score``, ``status`` (``passed`` or ``failed``: Gradescope knows no other; the
grader's own status opens ``output``), ``output`` and ``visibility``. A submission that cannot be graded
(no notebook, not a notebook, another exercise) gets one failed test worth the exercise's points, with the
reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

__all__ = ["find_submission", "main", "requirements", "results_json", "run_autograder", "write_bundle"]

ROOT_VARIABLE = "ATTN_AUTOGRADER_ROOT"
SANDBOX_VARIABLE = "ATTN_AUTOGRADER_SANDBOX"  # auto (default), namespace or none
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
GRADER_EXTRAS = {"torch", "grading"}
ALWAYS = ("ipykernel", "jupyter_client", "nbformat", "nbclient")

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (the bundle is in /autograder/source).
set -euo pipefail
cd /autograder/source
if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
  apt-get update
  apt-get install -y --no-install-recommends python3 python3-venv python3-pip
fi
python3 -m venv /opt/attn-course
/opt/attn-course/bin/python -m pip install --no-cache-dir --upgrade pip
/opt/attn-course/bin/python -m pip install --no-cache-dir -r requirements.txt
chmod +x run_autograder
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission. It grades /autograder/submission/*.ipynb against the key-less
# master of {master} and writes /autograder/results/results.json.
# ATTN_AUTOGRADER_ROOT replaces /autograder and ATTN_AUTOGRADER_PYTHON the interpreter (the tests use both).
set -u
ROOT="${{ATTN_AUTOGRADER_ROOT:-/autograder}}"
PYTHON="${{ATTN_AUTOGRADER_PYTHON:-/opt/attn-course/bin/python}}"
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
SOURCE="$ROOT/source"
[ -d "$SOURCE/course/attn_course" ] || SOURCE="$HERE"
export PYTHONPATH="$SOURCE/course${{PYTHONPATH:+:$PYTHONPATH}}"
cd "$SOURCE"
exec "$PYTHON" -m attn_course.grading.gradescope --root "$ROOT" --masters "$SOURCE/masters" --master {master}
"""


# --------------------------------------------------------------------------- the bundle


def requirements() -> list[str]:
    """The lines of the bundle's requirements.txt: the package's own dependencies and its grading extras."""
    lines = [f"--extra-index-url {TORCH_CPU_INDEX}"]
    try:
        declared = metadata.requires("attn_course") or []
    except metadata.PackageNotFoundError:
        declared = []
    for requirement in declared:
        spec, _, marker = (part.strip() for part in requirement.partition(";"))
        extra = re.search(r"""extra\s*==\s*["']([\w.-]+)["']""", marker)
        if extra is None or extra.group(1) in GRADER_EXTRAS:
            rest = re.sub(r"""\s*(and\s+)?extra\s*==\s*["'][\w.-]+["']""", "", marker).strip()
            lines.append(spec + (f"; {rest}" if rest else ""))
    names = {re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-") for line in lines[1:]}
    lines += [name for name in ALWAYS if name.replace("_", "-") not in names]
    if "torch" not in names:
        lines.append("torch")
    return list(dict.fromkeys(lines))


def write_bundle(master_path: Path, out: Path) -> list[Path]:
    """Write the autograder bundle for ``master_path`` into the folder ``out``; the files written."""
    import attn_course

    from .assign import read_master
    from .container import keyless_master

    master = read_master(master_path)  # a broken master is refused before anything is written
    package = Path(attn_course.__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def write(relative: str, text: str, mode: int = 0o644) -> None:
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(mode)
        written.append(target)

    write("setup.sh", SETUP_SH, 0o755)
    write("run_autograder", RUN_AUTOGRADER.format(master=master.name), 0o755)
    write("requirements.txt", "\n".join(requirements()) + "\n")
    write(f"masters/{master_path.name}", keyless_master(master_path.read_text(encoding="utf-8")))
    target = out / "course" / "attn_course"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    written.append(target)
    return written


def master_for(number: str, solutions: Path) -> Path:
    """The master ``NN_topic.ipynb`` of ``solutions`` named by ``number`` (``02``) or by its name."""
    candidates = [path for path in sorted(solutions.glob("[0-9][0-9]_*.ipynb")) if path.stem.startswith(number)]
    exact = [path for path in candidates if path.stem == number]
    found = exact or candidates
    if len(found) != 1:
        names = ", ".join(path.stem for path in sorted(solutions.glob("[0-9][0-9]_*.ipynb")))
        raise ValueError(f"--gradescope {number}: {len(found)} masters match in {solutions}; one of: {names}")
    return found[0]


# --------------------------------------------------------------------------- the run, in Gradescope's container


def find_submission(folder: Path, master: str) -> tuple[Path | None, str]:
    """The notebook to grade in ``folder`` and a note: the only one, else the one whose name has the exercise's
    number, else the first by name."""
    notebooks = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and p.is_file())
    if not notebooks:
        return None, f"no notebook (.ipynb) was submitted: upload your {master}.ipynb"
    if len(notebooks) == 1:
        return notebooks[0], ""
    named = [path for path in notebooks if master[:2] in path.name] or notebooks
    return named[0], f"{len(notebooks)} notebooks were submitted; graded {named[0].name}"


def results_json(report: dict, max_score: float, note: str = "") -> dict:
    """Gradescope's ``results.json`` from the grader's report."""
    output = " ".join(part for part in (report.get("output", ""), note) if part)
    tests = [
        {
            "name": test["name"],
            "score": test["score"],
            "max_score": test["max_score"],
            "status": "passed" if test.get("status") == "passed" else "failed",
            "output": f"[{test.get('status', 'failed')}] {test.get('output', '')}",
            "visibility": "visible",
        }
        for test in report.get("tests", [])
    ]
    if not tests:  # not graded: one failed test carries the points and the reason
        tests = [
            {
                "name": "submission",
                "score": 0.0,
                "max_score": max_score,
                "status": "failed",
                "output": output,
                "visibility": "visible",
            }
        ]
    extra = report.get("extra_data", {})
    return {
        "score": sum(test["score"] for test in tests),
        "execution_time": report.get("execution_time", 0.0),
        "output": output,
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
        "extra_data": {key: extra.get(key) for key in ("sha256", "master", "grader_version", "status", "sandbox")},
    }


def _grade_directly(path: Path, masters: Path, master: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="attn_gradescope_") as scratch:
        out = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "attn_course.grade", str(path), "--solutions", str(masters)]
        command += ["--master", master, "--out", str(out), "--no-progress"]
        try:
            subprocess.run(command, stdin=subprocess.DEVNULL, timeout=timeout, check=False, cwd=scratch)
            report = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError, subprocess.TimeoutExpired) as err:
            report = {"score": 0.0, "tests": [], "output": f"Not graded: the grader failed ({err})"}
    report.setdefault("extra_data", {})["sandbox"] = "none"
    return report


def run_autograder(root: Path, masters: Path, master: str, sandbox: str = "auto", timeout: float = 600.0) -> dict:
    """Grade the submission under ``root`` and write ``root/results/results.json``; returns what was written."""
    from . import container
    from .assign import read_master

    started = time.monotonic()
    max_score = read_master(masters / f"{master}.ipynb").max_score
    path, note = find_submission(root / "submission", master)
    if path is None:
        report = {"score": 0.0, "tests": [], "output": f"Not graded: {note}."}
        note = ""
    else:
        why_not = container.namespaces_unavailable() if sandbox in ("auto", "namespace") else "not asked for"
        if sandbox == "namespace" and why_not:
            raise SystemExit(f"the namespace sandbox is unavailable: {why_not}")
        if why_not is None:
            with tempfile.TemporaryDirectory(prefix="attn_keyless_") as keyless:
                Path(keyless).chmod(0o755)
                known = container.write_keyless_masters(masters, Path(keyless))
                settings = container.RunSettings(run_timeout=timeout, grader_args=("--master", master))
                result = container.grade_in_sandbox(path, Path(keyless), known, "namespace", settings)
            report = result.report
        else:
            report = _grade_directly(path, masters, master, timeout)
            note = " ".join(filter(None, [note, f"(graded without a sandbox: {why_not})"]))
    report.setdefault("execution_time", round(time.monotonic() - started, 2))
    results = results_json(report, max_score, note)
    if path is not None:
        results["extra_data"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    target = root / "results" / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".part", encoding="utf-8")
    with handle:
        json.dump(results, handle, indent=1)
    os.replace(handle.name, target)  # written last, in one step, after the grader and its kernel are gone
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attn_course.grading.gradescope",
        description="Grade a Gradescope submission and write results/results.json (run by run_autograder).",
    )
    parser.add_argument("--root", type=Path, default=Path(os.environ.get(ROOT_VARIABLE, "/autograder")))
    parser.add_argument("--masters", type=Path, required=True, help="folder holding the (key-less) master")
    parser.add_argument("--master", required=True, help="the exercise, NN_topic")
    parser.add_argument(
        "--sandbox", choices=("auto", "namespace", "none"), default=os.environ.get(SANDBOX_VARIABLE, "auto")
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole grading")
    args = parser.parse_args(argv)
    results = run_autograder(args.root, args.masters, args.master, args.sandbox, args.timeout)
    print(f"score {results['score']:g} of {sum(test['max_score'] for test in results['tests']):g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
