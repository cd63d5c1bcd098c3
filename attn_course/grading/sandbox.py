"""Running a submission's notebook: a fresh kernel, with limits, and nothing trusted.

:func:`run_notebook` executes the code cells of a notebook one by one in a
new ``python3`` kernel (nbclient), in a folder of its own, and returns what
happened to each cell (:class:`CellOutcome`). The limits (:class:`Limits`):

* **per cell**: a cell still running after ``cell_timeout`` seconds is
  interrupted (SIGINT, as the notebook's stop button). If the kernel answers
  again within ``interrupt_grace`` seconds the run goes on with the next cell;
  if not (code that swallows ``KeyboardInterrupt``), the kernel is killed and
  the remaining cells are not run;
* **whole run**: cell execution stops after ``total_timeout`` seconds of wall
  clock (kernel start-up not counted, it has its own ``startup_timeout``);
* **memory, CPU, files**: the kernel is started through
  ``attn_course/grading/launch_with_limits.py``, which sets ``RLIMIT_AS`` (address space,
  ``memory_mb``), ``RLIMIT_CPU`` (a backstop: total time plus a margin),
  ``RLIMIT_FSIZE`` and no core dumps on itself, then ``exec``\\ s the kernel
  command, so the limits bind the kernel and its children. The kernel
  manager's ``format_kernel_cmd`` puts that launcher in front of the kernelspec's
  command;
* **no stdin** (``input()`` raises), local IPC sockets instead of TCP, one
  BLAS thread, its own IPython profile folder, its stderr to a log
  file in the run's folder;
* **output**: what a cell prints is kept up to ``output_chars`` characters,
  the rest dropped (a huge print cannot fill the grader's memory with copies).

A dead kernel (``os._exit``, a crash, the memory or CPU limit) ends the run:
its cell is ``dead`` and the cells after it ``not_run``. The kernel is always
killed at the end, with its process group.

Limits set by ``setrlimit`` bind an ordinary user; a process running as root
could raise them again. For grades that matter run each submission in a
throwaway container (see the instructor guide in exercises/README.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from traitlets import Int, Unicode

from .processes import PidsGroup

__all__ = ["CellOutcome", "Limits", "RunLog", "run_notebook"]

LAUNCHER = Path(__file__).with_name("launch_with_limits.py")  # run as a file, by this path
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds attn_course/


@dataclass(frozen=True)
class Limits:
    """How long and how big a submission's run may get."""

    cell_timeout: float = 30.0  # seconds per cell before it is interrupted
    total_timeout: float = 120.0  # seconds of cell execution for the whole notebook
    memory_mb: int = 2048  # address space of the kernel process (RLIMIT_AS)
    file_mb: int = 64  # largest file the kernel may write (RLIMIT_FSIZE)
    output_chars: int = 20_000  # output kept per cell (errors included)
    notebook_output_chars: int = 200_000  # output kept for the whole notebook
    processes: int = 64  # processes and threads of the kernel's user (RLIMIT_NPROC; see launch_with_limits.py)
    open_files: int = 512  # RLIMIT_NOFILE
    disk_mb: int = 256  # bytes in the run's folders, checked after every cell
    disk_files: int = 2_000  # files in the run's folders, checked after every cell
    interrupt_grace: float = 3.0  # seconds for an interrupted kernel to answer again
    startup_timeout: float = 60.0  # seconds for the kernel to start
    separate_user: bool = True  # a grader running as root runs each kernel as an unprivileged user of its own

    def launcher_spec(self, uid: int | None = None, **more) -> str:
        """The launcher's JSON: these limits, the kernel's user, and ``more`` (``hide``, ``keep``, ``pids_cgroup``)."""
        return json.dumps(
            {
                "memory_bytes": self.memory_mb * 2**20,
                "cpu_seconds": int(self.total_timeout + self.startup_timeout + 30),
                "file_bytes": self.file_mb * 2**20,
                "processes": self.processes,
                "open_files": self.open_files,
                "uid": uid,
                "drop_capabilities": True,
                **more,
            }
        )

    @property
    def wall_seconds(self) -> float:
        """The longest one run can take: start-up, cells, one interrupt, shutdown (the batch's bound per notebook)."""
        return self.startup_timeout + self.total_timeout + self.interrupt_grace + 15


