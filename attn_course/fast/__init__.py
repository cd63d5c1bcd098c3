"""The CPU fast paths, kept apart from the algorithms the lessons teach.

Every public function of ``attn_course`` reads top to bottom as the algorithm of
its lesson (``attention.py``, ``tiled.py``, ``sparse.py``). For NumPy arrays,
three of them hand the work to a faster version of the same mathematics in this
subpackage, through one visible line whose comment says what differs:

* ``dense.py`` (``scaled_dot_product_attention``): threads over heads and
  cache-sized blocks of query rows, causal blocks cut at the diagonal;
* ``tiled.py`` (``tiled_attention``): the same, with a plan of which tiles to
  skip, compute whole or mask;
* ``sparse.py`` (``block_sparse_attention``, ``sparse_attention``): each block
  row's keys gathered once, element masks evaluated only on partial tiles.

All three skip the softmax's max subtraction, which only keeps ``exp`` from
overflowing: the weights are the same without it. Every row's sum is checked
and a row that overflowed, underflowed or may attend to nothing is computed
again the stable way, so the results equal the reference path's to rounding.
``threads.py`` spreads the independent jobs over the cores (one OpenBLAS thread
per worker); ``tile_masks.py`` caches the masks of repeated tiles.

The switch: ``ATTN_COURSE_FAST=0`` in the environment, or

    with attn_course.fast.disabled():
        ...

forces the reference path everywhere (tests and lessons 10-13 compare both).
"""

from __future__ import annotations

import contextlib
import contextvars
import os

__all__ = ["ENV_VAR", "disabled", "enabled"]

ENV_VAR = "ATTN_COURSE_FAST"

_disabled_here = contextvars.ContextVar("attn_course_fast_disabled", default=False)


def enabled() -> bool:
    """True unless ``ATTN_COURSE_FAST=0`` (or ``false``, ``no``, ``off``) or inside ``disabled()``."""
    if _disabled_here.get():
        return False
    setting = os.environ.get(ENV_VAR, "").strip().lower()
    if setting in ("", "1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_VAR} must be 1 (fast paths on, the default) or 0 (reference code only); got {setting!r}")


@contextlib.contextmanager
def disabled():
    """Within this block every function runs its reference code (the lesson's algorithm), never a fast path."""
    token = _disabled_here.set(True)
    try:
        yield
    finally:
        _disabled_here.reset(token)
