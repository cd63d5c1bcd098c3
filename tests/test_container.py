"""The per-submission sandbox (attn_course.grading.container): no answer key, no network, not root, a timeout,
a report the host checks.

The namespace engine is tested for real wherever unprivileged user namespaces work (a probe runs in the
grader's place and reports what learner code could reach); docker and podman are tested by their command
lines and through a fake engine that stands in for ``docker`` on PATH (no daemon is needed).
"""

import csv
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from attn_course.grading import assign, container, grade, gradebook
from attn_course.grading.container import RunSettings, check_report, grade_in_sandbox

REPO = Path(__file__).resolve().parents[1]
MASTER_02 = "02_softmax_temperature_and_scaling"
WHY_NO_NAMESPACES = container.namespaces_unavailable()
needs_namespaces = pytest.mark.skipif(
    WHY_NO_NAMESPACES is not None,
    reason=f"namespace sandbox unavailable here: {WHY_NO_NAMESPACES} (exercises/README.md, 'Limitations')",
)


@pytest.fixture(scope="module")
def keyless(tmp_path_factory):
    """The key-less masters and what the host knows of each."""
    folder = tmp_path_factory.mktemp("keyless")
    folder.chmod(0o755)
    return folder, container.write_keyless_masters(assign.SOLUTIONS_DIR, folder)


def answer_texts(master_path) -> list[str]:
    texts = []
    for cell in assign.read_master(master_path).cells:
        if cell.kind == "solution":
            texts += [region.strip() for region in assign.solution_regions(cell.source) if region.strip()]
    return texts


