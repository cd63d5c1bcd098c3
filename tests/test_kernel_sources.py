"""Every CUDA kernel of attn_course.kernels compiles for the H100/H200 (sm_90), on any machine with NVRTC.

The kernels can only run on a GPU, but NVRTC (CUDA's run-time compiler, the one
CuPy uses) compiles without one. Each kernel is compiled as its launcher
assembles it (headers in front, the same options), at both head sizes, for the
float16 forward in every variant of ``kernels/variants.py``; ptxas's report must
show no spills for the kernels the course runs by default. Skipped, with the
reason, where NVRTC cannot be loaded (``pip install nvidia-cuda-nvrtc-cu12``).
"""

import re

import pytest

from attn_course.kernels.fused import kernel_code
from attn_course.kernels.fused_backward import backward_kernel_code, backward_kernel_names
from attn_course.kernels.variants import FP16_VARIANTS, variant_options

HEAD_DIMS = [64, 128]
OPTIONS = ("--std=c++17", "--use_fast_math", "--gpu-architecture=sm_90", "--ptxas-options=-v")


def nvrtc_or_skip():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as err:  # CuPy missing, or libnvrtc not found
        pytest.skip(f"NVRTC cannot be loaded here ({type(err).__name__}: {err}); pip install nvidia-cuda-nvrtc-cu12")
    return nvrtc


def compile_for_sm90(code: str, names, extra_options=()) -> dict:
    """Compile ``code`` for sm_90 with the launcher's options: {"cubin": bytes, "log": ptxas's report}."""
    nvrtc = nvrtc_or_skip()
    program = nvrtc.createProgram(code, "kernel.cu", [], [])
    for name in names:
        nvrtc.addNameExpression(program, name)
    try:
        nvrtc.compileProgram(program, [*OPTIONS, *extra_options])
    except Exception as err:
        pytest.fail(f"{names} {extra_options} does not compile: {err}\n{nvrtc.getProgramLog(program)}")
    return {"cubin": nvrtc.getCUBIN(program), "log": nvrtc.getProgramLog(program)}


def spilled_bytes(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"(\d+) bytes spill stores", log)]


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_forward_kernels_compile_without_spills(dtype, d):
    result = compile_for_sm90(kernel_code(dtype), [f"attention_{'fp16' if dtype == 'float16' else 'fp32'}<{d}>"])
    assert result["cubin"][:4] == b"\x7fELF"
    assert spilled_bytes(result["log"]) and not any(spilled_bytes(result["log"])), result["log"]


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("variant", sorted(FP16_VARIANTS))
def test_every_float16_variant_compiles(variant, d):
    result = compile_for_sm90(kernel_code("float16"), [f"attention_fp16<{d}>"], variant_options(variant))
    assert result["cubin"][:4] == b"\x7fELF" and "Used" in result["log"]


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("variant", sorted(name for name, macros in FP16_VARIANTS.items() if macros.get("LOOK_AHEAD")))
def test_the_look_ahead_variants_compile_without_spills(variant, d):
    # S of the next tile lives beside the current one's: a second set of score registers, which must not spill
    result = compile_for_sm90(kernel_code("float16"), [f"attention_fp16<{d}>"], variant_options(variant))
    assert spilled_bytes(result["log"]) == [0], result["log"]
    assert "0 bytes stack frame" in result["log"], result["log"]


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_backward_kernels_compile_without_spills(dtype, d):
    result = compile_for_sm90(backward_kernel_code(dtype), backward_kernel_names(dtype, d))
    assert result["cubin"][:4] == b"\x7fELF"
    spills = spilled_bytes(result["log"])
    assert len(spills) == 2 and not any(spills), result["log"]  # the pre-pass and the main kernel


def test_a_broken_kernel_fails_to_compile():
    nvrtc = nvrtc_or_skip()
    program = nvrtc.createProgram("__global__ void broken() { undeclared = 1; }", "broken.cu", [], [])
    with pytest.raises(Exception, match="COMPILATION"):
        nvrtc.compileProgram(program, list(OPTIONS))
