"""scaled_dot_product_attention against torch's F.scaled_dot_product_attention (float64)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attn_course import scaled_dot_product_attention as sdpa
from attn_course.backend import asarray, to_numpy
from tests.support import BACKENDS, FLOAT_DTYPES, assert_close, random_array, same_library, to_torch64

L, S, D, DV = 3, 5, 4, 6  # unique sizes: a transposed axis cannot pass by accident


def qkv(rng, batch=(), dtype=np.float32, backend="numpy", length=L, keys=S):
    return (
        random_array(rng, (*batch, length, D), dtype, backend),
        random_array(rng, (*batch, keys, D), dtype, backend),
        random_array(rng, (*batch, keys, DV), dtype, backend),
    )


def torch_reference(q, k, v, mask=None, **kwargs):
    mask_t = None if mask is None else torch.from_numpy(np.asarray(mask.tolist(), dtype=bool))
    return F.scaled_dot_product_attention(to_torch64(q), to_torch64(k), to_torch64(v), attn_mask=mask_t, **kwargs)


def random_mask(rng, shape):
    mask = rng.random(shape) < 0.5
    mask[..., 0] = True  # torch returns NaN for rows that see nothing; those are tested separately
    return mask


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch", [(), (2,), (2, 7)])
def test_matches_torch(rng, backend, dtype, batch):
    q, k, v = qkv(rng, batch, dtype, backend)
    out = sdpa(q, k, v)
    assert same_library(out, q)
    assert out.shape == (*batch, L, DV)
    assert_close(out, torch_reference(q, k, v), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_shape", [(L, S), (2, 1, L, S), (2, 7, L, S), (2, 7, 1, S)])
def test_boolean_mask_matches_torch(rng, backend, mask_shape):
    q, k, v = qkv(rng, (2, 7), np.float32, backend)
    mask = asarray(random_mask(rng, mask_shape), backend)
    assert_close(sdpa(q, k, v, mask), torch_reference(q, k, v, mask))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("length", "keys"), [(3, 5), (5, 3), (4, 4)])
def test_causal_matches_torch_top_left_aligned(rng, backend, length, keys):
    q, k, v = qkv(rng, (2,), np.float64, backend, length, keys)
    out = sdpa(q, k, v, is_causal=True)
    assert_close(out, torch_reference(q, k, v, is_causal=True))


def test_causal_and_mask_combine(rng):
    q, k, v = qkv(rng, (2,), np.float64)
    mask = random_mask(rng, (2, L, S))
    both = mask & np.tril(np.ones((L, S), dtype=bool))
    assert_close(sdpa(q, k, v, mask, is_causal=True), torch_reference(q, k, v, both))


@pytest.mark.parametrize("scale", [0.1, 2.0, -0.5])
def test_custom_scale(rng, scale):
    q, k, v = qkv(rng, (2,), np.float64)
    assert_close(sdpa(q, k, v, scale=scale), torch_reference(q, k, v, scale=scale))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_weights_are_softmax_of_scaled_scores(rng, dtype):
    q, k, v = qkv(rng, (2,), dtype)
    out, weights = sdpa(q, k, v, return_weights=True)
    scores = to_torch64(q) @ to_torch64(k).transpose(-1, -2) / math.sqrt(D)
    expected_weights = torch.softmax(scores, dim=-1)
    assert_close(weights, expected_weights, dtype, what="weights")
    # each output row is the weighted sum of the value rows
    assert_close(out, expected_weights @ to_torch64(v), dtype, what="output")


def test_leading_dimensions_broadcast(rng):
    q = rng.standard_normal((2, 1, L, D))
    k = rng.standard_normal((1, 7, S, D))
    v = rng.standard_normal((7, S, DV))
    out = sdpa(q, k, v)
    assert out.shape == (2, 7, L, DV)
    expected = torch_reference(
        np.broadcast_to(q, (2, 7, L, D)), np.broadcast_to(k, (2, 7, S, D)), np.broadcast_to(v, (2, 7, S, DV))
    )
    assert_close(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_give_zeros_not_nan(rng, backend):
    q, k, v = qkv(rng, (2,), np.float32, backend)
    mask_np = random_mask(rng, (2, L, S))
    mask_np[1, 2] = False  # query 2 of sequence 1 may attend to nothing
    out, weights = sdpa(q, k, v, asarray(mask_np, backend), return_weights=True)
    out, weights = to_numpy(out), to_numpy(weights)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[1, 2], np.zeros(DV))
    np.testing.assert_array_equal(weights[1, 2], np.zeros(S))
    ok = np.ones((2, L), dtype=bool)
    ok[1, 2] = False
    assert_close(out[ok], torch_reference(q, k, v, mask_np).numpy()[ok])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [300.0, -300.0], ids=["overflowing", "underflowing"])
def test_extreme_scores_take_the_stable_path(rng, size, dtype):
    # The NumPy path first computes exp(scores) without subtracting the row maximum and
    # checks each row's sum; rows whose scores are huge (exp overflows) or all very negative
    # (exp underflows) must be recomputed the stable way and still match torch.
    q, k, v = qkv(rng, (2,), dtype)
    q[0, :3] *= abs(size)  # a few rows with very large scores of both signs
    if size < 0:
        k = k.copy()
        q[1] = 0.0
        k[1] = -1.0
        q[1, :, 0] = abs(size)  # sequence 1: every score of every row is very negative
        k[1, :, 1:] = 0.0
    mask = random_mask(rng, (2, L, S))
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # the fast path must not leak warnings
        out = sdpa(q, k, v, mask)
    assert np.isfinite(out).all()
    assert_close(out, torch_reference(q, k, v, mask))


def test_torch_tensors_in_torch_tensors_out(rng):
    q, k, v = (torch.from_numpy(a) for a in qkv(rng, (2,), np.float32))
    out = sdpa(q, k, v, is_causal=True)
    assert isinstance(out, torch.Tensor)
    assert_close(out.numpy(), torch_reference(q.numpy(), k.numpy(), v.numpy(), is_causal=True))


def test_lists_are_accepted(rng):
    q, k, v = qkv(rng, (), np.float64)
    assert_close(sdpa(q.tolist(), k.tolist(), v.tolist()), torch_reference(q, k, v))


def bad_cases():
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, (2,), np.float32)
    ok_mask = np.ones((L, S), dtype=bool)
    return [
        ((q[0, 0], k, v), {}, ValueError, r"q must have at least 2 dimensions \(\.\.\., L, d\); got shape \(4,\)"),
        (
            (q, k[..., :3], v[..., :3]),
            {},
            ValueError,
            r"q and k must have the same feature size d.*q \(2, 3, 4\).*k \(2, 5, 3\)",
        ),
        ((q, k, v[:, :4]), {}, ValueError, r"k and v must have the same number of positions S.*v \(2, 4, 6\)"),
        ((q.astype(np.int64), k, v), {}, TypeError, "q must have a floating dtype"),
        (
            (q, k.astype(np.float64), v),
            {},
            TypeError,
            "q, k, v must share one floating dtype; got q float32, k float64",
        ),
        ((q, k, v), {"mask": np.ones((S, L), dtype=bool)}, ValueError, r"mask of shape \(5, 3\) does not broadcast"),
        ((q, k, v), {"mask": np.ones((4, L, S), dtype=bool)}, ValueError, r"mask of shape \(4, 3, 5\)"),
        ((q[0], k[0], v[0]), {"mask": np.ones((2, L, S), dtype=bool)}, ValueError, "mask of shape"),  # would enlarge
        ((q, k, v), {"mask": np.ones(S, dtype=bool)}, ValueError, "mask must have at least 2 dimensions"),
        ((q, k, v), {"mask": ok_mask.astype(np.float32)}, TypeError, "mask must be boolean"),
        ((q, k, v), {"is_causal": "yes"}, TypeError, "is_causal must be True or False"),
        ((q, k, v), {"scale": "0.5"}, TypeError, "scale must be a real number"),
        ((q, k, v), {"scale": math.inf}, ValueError, "scale must be finite"),
        ((q, k, v), {"return_weights": 1}, TypeError, "return_weights must be True or False"),
        ((np.full_like(q, np.nan), k, v), {}, ValueError, "q contains NaN"),
        (
            (q[:, None].repeat(3, 1), k[:, None].repeat(4, 1), v[:, None]),
            {},
            ValueError,
            r"batch\) dimensions do not broadcast",
        ),
        ((q, torch.from_numpy(k), v), {}, TypeError, "expected arrays of one library"),
        ((q[:, :0], k, v), {}, ValueError, "q has an empty sequence or feature axis"),
    ]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), bad_cases())
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        sdpa(*args, **kwargs)
