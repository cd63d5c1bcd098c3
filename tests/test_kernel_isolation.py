"""What a grading kernel can reach: no masters, no git history, no classmates' files, its own user, a process cap.

The launcher (``attn_course/grading/launch_with_limits.py``) is run directly with the spec the grader gives it
(``sandbox.hidden_paths`` / ``sandbox.kept_paths``); then one submission whose answer reads the master from
``solutions/`` by a path built at run time (which the static scan cannot see) is graded twice: with the masters
hidden it earns nothing for that task, and with hiding switched off it would have earned full marks (so the test
can fail).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from attn_course.grading import assign, grade, sandbox
from attn_course.grading.processes import PidsGroup

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mount namespaces are Linux's")

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "attn_course" / "grading" / "launch_with_limits.py"
MASTER_02 = "02_softmax_temperature_and_scaling"
IS_ROOT = os.geteuid() == 0

PROBE = """
import json, os, sys
solutions, git, folder = sys.argv[1:4]
print(json.dumps({
    "uid": os.getuid(),
    "solutions": sorted(os.listdir(solutions)) if os.path.isdir(solutions) else None,
    "git_head": os.path.exists(os.path.join(git, "HEAD")),
    "classmates": sorted(os.listdir(folder)),
    "package": os.path.exists(os.path.join(sys.argv[4], "attn_course", "softmax.py")),
    "imports": __import__("attn_course.softmax", fromlist=["softmax"]).__name__,
}))
"""


def launch(spec: dict, *command: str, **run) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full = [sys.executable, str(LAUNCHER), json.dumps(spec), "--", *command]
    return subprocess.run(full, capture_output=True, text=True, timeout=120, env=env, cwd="/", check=False, **run)


@pytest.fixture
def classmates(tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    (folder / "02_bob.ipynb").write_text("{}")
    return folder


def isolation(folder):
    return {"hide": sandbox.hidden_paths([assign.SOLUTIONS_DIR, folder]), "keep": sandbox.kept_paths()}


def test_the_kernel_sees_no_masters_no_history_no_classmates_but_runs_the_package(classmates):
    spec = isolation(classmates)
    if not sandbox.isolation_support()[0]:
        pytest.skip("no mount namespace here (neither root nor unprivileged user namespaces)")
    done = launch(
        spec, sys.executable, "-c", PROBE, str(assign.SOLUTIONS_DIR), str(REPO / ".git"), str(classmates), str(REPO)
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["solutions"] == [] and seen["classmates"] == [] and not seen["git_head"]
    assert seen["package"] and seen["imports"] == "attn_course.softmax"
    assert os.listdir(assign.SOLUTIONS_DIR), "the grader's own view is unchanged"


@pytest.mark.skipif(not IS_ROOT, reason="a grader running as root only")
def test_a_root_grader_s_kernel_is_a_user_of_its_own_that_cannot_write_the_course(classmates):
    spec = isolation(classmates)
    limits = sandbox.Limits()
    uid = sandbox.kernel_user(limits)
    assert uid is not None and uid != 0, "the interpreter in root's home is bound back for the kernel's user"
    code = "import os, sys; open(os.path.join(sys.argv[1], 'attn_course', 'planted.py'), 'w')"
    done = launch({**spec, "uid": uid}, sys.executable, "-c", code, str(REPO))
    assert done.returncode != 0 and ("PermissionError" in done.stderr or "Read-only" in done.stderr), done.stderr
    assert not (REPO / "attn_course" / "planted.py").exists()


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root to become another user")
def test_an_ordinary_user_hides_the_masters_in_a_user_namespace_it_cannot_undo(tmp_path):
    secret = tmp_path / "solutions"
    secret.mkdir()
    (secret / "key.ipynb").write_text("the answer")
    for folder in (tmp_path, *tmp_path.parents):  # the test user must reach its folder
        if folder != Path("/"):
            os.chmod(folder, os.stat(folder).st_mode | 0o005)
    launcher = tmp_path / "launch_with_limits.py"  # the venv's interpreter lives in root's home: use the system's
    shutil.copy(LAUNCHER, launcher)
    spec = json.dumps({"hide": [str(secret)], "keep": [], "hide_required": True})
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the test user")
    script = f"cat {secret}/key.ipynb; unshare -Urm sh -c 'umount {secret}; cat {secret}/key.ipynb'; ls -A {secret}"
    command = ["setpriv", "--reuid", "4321", "--regid", "4321", "--clear-groups", python, str(launcher), spec, "--"]
    done = subprocess.run([*command, "sh", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    if "could not be hidden" in done.stderr:
        pytest.skip(f"unprivileged user namespaces are off here: {done.stderr.strip()}")
    assert "the answer" not in done.stdout, (done.stdout, done.stderr)
    assert done.stdout.strip() == ""  # empty folder: nothing listed


def test_a_process_flood_stops_at_the_cgroup_s_cap_even_for_root():
    group = PidsGroup.create(12)
    if group is None:
        pytest.skip("no writable pids cgroup here (not root, or no cgroup file system)")
    flood = textwrap.dedent(
        """
        import os, time
        born = 0
        for _ in range(60):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.closerange(0, 3)  # the test reads the parent's output to its end
                time.sleep(60)
                os._exit(0)
            born += 1
        print(born)
        """
    )
    try:
        done = launch({"pids_cgroup": group.path}, sys.executable, "-c", flood)
        assert done.returncode == 0, done.stderr
        born = int(done.stdout)
        assert 0 < born < 12, f"{born} processes born under a cap of 12 (the cap counts the kernel itself)"
        members = group.members()
        assert len(members) == born, f"the sleeping children are still in the group: {members}, {born} born"
    finally:
        killed = group.close()
    assert killed == born
    assert not os.path.exists(group.path), "the group is removed once its members are gone"


# --------------------------------------------------------------------------- a graded submission


READS_THE_MASTER = """
import builtins
import json
import pathlib

