"""Grade each submission in a throwaway sandbox of its own, and trust only the report that comes back.

    python -m attn_course.grading.container SUBMISSION.ipynb|DIR ... --out DIR [--engine auto|namespace|docker|podman]

One sandbox per submission, for the whole run of ``python -m attn_course.grade``:

* **no network** (an empty network namespace, or ``--network none``);
* **not root**, no capabilities, ``no_new_privs``;
* **the course read-only, without the answer key**: the sandbox holds the Python
  installation and the ``attn_course`` package, read-only, and none of ``solutions/``,
  the git history or the rest of the host. The grader gets *key-less masters*
  (:func:`keyless_master`): each master with its answer regions emptied and its stored
  outputs cleared. Grading uses a master's locked cells, test cells, ids and points, never
  its answers (the graded notebook has stubs in the answer cells before the learner's are
  put in), so key-less masters grade exactly as the masters do, and the answer key never
  enters a sandbox;
* **a timeout on every run**: the grader inside gets ``--timeout``; the host kills the whole
  sandbox after ``--run-timeout`` seconds whatever happens inside;
* **the report travels over the stdout of the sandbox's first process** (PID 1, the
  *inside* stage below): it runs the grader with its stdout sent to the log, waits for it,
  kills every process left in the sandbox, reads the report the grader wrote and prints it.
  No other process holds that stdout, and PID 1 is not dumpable, so the learner's code can
  neither write to it nor read or write PID 1's memory;
* **the host checks the report** (:func:`check_report`) against what it knows: the SHA-256 of
  the bytes it put in the sandbox, the master's name and maximum score, a score that is the
  sum of its tests and within bounds. A report that fails a check scores 0, with the reason.

The host writes one JSON per learner, ``<name>-<sha256[:16]>.json`` (written to a temporary
file and renamed), and ``grades.csv`` built from those reports, with the learner's file name
in every row (control characters removed, no spreadsheet-formula prefix).

Engines:

``namespace`` (the default where it works, no daemon and no root needed): unprivileged Linux
namespaces through ``unshare`` (util-linux): a user, mount, network, PID, IPC and UTS
namespace. A *setup* stage, root of the new user namespace only, builds the sandbox's root on
a tmpfs (read-only bind mounts of the system folders, the Python installation and the
package; the submission and the key-less masters read-only; a small writable ``/tmp``),
``pivot_root``\\ s into it and unmounts the host's tree, makes the root read-only, then enters a
nested user namespace as uid 1000 (no capabilities) and ``exec``\\ s the inside stage.
What it does not give: cgroup limits (memory, CPU share, process count); the grader's own
rlimits bound the kernel instead.

``docker`` / ``podman``: ``docker run --rm --network none --user 1000:1000 --read-only
--cap-drop ALL --security-opt no-new-privileges`` with memory, CPU and process limits, a tmpfs
``/tmp``, the submission and the key-less masters mounted read-only, in an image built from
``docker/Dockerfile`` (the package installed without ``solutions/``). :func:`engine_command`
builds that command line.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .gradebook import (
    MAX_REPORT_BYTES,
    clean_text,
    flag_duplicates,
    report_name,
    safe_stem,
    score_problems,
    write_atomically,
    write_gradebook,
)
from .result_files import open_regular

__all__ = [
    "ENVELOPE_FORMAT",
    "RunSettings",
    "check_report",
    "engine_command",
    "engine_unavailable",
    "find_submissions",
    "grade_in_sandbox",
    "keyless_master",
    "main",
    "namespace_command",
    "namespaces_unavailable",
    "read_submission_bytes",
    "report_file_name",
    "write_keyless_masters",
]

ENVELOPE_FORMAT = "attn_course.container/1"
SANDBOX_UID = 1000  # the learner's code runs as this uid inside the sandbox (never root)
MAX_SUBMISSION_BYTES = 64 * 2**20
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SYSTEM_FOLDERS = ("/usr", "/etc", "/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin")
DEVICES = ("null", "zero", "full", "random", "urandom")
PR_SET_DUMPABLE = 4


@dataclass(frozen=True)
class RunSettings:
    """How one sandboxed run is limited, and what is passed on to the grader inside."""

    run_timeout: float = 300.0  # seconds for the whole sandbox, start-up included; then it is killed
    memory_mb: int = 3072  # container memory (docker/podman); the kernel's own limit is the grader's --memory-mb
    cpus: float = 1.0  # docker/podman
    pids: int = 256  # docker/podman
    tmp_mb: int = 512  # size of the sandbox's writable /tmp
    image: str = "attn-course-grader"
    grader_args: tuple[str, ...] = ()  # e.g. ("--timeout", "120", "--master", "02_softmax_temperature_and_scaling")
    probe: str | None = None  # tests only: Python code run in the grader's place (argv: submission, masters, out)

    def stage_options(self) -> list[str]:
        """The options every stage passes on to the next one."""
        return ["--run-timeout", f"{self.run_timeout:g}", *(["--probe", self.probe] if self.probe else [])]


# --------------------------------------------------------------------------- the answer key stays outside


def keyless_master(text: str) -> str:
    """A master notebook's JSON text with every answer region emptied (its markers kept) and all outputs cleared.

    Everything grading reads from a master (cell ids, ``attn_course`` metadata, locked and test cells,
    points) is unchanged, so a submission grades the same against it."""
    notebook = json.loads(text)
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        source = cell.get("source", "")
        lines = ("".join(source) if isinstance(source, list) else source).splitlines(keepends=True)
        kept, inside = [], False
        for line in lines:
            stripped = line.strip()
            if stripped.startswith(BEGIN):
                kept.append(line)
                inside = True
            elif stripped.startswith(END):
                kept.append(line)
                inside = False
            elif not inside:
                kept.append(line)
        cell["source"] = "".join(kept)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class MasterInfo:
    """What the host knows about a master: its real hash, its key-less copy's hash, its maximum score."""

    name: str
    sha256: str
    keyless_sha256: str
    max_score: float