def running_with(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# --------------------------------------------------------------------------- the answer key stays outside


@pytest.mark.parametrize("master_path", assign.find_masters(), ids=lambda p: p.stem[:2])
def test_a_keyless_master_holds_no_answer_and_grades_like_the_master(tmp_path, master_path):
    original = master_path.read_text(encoding="utf-8")
    text = container.keyless_master(original)
    sources = lambda notebook_text: "\n".join(cell.source for cell in nbformat.reads(notebook_text, as_version=4).cells)
    answers = answer_texts(master_path)
    assert answers and all(answer in sources(original) for answer in answers), "every master has answers"
    leaked = [answer[:60] for answer in answers if answer in sources(text)]
    assert leaked == []
    copy = tmp_path / master_path.name
    copy.write_text(text, encoding="utf-8")
    master, keyless = assign.read_master(master_path), assign.read_master(copy)
    # everything grading reads: the cells' ids, kinds, points and exercises, and the notebook that is run
    as_seen = lambda m: [(c.index, c.cell_id, c.grade_id, c.kind, c.points, c.exercise) for c in m.cells]
    assert as_seen(keyless) == as_seen(master)
    assert nbformat.writes(assign.build_exercise(keyless)) == nbformat.writes(assign.build_exercise(master))
    outputs = [cell.get("outputs") for cell in json.loads(text)["cells"] if cell["cell_type"] == "code"]
    assert all(output == [] for output in outputs), "stored outputs could show answers"


# --------------------------------------------------------------------------- names and the gradebook


def test_file_names_and_csv_cells_are_made_harmless():
    sha = "ab" * 32
    name = container.report_file_name("../02 softmax\n\x1b[2J-alice.ipynb", sha)
    assert name == f"02_softmax_2J-alice-{sha[:16]}.json"
    assert container.report_file_name("...ipynb", sha) == f"submission-{sha[:16]}.json"


def test_the_staged_submission_keeps_only_its_own_exercise_number(tmp_path):
    """The sandbox's copy is named by the learner's file name alone: a hash like ``...a17b...`` added to it read as
    exercise 17 beside 02, and the grader refused the file as ambiguous (it depended on the file's bytes)."""
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    for master in ("02_softmax.ipynb", "17_summaries.ipynb"):
        (solutions / master).write_text("{}")
    staged = tmp_path / (gradebook.safe_stem("02 carol.ipynb") + ".ipynb")
    assert staged.name == "02_carol.ipynb"
    options = grade.Options(solutions=solutions)
    assert grade.find_master(nbformat.v4.new_notebook(), staged, options) == solutions / "02_softmax.ipynb"
    assert gradebook.clean_text("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert gradebook.clean_text("@cmd") == "'@cmd"
    assert gradebook.clean_text("alice\nbob\x1b[31m") == "alice bob?[31m"


# --------------------------------------------------------------------------- the host's check of a report


def good_report(info, sha):
    tests = [{"name": "a", "score": 1.0, "max_score": 1.0}, {"name": "b", "score": 0.0, "max_score": 1.0}]
    tests.append({"name": "rest", "score": info.max_score - 2, "max_score": info.max_score - 2})
    extra = {"sha256": sha, "master": info.name, "master_sha256": info.keyless_sha256}
    return {"score": info.max_score - 1, "max_score": info.max_score, "tests": tests, "extra_data": extra}


def test_check_report_accepts_a_consistent_report_and_names_each_inconsistency(keyless):
    _, masters = keyless
    info, sha = masters[MASTER_02], "c" * 64
    assert check_report(good_report(info, sha), sha, masters) == []
    zero = {"score": 0, "max_score": 0, "tests": [], "extra_data": {"status": "invalid"}}
    assert check_report(zero, sha, masters) == [], "a report that gives nothing needs no proof"

    def problems(**change):
        report = good_report(info, sha)
        for key, value in change.items():
            if key in report:
                report[key] = value
            else:
                report["extra_data"][key] = value
        return " ".join(check_report(report, sha, masters))

    assert "SHA-256" in problems(sha256="d" * 64)
    assert "unknown master" in problems(master="03_nope")
    assert "key-less master" in problems(master_sha256=info.sha256)
    assert "max_score" in problems(max_score=info.max_score + 5)
    assert "sum of its tests" in problems(score=info.max_score)
    assert "not a list" in problems(tests="all passed")
    assert check_report(["not", "a", "report"], sha, masters) == ["the report is not a JSON object"]


# --------------------------------------------------------------------------- docker and podman: the command line


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_engine_command_isolates_the_run(tmp_path, engine):
    submission, masters = tmp_path / "02_alice-0123456789ab.ipynb", tmp_path / "keyless"
    settings = RunSettings(image="attn-grader:1", grader_args=("--timeout", "60"))
    command = container.engine_command(engine, "attn-grade-x", submission, masters, settings)
    text = " ".join(command)
    assert command[:3] == [engine, "run", "--rm"]
    for flag in ("--network none", "--read-only", "--cap-drop ALL", "--security-opt no-new-privileges"):
        assert flag in text, flag
    user = command[command.index("--user") + 1]
    assert user.split(":")[0] not in ("0", "root")
    for limit in ("--pids-limit", "--memory", "--memory-swap", "--cpus", "--tmpfs"):
        assert limit in command, limit
    mounts = [command[i + 1] for i, arg in enumerate(command) if arg == "--mount"]
    assert mounts == [
        f"type=bind,source={submission},target=/in/{submission.name},readonly",
        f"type=bind,source={masters},target=/masters,readonly",
    ]
    assert not any("solutions" in arg for arg in command), "the masters never go into the container"
    image = command.index("attn-grader:1")
    assert command[image + 1 : image + 6] == ["python", "-m", "attn_course.grading.container", "--stage", "inside"]
    assert command[-3:] == ["--", "--timeout", "60"]


def test_a_missing_tool_is_named_as_the_reason_namespaces_cannot_run(monkeypatch):
    real_which = container.shutil.which
    monkeypatch.setattr(container.shutil, "which", lambda tool: None if tool == "pivot_root" else real_which(tool))
    assert container.namespaces_unavailable() == "the `pivot_root` command (util-linux) is not installed"
    with pytest.raises(SystemExit, match=r"namespace: the `pivot_root` command"):
        container.choose_engine("namespace")


def test_namespace_command_asks_for_every_namespace(tmp_path):
    command = container.namespace_command(tmp_path / "s.ipynb", tmp_path / "m", tmp_path / "root", RunSettings())
    assert command[0] == "unshare"
    for flag in ("--user", "--map-root-user", "--mount", "--net", "--pid", "--fork", "--kill-child"):
        assert flag in command, flag
    assert command[command.index("--stage") + 1] == "setup"


FAKE_ENGINE = """#!{python}
# stands in for docker: records its command line, then answers like the image would (or hangs)
import hashlib, json, sys, time
from pathlib import Path
log = Path({log!r})
log.write_text(log.read_text() + json.dumps(sys.argv[1:]) + "\\n" if log.exists() else json.dumps(sys.argv[1:]) + "\\n")
mode = Path({mode!r}).read_text()
if sys.argv[1] == "info" and mode == "down":
    sys.exit("Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
if sys.argv[1] != "run":
    sys.exit(0)
if mode == "hang":
    time.sleep(60)
source = next(a for a in sys.argv if a.startswith("type=bind,source=") and "/in/" in a).split(",")[1][7:]
sha = hashlib.sha256(Path(source).read_bytes()).hexdigest() if mode == "honest" else "0" * 64
tests = [{{"name": "t", "score": {points}, "max_score": {points}}}]
extra = {{"sha256": sha, "master": {master!r}, "master_sha256": {keyless_sha!r}, "status": "graded"}}
report = {{"score": {points}, "max_score": {points}, "tests": tests, "extra_data": extra}}
print(json.dumps({{"format": "attn_course.container/1", "grader_exit": 0, "report": report}}))
"""


def test_a_docker_run_is_checked_and_a_hung_one_killed(tmp_path, keyless, monkeypatch):
    folder, masters = keyless
    info = masters[MASTER_02]
    log, mode = tmp_path / "argv.log", tmp_path / "mode"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(
        FAKE_ENGINE.format(
            python=sys.executable,
            log=str(log),
            mode=str(mode),
            points=info.max_score,
            master=info.name,
            keyless_sha=info.keyless_sha256,
        )
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    submission = tmp_path / "02 bob.ipynb"
    submission.write_bytes((REPO / "exercises" / f"{MASTER_02}.ipynb").read_bytes())
    sha = hashlib.sha256(submission.read_bytes()).hexdigest()

    mode.write_text("honest")
    result = grade_in_sandbox(submission, folder, masters, "docker", RunSettings(run_timeout=30))
    assert result.problems == []
    assert result.report["score"] == info.max_score
    extra = result.report["extra_data"]
    assert extra["sha256"] == sha and extra["master_sha256"] == info.sha256 and extra["sandbox"] == "docker"

    mode.write_text("forged")  # a report for some other file: refused, whatever it claims
    result = grade_in_sandbox(submission, folder, masters, "docker", RunSettings(run_timeout=30))
    assert result.report["score"] == 0
    assert any("SHA-256" in problem for problem in result.problems)

    mode.write_text("hang")
    started = time.monotonic()
    result = grade_in_sandbox(submission, folder, masters, "docker", RunSettings(run_timeout=3))
    assert time.monotonic() - started < 30
    assert result.report["score"] == 0 and "limit" in result.report["output"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    name = calls[-3][calls[-3].index("--name") + 1]
    assert calls[-2] == ["kill", name] and calls[-1] == ["rm", "-f", name]

    assert container.choose_engine("docker") == "docker"
    mode.write_text("down")  # a docker client without a daemon: said once, before any submission
    with pytest.raises(SystemExit, match="docker: `docker info` failed: Cannot connect to the Docker daemon"):
        container.main([str(submission), "--out", str(tmp_path / "out"), "--engine", "docker"])
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the namespace sandbox, for real

PROBE = r"""
import hashlib, json, os, socket, subprocess, sys
from pathlib import Path
data = json.loads(DATA)
submission, masters, out = sys.argv[1:4]
found = {"uid": os.getuid(), "pid": os.getpid()}
found["caps"] = [l.split()[1] for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("CapEff")]
def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as err:
        return type(err).__name__
found["internet"] = attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=3).close())
found["loopback"] = attempt(lambda: socket.create_connection(("127.0.0.1", 9), timeout=3).close())
found["visible"] = [path for path in data["hidden"] if os.path.exists(path)]
texts = ["\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"]) for p in Path(masters).iterdir()]
found["answers_in_masters"] = sum(answer in text for answer in data["answers"] for text in texts)
found["writes"] = {
    name: attempt(lambda path=path: open(path, "a").close())
    for name, path in [("package", data["package"] + "/x.py"), ("masters", masters + "/x"), ("root", "/x"),
                       ("submission", submission), ("tmp", "/tmp/x")]
}
found["pid1_stdout"] = attempt(lambda: open("/proc/1/fd/1", "w").close())
found["pid1_mem"] = attempt(lambda: open("/proc/1/mem", "rb").close())
found["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", data["marker"]], start_new_session=True)
forged = {"format": "attn_course.container/1", "report": {"score": 999, "max_score": 999, "tests": []}}
os.write(1, (json.dumps(forged) + "\n").encode())
report = {"score": 0, "max_score": 0, "tests": [], "extra_data": {"status": "probe", "probe": found}}
if data.get("claim"):
    sha = hashlib.sha256(Path(submission).read_bytes()).hexdigest() if data["claim"] == "right_hash" else "0" * 64
    report = {"score": 1, "max_score": 1, "tests": [{"name": "t", "score": 1, "max_score": 1}],
              "extra_data": {"sha256": sha, "master": "99_forged", "master_sha256": "1" * 64}}
Path(out).write_text(json.dumps(report))
"""


def probe_settings(data, run_timeout=60.0) -> RunSettings:
    return RunSettings(run_timeout=run_timeout, probe="DATA = " + repr(json.dumps(data)) + "\n" + PROBE)


@needs_namespaces
def test_namespace_sandbox_no_network_not_root_no_answer_key_read_only_nothing_left(tmp_path, keyless):
    folder, masters = keyless
    marker = f"attn-left-behind-{uuid.uuid4().hex}"
    solutions = assign.SOLUTIONS_DIR
    data = {
        "hidden": [str(solutions), str(solutions / f"{MASTER_02}.ipynb"), str(REPO / ".git"), str(REPO / "tests")],
        "answers": answer_texts(solutions / f"{MASTER_02}.ipynb"),
        "package": str(Path(container.__file__).resolve().parents[1]),
        "marker": marker,
    }
    submission = tmp_path / "02_probe.ipynb"
    submission.write_bytes((REPO / "exercises" / f"{MASTER_02}.ipynb").read_bytes())
    result = grade_in_sandbox(submission, folder, masters, "namespace", probe_settings(data))
    assert result.problems == [], result.stderr_tail
    found = result.report["extra_data"]["probe"]
    assert result.report["score"] == 0, "the forged line on the grader's stdout never reached the host"
    assert found["uid"] != 0 and found["caps"] == ["0000000000000000"]
    assert found["internet"] != "allowed" and found["loopback"] != "allowed"
    assert found["visible"] == [], "solutions/, the git history and the tests stay outside"
    assert found["answers_in_masters"] == 0
    assert found["writes"] == {
        "package": "OSError",
        "masters": "OSError",
        "root": "OSError",
        "submission": "OSError",
        "tmp": "allowed",
    }
    assert found["pid1_stdout"] != "allowed" and found["pid1_mem"] != "allowed"
    assert max(found["processes"]) < 100, "its own PID namespace: the host's processes are not there"
    assert result.report["extra_data"]["processes_killed_after_grading"] >= 1
    time.sleep(0.5)
    assert running_with(marker) == [], "a process left behind outlived its sandbox"


@needs_namespaces
@pytest.mark.parametrize("claim", ["wrong_hash", "right_hash"])
def test_namespace_sandbox_report_is_checked_against_the_submission(tmp_path, keyless, claim):
    folder, masters = keyless
    submission = tmp_path / "02_claim.ipynb"
    submission.write_bytes((REPO / "exercises" / f"{MASTER_02}.ipynb").read_bytes())
    data = {"hidden": [], "answers": [], "package": "/nowhere", "marker": uuid.uuid4().hex, "claim": claim}
    result = grade_in_sandbox(submission, folder, masters, "namespace", probe_settings(data))
    assert result.report["score"] == 0
    expected = "SHA-256" if claim == "wrong_hash" else "unknown master"
    assert any(expected in problem for problem in result.problems), result.problems


@needs_namespaces
@pytest.mark.parametrize("run_timeout", [1.5, 8.0], ids=["host-kills", "pid1-kills"])
def test_namespace_sandbox_is_killed_at_its_timeout(tmp_path, keyless, run_timeout):
    folder, masters = keyless
    marker = f"attn-stuck-{uuid.uuid4().hex}"
    stuck = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}])\n"
        "time.sleep(300)\n"
    )
    submission = tmp_path / "02_stuck.ipynb"
    submission.write_bytes((REPO / "exercises" / f"{MASTER_02}.ipynb").read_bytes())
    started = time.monotonic()
    settings = RunSettings(run_timeout=run_timeout, probe=stuck)
    result = grade_in_sandbox(submission, folder, masters, "namespace", settings)
    assert time.monotonic() - started < run_timeout + 5
    assert result.report["score"] == 0
    assert any("time" in problem or "limit" in problem for problem in result.problems), result.problems
    time.sleep(0.5)
    assert running_with(marker) == []


