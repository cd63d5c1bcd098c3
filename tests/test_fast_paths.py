"""The reference path and the CPU fast path of every public function, at sizes that reach every fast branch.

Each public function reads as its lesson's algorithm and hands NumPy inputs to
``attn_course.fast`` by one dispatch line. Here both paths run on the same
inputs, against the float64 formula: several blocks of query rows, threads
(one and two), the causal diagonal cut, causal together with a mask, masks as
arrays and predicates, masks that differ per head, tiles with nothing allowed,
and rows whose softmax overflows or underflows without the max subtraction.
"""

from __future__ import annotations

import numpy as np
import pytest

from attn_course import (
    block_sparse_attention,
    fast,
    masks,
    scaled_dot_product_attention,
    sparse_attention,
    tiled_attention,
)
from attn_course.fast import dense as fast_dense
from attn_course.fast.threads import THREADS_ENV_VAR
from tests.dense_reference import dense_attention64
from tests.support import assert_close, random_array

# B=2, H=1, L=1100, S=1300: 2.9 M (query, key) pairs, above the threshold where the fast paths use threads;
# a dense row block holds 2 MiB / (4 bytes * 1300) = 403 rows, so L spans three blocks, the last one partial.
B, L, S, D, DV = 2, 1100, 1300, 24, 20


@pytest.fixture(autouse=True)
def fast_paths_on(monkeypatch):
    """These tests compare the two paths, so the fast one must be on even under ``ATTN_COURSE_FAST=0 make test``."""
    monkeypatch.delenv(fast.ENV_VAR, raising=False)


@pytest.fixture(params=["1", "2"], ids=["one thread", "two threads"])
def threads(request, monkeypatch):
    monkeypatch.setenv(THREADS_ENV_VAR, request.param)
    return int(request.param)


def both_paths(function, *args, **kwargs):
    """(fast result, reference result) of one call; the fast path must be the one taken by default."""
    assert fast.enabled(), "the fast paths must be on by default (is ATTN_COURSE_FAST=0 set?)"
    fast_out = function(*args, **kwargs)
    with fast.disabled():
        assert not fast.enabled()
        reference_out = function(*args, **kwargs)
    assert fast.enabled()
    return fast_out, reference_out


def check_both(function, args, kwargs, expected):
    fast_out, reference_out = both_paths(function, *args, **kwargs)
    assert fast_out.dtype == reference_out.dtype == args[0].dtype
    assert_close(fast_out, expected, what="fast path")
    assert_close(reference_out, expected, what="reference path")


@pytest.fixture
def qkv(rng):
    return random_array(rng, (B, 1, L, D)), random_array(rng, (1, S, D)), random_array(rng, (B, 1, S, DV))


def test_dense_row_blocks_span_the_queries():
    rows = fast_dense.rows_per_block(S)
    assert rows < L < 3 * rows, "the shapes of this file must reach several dense row blocks"


# masks that differ per batch element: a random (B, 1, L, S) array with a few rows that allow nothing
def random_batch_mask(rng):
    mask = rng.random((B, 1, L, S)) < 0.6
    mask[0, 0, 7] = False  # a row that may attend to nothing
    return mask


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("mask_kind", ["none", "array", "batch array"])
def test_dense_attention_fast_and_reference_agree(rng, qkv, is_causal, mask_kind):
    mask = {"none": None, "array": rng.random((L, S)) < 0.5, "batch array": random_batch_mask(rng)}[mask_kind]
    expected = dense_attention64(*qkv, mask, is_causal=is_causal)
    check_both(scaled_dot_product_attention, qkv, {"mask": mask, "is_causal": is_causal}, expected)


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("mask_kind", ["none", "array", "batch array", "window predicate", "longformer predicate"])
def test_tiled_attention_fast_and_reference_agree(rng, qkv, is_causal, mask_kind):
    mask = {
        "none": None,
        "array": rng.random((L, S)) < 0.5,
        "batch array": random_batch_mask(rng),
        "window predicate": masks.sliding_window(150),  # whole tiles outside the band: skipped or all-masked
        "longformer predicate": masks.longformer(40, [0, 333, 1099]),
    }[mask_kind]
    expected = dense_attention64(*qkv, mask, is_causal=is_causal)
    check_both(tiled_attention, qkv, {"mask": mask, "is_causal": is_causal, "block_size": 64}, expected)


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize(
    "pattern",
    [masks.sliding_window(100), masks.sliding_window(60) | masks.global_tokens([5, 700]), masks.fixed(128, 16)],
    ids=["window", "window or global", "fixed"],
)
def test_sparse_attention_fast_and_reference_agree(qkv, pattern):
    expected = dense_attention64(*qkv, pattern)
    check_both(sparse_attention, qkv, {"mask": pattern, "block_size": 64}, expected)


