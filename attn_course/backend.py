"""Which array library does the work: NumPy on the CPU, CuPy on an NVIDIA GPU.

Every function in the course asks its *inputs* which library they belong to
(``get_namespace(q, k, v)``) and computes with that library: a NumPy array in
gives a NumPy array out, a CuPy array gives a CuPy array computed on the GPU.
There is no global switch inside a function.

``default_backend()`` only decides where *new* arrays go (``asarray(x)``,
the masks' ``like=``): CuPy when it is installed and a GPU is usable, NumPy
otherwise; the environment variable ``ATTN_COURSE_BACKEND=numpy|cupy``
overrides that choice.

Importing this module never imports CuPy and never touches CUDA: CuPy is
imported only when a GPU is asked about or asked for.
"""

from __future__ import annotations

import os
import warnings

import array_api_compat
import numpy as np

__all__ = [
    "BACKEND_ENV_VAR",
    "BackendUnavailableError",
    "asarray",
    "creation_namespace",
    "default_backend",
    "get_namespace",
    "gpu_available",
    "gpu_status",
    "to_numpy",
]

BACKEND_ENV_VAR = "ATTN_COURSE_BACKEND"
BACKENDS = ("numpy", "cupy")

CUPY_INSTALL_HINT = (
    "install the CuPy build that matches your CUDA driver, for example "
    "`pip install cupy-cuda12x` (see https://docs.cupy.dev/en/stable/install.html), "
    "or use the NumPy backend: unset ATTN_COURSE_BACKEND or set it to 'numpy'"
)


class BackendUnavailableError(RuntimeError):
    """The requested array backend cannot be used on this machine."""


def _describe(x) -> str:
    """A short description of an argument for error messages: type and shape."""
    shape = getattr(x, "shape", None)
    name = type(x).__module__.split(".")[0] + "." + type(x).__name__
    return f"{name} of shape {tuple(shape)}" if shape is not None else name


# The namespace of an array type never changes for these libraries: remember it (a GPU
# function's host time is mostly such bookkeeping, and array_namespace probes many libraries).
_CACHEABLE_LIBRARIES = ("numpy", "cupy", "torch")
_NAMESPACE_OF_TYPE: dict[type, object] = {}


def get_namespace(*arrays):
    """The array namespace (NumPy-, CuPy- or torch-flavoured Array API) of the inputs.

    ``None`` arguments are ignored, so optional arguments can be passed as they are.
    Mixing libraries (a NumPy ``q`` with a CuPy ``k``) is an error: move them
    all to one place first with ``asarray(x, backend=...)``.
    """
    present = [a for a in arrays if a is not None]
    if not present:
        raise TypeError("get_namespace() needs at least one array; got none")
    kind = type(present[0])
    if kind in _NAMESPACE_OF_TYPE and all(type(a) is kind for a in present):
        return _NAMESPACE_OF_TYPE[kind]  # the common case, without array_namespace's many probes
    try:
        namespace = array_api_compat.array_namespace(*present)
    except TypeError as err:
        seen = ", ".join(_describe(a) for a in present)
        raise TypeError(
            f"expected arrays of one library (NumPy, CuPy or torch); got {seen}. "
            "Convert them to one library first, e.g. attn_course.asarray(x, backend='numpy')"
        ) from err
    if all(type(a) is kind for a in present) and kind.__module__.split(".")[0] in _CACHEABLE_LIBRARIES:
        _NAMESPACE_OF_TYPE[kind] = namespace
    return namespace


def gpu_status() -> tuple[bool, str]:
    """``(usable, reason)``: whether CuPy can run on a GPU here, and why (not).

    Never raises: every failure (CuPy missing, no driver, no device) becomes
    ``(False, reason)``.
    """
    try:
        import cupy  # only when asked: importing the package must not touch CUDA
    except Exception as err:  # ImportError, or a broken install raising anything else
        return False, f"CuPy is not installed or does not import ({type(err).__name__}: {err})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            usable = bool(cupy.is_available())
    except Exception as err:
        return False, f"CuPy is installed but probing CUDA failed ({type(err).__name__}: {err})"
    if not usable:
        return False, (
            f"CuPy {cupy.__version__} is installed, yet no usable CUDA GPU was found "
            "(no NVIDIA driver or no device on this machine)"
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        count, name = 1, "an NVIDIA GPU"
    return True, f"CuPy {cupy.__version__} sees {count} GPU(s): {name}"


def gpu_available() -> bool:
    """True when CuPy is installed and a CUDA GPU is usable. Never raises."""
    return gpu_status()[0]


def default_backend() -> str:
    """``"cupy"`` when a GPU is usable, else ``"numpy"``; ``ATTN_COURSE_BACKEND`` overrides.

    Raises ``ValueError`` for an unknown value of the variable and
    ``BackendUnavailableError`` (saying why) when it asks for CuPy where CuPy
    cannot run.
    """
    requested = os.environ.get(BACKEND_ENV_VAR, "").strip().lower()
    if requested == "":
        return "cupy" if gpu_available() else "numpy"
    if requested not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV_VAR} must be 'numpy' or 'cupy'; got {os.environ[BACKEND_ENV_VAR]!r}")
    if requested == "cupy":
        _require_cupy(f"{BACKEND_ENV_VAR}=cupy")
    return requested


def _require_cupy(who: str):
    """Import and return CuPy, or raise ``BackendUnavailableError`` saying why."""
    usable, reason = gpu_status()
    if not usable:
        raise BackendUnavailableError(f"{who} asks for the CuPy backend, but {reason}; {CUPY_INSTALL_HINT}")
    import cupy

    return cupy


def _check_backend_name(backend) -> str:
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"backend must be 'numpy', 'cupy' or None; got {backend!r}")
    return backend.lower()


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of ``x``: a NumPy, CuPy or torch array, or a nested list."""
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def asarray(x, backend: str | None = None):
    """``x`` as an array of ``backend`` (``"numpy"`` or ``"cupy"``; default: ``default_backend()``).

    Accepts NumPy, CuPy and torch arrays and nested lists; keeps the dtype.
    """
    backend = default_backend() if backend is None else _check_backend_name(backend)
    if backend == "numpy":
        return to_numpy(x)
    cupy = _require_cupy("asarray(..., backend='cupy')")
    if array_api_compat.is_cupy_array(x):
        return x
    return cupy.asarray(to_numpy(x))


def creation_namespace(like=None):
    """``(xp, device)`` for making new arrays: NumPy by default, else the library (and device) of ``like``.

    ``like`` is an array, ``"numpy"``, ``"cupy"`` or None; this is how the masks,
    positional encodings and layers take ``like=``.
    """
    if like is None or (isinstance(like, str) and like.lower() == "numpy"):
        return array_api_compat.array_namespace(np.empty(0)), "cpu"
    if isinstance(like, str):
        if like.lower() != "cupy":
            raise ValueError(f"like must be an array, 'numpy', 'cupy' or None; got {like!r}")
        cupy = _require_cupy("like='cupy'")
        return array_api_compat.array_namespace(cupy.empty(0)), None
    if not array_api_compat.is_array_api_obj(like):
        raise TypeError(f"like must be an array, 'numpy', 'cupy' or None; got {type(like).__name__}")
    return get_namespace(like), array_api_compat.device(like)