@needs_namespaces
@pytest.mark.grader
def test_namespace_batch_grades_masters_full_and_stubs_zero(tmp_path):
    submissions = tmp_path / "in"
    submissions.mkdir()
    (submissions / "02_alice.ipynb").write_bytes((assign.SOLUTIONS_DIR / f"{MASTER_02}.ipynb").read_bytes())
    (submissions / "=02 bob.ipynb").write_bytes((REPO / "exercises" / f"{MASTER_02}.ipynb").read_bytes())
    # carol's answers are right, and her first answer cell also prints a forged report on the kernel's stdout and
    # leaves a process behind: the forgery never reaches the host, the process dies with the sandbox
    marker = f"attn-carol-{uuid.uuid4().hex}"
    head, tail = json.dumps({"format": container.ENVELOPE_FORMAT, "report": {"score": 999}}).split("attn_course")
    carol = nbformat.read(assign.SOLUTIONS_DIR / f"{MASTER_02}.ipynb", as_version=4)
    answer = next(c for c in carol.cells if c.get("metadata", {}).get("attn_course", {}).get("kind") == "solution")
    answer.source += (  # the package's name is put together at run time: the answer scan refuses it written out
        f"\nimport os as _os, subprocess as _sp, sys as _sys\n"
        f"_os.write(1, ({head!r} + 'attn' + '_course' + {tail!r} + '\\n').encode())\n"
        f"_sp.Popen([_sys.executable, '-c', 'import time; time.sleep(300)', {marker!r}], start_new_session=True)\n"
    )
    nbformat.write(carol, submissions / "02_carol.ipynb")
    out = tmp_path / "out"
    # a fixed seed for the secret cases: this test is about the sandbox, not about the draws
    command = [str(submissions), "--out", str(out), "--engine", "namespace", "--jobs", "2", "--", "--seed", "11"]
    assert container.main(command) == 0
    with open(out / "grades.csv", newline="", encoding="utf-8") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    max_score = assign.read_master(assign.SOLUTIONS_DIR / f"{MASTER_02}.ipynb").max_score
    assert rows["02_alice.ipynb"]["score"] == f"{max_score:g}", rows
    assert rows["'=02 bob.ipynb"]["score"] == "0", rows

    def report_of(name):
        return json.loads((out / container.report_file_name(name, rows[name]["sha256"])).read_text())

    alice = report_of("02_alice.ipynb")
    assert alice["extra_data"]["sandbox"] == "namespace"
    assert alice["extra_data"]["sha256"] == rows["02_alice.ipynb"]["sha256"]
    assert {test["status"] for test in alice["tests"]} == {"passed"}
    carol_report = report_of("02_carol.ipynb")
    assert rows["02_carol.ipynb"]["sandbox_problems"] == "", "the forged line would have made the sandbox print two"
    assert carol_report["score"] == max_score, carol_report["output"]  # her answers ran, forgery and all
    time.sleep(0.5)
    assert running_with(marker) == []