@pytest.mark.usefixtures("threads")
def test_block_sparse_attention_with_gathered_blocks_and_a_batch_mask(rng, qkv):
    block = 100
    layout = rng.random((-(-L // block), -(-S // block))) < 0.4  # scattered blocks: keys gathered, not sliced
    layout[:, 0] = True
    mask = random_batch_mask(rng)
    layout_mask = np.kron(layout, np.ones((block, block), dtype=bool))[:L, :S]
    expected = dense_attention64(*qkv, mask & layout_mask)
    check_both(block_sparse_attention, (*qkv, layout, block), {"mask": mask}, expected)


def extreme_rows(rng):
    """Queries whose scores overflow exp() in float32 (row 3), underflow to denormals (row 5), or are mixed."""
    q, k, v = random_array(rng, (2, 300, 16)), random_array(rng, (2, 700, 16)), random_array(rng, (2, 700, 8))
    q[:, 3] *= 60.0  # scores of several hundred: exp overflows without the max subtraction
    q[:, 5] = -q[:, 5] * 0 - 30.0  # every score strongly negative: exp underflows towards zero
    k[:, :, :] += 1.0
    return q, k, v


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_rows_that_overflow_or_underflow_are_redone(rng, is_causal):
    q, k, v = extreme_rows(rng)
    expected = dense_attention64(q, k, v, is_causal=is_causal)
    with np.errstate(over="raise", under="ignore", invalid="raise"):
        check_both(scaled_dot_product_attention, (q, k, v), {"is_causal": is_causal}, expected)
        check_both(tiled_attention, (q, k, v), {"is_causal": is_causal, "block_size": 64}, expected)
    window = masks.sliding_window(90)
    check_both(sparse_attention, (q, k, v), {"mask": window}, dense_attention64(q, k, v, window))


def test_small_unmasked_problems_take_every_head_at_once(rng, monkeypatch):
    """A decoding step (one query per head, a few hundred keys): one batched product, rows out of range redone."""
    q, k, v = random_array(rng, (3, 5, 1, 16)), random_array(rng, (3, 5, 230, 16)), random_array(rng, (3, 5, 230, 12))
    taken = []
    batched = fast_dense.all_at_once
    monkeypatch.setattr(fast_dense, "all_at_once", lambda *args: taken.append(batched(*args)) or taken[-1])
    check_both(scaled_dot_product_attention, (q, k, v), {}, dense_attention64(q, k, v))
    assert taken == [True]
    q[1, 2] *= 80.0  # this head's scores overflow exp() without the max: the row-block path redoes the row
    with np.errstate(over="raise", under="ignore", invalid="raise"):
        check_both(scaled_dot_product_attention, (q, k, v), {}, dense_attention64(q, k, v))
    assert taken == [True, False]


def test_float16_and_float64_keep_their_dtype_on_both_paths(rng):
    for dtype in (np.float16, np.float64):
        q, k, v = (random_array(rng, shape, dtype) for shape in ((2, 200, 16), (2, 260, 16), (2, 260, 8)))
        expected = dense_attention64(q, k, v, is_causal=True)
        check_both(scaled_dot_product_attention, (q, k, v), {"is_causal": True}, expected)
        check_both(tiled_attention, (q, k, v), {"is_causal": True, "block_size": 32}, expected)


def test_the_switch_reads_the_environment(monkeypatch):
    monkeypatch.setenv(fast.ENV_VAR, "0")
    assert not fast.enabled()
    monkeypatch.setenv(fast.ENV_VAR, "1")
    assert fast.enabled()
    monkeypatch.setenv(fast.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="ATTN_COURSE_FAST"):
        fast.enabled()


def test_disabled_takes_the_reference_code(monkeypatch, rng):
    calls = []
    monkeypatch.setattr(fast_dense, "dense_attention", lambda *args: calls.append(args) or 1 / 0)
    q, k, v = (random_array(rng, (4, 6)) for _ in range(3))
    with fast.disabled():
        scaled_dot_product_attention(q, k, v)  # the reference code: the patched fast path is never called
    assert calls == []
    with pytest.raises(ZeroDivisionError):
        scaled_dot_product_attention(q, k, v)  # outside the block the fast path is taken again
    assert len(calls) == 1


def backward64(q, k, v, grad_out, mask=None, is_causal=False):
    """The gradients of sum(grad_out * attention) from torch's autograd in float64: (dq, dk, dv)."""
    import torch
    import torch.nn.functional as F

    tensors = [torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True) for x in (q, k, v)]
    L_, S_ = q.shape[-2], k.shape[-2]
    allowed = np.ones((L_, S_), dtype=bool) if mask is None else np.asarray(mask)
    if is_causal:  # torch takes is_causal or a mask, not both
        allowed = allowed & np.tril(np.ones((L_, S_), dtype=bool))
    out = F.scaled_dot_product_attention(*tensors, attn_mask=torch.tensor(allowed))
    out.backward(torch.tensor(np.asarray(grad_out, dtype=np.float64)))
    return tuple(t.grad.numpy() for t in tensors)


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("mask_kind", ["none", "batch array"])
def test_attention_backward_fast_and_reference_agree(rng, is_causal, mask_kind):
    from attn_course import attention_backward

    # q (2, 3, L, d) with k, v shared by the 3 heads (1, S, d): dk, dv are summed over the heads
    L_, S_ = 700, 900  # 700 query rows span two blocks of (R, S) scores of 2 MiB
    q = random_array(rng, (2, 3, L_, D))
    k, v = random_array(rng, (1, S_, D)), random_array(rng, (1, S_, DV))
    grad_out = random_array(rng, (2, 3, L_, DV))
    mask = None
    if mask_kind == "batch array":
        mask = rng.random((2, 1, L_, S_)) < 0.7
        mask[0, 0, 5] = False  # a row that may attend to nothing: zero gradients
    expected = backward64(q, k, v, grad_out, None if mask is None else np.broadcast_to(mask, (2, 3, L_, S_)), is_causal)
    if mask is not None:
        for grad in expected:  # torch gives NaN for a row with nothing allowed; the package gives zeros
            np.nan_to_num(grad, copy=False)
    assert fast_dense.rows_per_block(S_) < L_
    fast_grads, reference_grads = both_paths(attention_backward, q, k, v, grad_out, mask, is_causal=is_causal)
    for fast_grad, reference_grad, want, name in zip(fast_grads, reference_grads, expected, "qkv", strict=True):
        assert fast_grad.shape == reference_grad.shape == want.shape, name
        assert_close(fast_grad, want, what=f"d{name}, fast path")
        assert_close(reference_grad, want, what=f"d{name}, reference path")
