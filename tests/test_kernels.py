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
from attn_course.kernels.variants import FP16_VARIANTS
from tests.dense_reference import dense_attention64
from tests.support import assert_close, random_array, requires_gpu, to_torch64

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


@pytest.mark.parametrize("check_finite", ["yes", "Deferred", 1, None])
def test_check_finite_takes_true_false_or_deferred_on_any_machine(check_finite):
    x = np.ones((2, 70, 64), dtype=np.float32)  # refused before anything looks at the arrays
    error = ValueError if isinstance(check_finite, str) else TypeError
    with pytest.raises(error, match=r"^fused_attention: check_finite must be True, False or 'deferred'"):
        fused_attention(x, x, x, check_finite=check_finite)
    with pytest.raises(error, match=r"^block_sparse_fused_attention: check_finite must be"):
        block_sparse_fused_attention(x, x, x, np.ones((2, 2), bool), 64, check_finite=check_finite)


@pytest.mark.parametrize("check_finite", [False, "deferred", True])
def test_without_a_gpu_every_check_finite_mode_still_says_what_to_use(check_finite):
    x = np.ones((2, 70, 64), dtype=np.float32)
    with pytest.raises(TypeError, match=r"CuPy arrays; q is numpy.*tiled_attention"):
        fused_attention(x, x, x, check_finite=check_finite)
    with pytest.raises(TypeError, match=r"CuPy arrays; q is numpy"):
        block_sparse_fused_attention(x, x, x, np.ones((2, 2), bool), 64, check_finite=check_finite)


