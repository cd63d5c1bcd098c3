"""additive_attention against Bahdanau's formula written out pair by pair in float64."""

import math

import numpy as np
import pytest
import torch

from attn_course import additive_attention
from attn_course.backend import asarray, to_numpy
from tests.support import BACKENDS, FLOAT_DTYPES, assert_close, random_array, same_library

L, S, D_Q, D_K, DV, A = 3, 5, 4, 7, 6, 2  # unique sizes


def inputs(rng, batch=(), dtype=np.float32, backend="numpy"):
    return {
        "query": random_array(rng, (*batch, L, D_Q), dtype, backend),
        "keys": random_array(rng, (*batch, S, D_K), dtype, backend),
        "values": random_array(rng, (*batch, S, DV), dtype, backend),
        "W_q": random_array(rng, (D_Q, A), dtype, backend),
        "W_k": random_array(rng, (D_K, A), dtype, backend),
        "w": random_array(rng, (A,), dtype, backend),
    }


def reference(query, keys, values, W_q, W_k, w, mask=None):
    """score[i, j] = w . tanh(W_q^T q_i + W_k^T k_j), one pair at a time, then softmax and weighted sum."""
    query, keys, values, W_q, W_k, w = (
        torch.from_numpy(to_numpy(a).astype(np.float64)) for a in (query, keys, values, W_q, W_k, w)
    )
    batch = query.shape[:-2]
    scores = torch.empty((*batch, L, S), dtype=torch.float64)
    for index in np.ndindex(*batch):
        for i in range(L):
            for j in range(S):
                scores[(*index, i, j)] = w @ torch.tanh(W_q.T @ query[(*index, i)] + W_k.T @ keys[(*index, j)])
    if mask is not None:
        scores = scores.masked_fill(~torch.from_numpy(to_numpy(mask)), -math.inf)
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch", [(), (2,)])
def test_matches_formula(rng, backend, dtype, batch):
    args = inputs(rng, batch, dtype, backend)
    out, weights = additive_attention(**args, return_weights=True)
    assert same_library(out, args["query"])
    expected_out, expected_weights = reference(**args)
    assert_close(out, expected_out, dtype, what="output")
    assert_close(weights, expected_weights, dtype, what="weights")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_and_fully_masked_row(rng, backend):
    args = inputs(rng, (2,), np.float64, backend)
    mask = rng.random((2, L, S)) < 0.5
    mask[..., 0] = True
    out = additive_attention(**args, mask=asarray(mask, backend))
    assert_close(out, reference(**args, mask=mask)[0])
    mask[0, 1] = False
    out = to_numpy(additive_attention(**args, mask=asarray(mask, backend)))
    np.testing.assert_array_equal(out[0, 1], np.zeros(DV))
    assert not np.isnan(out).any()


def bad_cases():
    good = inputs(np.random.default_rng(0))
    cases = [
        ({"W_q": np.ones((D_Q + 1, A), np.float32)}, ValueError, "query's last axis must equal W_q's first"),
        ({"W_k": good["W_k"][:, :1]}, ValueError, "W_q, W_k and w must share the attention size a"),
        ({"w": good["w"][None]}, ValueError, r"expected W_q \(d_q, a\), W_k \(d_k, a\) and w \(a,\)"),
        ({"keys": good["keys"][:, :3]}, ValueError, "keys' last axis must equal W_k's first"),
        ({"values": good["values"][:4]}, ValueError, "keys and values must have the same number of positions S"),
        ({"query": good["query"].astype(np.int32)}, TypeError, "query must have a floating dtype"),
        ({"W_q": good["W_q"].astype(np.float64)}, TypeError, "W_q must have the dtype of query"),
        ({"query": good["query"][0]}, ValueError, "query must have at least 2 dimensions"),
        ({"mask": np.ones((S, L), dtype=bool)}, ValueError, r"mask of shape \(5, 3\)"),
        ({"mask": np.ones((L, S))}, TypeError, "mask must be boolean"),
        ({"w": np.full(A, np.nan, dtype=np.float32)}, ValueError, "w contains NaN"),
    ]
    return [({**good, **change}, error, match) for change, error, match in cases]


@pytest.mark.parametrize(("kwargs", "error", "match"), bad_cases())
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        additive_attention(**kwargs)
