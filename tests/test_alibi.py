"""ALiBi: slopes from the paper's rule, biases against a float64 loop, and attention with them against torch."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attn_course import alibi_bias, alibi_slopes, scaled_dot_product_attention
from attn_course.backend import asarray, to_numpy
from tests.support import BACKENDS, assert_close, same_library


def slopes_by_the_paper(n):
    """Press et al.: for a power of two, start = ratio = 2^(-8/n); otherwise the closest power of two
    below, then every other slope of twice that many heads, until there are n."""
    if math.log2(n).is_integer():
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))  # 2^(-8/n), written as the paper's code writes it
        return [start * start**i for i in range(n)]
    closest = 2 ** math.floor(math.log2(n))
    return slopes_by_the_paper(closest) + slopes_by_the_paper(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("num_heads", range(1, 17))
def test_slopes_follow_the_papers_rule(num_heads):
    slopes = alibi_slopes(num_heads)
    assert slopes.shape == (num_heads,) and slopes.dtype == np.float64
    np.testing.assert_allclose(slopes, slopes_by_the_paper(num_heads), rtol=1e-15)
    assert len(set(slopes.tolist())) == num_heads  # every head its own slope
    assert np.all((slopes > 0) & (slopes < 1))


def test_eight_heads_are_halves():
    np.testing.assert_array_equal(alibi_slopes(8), [2.0**-h for h in range(1, 9)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_bias_is_minus_slope_times_distance(backend, dtype):
    query_positions = asarray(np.array([4, 5, 6]), backend)  # L = 3 new queries after 4 cached keys
    key_positions = asarray(np.arange(7), backend)  # S = 7
    bias = alibi_bias(5, query_positions, key_positions, dtype=dtype)
    assert same_library(bias, query_positions)
    slopes = slopes_by_the_paper(5)
    expected = np.array([[[-slopes[h] * abs(i - j) for j in range(7)] for i in (4, 5, 6)] for h in range(5)])
    assert_close(bias, expected, np.dtype(dtype))


def test_attention_with_the_bias_matches_torch_float_mask(rng):
    q, k, v = rng.standard_normal((2, 4, 3, 8)), rng.standard_normal((2, 4, 7, 8)), rng.standard_normal((2, 4, 7, 6))
    bias = alibi_bias(4, np.arange(4, 7), np.arange(7), dtype="float64")  # (4, 3, 7)
    causal = torch.ones(3, 7, dtype=torch.bool).tril(diagonal=4)  # bottom-right: the queries are the last three
    attn_mask = torch.from_numpy(bias).masked_fill(~causal, -math.inf)
    expected = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), attn_mask=attn_mask)
    out = scaled_dot_product_attention(q, k, v, causal.numpy(), bias=bias)
    assert_close(out, expected)


def test_bias_depends_only_on_the_distance():
    shifted = alibi_bias(3, np.arange(10, 15), np.arange(10, 15))
    assert np.array_equal(to_numpy(shifted), to_numpy(alibi_bias(3, np.arange(5), np.arange(5))))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: alibi_slopes(0), ValueError, "num_heads must be >= 1; got 0"),
        (lambda: alibi_slopes(2.0), TypeError, "num_heads must be an integer"),
        (lambda: alibi_bias(2, np.zeros((2, 2)), np.arange(3)), ValueError, "query_positions must be a 1-d array"),
        (lambda: alibi_bias(2, np.arange(2), np.array([True, False])), ValueError, "key_positions must be a 1-d"),
        (lambda: alibi_bias(2, np.array([0.0, np.nan]), np.arange(3)), ValueError, "query_positions contains NaN"),
        (lambda: alibi_bias(2, np.arange(2), np.arange(3), dtype="int32"), TypeError, "dtype must be one of"),
    ],
)
def test_alibi_refuses_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