here = pathlib.Path.cwd()
found = None
for folder in (here, *here.parents, pathlib.Path({course!r})):
    candidate = folder / ("sol" + "utions") / ("02_softmax_temperature_and_scaling" + ".ipy" + "nb")
    try:
        found = json.loads(candidate.read_text())
        break
    except OSError:
        pass
if found is None:
    raise NotImplementedError("the master was out of reach")
for cell in found["cells"]:
    if cell.get("metadata", {{}}).get("attn" + "_course", {{}}).get("grade_id") == "softmax":
        getattr(builtins, "ex" + "ec")("".join(cell["source"]), globals())
"""


@pytest.mark.grader
@pytest.mark.parametrize("hidden", [True, False], ids=["masters hidden", "hiding off (control)"])
def test_an_answer_that_reads_the_master_at_run_time_earns_nothing(tmp_path, monkeypatch, hidden):
    if not sandbox.isolation_support()[0]:
        pytest.skip("no mount namespace here")
    if not hidden:  # the root kernel, or the grader's own user, can read the masters then
        monkeypatch.setenv(sandbox.ISOLATION_ENV, "0,0")
    notebook = nbformat.read(REPO / "exercises" / f"{MASTER_02}.ipynb", as_version=4)
    answer = next(cell for cell in notebook.cells if cell.metadata.get("attn_course", {}).get("grade_id") == "softmax")
    answer.source = READS_THE_MASTER.format(course=str(REPO))
    path = tmp_path / "02_mallory.ipynb"
    nbformat.write(notebook, path)
    report = grade.grade_submission(path, grade.Options(seed=5))
    softmax = [test for test in report["tests"] if test["name"].startswith("softmax:")]
    assert softmax and report["extra_data"]["status"] == "graded", report["output"]
    if hidden:
        assert all(test["score"] == 0 for test in softmax), softmax
    else:
        assert all(test["score"] == test["max_score"] for test in softmax), [test["output"][:300] for test in softmax]