def test_a_deferred_check_with_nothing_deferred_passes_without_touching_cuda():
    code = (
        "import sys; from attn_course.kernels.fused import check_deferred_finite; "
        "print(check_deferred_finite(), 'cupy' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "None False"


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


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_check_finite_false_skips_the_test_and_changes_nothing_else(dtype):
    import cupy

    rng = np.random.default_rng(12)
    q, k, v = gpu_qkv(rng, 130, 190, 64, dtype)
    layout = np.ones((3, 3), bool)
    assert_close(fused_attention(q, k, v, check_finite=False), dense_attention64(q, k, v))
    assert_close(block_sparse_fused_attention(q, k, v, layout, 64, check_finite=False), dense_attention64(q, k, v))
    q[0, 1, 5, 7] = cupy.nan  # no error: the values are not looked at
    for result in (
        fused_attention(q, k, v, check_finite=False),
        block_sparse_fused_attention(q, k, v, layout, 64, check_finite=False),
    ):
        out = to_numpy(result)
        assert not np.isfinite(out[0, 1, 5]).all() and np.isfinite(out[1]).all()  # only the poisoned query's row


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_deferred_check_raises_later_naming_the_function_and_argument(dtype):
    import cupy

    from attn_course.kernels.fused import check_deferred_finite

    check_deferred_finite()  # whatever an earlier test left
    rng = np.random.default_rng(13)
    q, k, v = gpu_qkv(rng, 130, 190, 64, dtype)
    layout = np.ones((3, 3), bool)
    out = fused_attention(q, k, v, check_finite="deferred")  # finite inputs: the check passes
    assert check_deferred_finite() is None
    assert_close(out, dense_attention64(q, k, v))
    k[1, 2, 57, 33] = cupy.inf
    fused_attention(q, k, v, check_finite="deferred")  # no error yet: nothing was read back
    v[0, 0, 3, 3] = cupy.nan
    block_sparse_fused_attention(q, k, v, layout, 64, check_finite="deferred")
    seen = r"check: fused_attention: k, block_sparse_fused_attention: k, block_sparse_fused_attention: v "
    with pytest.raises(ValueError, match=seen + r"\(device \d+\); attention needs finite inputs"):
        check_deferred_finite()
    assert check_deferred_finite() is None  # read and cleared


# ---- the log-sum-exp, the backward kernel, the float16 variants, training through autograd ------------


def relative_error(actual, expected) -> float:
    """||actual - expected|| / ||expected||, in float64 (expected: a torch tensor or any array)."""
    a = np.asarray(to_numpy(actual), dtype=np.float64)
    e = expected.detach().numpy() if hasattr(expected, "detach") else np.asarray(to_numpy(expected), dtype=np.float64)
    return float(np.linalg.norm(a - e) / np.linalg.norm(e))


GRADIENT_BOUND = {np.float16: 2e-3, np.float32: 1e-5}  # relative to each gradient's norm (issue 17)
FORWARD_BOUND_FP16 = 1e-3  # the float16 forward's relative-norm error bound (issue 17)


def torch_reference(q, k, v, dout=None, *, is_causal=False, scale=None):
    """out, lse, and (with dout) dq, dk, dv by torch autograd in float64 on the CPU, from the same (rounded) inputs."""
    import torch

    q64, k64, v64 = (to_torch64(x).requires_grad_(True) for x in (q, k, v))
    scale = 1 / np.sqrt(q64.shape[-1]) if scale is None else scale
    scores = q64 @ k64.transpose(-1, -2) * scale  # (..., L, S)
    if is_causal:
        L, S = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (..., L)
    out = torch.softmax(scores, dim=-1) @ v64  # (..., L, d)
    if dout is None:
        return out, lse
    out.backward(to_torch64(dout))
    return out, lse, q64.grad, k64.grad, v64.grad


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_the_log_sum_exp_equals_torch_logsumexp(is_causal, d, dtype):
    rng = np.random.default_rng(d + is_causal)
    q, k, v = gpu_qkv(rng, 197, 211, d, dtype)
    out, lse = fused_attention(q, k, v, is_causal=is_causal, return_lse=True)
    assert lse.dtype == np.float32 and lse.shape == (2, 3, 197)
    _, expected_lse = torch_reference(q, k, v, is_causal=is_causal)
    np.testing.assert_allclose(to_numpy(lse), expected_lse.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert_close(out, fused_attention(q, k, v, is_causal=is_causal))  # return_lse changes nothing else


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("L, S", [(197, 211), (211, 131), (64, 64), (1, 77), (300, 5)])
def test_the_backward_kernel_equals_torch_autograd_in_float64(L, S, is_causal, d, dtype):
    from attn_course.kernels import fused_attention_backward

    rng = np.random.default_rng(L * 7 + S + d)
    q, k, v = gpu_qkv(rng, L, S, d, dtype)
    dout = random_array(rng, (2, 3, L, d), dtype, backend="cupy")
    out, lse = fused_attention(q, k, v, is_causal=is_causal, return_lse=True)
    grads = fused_attention_backward(q, k, v, out, lse, dout, is_causal=is_causal)
    *_, dq64, dk64, dv64 = torch_reference(q, k, v, dout, is_causal=is_causal)
    for name, grad, expected, x in zip("qkv", grads, (dq64, dk64, dv64), (q, k, v), strict=True):
        assert grad.dtype == dtype and grad.shape == x.shape, f"d{name}: {grad.dtype} {grad.shape}"
        assert not np.isnan(to_numpy(grad)).any(), f"d{name} has NaN"
        error = relative_error(grad, expected)
        assert error <= GRADIENT_BOUND[dtype], f"d{name}: relative error {error:.2e} > {GRADIENT_BOUND[dtype]}"


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_backward_sums_the_gradients_of_broadcast_inputs_and_takes_a_scale(dtype):
    from attn_course.kernels import fused_attention_backward

    rng = np.random.default_rng(4)
    q = random_array(rng, (2, 4, 129, 64), dtype, backend="cupy")
    k = random_array(rng, (1, 4, 150, 64), dtype, backend="cupy")  # shared by the batch
    v = random_array(rng, (4, 150, 64), dtype, backend="cupy")
    dout = random_array(rng, (2, 4, 129, 64), dtype, backend="cupy")
    out, lse = fused_attention(q, k, v, scale=0.3, return_lse=True)
    grads = fused_attention_backward(q, k, v, out, lse, dout, scale=0.3)
    *_, dq64, dk64, dv64 = torch_reference(q, k, v, dout, scale=0.3)
    for grad, expected, x in zip(grads, (dq64, dk64, dv64), (q, k, v), strict=True):
        assert grad.shape == x.shape
        assert relative_error(grad, expected) <= GRADIENT_BOUND[dtype]


@requires_gpu
def test_the_backward_refuses_bad_input_naming_the_argument():
    import cupy

    from attn_course.kernels import fused_attention_backward

    x = cupy.ones((2, 70, 64), dtype=cupy.float32)
    lse = cupy.zeros((2, 70), dtype=cupy.float32)
    with pytest.raises(ValueError, match=r"^lse must have shape \(2, 70\)"):
        fused_attention_backward(x, x, x, x, lse[:, :50], x)
    with pytest.raises(ValueError, match=r"^dout must have shape"):
        fused_attention_backward(x, x, x, x, lse, x.astype(cupy.float16))
    with pytest.raises(ValueError, match="head sizes"):
        y = cupy.ones((2, 70, 32), dtype=cupy.float32)
        fused_attention_backward(y, y, y, y, lse, y)
    with pytest.raises(TypeError, match="CuPy arrays; dout is numpy"):
        fused_attention_backward(x, x, x, x, lse, np.ones((2, 70, 64), np.float32))


@requires_gpu
@pytest.mark.parametrize("variant", sorted(FP16_VARIANTS))
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_every_float16_variant_equals_torch_sdpa(is_causal, d, variant):
    import torch

    rng = np.random.default_rng(d + 2 * is_causal)
    for L, S in ((389, 457), (130, 64), (1, 200)):  # odd lengths, not multiples of 64 or 128
        q, k, v = gpu_qkv(rng, L, S, d, np.float16)
        out, lse = poisoned_launch(fused_attention, q, k, v, is_causal=is_causal, return_lse=True, _variant=variant)
        q64, k64, v64 = (to_torch64(x) for x in (q, k, v))
        expected = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, is_causal=is_causal)
        error = relative_error(out, expected)
        assert error <= FORWARD_BOUND_FP16, f"{variant} at L={L}, S={S}: relative error {error:.2e}"
        _, expected_lse = torch_reference(q, k, v, is_causal=is_causal)
        np.testing.assert_allclose(to_numpy(lse), expected_lse.detach().numpy(), rtol=1e-5, atol=1e-5)


@requires_gpu
def test_a_variant_is_chosen_by_the_environment(monkeypatch):
    from attn_course.kernels.variants import VARIANT_ENV_VAR

    rng = np.random.default_rng(8)
    q, k, v = gpu_qkv(rng, 200, 150, 64, np.float16)
    monkeypatch.setenv(VARIANT_ENV_VAR, "q128_w4x32")
    assert relative_error(fused_attention(q, k, v), dense_attention64(q, k, v)) <= FORWARD_BOUND_FP16
    monkeypatch.setenv(VARIANT_ENV_VAR, "no-such-variant")
    with pytest.raises(ValueError, match="unknown float16 kernel variant"):
        fused_attention(q, k, v)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_window_with_many_more_queries_than_keys(dtype):
    L, S = 2048 + 17, 130
    rng = np.random.default_rng(12)
    q, k, v = gpu_qkv(rng, L, S, 64, dtype, batch=(2,))
    window = masks.sliding_window(100)
    layout = masks.block_layout(window, 64, L, S)
    out = poisoned_launch(block_sparse_fused_attention, q, k, v, layout, 64, window)
    expected = dense_attention64(q, k, v, mask=window)  # rows past S + 100 see no key: zeros
    assert_close(out, expected)
    assert not np.any(to_numpy(out)[:, S + 101 :])


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs_give_the_contiguous_result(dtype):
    import cupy

    rng = np.random.default_rng(13)
    wide = random_array(rng, (2, 150, 3, 2 * 64), dtype, backend="cupy")  # (B, L, H, 2d): a fused projection
    q = wide[..., :64].transpose(0, 2, 1, 3)  # (B, H, L, d), strided
    k = wide[..., 64:].transpose(0, 2, 1, 3)[:, :, ::2]  # every other key: (B, H, 75, d)
    v = random_array(rng, (2, 3, 75, 128), dtype, backend="cupy")[..., ::2]  # (B, H, 75, d), strided columns
    assert not (q.flags.c_contiguous or k.flags.c_contiguous or v.flags.c_contiguous)
    out = fused_attention(q, k, v, is_causal=True)
    plain = fused_attention(*(cupy.ascontiguousarray(x) for x in (q, k, v)), is_causal=True)
    np.testing.assert_array_equal(to_numpy(out), to_numpy(plain))
    assert_close(out, dense_attention64(q, k, v, is_causal=True))


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@requires_gpu
@pytest.mark.skipif(not torch_cuda_available(), reason="torch with CUDA is needed")
@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
def test_the_autograd_function_runs_the_kernels_and_a_tiny_model_trains(dtype_name):
    import torch

    from attn_course.autograd import attention, fused_kernels_apply

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 100, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    assert fused_kernels_apply(q, k, v, None)
    out = attention(q, k, v, is_causal=True)
    out.backward(torch.ones_like(out))
    reference = [x.detach().double().cpu().requires_grad_(True) for x in (q, k, v)]
    expected = torch.nn.functional.scaled_dot_product_attention(*reference, is_causal=True)
    expected.backward(torch.ones_like(expected))
    for x, r in zip((q, k, v), reference, strict=True):
        assert relative_error(x.grad.float().cpu(), r.grad) <= GRADIENT_BOUND[np.dtype(dtype_name).type]

    class TinyModel(torch.nn.Module):  # embeddings -> one attention head of size 64 -> next-token logits
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(11, 64)
            self.qkv = torch.nn.Linear(64, 3 * 64)
            self.head = torch.nn.Linear(64, 11)

        def forward(self, tokens):  # (B, L) -> (B, L, 11)
            q, k, v = self.qkv(self.embed(tokens)).to(dtype).chunk(3, dim=-1)  # (B, L, 64) each
            return self.head(attention(q, k, v, is_causal=True).float())

    model = TinyModel().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    tokens = torch.arange(130, device="cuda").remainder(11).repeat(4, 1)  # (4, 130): a repeating sequence
    losses = []
    for _ in range(30):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], f"losses {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_the_autograd_function_keeps_the_reference_path_off_the_gpu():
    import torch

    from attn_course.autograd import fused_kernels_apply

    x = torch.ones(2, 5, 64)
    assert not fused_kernels_apply(x, x, x, None)  # CPU tensors: tiled_attention and its backward


