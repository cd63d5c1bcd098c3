"""Tiled attention as a torch autograd operation: the package's forward and backward inside torch training.

``TiledAttentionFunction`` is a ``torch.autograd.Function``. Its forward runs
``tiled_attention(..., return_lse=True)`` and saves for the backward only
q, k, v, the output and the log-sum-exp of each row (``L`` numbers per row of
queries, not the ``(L, S)`` weights). Its backward runs
``tiled_attention_backward``, which recomputes the weights tile by tile from
``lse`` (FlashAttention-2's recomputation; ``attn_course.backward`` derives
the formulas):

    forward:  O, lse = tiled_attention(q, k, v)        saves q, k, v, O, lse
    backward: dq, dk, dv = tiled_attention_backward(q, k, v, O, lse, dO)

CPU tensors are handed to the package as NumPy views of the same memory (no
copy), so the forward takes the CPU fast path of ``tiled_attention``; tensors
on another device (a GPU) go through the array API as torch tensors, so that
nothing leaves the device. ``attention(q, k, v, ...)`` calls the Function,
``Attention`` wraps it as a module, and ``TiledSelfAttention`` /
``use_tiled_attention(model)`` put it inside the multi-head layers of
``attn_course.torch_modules`` (lesson 09's ``CharLanguageModel``) without
changing that module. This module imports torch: import it only where torch is installed.

On CUDA tensors (float16 or float32, d = dv = 64 or 128, no mask) where CuPy
can run, the same Function runs the GPU kernels instead: ``fused_attention(...,
return_lse=True)`` forward and ``fused_attention_backward`` backward
(``attn_course.kernels``), on the tensors' own memory through DLPack (no copy).
``window=w`` (keys with |i - j| <= w) goes to the kernels' native window there,
and becomes the predicate ``masks.sliding_window(w)`` on the CPU path.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .backend import gpu_available
from .backward import tiled_attention_backward
from .kernels import SUPPORTED_HEAD_DIMS, fused_attention, fused_attention_backward
from .layouts import is_predicate
from .masks import sliding_window
from .tiled import tiled_attention
from .torch_modules import MultiHeadAttention

__all__ = ["Attention", "TiledAttentionFunction", "TiledSelfAttention", "attention", "use_tiled_attention"]


def as_package_array(tensor: torch.Tensor):
    """A CPU tensor as a NumPy view of its memory (the fast path applies); any other tensor as itself."""
    tensor = tensor.detach()
    return tensor.numpy() if tensor.device.type == "cpu" else tensor


def as_tensor(array, like: torch.Tensor) -> torch.Tensor:
    """The package's result as a tensor on ``like``'s device (NumPy arrays are wrapped, not copied)."""
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(array).to(like.device)


@functools.cache
def cupy_usable() -> bool:
    """Whether CuPy can run on a GPU here (asked once: probing the device is slow)."""
    return gpu_available()


def fused_kernels_apply(q, k, v, mask) -> bool:
    """True when the GPU kernels can take the call: CUDA tensors, one dtype (float16/32), d = dv = 64/128, no mask."""
    same = all(x.device == q.device and x.dtype == q.dtype for x in (k, v))
    shapes = q.shape[-1] == v.shape[-1] and q.shape[-1] in SUPPORTED_HEAD_DIMS
    plain = q.device.type == "cuda" and q.dtype in (torch.float16, torch.float32) and mask is None
    return plain and same and shapes and cupy_usable()


def as_cupy(tensor: torch.Tensor):
    """A CUDA tensor as a CuPy array on the same memory (DLPack: no copy)."""
    import cupy

    return cupy.from_dlpack(tensor.detach())


class TiledAttentionFunction(torch.autograd.Function):
    """``out = softmax(q k^T * scale) v`` by ``tiled_attention``; the gradients by ``tiled_attention_backward``.

    Called as ``TiledAttentionFunction.apply(q, k, v, mask, is_causal, block_size, scale[, window])``;
    q: (..., L, d), k: (..., S, d), v: (..., S, dv) -> out (..., L, dv). The
    mask (None, a boolean tensor or a predicate) gets no gradient; window (None or
    an int w: keys with |i - j| <= w) is used only where mask is None.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, block_size, scale, window=None):
        ctx.fused = fused_kernels_apply(q, k, v, mask)
        ctx.window = window
        if ctx.fused:  # CUDA tensors: the fused GPU kernels on the same memory, the same formulas
            out, lse = fused_attention(
                *map(as_cupy, (q, k, v)), is_causal=is_causal, window=window, scale=scale, return_lse=True
            )
            out, lse = torch.from_dlpack(out), torch.from_dlpack(lse)  # (..., L, d), (..., L)
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.options = (None, is_causal, block_size, scale)
            return out
        if window is not None:  # the CPU path: the same rule as a predicate (with is_causal: the causal window)
            mask = sliding_window(window)
        mask_array = as_package_array(mask) if isinstance(mask, torch.Tensor) else mask
        out, lse = tiled_attention(
            *(as_package_array(x) for x in (q, k, v)),
            mask_array,
            is_causal=is_causal,
            block_size=block_size,
            scale=scale,
            return_lse=True,
        )  # (..., L, dv), (..., L)
        out, lse = as_tensor(out, q), as_tensor(lse, q)
        ctx.save_for_backward(q, k, v, out, lse)  # not the (L, S) weights: L numbers per row of queries
        ctx.options = (mask_array, is_causal, block_size, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        mask, is_causal, block_size, scale = ctx.options
        if ctx.fused:  # the backward kernel: dq, dk, dv from one pass over the key tiles
            grads = fused_attention_backward(
                *map(as_cupy, (q, k, v, out, lse, grad_out.contiguous())),
                is_causal=is_causal,
                window=ctx.window,
                scale=scale,
            )
            dq, dk, dv = (torch.from_dlpack(g) for g in grads)
            return dq, dk, dv, None, None, None, None, None
        grads = tiled_attention_backward(
            *(as_package_array(x) for x in (q, k, v, out, lse, grad_out)),
            mask,
            is_causal=is_causal,
            block_size=block_size,
            scale=scale,
        )
        dq, dk, dv = (as_tensor(g, q) for g in grads)  # the shapes of q, k, v
        return dq, dk, dv, None, None, None, None, None  # none for mask, is_causal, block_size, scale, window


def attention(q, k, v, mask=None, *, is_causal=False, block_size=128, scale=None, window=None):
    """``tiled_attention`` on torch tensors, differentiable: the backward recomputes the weights from ``lse``.

    q: (..., L, d), k: (..., S, d), v: (..., S, dv) torch tensors of one float dtype;
    mask: None, a boolean tensor broadcastable to (..., L, S), or a predicate ``mask_fn(i, j)``.
    window: None, or an int w >= 0: keys with |i - j| <= w only (with is_causal, 0 <= i - j <= w);
    not together with a mask. Returns out (..., L, dv).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor (..., n, features); got {type(x).__name__}")
    if mask is not None and not isinstance(mask, torch.Tensor) and not is_predicate(mask):
        raise TypeError(f"mask must be None, a boolean torch tensor or a predicate; got {type(mask).__name__}")
    if window is not None:
        sliding_window(window)  # checks window: an int >= 0, errors naming it
        if mask is not None:
            raise ValueError("pass window or mask, not both (fold the window into the mask: masks.sliding_window)")
    return TiledAttentionFunction.apply(q, k, v, mask, is_causal, block_size, scale, window)


class Attention(nn.Module):
    """Scaled dot-product attention as a module with no parameters: ``Attention(block_size)(q, k, v, ...)``.

    The same as ``attention``: tiled forward, recomputing backward.
    """

    def __init__(self, *, block_size: int = 128, scale: float | None = None):
        super().__init__()
        self.block_size, self.scale = block_size, scale

    def forward(self, q, k, v, mask=None, is_causal: bool = False):
        return attention(q, k, v, mask, is_causal=is_causal, block_size=self.block_size, scale=self.scale)


class TiledSelfAttention(MultiHeadAttention):
    """``torch_modules.MultiHeadAttention`` whose heads attend through ``attention`` (tiled, recomputing).

    Same parameters and call as its parent; the weights are never formed, so
    ``return_weights=True`` gives ``(out, None)``.
    """

    def attend(self, q, k, v, mask, is_causal: bool):
        """The heads through ``attention``: ``(heads (..., h, L, d_head), None)``; the weights are never formed."""
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:  # grouped-query heads: each key/value head serves `groups` query heads, in order
            k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
        return attention(q, k, v, mask, is_causal=is_causal), None


def use_tiled_attention(model: nn.Module) -> nn.Module:
    """Make every ``MultiHeadAttention`` inside ``model`` a ``TiledSelfAttention`` with the same weights, in place.

    Returns ``model``. Lesson 09's ``CharLanguageModel`` then trains through
    ``TiledAttentionFunction`` (the weights it returns with ``return_weights`` are None).
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MultiHeadAttention) and not isinstance(child, TiledSelfAttention):
                layer = TiledSelfAttention(
                    child.d_model, child.num_heads, num_kv_heads=child.num_kv_heads, bias=child.query.bias is not None
                )
                layer.load_state_dict(child.state_dict())
                first = next(child.parameters())
                setattr(parent, name, layer.to(device=first.device, dtype=first.dtype))
    return model
