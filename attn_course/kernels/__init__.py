"""Fused attention kernels for the GPU: CUDA C beside their CuPy launchers.

- ``fused_attention(q, k, v, *, is_causal=False, scale=None)``
- ``block_sparse_fused_attention(q, k, v, layout, block_size, mask=None, *, scale=None)``
- ``kernel_source(dtype)``: the CUDA C of a kernel, to read (works without a GPU).

Importing this module never imports CuPy nor touches CUDA; the functions need
CuPy arrays on a usable GPU and say so clearly otherwise.
"""

from .fused import KERNEL_TILE, SUPPORTED_HEAD_DIMS, block_sparse_fused_attention, fused_attention, kernel_source

__all__ = ["KERNEL_TILE", "SUPPORTED_HEAD_DIMS", "block_sparse_fused_attention", "fused_attention", "kernel_source"]
