"""Attention masks: which keys each query may look at.

A mask is boolean, ``True`` = may attend (torch's boolean ``attn_mask``
convention), and broadcasts to the scores ``(..., L, S)``: entry ``[i, j]``
says whether query ``i`` may attend to key ``j``.

Every pattern exists in two forms:

* a **predicate** ``mask_fn(i, j)`` (FlexAttention's ``mask_mod`` idea): takes
  broadcastable integer index arrays and returns booleans. It describes the
  pattern without storing it, so long sequences never build an ``(L, S)`` array.
  Predicates combine with ``&``, ``|`` and ``~``.
* an **array** ``*_mask(n, ...)``: the predicate evaluated on every pair
  (``materialize``), a boolean ``(n, n)`` array for small ``n``, pictures and
  teaching. The array forms are built *from* the predicates, so both forms
  always agree.

The patterns (``d = i - j`` is how far back key ``j`` lies from query ``i``):

=====================  ==========================================================
causal                 ``j <= i`` (``align='bottom_right'``: ``j <= i + S - L``)
sliding_window(w)      ``|d| <= w``  (and ``j <= i`` if causal)
dilated_window(w, r)   ``|d| <= w * r`` and ``d % r == 0``: ``w`` keys each side, ``r`` apart
strided(s)             Sparse Transformer: ``j <= i`` and (``d < s`` or ``d % s == 0``)
fixed(b, c)            Sparse Transformer: ``j <= i`` and (``j // b == i // b`` or ``j % b >= b - c``)
global_tokens(G)       ``i in G`` or ``j in G``: listed tokens see all and are seen by all
longformer(w, G)       sliding_window(w) or global_tokens(G)
bigbird(n, b, ...)     BigBird's block pattern: window + global + random blocks
padding(lengths)       ``j < lengths[batch]``: keys past a sequence's length are padding
=====================  ==========================================================

Each predicate also says what it knows about tiles of pairs (an ``offset_rule``
for patterns of ``i - j``, a ``tile_rule`` for global tokens, fixed and BigBird),
so that ``block_layout(mask, block)``, which reduces a mask to blocks of
``block x block`` pairs (True where a block holds any allowed pair, the blocks
sparse attention computes), never visits the ``L * S`` pairs. Block layouts
live in ``attn_course.layouts``; ``block_layout``, ``block_cover`` and
``BlockCover`` are importable from here as well.
"""

from __future__ import annotations

import math
import numbers

import array_api_compat
import numpy as np

from .backend import creation_namespace, get_namespace, to_numpy
from .layouts import BlockCover, block_cover, block_layout
from .validation import as_array, check_bool, check_int, dtype_name, shape_of

__all__ = [
    "BlockCover",
    "MaskPredicate",
    "bigbird",
    "bigbird_mask",
    "block_cover",
    "block_layout",
    "causal",
    "causal_mask",
    "dilated_window",
    "dilated_window_mask",
    "fixed",
    "fixed_mask",
    "global_mask",
    "global_tokens",
    "longformer",
    "longformer_mask",
    "materialize",
    "padding",
    "padding_mask",
    "sliding_window",
    "sliding_window_mask",
    "strided",
    "strided_mask",
]


# --------------------------------------------------------------------------- predicates


