"""softmax against torch.softmax (float64 reference), masks, stability and bad input."""

import math

import numpy as np
import pytest
import torch

from attn_course import softmax
from attn_course.backend import asarray, to_numpy
from tests.support import BACKENDS, FLOAT_DTYPES, assert_close, random_array, same_library, to_torch64


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("shape", "axis"), [((5,), -1), ((3, 5), -1), ((3, 5), 0), ((2, 3, 5), 1)])
def test_matches_torch(rng, backend, dtype, shape, axis):
    x = random_array(rng, shape, dtype, backend) * 3
    out = softmax(x, axis=axis)
    assert same_library(out, x)
    assert_close(out, torch.softmax(to_torch64(x), dim=axis), dtype)


def test_large_scores_do_not_overflow(rng):
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -999.0]], dtype=np.float32)
    out = softmax(x)
    assert np.all(np.isfinite(out))
    assert_close(out, torch.softmax(to_torch64(x), dim=-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_gives_zero_weight_and_renormalises(rng, backend):
    x = random_array(rng, (3, 5), np.float32, backend)
    mask_np = rng.random((3, 5)) < 0.6
    mask_np[:, 0] = True  # every row keeps something
    out = softmax(x, mask=asarray(mask_np, backend))
    expected = torch.softmax(to_torch64(x).masked_fill(~torch.from_numpy(mask_np), -math.inf), dim=-1)
    assert_close(out, expected)
    assert np.all(to_numpy(out)[~mask_np] == 0)


def test_fully_masked_row_is_zero_not_nan(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    mask = np.ones((3, 5), dtype=bool)
    mask[1] = False
    out = softmax(x, mask=mask)
    assert not np.any(np.isnan(out))
    np.testing.assert_array_equal(out[1], np.zeros(5, dtype=np.float32))
    np.testing.assert_allclose(out[[0, 2]].sum(axis=-1), 1.0, rtol=1e-6)


def test_minus_infinity_counts_as_masked():
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])
    out = softmax(x)
    np.testing.assert_allclose(out[0], [1 / (1 + math.e), 0.0, math.e / (1 + math.e)])
    np.testing.assert_array_equal(out[1], [0.0, 0.0, 0.0])


def test_broadcast_mask_over_rows(rng):
    x = rng.standard_normal((3, 5))
    key_mask = np.array([[True, False, True, True, False]])  # (1, 5)
    out = softmax(x, mask=key_mask)
    expected = torch.softmax(torch.from_numpy(x).masked_fill(~torch.from_numpy(key_mask), -math.inf), dim=-1)
    assert_close(out, expected)


def test_accepts_lists_and_torch_tensors():
    assert isinstance(softmax([1.0, 2.0, 3.0]), np.ndarray)
    out = softmax(torch.tensor([[1.0, 2.0], [3.0, 5.0]]))
    assert isinstance(out, torch.Tensor)
    assert_close(out.numpy(), torch.softmax(torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64), -1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"x": np.arange(6).reshape(2, 3)}, TypeError, "x must have a floating dtype"),
        ({"x": np.array([True, False])}, TypeError, "x must have a floating dtype"),
        ({"x": np.zeros((2, 3)), "axis": 2}, ValueError, "axis 2 is out of range for x of shape \\(2, 3\\)"),
        ({"x": np.zeros((2, 3)), "axis": 1.0}, TypeError, "axis must be an integer"),
        ({"x": np.float64(1.0)}, ValueError, "x must have at least 1 dimension"),
        ({"x": np.zeros((2, 3)), "mask": np.ones((3, 2), bool)}, ValueError, "mask of shape \\(3, 2\\)"),
        ({"x": np.zeros((2, 3)), "mask": np.ones((2, 2, 3), bool)}, ValueError, "mask of shape \\(2, 2, 3\\)"),
        ({"x": np.zeros((2, 3)), "mask": np.zeros((2, 3))}, TypeError, "mask must be boolean"),
        ({"x": np.array([1.0, np.nan])}, ValueError, "x contains NaN"),
        ({"x": np.array([1.0, np.inf])}, ValueError, "x contains NaN or \\+inf"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        softmax(**kwargs)
