"""Every CUDA kernel of attn_course.kernels launched once at a tiny size, for compute-sanitizer to watch.

Run by ``tests/gpu/run_gpu_checks.sh`` as ``compute-sanitizer --tool memcheck|racecheck python3 THIS``;
checks nothing itself beyond finite results (the tests do that): what matters is that the sanitizer
reports no out-of-bounds access, uninitialised read or shared-memory race. Sizes are odd (not multiples
of the 64-row tiles) so that every edge path runs: L = 130 queries, S = 190 keys, 2 x 3 heads.
"""

import sys

import numpy as np


def main() -> int:
    import cupy

    from attn_course import masks
    from attn_course.kernels import block_sparse_fused_attention, fused_attention, fused_attention_backward

    rng = np.random.default_rng(0)
    L, S, heads = 130, 190, 3
    calls = []
    for dtype in (np.float32, np.float16):
        for d in (64, 128):
            q, k, v, dout = (
                cupy.asarray(rng.standard_normal((2, heads, n, d)).astype(dtype)) for n in (L, S, S, L)
            )  # (2, 3, n, d)
            name = f"{np.dtype(dtype).name} d={d}"
            out, lse = fused_attention(q, k, v, is_causal=True, return_lse=True)  # the range branch, finite check
            calls.append((f"forward causal {name}", out))
            calls.append((f"window {name}", fused_attention(q, k, v, window=70)))
            grads = fused_attention_backward(q, k, v, out, lse, dout, is_causal=True)
            calls += [(f"backward d{x} {name}", g) for x, g in zip("qkv", grads, strict=True)]
            layout = masks.block_layout(masks.sliding_window(100), 64, L, S)  # tile lists, one layout
            calls.append((f"block-sparse {name}", block_sparse_fused_attention(q, k, v, layout, 64)))
            per_head = rng.random((heads, *layout.shape)) < 0.6  # a layout per head
            calls.append((f"per-head layouts {name}", block_sparse_fused_attention(q, k, v, per_head, 64)))
            if dtype == np.float16:
                for variant in ("q128_w8x16_all", "q128_w8x16_all_ahead"):
                    calls.append((f"{variant} {name}", fused_attention(q, k, v, window=100, _variant=variant)))
    cupy.cuda.Device().synchronize()
    bad = [what for what, x in calls if not bool(cupy.isfinite(x).all())]
    print(f"{len(calls)} results from every kernel; not finite: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
