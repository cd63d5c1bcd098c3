"""Compile-time variants of the float16 forward kernel, for the FlashAttention-2 parity benchmark.

``attention_fp16.cu`` reads a few macros (each with a default: the kernel the
course teaches); a variant is a set of ``-D`` options:

- ``WARPS`` x ``WARP_ROWS``: warps per block and query rows per warp; the
  block's query tile is their product (64 by default, 128 in FA2's shapes);
- ``Q_IN_SHARED=1``: the query tile stays in shared memory and its fragments
  are read with ``ldmatrix`` at every key tile (fewer registers at d = 128);
- ``SPLIT_KV=1``: K and V are separate ``cp.async`` groups, so S = Q K^T starts
  as soon as K has arrived while V is still on its way;
- ``FOLD_SCALE=1``: the scores stay unscaled; the maximum is taken on them and
  ``exp2(s * scale_log2 - m * scale_log2)`` is one FMA and one exp2;
- ``LOOK_AHEAD=1``: software pipelining of the two matrix products. Iteration t
  computes the next tile's ``S_{t+1} = Q K_{t+1}^T`` before the softmax of
  ``S_t`` and ``O += P_t V_t``; the tensor-core work of the one and the exp2
  and FMA work of the other are independent, so the warp's schedule can
  overlap them (FlashAttention-3's intra-warpgroup overlap, done by hand on
  ``mma.sync``). K is copied one tile ahead of V (so ``SPLIT_KV`` has no
  effect there) and S costs a second set of registers.

``FUSED_FP16_VARIANT`` (environment) or ``fused_attention(..., _variant=name)``
picks one for ``fused_attention``; block-sparse calls always use the default.
"""

from __future__ import annotations

import os

__all__ = ["FP16_VARIANTS", "VARIANT_ENV_VAR", "selected_variant", "variant_geometry", "variant_options"]

VARIANT_ENV_VAR = "FUSED_FP16_VARIANT"
_PAD = 8  # halves added to each shared row, as in the kernel
_KEY_TILE = 64

# name -> macros; "default" is the teaching kernel (4 warps x 16 rows, Q in registers)
FP16_VARIANTS: dict[str, dict[str, int]] = {
    "default": {},
    "q128_w8x16": {"WARPS": 8, "WARP_ROWS": 16},
    "q128_w4x32": {"WARPS": 4, "WARP_ROWS": 32},
    "q128_w8x16_qsmem": {"WARPS": 8, "WARP_ROWS": 16, "Q_IN_SHARED": 1},
    "q128_w8x16_split": {"WARPS": 8, "WARP_ROWS": 16, "SPLIT_KV": 1},
    "q128_w8x16_fold": {"WARPS": 8, "WARP_ROWS": 16, "FOLD_SCALE": 1},
    "q128_w8x16_all": {"WARPS": 8, "WARP_ROWS": 16, "Q_IN_SHARED": 1, "SPLIT_KV": 1, "FOLD_SCALE": 1},
    "q128_w4x32_all": {"WARPS": 4, "WARP_ROWS": 32, "Q_IN_SHARED": 1, "SPLIT_KV": 1, "FOLD_SCALE": 1},
    # the look-ahead on the 8 x 16 shapes: Q in registers (d = 64's best guess), Q in shared memory (d = 128's)
    "q128_w8x16_fold_ahead": {"WARPS": 8, "WARP_ROWS": 16, "FOLD_SCALE": 1, "LOOK_AHEAD": 1},
    "q128_w8x16_all_ahead": {"WARPS": 8, "WARP_ROWS": 16, "Q_IN_SHARED": 1, "FOLD_SCALE": 1, "LOOK_AHEAD": 1},
}


def selected_variant(name: str | None = None) -> str:
    """``name``, else the environment's ``FUSED_FP16_VARIANT``, else "default"; an unknown name raises."""
    name = name if name is not None else os.environ.get(VARIANT_ENV_VAR, "").strip() or "default"
    if name not in FP16_VARIANTS:
        raise ValueError(
            f"unknown float16 kernel variant {name!r} (from {VARIANT_ENV_VAR}?); one of {list(FP16_VARIANTS)}"
        )
    return name


def variant_options(name: str) -> tuple[str, ...]:
    """The NVRTC ``-D`` options of a variant."""
    return tuple(f"-D{macro}={value}" for macro, value in sorted(FP16_VARIANTS[name].items()))


def variant_geometry(name: str, head_dim: int) -> tuple[int, int, int]:
    """``(query_tile, threads, shared_bytes)`` of a variant at head size ``head_dim``."""
    macros = FP16_VARIANTS[name]
    warps, warp_rows = macros.get("WARPS", 4), macros.get("WARP_ROWS", 16)
    query_tile = warps * warp_rows
    row_bytes = 2 * (head_dim + _PAD)
    shared = 4 * _KEY_TILE * row_bytes  # two buffers of K and of V
    if macros.get("Q_IN_SHARED", 0):
        shared += query_tile * row_bytes
    return query_tile, 32 * warps, shared
