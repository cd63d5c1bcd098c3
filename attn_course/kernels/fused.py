"""Fused attention on the GPU: one kernel launch, the (L, S) scores never stored.

    out[..., i, :] = sum_j softmax_j(q_i . k_j * scale) v_j

computed by the CUDA C kernels beside this file, compiled at run time by CuPy
(NVRTC) and cached:

- ``attention_fp32.cu``: float32 on the CUDA cores;
- ``attention_fp16.cu``: float16 on the tensor cores (``mma.sync``, inline PTX,
  so no CUDA header is needed), accumulating in float32.

Both are the online softmax of ``attn_course.tiled_attention`` with tiles of
64 queries x 64 keys held in shared memory; causal tiles above the diagonal,
tiles outside a sliding window (``window=``: a range of offsets i - j that the
kernel turns into a range of key tiles, no host work) and tiles a block layout
leaves out (one layout for all heads, or one per head) are never visited. Nothing here imports
CuPy until a function is called; calling one with anything but CuPy arrays
raises a ``TypeError`` that says why (and, on a machine without a usable GPU,
what is missing). NaN and infinities in the inputs are found by a small device
kernel (``finite_check.cu``); ``check_finite=`` says whether its verdict is read
at once (True, the default), later by ``check_deferred_finite()`` ("deferred"),
or not computed at all (False).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import array_api_compat
import numpy as np

from ..backend import gpu_status, to_numpy
from ..layouts import check_layout
from ..validation import check_qkv, check_scale, shape_of
from .variants import FP16_VARIANTS, selected_variant, variant_geometry, variant_options

__all__ = [
    "KERNEL_TILE",
    "SUPPORTED_HEAD_DIMS",
    "block_sparse_fused_attention",
    "check_deferred_finite",
    "fused_attention",
    "kernel_source",
]

KERNEL_TILE = 64  # queries per thread block and keys per tile, in both kernels
SUPPORTED_HEAD_DIMS = (64, 128)
_KERNELS = {  # dtype -> (source file, kernel template, threads per block)
    "float32": ("attention_fp32.cu", "attention_fp32", 256),
    "float16": ("attention_fp16.cu", "attention_fp16", 128),
}
_LOG2_E = 1.4426950408889634  # the kernels work with exp2: exp(x) = exp2(x * log2(e))


def kernel_source(dtype="float32") -> str:
    """The CUDA C source of the kernel for ``dtype`` ("float32" or "float16"), to read."""
    name = np.dtype(dtype).name
    if name not in _KERNELS:
        raise ValueError(f"dtype must be float32 or float16; got {dtype!r}")
    return (Path(__file__).parent / _KERNELS[name][0]).read_text()


def _shared_bytes(dtype_name: str, head_dim: int) -> int:
    """Dynamic shared memory per block, as the kernels carve it (see the .cu files)."""
    if dtype_name == "float32":  # Q^T, K^T (D x 68), P (64 x 68), V (64 x D), floats
        return 4 * ((2 * head_dim + KERNEL_TILE) * (KERNEL_TILE + 4) + KERNEL_TILE * head_dim)
    return 2 * 4 * KERNEL_TILE * (head_dim + 8)  # two buffers of K and of V, halves


def kernel_code(dtype="float32") -> str:
    """What is compiled for ``dtype``: the headers (key_tiles.cuh; float16: tensor_cores.cuh), then the kernel."""
    name = np.dtype(dtype).name
    headers = ("key_tiles.cuh", "tensor_cores.cuh") if name == "float16" else ("key_tiles.cuh",)
    return "".join((Path(__file__).parent / file).read_text() + "\n" for file in headers) + kernel_source(dtype)


@functools.cache
def _compiled_kernel(dtype_name: str, head_dim: int, device_id: int, variant: str = "default"):
    """Compile (once per dtype, head size, device and variant; CuPy also caches on disk) and return the kernel."""
    import cupy

    _, template, _ = _KERNELS[dtype_name]
    name = f"{template}<{head_dim}>"
    # No include paths: the kernels use inline PTX instead of CUDA headers, so nothing
    # depends on where (or whether) the CUDA toolkit is installed. CuPy adds -arch itself.
    options = ("--std=c++17", "--use_fast_math", *variant_options(variant))
    module = cupy.RawModule(code=kernel_code(dtype_name), options=options, name_expressions=[name])
    kernel = module.get_function(name)
    kernel.max_dynamic_shared_size_bytes = _launch_shape(dtype_name, head_dim, variant)[2]
    return kernel


def _launch_shape(dtype_name: str, head_dim: int, variant: str) -> tuple[int, int, int]:
    """``(queries per block, threads per block, shared bytes)``: float16 variants change all three."""
    if dtype_name == "float16" and variant != "default":
        return variant_geometry(variant, head_dim)
    return KERNEL_TILE, _KERNELS[dtype_name][2], _shared_bytes(dtype_name, head_dim)


@functools.cache
def _unused_tile_list(device_id: int):
    import cupy

    return cupy.zeros(1, dtype=cupy.int32)


def require_gpu_arrays(function: str, cpu_twin: str, **arrays):
    """CuPy arrays (which exist only where CuPy has a GPU), or a clear error naming the argument and the CPU twin."""
    for name, x in arrays.items():
        if not array_api_compat.is_cupy_array(x):
            usable, reason = gpu_status()  # only on this error path: probing the device is slow
            where = "" if usable else f" This machine cannot run it: {reason}."
            raise TypeError(
                f"{function} runs on the GPU and takes CuPy arrays; {name} is {type(x).__module__}."
                f"{type(x).__name__}. Move it with attn_course.asarray({name}, backend='cupy'), or use "
                f"attn_course.{cpu_twin} (the same algorithm in NumPy) on the CPU.{where}"
            )


def flat_heads(x, batch, n: int, width: int, xp):
    """``(..., n, width)`` broadcast to ``(*batch, n, width)`` as ``(BH, n, width)``, contiguous and 16-byte aligned
    (the kernels' vector loads need both): a view when ``x`` already is, else a copy."""
    x = xp.broadcast_to(x, (*batch, n, width)).reshape(math.prod(batch), n, width)
    if not x.flags.c_contiguous or x.data.ptr % 16:
        x = x.copy(order="C")
    return x


def prepare_inputs(function: str, q, k, v, cpu_twin: str = "tiled_attention"):
    """Checked inputs as contiguous, aligned ``(BH, n, D)`` arrays, plus what the launch needs:
    ``(q3, k3, v3, batch, L, S, d, dtype_name)``; errors name ``function`` and the argument."""
    require_gpu_arrays(function, cpu_twin, q=q, k=k, v=v)
    # Values are checked after the launch (_check_finite_values), so that the host's wait
    # for that answer overlaps the kernel instead of delaying it.
    q, k, v, xp, batch = check_qkv(q, k, v, check_finite=False)
    dtype_name = np.dtype(q.dtype).name
    if dtype_name not in _KERNELS:
        raise TypeError(
            f"{function} computes in float16 or float32; got q, k, v of dtype {dtype_name} "
            "(convert with .astype(cupy.float32))"
        )
    d, dv = int(q.shape[-1]), int(v.shape[-1])
    if d != dv or d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"{function} supports head sizes d = dv in {SUPPORTED_HEAD_DIMS}; got q {shape_of(q)} and "
            f"v {shape_of(v)}. Use attn_course.{cpu_twin} for other sizes"
        )
    L, S = int(q.shape[-2]), int(k.shape[-2])
    heads = math.prod(batch)
    if heads > 65535:
        raise ValueError(f"{function}: the batch dimensions hold {heads} (batch, head) pairs; at most 65535")
    q3, k3, v3 = (flat_heads(x, batch, n, d, xp) for x, n in ((q, L), (k, S), (v, S)))
    return q3, k3, v3, batch, L, S, d, dtype_name


