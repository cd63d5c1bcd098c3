"""The grader's hold on processes: a grader the kernel cannot read or write, and no process outliving its submission.

A submission's kernel runs as the grader's own user, so two things need the
kernel's operating system, Linux (elsewhere :func:`harden_grader` reports what
it could not do and the rest is a no-op):

* :func:`harden_grader` makes the grading process **non-dumpable**
  (``prctl(PR_SET_DUMPABLE, 0)``): its ``/proc/<pid>/mem``, ``environ`` and
  ``fd`` become the kernel's (root's) files, so a kernel of the same user
  cannot read or patch the grader's memory. It also makes the process a
  **child subreaper** (``PR_SET_CHILD_SUBREAPER``): a process the kernel starts
  and abandons (a double fork, ``setsid``) is re-parented to the grader
  instead of to ``init``, where :func:`kill_leftovers` finds it;
* :func:`kill_leftovers` freezes (``SIGSTOP``) and then kills (``SIGKILL``)
  every child of the grader that was not there before the submission, pass
  after pass (a killed parent hands its children up), reaps them, and returns
  how many it killed; the report says so.

Both calls are cheap (a few system calls, a read of ``/proc/<pid>/task/*/children``).

A grader running as root also puts each kernel in a process-count cgroup of its
own (:class:`PidsGroup`): ``RLIMIT_NPROC`` never binds root, ``pids.max`` does,
and whatever is left in the group when the run ends is killed with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import signal
import sys
import time
from pathlib import Path

__all__ = ["PidsGroup", "children", "harden_grader", "is_dumpable", "kill_leftovers"]

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_CHILD_SUBREAPER = 36
MAX_PASSES = 200  # kill passes; each pass can only meet processes born before it was frozen

_libc = None


def _prctl(option: int, value: int = 0) -> int:
    global _libc  # noqa: PLW0603 (loaded once)
    if not sys.platform.startswith("linux"):
        return -1
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def harden_grader() -> list[str]:
    """Make this process non-dumpable and a child subreaper; returns what could not be done (empty on Linux)."""
    missing = []
    if _prctl(PR_SET_DUMPABLE, 0) != 0:
        missing.append("the grader could not make itself non-dumpable (its memory is readable by the kernel)")
    if _prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        missing.append("the grader could not become a child subreaper (abandoned processes escape it)")
    return missing


def is_dumpable() -> bool:
    """Whether this process can be read through ``/proc/<pid>/mem`` by others of its user."""
    return _prctl(PR_GET_DUMPABLE) != 0


def children(pid: int | None = None) -> set[int]:
    """The direct children of ``pid`` (default: this process), from ``/proc``."""
    pid = os.getpid() if pid is None else pid
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.update(int(word) for word in (task / "children").read_text().split())
    return found


def _descendants(roots: set[int]) -> set[int]:
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children(pid) - seen)
    return seen


def _signal_all(pids, sig) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _reap(pids) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.waitpid(pid, os.WNOHANG)


def kill_leftovers(before: set[int]) -> int:
    """Kill every descendant of this process that is not under one of ``before`` (children it already had).

    Returns the number of processes killed. Frozen first, so that a process
    that keeps forking cannot outrun the passes.
    """
    if not sys.platform.startswith("linux"):
        return 0
    killed: set[int] = set()
    for _ in range(MAX_PASSES):
        leftover = _descendants(children() - before) - killed
        if not leftover:
            break
        _signal_all(leftover, signal.SIGSTOP)
        leftover |= _descendants(leftover)  # children born before the stop took effect
        _signal_all(leftover, signal.SIGKILL)
        killed |= leftover
        _reap(leftover)
    for _ in range(MAX_PASSES):  # killed processes handed up to this one are its zombies now: wait for them
        pending = children() & killed
        if not pending:
            break
        for pid in pending:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
    return len(killed)


PIDS_CONTROLLERS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")  # cgroup v1's pids hierarchy, or the v2 root


class PidsGroup:
    """A process-count cgroup of its own for one kernel (root only: ``pids.max`` binds root, ``RLIMIT_NPROC`` does not).

    ``PidsGroup.create(limit)`` makes ``<controller>/attn_grade_<random>`` with ``pids.max = limit``, or returns
    None where no writable pids controller exists (not root, no cgroup file system). The kernel's launcher joins it
    (``path`` in its spec) before the ``exec``; :meth:`close` kills what is left in it and removes it.
    """

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def create(cls, limit: int) -> PidsGroup | None:
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            return None
        for controller in PIDS_CONTROLLERS:
            path = os.path.join(controller, f"attn_grade_{os.getpid()}_{secrets.token_hex(6)}")
            try:
                os.mkdir(path)
            except OSError:
                continue
            try:  # a group without pids.max: not a pids hierarchy (or v2 without the controller enabled)
                with open(os.path.join(path, "pids.max"), "w") as handle:
                    handle.write(str(int(limit)))
            except OSError:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                continue
            return cls(path)
        return None

    def members(self) -> set[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as handle:
                return {int(line) for line in handle if line.strip()}
        except OSError:
            return set()

    def close(self) -> int:
        """Kill every process still in the group (frozen first), remove the group; returns how many were killed."""
        killed: set[int] = set()
        for _ in range(MAX_PASSES):
            left = self.members() - killed
            if not left:
                break
            _signal_all(left, signal.SIGSTOP)
            _signal_all(left, signal.SIGKILL)
            killed |= left
        for pid in killed:  # a killed process handed up to this one (a subreaper) stays a zombie in the group
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        for _ in range(50):  # the group can be removed once its last member is gone
            try:
                os.rmdir(self.path)
                break
            except OSError:
                time.sleep(0.02)
        return len(killed)
