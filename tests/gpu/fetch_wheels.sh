#!/usr/bin/env bash
# Wheels of what the course needs on the lent GPU machine and its image lacks, fetched here (where PyPI can be
# reached) into .whl/ for the device's `carry` (the machine itself reaches no registry).
#   bash tests/gpu/fetch_wheels.sh            -> .whl/*.whl (about 20 MB; ignored by git)
# Then, on the device, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site && ATTN_COURSE_COMMIT=<sha> bash tests/gpu/run_gpu_checks.sh $OUT/gpu-run
# The image's Python is 3.12 on x86-64; tests/gpu/device_packages.txt lists what it already holds (from the
# workplace's description of the image): those are not fetched, so that one version of each is installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
# attn_course's own needs (numpy is in the image), the grading extra (the unit tests import the grader), the
# lab extra's widgets (attn_course.interactive), and nbval for lesson 15
WANTED=(array-api-compat nbformat nbclient jupyter_client ipykernel ipython ipywidgets "nbval==0.11.0")
rm -rf .whl && mkdir .whl
platforms=()
for tag in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "${WANTED[@]}" 2>&1 | grep -v "^WARNING: Location" || true
normalise() { tr 'A-Z_.' 'a-z--' <<<"$1"; }
present=$(grep -v '^#' tests/gpu/device_packages.txt | tr 'A-Z_.' 'a-z--')
kept=0
for wheel in .whl/*.whl; do
    name=$(normalise "$(basename "$wheel" | cut -d- -f1)")
    if grep -qx -- "$name" <<<"$present"; then
        rm "$wheel"
    else
        kept=$((kept + 1))
    fi
done
echo "$kept wheels in .whl ($(du -sh .whl | cut -f1)); carry [\".whl\"] in the device run"