def test_the_image_holds_the_installed_package_only():
    lines = [line.split() for line in (REPO / "docker" / "Dockerfile").read_text().splitlines() if line.strip()]
    copied = [word for line in lines if line[0] == "COPY" for word in line[1:-1]]
    assert sorted(copied) == ["LICENSE", "README.md", "attn_course", "pyproject.toml"]
    assert all((REPO / name).exists() for name in copied), "every file the image copies is in the course"
    run = " ".join(" ".join(line) for line in lines if line[0] == "RUN")
    assert "pip install" in run and " -e " not in run, "a wheel, not an editable install"
    user = [line[1] for line in lines if line[0] == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")


def test_links_fifos_and_huge_files_are_refused_before_any_sandbox(tmp_path, keyless):
    folder, masters = keyless
    link = tmp_path / "02_link.ipynb"
    link.symlink_to(assign.SOLUTIONS_DIR / f"{MASTER_02}.ipynb")  # would hand the master in as the answer
    fifo = tmp_path / "02_fifo.ipynb"
    os.mkfifo(fifo)
    huge = tmp_path / "02_huge.ipynb"
    huge.write_bytes(b" " * (container.MAX_SUBMISSION_BYTES + 1))
    assert sorted(p.name for p in container.find_submissions([tmp_path])) == sorted([link.name, huge.name])
    for path in (link, fifo, huge):
        started = time.monotonic()
        result = grade_in_sandbox(path, folder, masters, "docker", RunSettings(run_timeout=5))
        assert time.monotonic() - started < 5
        assert result.report["score"] == 0
        assert result.problems and "not read" in result.problems[0], result.problems
