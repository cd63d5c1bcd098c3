"""How the course installs: runtime dependencies, extras, version bounds, one version, a licence.

``pyproject.toml`` declares what ``import attn_course`` needs (NumPy, array-api-compat) as
dependencies and everything else as extras (``viz``, ``torch``, ``grading``, ``lab``, ``gpu``,
``test``, ``docs``, ``browser``; ``course`` = all but ``gpu``). These tests hold it to that:
the package imports and computes with every optional library blocked; each third-party module
the package imports is declared somewhere; CuPy comes only through ``gpu``; the lower bound
of every range is the version ``.ci/constraints-lowest.txt`` pins for the lower-bound job;
the version lives in one place.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attn_course

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "attn_course"
CONSTRAINTS = REPO_ROOT / ".ci" / "constraints-lowest.txt"

# the import name of each distribution the package may import, where it differs from the distribution's
DISTRIBUTION_OF_MODULE = {"cupy": "cupy-cuda12x", "cupyx": "cupy-cuda12x", "zmq": "pyzmq", "IPython": "ipython"}
# modules a NumPy-only install must not need: each blocked in a fresh interpreter
OPTIONAL_MODULES = ("matplotlib", "torch", "tqdm", "nbformat", "nbclient", "jupyter_client", "traitlets", "cupy")
RUNTIME = {"numpy", "array-api-compat"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+; tomli comes with many environments
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def parse_requirement(text: str) -> tuple[str, set[str], str, str]:
    """``(normalised name, extras, specifier, marker)`` of one PEP 508 requirement."""
    requirement, _, marker = text.partition(";")
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*?)\s*", requirement)
    assert match, f"not a requirement: {text!r}"
    extras = {normalise(e) for e in (match.group(2) or "").split(",") if e.strip()}
    return normalise(match.group(1)), extras, match.group(3).replace(" ", ""), marker.strip()


def lower_bound(specifier: str) -> str | None:
    """The version after ``>=`` or ``==`` in a specifier such as ``>=1.26.4,<3``; None when there is none."""
    found = re.search(r"(?:>=|==)([0-9][0-9A-Za-z.]*)", specifier)
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def project():
    return load_pyproject()["project"]


def declared(project) -> dict[str, dict[str, str]]:
    """``{extra or "": {name: specifier}}`` for the dependencies ("") and each extra, self-references left out."""
    own = normalise(project["name"])
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    result = {}
    for group, requirements in groups.items():
        parsed = (parse_requirement(r) for r in requirements)
        result[group] = {name: spec for name, _, spec, _ in parsed if name != own}
    return result


def test_the_runtime_dependencies_are_numpy_and_array_api_compat(project):
    assert set(declared(project)[""]) == RUNTIME


def test_import_attn_course_needs_only_numpy_and_array_api_compat():
    blocker = f"""
import importlib.abc, sys
BLOCKED = {OPTIONAL_MODULES!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked by the test: {{name}}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
try:
    import matplotlib
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the blocker does not block")
import numpy as np
import attn_course
rng = np.random.default_rng(0)
q, k, v = rng.standard_normal((5, 4)), rng.standard_normal((7, 4)), rng.standard_normal((7, 6))
out = attn_course.scaled_dot_product_attention(q, k, v)  # (L, dv)
tiled = attn_course.tiled_attention(q, k, v, block_size=2)
assert out.shape == (5, 6) and np.allclose(out, tiled), "the attention functions disagree"
print(attn_course.default_backend())
"""
    result = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "numpy"  # CuPy blocked: the backend falls back to NumPy


def third_party_imports() -> dict[str, list[str]]:
    """``{top-level module: [files importing it]}`` for every non-stdlib, non-package import under attn_course/."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "attn_course":
                    found.setdefault(top, []).append(str(path.relative_to(REPO_ROOT)))
    return found


def test_every_library_the_package_imports_is_declared(project):
    everything = {name for group in declared(project).values() for name in group}
    imported = third_party_imports()
    assert {"numpy", "torch", "matplotlib", "jupyter_client"} <= set(imported)  # the scan sees real imports
    undeclared = {
        module: files
        for module, files in imported.items()
        if normalise(DISTRIBUTION_OF_MODULE.get(module, module)) not in everything
    }
    assert undeclared == {}, f"imported but declared in no dependency or extra of pyproject.toml: {undeclared}"


def test_the_course_extra_is_every_extra_but_the_gpu(project):
    extras = project["optional-dependencies"]
    (course,) = extras["course"]
    name, included, _, _ = parse_requirement(course)
    assert name == normalise(project["name"])
    assert included == {normalise(e) for e in extras} - {"course", "gpu"}
    assert {"viz", "torch", "grading", "lab", "test", "docs", "browser"} <= included


def test_cupy_comes_only_through_the_gpu_extra(project):
    where = sorted(group for group, names in declared(project).items() if "cupy-cuda12x" in names)
    assert where == ["gpu"]
    install = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in install if line and not line.startswith("#")] == ["-e .[course]"]


def read_constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        pin = line.split("#", 1)[0].strip()
        if pin:
            name, _, version = pin.partition("==")
            pins[normalise(name)] = release(version)
    return pins


def release(version: str) -> str:
    """A version without trailing ``.0`` parts, as pip compares them: ``4.66.0`` and ``4.66`` are one release."""
    return re.sub(r"(\.0)+$", "", version.strip())


def test_the_lowest_constraints_pin_every_lower_bound(project):
    groups = declared(project)
    bounds: dict[str, set[str]] = {}
    for group, requirements in groups.items():
        if group == "gpu":  # CuPy needs an NVIDIA GPU; the lower-bound job runs without one
            continue
        for name, specifier in requirements.items():
            bound = lower_bound(specifier)
            assert bound is not None, f"{name} in {group or 'dependencies'} has no lower bound: {specifier!r}"
            bounds.setdefault(name, set()).add(release(bound))
    disagree = {name: sorted(found) for name, found in bounds.items() if len(found) > 1}
    assert disagree == {}, f"one package, two lower bounds in pyproject.toml: {disagree}"
    pins = read_constraints()
    assert set(pins) == set(bounds), "constraints-lowest.txt and pyproject.toml name different packages"
    wrong = {
        name: (bound, pins[name])
        for name, (bound,) in bounds.items()
        if pins[name] != bound and not pins[name].startswith(bound + ".")  # 3.2 -> 3.2.2.0: the first 3.2 release
    }
    assert wrong == {}, f"(lower bound, pin) that disagree: {wrong}"


def test_the_version_has_one_source(project):
    assert "version" not in project and project["dynamic"] == ["version"]
    setuptools_dynamic = load_pyproject()["tool"]["setuptools"]["dynamic"]
    assert setuptools_dynamic["version"] == {"attr": "attn_course.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", attn_course.__version__)
    try:
        installed = importlib.metadata.version("attn_course")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("attn_course is not installed here (run from a bare checkout)")
    assert installed == attn_course.__version__, "reinstall: pip install -e .[course]"


def test_the_licence_is_mit_and_shipped(project):
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    licence = (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Copyright (c)" in licence
