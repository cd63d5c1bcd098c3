"""tiled_attention (online softmax over key tiles) against dense masked attention in float64."""

import math
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attn_course import masks, tiled_attention
from attn_course.backend import asarray, to_numpy
from tests.dense_reference import dense_attention64
from tests.support import BACKENDS, assert_close, random_array, same_library, to_torch64

D, DV = 4, 6  # unique feature sizes: a transposed axis cannot pass by accident
SHAPES = [(37, 37), (29, 53), (53, 29)]  # odd lengths, L != S both ways
BLOCK_SIZES = [3, 16, 128]  # 128 > L: one tile


def qkv(rng, L, S, batch=(2,), dtype=np.float32, backend="numpy"):
    return (
        random_array(rng, (*batch, L, D), dtype, backend),
        random_array(rng, (*batch, S, D), dtype, backend),
        random_array(rng, (*batch, S, DV), dtype, backend),
    )


def random_mask(L, S, batch=(2,)):
    mask = np.random.default_rng(7).random((*batch, L, S)) < 0.3
    mask[..., 0, :] = False  # the first query of every sequence may attend to nothing
    return mask


def same_for_all_lengths(mask):
    return lambda L, S: mask


# (name, make_mask(L, S) -> the mask argument, is_causal)
CASES = [
    ("none", same_for_all_lengths(None), False),
    ("causal", same_for_all_lengths(None), True),
    ("causal predicate", same_for_all_lengths(masks.causal()), False),
    ("sliding window predicate", same_for_all_lengths(masks.sliding_window(5)), False),
    ("sliding window array", lambda L, S: masks.materialize(masks.sliding_window(5), L, S), False),
    ("sliding window causal", same_for_all_lengths(masks.sliding_window(4, causal=True)), False),
    ("dilated", same_for_all_lengths(masks.dilated_window(3, 2)), False),
    ("strided", same_for_all_lengths(masks.strided(4)), False),
    ("fixed", same_for_all_lengths(masks.fixed(8, 2)), False),
    ("longformer", same_for_all_lengths(masks.longformer(3, [0, 10])), False),
    ("longformer and causal", same_for_all_lengths(masks.longformer(3, [0, 10])), True),
    ("bigbird", lambda L, S: masks.bigbird(max(L, S), 4, 3, 1, 2, seed=3), False),
    ("random array", random_mask, False),
    ("random array and causal", lambda L, S: random_mask(L, S, ()), True),
    ("plain callable", same_for_all_lengths(lambda i, j: (i + 2 * j) % 5 != 0), False),
]


def test_reference_agrees_with_torch(rng):
    q, k, v = qkv(rng, 29, 53, batch=(2, 3))
    mask = random_mask(29, 53, batch=(2, 1))
    mask[..., 0, :] = True  # torch gives NaN where nothing is allowed
    mask_t = torch.from_numpy(mask)
    for kwargs in ({}, {"is_causal": True}, {"scale": 0.7}):
        expected = F.scaled_dot_product_attention(to_torch64(q), to_torch64(k), to_torch64(v), **kwargs)
        assert_close(dense_attention64(q, k, v, **kwargs), expected, np.float64)
    expected = F.scaled_dot_product_attention(to_torch64(q), to_torch64(k), to_torch64(v), attn_mask=mask_t)
    assert_close(dense_attention64(q, k, v, mask), expected, np.float64)


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize(("L", "S"), SHAPES)
@pytest.mark.parametrize("case", CASES, ids=lambda case: case[0])
def test_matches_dense_masked_attention(rng, case, L, S, block_size):
    _, make_mask, is_causal = case
    mask = make_mask(L, S)
    q, k, v = qkv(rng, L, S)
    out = tiled_attention(q, k, v, mask, is_causal=is_causal, block_size=block_size)
    assert_close(out, dense_attention64(q, k, v, mask, is_causal=is_causal))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["array", "predicate"])
def test_same_library_out_and_mask_kinds(rng, backend, mask_kind):
    q, k, v = qkv(rng, 41, 23, batch=(2, 3), backend=backend)
    predicate = masks.sliding_window(6) | masks.global_tokens([2])
    mask = asarray(masks.materialize(predicate, 41, 23), backend) if mask_kind == "array" else predicate
    out = tiled_attention(q, k, v, mask, is_causal=True, block_size=8)
    assert same_library(out, q)
    assert_close(out, dense_attention64(q, k, v, predicate, is_causal=True))


def test_torch_tensors_in_torch_tensors_out(rng):
    q, k, v = (torch.from_numpy(x) for x in qkv(rng, 19, 31))
    mask = torch.from_numpy(random_mask(19, 31))
    out = tiled_attention(q, k, v, mask, block_size=8)
    assert isinstance(out, torch.Tensor)
    assert_close(out.numpy(), dense_attention64(q.numpy(), k.numpy(), v.numpy(), mask.numpy()))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_dtype_is_kept(rng, dtype):
    q, k, v = qkv(rng, 37, 29, dtype=dtype)
    out = tiled_attention(q, k, v, masks.strided(3), block_size=8)
    assert out.dtype == dtype
    assert_close(out, dense_attention64(q, k, v, masks.strided(3)), dtype)


