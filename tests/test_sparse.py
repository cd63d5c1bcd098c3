"""block_sparse_attention and sparse_attention against dense masked attention in float64."""

import math
import tracemalloc

import numpy as np
import pytest
import torch

from attn_course import block_sparse_attention, masks, sparse_attention
from attn_course.backend import asarray, to_numpy
from tests.dense_reference import dense_attention64
from tests.support import BACKENDS, assert_close, random_array, same_library

D, DV = 4, 6  # unique feature sizes: a transposed axis cannot pass by accident
SHAPES = [(37, 37), (29, 53), (53, 29)]  # odd lengths, L != S both ways
BLOCK_SIZES = [3, 8, 64]  # 64 > L: a single block


def qkv(rng, L, S, batch=(2, 3), dtype=np.float32, backend="numpy"):
    return (
        random_array(rng, (*batch, L, D), dtype, backend),
        random_array(rng, (*batch, S, D), dtype, backend),
        random_array(rng, (*batch, S, DV), dtype, backend),
    )


def same_for_all_lengths(mask):
    return lambda L, S: mask


def random_mask(L, S):
    mask = np.random.default_rng(3).random((2, 1, L, S)) < 0.2
    mask[1, 0, 4] = False  # a query that may attend to nothing
    return mask


# (name, make_mask(L, S) -> a predicate or an array); each is also run in its array form
PATTERNS = [
    ("sliding window", same_for_all_lengths(masks.sliding_window(5))),
    ("sliding window causal", same_for_all_lengths(masks.sliding_window(6, causal=True))),
    ("dilated", same_for_all_lengths(masks.dilated_window(3, 3))),
    ("strided", same_for_all_lengths(masks.strided(5))),
    ("fixed", same_for_all_lengths(masks.fixed(8, 2))),
    ("causal", same_for_all_lengths(masks.causal())),
    ("global", same_for_all_lengths(masks.global_tokens([1, 20]))),
    ("longformer", same_for_all_lengths(masks.longformer(2, [0, 17]))),
    ("bigbird", lambda L, S: masks.bigbird(max(L, S), 4, 3, 1, 2, seed=1)),
    ("not longformer", same_for_all_lengths(~masks.longformer(2, [0, 17]))),
    ("window and fixed", same_for_all_lengths(masks.sliding_window(9) & masks.fixed(8, 2))),
    ("padding", same_for_all_lengths(masks.padding([11, 25]))),
    ("plain callable", same_for_all_lengths(lambda i, j: (i * j) % 7 == 1)),
    ("random batched array", random_mask),
]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize(("L", "S"), SHAPES)
@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda pattern: pattern[0])
def test_sparse_attention_matches_dense(rng, pattern, L, S, block_size):
    _, make_mask = pattern
    mask = make_mask(L, S)
    q, k, v = qkv(rng, L, S)
    expected = dense_attention64(q, k, v, mask)
    assert_close(sparse_attention(q, k, v, mask, block_size=block_size), expected, what="predicate mask")
    if callable(mask) and block_size == 8:  # the array form of the same pattern
        array = masks.materialize(mask, L, S)
        assert_close(sparse_attention(q, k, v, array, block_size=block_size), expected, what="array mask")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["predicate", "array"])
def test_same_library_out(rng, backend, form):
    q, k, v = qkv(rng, 45, 45, batch=(2, 3), backend=backend)
    predicate = masks.longformer(3, [5]) | masks.strided(9)
    mask = predicate if form == "predicate" else asarray(masks.materialize(predicate, 45, 45), backend)
    out = sparse_attention(q, k, v, mask, block_size=8)
    assert same_library(out, q)
    assert_close(out, dense_attention64(q, k, v, predicate))


def test_torch_tensors_in_torch_tensors_out(rng):
    q, k, v = (torch.from_numpy(x) for x in qkv(rng, 29, 53))
    for mask in (masks.fixed(8, 3), torch.from_numpy(masks.materialize(masks.fixed(8, 3), 29, 53))):
        out = sparse_attention(q, k, v, mask, block_size=8)
        assert isinstance(out, torch.Tensor)
        assert_close(out.numpy(), dense_attention64(q.numpy(), k.numpy(), v.numpy(), masks.fixed(8, 3)))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dtype_is_kept(rng, dtype):
    q, k, v = qkv(rng, 37, 29, dtype=dtype)
    out = sparse_attention(q, k, v, masks.sliding_window(4), block_size=8)
    assert out.dtype == dtype
    assert_close(out, dense_attention64(q, k, v, masks.sliding_window(4)), dtype)