def test_the_backward_refuses_numpy_with_a_pointer_to_the_cpu_version():
    from attn_course.kernels import fused_attention_backward

    x = np.ones((2, 70, 64), dtype=np.float32)
    with pytest.raises(TypeError, match=r"CuPy arrays; q is numpy.*tiled_attention_backward"):
        fused_attention_backward(x, x, x, x, np.zeros((2, 70), np.float32), x)


def test_an_unknown_variant_is_refused_by_name():
    from attn_course.kernels.variants import selected_variant

    assert selected_variant("q128_w8x16") == "q128_w8x16"
    with pytest.raises(ValueError, match="unknown float16 kernel variant 'q256'"):
        selected_variant("q256")


# ---- the native window, layouts per head, the look-ahead variant -----------------------------------------

WINDOW_CASES = [(0, False), (5, False), (4, True), (100, True), (10**12, False)]


@pytest.mark.parametrize("window, causal", WINDOW_CASES)
@pytest.mark.parametrize("L, S", [(23, 31), (31, 23)])
def test_a_window_becomes_the_kernels_offset_range(L, S, window, causal):
    from attn_course.kernels.fused import offset_range

    lo, hi = offset_range(L, S, is_causal=causal, window=window)
    offsets = np.arange(L)[:, None] - np.arange(S)[None, :]  # (L, S): i - j
    expected = masks.materialize(masks.sliding_window(min(window, 10**6), causal=causal), L, S)
    np.testing.assert_array_equal((lo <= offsets) & (offsets <= hi), expected)
    assert -(2**31) < lo <= hi < 2**31  # fits the kernels' int32, whatever the window
    for is_causal, rule in ((False, np.ones((L, S), bool)), (True, masks.causal_mask(L, S))):
        lo, hi = offset_range(L, S, is_causal=is_causal)
        np.testing.assert_array_equal((lo <= offsets) & (offsets <= hi), rule)


