"""The backward pass: attention_backward and tiled_attention_backward against torch autograd in float64.

The reference is torch's autograd of ``F.scaled_dot_product_attention`` on
float64 copies of the inputs, computed here at test time; ``tiled_attention``'s
``return_lse`` is checked against a float64 ``logsumexp`` of the masked scores.
"""

import contextlib
import math
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attn_course import attention_backward, fast, masks, tiled_attention, tiled_attention_backward
from attn_course.backend import to_numpy
from tests.dense_reference import dense_mask
from tests.support import assert_close, random_array, same_library, to_torch64

D, DV = 4, 6  # unique feature sizes: a transposed axis cannot pass by accident
PATHS = ["fast", "reference"]  # the forward that gives tiled_attention_backward its out and lse


def path_context(path):
    return fast.disabled() if path == "reference" else contextlib.nullcontext()


def combined_mask(mask, is_causal, batch, L, S):
    """The allowed pairs (*batch, L, S) as a NumPy boolean array: the mask AND causal."""
    allowed = np.ones((*batch, L, S), dtype=bool)
    if mask is not None:
        allowed = allowed & dense_mask(mask, L, S)
    if is_causal:
        allowed = allowed & (np.arange(S)[None, :] <= np.arange(L)[:, None])
    return allowed


def torch_gradients(q, k, v, grad_out, mask=None, *, is_causal=False, scale=None):
    """dq, dk, dv by torch autograd of ``F.scaled_dot_product_attention`` in float64 (NumPy arrays).

    A row that may attend to nothing has no defined softmax in torch; it contributes
    nothing (its grad_out is set to zero and its mask opened), so its expected dq is zero.
    """
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    L, S = q.shape[-2], k.shape[-2]
    allowed = combined_mask(mask, is_causal, batch, L, S)
    empty = ~allowed.any(axis=-1)  # (*batch, L)
    allowed[empty] = True
    grad_out = np.where(empty[..., None], 0.0, to_numpy(grad_out).astype(np.float64))
    tensors = [to_torch64(x).requires_grad_(True) for x in (q, k, v)]
    out = F.scaled_dot_product_attention(*tensors, attn_mask=torch.from_numpy(allowed), scale=scale)
    out.backward(torch.from_numpy(grad_out))
    return tuple(t.grad.numpy() for t in tensors)


def inputs(rng, L, S, q_batch=(2, 3), kv_batch=(2, 3), dtype=np.float64):
    q = random_array(rng, (*q_batch, L, D), dtype)
    k = random_array(rng, (*kv_batch, S, D), dtype)
    v = random_array(rng, (*kv_batch, S, DV), dtype)
    batch = np.broadcast_shapes(q_batch, kv_batch)
    grad_out = random_array(rng, (*batch, L, DV), dtype)
    return q, k, v, grad_out


def random_mask(L, S, shape=(2, 1)):
    mask = np.random.default_rng(7).random((*shape, L, S)) < 0.4
    mask[..., 1, :] = False  # query 1 may attend to nothing
    return mask


def tiled_gradients(q, k, v, grad_out, mask=None, *, is_causal=False, scale=None, block_size=3):
    out, lse = tiled_attention(q, k, v, mask, is_causal=is_causal, scale=scale, block_size=block_size, return_lse=True)
    return tiled_attention_backward(
        q, k, v, out, lse, grad_out, mask, is_causal=is_causal, scale=scale, block_size=block_size
    )


BACKWARDS = {
    "textbook": lambda q, k, v, g, mask=None, **kw: attention_backward(q, k, v, g, mask, **kw),
    "tiled": tiled_gradients,
}

# (name, L, S, q_batch, kv_batch, make_mask(L, S), is_causal, scale)
CASES = [
    ("no mask", 5, 7, (2, 3), (2, 3), None, False, None),
    ("boolean mask", 5, 7, (2, 3), (2, 3), random_mask, False, None),
    ("causal", 9, 9, (2, 3), (2, 3), None, True, None),
    ("causal and mask", 9, 11, (2, 3), (2, 3), random_mask, True, None),
    ("custom scale", 5, 7, (2, 3), (2, 3), None, False, 0.3),
    ("L > S", 11, 4, (2, 3), (2, 3), None, False, None),
    ("L < S causal", 4, 11, (2, 3), (2, 3), None, True, None),
    ("k, v shared by the heads", 5, 7, (2, 3), (2, 1), None, False, None),
    ("k, v shared by everything", 5, 7, (2, 3), (), random_mask, True, None),
    ("q broadcast over the batch", 5, 7, (1, 3), (2, 3), None, False, None),
]