_DEFERRED_FUNCTIONS = ("fused_attention", "block_sparse_fused_attention")  # 3 bits each in the deferred flag
_deferred_flags: dict = {}  # device id -> the int32 flag that check_finite="deferred" calls write to


def _finite_mode(function: str, check_finite):
    """True, False or "deferred", or an error naming ``check_finite`` (checked before anything touches the GPU)."""
    if isinstance(check_finite, (bool, np.bool_)):
        return bool(check_finite)
    if isinstance(check_finite, str):
        if check_finite == "deferred":
            return "deferred"
        raise ValueError(f"{function}: check_finite must be True, False or 'deferred'; got {check_finite!r}")
    raise TypeError(f"{function}: check_finite must be True, False or 'deferred'; got {check_finite!r}")


def _check_finite_values(function: str, mode, q3, k3, v3):
    """After the launch: NaN or infinities in the inputs are found on the device, naming the argument.

    One small kernel (finite_check.cu) tests all three arrays and sets bits of an int32
    flag in device memory. mode True: that one number is read back at once (the host waits
    for the GPU once, after the attention kernel was queued) and a bad input raises here.
    mode "deferred": the bits go to a flag per device that ``check_deferred_finite()`` reads
    later; nothing waits. mode False: no check at all.
    """
    if mode is False:
        return
    import cupy

    device = cupy.cuda.Device().id
    if mode == "deferred":
        if device not in _deferred_flags:
            _deferred_flags[device] = cupy.zeros(1, dtype=cupy.int32)
        found, shift = _deferred_flags[device], 3 * _DEFERRED_FUNCTIONS.index(function)
    else:
        found, shift = cupy.zeros(1, dtype=cupy.int32), 0
    kernel = _finite_check_kernel(q3.dtype.name, device)
    sizes = [np.int64(x.nbytes // 16) for x in (q3, k3, v3)]  # whole 16-byte pieces: rows are 128 or 256 bytes
    args = (q3, sizes[0], k3, sizes[1], v3, sizes[2], found, np.int32(shift))
    kernel((4 * _multiprocessors(),), (256,), args)
    if mode == "deferred":
        return
    bits = int(found.get()[0])
    for bit, name, x in ((1, "q", q3), (2, "k", k3), (4, "v", v3)):
        if bits & bit:
            raise ValueError(
                f"{name} contains NaN or infinite values (shape {shape_of(x)}); attention needs finite inputs"
            )


def check_deferred_finite():
    """Raise if a call made with ``check_finite="deferred"`` since the last check saw NaN or infinities.

    Those calls leave their verdict in device memory instead of waiting for it; this
    reads it back (one wait for the GPU, per device used), clears it and raises a
    ``ValueError`` naming the function and the argument (q, k or v). Call it where the
    program waits for the GPU anyway (after a training step, before reading a loss).
    Returns None when every deferred check passed, or when none was made (then it
    touches no GPU, on any machine).
    """
    bad = []
    for device, flag in _deferred_flags.items():
        bits = int(flag.get()[0])  # the flag lives on its device; .get() copies from there
        if bits:
            flag.fill(0)
            names = [
                f"{function}: {name}"
                for offset, function in enumerate(_DEFERRED_FUNCTIONS)
                for bit, name in ((1, "q"), (2, "k"), (4, "v"))
                if bits & (bit << 3 * offset)
            ]
            bad.append(f"{', '.join(names)} (device {device})")
    if bad:
        raise ValueError(
            "NaN or infinite values were passed to a call made with check_finite='deferred' since the last "
            f"check: {', '.join(bad)}; attention needs finite inputs"
        )


@functools.cache
def _finite_check_kernel(dtype_name: str, device_id: int):
    import cupy

    name = f"find_non_finite<{'true' if dtype_name == 'float16' else 'false'}>"
    source = (Path(__file__).parent / "finite_check.cu").read_text()
    return cupy.RawModule(code=source, options=("--std=c++17",), name_expressions=[name]).get_function(name)


@functools.cache
def _multiprocessors() -> int:
    import cupy

    return int(cupy.cuda.Device().attributes["MultiProcessorCount"])


def _launch(q3, k3, v3, L, S, d, dtype_name, scale, lo, hi, tiles=None, out=None, lse=None, variant="default"):
    """Run the kernel on ``(BH, n, D)`` arrays; ``tiles`` = (tile_ptr, tile_idx, heads) or None (a range).

    ``tiles``: the CSR of ``kernel_tile_lists`` for ``heads`` patterns. The grid is then (query tiles, heads,
    BH / heads): heads are the last batch axis, so block (x, y, z) is ``bh = z * heads + y`` and reads head y's lists.

    ``lse``: a float32 ``(BH, L)`` array that receives each row's log-sum-exp, or None (not written).
    ``variant``: a float16 kernel variant of ``variants.FP16_VARIANTS`` (tile lists need "default").
    """
    import cupy

    kernel = _compiled_kernel(dtype_name, d, cupy.cuda.Device().id, variant)
    heads = int(q3.shape[0])
    if out is None:
        out = cupy.empty((heads, L, d), dtype=q3.dtype)
    if tiles is None:
        tile_ptr = tile_idx = _unused_tile_list(cupy.cuda.Device().id)  # the kernel visits a range
        use_list, list_heads = 0, 1
    else:
        tile_ptr, tile_idx, list_heads = tiles
        use_list = 1
    query_tile, threads, shared_bytes = _launch_shape(dtype_name, d, variant)
    grid = (math.ceil(L / query_tile), list_heads, heads // list_heads)  # bh = blockIdx.z * list_heads + blockIdx.y
    scale_log2 = np.float32(scale * _LOG2_E)
    lse_pointer = np.uint64(0) if lse is None else lse  # a null pointer: the kernel skips the lse
    args = (q3, k3, v3, out, lse_pointer, np.int32(L), np.int32(S), scale_log2)
    args += (np.int32(lo), np.int32(hi), np.int32(use_list))
    kernel(grid, (threads,), (*args, tile_ptr, tile_idx), shared_mem=shared_bytes)
    return out


def fused_attention(
    q, k, v, *, is_causal=False, window=None, scale=None, return_lse=False, check_finite=True, _variant=None
):
    """``softmax(q k^T * scale) v`` in one fused GPU kernel (CuPy arrays in and out).

    q: (..., L, d), k: (..., S, d), v: (..., S, d), float16 or float32 CuPy
    arrays, d = 64 or 128; leading dimensions broadcast. is_causal: query i
    sees keys j <= i (top-left aligned, as in ``scaled_dot_product_attention``);
    key tiles entirely above the diagonal are skipped. window: None (no limit)
    or an int w >= 0: query i sees keys with |i - j| <= w (with is_causal,
    0 <= i - j <= w), the rule of ``masks.sliding_window(w, causal=is_causal)``;
    the kernel visits only the key tiles that hold such keys, so the time grows
    with L * w, not L * S, and the host does nothing per call beyond the checks.
    scale: default 1/sqrt(d).
    Returns out (..., L, d) of the input dtype; float16 accumulates in float32.
    return_lse: return ``(out, lse)`` instead, lse (..., L) float32, each row's
    log-sum-exp ``log sum_j exp(q_i . k_j * scale)`` in natural log (-inf for a row
    with no allowed key), what ``fused_attention_backward`` recomputes P from.
    check_finite: True (default): NaN or infinities in q, k or v raise a ``ValueError``
    naming the argument; a small device kernel tests them after the launch and one
    int32 comes back, so the host waits for the GPU once per call. "deferred": the
    same test leaves its verdict in device memory and nothing waits;
    ``check_deferred_finite()`` reads it later. False: no test (for timing the kernel
    alone, or inside a CUDA graph, where no read-back may happen).
    Memory: the output only; no (L, S) array exists at any time.
    (``_variant``, or the environment's ``FUSED_FP16_VARIANT``: a float16 kernel variant
    for benchmarks, see ``kernels/variants.py``.)
    """
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal must be True or False; got {is_causal!r}")
    window = check_window(window)
    finite_mode = _finite_mode("fused_attention", check_finite)
    q3, k3, v3, batch, L, S, d, dtype_name = prepare_inputs("fused_attention", q, k, v)
    scale = check_scale(scale, d)
    lo, hi = offset_range(L, S, is_causal=is_causal, window=window)  # allowed when lo <= i - j <= hi
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be True or False; got {return_lse!r}")
    lse = _empty_lse(q3, L) if return_lse else None
    variant = selected_variant(_variant) if dtype_name == "float16" else "default"
    if FP16_VARIANTS[variant].get("FOLD_SCALE") and scale <= 0:
        variant = "default"  # folding the scale takes the maximum of unscaled scores: right for a positive scale only
    out = _launch(q3, k3, v3, L, S, d, dtype_name, scale, lo, hi, lse=lse, variant=variant)
    _check_finite_values("fused_attention", finite_mode, q3, k3, v3)
    if return_lse:
        return out.reshape(*batch, L, d), lse.reshape(*batch, L)
    return out.reshape(*batch, L, d)


def check_window(window) -> int | None:
    """The ``window`` argument: None, or an int >= 0 (errors name ``window``)."""
    if window is None:
        return None
    if isinstance(window, (bool, np.bool_)) or not isinstance(window, (int, np.integer)):
        raise TypeError(f"window must be None or an integer >= 0 (keys with |i - j| <= window); got {window!r}")
    if window < 0:
        raise ValueError(f"window must be >= 0 (keys with |i - j| <= window); got {window}")
    return int(window)


def offset_range(L: int, S: int, *, is_causal: bool = False, window: int | None = None) -> tuple[int, int]:
    """``(lo, hi)``: key j is allowed for query i when ``lo <= i - j <= hi`` (what the kernels take).

    Every offset i - j lies in [-(S - 1), L - 1]: no limit is (-S, L); causal raises lo to 0;
    a window w clips to [-w, w] (clamped to that span, so that any int fits the kernels' int32).
    """
    lo, hi = (0 if is_causal else -S), L
    if window is not None:
        lo, hi = max(lo, -min(window, S)), min(hi, window)
    return lo, hi


def _empty_lse(q3, L: int):
    import cupy

    return cupy.empty((int(q3.shape[0]), L), dtype=cupy.float32)


def _offset_range(mask, L: int, S: int) -> tuple[int, int]:
    """``(lo, hi)`` with ``mask(i, j) == (lo <= i - j <= hi)``, from a predicate's offset rule."""
    if getattr(mask, "offset_rule", None) is None:
        kind = "an array" if array_api_compat.is_array_api_obj(mask) else f"{mask!r}"
        raise TypeError(
            "mask must be None or a predicate that depends only on i - j, such as masks.causal() or "
            f"masks.sliding_window(w); got {kind}. attn_course.block_sparse_attention takes any mask"
        )
    return _offset_range_of_rule(mask, L, S)


@functools.lru_cache(maxsize=64)  # a model passes the same predicate again and again
def _offset_range_of_rule(mask, L: int, S: int) -> tuple[int, int]:
    offsets = np.arange(-(S - 1), L)  # every i - j that occurs
    allowed = np.flatnonzero(np.asarray(mask.offset_rule(offsets), dtype=bool))
    if allowed.size == 0:
        return 1, 0  # nothing allowed: every row is zero
    if allowed[-1] - allowed[0] + 1 != allowed.size:
        raise ValueError(
            f"the fused kernel needs a mask that allows one contiguous range of offsets i - j; {mask} "
            "allows several (a dilated window?). Use attn_course.block_sparse_attention for it"
        )
    return int(offsets[allowed[0]]), int(offsets[allowed[-1]])


def kernel_tile_lists(layout, block_size: int, L: int, S: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's tiles (64 x 64) that a block layout marks, as CSR: ``(tile_ptr, tile_idx)``, int32 NumPy.

    layout: boolean ``(h, nb_q, nb_k)``, one pattern per head (h = 1: one for all).
    Row ``r`` of head ``x`` (a query tile, 64 queries) visits the key tiles
    ``tile_idx[tile_ptr[x * rows + r] : tile_ptr[x * rows + r + 1]]``, in order, with
    ``rows = ceil(L / 64)``: the heads' lists one after the other, ``h * rows + 1``
    pointers. Tiles that the offset rule ``lo <= i - j <= hi`` excludes entirely are dropped.
    """
    layout = np.asarray(layout, dtype=bool)
    # The layout in kernel tiles: each block covers (block_size / 64)^2 tiles.
    per_block = block_size // KERNEL_TILE
    rows, cols = math.ceil(L / KERNEL_TILE), math.ceil(S / KERNEL_TILE)
    tiles = np.repeat(np.repeat(layout, per_block, axis=1), per_block, axis=2)[:, :rows, :cols]  # (h, rows, cols)
    # Tile (r, c) holds offsets i - j in [64r - 64c - 63, 64r - 64c + 63].
    tile_offset = KERNEL_TILE * (np.arange(rows)[:, None] - np.arange(cols)[None, :])  # (rows, cols)
    tiles = tiles & (tile_offset + KERNEL_TILE - 1 >= lo) & (tile_offset - (KERNEL_TILE - 1) <= hi)
    tile_ptr = np.concatenate([[0], np.cumsum(tiles.sum(axis=2).ravel())]).astype(np.int32)  # (h * rows + 1,)
    tile_idx = np.nonzero(tiles)[2].astype(np.int32)  # head by head, row by row: each row's key tiles, in order
    if tile_idx.size == 0:
        tile_idx = np.zeros(1, np.int32)  # never read; a kernel argument cannot be empty
    return tile_ptr, tile_idx


@functools.lru_cache(maxsize=32)
def _tile_lists(
    layout_bits: bytes, layout_shape: tuple, block_size: int, L: int, S: int, lo: int, hi: int, device_id: int
):
    """``kernel_tile_lists`` on the GPU: (tile_ptr, tile_idx) CuPy arrays, remembered.

    Remembered per layout (its packed bits), lengths and offset range: a model calls the
    same pattern again and again, and building the lists costs host time and a copy.
    """
    import cupy

    count = math.prod(layout_shape)
    layout = np.unpackbits(np.frombuffer(layout_bits, dtype=np.uint8), count=count).astype(bool).reshape(layout_shape)
    tile_ptr, tile_idx = kernel_tile_lists(layout, block_size, L, S, lo, hi)
    return cupy.asarray(tile_ptr), cupy.asarray(tile_idx)


def check_head_layouts(layout, block_size: int, L: int, S: int, batch: tuple) -> np.ndarray:
    """``layout`` as NumPy boolean ``(h, nb_q, nb_k)``: a 2-d layout (every head) gets h = 1; a 3-d one has a
    pattern per head, h = the size of the heads axis (the batch axis just before L) or 1."""
    if getattr(layout, "ndim", None) != 3:
        return check_layout(layout, block_size, L, S)[None]  # the 2-d checks and their errors
    heads = batch[-1] if batch else 1
    blocks = (math.ceil(L / block_size), math.ceil(S / block_size))
    seen = tuple(int(n) for n in layout.shape)
    if seen[1:] != blocks or seen[0] not in (heads, 1):
        raise ValueError(
            f"layout of shape {seen} does not fit: a layout per head must be (heads, ceil(L / block_size), "
            f"ceil(S / block_size)) = {(heads, *blocks)} for block_size={block_size}, L={L}, S={S} and "
            f"{heads} heads (the axis before L of q, k, v broadcast to batch {tuple(batch)}); or 2-d {blocks}, "
            "shared by every head"
        )
    return np.stack([check_layout(head, block_size, L, S) for head in to_numpy(layout)])


def block_sparse_fused_attention(q, k, v, layout, block_size, mask=None, *, scale=None, check_finite=True):
    """Attention on the GPU over the blocks ``layout`` marks only, in one fused kernel.

    The GPU twin of ``attn_course.block_sparse_attention``. q: (..., L, d),
    k, v: (..., S, d), float16 or float32 CuPy arrays, d = 64 or 128.
    layout: boolean (ceil(L / block_size), ceil(S / block_size)), True = compute
    this block (NumPy or CuPy; ``masks.block_layout`` builds one), shared by every
    head; or (h, ceil(L / block_size), ceil(S / block_size)), one pattern per head,
    h the size of the heads axis (the axis just before L). block_size: a
    multiple of 64, the kernel's tile. mask: None (every pair of a marked block),
    or a predicate that depends on i - j only and allows one range of offsets
    (``masks.causal()``, ``masks.sliding_window(w)``, ``sliding_window(w, causal=True)``),
    applied inside the marked blocks. Returns out (..., L, d); a query with no
    allowed key gets a zero row. Time and memory grow with the marked blocks.
    check_finite: True, "deferred" or False, as in ``fused_attention``.
    """
    finite_mode = _finite_mode("block_sparse_fused_attention", check_finite)
    q3, k3, v3, batch, L, S, d, dtype_name = prepare_inputs(
        "block_sparse_fused_attention", q, k, v, "block_sparse_attention"
    )
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size must be an integer; got {block_size!r}")
    if block_size <= 0 or block_size % KERNEL_TILE:
        raise ValueError(
            f"block_size must be a positive multiple of {KERNEL_TILE} (the kernel's tile); got {block_size}"
        )
    layout = check_head_layouts(layout, int(block_size), L, S, batch)  # (h, nb_q, nb_k), h = 1 or the heads
    scale = check_scale(scale, d)
    lo, hi = (-S, L) if mask is None else _offset_range(mask, L, S)

    import cupy

    # The layout's bits (8x smaller than its booleans) are the cache key: cheap to hash.
    csr = _tile_lists(np.packbits(layout).tobytes(), layout.shape, int(block_size), L, S, lo, hi, cupy.cuda.Device().id)
    out = _launch(q3, k3, v3, L, S, d, dtype_name, scale, lo, hi, tiles=(*csr, layout.shape[0]))
    _check_finite_values("block_sparse_fused_attention", finite_mode, q3, k3, v3)
    return out.reshape(*batch, L, d)