def layout_as_mask(layout, block_size, L, S):
    """The element mask that a block layout stands for: every pair of a marked block."""
    return np.kron(layout, np.ones((block_size, block_size), dtype=bool))[:L, :S]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize(("L", "S"), SHAPES)
def test_full_layout_reproduces_dense(rng, L, S, block_size):
    q, k, v = qkv(rng, L, S)
    layout = np.ones((math.ceil(L / block_size), math.ceil(S / block_size)), dtype=bool)
    assert_close(block_sparse_attention(q, k, v, layout, block_size), dense_attention64(q, k, v))


@pytest.mark.parametrize("density", [0.1, 0.5])
@pytest.mark.parametrize("block_size", [3, 8])
@pytest.mark.parametrize(("L", "S"), SHAPES)
def test_random_layouts_with_and_without_an_element_mask(rng, L, S, block_size, density):
    q, k, v = qkv(rng, L, S)
    layout = np.random.default_rng(block_size).random((math.ceil(L / block_size), math.ceil(S / block_size)))
    layout = layout < density
    layout[1] = False  # a block row with nothing to attend to: zeros
    blocks = layout_as_mask(layout, block_size, L, S)
    out = block_sparse_attention(q, k, v, layout, block_size)
    assert_close(out, dense_attention64(q, k, v, blocks))
    np.testing.assert_array_equal(to_numpy(out)[..., block_size : 2 * block_size, :], 0.0)
    window = masks.sliding_window(6)
    expected = dense_attention64(q, k, v, blocks & masks.materialize(window, L, S))
    assert_close(block_sparse_attention(q, k, v, layout, block_size, window), expected)
    array, scale = random_mask(L, S), 0.5 / math.sqrt(D)
    expected = dense_attention64(q, k, v, blocks & array, scale=scale)
    assert_close(block_sparse_attention(q, k, v, layout, block_size, mask=array, scale=scale), expected)


def test_fully_masked_rows_give_zeros(rng):
    q, k, v = qkv(rng, 37, 29)
    mask = random_mask(37, 29)
    out = to_numpy(sparse_attention(q, k, v, mask, block_size=8))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[1, :, 4], 0.0)
    out = to_numpy(sparse_attention(q, k, v, masks.global_tokens([]), block_size=8))  # allows nothing
    np.testing.assert_array_equal(out, 0.0)


def traced_peak(function, *args, **kwargs):
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_sliding_window_at_65536_positions_never_builds_the_full_mask(rng):
    L, d, window = 65_536, 16, 64
    q, k, v = (random_array(rng, (L, d)) for _ in range(3))
    sparse_attention(q[:512], k[:512], v[:512], masks.sliding_window(window))  # warm up: thread pool, BLAS
    out, peak = traced_peak(sparse_attention, q, k, v, masks.sliding_window(window), block_size=64)
    full_bytes = L * L  # one byte per pair: the (L, S) boolean mask alone
    assert peak < full_bytes / 200, f"peak {peak / 2**20:.1f} MiB; the (L, S) mask is {full_bytes / 2**20:.0f} MiB"
    # proportional to L: a quarter of the sequence takes about a quarter of the memory (not a sixteenth or all)
    quarter = L // 4
    _, quarter_peak = traced_peak(sparse_attention, q[:quarter], k[:quarter], v[:quarter], masks.sliding_window(window))
    assert 2 < peak / quarter_peak < 6, f"peak {peak} bytes at L={L}, {quarter_peak} at L={quarter}"
    for row in (0, 1, 31_000, L - 1):  # spot checks against the row's own window
        keys = np.arange(max(0, row - window), min(L, row + window + 1))
        expected = dense_attention64(q[row : row + 1], k[keys], v[keys])
        assert_close(out[row : row + 1], expected)


