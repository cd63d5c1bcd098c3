"""Fused attention kernels for the GPU: CUDA C beside their CuPy launchers.

- ``fused_attention(q, k, v, *, is_causal=False, window=None, scale=None, return_lse=False, check_finite=True)``
- ``block_sparse_fused_attention(q, k, v, layout, block_size, mask=None, *, scale=None, check_finite=True)``
  (``layout``: one ``(nb_q, nb_k)`` pattern for all heads, or ``(h, nb_q, nb_k)``, one per head)
- ``check_deferred_finite()``: raise if a ``check_finite="deferred"`` call since the last check saw NaN or inf.
- ``fused_attention_backward(q, k, v, out, lse, dout, *, is_causal=False, window=None, scale=None)`` -> ``(dq, dk, dv)``
- ``kernel_source(dtype)``: the CUDA C of a kernel, to read (works without a GPU).

Importing this module never imports CuPy nor touches CUDA; the functions need
CuPy arrays on a usable GPU and say so clearly otherwise.
"""

from .fused import (
    KERNEL_TILE,
    SUPPORTED_HEAD_DIMS,
    block_sparse_fused_attention,
    check_deferred_finite,
    fused_attention,
    kernel_source,
)
from .fused_backward import backward_kernel_code, fused_attention_backward

__all__ = [
    "KERNEL_TILE",
    "SUPPORTED_HEAD_DIMS",
    "backward_kernel_code",
    "block_sparse_fused_attention",
    "check_deferred_finite",
    "fused_attention",
    "fused_attention_backward",
    "kernel_source",
]
