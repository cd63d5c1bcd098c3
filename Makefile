# The course in two commands:
#   make lab    set up .venv (first time only) and open JupyterLab on the lessons
#   make test   set up .venv and run every check: lint, unit tests, lesson notebooks, solutions
# Without make (Windows, Colab) see "Without make" in README.md.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# JupyterLab serves the whole repository (lessons, exercises, solutions) and opens on the lessons.
# tests/test_lab.py starts the server with these same flags.
LAB_FLAGS := --ServerApp.root_dir=. --ServerApp.default_url=/lab/tree/notebooks

# nbval settings from the course's notebook guide: one notebook per xdist worker (loadscope).
NBVAL_FLAGS := --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	--nbval-cell-timeout=120 -n 2 --dist loadscope -p no:randomly

.PHONY: install lab test lint unit grader exercises-check notebooks solutions check-env site clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the requirements or the package metadata change. requirements.txt is `-e .[course]`:
# the package with every extra of pyproject.toml (CuPy apart: `pip install -e ".[gpu]"` on an NVIDIA machine).
# setuptools>=77 is pyproject.toml's build requirement (its licence field), installed so that a build without
# isolation (tests/test_course_paths.py builds the package with --no-build-isolation) finds it.
$(STAMP): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/python -m pip install --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

# Jupyter refuses to run as root (containers, some cloud machines) unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)

lab: install
	$(BIN)/jupyter lab $(LAB_FLAGS) $(ROOT_FLAG) $(ARGS)

check-env: install
	$(BIN)/python -m attn_course.check_env

# The course website: lessons and exercises as stored (outputs included, nothing executed), static HTML in
# build/site, built offline by Sphinx + myst-nb (docs/conf.py). tests/test_site.py builds and checks it.
site: install
	$(BIN)/python docs/build.py

test: lint unit grader exercises-check notebooks solutions

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check attn_course tests

# The unit tests: the package against torch and float64 formulas, fast (no notebook kernels).
unit: install
	$(BIN)/pytest tests -n 2 -q --dist loadfile -m "not grader"

# The grader's self-test: masters full, exercises zero, adversarial and wrong submissions (runs kernels).
# loadfile: one worker per test file, so the grader's tests share one batch of kernels (tests/test_grader.py).
grader: install
	$(BIN)/pytest tests -n 2 -q --dist loadfile -m grader

# exercises/ must be exactly what solutions/ generates (python -m attn_course.assign rewrites it).
exercises-check: install
	$(BIN)/python -m attn_course.assign --check

# The notebook runs put one notebook on each of the 2 xdist workers; each kernel keeps OpenBLAS to one thread
# (OPENBLAS_NUM_THREADS=1), so that two kernels never put four spinning BLAS threads on two cores, which
# makes the many small matrix products of the reference code (ATTN_COURSE_FAST=0) many times slower.
# The package's fast paths limit BLAS per worker thread themselves; stored outputs come from
# `python -m attn_course.lessons --write`, which runs one notebook at a time without this setting.
NBVAL_ENV := OPENBLAS_NUM_THREADS=1

# Strict nbval over the lessons; a folder without notebooks has nothing to check yet.
notebooks: install
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		$(NBVAL_ENV) $(BIN)/pytest notebooks --nbval $(NBVAL_FLAGS); \
	else echo "notebooks/: no lesson notebooks yet, nothing for nbval to check"; fi

solutions: install
	@if ls solutions/*.ipynb >/dev/null 2>&1; then \
		$(NBVAL_ENV) $(BIN)/pytest solutions --nbval-lax $(NBVAL_FLAGS); \
	else echo "solutions/: no solution notebooks yet, nothing for nbval to check"; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
