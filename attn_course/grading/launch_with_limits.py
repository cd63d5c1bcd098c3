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
* ``RLIMIT_CORE`` = 0: no core dumps.

Limits can only be raised again by a privileged process: run the grader as
an ordinary user (or in a container, see exercises/README.md).
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
    for name, wanted in (
        ("RLIMIT_AS", limits.get("memory_bytes")),
        ("RLIMIT_CPU", limits.get("cpu_seconds")),
        ("RLIMIT_FSIZE", limits.get("file_bytes")),
        ("RLIMIT_CORE", 0),
    ):
        if wanted is not None and hasattr(resource, name):
            which = getattr(resource, name)
            hard = resource.getrlimit(which)[1]
            value = int(wanted) if hard == resource.RLIM_INFINITY else min(int(wanted), hard)
            resource.setrlimit(which, (value, value))  # soft = hard: the kernel cannot raise it again
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
