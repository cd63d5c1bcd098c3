#!/usr/bin/env bash
# Everything the course checks on a GPU, in one go, for whoever has one (about 8 minutes at most on an H200):
#   1. the fused kernels' tests (tests/test_kernels*.py) and the benchmark's own tests,
#   1b. compute-sanitizer's memcheck and racecheck over every kernel launched once at a tiny size
#      (tests/gpu/sanitize_kernels.py), where the tool exists (on PATH or under /usr/local/cuda*/bin),
#   2. the GPU benchmark (python -m attn_course.bench gpu): every implementation timed end to end (ms) and
#      kernel only (kernel_ms), 3 rounds each; JSON records, goals file (issue 17's goals) and plot,
#   3. the CuPy cases of the unit tests (they run only where a GPU is usable),
#   4. lesson 15 executed on the GPU (its GPU cells are skipped by nbval on machines without one),
#      written to OUT_DIR/15_attention_on_the_gpu.gpu.ipynb to read (never over the stored lesson),
#   and last a summary: each stage's exit status and time, and each goal's measured figure.
# Usage, from the repository root on a machine with an NVIDIA GPU, CuPy and torch with CUDA:
#   bash tests/gpu/run_gpu_checks.sh [OUT_DIR]        (default: benchmarks/results/gpu-run)
# On the workplace's lent H200 (no registry there): first `bash tests/gpu/fetch_wheels.sh` here, then carry
# [".whl"] and run, with a timeout of 560 s or more:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site && ATTN_COURSE_COMMIT=<sha> \
#       bash tests/gpu/run_gpu_checks.sh $OUT/gpu-run
# Commit the records it writes (OUT_DIR/<card>.json, _goals.json, .png) to benchmarks/results/.
# Each stage has a time limit in seconds (KERNEL_LIMIT 110, SANITIZER_LIMIT 70, BENCH_LIMIT 200, SUITE_LIMIT 70,
# LESSON_LIMIT 50: 500 s together); a stage that runs out is stopped and the next one starts (the benchmark
# writes its records and goals after each sequence length, so a stopped run keeps what it measured).
set -u
OUT_DIR=${1:-benchmarks/results/gpu-run}
mkdir -p "$OUT_DIR"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The records name the commit; a copy of the tree without .git can pass it in ATTN_COURSE_COMMIT.
if [ -z "${ATTN_COURSE_COMMIT:-}" ] && commit=$(git rev-parse HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
    export ATTN_COURSE_COMMIT=$commit
fi
WORKERS=${WORKERS:-8}
STATUS=()

stage() {  # stage NAME LIMIT COMMAND...: run, log to OUT_DIR/NAME.log, report the time and status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local status=$?
    local verdict="exit $status"
    [ "$status" = 124 ] && verdict="STOPPED at its limit"
    STATUS+=("$name: $verdict after $((SECONDS - start)) s (limit $limit s)")
    echo "== $name: $verdict after $((SECONDS - start)) s (limit $limit s); last lines of $name.log:"
    tail -n "${TAIL_LINES:-8}" "$OUT_DIR/$name.log"
}

{
    date -u
    echo "commit: ${ATTN_COURSE_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    $PYTHON -m attn_course.check_env
} >"$OUT_DIR/environment.txt" 2>&1
head -n 4 "$OUT_DIR/environment.txt"

stage kernels "${KERNEL_LIMIT:-110}" $PYTHON -m pytest tests/test_kernels*.py tests/test_bench_gpu_records.py \
    tests/test_gpu_notes.py -q -n 4 -p no:randomly -p no:cacheprovider
cat "$OUT_DIR/environment.txt" >>"$OUT_DIR/kernels.log" && rm "$OUT_DIR/environment.txt"  # one file fewer to carry
# compute-sanitizer comes with the CUDA toolkit (NVIDIA's apt package cuda-sanitizer-<version>, or the toolkit's
# installer); pip's nvidia-cuda-sanitizer-api(-cu12) holds only its library, not the tool. The kernels are in
# CuPy's disk cache by now (the first stage compiled them with the same options), so the time is the launches'.
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | tail -n 1)
if [ -n "$SANITIZER" ]; then
    TAIL_LINES=6 stage sanitizer "${SANITIZER_LIMIT:-70}" bash -c 'for tool in memcheck racecheck; do
        echo "-- $tool"; "$0" --tool "$tool" --error-exitcode 1 --print-limit 20 "$1" tests/gpu/sanitize_kernels.py || exit
    done' "$SANITIZER" "$PYTHON"
else
    STATUS+=("sanitizer: not run, compute-sanitizer is absent")
    echo "== sanitizer: not run: compute-sanitizer is neither on PATH nor under /usr/local/cuda*/bin. It comes with"
    echo "   the CUDA toolkit (apt: cuda-sanitizer-<version> from NVIDIA's repository); pip's"
    echo "   nvidia-cuda-sanitizer-api(-cu12) provides the library only, not the tool"
fi
TAIL_LINES=4 stage bench "${BENCH_LIMIT:-200}" $PYTHON -m attn_course.bench gpu --out "$OUT_DIR"
# The CuPy cases of the unit tests: every test module parametrised over tests/support.py's BACKENDS, and the
# backend's own tests (the rest of the suite runs on CPUs in CI; the kernel tests ran in the first stage).
TAIL_LINES=4 stage suite "${SUITE_LIMIT:-70}" $PYTHON -m pytest $(grep -l "BACKENDS" tests/test_*.py) \
    tests/test_backend.py -q -k "cupy or gpu" -n "$WORKERS" -p no:randomly -p no:cacheprovider
TAIL_LINES=6 stage lesson15 "${LESSON_LIMIT:-50}" $PYTHON - "$OUT_DIR/15_attention_on_the_gpu.gpu.ipynb" <<'PY'
import sys, time

import nbclient, nbformat

notebook = nbformat.read("notebooks/15_attention_on_the_gpu.ipynb", as_version=4)
started = time.perf_counter()
nbclient.NotebookClient(notebook, timeout=45, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
nbformat.write(notebook, sys.argv[1])
for cell in notebook.cells:
    if cell.cell_type == "code" and "nbval-skip" in cell.metadata.get("tags", []):
        print("".join(out.get("text", "") for out in cell.outputs))
print(f"lesson 15 ran in {time.perf_counter() - started:.1f} s")
PY

echo
echo "== summary (logs and records in $OUT_DIR)"
printf '  %s\n' "${STATUS[@]}"
$PYTHON -c "import sys; from attn_course.bench import gpu; sys.exit(gpu.print_summary(sys.argv[1]))" "$OUT_DIR"
