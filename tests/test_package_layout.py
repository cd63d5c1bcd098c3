"""The package's structure, as ``shared/guide/style.md`` asks for it: layers that point down.

Read from the source with ``ast`` (imports inside functions included), so that
a new import that breaks a rule fails here, not in a learner's notebook:

* the algorithm layers import only layers below them:
  backend <- validation <- softmax <- attention (the core) <- masks, positions
  <- multihead, long-sequence algorithms <- kernels, with the CPU fast paths
  (``attn_course.fast``) each just below the public function that dispatches to them;
* the application modules (torch layers, data, pictures, measuring, benchmarks,
  the grader, the lesson runner) import the layers and are imported by none of them;
* no module imports another module's private (underscore) names or modules;
* ``import attn_course`` loads no grading, benchmark, picture or torch module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attn_course"

# rank of each algorithm module: a module may import modules of a lower rank only
LAYERS = {
    "attn_course.backend": 0,
    "attn_course.tolerances": 0,
    "attn_course.fast": 1,  # the switch alone (fast/__init__.py imports no other module)
    "attn_course.fast.threads": 1,
    "attn_course.validation": 1,
    "attn_course.fast.dense": 2,
    "attn_course.softmax": 2,
    "attn_course.attention": 3,  # the core: softmax(q k^T * scale) v
    "attn_course.additive": 4,
    "attn_course.positions": 4,
    "attn_course.cache": 4,  # the key/value cache of decoding
    "attn_course.layouts": 4,
    "attn_course.masks": 5,
    "attn_course.multihead": 5,
    "attn_course.linear": 5,
    "attn_course.fast.tile_masks": 6,
    "attn_course.fast.tiled": 6.5,
    "attn_course.fast.sparse": 6.5,
    "attn_course.fast.backward": 2.5,  # the textbook backward on threads: dense.py and threads.py only
    "attn_course.tiled": 7,
    "attn_course.backward": 7.5,  # the backward pass: uses tiled attention's tile rules and the core
    "attn_course.sparse": 7,
    "attn_course.kernels.variants": 7.9,  # the float16 forward's compile-time variants (names and macros)
    "attn_course.kernels.fused": 8,
    "attn_course.kernels.fused_backward": 8.2,  # the backward kernels: fused.py's head sizes, backward.py's sums
    "attn_course.kernels": 8.5,
    "attn_course": 9,  # the package's public surface
}
# everything else is an application module: it may import any layer, and no layer may import it
APPLICATION_PREFIXES = (
    "attn_course.torch_modules",
    "attn_course.translation",
    "attn_course.seq2seq",
    "attn_course.data",
    "attn_course.viz",
    "attn_course.diagrams",
    "attn_course.interactive",
    "attn_course.measure",
    "attn_course.bench",
    "attn_course.grading",
    "attn_course.grade",
    "attn_course.assign",
    "attn_course.lessons",
    "attn_course.course_paths",
    "attn_course.check_env",
    "attn_course.autograd",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()


def resolve(importer: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if node.level == 0:
        return node.module or ""
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, [imported names], line)`` for every import of an ``attn_course`` module in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("attn_course")]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(name, path, node)
            if not source.startswith("attn_course"):
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{source}.{n}" for n in names if f"{source}.{n}" in MODULES]
            plain_names = [n for n in names if f"{source}.{n}" not in MODULES]
            if plain_names:
                found.append((source, plain_names, node.lineno))
            found += [(module, [], node.lineno) for module in submodules]
    return found


def is_application(module: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in APPLICATION_PREFIXES)


def test_every_module_is_placed_in_a_layer_or_is_an_application():
    unplaced = [m for m in MODULES if m not in LAYERS and not is_application(m)]
    assert unplaced == [], f"place these modules in LAYERS or APPLICATION_PREFIXES: {unplaced}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m in LAYERS))
def test_algorithm_layers_import_only_layers_below_them(module):
    wrong = []
    for imported, _, line in imports_of(module, MODULES[module]):
        if is_application(imported):
            wrong.append(f"line {line}: {imported} (an application module)")
        elif imported in LAYERS and LAYERS[imported] >= LAYERS[module] and imported != module:
            wrong.append(f"line {line}: {imported} (layer {LAYERS[imported]}, not below {LAYERS[module]})")
    assert wrong == [], f"{module} (layer {LAYERS[module]}) imports upwards: {wrong}"


def test_the_core_does_not_import_masks():
    for core in ("attn_course.softmax", "attn_course.attention"):
        imported = {m for m, _, _ in imports_of(core, MODULES[core])}
        assert "attn_course.masks" not in imported, f"{core} imports masks: the causal rule is one line where needed"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_cross_modules(module):
    private = []
    for imported, names, line in imports_of(module, MODULES[module]):
        if imported == module:
            continue
        if any(part.startswith("_") for part in imported.split(".")):
            private.append(f"line {line}: module {imported}")
        private += [f"line {line}: {imported}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert private == [], f"{module} imports private names of other modules: {private}"


def test_every_module_opens_with_a_paragraph_of_what_it_holds():
    missing = [m for m, path in MODULES.items() if not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()]
    assert missing == [], f"modules without a docstring: {missing}"


def test_importing_the_package_loads_no_grading_bench_picture_or_torch_module():
    code = (
        "import sys, attn_course\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith(('attn_course', 'torch', 'matplotlib')))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = [m for m in loaded if m.startswith(("torch", "matplotlib")) or is_application(m)]
    assert heavy == [], f"import attn_course loaded {heavy}"
    assert "attn_course.attention" in loaded and "attn_course.fast" in loaded  # the test sees real imports
