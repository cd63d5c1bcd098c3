"""The fused GPU kernels (attn_course.kernels) against dense attention in float64.

Without a usable GPU only the CPU-side behaviour is tested (importing, reading
the sources, clear errors); the kernel tests skip themselves.
"""

import subprocess
import sys

import numpy as np
import pytest

from attn_course import masks
from attn_course.backend import to_numpy
from attn_course.kernels import block_sparse_fused_attention, fused_attention, kernel_source
from tests.dense_reference import dense_attention64
from tests.support import assert_close, random_array, requires_gpu

DTYPES = [np.float32, np.float16]
HEAD_DIMS = [64, 128]
SHAPES = [(197, 211), (64, 64), (300, 131), (1, 77)]  # odd lengths, L != S both ways, one query


def gpu_qkv(rng, L, S, d, dtype, batch=(2, 3)):
    return tuple(random_array(rng, (*batch, n, d), dtype, backend="cupy") for n in (L, S, S))


def poisoned_launch(function, *args, **kwargs):
    """Call ``function`` with its output buffer filled with NaN first: an unwritten row shows."""
    import cupy

    from attn_course.kernels import fused

    original = fused._launch

    def launch_into_poison(q3, k3, v3, L, S, d, dtype_name, *rest, **options):
        out = cupy.full((int(q3.shape[0]), L, d), np.nan, dtype=q3.dtype)
        return original(q3, k3, v3, L, S, d, dtype_name, *rest, out=out, **options)

    fused._launch = launch_into_poison
    try:
        return function(*args, **kwargs)
    finally:
        fused._launch = original


# ---- without a GPU -------------------------------------------------------------------------------


def test_importing_the_kernels_does_not_import_cupy():
    code = "import attn_course.kernels, sys; print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", ["float32", "float16", np.float16])
def test_kernel_sources_are_readable_cuda(dtype):
    source = kernel_source(dtype)
    assert "__global__" in source and "online softmax" in source.lower()


def test_kernel_source_refuses_other_dtypes():
    with pytest.raises(ValueError, match="dtype"):
        kernel_source("float64")


def test_numpy_arrays_are_refused_with_a_pointer_to_the_cpu_version():
    x = np.ones((2, 70, 64), dtype=np.float32)
    with pytest.raises(TypeError, match=r"CuPy arrays; q is numpy.*tiled_attention"):
        fused_attention(x, x, x)
    with pytest.raises(TypeError, match=r"CuPy arrays; q is numpy"):
        block_sparse_fused_attention(x, x, x, np.ones((2, 2), bool), 64)


@pytest.mark.parametrize(
    "mask",
    [masks.causal(), masks.sliding_window(5), masks.sliding_window(4, causal=True), masks.sliding_window(0)],
    ids=["causal", "window", "causal-window", "diagonal"],
)
@pytest.mark.parametrize("L, S", [(23, 31), (31, 23)])
def test_offset_masks_become_the_kernels_offset_range(mask, L, S):
    from attn_course.kernels.fused import _offset_range

    lo, hi = _offset_range(mask, L, S)
    offsets = np.arange(L)[:, None] - np.arange(S)[None, :]  # (L, S): i - j
    np.testing.assert_array_equal((lo <= offsets) & (offsets <= hi), masks.materialize(mask, L, S))


def test_masks_the_kernels_cannot_apply_are_refused_on_any_machine():
    from attn_course.kernels.fused import _offset_range

    with pytest.raises(TypeError, match=r"i - j.*got an array"):
        _offset_range(np.ones((4, 4), bool), 4, 4)
    with pytest.raises(TypeError, match="i - j"):
        _offset_range(masks.fixed(4, 1), 8, 8)
    with pytest.raises(ValueError, match="contiguous"):
        _offset_range(masks.dilated_window(3, 2), 16, 16)