@pytest.mark.parametrize("which", list(BACKWARDS))
@pytest.mark.parametrize("case", CASES, ids=lambda case: case[0])
def test_matches_torch_autograd_in_float64(rng, which, case):
    _, L, S, q_batch, kv_batch, make_mask, is_causal, scale = case
    q, k, v, grad_out = inputs(rng, L, S, q_batch, kv_batch)
    mask = None if make_mask is None else make_mask(L, S)
    expected = torch_gradients(q, k, v, grad_out, mask, is_causal=is_causal, scale=scale)
    got = BACKWARDS[which](q, k, v, grad_out, mask, is_causal=is_causal, scale=scale)
    for name, actual, want, x in zip(("dq", "dk", "dv"), got, expected, (q, k, v), strict=True):
        assert actual.shape == x.shape, f"{name}: shape {actual.shape}, the input's is {x.shape}"
        assert_close(actual, want, np.float64, what=name)


@pytest.mark.parametrize("which", list(BACKWARDS))
def test_fully_masked_rows_get_zero_gradients_not_nan(rng, which):
    L, S = 5, 7
    q, k, v, grad_out = inputs(rng, L, S)
    mask = np.ones((L, S), dtype=bool)
    mask[[0, 3]] = False  # queries 0 and 3 may attend to nothing
    dq, dk, dv = BACKWARDS[which](q, k, v, grad_out, mask)
    for name, grad in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert np.isfinite(grad).all(), f"{name} has NaN or inf"
    assert np.all(dq[..., [0, 3], :] == 0)
    expected = torch_gradients(q, k, v, grad_out, mask)
    for name, actual, want in zip(("dq", "dk", "dv"), (dq, dk, dv), expected, strict=True):
        assert_close(actual, want, np.float64, what=name)


