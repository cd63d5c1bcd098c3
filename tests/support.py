"""What the tests share: tolerances (written once), backends, and conversions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attn_course.backend import asarray, gpu_available, to_numpy
from attn_course.tolerances import TOLERANCES  # written once, shared with the grader

FLOAT_DTYPES = [np.float32, np.float64, np.float16]

requires_gpu = pytest.mark.skipif(not gpu_available(), reason="CuPy with a usable CUDA GPU is needed")
# Parametrise a test over both backends; the CuPy one skips itself without a GPU.
BACKENDS = ["numpy", pytest.param("cupy", marks=requires_gpu)]


def assert_close(actual, expected, dtype=None, what: str = "result"):
    """``actual`` (any backend) equals ``expected`` within the tolerance of ``dtype``.

    ``dtype`` defaults to ``actual``'s; the dtype itself is checked too.
    """
    actual_np = to_numpy(actual)
    dtype = np.dtype(dtype) if dtype is not None else actual_np.dtype
    assert actual_np.dtype == dtype, f"{what}: dtype {actual_np.dtype}, expected {dtype}"
    expected_np = np.asarray(to_numpy(expected), dtype=np.float64)
    assert actual_np.shape == expected_np.shape, f"{what}: shape {actual_np.shape}, expected {expected_np.shape}"
    np.testing.assert_allclose(actual_np.astype(np.float64), expected_np, err_msg=what, **TOLERANCES[dtype])


def random_array(rng: np.random.Generator, shape, dtype=np.float32, backend: str = "numpy"):
    """Standard-normal values of ``shape`` and ``dtype`` on ``backend``."""
    return asarray(rng.standard_normal(shape).astype(dtype), backend=backend)


def to_torch64(x) -> torch.Tensor:
    """A float64 torch copy of any array (the reference is always computed in float64)."""
    return torch.from_numpy(np.array(to_numpy(x), dtype=np.float64))  # a writable copy


def same_library(result, like) -> bool:
    """True when ``result`` is an array of the same library as ``like``."""
    return type(result).__module__.split(".")[0] == type(like).__module__.split(".")[0]
