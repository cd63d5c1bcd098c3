"""linear_attention against its quadratic form, phi(Q) phi(K)^T normalised, in float64."""

import tracemalloc

import numpy as np
import pytest
import torch

from attn_course import linear_attention
from attn_course.backend import asarray, to_numpy
from attn_course.linear import CHUNK, elu_feature_map
from tests.support import BACKENDS, FLOAT_DTYPES, assert_close, random_array, same_library

D, DV = 4, 6  # unique feature sizes: a transposed axis cannot pass by accident


def qkv(rng, L, S, batch=(2,), dtype=np.float32, backend="numpy"):
    return (
        random_array(rng, (*batch, L, D), dtype, backend),
        random_array(rng, (*batch, S, D), dtype, backend),
        random_array(rng, (*batch, S, DV), dtype, backend),
    )


def elu_plus_one(x):
    """phi(x) = elu(x) + 1, from its definition."""
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def quadratic_form(q, k, v, causal=False, phi=elu_plus_one):
    """out = (A V) / (A 1) with A = phi(Q) phi(K)^T (lower-triangular if causal), in float64."""
    q, k, v = (np.asarray(to_numpy(x), dtype=np.float64) for x in (q, k, v))
    similarity = phi(q) @ np.swapaxes(phi(k), -1, -2)  # (..., L, S)
    if causal:
        similarity = similarity * np.tril(np.ones(similarity.shape[-2:]))
    totals = similarity.sum(axis=-1, keepdims=True)
    return (similarity @ v) / np.where(totals > 0, totals, 1.0)


SHAPES = [(37, 37), (29, 53), (53, 29), (1, 1), (2 * CHUNK + 5, 2 * CHUNK + 5), (CHUNK + 3, 2 * CHUNK + 1)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("L", "S"), SHAPES)
def test_matches_quadratic_form(rng, L, S, causal):
    q, k, v = qkv(rng, L, S)
    out = linear_attention(q, k, v, causal=causal)
    assert out.shape == (2, L, DV)
    assert_close(out, quadratic_form(q, k, v, causal))


def test_causal_rows_only_see_the_past(rng):
    q, k, v = qkv(rng, 40, 40)
    future = v.copy()
    future[:, 20:] += 5.0  # changing values at positions >= 20 ...
    before = to_numpy(linear_attention(q, k, v, causal=True))
    after = to_numpy(linear_attention(q, k, future, causal=True))
    np.testing.assert_array_equal(before[:, :20], after[:, :20])  # ... leaves the outputs before 20 alone
    assert not np.allclose(before[:, 20:], after[:, 20:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dtype_and_library_are_kept(rng, backend, dtype):
    q, k, v = qkv(rng, 37, 29, dtype=dtype, backend=backend)
    for causal in (False, True):
        out = linear_attention(q, k, v, causal=causal)
        assert same_library(out, q)
        assert_close(out, quadratic_form(q, k, v, causal), dtype)


def test_torch_tensors_and_broadcast_batch(rng):
    q = torch.from_numpy(random_array(rng, (2, 1, 21, D)))
    k = torch.from_numpy(random_array(rng, (1, 3, 17, D)))
    v = torch.from_numpy(random_array(rng, (3, 17, DV)))
    out = linear_attention(q, k, v, causal=True)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 21, DV)
    broadcast = [np.broadcast_to(x.numpy(), (2, 3, *x.shape[-2:])) for x in (q, k, v)]
    assert_close(out.numpy(), quadratic_form(*broadcast, causal=True))


def test_elu_feature_map_is_elu_plus_one_and_positive():
    x = np.linspace(-30, 30, 101)
    phi = elu_feature_map(x)
    expected = torch.nn.functional.elu(torch.from_numpy(x)).numpy() + 1
    np.testing.assert_allclose(phi, expected, rtol=1e-12, atol=1e-12)
    assert (phi > 0).all()


def test_custom_feature_map(rng):
    q, k, v = qkv(rng, 29, 31)
    squared = lambda x: x * x  # non-negative features
    out = linear_attention(q, k, v, feature_map=squared)
    assert_close(out, quadratic_form(q, k, v, phi=lambda x: x * x))


def test_large_inputs_stay_finite(rng):
    q, k, v = qkv(rng, 50, 50)
    out = linear_attention(q * 30, k * 30, v, causal=True)
    assert np.isfinite(out).all()
    assert_close(out, quadratic_form(q * 30, k * 30, v, causal=True))


def test_causal_memory_is_linear_in_length(rng):
    L, d = 16_384, 16
    q, k, v = (random_array(rng, (L, d)) for _ in range(3))
    linear_attention(q[:300], k[:300], v[:300], causal=True)  # warm up
    tracemalloc.start()
    try:
        out = linear_attention(q, k, v, causal=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < L * d * d * 4, f"peak {peak / 2**20:.1f} MiB exceeds O(L d^2)"
    assert peak < L * L * 4 / 50, (
        f"peak {peak / 2**20:.1f} MiB: the (L, L) similarities would be {L * L * 4 / 2**20} MiB"
    )
    rows = np.array([0, 5000, L - 1])
    expected = [quadratic_form(q[None, row], k[: row + 1], v[: row + 1])[0] for row in rows]
    assert_close(out[rows], np.stack(expected))


def bad_cases():
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng, 5, 7)
    return [
        ((q, k[..., :3], v), {}, ValueError, "q and k must have the same feature size"),
        ((q, k, v[:, :4]), {}, ValueError, "k and v must have the same number of positions"),
        ((q.astype(np.int16), k, v), {}, TypeError, "q must have a floating dtype"),
        ((q, k, v), {"causal": "yes"}, TypeError, "causal must be True or False"),
        ((q, k, v), {"feature_map": "softmax"}, ValueError, "feature_map must be 'elu'"),
        ((q, k, v), {"feature_map": 3}, TypeError, "feature_map must be 'elu' or a callable"),
        ((q, k, v), {"feature_map": lambda x: x}, ValueError, "feature_map must return finite features >= 0"),
        ((q, k, v), {"feature_map": lambda x: x[..., :2]}, ValueError, r"feature_map must keep the shape of q"),
        ((np.full_like(q, np.inf), k, v), {}, ValueError, "q contains NaN or infinite"),
        ((q, asarray(k, "numpy").tolist(), torch.from_numpy(v)), {}, TypeError, "expected arrays of one library"),
    ]


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), bad_cases())
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        linear_attention(*args, **kwargs)