def test_leading_dimensions_broadcast_and_custom_scale(rng):
    q = random_array(rng, (2, 1, 21, D))
    k = random_array(rng, (1, 3, 17, D))
    v = random_array(rng, (3, 17, DV))
    mask = np.random.default_rng(1).random((3, 1, 17)) < 0.7  # one key mask per head
    out = tiled_attention(q, k, v, mask, block_size=5, scale=0.3)
    assert out.shape == (2, 3, 21, DV)
    broadcast = [np.broadcast_to(x, (2, 3, *x.shape[-2:])) for x in (q, k, v)]
    assert_close(out, dense_attention64(*broadcast, mask, scale=0.3))


def test_fully_masked_rows_give_zeros(rng):
    q, k, v = qkv(rng, 37, 29)
    mask = random_mask(37, 29)
    mask[1, 5] = False
    for mask_argument in (mask, lambda i, j: (j > i + 40) & (i >= 0)):  # the predicate allows nothing
        out = to_numpy(tiled_attention(q, k, v, mask_argument, block_size=8))
        assert not np.isnan(out).any()
        allowed = np.broadcast_to(mask if mask_argument is mask else np.zeros((37, 29), bool), (2, 37, 29))
        nothing = ~allowed.any(axis=-1)
        assert nothing.any()
        np.testing.assert_array_equal(out[nothing], 0.0)


def test_large_scores_do_not_overflow(rng):
    q, k, v = qkv(rng, 33, 45)
    q *= 40.0  # scores of several hundred: exp would overflow without the running maximum
    assert_close(tiled_attention(q, k, v, block_size=7), dense_attention64(q, k, v))


def test_peak_memory_is_far_below_the_score_matrix(rng):
    L = S = 4096
    q, k, v = qkv(rng, L, S, batch=(), dtype=np.float32)
    q, k, v = q[..., :16], k[..., :16], v[..., :16]  # d = 16 keeps the test quick
    q, k, v = (np.ascontiguousarray(x) for x in (q, k, v))
    tiled_attention(q[:256], k[:256], v[:256], block_size=128)  # warm up: thread pool, BLAS buffers
    score_bytes = L * S * 4
    tracemalloc.start()
    try:
        out = tiled_attention(q, k, v, is_causal=True, block_size=128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < score_bytes / 20, f"peak {peak / 2**20:.1f} MiB vs {score_bytes / 2**20:.0f} MiB of scores"
    rows = np.array([0, 1, 2047, 4095])
    expected = dense_attention64(q[rows], k, v, np.arange(S)[None, :] <= rows[:, None])
    assert_close(out[rows], expected)


def bad_cases():
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, 5, 7)
    return [
        ((q, k[..., :3], v), {}, ValueError, "q and k must have the same feature size"),
        ((q.astype(np.int32), k, v), {}, TypeError, "q must have a floating dtype"),
        ((q, k, v), {"block_size": 0}, ValueError, "block_size must be >= 1"),
        ((q, k, v), {"block_size": 2.5}, TypeError, "block_size must be an integer"),
        ((q, k, v), {"mask": np.ones((7, 5), dtype=bool)}, ValueError, r"mask of shape \(7, 5\) does not broadcast"),
        ((q, k, v), {"mask": np.ones((5, 7), dtype=np.float32)}, TypeError, "mask must be boolean"),
        ((q, k, v), {"mask": lambda i, j: i - j}, TypeError, "mask predicate must return booleans"),
        ((q, k, v), {"mask": lambda i: i > 0}, TypeError, r"mask is callable, so it must be a predicate"),
        ((q, k, v), {"mask": masks.padding([3, 4, 5])}, ValueError, r"mask predicate returns shape \(3, 1, 1, 1\)"),
        ((q, k, v), {"is_causal": 1}, TypeError, "is_causal must be True or False"),
        ((q, k, v), {"scale": math.nan}, ValueError, "scale must be finite"),
        ((q, torch.from_numpy(k), v), {}, TypeError, "expected arrays of one library"),
    ]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), bad_cases())
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        tiled_attention(*args, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [300.0, -300.0], ids=["overflowing", "underflowing"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_extreme_scores_take_the_stable_path(rng, size, dtype, is_causal):
    # The NumPy path accumulates exp(s) without a running maximum and checks each row's sum:
    # rows with huge scores (exp overflows) or only very negative ones (exp underflows) must be
    # computed again with the stable online softmax and still equal dense attention.
    q, k, v = qkv(rng, 37, 53, dtype=dtype)
    q[0, :5] *= abs(size)  # a few rows with scores of both signs, far beyond exp's range
    if size < 0:  # sequence 1: every score of every row is about -300
        q[1], k[1] = 0.0, 0.0
        q[1, :, 0], k[1, :, 0] = abs(size), -1.0
    mask = random_mask(37, 53)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # and no warnings leak out
        out = tiled_attention(q, k, v, mask, is_causal=is_causal, block_size=16)
    assert np.isfinite(out).all()
    assert_close(out, dense_attention64(q, k, v, mask, is_causal=is_causal))