# ---- on the GPU ------------------------------------------------------------------------------------


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("L, S", SHAPES)
def test_fused_attention_equals_dense(L, S, is_causal, d, dtype):
    rng = np.random.default_rng(L * 1000 + S + d)
    q, k, v = gpu_qkv(rng, L, S, d, dtype)
    out = poisoned_launch(fused_attention, q, k, v, is_causal=is_causal)
    assert type(out).__module__.startswith("cupy") and out.dtype == dtype and out.shape == (2, 3, L, d)
    assert_close(out, dense_attention64(q, k, v, is_causal=is_causal), what=f"fused {np.dtype(dtype).name}")


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_attention_broadcasts_batch_and_takes_a_scale(dtype):
    rng = np.random.default_rng(3)
    q = random_array(rng, (2, 4, 129, 64), dtype, backend="cupy")
    k = random_array(rng, (1, 4, 150, 64), dtype, backend="cupy")  # broadcast over batch
    v = random_array(rng, (4, 150, 64), dtype, backend="cupy")
    out = fused_attention(q, k, v, scale=0.3)
    assert_close(out, dense_attention64(q, k, v, scale=0.3))


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("block_size", [64, 128])
def test_block_sparse_random_layout_equals_dense_masked(block_size, d, dtype):
    L, S = 389, 457
    rng = np.random.default_rng(block_size + d)
    q, k, v = gpu_qkv(rng, L, S, d, dtype, batch=(3,))
    layout = rng.random((-(-L // block_size), -(-S // block_size))) < 0.4
    layout[1] = False  # a block row with nothing to attend to: zero rows
    out = poisoned_launch(block_sparse_fused_attention, q, k, v, layout, block_size)
    element_mask = np.kron(layout, np.ones((block_size, block_size), bool))[:L, :S]
    expected = dense_attention64(q, k, v, mask=element_mask)
    assert_close(out, expected)
    assert not np.any(to_numpy(out)[:, block_size : 2 * block_size])  # the empty block row


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "mask",
    [masks.sliding_window(70), masks.sliding_window(100, causal=True), masks.causal(), None],
    ids=["window", "causal-window", "causal", "none"],
)
def test_block_sparse_with_an_offset_mask_equals_dense_masked(mask, dtype):
    L, S = 517, 517
    rng = np.random.default_rng(11)
    q, k, v = gpu_qkv(rng, L, S, 64, dtype, batch=(2,))
    pattern = mask if mask is not None else masks.sliding_window(130)
    layout = masks.block_layout(pattern, 64, L, S)
    out = poisoned_launch(block_sparse_fused_attention, q, k, v, layout, 64, mask)
    element_mask = np.kron(layout, np.ones((64, 64), bool))[:L, :S]
    if mask is not None:
        element_mask &= masks.materialize(mask, L, S)
    assert_close(out, dense_attention64(q, k, v, mask=element_mask))


@requires_gpu
def test_sliding_window_matches_sparse_attention_on_a_long_sequence():
    L, w = 4096 + 37, 256
    rng = np.random.default_rng(5)
    q, k, v = gpu_qkv(rng, L, L, 64, np.float32, batch=(2,))
    window = masks.sliding_window(w)
    out = block_sparse_fused_attention(q, k, v, masks.block_layout(window, 64, L, L), 64, window)
    assert_close(out, dense_attention64(q, k, v, mask=window))


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_square_array_is_allocated(dtype):
    import cupy

    L, d, heads = 8192, 64, 2
    rng = np.random.default_rng(2)
    q, k, v = gpu_qkv(rng, L, L, d, dtype, batch=(heads,))
    fused_attention(q, k, v)  # compile and warm up outside the measurement
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.used_bytes()
    out = fused_attention(q, k, v, is_causal=True)
    cupy.cuda.Device().synchronize()
    extra = pool.total_bytes() - before
    square = heads * L * L * np.dtype(dtype).itemsize  # what dense scores would take
    assert extra <= 4 * out.nbytes + (1 << 20), f"{extra} bytes allocated; the (L, L) scores would be {square}"


@requires_gpu
def test_bad_input_is_refused_with_the_argument_named():
    import cupy

    x64 = cupy.ones((2, 70, 64), dtype=cupy.float32)
    with pytest.raises(ValueError, match="head sizes"):
        fused_attention(*(cupy.ones((2, 70, 32), dtype=cupy.float32),) * 3)
    with pytest.raises(TypeError, match="float16 or float32"):
        fused_attention(*(cupy.ones((2, 70, 64), dtype=cupy.float64),) * 3)
    with pytest.raises(TypeError, match="is_causal"):
        fused_attention(x64, x64, x64, is_causal=1)
    with pytest.raises(ValueError, match="k and v"):
        fused_attention(x64, x64, x64[:, :50])
    with pytest.raises(ValueError, match="NaN"):
        fused_attention(x64 * cupy.nan, x64, x64)
    layout = np.ones((2, 2), bool)
    with pytest.raises(ValueError, match="multiple of 64"):
        block_sparse_fused_attention(x64, x64, x64, np.ones((3, 3), bool), 32)
    with pytest.raises(ValueError, match="layout of shape"):
        block_sparse_fused_attention(x64, x64, x64, np.ones((3, 2), bool), 64)
    with pytest.raises(TypeError, match="boolean"):
        block_sparse_fused_attention(x64, x64, x64, layout.astype(int), 64)
    with pytest.raises(TypeError, match="i - j"):
        block_sparse_fused_attention(x64, x64, x64, layout, 64, masks.fixed(8, 2))
    with pytest.raises(ValueError, match="contiguous"):
        block_sparse_fused_attention(x64, x64, x64, layout, 64, masks.dilated_window(4, 2))


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", ["q", "k", "v"])
def test_a_non_finite_input_is_named(bad, dtype):
    import cupy

    rng = np.random.default_rng(9)
    q, k, v = gpu_qkv(rng, 130, 190, 64, dtype)
    arrays = {"q": q, "k": k, "v": v}
    arrays[bad][1, 2, 57, 33] = cupy.inf if bad == "k" else cupy.nan
    with pytest.raises(ValueError, match=f"^{bad} contains NaN or infinite"):
        fused_attention(*arrays.values())
    layout = np.ones((3, 3), bool)
    with pytest.raises(ValueError, match=f"^{bad} contains NaN or infinite"):
        block_sparse_fused_attention(*arrays.values(), layout, 64)