@dataclass
class CellOutcome:
    """What happened to one code cell: ``ok``, ``error``, ``timeout``, ``dead`` or ``not_run``."""

    status: str
    message: str = ""  # the error ("NameError: ...") or why the cell did not run
    seconds: float = 0.0


@dataclass
class RunLog:
    """The outcome of every code cell (by index in the notebook), and the run's story."""

    cells: dict[int, CellOutcome] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class LimitedKernelManager(AsyncKernelManager):
    """A kernel manager that starts the kernel through the resource-limiting launcher (as ``kernel_uid`` if set)."""

    limits_spec = Unicode("{}")
    kernel_uid = Int(-1)

    def format_kernel_cmd(self, extra_arguments=None):
        command = super().format_kernel_cmd(extra_arguments)
        if self.kernel_uid >= 0 and self.connection_file:  # written just before: the kernel's user must read it
            os.chown(self.connection_file, self.kernel_uid, self.kernel_uid)
        return [sys.executable, str(LAUNCHER), self.limits_spec, "--", *command]


def _message_chars(msg) -> int:
    content = msg.get("content", {})
    if msg.get("msg_type") == "error":
        return len(content.get("evalue", "")) + sum(map(len, content.get("traceback", [])))
    if "text" in content:
        return len(content["text"])
    data = content.get("data", {})
    return sum(len(value) if isinstance(value, str) else len(json.dumps(value)) for value in data.values())


