"""``python -m attn_course.grade``: grade submitted exercise notebooks (the command line only).

The grader lives in :mod:`attn_course.grading` (``grading/grade.py``); see
``python -m attn_course.grade --help`` and the instructor guide in exercises/README.md.
"""

import sys

from .grading.grade import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
