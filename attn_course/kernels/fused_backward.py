"""The backward pass of fused attention on the GPU: dq, dk, dv from two kernel launches.

For ``out = softmax(q k^T * scale) v`` and the loss gradient ``dout``, with the
forward's log-sum-exp ``lse`` (``fused_attention(..., return_lse=True)``):

    P  = exp(q k^T * scale - lse)        recomputed tile by tile, never stored
    D  = rowsum(dout * out)              (..., L), the pre-pass
    dv = P^T dout
    dS = P * (dout v^T - D) * scale
    dk = dS^T q        dq = dS k

FlashAttention-2's scheme (the formulas are derived in ``attn_course.backward``):
a pre-pass kernel computes ``D`` (and zeroes a float32 dq), then one thread
block per 64 keys loads ``K_j, V_j`` once and walks over the query tiles that
may see them, accumulating ``dK_j, dV_j`` in registers. The kernels are
``attention_backward_fp16.cu`` (tensor cores, float32 accumulation) and
``attention_backward_fp32.cu`` (CUDA cores), compiled at run time by CuPy.

dq by atomicAdd, not a second pass: each block adds its keys' share
``dS_tile K_j`` to a float32 dq in global memory. A second pass over query
tiles would recompute every score and exponential once more (the most
expensive part of the backward) to avoid the atomics; FlashAttention-2 makes
the same choice. The cost: the float32 additions land in no fixed order, so
dq's last bits can differ between runs (dk and dv are deterministic).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import array_api_compat
import numpy as np

from ..backward import sum_to_shape
from ..validation import check_scale, shape_of
from .fused import check_window, flat_heads, offset_range, prepare_inputs, require_gpu_arrays

__all__ = ["backward_kernel_code", "fused_attention_backward"]

_TILE = 64  # keys per block, queries per tile, in both kernels
_KERNELS = {  # dtype -> (source file, kernel template, threads per block, headers put in front)
    "float32": ("attention_backward_fp32.cu", "attention_backward_fp32", 256, ("key_tiles.cuh",)),
    "float16": ("attention_backward_fp16.cu", "attention_backward_fp16", 128, ("key_tiles.cuh", "tensor_cores.cuh")),
}
_LOG2_E = 1.4426950408889634
_PREPASS_WARPS = 8  # rows per block of the pre-pass: one warp per row


def backward_kernel_code(dtype="float32") -> str:
    """The CUDA C that is compiled for ``dtype``'s backward: the shared headers, then the kernels' source."""
    name = np.dtype(dtype).name
    if name not in _KERNELS:
        raise ValueError(f"dtype must be float32 or float16; got {dtype!r}")
    source, _, _, headers = _KERNELS[name]
    here = Path(__file__).parent
    return "".join((here / file).read_text() + "\n" for file in (*headers, source))


def backward_kernel_names(dtype_name: str, head_dim: int) -> tuple[str, str]:
    """The template instances one backward launches: (the pre-pass, the main kernel)."""
    template = _KERNELS[dtype_name][1]
    suffix = "fp16" if dtype_name == "float16" else "fp32"
    return f"attention_backward_prepass_{suffix}<{head_dim}>", f"{template}<{head_dim}>"


def backward_shared_bytes(dtype_name: str, head_dim: int) -> int:
    """Dynamic shared memory per block of the main kernel, as the .cu files carve it."""
    if dtype_name == "float32":  # K, V, Q, dO rows of D + 1 floats; P^T, dS^T (64 x 65); lse, D
        return 4 * (4 * _TILE * (head_dim + 1) + 2 * _TILE * (_TILE + 1) + 2 * _TILE)
    # K, V, two buffers of Q and of dO (rows of D + 8 halves); dS^T (64 x 72 halves); lse, D
    return 2 * 6 * _TILE * (head_dim + 8) + 2 * _TILE * (_TILE + 8) + 4 * 2 * _TILE


@functools.cache
def _compiled_kernels(dtype_name: str, head_dim: int, device_id: int):
    import cupy

    names = backward_kernel_names(dtype_name, head_dim)
    module = cupy.RawModule(
        code=backward_kernel_code(dtype_name), options=("--std=c++17", "--use_fast_math"), name_expressions=names
    )
    prepass, main = (module.get_function(name) for name in names)
    main.max_dynamic_shared_size_bytes = backward_shared_bytes(dtype_name, head_dim)
    return prepass, main


def fused_attention_backward(q, k, v, out, lse, dout, *, is_causal=False, window=None, scale=None):
    """The gradients ``(dq, dk, dv)`` of ``sum(dout * fused_attention(q, k, v, ...))``, on the GPU.

    q: (..., L, d), k, v: (..., S, d), float16 or float32 CuPy arrays, d = 64 or
    128, leading dimensions broadcast; out: (*batch, L, d) and lse: (*batch, L)
    float32 from ``fused_attention(q, k, v, ..., return_lse=True)`` with the same
    is_causal, window and scale (window: keys with |i - j| <= w, as there; only
    the tiles that hold such pairs are visited); dout: (*batch, L, d), the loss gradient of out, the
    dtype of q. Returns dq, dk, dv with the shapes and dtype of q, k, v (an input
    broadcast over leading axes gets its gradient summed over them). float16
    accumulates in float32. Memory: dq in float32 and D (L floats per row) on top
    of the results; no (L, S) array.
    """
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal must be True or False; got {is_causal!r}")
    window = check_window(window)
    function = "fused_attention_backward"
    require_gpu_arrays(function, "tiled_attention_backward", q=q, k=k, v=v, out=out, lse=lse, dout=dout)
    q3, k3, v3, batch, L, S, d, dtype_name = prepare_inputs(function, q, k, v, "tiled_attention_backward")
    xp = array_api_compat.array_namespace(q)
    for name, x, shape, dtype in (
        ("out", out, (*batch, L, d), q.dtype),
        ("dout", dout, (*batch, L, d), q.dtype),
        ("lse", lse, (*batch, L), np.float32),
    ):
        if tuple(x.shape) != shape or x.dtype != dtype:
            raise ValueError(
                f"{name} must have shape {shape} and dtype {np.dtype(dtype).name} (from q {shape_of(q)}, k "
                f"{shape_of(k)}); got {shape_of(x)} of {x.dtype}. out and lse come from "
                "fused_attention(q, k, v, return_lse=True)"
            )
    scale = check_scale(scale, d)
    heads = math.prod(batch)
    lo, hi = offset_range(L, S, is_causal=is_causal, window=window)  # key j allowed when lo <= i - j <= hi
    out3, dout3 = (flat_heads(x, batch, L, d, xp) for x in (out, dout))
    lse2 = lse.reshape(heads, L)
    if not lse2.flags.c_contiguous:
        lse2 = lse2.copy(order="C")
    dq3, dk3, dv3 = _launch_backward(q3, k3, v3, out3, lse2, dout3, L, S, d, dtype_name, scale, lo, hi)
    # Each gradient back to its input's shape: summed over the axes broadcasting stretched.
    dq = sum_to_shape(dq3.reshape(*batch, L, d), tuple(q.shape), xp)
    dk = sum_to_shape(dk3.reshape(*batch, S, d), tuple(k.shape), xp)
    dv = sum_to_shape(dv3.reshape(*batch, S, d), tuple(v.shape), xp)
    return dq, dk, dv


def _launch_backward(q3, k3, v3, out3, lse2, dout3, L, S, d, dtype_name, scale, lo, hi):
    """The pre-pass and the main kernel on ``(BH, n, D)`` arrays: ``(dq, dk, dv)``, each ``(BH, n, D)``."""
    import cupy

    prepass, main = _compiled_kernels(dtype_name, d, cupy.cuda.Device().id)
    heads = int(q3.shape[0])
    delta = cupy.empty((heads, L), dtype=cupy.float32)
    dq_accum = cupy.empty((heads, L, d), dtype=cupy.float32)  # zeroed by the pre-pass
    rows = heads * L
    prepass((math.ceil(rows / _PREPASS_WARPS),), (32 * _PREPASS_WARPS,), (out3, dout3, delta, dq_accum, np.int32(rows)))
    dk = cupy.empty((heads, S, d), dtype=q3.dtype)
    dv = cupy.empty((heads, S, d), dtype=q3.dtype)
    args = (q3, k3, v3, dout3, lse2, delta, dq_accum, dk, dv, np.int32(L), np.int32(S))
    args += (np.float32(scale), np.float32(scale * _LOG2_E), np.int32(lo), np.int32(hi))
    grid = (math.ceil(S / _TILE), heads)
    main(grid, (_KERNELS[dtype_name][2],), args, shared_mem=backward_shared_bytes(dtype_name, d))
    dq = dq_accum if dtype_name == "float32" else dq_accum.astype(q3.dtype)
    return dq, dk, dv
