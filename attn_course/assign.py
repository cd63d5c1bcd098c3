"""``python -m attn_course.assign``: build exercises/ from the masters in solutions/ (the command line only).

The generator lives in :mod:`attn_course.grading` (``grading/assign.py``); see
``python -m attn_course.assign --help``.
"""

import sys

from .grading.assign import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