def write_keyless_masters(solutions: Path, target: Path) -> dict[str, MasterInfo]:
    """Write the key-less copy of every master of ``solutions`` into ``target``; what is known about each."""
    from .assign import find_masters, read_master

    target.mkdir(parents=True, exist_ok=True)
    known = {}
    for path in find_masters(solutions):
        data = path.read_bytes()
        keyless = keyless_master(data.decode("utf-8")).encode("utf-8")
        (target / path.name).write_bytes(keyless)
        known[path.stem] = MasterInfo(
            path.stem,
            hashlib.sha256(data).hexdigest(),
            hashlib.sha256(keyless).hexdigest(),
            read_master(path).max_score,
        )
    return known


# --------------------------------------------------------------------------- names a learner chose


def report_file_name(name: str, sha256: str) -> str:
    """The name of a learner's report in the output folder: the cleaned file stem and 16 hex digits of its SHA-256
    (the same rule as ``python -m attn_course.grade --reports``; see :mod:`attn_course.grading.gradebook`)."""
    return report_name({"extra_data": {"submission": name, "sha256": sha256}})


# --------------------------------------------------------------------------- command lines


def engine_command(engine: str, name: str, submission: Path, masters: Path, settings: RunSettings) -> list[str]:
    """The ``docker run`` / ``podman run`` command that grades ``submission`` (a file with a safe name)."""
    inside = f"/in/{submission.name}"
    return [
        engine,
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "none",
        "--user",
        f"{SANDBOX_UID}:{SANDBOX_UID}",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--pids-limit",
        str(settings.pids),
        "--memory",
        f"{settings.memory_mb}m",
        "--memory-swap",
        f"{settings.memory_mb}m",
        "--cpus",
        f"{settings.cpus:g}",
        "--tmpfs",
        f"/tmp:rw,nosuid,nodev,size={settings.tmp_mb}m",
        "--env",
        "HOME=/tmp",
        "--mount",
        f"type=bind,source={submission},target={inside},readonly",
        "--mount",
        f"type=bind,source={masters},target=/masters,readonly",
        settings.image,
        "python",
        "-m",
        "attn_course.grading.container",
        "--stage",
        "inside",
        "--submission",
        inside,
        "--masters",
        "/masters",
        *settings.stage_options(),
        "--",
        *settings.grader_args,
    ]


def namespace_command(submission: Path, masters: Path, root: Path, settings: RunSettings) -> list[str]:
    """The ``unshare`` command that grades ``submission`` in fresh namespaces (see the module doc), building the
    sandbox's root on the empty folder ``root``."""
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--net",
        "--pid",
        "--ipc",
        "--uts",
        "--fork",
        "--kill-child",
        sys.executable,
        "-m",
        "attn_course.grading.container",
        "--stage",
        "setup",
        "--submission",
        str(submission),
        "--masters",
        str(masters),
        "--root",
        str(root),
        *settings.stage_options(),
        "--tmp-mb",
        str(settings.tmp_mb),
        "--",
        *settings.grader_args,
    ]


