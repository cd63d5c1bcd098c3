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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from traitlets import Int, Unicode

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
    output_chars: int = 20_000  # output kept per cell
    interrupt_grace: float = 3.0  # seconds for an interrupted kernel to answer again
    startup_timeout: float = 60.0  # seconds for the kernel to start

    def launcher_spec(self) -> str:
        return json.dumps(
            {
                "memory_bytes": self.memory_mb * 2**20,
                "cpu_seconds": int(self.total_timeout + self.startup_timeout + 30),
                "file_bytes": self.file_mb * 2**20,
            }
        )


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
    """A kernel manager that starts the kernel through the resource-limiting launcher."""

    limits_spec = Unicode("{}")

    def format_kernel_cmd(self, extra_arguments=None):
        command = super().format_kernel_cmd(extra_arguments)
        return [sys.executable, str(LAUNCHER), self.limits_spec, "--", *command]


def _message_chars(msg) -> int:
    content = msg.get("content", {})
    if "text" in content:
        return len(content["text"])
    data = content.get("data", {})
    return sum(len(value) if isinstance(value, str) else len(json.dumps(value)) for value in data.values())


class CappedClient(NotebookClient):
    """An nbclient that keeps at most ``output_limit`` characters of output per cell."""

    output_limit = Int(20_000)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._chars: dict[int, int] = {}

    def output(self, outs, msg, display_id, cell_index):
        if msg["msg_type"] != "error":
            used = self._chars.get(cell_index, 0)
            size = _message_chars(msg)
            self._chars[cell_index] = used + size
            if used + size > self.output_limit:
                if used <= self.output_limit:
                    note = f"[grader: output past {self.output_limit} characters dropped]\n"
                    outs.append(nbformat.v4.new_output("stream", name="stderr", text=note))
                return None
        return super().output(outs, msg, display_id, cell_index)


def kernel_environment(record_dir: Path, scratch: Path) -> dict[str, str]:
    """The kernel's environment: the grader's, plus where to record, one thread, no GPU probing."""
    env = dict(os.environ)
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
        }
    )
    return env


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


async def _run_cells(client: CappedClient, notebook, limits: Limits, log: RunLog, env: dict, scratch: Path):
    code_cells = [index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    stop_reason = ""
    with open(scratch / "kernel.log", "wb") as kernel_log:
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
                    continue
                except DeadKernelError:
                    seconds = time.monotonic() - cell_start
                    log.cells[index] = CellOutcome(
                        "dead", "the kernel died (os._exit, a crash, or the memory or CPU limit)", seconds
                    )
                    stop_reason = f"the kernel died in cell {index + 1}"
                    log.notes.append(stop_reason)
                    continue
                seconds = time.monotonic() - cell_start
                error = _error_text(cell)
                log.cells[index] = CellOutcome("error" if error else "ok", error, seconds)


def run_notebook(notebook, workdir, record_dir, limits: Limits | None = None) -> RunLog:
    """Execute the code cells of ``notebook`` (modified in place: outputs) in ``workdir``; never raises for
    anything the notebook does. ``record_dir`` is passed to the kernel as ``ATTN_COURSE_RECORD_DIR``."""
    limits = limits or Limits()
    workdir, record_dir = Path(workdir), Path(record_dir)
    scratch = workdir.parent / f"{workdir.name}-kernel"
    scratch.mkdir(parents=True, exist_ok=True)
    manager = LimitedKernelManager(kernel_name="python3", transport="ipc", ip=str(scratch / "ipc"))
    manager.limits_spec = limits.launcher_spec()
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
        resources={"metadata": {"path": str(workdir)}},
    )
    log = RunLog()
    started = time.monotonic()
    env = kernel_environment(record_dir, scratch)
    try:
        asyncio.run(_run_cells(client, notebook, limits, log, env, scratch))
    except Exception as err:  # the kernel failed to start, or died in a way nbclient did not expect
        reason = f"the run stopped: {type(err).__name__}: {err}"[:500]
        log.notes.append(reason)
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code" and index not in log.cells:
                log.cells[index] = CellOutcome("not_run", reason)
    log.seconds = time.monotonic() - started
    return log
