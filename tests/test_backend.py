"""The backend: namespace from the inputs, the GPU probe, the environment override."""

import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from attn_course import backend
from attn_course.backend import (
    BackendUnavailableError,
    asarray,
    default_backend,
    get_namespace,
    gpu_available,
    gpu_status,
    to_numpy,
)


def test_namespace_comes_from_the_inputs():
    xp = get_namespace(np.zeros(2), None, np.ones(3))
    assert xp.asarray([1.0]).__class__ is np.ndarray
    xp_torch = get_namespace(torch.zeros(2))
    assert isinstance(xp_torch.asarray([1.0]), torch.Tensor)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ((np.zeros(2), torch.zeros(2)), "expected arrays of one library.*numpy.ndarray.*torch.Tensor"),
        ((), "at least one array"),
    ],
)
def test_namespace_refuses_mixed_or_missing_arrays(arrays, match):
    with pytest.raises(TypeError, match=match):
        get_namespace(*arrays)


def test_namespace_refuses_non_arrays():
    with pytest.raises(TypeError, match="expected arrays of one library"):
        get_namespace([1.0, 2.0])


def test_importing_the_package_does_not_import_cupy():
    code = "import sys, attn_course, attn_course.masks; print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_gpu_probe_never_raises(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # "import cupy" now raises ImportError
    usable, reason = gpu_status()
    assert usable is False and "not installed" in reason
    assert gpu_available() is False

    def broken_probe():
        raise RuntimeError("driver exploded")

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(is_available=broken_probe, __version__="0"))
    usable, reason = gpu_status()
    assert usable is False and "driver exploded" in reason


def test_gpu_available_is_a_bool_that_agrees_with_the_status():
    assert gpu_available() is gpu_status()[0]


def test_default_backend_follows_the_machine(monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV_VAR, raising=False)
    assert default_backend() == ("cupy" if gpu_available() else "numpy")


def test_environment_variable_overrides(monkeypatch):
    monkeypatch.setenv(backend.BACKEND_ENV_VAR, "NumPy")
    assert default_backend() == "numpy"
    monkeypatch.setenv(backend.BACKEND_ENV_VAR, "jax")
    with pytest.raises(ValueError, match="ATTN_COURSE_BACKEND must be 'numpy' or 'cupy'; got 'jax'"):
        default_backend()


@pytest.mark.skipif(gpu_available(), reason="checks the error given where no GPU is usable")
def test_asking_for_cupy_without_a_gpu_says_why_and_what_to_install(monkeypatch):
    monkeypatch.setenv(backend.BACKEND_ENV_VAR, "cupy")
    with pytest.raises(
        BackendUnavailableError, match=r"ATTN_COURSE_BACKEND=cupy.*(no usable CUDA GPU|not installed).*pip install cupy"
    ):
        default_backend()
    with pytest.raises(BackendUnavailableError, match="backend='cupy'"):
        asarray(np.zeros(2), backend="cupy")


def test_asarray_and_to_numpy_keep_values_and_dtype():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert asarray([[1.0, 2.0]], backend="numpy").shape == (1, 2)
    from_torch = asarray(torch.from_numpy(x), backend="numpy")
    assert isinstance(from_torch, np.ndarray) and from_torch.dtype == np.float32
    np.testing.assert_array_equal(from_torch, x)
    np.testing.assert_array_equal(to_numpy(torch.from_numpy(x).requires_grad_(False)), x)
    np.testing.assert_array_equal(to_numpy([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]), x)


@pytest.mark.parametrize("name", ["torch", "gpu", 3])
def test_asarray_refuses_unknown_backends(name):
    with pytest.raises(ValueError, match="backend must be 'numpy', 'cupy' or None"):
        asarray(np.zeros(2), backend=name)


@pytest.mark.skipif(not gpu_available(), reason="CuPy with a usable CUDA GPU is needed")
def test_cupy_round_trip():
    import cupy

    x = np.arange(5, dtype=np.float16)
    on_gpu = asarray(x, backend="cupy")
    assert isinstance(on_gpu, cupy.ndarray) and on_gpu.dtype == np.float16
    np.testing.assert_array_equal(to_numpy(on_gpu), x)
