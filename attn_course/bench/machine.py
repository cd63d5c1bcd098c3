"""What the benchmarks print about the machine they ran on."""

from __future__ import annotations

import os
import platform


def describe_machine() -> str:
    """One line: CPU model, cores, Python and NumPy versions."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"