class MaskPredicate:
    """A mask pattern as a function ``mask_fn(i, j) -> bool array``.

    ``i`` (query positions) and ``j`` (key positions) are integer arrays that
    broadcast against each other, e.g. ``i`` of shape ``(L, 1)`` and ``j`` of
    shape ``(1, S)``. What the pattern knows about itself, for planning tiles
    without visiting every pair (``attn_course.layouts``):

    * ``offset_rule(d)``: the pattern depends only on ``d = i - j`` (causal,
      windows, strided), and this maps offsets to booleans;
    * ``tile_rule(first_i, last_i, first_j, last_j) -> (some, every)``: for
      rectangles of pairs given by their bounds, whether one pair / every pair
      is allowed (``every_exact=False``: ``every`` may miss a rectangle that is
      in fact entirely allowed);
    * ``parts``: how a combined pattern was made, ``("|", a, b)``, ``("&", a, b)``
      or ``("~", a)``.
    """

    def __init__(self, rule, description: str, offset_rule=None, tile_rule=None, every_exact=True, parts=None):
        self._rule = rule
        self.description = description
        self.offset_rule = offset_rule
        self.tile_rule = tile_rule
        self.every_exact = every_exact
        self.parts = parts

    def __call__(self, i, j):
        return self._rule(i, j)

    def __repr__(self) -> str:
        return self.description

    def _combine(self, other, op, symbol: str):
        if not isinstance(other, MaskPredicate):
            return NotImplemented
        offset_rule = None
        if self.offset_rule is not None and other.offset_rule is not None:
            offset_rule = lambda d: op(self.offset_rule(d), other.offset_rule(d))
        return MaskPredicate(
            lambda i, j: op(self(i, j), other(i, j)),
            f"({self} {symbol} {other})",
            offset_rule,
            parts=(symbol, self, other),
        )

    def __and__(self, other):
        return self._combine(other, lambda a, b: a & b, "&")

    def __or__(self, other):
        return self._combine(other, lambda a, b: a | b, "|")

    def __invert__(self):
        offset_rule = None if self.offset_rule is None else (lambda d: ~self.offset_rule(d))
        return MaskPredicate(lambda i, j: ~self(i, j), f"~{self}", offset_rule, parts=("~", self))


def _offset_predicate(offset_rule, description: str) -> MaskPredicate:
    """A pattern that depends only on the offset ``d = i - j``."""
    return MaskPredicate(lambda i, j: offset_rule(i - j), description, offset_rule)


ALIGNMENTS = ("top_left", "bottom_right")


def _check_align(align) -> str:
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be 'top_left' or 'bottom_right'; got {align!r}")
    return align


def causal(align: str = "top_left", *, L: int | None = None, S: int | None = None) -> MaskPredicate:
    """Query ``i`` sees keys ``j <= i`` (no peeking at the future); with ``L != S``, where the diagonal sits.

    ``align="top_left"`` (torch's ``is_causal``): ``j <= i``, the diagonal starts
    at the first query and key. ``align="bottom_right"`` (torch's
    ``causal_lower_right``, FlashAttention): ``j <= i + (S - L)``, the diagonal
    ends at the last query and key, so the last query sees every key. That is
    what ``L`` new queries attending to ``S - L`` cached keys plus themselves
    need: query ``i`` is position ``S - L + i`` of the sequence. The shift
    depends on the sizes, so ``bottom_right`` needs ``L`` (queries) and ``S`` (keys).
    """
    align = _check_align(align)
    if align == "top_left":
        return _offset_predicate(lambda d: d >= 0, "causal()")
    if L is None or S is None:
        raise ValueError(
            "causal(align='bottom_right') shifts the diagonal by S - L: pass the numbers of queries and keys, "
            f"causal('bottom_right', L=..., S=...); got L={L!r}, S={S!r}"
        )
    L = check_int("L", L, minimum=1)
    S = check_int("S", S, minimum=1)
    shift = S - L  # query i is position i + shift of the keys' sequence
    return _offset_predicate(lambda d: d >= -shift, f"causal('bottom_right', L={L}, S={S})")


def sliding_window(window: int, causal: bool = False) -> MaskPredicate:
    """Query ``i`` sees keys with ``|i - j| <= window`` (only ``j <= i`` if ``causal``)."""
    window = check_int("window", window, minimum=0)
    causal = check_bool("causal", causal)
    if causal:
        return _offset_predicate(lambda d: (d >= 0) & (d <= window), f"sliding_window({window}, causal=True)")
    return _offset_predicate(lambda d: (d >= -window) & (d <= window), f"sliding_window({window})")