@pytest.mark.parametrize(
    "predicate",
    [masks.longformer(256, [0, 5000]), masks.fixed(128, 16), masks.bigbird(65_536, 64, 3, 1, 2)],
    ids=repr,
)
def test_layouts_of_long_patterns_are_found_without_visiting_pairs(predicate):
    n, block = 65_536, 64
    tracemalloc.start()
    try:
        cover = masks.block_cover(predicate, block, n, n)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cover.some.shape == (n // block, n // block)
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    rows = np.arange(4096, 4096 + block)[:, None]  # one block row, checked pair by pair
    allowed = np.broadcast_to(predicate(rows, np.arange(n)[None, :]), (block, n))
    np.testing.assert_array_equal(cover.some[64], allowed.reshape(block, n // block, block).any(axis=(0, 2)))


COVER_PREDICATES = [
    masks.global_tokens([0, 7, 8]),
    masks.longformer(2, [3]),
    masks.fixed(4, 1),
    masks.fixed(5, 2),
    masks.bigbird(23, 4, 3, 1, 1, seed=2),
    ~masks.global_tokens([1, 2, 3]),
    ~masks.longformer(1, [2]),
]


@pytest.mark.parametrize(("L", "S"), [(13, 13), (23, 11), (5, 19)])
@pytest.mark.parametrize("block", [1, 2, 3, 7])
@pytest.mark.parametrize("predicate", COVER_PREDICATES, ids=repr)
def test_block_cover_of_tile_rules_matches_the_pairs(predicate, L, S, block):
    mask = masks.materialize(predicate, L, S)
    rows, cols = math.ceil(L / block), math.ceil(S / block)
    padded_any = np.zeros((rows * block, cols * block), dtype=bool)
    padded_all = np.ones_like(padded_any)
    padded_any[:L, :S] = padded_all[:L, :S] = mask
    some = padded_any.reshape(rows, block, cols, block).any(axis=(1, 3))
    every = padded_all.reshape(rows, block, cols, block).all(axis=(1, 3))
    cover = masks.block_cover(predicate, block, L, S)
    np.testing.assert_array_equal(cover.some, some)
    assert not (cover.every & ~every).any(), "a tile marked entirely allowed holds a forbidden pair"
    if cover.every_exact:
        np.testing.assert_array_equal(cover.every, every)
    np.testing.assert_array_equal(masks.block_layout(predicate, block, L, S), some)


def bad_cases():
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, 10, 7)
    layout = np.ones((3, 2), dtype=bool)  # block_size 4: ceil(10 / 4) x ceil(7 / 4)
    return [
        (block_sparse_attention, (q, k, v, layout[:2], 4), {}, ValueError, r"layout of shape \(2, 2\) does not match"),
        (block_sparse_attention, (q, k, v, layout, 3), {}, ValueError, r"expected .* = \(4, 3\)"),
        (block_sparse_attention, (q, k, v, layout.astype(int), 4), {}, TypeError, "layout must be boolean"),
        (
            block_sparse_attention,
            (q, k, v, layout[None], 4),
            {},
            ValueError,
            r"layout must be 2-d .* shape \(1, 3, 2\)",
        ),
        (block_sparse_attention, (q, k, v, None, 4), {}, TypeError, "layout must be a boolean array"),
        (block_sparse_attention, (q, k, v, layout, 0), {}, ValueError, "block_size must be >= 1"),
        (block_sparse_attention, (q, k, v, layout, 4.0), {}, TypeError, "block_size must be an integer"),
        (block_sparse_attention, (q, k, v, layout, 4), {"mask": np.ones((7, 10), bool)}, ValueError, "mask of shape"),
        (block_sparse_attention, (q, k, v, layout, 4), {"scale": "2"}, TypeError, "scale must be a real number"),
        (block_sparse_attention, (q, k[..., :2], v, layout, 4), {}, ValueError, "q and k must have the same feature"),
        (sparse_attention, (q, k, v, None), {}, TypeError, "mask must be a boolean array"),
        (sparse_attention, (q, k, v, np.ones((10, 7), dtype=np.int8)), {}, TypeError, "mask must be boolean"),
        (sparse_attention, (q, k, v, np.ones((7, 10), dtype=bool)), {}, ValueError, r"mask of shape \(7, 10\)"),
        (sparse_attention, (q, k, v, masks.causal()), {"block_size": -2}, ValueError, "block_size must be >= 1"),
        (sparse_attention, (q, k, v, lambda i, j: i + j), {}, TypeError, "mask predicate must return booleans"),
        (sparse_attention, (q.astype(np.int64), k, v, masks.causal()), {}, TypeError, "q must have a floating dtype"),
        (sparse_attention, (q, k, v[..., :3, :], masks.causal()), {}, ValueError, "k and v must have the same number"),
    ]


@pytest.mark.parametrize(("function", "args", "kwargs", "error", "match"), bad_cases())
def test_bad_input(function, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        function(*args, **kwargs)