def _shorten_error(content: dict, limit: int) -> None:
    """Cut an error's message and traceback to about ``limit`` characters (in place)."""
    content["evalue"] = str(content.get("evalue", ""))[: max(limit // 4, 200)]
    kept, used = [], 0
    for line in content.get("traceback", [])[-50:]:
        piece = str(line)[: max(limit - used, 0)]
        used += len(piece)
        kept.append(piece)
        if used >= limit:
            break
    content["traceback"] = kept + ["[grader: the rest of this error was dropped]"] * (used >= limit)


class CappedClient(NotebookClient):
    """An nbclient that keeps at most ``output_limit`` characters of output per cell and ``notebook_limit`` in all,
    errors included (an error's message and traceback are shortened, its name kept)."""

    output_limit = Int(20_000)
    notebook_limit = Int(200_000)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._chars: dict[int, int] = {}
        self._total = 0

    def output(self, outs, msg, display_id, cell_index):
        used = self._chars.get(cell_index, 0)
        size = _message_chars(msg)
        room = min(self.output_limit - used, self.notebook_limit - self._total)
        if msg["msg_type"] == "error":  # always kept (its name says NotImplementedError), but short
            if size > max(room, 2_000):
                _shorten_error(msg["content"], max(room, 2_000))
                size = _message_chars(msg)
        elif size > room:
            if used <= self.output_limit:  # the first output dropped in this cell says so
                note = "[grader: output past the limit of this cell or of the notebook dropped]\n"
                outs.append(nbformat.v4.new_output("stream", name="stderr", text=note))
            self._chars[cell_index] = self.output_limit + 1
            return None
        self._chars[cell_index] = used + size
        self._total += size
        return super().output(outs, msg, display_id, cell_index)


# Run in the kernel before any cell (an IPython start-up file): the answer key cannot be imported there.
BLOCKER = """
def _attn_course_block_answer_key():
    import sys

    blocked = {blocked!r}

    class AnswerKeyBlocker:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                raise ImportError(f"{{name}} is not available while grading: answers must be your own code")
            return None

    sys.meta_path.insert(0, AnswerKeyBlocker)
    for name in list(sys.modules):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            del sys.modules[name]


def _attn_course_not_dumpable():  # other kernels of the same user cannot read or write this one's memory
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)


_attn_course_block_answer_key()
_attn_course_not_dumpable()
del _attn_course_block_answer_key, _attn_course_not_dumpable
"""

# What the grading kernel may not import: the spec registry (every exercise's reference), the notebook self-check
# that judges with it, and the grader's own modules (they read the masters).
BLOCKED_MODULES = (
    "attn_course.grading.specs",
    "attn_course.grading.selfcheck",
    "attn_course.grading.grade",
    "attn_course.grading.assign",
    "attn_course.grade",
    "attn_course.assign",
)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def kernel_environment(record_dir: Path, scratch: Path, home: bool = False) -> dict[str, str]:
    """The kernel's environment: the grader's, plus where to record, one thread, no GPU probing (and, for a kernel
    of its own user, ``HOME`` in its scratch folder)."""
    env = dict(os.environ)
    if home:
        env["HOME"] = str(scratch)
    python_path = [str(PACKAGE_PARENT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        {
            "ATTN_COURSE_RECORD_DIR": str(record_dir),
            "ATTN_COURSE_BACKEND": "numpy",
            "PYTHONPATH": os.pathsep.join(python_path),
            "IPYTHONDIR": str(scratch / "ipython"),
            "MPLBACKEND": "Agg",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",
            "PYTHONHASHSEED": "0",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "JUPYTER_PLATFORM_DIRS": "1",
            "TMPDIR": str(scratch / "tmp"),
        }
    )
    return env


def kept_paths(*run_folders) -> list[str]:
    """What the kernel must still reach where its answer key is hidden: the Python installation, the package,
    the folders on its import path (none of them holds an answer) and the run's own folders."""
    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    places |= {str(PACKAGE_PARENT / "attn_course"), *map(str, run_folders)}
    places |= {entry for entry in sys.path if entry and os.path.isdir(entry) and Path(entry) != PACKAGE_PARENT}
    return sorted(places)


def hidden_paths(extra=()) -> list[str]:
    """What the kernel must not see: the course's git history (old masters), ``extra`` (the masters, the batch's
    folders) and, for a root grader, root's home (the kernel's user could not enter it anyway; the interpreter
    kept there is bound back)."""
    paths = [str(PACKAGE_PARENT / ".git"), *map(str, extra)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        paths.append(os.path.expanduser("~root"))
    return paths


ISOLATION_ENV = "ATTN_COURSE_GRADER_ISOLATION"  # "hide,user": what this machine allows, probed once per batch


def _launcher_works(spec: dict) -> bool:
    """Whether the launcher starts the interpreter with ``spec`` and the package imports."""
    command = [sys.executable, str(LAUNCHER), json.dumps({**spec, "hide_required": True}), "--"]
    command += [sys.executable, "-c", "import attn_course.grading"]
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}
    try:
        return subprocess.run(command, cwd="/", env=env, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def isolation_support() -> tuple[bool, bool]:
    """``(hide, separate_user)``: whether kernels can start with folders hidden (a mount namespace), and whether a
    root grader's kernels can run as a user of their own (the interpreter reachable for it, the package importable).

    Probed once, with a throwaway folder to hide; the answer is kept in the environment (``ATTN_COURSE_GRADER_
    ISOLATION``), so the batch's worker processes inherit it instead of probing again for every submission.
    """
    known = os.environ.get(ISOLATION_ENV, "")
    if re.fullmatch(r"[01],[01]", known):
        return known[0] == "1", known[2] == "1"
    with tempfile.TemporaryDirectory(prefix="attn_probe_") as folder:
        spec = {"hide": hidden_paths([folder]), "keep": kept_paths()}
        hide = _launcher_works(spec)
        user = is_root() and hide and _launcher_works({**spec, "uid": 200_000 + secrets.randbelow(800_000)})
    os.environ[ISOLATION_ENV] = f"{int(hide)},{int(user)}"
    return hide, user


def kernel_user(limits: Limits) -> int | None:
    """The unprivileged user a root grader runs the kernel as (a fresh id per run), else None (same user).

    None also where that user could not run the interpreter or import the package even with root's home
    hidden and the interpreter bound back (:func:`isolation_support`): the root kernel then runs without
    capabilities instead (see launch_with_limits.py).
    """
    if not limits.separate_user or not is_root() or not isolation_support()[1]:
        return None
    return 200_000 + secrets.randbelow(800_000)


def prepare_scratch(scratch: Path, uid: int | None) -> None:
    """The kernel's own folder: the start-up file that blocks the answer key, a temp folder, owned by ``uid``."""
    startup = scratch / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (scratch / "tmp").mkdir(exist_ok=True)
    (startup / "00-attn-course-grading.py").write_text(BLOCKER.format(blocked=BLOCKED_MODULES))
    if uid is not None:
        for folder in (scratch, scratch / "ipython", scratch / "ipython" / "profile_default", startup, scratch / "tmp"):
            os.chown(folder, uid, uid)


def folder_use(folders, max_files: int) -> tuple[int, int]:
    """``(files, bytes)`` under ``folders`` (links not followed); stops counting past ``max_files`` entries."""
    files = size = 0
    todo = [Path(folder) for folder in folders]
    while todo and files <= max_files:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for entry in entries:
            files += 1
            try:
                if entry.is_dir(follow_symlinks=False):
                    todo.append(Path(entry.path))
                else:
                    size += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return files, size


def remove_files_of(uid: int, places=("/tmp", "/var/tmp", "/dev/shm")) -> int:
    """Delete what user ``uid`` left at the top of the world-writable folders; returns how many entries."""
    removed = 0
    for place in places:
        try:
            entries = list(os.scandir(place))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def _error_text(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"[:500]
    return ""


async def _answers_within(client: NotebookClient, seconds: float) -> bool:
    """Whether the kernel runs a trivial request within ``seconds`` (after an interrupt)."""
    msg_id = client.kc.execute("pass", silent=True, store_history=False)
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            msg = await client.kc.shell_channel.get_msg(timeout=remaining)
        except Empty:
            return False
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return True
    return False


class CellHooks:
    """Called by :func:`run_notebook` around every code cell (the grader clears and collects results there)."""

    def before(self, index: int) -> None:
        """Just before cell ``index`` runs."""

    def after(self, index: int) -> None:
        """Just after cell ``index`` finished (or was interrupted, or the kernel died)."""


async def _run_cells(client: CappedClient, notebook, limits: Limits, log: RunLog, env: dict, run: dict):
    code_cells = [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    stop_reason = ""
    hooks, scratch = run["hooks"], run["scratch"]
    with open(scratch.parent / f"{scratch.name}.log", "wb") as kernel_log:
        async with client.async_setup_kernel(env=env, stdout=subprocess.DEVNULL, stderr=kernel_log, cleanup_kc=True):
            started = time.monotonic()
            for index in code_cells:
                cell = notebook.cells[index]
                if stop_reason:
                    log.cells[index] = CellOutcome("not_run", stop_reason)
                    continue
                remaining = limits.total_timeout - (time.monotonic() - started)
                if remaining <= 0:
                    stop_reason = f"the whole run passed its {limits.total_timeout:g} s limit"
                    log.cells[index] = CellOutcome("not_run", stop_reason)
                    continue
                timeout = min(limits.cell_timeout, remaining)
                client.timeout = max(1, int(timeout + 0.999))
                hooks.before(index)
                cell_start = time.monotonic()
                try:
                    await client.async_execute_cell(cell, index)
                except CellTimeoutError:
                    seconds = time.monotonic() - cell_start
                    log.cells[index] = CellOutcome("timeout", f"still running after {client.timeout} s", seconds)
                    try:
                        await client.km.interrupt_kernel()
                        alive = await _answers_within(client, limits.interrupt_grace)
                    except Exception:
                        alive = False
                    if not alive:
                        stop_reason = "the kernel did not answer after an interrupt and was stopped"
                        log.notes.append(f"cell {index + 1}: {stop_reason}")
                    elif timeout < limits.cell_timeout:
                        stop_reason = f"the whole run passed its {limits.total_timeout:g} s limit"
                except DeadKernelError:
                    seconds = time.monotonic() - cell_start
                    log.cells[index] = CellOutcome(
                        "dead", "the kernel died (os._exit, a crash, or the memory or CPU limit)", seconds
                    )
                    stop_reason = f"the kernel died in cell {index + 1}"
                    log.notes.append(stop_reason)
                else:
                    seconds = time.monotonic() - cell_start
                    error = _error_text(cell)
                    log.cells[index] = CellOutcome("error" if error else "ok", error, seconds)
                hooks.after(index)
                files, size = folder_use(run["folders"], limits.disk_files)
                if not stop_reason and (files > limits.disk_files or size > limits.disk_mb * 2**20):
                    stop_reason = (
                        f"the notebook wrote more than {limits.disk_files} files or {limits.disk_mb} MB "
                        f"in its folders (cell {index + 1}); the run was stopped"
                    )
                    log.notes.append(stop_reason)


def run_notebook(
    notebook, workdir, record_dir, limits: Limits | None = None, hooks: CellHooks | None = None, hide=()
) -> RunLog:
    """Execute the code cells of ``notebook`` (modified in place: outputs) in ``workdir``; never raises for
    anything the notebook does. ``record_dir`` is passed to the kernel as ``ATTN_COURSE_RECORD_DIR``;
    ``hooks`` are called around each code cell. The kernel does not see ``hide`` (the masters, the batch's
    folders), the course's git history nor, for a root grader, root's home (:func:`hidden_paths`). When the
    grader runs as root, the kernel runs as a fresh unprivileged user that owns only ``workdir``,
    ``record_dir`` and its own scratch folder, in a process-count cgroup of its own."""
    limits = limits or Limits()
    workdir, record_dir = Path(workdir), Path(record_dir)
    scratch = workdir.parent / f"{workdir.name}-kernel"
    scratch.mkdir(parents=True, exist_ok=True)
    log = RunLog()
    isolation = {"hide": hidden_paths(hide), "keep": kept_paths(workdir.parent)} if isolation_support()[0] else None
    if isolation is None:
        log.notes.append("the masters and the batch's folders could not be hidden from the kernel (no mount namespace)")
    uid = kernel_user(limits)
    prepare_scratch(scratch, uid)
    if uid is not None:
        os.chmod(workdir.parent, 0o711)  # the kernel's user may pass through, not list
        for folder in (workdir, record_dir):
            os.chown(folder, uid, uid)
    more = dict(isolation or {})
    group = PidsGroup.create(limits.processes) if uid is not None or is_root() else None
    if group is not None:
        more["pids_cgroup"] = group.path
    manager = LimitedKernelManager(
        kernel_name="python3",
        transport="ipc",
        ip=str(scratch / "ipc"),
    )
    manager.connection_file = str(scratch / "kernel.json")
    manager.limits_spec = limits.launcher_spec(uid, **more)
    manager.kernel_uid = -1 if uid is None else uid
    client = CappedClient(
        notebook,
        km=manager,
        timeout=int(limits.cell_timeout),
        startup_timeout=int(limits.startup_timeout),
        allow_errors=True,
        interrupt_on_timeout=False,
        shutdown_kernel="immediate",
        record_timing=False,
        iopub_timeout=4,
        output_limit=limits.output_chars,
        notebook_limit=limits.notebook_output_chars,
        resources={"metadata": {"path": str(workdir)}},
    )
    started = time.monotonic()
    env = kernel_environment(record_dir, scratch, home=uid is not None)
    run = {"hooks": hooks or CellHooks(), "scratch": scratch, "folders": (workdir, record_dir, scratch)}
    try:
        asyncio.run(_run_cells(client, notebook, limits, log, env, run))
    except Exception as err:  # the kernel failed to start, or died in a way nbclient did not expect
        reason = f"the run stopped: {type(err).__name__}: {err}"[:500]
        log.notes.append(reason)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and index not in log.cells:
                log.cells[index] = CellOutcome("not_run", reason)
    if group is not None:
        left = group.close()
        if left:
            log.notes.append(f"{left} process(es) the kernel left running were killed")
    if uid is not None:
        removed = remove_files_of(uid)
        if removed:
            log.notes.append(f"{removed} file(s) the kernel left in /tmp, /var/tmp or /dev/shm were removed")
    log.seconds = time.monotonic() - started
    return log