def dilated_window(window: int, dilation: int, causal: bool = False) -> MaskPredicate:
    """Longformer's dilated window: ``window`` keys on each side, ``dilation`` positions apart.

    Allowed: ``|i - j| <= window * dilation`` and ``(i - j) % dilation == 0``;
    ``dilation=1`` is the plain sliding window.
    """
    window = check_int("window", window, minimum=0)
    dilation = check_int("dilation", dilation, minimum=1)
    causal = check_bool("causal", causal)
    reach = window * dilation
    lowest = 0 if causal else -reach

    def rule(d):
        return (d >= lowest) & (d <= reach) & (d % dilation == 0)

    suffix = ", causal=True" if causal else ""
    return _offset_predicate(rule, f"dilated_window({window}, {dilation}{suffix})")


def strided(stride: int) -> MaskPredicate:
    """Sparse Transformer's strided pattern (Child et al. 2019), causal.

    Query ``i`` sees the previous ``stride`` positions (``i - j < stride``) and
    every ``stride``-th position before that (``(i - j) % stride == 0``).
    """
    stride = check_int("stride", stride, minimum=1)
    return _offset_predicate(lambda d: (d >= 0) & ((d < stride) | (d % stride == 0)), f"strided({stride})")


def fixed(block: int, c: int) -> MaskPredicate:
    """Sparse Transformer's fixed pattern (Child et al. 2019), causal.

    Query ``i`` sees its own block (``j // block == i // block``) and the last
    ``c`` positions of every block (``j % block >= block - c``), the "summary"
    cells through which information crosses blocks.
    """
    block = check_int("block", block, minimum=1)
    c = check_int("c", c, minimum=1)
    if c > block:
        raise ValueError(f"c (summary positions per block) must be <= block; got c={c}, block={block}")

    def summaries_below(x):  # how many positions j < x are summary cells (j % block >= block - c)
        return (x // block) * c + np.maximum(0, x % block - (block - c))

    def tile_rule(first_i, last_i, first_j, last_j):
        # own block: some pattern block holds both rows and columns of the tile, and a column <= a row
        shared_first = np.maximum(first_i // block, first_j // block)
        shared_last = np.minimum(last_i // block, last_j // block)
        own_block = (shared_first <= shared_last) & (first_j <= last_i)
        # summary cells: a summary column j with j <= last_i
        causal_last_j = np.minimum(last_j, last_i)
        summary = (causal_last_j >= first_j) & (summaries_below(causal_last_j + 1) > summaries_below(first_j))
        below_diagonal = last_j <= first_i
        one_block = (first_i // block == last_i // block) & (first_j // block == last_j // block)
        one_block &= first_i // block == first_j // block
        all_summary = summaries_below(last_j + 1) - summaries_below(first_j) == last_j - first_j + 1
        return own_block | summary, below_diagonal & (one_block | all_summary)

    return MaskPredicate(
        lambda i, j: (j <= i) & ((j // block == i // block) | (j % block >= block - c)),
        f"fixed({block}, {c})",
        tile_rule=tile_rule,
        every_exact=False,
    )


def _index_list(name: str, indices) -> np.ndarray:
    """Sorted unique non-negative token positions, as a NumPy int64 array."""
    if isinstance(indices, numbers.Integral) and not isinstance(indices, bool):
        indices = [indices]
    array = to_numpy(indices) if array_api_compat.is_array_api_obj(indices) else np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-d list of positions; got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer positions; got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must hold positions >= 0; got {array.tolist()}")
    return np.unique(array)


def _is_listed(positions, listed: np.ndarray):
    """Elementwise ``positions in listed``, in the namespace of ``positions``."""
    xp = get_namespace(positions)
    listed = xp.asarray(listed, device=array_api_compat.device(positions))
    if listed.shape[0] == 0:
        return xp.zeros(positions.shape, dtype=xp.bool)
    return xp.any(positions[..., None] == listed, axis=-1)


def global_tokens(global_idx) -> MaskPredicate:
    """Listed positions attend to every key and every query attends to them."""
    listed = _index_list("global_idx", global_idx)

    def tile_rule(first_i, last_i, first_j, last_j):
        listed_rows = np.searchsorted(listed, last_i, "right") - np.searchsorted(listed, first_i, "left")
        listed_cols = np.searchsorted(listed, last_j, "right") - np.searchsorted(listed, first_j, "left")
        some = (listed_rows > 0) | (listed_cols > 0)
        every = (listed_rows == last_i - first_i + 1) | (listed_cols == last_j - first_j + 1)
        return some, every

    return MaskPredicate(
        lambda i, j: _is_listed(i, listed) | _is_listed(j, listed),
        f"global_tokens({listed.tolist()})",
        tile_rule=tile_rule,
    )


def longformer(window: int, global_idx) -> MaskPredicate:
    """Longformer (Beltagy et al. 2020): a sliding window of ``window`` each side, plus global tokens."""
    return sliding_window(window) | global_tokens(global_idx)


def _bigbird_block_layout(
    num_blocks: int, num_window_blocks: int, num_global_blocks: int, num_random_blocks: int, seed
) -> np.ndarray:
    """BigBird's ``(num_blocks, num_blocks)`` block pattern as a NumPy boolean array."""
    rows = np.arange(num_blocks)[:, None]
    cols = np.arange(num_blocks)[None, :]
    layout = np.abs(rows - cols) <= num_window_blocks // 2  # window blocks around the diagonal
    layout[:num_global_blocks, :] = True  # global block rows see everything
    layout[:, :num_global_blocks] = True  # and everything sees them
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for row in range(num_global_blocks, num_blocks):
        candidates = np.flatnonzero(~layout[row])  # neither window nor global
        take = min(num_random_blocks, candidates.size)
        if take:
            layout[row, rng.choice(candidates, size=take, replace=False)] = True
    return layout


def bigbird(
    n: int, block: int, num_window_blocks: int, num_global_blocks: int, num_random_blocks: int, seed=0
) -> MaskPredicate:
    """BigBird's block pattern (Zaheer et al. 2020) for a sequence of ``n`` tokens.

    Tokens are grouped into blocks of ``block`` (the last may be shorter). Block
    row ``r`` sees:

    * the ``num_window_blocks`` blocks centred on the diagonal (odd: 3 = the block
      itself and one on each side);
    * the first ``num_global_blocks`` blocks, which in turn see everything;
    * ``num_random_blocks`` other blocks drawn at random (seeded) among those not
      already seen; fewer when fewer are left.

    Unlike the other predicates this one needs ``n``: the random blocks are
    drawn among the sequence's blocks.
    """
    n = check_int("n", n, minimum=1)
    block = check_int("block", block, minimum=1)
    num_window_blocks = check_int("num_window_blocks", num_window_blocks, minimum=1)
    if num_window_blocks % 2 == 0:
        raise ValueError(
            f"num_window_blocks must be odd (the diagonal block and as many on each side); got {num_window_blocks}"
        )
    num_global_blocks = check_int("num_global_blocks", num_global_blocks, minimum=0)
    num_random_blocks = check_int("num_random_blocks", num_random_blocks, minimum=0)
    num_blocks = math.ceil(n / block)
    if num_global_blocks > num_blocks:
        raise ValueError(
            f"num_global_blocks={num_global_blocks} exceeds the {num_blocks} blocks of n={n}, block={block}"
        )
    if not (seed is None or isinstance(seed, (numbers.Integral, np.random.Generator))):
        raise TypeError(f"seed must be an integer or a numpy.random.Generator; got {type(seed).__name__}")
    layout = _bigbird_block_layout(num_blocks, num_window_blocks, num_global_blocks, num_random_blocks, seed)

    def rule(i, j):
        xp = get_namespace(i, j)
        table = xp.asarray(layout, device=array_api_compat.device(i))
        return table[i // block, j // block]

    # allowed pattern blocks in the rectangle [0, a) x [0, b), for any a, b: a summed-area table
    allowed_below = np.zeros((num_blocks + 1, num_blocks + 1), dtype=np.int64)
    allowed_below[1:, 1:] = np.cumsum(np.cumsum(layout, axis=0), axis=1)

    def tile_rule(first_i, last_i, first_j, last_j):
        if np.max(last_i) >= n or np.max(last_j) >= n:
            raise ValueError(
                f"this bigbird pattern was drawn for n={n} positions; got positions up to "
                f"{int(np.max(last_i))} (queries) and {int(np.max(last_j))} (keys)"
            )
        top, bottom = first_i // block, last_i // block + 1  # pattern blocks [top, bottom) x [left, right)
        left, right = first_j // block, last_j // block + 1
        allowed = allowed_below[bottom, right] - allowed_below[top, right] - allowed_below[bottom, left]
        allowed = allowed + allowed_below[top, left]
        return allowed > 0, allowed == (bottom - top) * (right - left)

    description = (
        f"bigbird(n={n}, block={block}, {num_window_blocks}, {num_global_blocks}, {num_random_blocks}, seed={seed})"
    )
    return MaskPredicate(rule, description, tile_rule=tile_rule)


def _lengths_array(lengths, like):
    lengths = as_array("lengths", lengths)
    xp = get_namespace(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-d (one length per sequence in the batch); got shape {shape_of(lengths)}")
    if not xp.isdtype(lengths.dtype, "integral"):
        raise TypeError(f"lengths must hold integers; got dtype {dtype_name(lengths.dtype)}")
    if lengths.shape[0] and bool(xp.any(lengths < 0)):
        raise ValueError(f"lengths must be >= 0; got {lengths.tolist()}")
    if like is not None:
        xp_out, device = creation_namespace(like)
        lengths = xp_out.asarray(np.asarray(lengths.tolist(), dtype=np.int64), device=device)
    return lengths


def padding(lengths) -> MaskPredicate:
    """Keys ``j >= lengths[b]`` of sequence ``b`` are padding and may not be attended.

    ``mask_fn(i, j)`` returns shape ``(B, 1, ...)``: a batch axis and a head axis
    in front of the broadcast of ``i`` and ``j``.
    """
    lengths = _lengths_array(lengths, None)
    lengths_np = np.asarray(lengths.tolist(), dtype=np.int64)

    def rule(i, j):
        xp = get_namespace(i, j)
        per_batch = xp.asarray(lengths_np, device=array_api_compat.device(j))
        per_batch = xp.reshape(per_batch, (-1, 1) + (1,) * max(i.ndim, j.ndim))
        return (j < per_batch) & (i >= 0)

    return MaskPredicate(rule, f"padding({lengths_np.tolist()})")


# --------------------------------------------------------------------------- arrays


def materialize(mask_fn, L: int, S: int | None = None, *, like=None):
    """Evaluate ``mask_fn(i, j)`` on every query ``i < L`` and key ``j < S``: a boolean ``(..., L, S)`` array.

    ``S`` defaults to ``L``. ``like`` (an array, ``"numpy"`` or ``"cupy"``) picks
    the library of the result; NumPy by default.
    """
    if not callable(mask_fn):
        raise TypeError(f"mask_fn must be a predicate mask_fn(i, j), e.g. causal(); got {type(mask_fn).__name__}")
    L = check_int("L", L, minimum=1)
    S = L if S is None else check_int("S", S, minimum=1)
    xp, device = creation_namespace(like)
    i = xp.reshape(xp.arange(L, device=device), (L, 1))  # (L, 1)
    j = xp.reshape(xp.arange(S, device=device), (1, S))  # (1, S)
    allowed = mask_fn(i, j)
    if not array_api_compat.is_array_api_obj(allowed) or not xp.isdtype(allowed.dtype, "bool"):
        what = dtype_name(allowed.dtype) if hasattr(allowed, "dtype") else type(allowed).__name__
        raise TypeError(f"mask_fn must return booleans for index arrays i, j; got {what}")
    full = tuple(np.broadcast_shapes(shape_of(allowed), (L, S)))
    return allowed & xp.ones(full, dtype=xp.bool, device=device)  # (..., L, S), a fresh array


def _square_mask(n: int, predicate: MaskPredicate, like):
    """The ``(n, n)`` array form of a pattern."""
    n = check_int("n", n, minimum=1)
    return materialize(predicate, n, n, like=like)


def causal_mask(L: int, S: int | None = None, *, align: str = "top_left", like=None):
    """``(L, S)`` boolean (``S`` defaults to ``L``): the lower triangle including the diagonal.

    ``align="top_left"``: ``j <= i``; ``align="bottom_right"``: ``j <= i + (S - L)``, the
    last query sees every key (queries appended after ``S - L`` cached keys). The two agree when ``L == S``.
    """
    L = check_int("n" if S is None else "L", L, minimum=1)  # causal_mask(n): the square form's size is n
    S = L if S is None else check_int("S", S, minimum=1)
    predicate = causal(align) if _check_align(align) == "top_left" else causal(align, L=L, S=S)
    return materialize(predicate, L, S, like=like)


def padding_mask(lengths, n: int, *, like=None):
    """``(B, 1, 1, n)`` boolean: ``True`` for the first ``lengths[b]`` keys of sequence ``b``.

    Broadcasts against scores ``(B, H, L, n)``. ``lengths`` must be <= ``n``.
    """
    n = check_int("n", n, minimum=1)
    lengths = _lengths_array(lengths, like)
    if lengths.shape[0] and max(lengths.tolist()) > n:
        raise ValueError(f"lengths must be <= n={n}; got {lengths.tolist()}")
    if like is None and not isinstance(lengths, np.ndarray):
        like = lengths
    return materialize(padding(lengths), 1, n, like=like)  # (B, 1, 1, n)


def sliding_window_mask(n: int, window: int, causal: bool = False, *, like=None):
    """``(n, n)`` boolean: ``|i - j| <= window`` (and ``j <= i`` if ``causal``)."""
    return _square_mask(n, sliding_window(window, causal=causal), like)


def dilated_window_mask(n: int, window: int, dilation: int, causal: bool = False, *, like=None):
    """``(n, n)`` boolean: ``|i - j| <= window * dilation`` and ``(i - j) % dilation == 0``."""
    return _square_mask(n, dilated_window(window, dilation, causal=causal), like)


def strided_mask(n: int, stride: int, *, like=None):
    """``(n, n)`` boolean: Sparse Transformer strided, ``j <= i`` and (``i-j < stride`` or ``(i-j) % stride == 0``)."""
    return _square_mask(n, strided(stride), like)


def fixed_mask(n: int, block: int, c: int, *, like=None):
    """``(n, n)`` boolean: Sparse Transformer fixed, ``j <= i`` and (same block or ``j % block >= block - c``)."""
    return _square_mask(n, fixed(block, c), like)


def _check_positions_below(name: str, positions, n: int):
    listed = _index_list(name, positions)
    if listed.size and listed.max() >= n:
        raise ValueError(f"{name} must hold positions < n={n}; got {listed.tolist()}")


def global_mask(n: int, global_idx, *, like=None):
    """``(n, n)`` boolean: rows and columns of the listed positions are all True."""
    n = check_int("n", n, minimum=1)
    _check_positions_below("global_idx", global_idx, n)
    return _square_mask(n, global_tokens(global_idx), like)


def longformer_mask(n: int, window: int, global_idx, *, like=None):
    """``(n, n)`` boolean: sliding window ``|i - j| <= window`` or a global position."""
    n = check_int("n", n, minimum=1)
    _check_positions_below("global_idx", global_idx, n)
    return _square_mask(n, longformer(window, global_idx), like)


def bigbird_mask(
    n: int, block: int, num_window_blocks: int, num_global_blocks: int, num_random_blocks: int, seed=0, *, like=None
):
    """``(n, n)`` boolean: BigBird's window + global + random block pattern (see ``bigbird``)."""
    predicate = bigbird(n, block, num_window_blocks, num_global_blocks, num_random_blocks, seed=seed)
    return _square_mask(n, predicate, like)
