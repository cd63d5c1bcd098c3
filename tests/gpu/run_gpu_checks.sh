#!/usr/bin/env bash
# Everything the course checks on a GPU, in one go, for whoever has one:
#   1. the fused kernels' tests (tests/test_kernels.py),
#   2. the GPU benchmark (python -m attn_course.bench gpu), its JSON records, goals and plot,
#   3. the whole unit-test suite, whose CuPy cases run only where a GPU is usable,
#   4. lesson 15 executed on the GPU (its GPU cells are skipped by nbval on machines without one),
#      written to OUT_DIR/15_attention_on_the_gpu.gpu.ipynb to read (never over the stored lesson).
# Usage, from the repository root on a machine with an NVIDIA GPU, CuPy and torch with CUDA:
#   bash tests/gpu/run_gpu_checks.sh [OUT_DIR]        (default: benchmarks/results/gpu-run)
# Commit the records it writes (OUT_DIR/<card>.json, _goals.json, .png) to benchmarks/results/.
# Each stage has a time limit (seconds; override with KERNEL_LIMIT, BENCH_LIMIT, SUITE_LIMIT).
set -u
OUT_DIR=${1:-benchmarks/results/gpu-run}
mkdir -p "$OUT_DIR"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORKERS=${WORKERS:-8}

stage() {  # stage NAME LIMIT COMMAND...: run, log to OUT_DIR/NAME.log, report the time and status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - start)) s (limit $limit s); last lines of $name.log:"
    tail -n "${TAIL_LINES:-25}" "$OUT_DIR/$name.log"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    $PYTHON -m attn_course.check_env
} >"$OUT_DIR/environment.txt" 2>&1
head -n 3 "$OUT_DIR/environment.txt"

stage kernels "${KERNEL_LIMIT:-150}" $PYTHON -m pytest tests/test_kernels.py -q -p no:randomly -p no:cacheprovider
cat "$OUT_DIR/environment.txt" >>"$OUT_DIR/kernels.log" && rm "$OUT_DIR/environment.txt"  # one file fewer to carry
stage bench "${BENCH_LIMIT:-300}" $PYTHON -m attn_course.bench gpu --out "$OUT_DIR"
# test_lab.py starts JupyterLab, which GPU images seldom have; it tests nothing about the GPU.
stage suite "${SUITE_LIMIT:-240}" $PYTHON -m pytest tests -q -m "not grader" -n "$WORKERS" --dist loadfile \
    -p no:randomly -p no:cacheprovider --ignore=tests/test_lab.py
stage lesson15 "${LESSON_LIMIT:-180}" $PYTHON - "$OUT_DIR/15_attention_on_the_gpu.gpu.ipynb" <<'PY'
import sys, time

import nbclient, nbformat

notebook = nbformat.read("notebooks/15_attention_on_the_gpu.ipynb", as_version=4)
started = time.perf_counter()
nbclient.NotebookClient(notebook, timeout=170, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
nbformat.write(notebook, sys.argv[1])
for cell in notebook.cells:
    if cell.cell_type == "code" and "nbval-skip" in cell.metadata.get("tags", []):
        print("".join(out.get("text", "") for out in cell.outputs))
print(f"lesson 15 ran in {time.perf_counter() - started:.1f} s")
PY
