"""Exercises of lesson 11, sparse attention patterns: ``solutions/11_sparse_attention_patterns.ipynb``.

* ``strided_mask(n, stride)``: the Sparse Transformer's strided pattern,
  ``j <= i`` and (``i - j < stride`` or ``(i - j) % stride == 0``);
* ``fixed_mask(n, block, c)``: the fixed pattern, ``j <= i`` and (same block,
  ``j // block == i // block``, or ``j`` among the last ``c`` positions of its
  block, ``j % block >= block - c``);
* ``receptive_field(mask, layers)``: ``R_1 = M``, ``R_{k+1} = R_k M`` as a
  boolean matrix product: which inputs output ``i`` can depend on after
  ``layers`` layers;
* ``layers_to_connect(mask)`` (an experiment with an answer): the fewest
  layers after which every output ``i`` can depend on every input ``j <= i``,
  or ``-1`` when no number of layers does it (a 0-d float64 array).

References: ``attn_course.masks.strided_mask``, ``attn_course.masks.fixed_mask``,
and the boolean product written out with integers. Masks are compared exactly.
"""

from __future__ import annotations

import numpy as np

from ... import masks
from ..judge import Case, Exercise, Mistake
from .secret_inputs import draw_int, multiple, partial, redrawn, sliding, with_unit

__all__ = ["EXERCISES"]

LESSON = "11_sparse_attention_patterns"

BOOL_DTYPE = (
    "A mask holds booleans: build it from comparisons of index grids (i = np.arange(n)[:, None], "
    "j = np.arange(n)[None, :]) combined with & and |."
)


def _grid(n):
    return np.arange(n)[:, None], np.arange(n)[None, :]


def _strided(n, stride, causal=True, local=True, step=True):
    i, j = _grid(n)
    offset = i - j
    keep = np.zeros((n, n), dtype=bool)
    if local:
        keep |= np.abs(offset) < stride if not causal else offset < stride
    if step:
        keep |= offset % stride == 0
    return keep & (offset >= 0) if causal else keep


def _strided_by_column(n, stride):
    i, j = _grid(n)
    return (j <= i) & ((i - j < stride) | (j % stride == 0))


