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

Two more, where the spec asks for them:

* ``hide`` / ``keep``: the kernel gets a mount namespace of its own in which
  every ``hide`` path (the masters in ``solutions/``, the course's git history,
  the batch's submission and report folders, root's home) is covered by an
  empty read-only tmpfs (a file by ``/dev/null``), except the ``keep`` paths
  under it (the Python installation, the package, the run's own folders), bound
  back read-only where they were. Root makes the namespace directly; another
  user makes it inside a user namespace of its own that maps only itself (the
  ``exec`` then leaves the kernel no capability in it, so it cannot unmount the
  covers, and a namespace it makes itself inherits them locked). When neither
  works, the kernel runs without and the grader notes it;
* ``pids_cgroup``: a process-count cgroup (``pids.max``) the launcher joins
  before the ``exec``: unlike ``RLIMIT_NPROC`` it binds root too, and the
  grader kills whatever is left in it.
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
    if limits.get("pids_cgroup"):
        with open(os.path.join(limits["pids_cgroup"], "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))  # the exec keeps the pid: the kernel and all it starts are counted
    if limits.get("hide"):
        try:
            hide_paths(limits["hide"], limits.get("keep", ()))
        except OSError as err:
            print(f"launch_with_limits: the answer key could not be hidden ({err})", file=sys.stderr)
            if limits.get("hide_required"):
                sys.exit(3)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)  # the real, effective and saved ids: there is no way back
        os.umask(0o077)
    elif os.geteuid() == 0 and limits.get("drop_capabilities"):
        _drop_capabilities()
    _no_new_privileges()
    os.execv(command[0], command)


CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV = 0x1, 0x2, 0x4
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
SYSTEM_FOLDERS = ("/", "/bin", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/tmp", "/usr", "/var")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _libc_call(name: str, *args) -> None:
    """Call C library function ``name``; a non-zero return raises ``OSError`` with errno and the call's arguments."""
    import ctypes

    if getattr(_libc(), name)(*args) != 0:
        number = ctypes.get_errno()
        raise OSError(
            number, f"{name}{tuple(a.decode() if isinstance(a, bytes) else a for a in args)}: " + os.strerror(number)
        )


def _mount(source, target, kind, flags, data=None) -> None:
    encode = lambda text: None if text is None else str(text).encode()
    _libc_call("mount", encode(source), encode(target), encode(kind), flags, encode(data))


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _inside(path: str, folder: str) -> bool:
    return path != folder and path.startswith(folder.rstrip("/") + "/")


def hide_paths(hide, keep) -> list[str]:
    """Cover each ``hide`` path with an empty read-only tmpfs (a file with ``/dev/null``) in a new mount namespace,
    binding the ``keep`` paths under it back read-only; returns the paths covered."""
    if os.geteuid() == 0:
        _libc_call("unshare", CLONE_NEWNS)
    else:  # a user namespace of our own, mapping only ourselves: enough to own the new mount namespace
        uid, gid = os.getuid(), os.getgid()
        _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWNS)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    keep = sorted({os.path.realpath(path) for path in keep if os.path.exists(path)})
    covered: list[str] = []
    for path in sorted({os.path.realpath(path) for path in hide}, key=len):
        if path in SYSTEM_FOLDERS or not os.path.lexists(path):
            continue
        if any(_inside(path, done) for done in covered) and not any(_inside(path, kept) for kept in keep):
            continue  # already out of sight
        if path in keep:
            continue
        if not os.path.isdir(path):
            _mount("/dev/null", path, None, MS_BIND)
            covered.append(path)
            continue
        under = [kept for kept in keep if _inside(kept, path)]
        handles = {kept: os.open(kept, os.O_PATH) for kept in under}  # reachable once the cover is on
        _mount("attn-hidden", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
        for kept, handle in handles.items():
            if os.path.isdir(f"/proc/self/fd/{handle}"):
                os.makedirs(kept, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(kept), exist_ok=True)
                open(kept, "a").close()
            _mount(f"/proc/self/fd/{handle}", kept, None, MS_BIND | MS_REC)
            os.close(handle)
            try:
                _mount(None, kept, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
            except OSError:
                pass  # locked flags of the original mount: it stays as writable as it was
        _mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        covered.append(path)
    return covered


def _prctl(option: int, value: int) -> int:
    import ctypes

    return _libc().prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


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