@pytest.mark.parametrize("which", list(BACKWARDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_lower_precision_keeps_dtype_within_tolerance(rng, which, dtype):
    q, k, v, grad_out = inputs(rng, 9, 11, dtype=dtype)
    mask = random_mask(9, 11)
    expected = torch_gradients(q, k, v, grad_out, mask, is_causal=True)  # float64 of the same (rounded) inputs
    got = BACKWARDS[which](q, k, v, grad_out, mask, is_causal=True)
    for name, actual, want in zip(("dq", "dk", "dv"), got, expected, strict=True):
        assert_close(actual, want, dtype, what=name)


TILED_CASES = [
    ("none", None, False),
    ("causal", None, True),
    ("sliding window predicate", masks.sliding_window(9), False),
    ("causal window predicate", masks.sliding_window(7, causal=True), False),
    ("longformer and causal", masks.longformer(4, [0, 50]), True),
    ("array", "array", False),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("L", "S", "block_size"), [(100, 130, 32), (130, 100, 16), (64, 64, 64)])
@pytest.mark.parametrize("case", TILED_CASES, ids=lambda case: case[0])
def test_tiled_equals_textbook_over_several_tiles(rng, case, L, S, block_size, path):
    _, mask, is_causal = case
    q, k, v, grad_out = inputs(rng, L, S, (2, 2), (2, 1), dtype=np.float32)
    if isinstance(mask, str):
        mask = np.random.default_rng(3).random((2, 1, L, S)) < 0.2
    with path_context(path):
        out, lse = tiled_attention(q, k, v, mask, is_causal=is_causal, block_size=block_size, return_lse=True)
        tiled = tiled_attention_backward(q, k, v, out, lse, grad_out, mask, is_causal=is_causal, block_size=block_size)
    textbook = attention_backward(q, k, v, grad_out, dense_mask(mask, L, S), is_causal=is_causal)
    q64, k64, v64, g64 = (x.astype(np.float64) for x in (q, k, v, grad_out))
    expected = attention_backward(q64, k64, v64, g64, dense_mask(mask, L, S), is_causal=is_causal)
    for name, t, b, want in zip(("dq", "dk", "dv"), tiled, textbook, expected, strict=True):
        assert_close(t, want, np.float32, what=f"tiled {name}")
        assert_close(b, want, np.float32, what=f"textbook {name}")


def float64_lse(q, k, mask, is_causal, scale=None):
    """log sum_j exp(s_ij) of the scaled, masked scores, in float64 (torch.logsumexp); -inf for empty rows."""
    L, S = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = to_torch64(q) @ to_torch64(k).transpose(-1, -2) * scale  # (..., L, S)
    allowed = combined_mask(mask, is_causal, scores.shape[:-2], L, S)
    scores = scores.masked_fill(~torch.from_numpy(allowed), -math.inf)
    return torch.logsumexp(scores, dim=-1).numpy()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("mask", "is_causal", "scale"),
    [(None, False, None), (None, True, 0.5), ("array", False, None), (masks.sliding_window(5), True, None)],
)
def test_return_lse_matches_float64_logsumexp(rng, path, mask, is_causal, scale):
    L, S = 37, 53
    q, k, v, _ = inputs(rng, L, S, (2,), (2,), dtype=np.float32)
    if isinstance(mask, str):
        mask = random_mask(L, S, (2,))
    with path_context(path):
        out, lse = tiled_attention(q, k, v, mask, is_causal=is_causal, scale=scale, block_size=16, return_lse=True)
        plain = tiled_attention(q, k, v, mask, is_causal=is_causal, scale=scale, block_size=16)
    expected = float64_lse(q, k, mask, is_causal, scale)
    assert lse.shape == (2, L) and lse.dtype == np.float32
    assert np.array_equal(np.isneginf(lse), np.isneginf(expected)), "-inf exactly where a row may attend to nothing"
    finite = np.isfinite(expected)
    assert_close(lse[finite], expected[finite], np.float32, what="lse")
    assert np.array_equal(out, plain), "return_lse changes the output"


@pytest.mark.parametrize("path", PATHS)
def test_return_lse_of_rows_the_fast_path_redoes(path):
    """Scores so large that exp overflows: the fast path redoes those rows the stable way, lse included."""
    rng = np.random.default_rng(5)
    q = 40 * random_array(rng, (3, 20, D), np.float32)
    k = 40 * random_array(rng, (3, 30, D), np.float32)
    v = random_array(rng, (3, 30, DV), np.float32)
    with path_context(path):
        _, lse = tiled_attention(q, k, v, block_size=8, return_lse=True)
    assert_close(lse, float64_lse(q, k, None, False), np.float32, what="lse")


def test_float16_gives_float32_lse(rng):
    q, k, v, _ = inputs(rng, 5, 7, (2,), (2,), dtype=np.float16)
    out, lse = tiled_attention(q, k, v, return_lse=True)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    np.testing.assert_allclose(lse, float64_lse(q, k, None, False), rtol=1e-5, atol=1e-5)


def test_torch_tensors_in_torch_tensors_out(rng):
    """The array API: the reference code runs on torch tensors as they are."""
    q, k, v, grad_out = (torch.from_numpy(x) for x in inputs(rng, 5, 7))
    expected = torch_gradients(q.numpy(), k.numpy(), v.numpy(), grad_out.numpy(), is_causal=True)
    out, lse = tiled_attention(q, k, v, is_causal=True, block_size=2, return_lse=True)
    for got in (
        attention_backward(q, k, v, grad_out, is_causal=True),
        tiled_attention_backward(q, k, v, out, lse, grad_out, is_causal=True, block_size=2),
    ):
        for actual, want in zip(got, expected, strict=True):
            assert same_library(actual, q)
            assert_close(actual, want, np.float64)


def test_tiled_backward_never_builds_the_scores():
    L = S = 2048
    rng = np.random.default_rng(0)
    q, k, v, grad_out = (random_array(rng, (L, n), np.float32) for n in (D, D, DV, DV))
    out, lse = tiled_attention(q, k, v, is_causal=True, return_lse=True)
    score_bytes = L * S * 4
    tracemalloc.start()
    try:
        grads = tiled_attention_backward(q, k, v, out, lse, grad_out, is_causal=True, block_size=128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < score_bytes / 20, f"peak {peak / 2**20:.1f} MiB vs {score_bytes / 2**20:.0f} MiB of scores"
    rows = slice(0, 300)  # the textbook backward on a prefix: causal rows see only keys before them
    expected = attention_backward(
        *(x[rows].astype(np.float64) for x in (q, k, v, grad_out)), is_causal=True
    )  # fmt: skip
    assert_close(grads[0][rows], expected[0], np.float32, what="dq")


def bad_cases():
    rng = np.random.default_rng(0)
    _, k, v, grad_out = inputs(rng, 5, 7, (2,), (2,), dtype=np.float32)
    nan_grad = grad_out.copy()
    nan_grad[0, 0, 0] = np.nan
    return [
        ("grad_out wrong shape", {"grad_out": grad_out[..., :4]}, ValueError, "grad_out"),
        ("grad_out wrong dtype", {"grad_out": grad_out.astype(np.float64)}, TypeError, "grad_out"),
        ("grad_out NaN", {"grad_out": nan_grad}, ValueError, "grad_out"),
        ("grad_out missing", {"grad_out": None}, TypeError, "grad_out"),
        ("q and k feature sizes", {"k": k[..., :3]}, ValueError, "q and k"),
        ("k and v lengths", {"v": v[:, :6]}, ValueError, "k and v"),
        ("integer q", {"q": np.ones((2, 5, D), dtype=np.int64)}, TypeError, "q must have a floating dtype"),
        ("mask shape", {"mask": np.ones((5, 8), dtype=bool)}, ValueError, "mask of shape"),
        ("float mask", {"mask": np.zeros((5, 7))}, TypeError, "mask must be boolean"),
        ("is_causal not a bool", {"is_causal": 1}, TypeError, "is_causal"),
        ("scale not a number", {"scale": "half"}, TypeError, "scale"),
    ]


TILED_ONLY = [
    ("out wrong shape", {"out": np.zeros((2, 5, 5), dtype=np.float32)}, ValueError, "out must have the shape"),
    ("lse wrong shape", {"lse": np.zeros((2, 7), dtype=np.float32)}, ValueError, "lse must have one value"),
    ("lse NaN", {"lse": np.full((2, 5), np.nan, dtype=np.float32)}, ValueError, "lse contains"),
    ("block_size zero", {"block_size": 0}, ValueError, "block_size"),
]


def call_backward(which, args):
    args = dict(args)
    if which == "textbook":
        for name in ("out", "lse", "block_size"):
            args.pop(name, None)
        return attention_backward(**args)
    return tiled_attention_backward(**args)


@pytest.mark.parametrize("which", list(BACKWARDS))
@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case[0])
def test_bad_input_names_the_argument(which, case):
    _, change, error, words = case
    rng = np.random.default_rng(0)
    q, k, v, grad_out = inputs(rng, 5, 7, (2,), (2,), dtype=np.float32)
    out, lse = tiled_attention(q, k, v, return_lse=True)
    args = {"q": q, "k": k, "v": v, "out": out, "lse": lse, "grad_out": grad_out, **change}
    with pytest.raises(error, match=words):
        call_backward(which, args)


@pytest.mark.parametrize("case", TILED_ONLY, ids=lambda case: case[0])
def test_bad_input_of_the_tiled_backward(case):
    _, change, error, words = case
    rng = np.random.default_rng(0)
    q, k, v, grad_out = inputs(rng, 5, 7, (2,), (2,), dtype=np.float32)
    out, lse = tiled_attention(q, k, v, return_lse=True)
    args = {"q": q, "k": k, "v": v, "out": out, "lse": lse, "grad_out": grad_out, **change}
    with pytest.raises(error, match=words):
        tiled_attention_backward(**args)


def test_return_lse_must_be_a_bool(rng):
    q, k, v, _ = inputs(rng, 5, 7, (2,), (2,), dtype=np.float32)
    with pytest.raises(TypeError, match="return_lse"):
        tiled_attention(q, k, v, return_lse="yes")