STRIDED = Exercise(
    name="strided_mask",
    function="strided_mask",
    params=("n", "stride"),
    lesson=LESSON,
    reference=masks.strided_mask,
    cases=(
        Case(
            "lesson_like",
            "n = 12, stride = 4",
            lambda rng: (12, 4),
            seed=501,
            secret=with_unit(range(3, 6), lambda rng, stride: (multiple(rng, stride, 3, 4), stride)),
        ),
        Case(
            "stride_not_dividing",
            "n = 17, stride = 5",
            lambda rng: (17, 5),
            seed=502,
            secret=with_unit(range(4, 7), lambda rng, stride: (partial(rng, stride, 3, 4), stride)),
            points=2.0,
        ),
        Case(
            "stride_one",
            "n = 6, stride = 1: the causal mask",
            lambda rng: (6, 1),
            seed=503,
            secret=lambda rng: (draw_int(rng, 4, 9), 1),
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "lesson_like": (
            Case(
                "stride_beyond_the_sequence",
                "n = 6, stride = 9: the stride is longer than the sequence, every past key is local",
                lambda rng: (6, 9),
                seed=3049,
            ),
            Case("one_token", "n = 1, stride = 3: a single token sees itself", lambda rng: (1, 3), seed=3050),
        ),
    },
    mistakes=(
        Mistake(
            "causal condition missing",
            "The strided pattern is causal: keep only j <= i (offset i - j >= 0). Without it the multiples of "
            "the stride also reach into the future.",
            lambda n, stride: _strided(n, stride, causal=False),
        ),
        Mistake(
            "local part missing",
            "Besides every stride-th earlier position, each query sees the stride - 1 positions just before it "
            "and itself: i - j < stride.",
            lambda n, stride: _strided(n, stride, local=False),
        ),
        Mistake(
            "strided part missing",
            "Besides its local window, a query sees every earlier position whose offset is a multiple of the "
            "stride: (i - j) % stride == 0.",
            lambda n, stride: _strided(n, stride, step=False),
        ),
        Mistake(
            "columns instead of offsets",
            "The strided part counts back from the query, (i - j) % stride == 0, not j % stride == 0.",
            _strided_by_column,
        ),
    ),
    hints={"dtype": BOOL_DTYPE, "shape": "One row per query and one column per key: (n, n)."},
)


def _fixed(n, block, c, causal=True, summary=lambda j, block, c: j % block >= block - c):
    i, j = _grid(n)
    keep = (j // block == i // block) | summary(j, block, c)
    return keep & (j <= i) if causal else keep


FIXED = Exercise(
    name="fixed_mask",
    function="fixed_mask",
    params=("n", "block", "c"),
    lesson=LESSON,
    reference=masks.fixed_mask,
    cases=(
        Case(
            "lesson_like",
            "n = 16, block = 4, c = 1",
            lambda rng: (16, 4, 1),
            seed=511,
            secret=with_unit(range(3, 6), lambda rng, block: (multiple(rng, block, 3, 4), block, 1)),
        ),
        Case(
            "partial_last_block",
            "n = 13, block = 5, c = 2: the last block is shorter",
            lambda rng: (13, 5, 2),
            seed=512,
            secret=with_unit(range(4, 7), lambda rng, block: (partial(rng, block, 2, 3), block, 2)),
            points=2.0,
        ),
        Case(
            "wide_summary",
            "n = 9, block = 3, c = 2",
            lambda rng: (9, 3, 2),
            seed=513,
            secret=with_unit(range(3, 5), lambda rng, block: (multiple(rng, block, 3, 4), block, block - 1)),
        ),
    ),
    hidden={
        "partial_last_block": (
            Case(
                "block_beyond_the_sequence",
                "n = 5, block = 8, c = 2: one block, longer than the sequence (its summary positions are past the end)",
                lambda rng: (5, 8, 2),
                seed=3051,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "summary at the start of each block",
            "The summary positions are the LAST c of each block: j % block >= block - c, not j % block < c.",
            lambda n, block, c: _fixed(n, block, c, summary=lambda j, block, c: j % block < c),
        ),
        Mistake(
            "causal condition missing",
            "The fixed pattern is causal: keep only j <= i. Without it a query reads the rest of its block and "
            "the later summary positions.",
            lambda n, block, c: _fixed(n, block, c, causal=False),
        ),
        Mistake(
            "own block missing",
            "A query also sees the earlier positions of its own block: j // block == i // block.",
            lambda n, block, c: (
                _fixed(n, block, c, summary=lambda j, block, c: j % block >= block - c)
                & ~((_grid(n)[1] // block == _grid(n)[0] // block) & (_grid(n)[1] % block < block - c))
            ),
        ),
    ),
    hints={"dtype": BOOL_DTYPE, "shape": "One row per query and one column per key: (n, n)."},
)


def _reach(mask, layers, extra=0):
    step = np.asarray(mask).astype(np.int64)
    reach = np.asarray(mask, dtype=bool)
    for _ in range(layers - 1 + extra):
        reach = (reach.astype(np.int64) @ step) > 0
    return reach


def _reach_identity_start(mask, layers):
    return _reach(mask, layers, extra=-1) if layers > 1 else np.eye(len(mask), dtype=bool)


def _window_case(n, window, layers):
    return lambda rng: (masks.sliding_window_mask(n, window), layers)


def _saturated_after_three(mask, layers):
    """Whether ``layers`` layers reach no further than ``layers - 1``, but further than the mask itself."""
    reach = _reach(mask, layers)
    return np.array_equal(_reach(mask, layers - 1), reach) and not np.array_equal(reach, np.asarray(mask, dtype=bool))


def _random_mask_case(n, layers, p):
    def make(rng):
        mask = (rng.random((n, n)) < p) | np.eye(n, dtype=bool)
        return mask, layers

    return make


RECEPTIVE = Exercise(
    name="receptive_field",
    function="receptive_field",
    params=("mask", "layers"),
    lesson=LESSON,
    reference=_reach,
    cases=(
        Case(
            "window_three_layers",
            "mask: sliding window (14, 14), window 2; layers = 3",
            _window_case(14, 2, 3),
            seed=521,
            secret=sliding((12, 18), (2, 3), 3),
        ),
        Case(
            "one_layer",
            "mask: sliding window (7, 7), window 1; layers = 1: the mask itself",
            _window_case(7, 1, 1),
            seed=522,
            secret=sliding((5, 9), (1, 2), 1),
        ),
        Case(
            "strided_two_layers",
            "mask: strided (20, 20), stride 4; layers = 2",
            lambda rng: (masks.strided_mask(20, 4), 2),
            seed=523,
            secret=lambda rng: (masks.strided_mask(draw_int(rng, 16, 24), draw_int(rng, 3, 5)), 2),
        ),
        Case(
            "random_four_layers",
            "mask: random sparse (11, 11) with its diagonal; layers = 4",
            _random_mask_case(11, 4, 0.08),
            seed=524,
            # as in the public draw: four layers reach further than the mask itself, and no further than three
            secret=redrawn(_random_mask_case(11, 4, 0.08), _saturated_after_three),
            points=2.0,
        ),
    ),
    hidden={
        "window_three_layers": (
            Case(
                "no_self_connection",
                "mask: strictly causal band (8, 8), 0 < i - j <= 2 (no token sees itself); layers = 3: paths of "
                "exactly 3 steps",
                lambda rng: (masks.causal_mask(8) & masks.sliding_window_mask(8, 2) & ~np.eye(8, dtype=bool), 3),
                seed=3052,
            ),
            Case(
                "one_position",
                "mask: (1, 1) True; layers = 4: a single position",
                lambda rng: (np.ones((1, 1), dtype=bool), 4),
                seed=3053,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "one layer too many",
            "After 1 layer the receptive field is the mask itself: R_1 = M, so `layers` layers need layers - 1 "
            "products.",
            lambda mask, layers: _reach(mask, layers, extra=1),
        ),
        Mistake(
            "one layer too few",
            "Start from R_1 = M (not from the identity) and multiply by M another layers - 1 times.",
            _reach_identity_start,
        ),
        Mistake(
            "the mask itself",
            "Information hops one more step per layer: multiply by the mask layers - 1 times, R_{k+1} = R_k M "
            "as a boolean product ((R.astype(int) @ M.astype(int)) > 0).",
            lambda mask, layers: np.asarray(mask, dtype=bool),
        ),
    ),
    hints={
        "dtype": "Return booleans: (reach.astype(int) @ mask.astype(int)) > 0 is a boolean product.",
        "shape": "The receptive field has the mask's shape (n, n).",
    },
)


def _connect(mask, *, every_pair=False, count_products=False):
    """Fewest layers k with R_k covering every pair j <= i (every pair if ``every_pair``), or -1; 0-d float64."""
    mask = np.asarray(mask, dtype=bool)
    n = len(mask)
    wanted = np.ones((n, n), dtype=bool) if every_pair else np.tril(np.ones((n, n), dtype=bool))
    reach = mask
    for layers in range(1, n + 1):  # after n layers nothing new can be reached
        if bool(np.all(reach[wanted])):
            return np.asarray(float(layers - 1 if count_products else layers), dtype=np.float64)
        reach = (reach.astype(np.int64) @ mask.astype(np.int64)) > 0
    return np.asarray(-1.0, dtype=np.float64)


CONNECT = Exercise(
    name="layers_to_connect",
    function="layers_to_connect",
    params=("mask",),
    lesson=LESSON,
    reference=_connect,
    cases=(
        Case(
            "causal_window",
            "mask: causal sliding window (13, 13), window 3 (each query sees itself and 3 keys back)",
            lambda rng: (masks.sliding_window_mask(13, 3, causal=True),),
            seed=531,
            secret=lambda rng: (masks.sliding_window_mask(draw_int(rng, 10, 16), draw_int(rng, 2, 4), causal=True),),
            points=2.0,
        ),
        Case(
            "strided",
            "mask: strided (22, 22), stride 5",
            lambda rng: (masks.strided_mask(22, 5),),
            seed=532,
            secret=lambda rng: (masks.strided_mask(draw_int(rng, 18, 26), draw_int(rng, 4, 6)),),
        ),
        Case(
            "fixed",
            "mask: fixed (17, 17), block 4, c = 1",
            lambda rng: (masks.fixed_mask(17, 4, 1),),
            seed=533,
            secret=lambda rng: (masks.fixed_mask(draw_int(rng, 14, 20), draw_int(rng, 3, 5), 1),),
        ),
        Case(
            "dilated_never",
            "mask: causal dilated window (11, 11), 2 keys back, 3 apart: some pairs are never connected",
            lambda rng: (masks.dilated_window_mask(11, 2, 3, causal=True),),
            seed=534,
            secret=lambda rng: (masks.dilated_window_mask(draw_int(rng, 9, 14), 2, 3, causal=True),),
        ),
    ),
    mistakes=(
        Mistake(
            "products counted, not layers",
            "One layer already connects the pairs its mask allows: R_1 = M. Count layers, which is one more than the "
            "number of boolean products.",
            lambda mask: _connect(mask, count_products=True),
        ),
        Mistake(
            "every pair, future included",
            "A causal pattern never lets query i read a later key j > i, however many layers are stacked: ask only "
            "that every pair j <= i is reached.",
            lambda mask: _connect(mask, every_pair=True),
        ),
    ),
    hints={
        "type": "Return a 0-d NumPy float64 array: np.asarray(float(layers), dtype=np.float64).",
        "shape": "Return a single number as a 0-d array: np.asarray(float(layers), dtype=np.float64).",
        "values": "Grow the receptive field one layer at a time and stop at the first layer where every pair j <= i "
        "is reached. A pair that is still missing after n layers never will be (nothing new can be reached after "
        "n - 1 products): return -1 then. A dilated window only ever moves by multiples of its dilation.",
    },
)

EXERCISES = (STRIDED, FIXED, RECEPTIVE, CONNECT)
