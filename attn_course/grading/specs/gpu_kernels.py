"""Exercises of lesson 15, attention on the GPU: ``solutions/15_attention_on_the_gpu.ipynb``.

All three run on a CPU: they ask what the fused kernels of ``attn_course.kernels``
do, counted, not timed.

* ``causal_fused_bytes(B, H, N, d, itemsize, tile)``: the bytes a causal fused
  kernel moves through the GPU's main memory when ``K`` and ``V`` are not cached:
  ``Q`` read and the output written once, ``2 N d`` numbers per (batch, head);
  the query tile ``r`` (``T = ceil(N / tile)`` of them) reads the keys and values
  ``0 .. min(N, (r + 1) tile)`` only, the tiles above the diagonal being skipped:
  ``B H itemsize (2 N d + 2 d sum_r min(N, (r + 1) tile))``;
* ``blocks_per_sm(threads_per_block, registers_per_thread, shared_bytes_per_block)``:
  how many thread blocks one multiprocessor of an H200 (Hopper) holds at once,
  the smallest of the limits set by its 65,536 registers, 228 KiB of shared
  memory, 2,048 threads and 32 blocks (allocation granularity ignored);
* ``c_fragment_owner(rows, cols)``: for entries ``C[row, col]`` of the 16 x 8
  accumulator of ``mma.sync.m16n8k16``, the lane that holds each and its slot
  ``c0 .. c3``: with ``g = row % 8`` and ``t = col // 2``, lane ``4 g + t`` and
  slot ``2 (row // 8) + col % 2`` (PTX's fragment layout, as
  ``attn_course/kernels/attention_fp16.cu`` states it).

References: these formulas, evaluated at grading time (the first one is checked
against the package's causal block layout in the notebook).
"""

from __future__ import annotations

import numpy as np

from ..judge import Case, Exercise, Mistake
from .secret_inputs import every_entry_shuffled, fused_bytes_case, occupancy_case

__all__ = ["BLOCKS_PER_SM", "EXERCISES", "REGISTERS_PER_SM", "SHARED_BYTES_PER_SM", "THREADS_PER_SM"]

LESSON = "15_attention_on_the_gpu"

REGISTERS_PER_SM = 65_536  # 32-bit registers of one Hopper multiprocessor
SHARED_BYTES_PER_SM = 228 * 1024  # shared memory one multiprocessor can give its blocks
THREADS_PER_SM = 2_048
BLOCKS_PER_SM = 32

NUMBER_HINTS = {
    "type": "Return a 0-d NumPy float64 array: np.asarray(float(value), dtype=np.float64).",
    "shape": "Return a single number as a 0-d array: np.asarray(float(value), dtype=np.float64).",
}


def _number(value) -> np.ndarray:
    return np.asarray(float(value), dtype=np.float64)


# --------------------------------------------------------------------------- bytes of a causal fused kernel


