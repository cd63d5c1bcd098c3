"""scaled_dot_product_attention against torch's F.scaled_dot_product_attention (float64)."""

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attn_course import fast
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


# --------------------------------------------------------------------------- bias and grouped-query heads (round 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias_shape", [(L, S), (2, 1, L, S), (2, 7, L, S), (7, 1, S)])
def test_bias_matches_torch_float_mask(rng, backend, dtype, bias_shape):
    q, k, v = qkv(rng, (2, 7), dtype, backend)
    bias = asarray(rng.standard_normal(bias_shape).astype(dtype), backend)
    expected = F.scaled_dot_product_attention(to_torch64(q), to_torch64(k), to_torch64(v), attn_mask=to_torch64(bias))
    assert_close(sdpa(q, k, v, bias=bias), expected, dtype)


def test_bias_with_minus_infinity_forbids_pairs_like_a_mask(rng):
    q, k, v = qkv(rng, (2,), np.float64)
    mask = random_mask(rng, (L, S))
    bias = rng.standard_normal((L, S))
    additive = np.where(mask, bias, -np.inf)
    expected = F.scaled_dot_product_attention(
        to_torch64(q), to_torch64(k), to_torch64(v), attn_mask=to_torch64(additive)
    )
    assert_close(sdpa(q, k, v, bias=additive), expected)
    assert_close(sdpa(q, k, v, mask, bias=bias), expected)  # the same pairs forbidden by the boolean mask
    out, weights = sdpa(q, k, v, bias=np.full((L, S), -np.inf), return_weights=True)
    assert np.all(out == 0) and np.all(weights == 0)  # rows that may see nothing: zeros, never NaN


def test_bias_combines_with_causal_and_weights(rng):
    q, k, v = qkv(rng, (3,), np.float64)
    bias = rng.standard_normal((3, L, S))
    out, weights = sdpa(q, k, v, bias=bias, is_causal=True, return_weights=True)
    causal = torch.ones(L, S, dtype=torch.bool).tril()
    additive = torch.from_numpy(bias).masked_fill(~causal, -math.inf)
    expected = F.scaled_dot_product_attention(to_torch64(q), to_torch64(k), to_torch64(v), attn_mask=additive)
    assert_close(out, expected)
    assert np.all(weights[..., ~causal.numpy()] == 0)


GQA_SHAPES = [(6, 3), (6, 2), (6, 1), (4, 4)]  # (query heads, key/value heads): GQA, GQA, MQA, MHA


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("query_heads", "kv_heads"), GQA_SHAPES)
@pytest.mark.parametrize("reference_path", [False, True])
def test_gqa_matches_torch_enable_gqa(rng, backend, query_heads, kv_heads, reference_path):
    q = random_array(rng, (2, query_heads, L, D), np.float32, backend)
    k = random_array(rng, (2, kv_heads, S, D), np.float32, backend)
    v = random_array(rng, (2, kv_heads, S, DV), np.float32, backend)
    expected = F.scaled_dot_product_attention(to_torch64(q), to_torch64(k), to_torch64(v), enable_gqa=True)
    with fast.disabled() if reference_path else contextlib.nullcontext():
        out = sdpa(q, k, v, enable_gqa=True)
    assert same_library(out, q)
    assert_close(out, expected, np.float32)


@pytest.mark.parametrize(("query_heads", "kv_heads"), GQA_SHAPES)
def test_gqa_with_mask_bias_causal_and_weights_matches_torch(rng, query_heads, kv_heads):
    q = rng.standard_normal((2, query_heads, L, D))
    k, v = rng.standard_normal((2, kv_heads, S, D)), rng.standard_normal((2, kv_heads, S, DV))
    mask = random_mask(rng, (2, query_heads, L, S))
    bias = rng.standard_normal((query_heads, L, S))
    additive = torch.from_numpy(bias).masked_fill(~torch.from_numpy(mask), -math.inf)
    expected = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), attn_mask=additive, enable_gqa=True)
    out, weights = sdpa(q, k, v, mask, bias=bias, enable_gqa=True, return_weights=True)
    assert_close(out, expected)
    assert weights.shape == (2, query_heads, L, S)
    # query head h reads key/value head h // g: its weights equal those of plain attention on that head
    group = query_heads // kv_heads
    for h in range(query_heads):
        _, head_weights = sdpa(q[:, h], k[:, h // group], v[:, h // group], mask[:, h], bias=bias[h],
                               return_weights=True)  # fmt: skip
        assert_close(weights[:, h], head_weights)
    causal = sdpa(q, k, v, is_causal=True, enable_gqa=True)
    expected = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=True, enable_gqa=True)
    assert_close(causal, expected)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "kwargs", "error", "match"),
    [
        ((2, 6, L, D), (2, 4, S, D), {"enable_gqa": True}, ValueError, r"multiple of the key/value heads.*6.*4"),
        ((2, 6, L, D), (2, 3, S, D), {}, ValueError, r"6 heads.*has 3.*pass enable_gqa=True"),
        ((L, D), (S, D), {"enable_gqa": True}, ValueError, r"enable_gqa needs a head axis: q"),
        ((2, 4, L, D), (2, 2, S, D), {"enable_gqa": 1}, TypeError, "enable_gqa must be True or False"),
        ((2, L, D), (2, S, D), {"bias": np.zeros((L, S), dtype=bool)}, TypeError, "bias must be a float array"),
        ((2, L, D), (2, S, D), {"bias": np.zeros((S, L))}, ValueError, r"bias of shape \(5, 3\) does not broadcast"),
        ((2, L, D), (2, S, D), {"bias": np.zeros((3, L, S))}, ValueError, r"bias of shape \(3, 3, 5\)"),
        ((2, L, D), (2, S, D), {"bias": np.full((L, S), np.nan)}, ValueError, "bias contains NaN"),
    ],
)
def test_bias_and_gqa_refuse_bad_input(rng, q_shape, k_shape, kwargs, error, match):
    q = rng.standard_normal(q_shape)
    k = rng.standard_normal(k_shape)
    v = rng.standard_normal((*k_shape[:-1], DV))
    with pytest.raises(error, match=match):
        sdpa(q, k, v, **kwargs)
