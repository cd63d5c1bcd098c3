"""Launch a kernel with resource limits: ``python launch_with_limits.py LIMITS_JSON -- KERNEL_COMMAND...``.

Run by the grader's sandbox (``attn_course.grading.sandbox``) as a file, by
its path (not imported: it must start fast and import nothing of the
package). It lowers this process's resource limits, then replaces itself
with the kernel command (``os.execv``); the limits survive the exec and
bind the kernel and everything it starts:

* ``RLIMIT_AS``: address space, so a memory bomb raises ``MemoryError``
  (or kills the kernel) instead of exhausting the machine;
* ``RLIMIT_CPU``: CPU seconds, a backstop behind the grader's wall-clock limit;
* ``RLIMIT_FSIZE``: the largest file the kernel may write (``SIGXFSZ`` is
  ignored so that a write past it fails with an error instead of a kill);
* ``RLIMIT_CORE`` = 0: no core dumps;
* ``RLIMIT_NPROC``: processes and threads of the kernel's user, so a fork
  flood stops at a few dozen. The count is per user: when the kernel keeps
  the grader's user, the limit is that user's current count plus
  ``processes`` (counted here from ``/proc``);
* ``RLIMIT_NOFILE``: open files.

When the grader runs as root (``uid`` given), the launcher then drops to
that unprivileged user and group (no supplementary groups) before the
``exec``: the kernel can then neither lift these limits, nor read or write
the grader's memory, files or reports, nor signal it. When no such user can
run the interpreter (it lives in root's home), the kernel stays root but
loses every capability (the bounding set is emptied, so the ``exec`` grants
none) and can gain none back (``no_new_privs``): it cannot lift the limits
or open a non-dumpable grader's memory, though it can still write root's files.
An ordinary user's limits can only be lowered, never raised again.
"""

import json
import os
import resource
import signal
import sys


def main() -> None:
    limits = json.loads(sys.argv[1])
    if sys.argv[2] != "--" or len(sys.argv) < 4:
        sys.exit("usage: launch_with_limits.py LIMITS_JSON -- KERNEL_COMMAND...")
    command = sys.argv[3:]
    uid = limits.get("uid")
    processes = limits.get("processes")
    if processes is not None and uid is None:
        processes += _tasks_of(os.getuid())
    for name, wanted in (
        ("RLIMIT_AS", limits.get("memory_bytes")),
        ("RLIMIT_CPU", limits.get("cpu_seconds")),
        ("RLIMIT_FSIZE", limits.get("file_bytes")),
        ("RLIMIT_NPROC", processes),
        ("RLIMIT_NOFILE", limits.get("open_files")),
        ("RLIMIT_CORE", 0),
    ):
        if wanted is not None and hasattr(resource, name):
            which = getattr(resource, name)
            hard = resource.getrlimit(which)[1]
            value = int(wanted) if hard == resource.RLIM_INFINITY else min(int(wanted), hard)
            resource.setrlimit(which, (value, value))  # soft = hard: the kernel cannot raise it again
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # the real, effective and saved ids: there is no way back
        os.umask(0o077)
    elif os.geteuid() == 0 and limits.get("drop_capabilities"):
        _drop_capabilities()
    _no_new_privileges()
    os.execv(command[0], command)


def _prctl(option: int, value: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _drop_capabilities() -> None:
    """Empty the capability bounding set (PR_CAPBSET_DROP = 24): the exec then grants root no capability."""
    for capability in range(64):
        _prctl(24, capability)


def _no_new_privileges() -> None:
    """PR_SET_NO_NEW_PRIVS = 38: no setuid program or file capability gives the kernel more than it has."""
    if sys.platform.startswith("linux"):
        _prctl(38, 1)


def _tasks_of(uid: int) -> int:
    """Processes and threads that ``uid`` runs now (what ``RLIMIT_NPROC`` counts)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return count


if __name__ == "__main__":
    main()