@pytest.mark.parametrize("window, error", [(-1, ValueError), (2.5, TypeError), (True, TypeError), ("8", TypeError)])
def test_a_bad_window_is_refused_by_name_before_the_gpu_is_touched(window, error):
    from attn_course.kernels import fused_attention_backward

    x = np.ones((2, 70, 64), dtype=np.float32)
    with pytest.raises(error, match=r"^window must be"):
        fused_attention(x, x, x, window=window)
    with pytest.raises(error, match=r"^window must be"):
        fused_attention_backward(x, x, x, x, np.zeros((2, 70), np.float32), x, window=window)


def plain_tile_lists(layout, block_size, L, S, lo, hi):
    """The CSR of kernel tiles built one tile at a time: head by head, query tile by query tile."""
    rows, cols = -(-L // 64), -(-S // 64)
    tile_ptr, tile_idx = [0], []
    for head in layout:
        for r in range(rows):
            for c in range(cols):
                offsets = [64 * r + a - (64 * c + b) for a in (0, 63) for b in (0, 63)]  # the tile's extreme i - j
                if head[64 * r // block_size, 64 * c // block_size] and max(offsets) >= lo and min(offsets) <= hi:
                    tile_idx.append(c)
            tile_ptr.append(len(tile_idx))
    return np.array(tile_ptr), np.array(tile_idx or [0])


@pytest.mark.parametrize("block_size", [64, 128])
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("rule", [None, (-70, 70), (0, 200)], ids=["all", "window", "causal-window"])
def test_the_tile_lists_of_a_layout_per_head(rule, heads, block_size):
    from attn_course.kernels.fused import kernel_tile_lists

    L, S = 389, 457
    lo, hi = rule or (-S, L)
    rng = np.random.default_rng(heads * block_size)
    layout = rng.random((heads, -(-L // block_size), -(-S // block_size))) < 0.5  # (h, nb_q, nb_k)
    layout[-1, 1] = False  # an empty block row in the last head
    tile_ptr, tile_idx = kernel_tile_lists(layout, block_size, L, S, lo, hi)
    expected_ptr, expected_idx = plain_tile_lists(layout, block_size, L, S, lo, hi)
    assert tile_ptr.dtype == tile_idx.dtype == np.int32 and len(tile_ptr) == heads * -(-L // 64) + 1
    np.testing.assert_array_equal(tile_ptr, expected_ptr)
    np.testing.assert_array_equal(tile_idx, expected_idx)
    shared_ptr, shared_idx = kernel_tile_lists(layout[:1], block_size, L, S, lo, hi)
    rows = -(-L // 64)
    np.testing.assert_array_equal(shared_ptr, tile_ptr[: rows + 1])  # head 0's lists lead
    np.testing.assert_array_equal(shared_idx[: shared_ptr[-1]], tile_idx[: shared_ptr[-1]])


def test_a_layout_per_head_is_checked_against_the_heads_axis():
    from attn_course.kernels.fused import check_head_layouts

    shared = np.ones((7, 8), bool)  # L = 389, S = 457, block 64
    assert check_head_layouts(shared, 64, 389, 457, (2, 3)).shape == (1, 7, 8)
    assert check_head_layouts(np.ones((3, 7, 8), bool), 64, 389, 457, (2, 3)).shape == (3, 7, 8)
    assert check_head_layouts(np.ones((1, 7, 8), bool), 64, 389, 457, (2, 3)).shape == (1, 7, 8)
    with pytest.raises(ValueError, match=r"^layout of shape \(2, 7, 8\) does not fit.*\(3, 7, 8\).*3 heads"):
        check_head_layouts(np.ones((2, 7, 8), bool), 64, 389, 457, (2, 3))
    with pytest.raises(ValueError, match=r"^layout of shape \(3, 7, 9\) does not fit"):
        check_head_layouts(np.ones((3, 7, 9), bool), 64, 389, 457, (2, 3))
    with pytest.raises(TypeError, match="boolean"):
        check_head_layouts(np.ones((3, 7, 8), int), 64, 389, 457, (2, 3))
    with pytest.raises(ValueError, match=r"layout of shape \(7, 7\) does not match"):
        check_head_layouts(np.ones((7, 7), bool), 64, 389, 457, (2, 3))


def test_the_look_ahead_variants_are_registered():
    ahead = [name for name, macros in FP16_VARIANTS.items() if macros.get("LOOK_AHEAD")]
    assert ahead and all(FP16_VARIANTS[name]["WARPS"] == 8 and FP16_VARIANTS[name]["WARP_ROWS"] == 16 for name in ahead)


def test_the_autograd_function_takes_a_window_on_the_cpu():
    import torch

    from attn_course.autograd import attention

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 6, dtype=torch.float64, requires_grad=True) for n in (37, 29, 29))
    for causal in (False, True):
        out = attention(q, k, v, is_causal=causal, window=5)
        allowed = torch.from_numpy(masks.materialize(masks.sliding_window(5, causal=causal), 37, 29))
        no_key = ~allowed.any(-1, keepdim=True)  # (L, 1): queries past S + 5 see nothing: zero rows
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed | no_key)
        expected = expected.masked_fill(no_key, 0.0)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
        torch.testing.assert_close(out, expected)
        for grad, reference in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, reference)
    with pytest.raises(ValueError, match="window or mask"):
        attention(q, k, v, masks.causal(), window=3)
    with pytest.raises(ValueError, match=r"^window must be >= 0"):
        attention(q, k, v, window=-2)


def windowed_reference(q, k, v, dout, *, window, is_causal=False):
    """out, lse, dq, dk, dv by torch autograd in float64 for keys with |i - j| <= window; rows with no key: zeros."""
    import torch

    q64, k64, v64 = (to_torch64(x).requires_grad_(True) for x in (q, k, v))
    L, S = q64.shape[-2], k64.shape[-2]
    allowed = torch.from_numpy(masks.materialize(masks.sliding_window(window, causal=is_causal), L, S))
    no_key = ~allowed.any(-1, keepdim=True)  # (L, 1)
    scores = (q64 @ k64.transpose(-1, -2) / np.sqrt(q64.shape[-1])).masked_fill(~(allowed | no_key), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1).masked_fill(no_key[:, 0], float("-inf"))  # (..., L)
    out = (torch.softmax(scores, dim=-1) @ v64).masked_fill(no_key, 0.0)  # (..., L, d)
    out.backward(to_torch64(dout))
    return out, lse, q64.grad, k64.grad, v64.grad


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("window, is_causal", [(0, False), (70, False), (100, True), (300, False)])
@pytest.mark.parametrize("L, S", [(389, 457), (457, 130), (2048 + 17, 130)])
def test_the_native_window_equals_dense_masked_and_its_backward_torch(L, S, window, is_causal, d, dtype):
    from attn_course.kernels import fused_attention_backward

    rng = np.random.default_rng(L + S + window + d)
    q, k, v = gpu_qkv(rng, L, S, d, dtype, batch=(2,))
    dout = random_array(rng, (2, L, d), dtype, backend="cupy")
    out, lse = poisoned_launch(fused_attention, q, k, v, is_causal=is_causal, window=window, return_lse=True)
    expected, expected_lse, *expected_grads = windowed_reference(q, k, v, dout, window=window, is_causal=is_causal)
    assert_close(out, dense_attention64(q, k, v, mask=masks.sliding_window(window, causal=is_causal)))
    assert relative_error(out, expected) <= (FORWARD_BOUND_FP16 if dtype == np.float16 else 1e-5)
    np.testing.assert_allclose(to_numpy(lse), expected_lse.detach().numpy(), rtol=1e-5, atol=1e-5)
    grads = fused_attention_backward(q, k, v, out, lse, dout, is_causal=is_causal, window=window)
    for name, grad, reference in zip("qkv", grads, expected_grads, strict=True):
        assert not np.isnan(to_numpy(grad)).any(), f"d{name} has NaN"
        error = relative_error(grad, reference)
        assert error <= GRADIENT_BOUND[dtype], f"d{name}: relative error {error:.2e} > {GRADIENT_BOUND[dtype]}"


@requires_gpu
@pytest.mark.parametrize("variant", ["default", "q128_w8x16_all", "q128_w8x16_fold_ahead", "q128_w8x16_all_ahead"])
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_the_native_window_in_float16_variants_equals_the_block_sparse_window(d, variant):
    rng = np.random.default_rng(d)
    L, S, window = 1000 + 3, 1000 + 3, 256
    q, k, v = gpu_qkv(rng, L, S, d, np.float16, batch=(3,))
    out = poisoned_launch(fused_attention, q, k, v, window=window, _variant=variant)
    rule = masks.sliding_window(window)
    sparse = block_sparse_fused_attention(q, k, v, masks.block_layout(rule, 64, L, S), 64, rule)
    assert relative_error(out, sparse) <= FORWARD_BOUND_FP16
    assert relative_error(out, dense_attention64(q, k, v, mask=rule)) <= FORWARD_BOUND_FP16


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("block_size", [64, 128])
@pytest.mark.parametrize("mask", [None, masks.sliding_window(150, causal=True)], ids=["none", "causal-window"])
def test_a_layout_per_head_equals_block_sparse_attention_head_by_head(mask, block_size, d, dtype):
    import torch

    from attn_course import block_sparse_attention

    L, S, heads = 389, 457, 3
    rng = np.random.default_rng(block_size + d + heads)
    q, k, v = gpu_qkv(rng, L, S, d, dtype, batch=(2, heads))
    layout = rng.random((heads, -(-L // block_size), -(-S // block_size))) < 0.4  # (h, nb_q, nb_k)
    layout[1, 2] = False  # head 1: an empty block row
    out = poisoned_launch(block_sparse_fused_attention, q, k, v, layout, block_size, mask)
    assert out.shape == (2, heads, L, d) and out.dtype == dtype
    for h in range(heads):
        q64, k64, v64 = (to_numpy(x[:, h]).astype(np.float64) for x in (q, k, v))  # (2, n, d) each
        expected = block_sparse_attention(q64, k64, v64, layout[h], block_size, mask)  # the NumPy reference
        assert_close(out[:, h], expected.astype(dtype), what=f"head {h}")
        allowed = np.kron(layout[h], np.ones((block_size, block_size), bool))[:L, :S]
        if mask is not None:
            allowed &= masks.materialize(mask, L, S)
        no_key = ~allowed.any(-1, keepdims=True)
        scores = torch.from_numpy(q64 @ k64.transpose(0, 2, 1) / np.sqrt(d))  # (2, L, S)
        weights = torch.softmax(scores.masked_fill(torch.from_numpy(~(allowed | no_key)), float("-inf")), dim=-1)
        by_torch = (weights @ torch.from_numpy(v64)).masked_fill(torch.from_numpy(no_key), 0.0)
        assert relative_error(out[:, h], by_torch) <= (FORWARD_BOUND_FP16 if dtype == np.float16 else 1e-5)
    assert not np.any(to_numpy(out)[:, 1, 2 * block_size : 3 * block_size])  # head 1's empty block row
    shared = block_sparse_fused_attention(q, k, v, layout[:1], block_size, mask)  # (1, ...): one for all heads
    np.testing.assert_array_equal(
        to_numpy(shared), to_numpy(block_sparse_fused_attention(q, k, v, layout[0], block_size, mask))
    )


@requires_gpu
def test_window_and_per_head_layout_errors_name_the_argument():
    import cupy

    x = cupy.ones((2, 3, 130, 64), dtype=cupy.float32)
    with pytest.raises(ValueError, match=r"^window must be >= 0"):
        fused_attention(x, x, x, window=-3)
    with pytest.raises(ValueError, match=r"^layout of shape \(2, 3, 3\) does not fit.*\(3, 3, 3\)"):
        block_sparse_fused_attention(x, x, x, np.ones((2, 3, 3), bool), 64)