def _fused_bytes(B, H, N, d, itemsize, tile, *, causal=True, values=True, q_and_out=True, whole_tiles=False):
    tiles = -(-N // tile)
    if causal:
        key_rows = sum((r + 1) * tile if whole_tiles else min(N, (r + 1) * tile) for r in range(tiles))
    else:
        key_rows = tiles * N
    numbers = (2 if values else 1) * d * key_rows + (2 * N * d if q_and_out else 0)
    return _number(B * H * numbers * itemsize)


FUSED_BYTES = Exercise(
    name="causal_fused_bytes",
    function="causal_fused_bytes",
    params=("B", "H", "N", "d", "itemsize", "tile"),
    lesson=LESSON,
    reference=_fused_bytes,
    cases=(
        Case(
            "small",
            "B = 2, H = 3, N = 256, d = 8, itemsize = 4, tile = 64",
            lambda rng: (2, 3, 256, 8, 4, 64),
            seed=1501,
            secret=fused_bytes_case((1, 3), (2, 3, 4), (32, 64), (4, 6), (8, 16), 4),
        ),
        Case(
            "partial_tile",
            "B = 1, H = 5, N = 1000, d = 64, itemsize = 2, tile = 64: the last tile holds 40 keys",
            lambda rng: (1, 5, 1000, 64, 2, 64),
            seed=1502,
            secret=fused_bytes_case((1, 2), (3, 5, 6), (32, 64, 128), (4, 16), (32, 64, 128), 2, whole=False),
            points=2.0,
        ),
        Case(
            "long_float32",
            "B = 4, H = 16, N = 16384, d = 128, itemsize = 4, tile = 128",
            lambda rng: (4, 16, 16384, 128, 4, 128),
            seed=1503,
            secret=fused_bytes_case((2, 4), (8, 16, 32), (64, 128), (64, 256), (64, 128), 4),
        ),
    ),
    mistakes=(
        Mistake(
            "not causal",
            "A causal kernel never visits the key tiles above the diagonal: query tile r reads the keys of tiles "
            "0 .. r only, not all N keys.",
            lambda B, H, N, d, i, t: _fused_bytes(B, H, N, d, i, t, causal=False),
        ),
        Mistake(
            "values forgotten",
            "Every visited key tile brings its values too: K and V, 2 d numbers per key row read.",
            lambda B, H, N, d, i, t: _fused_bytes(B, H, N, d, i, t, values=False),
        ),
        Mistake(
            "queries and output left out",
            "The kernel also reads Q once and writes the output once: 2 N d numbers per (batch, head).",
            lambda B, H, N, d, i, t: _fused_bytes(B, H, N, d, i, t, q_and_out=False),
        ),
        Mistake(
            "rows past the end counted",
            "The last tile may be partial: rows past N are filled with zeros on the chip, not read from memory. "
            "Query tile r reads min(N, (r + 1) * tile) key rows.",
            lambda B, H, N, d, i, t: _fused_bytes(B, H, N, d, i, t, whole_tiles=True),
        ),
    ),
    hints={
        **NUMBER_HINTS,
        "values": "Follow one thread block: it holds query tile r, reads its Q rows once, then reads every key "
        "tile it visits (K and V, tile rows of d numbers each) and writes its output rows once. Sum over r and "
        "multiply by B * H * itemsize.",
    },
)


# --------------------------------------------------------------------------- occupancy


def _occupancy(threads, registers, shared, *, registers_per_thread_only=False, shared_limit=True, thread_limit=True):
    limits = [BLOCKS_PER_SM]
    limits.append(REGISTERS_PER_SM // (registers if registers_per_thread_only else registers * threads))
    if shared_limit and shared > 0:
        limits.append(SHARED_BYTES_PER_SM // shared)
    if thread_limit:
        limits.append(THREADS_PER_SM // threads)
    return _number(min(limits))


OCCUPANCY = Exercise(
    name="blocks_per_sm",
    function="blocks_per_sm",
    params=("threads_per_block", "registers_per_thread", "shared_bytes_per_block"),
    lesson=LESSON,
    reference=_occupancy,
    cases=(
        Case(
            "registers_limit",
            "threads_per_block = 256, registers_per_thread = 96, shared_bytes_per_block = 20000",
            lambda rng: (256, 96, 20_000),
            seed=1511,
            secret=occupancy_case("registers"),
        ),
        Case(
            "shared_limit",
            "threads_per_block = 128, registers_per_thread = 64, shared_bytes_per_block = 73728",
            lambda rng: (128, 64, 73_728),
            seed=1512,
            secret=occupancy_case("shared"),
            points=2.0,
        ),
        Case(
            "threads_limit",
            "threads_per_block = 1024, registers_per_thread = 16, shared_bytes_per_block = 4096",
            lambda rng: (1024, 16, 4_096),
            seed=1513,
            secret=occupancy_case("threads"),
        ),
        Case(
            "blocks_limit",
            "threads_per_block = 32, registers_per_thread = 16, shared_bytes_per_block = 0",
            lambda rng: (32, 16, 0),
            seed=1514,
            secret=occupancy_case("blocks"),
        ),
    ),
    mistakes=(
        Mistake(
            "registers of one thread",
            "Registers are given per THREAD: a block needs registers_per_thread * threads_per_block of the "
            "multiprocessor's 65,536.",
            lambda t, r, s: _occupancy(t, r, s, registers_per_thread_only=True),
        ),
        Mistake(
            "shared memory ignored",
            "Every resident block keeps its own shared memory: at most 228 KiB // shared_bytes_per_block blocks fit.",
            lambda t, r, s: _occupancy(t, r, s, shared_limit=False),
        ),
        Mistake(
            "thread limit ignored",
            "A multiprocessor runs at most 2,048 threads at once, whatever the registers and shared memory allow.",
            lambda t, r, s: _occupancy(t, r, s, thread_limit=False),
        ),
    ),
    hints={
        **NUMBER_HINTS,
        "values": "Work out, for each resource, how many whole blocks it could hold (integer division), then take "
        "the smallest: the scarcest resource decides. A block with no shared memory is not limited by it.",
    },
)


# --------------------------------------------------------------------------- fragments of the tensor cores


def _owner(rows, cols, *, wrap_rows=True, transposed=False, half_in_slot=True):
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if transposed:
        lane = 4 * (cols % 8) + rows // 2
    else:
        lane = 4 * (rows % 8 if wrap_rows else rows) + cols // 2
    slot = (2 * (rows // 8) if half_in_slot else 0) + cols % 2
    return lane.astype(np.int64), slot.astype(np.int64)


def _owner_case(shape):
    def make(rng):
        rows = rng.integers(0, 16, size=shape).astype(np.int64)
        cols = rng.integers(0, 8, size=shape).astype(np.int64)
        rows.flat[0] = 9  # always one entry of the lower half
        return rows, cols

    return make


def _every_entry():
    rows, cols = np.meshgrid(np.arange(16), np.arange(8), indexing="ij")
    return rows.astype(np.int64), cols.astype(np.int64)


FRAGMENTS = Exercise(
    name="c_fragment_owner",
    function="c_fragment_owner",
    params=("rows", "cols"),
    lesson=LESSON,
    reference=_owner,
    outputs=("lane", "slot"),
    cases=(
        Case("few_entries", "rows, cols: int64 (5,), rows in 0..15, cols in 0..7", _owner_case((5,)), seed=1521),
        Case(
            "whole_tile",
            "rows, cols: int64 (16, 8), every entry of C",
            lambda rng: _every_entry(),
            seed=1522,
            secret=every_entry_shuffled,
            points=2.0,
        ),
        Case("grid", "rows, cols: int64 (3, 7)", _owner_case((3, 7)), seed=1523),
    ),
    mistakes=(
        Mistake(
            "rows not wrapped",
            "A warp has 32 lanes, 8 groups g of 4: rows r and r + 8 belong to the same group, g = row % 8. The lower "
            "half of C sits in the same lanes as the upper half, in slots c2, c3.",
            lambda rows, cols: _owner(rows, cols, wrap_rows=False),
        ),
        Mistake(
            "rows and columns swapped",
            "The group g = lane // 4 picks the ROW (row % 8) and t = lane % 4 the pair of COLUMNS 2t, 2t + 1.",
            lambda rows, cols: _owner(rows, cols, transposed=True),
        ),
        Mistake(
            "slot without the row half",
            "A lane holds four entries: c0, c1 in row g and c2, c3 in row g + 8. The slot is 2 * (row // 8) + col % 2.",
            lambda rows, cols: _owner(rows, cols, half_in_slot=False),
        ),
    ),
    hints={
        "type": "Return the tuple (lane, slot) of two int64 arrays shaped like rows.",
        "shape": "lane and slot have the shape of rows and cols: compute them elementwise (%, //, *, +).",
        "dtype": "Lanes and slots are whole numbers: keep int64 (integer division // and % keep it).",
        "values": "Lane l has g = l // 4 and t = l % 4 and holds C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1] "
        "as c0, c1, c2, c3. Invert that: from (row, col) find g and t, then the lane and which of the four it is.",
    },
)

EXERCISES = (FUSED_BYTES, OCCUPANCY, FRAGMENTS)