def namespaces_unavailable() -> str | None:
    """Why the namespace engine cannot run here, or ``None`` when it can."""
    if sys.platform != "linux":
        return "Linux namespaces need Linux"
    for tool in ("unshare", "mount", "umount", "pivot_root"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (util-linux) is not installed"
    # what the sandbox needs: the namespaces, /proc mountable in them, and a nested unprivileged user namespace
    probe = ["unshare", "--user", "--map-root-user", "--mount", "--net", "--pid", "--fork", "--mount-proc"]
    probe += ["unshare", "--user", f"--map-user={SANDBOX_UID}", f"--map-group={SANDBOX_UID}", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`{' '.join(probe)}` failed: {err}"
    if done.returncode != 0:
        return f"unprivileged user namespaces are not allowed here ({done.stderr.strip()[:200]})"
    return None


# --------------------------------------------------------------------------- the setup stage (root of a user namespace)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")


def _bind(source: Path, target: Path, *, read_only: bool = True) -> None:
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    _run("mount", "--rbind", str(source), str(target))
    if read_only:
        _run("mount", "-o", "remount,bind,ro,nosuid,nodev", str(target))


def _inside(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _covered(path: Path, bound: list[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in bound)


def setup_stage(args) -> None:
    """Build the sandbox's root, move into it, drop to an unprivileged uid and ``exec`` the inside stage."""
    import attn_course

    package = Path(attn_course.__file__).resolve().parent
    submission, masters = Path(args.submission).resolve(), Path(args.masters).resolve()
    root = Path(args.root).resolve()  # an empty folder the host made for this run
    _run("mount", "--make-rprivate", "/")
    _run("mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "sandbox-root", str(root))
    # the writable and virtual file systems first: a package or venv that lives under /tmp is bound inside it
    (root / "tmp").mkdir()
    _run("mount", "-t", "tmpfs", "-o", f"size={args.tmp_mb}m,nosuid,nodev,mode=1777", "tmp", str(root / "tmp"))
    (root / "proc").mkdir()
    _run("mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(root / "proc"))
    (root / "dev" / "shm").mkdir(parents=True)
    _run("mount", "-t", "tmpfs", "-o", "size=64m,nosuid,nodev", "shm", str(root / "dev" / "shm"))
    bound: list[Path] = []
    for folder in map(Path, SYSTEM_FOLDERS):
        if folder.is_symlink():
            _inside(root, folder).symlink_to(os.readlink(folder))
        elif folder.is_dir():
            _bind(folder, _inside(root, folder))
            bound.append(folder)
    # the Python installation, the virtual environment and the package (only the package: not the course around it)
    for folder in {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package}:
        if not _covered(folder, bound):
            _bind(folder, _inside(root, folder))
            bound.append(folder)
    _bind(submission, root / "in" / submission.name)
    _bind(masters, root / "masters")
    for device in DEVICES:
        if Path("/dev", device).exists():
            _bind(Path("/dev", device), root / "dev" / device, read_only=False)
    (root / "old").mkdir()
    os.chdir(root)
    _run("pivot_root", ".", "old")  # the host's tree is now /old, and then gone
    os.chdir("/")
    _run("umount", "-l", "/old")
    os.rmdir("/old")
    _run("mount", "-o", "remount,bind,ro", "/")
    environment = {
        "HOME": "/tmp",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(package.parent),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [
        "unshare",
        f"--map-user={SANDBOX_UID}",
        f"--map-group={SANDBOX_UID}",
        "--user",
        "--",
        sys.executable,
        "-m",
        "attn_course.grading.container",
        "--stage",
        "inside",
        "--submission",
        f"/in/{submission.name}",
        "--masters",
        "/masters",
        *RunSettings(run_timeout=args.run_timeout, probe=args.probe).stage_options(),
        "--",
        *args.grader_args,
    ]
    os.execvpe("unshare", command, environment)


# --------------------------------------------------------------------------- the inside stage (PID 1 of the sandbox)


def _not_dumpable() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _kill_the_rest(grader: subprocess.Popen) -> int:
    """Kill every other process of the sandbox (all of them when this is PID 1); how many were still there."""
    if os.getpid() == 1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # from a PID namespace's first process: everyone else in it
    else:  # not a sandbox of our own (a test calls the stage directly): the grader's process group only
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(grader.pid, signal.SIGKILL)
    reaped = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            return reaped
        if pid != grader.pid:
            reaped += 1


def read_report_file(path: Path) -> dict:
    """The grader's JSON report: a regular file (no link, FIFO or device), at most 16 MB."""
    handle, _ = open_regular(Path(path), MAX_REPORT_BYTES)
    with handle:
        return json.loads(handle.read())


def inside_stage(args) -> int:
    """Run the grader on the one submission, kill what is left, print the report: the only output of the sandbox."""
    _not_dumpable()
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")  # not inherited by children (close-on-exec)
    os.dup2(2, 1)  # whatever anyone else prints goes to the log
    sys.stdout = sys.stderr
    out = Path(tempfile.mkdtemp(prefix="report-")) / "report.json"
    command = [sys.executable, "-m", "attn_course.grade", args.submission, "--solutions", args.masters]
    command += ["--out", str(out), "--no-progress", *args.grader_args]
    if args.probe:  # a test's probe of the sandbox, run exactly where the grader (and its kernel) would run
        command = [sys.executable, "-c", args.probe, args.submission, args.masters, str(out)]
    envelope: dict = {"format": ENVELOPE_FORMAT, "grader_exit": None, "timed_out": False, "left_behind": 0}
    started = time.monotonic()
    grader = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=2, stderr=2, cwd="/tmp", start_new_session=True)
    try:
        envelope["grader_exit"] = grader.wait(timeout=max(1.0, float(args.run_timeout) - 5.0))
    except subprocess.TimeoutExpired:
        envelope["timed_out"] = True
    envelope["left_behind"] = _kill_the_rest(grader)
    if envelope["grader_exit"] is None:
        with contextlib.suppress(ChildProcessError):
            grader.wait(timeout=5)
    envelope["seconds"] = round(time.monotonic() - started, 2)
    try:
        envelope["report"] = read_report_file(out)
    except (OSError, ValueError) as err:
        envelope["report"], envelope["problem"] = None, f"no usable report from the grader ({err})"
    channel.write(json.dumps(envelope) + "\n")
    channel.close()
    return 0


# --------------------------------------------------------------------------- the host: run, check, record


def _envelope_from(stdout: bytes) -> dict:
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        raise ValueError("the sandbox printed nothing")
    lines = text.splitlines()
    if len(lines) != 1:
        raise ValueError(f"the sandbox printed {len(lines)} lines where one report was expected")
    envelope = json.loads(lines[0])
    if not isinstance(envelope, dict) or envelope.get("format") != ENVELOPE_FORMAT:
        raise ValueError("the sandbox's output is not a report envelope")
    return envelope


def check_report(report, sha256: str, masters: dict[str, MasterInfo]) -> list[str]:
    """What is wrong with a report that came out of a sandbox (empty: it can be trusted as far as the host can tell).

    A report must be consistent (:func:`attn_course.grading.gradebook.score_problems`: Gradescope's shape, each
    test within its points, a score that is the sum of its tests); a report that gives any points must also name
    the submission's SHA-256 (as the host computed it) and a known master, and carry that master's maximum score."""
    if not isinstance(report, dict):
        return ["the report is not a JSON object"]
    problems = score_problems(report)
    if problems or report["score"] == 0:
        return problems  # a report that gives nothing needs no proof of where it came from
    extra = report["extra_data"]
    if extra.get("sha256") != sha256:
        problems.append(f"the report is for a file with SHA-256 {str(extra.get('sha256'))[:16]}, not this submission")
    master = masters.get(str(extra.get("master")))
    if master is None:
        problems.append(f"the report names an unknown master {str(extra.get('master'))[:60]!r}")
    elif extra.get("master_sha256") != master.keyless_sha256:
        problems.append("the report's master hash is not the key-less master's")
    elif report["max_score"] != master.max_score:
        problems.append(f"max_score {report['max_score']} differs from the master's {master.max_score:g}")
    return problems


@dataclass
class SandboxResult:
    """The host's record of one submission: the (checked) report and how the run went."""

    path: Path
    sha256: str
    report: dict
    engine: str
    problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""


def _failed_report(path: Path, sha256: str, why: str, engine: str) -> dict:
    return {
        "score": 0.0,
        "max_score": 0.0,
        "output": f"Not graded: {why}",
        "tests": [],
        "extra_data": {"submission": str(path), "status": "error", "sha256": sha256, "sandbox": engine},
    }


def _kill_engine_container(engine: str, name: str) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run([engine, "kill", name], capture_output=True, timeout=30, check=False)
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=30, check=False)


def read_submission_bytes(path: Path, limit: int = MAX_SUBMISSION_BYTES) -> bytes:
    """A submission's bytes: a regular file, not a link (a link in a folder of submissions could point at a master),
    FIFO or device, read without blocking, at most ``limit`` bytes (the grader inside refuses more than 10 MB)."""
    handle, _ = open_regular(Path(path), limit)
    with handle:
        return handle.read(limit)


def grade_in_sandbox(
    path: Path, masters_dir: Path, masters: dict[str, MasterInfo], engine: str, settings: RunSettings
) -> SandboxResult:
    """Grade one submission in a sandbox of its own (engine ``namespace``, ``docker`` or ``podman``)."""
    path = Path(path)
    try:
        data = read_submission_bytes(path)
    except (OSError, ValueError) as err:
        why = f"the submission was not read ({err})"
        return SandboxResult(path, "", _failed_report(path, "", why, engine), engine, [why])
    sha256 = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="attn_sandbox_in_") as staging:
        # the sandbox gets a copy under a safe name: the bytes hashed are the bytes graded
        # (the staging folder is this run's own: no hash in the name, whose hex digits could name another exercise)
        submission = Path(staging) / (safe_stem(path.name) + ".ipynb")
        submission.write_bytes(data)
        submission.chmod(0o644)
        Path(staging).chmod(0o755)
        name = f"attn-grade-{sha256[:12]}-{uuid.uuid4().hex[:12]}"  # unique: identical files may run side by side
        if engine == "namespace":
            (Path(staging) / "root").mkdir()
            command = namespace_command(submission, masters_dir, Path(staging) / "root", settings)
        else:
            command = engine_command(engine, name, submission, masters_dir, settings)
        with tempfile.TemporaryFile() as log:
            # a session of its own: at the timeout its whole process group goes (unshare and the sandbox's PID 1,
            # whose death ends every process of the sandbox), whatever --kill-child's signal survived
            runner = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True
            )
            try:
                stdout, _ = runner.communicate(timeout=settings.run_timeout)
                why = None
            except subprocess.TimeoutExpired:
                stdout, why = b"", f"the sandbox ran past its {settings.run_timeout:g} s limit and was killed"
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(runner.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    runner.communicate(timeout=30)
                if engine != "namespace":
                    _kill_engine_container(engine, name)
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4000))
            stderr_tail = log.read().decode("utf-8", errors="replace")
    if why is None:
        try:
            envelope = _envelope_from(stdout[: MAX_REPORT_BYTES + 1])
        except ValueError as err:
            last = [line for line in stderr_tail.splitlines() if line.strip()][-1:]
            why = f"the sandbox's report could not be read ({err})" + (
                f"; its last words: {clean_text(last[0].strip())[:300]}" if last else ""
            )
    if why is not None:
        return SandboxResult(path, sha256, _failed_report(path, sha256, why, engine), engine, [why], stderr_tail)
    report = envelope.get("report")
    problems = [envelope["problem"]] if envelope.get("problem") else check_report(report, sha256, masters)
    if envelope.get("timed_out"):
        problems.append("the grader inside the sandbox ran past its time and was killed")
    if problems:
        why = "; ".join(problems)
        return SandboxResult(path, sha256, _failed_report(path, sha256, why, engine), engine, problems, stderr_tail)
    extra = report.setdefault("extra_data", {})
    master = masters.get(str(extra.get("master")))
    extra.update(
        submission=str(path),
        sandbox=engine,
        keyless_master_sha256=extra.get("master_sha256"),
        master_sha256=master.sha256 if master else extra.get("master_sha256"),
        processes_killed_after_grading=envelope.get("left_behind", 0),
    )
    return SandboxResult(path, sha256, report, engine, [], stderr_tail)


def write_results(results: list[SandboxResult], out: Path) -> Path:
    """One JSON per learner (:func:`report_file_name`) and ``grades.csv`` built from those reports (the gradebook of
    ``python -m attn_course.grade``, with the sandbox engine and the host's problems in two more columns)."""
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for result in results:
        extra = result.report.setdefault("extra_data", {})
        extra.update(submission=str(result.path), sha256=result.sha256 or extra.get("sha256"), sandbox=result.engine)
        extra["sandbox_problems"] = list(result.problems)
        reports[str(result.path)] = result.report
    flag_duplicates(reports)
    for result in results:
        write_atomically(
            out / report_file_name(result.path.name, result.sha256), json.dumps(result.report, indent=1) + "\n"
        )
    target = out / "grades.csv"
    write_gradebook(reports, target)
    return target


def engine_unavailable(engine: str) -> str | None:
    """Why ``engine`` cannot run sandboxes here, or ``None`` when it can (docker/podman: the daemon answers)."""
    if engine == "namespace":
        return namespaces_unavailable()
    if shutil.which(engine) is None:
        return f"`{engine}` is not installed"
    try:
        done = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`{engine} info` failed: {err}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"`{engine} info` failed: {last[:200]}"
    return None


def choose_engine(requested: str) -> str:
    """The engine to use: ``auto`` takes namespaces where they work, else podman, else docker; a ``SystemExit``
    with every reason when none works."""
    reasons = []
    for engine in ("namespace", "podman", "docker") if requested == "auto" else (requested,):
        why = engine_unavailable(engine)
        if why is None:
            return engine
        reasons.append(f"{engine}: {why}")
    raise SystemExit("no sandbox can run here: " + "; ".join(reasons))


def find_submissions(paths) -> list[Path]:
    """Files as given; folders searched for ``*.ipynb`` (checkpoints skipped, links kept to be refused)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            # links are listed so that they are refused by name (read_submission_bytes), not skipped in silence
            found += sorted(
                p
                for p in path.rglob("*.ipynb")
                if ".ipynb_checkpoints" not in p.parts and (p.is_file() or p.is_symlink())
            )
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attn_course.grading.container",
        description="Grade each submission in a throwaway sandbox (no network, not root, no answer key).",
        epilog="Options after `--` go to `python -m attn_course.grade` inside the sandbox (e.g. -- --timeout 60).",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="submitted notebooks, or folders of them")
    parser.add_argument("--out", type=Path, help="folder for one JSON report per learner and grades.csv")
    parser.add_argument("--engine", choices=("auto", "namespace", "docker", "podman"), default="auto")
    parser.add_argument("--image", default=RunSettings.image, help="docker/podman image (docker/Dockerfile)")
    parser.add_argument("--solutions", type=Path, help="folder of masters (default: solutions/ of the course folder)")
    parser.add_argument("--run-timeout", type=float, default=RunSettings.run_timeout, help="seconds per sandbox")
    parser.add_argument("--jobs", type=int, default=1, help="sandboxes at a time (default 1)")
    parser.add_argument("--container-memory-mb", type=int, default=RunSettings.memory_mb, help="docker/podman")
    parser.add_argument("--stage", choices=("host", "setup", "inside"), default="host", help=argparse.SUPPRESS)
    parser.add_argument("--submission", help=argparse.SUPPRESS)
    parser.add_argument("--masters", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--tmp-mb", type=int, default=RunSettings.tmp_mb, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.grader_args = argv[split + 1 :]
    if args.stage == "setup":
        setup_stage(args)
        return 1  # setup_stage ends in exec; reaching here is a failure
    if args.stage == "inside":
        return inside_stage(args)
    if not args.paths or args.out is None or args.jobs < 1:
        parser.error("give the submissions, --out DIR and --jobs of at least 1")
    from .. import course_paths

    try:
        solutions = course_paths.solutions_dir(args.solutions)
    except course_paths.CoursePathError as err:
        parser.error(str(err))
    paths = find_submissions(args.paths)
    if not paths:
        print("no notebooks found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    engine = choose_engine(args.engine)
    settings = RunSettings(
        run_timeout=args.run_timeout,
        memory_mb=args.container_memory_mb,
        image=args.image,
        grader_args=tuple(args.grader_args),
    )
    with tempfile.TemporaryDirectory(prefix="attn_keyless_") as keyless:
        Path(keyless).chmod(0o755)
        masters = write_keyless_masters(solutions, Path(keyless))
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each sandbox is a process of its own
            results = list(
                pool.map(lambda path: grade_in_sandbox(path, Path(keyless), masters, engine, settings), paths)
            )
        for path, result in zip(paths, results, strict=True):
            report = result.report
            status = clean_text(report.get("extra_data", {}).get("status", ""))
            line = f"{report['score']:6g} / {report['max_score']:<6g} {status:8s} {clean_text(path.name)}"
            print(line + (f"  ({'; '.join(result.problems)})" if result.problems else ""))
    print(f"wrote {write_results(results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
