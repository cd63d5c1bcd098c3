"""A static scan of a submission's answer cells: does an answer reach for the answer key or the grader?

Before anything runs, the grader reads each answer cell's code with ``ast``
(nothing is executed) and flags what an answer has no business doing:

* importing ``attn_course`` beyond the self-check (``from attn_course.grading
  import check, test_inputs``): the package holds the reference of every
  graded function;
* using a name that a locked cell of the master bound from ``attn_course``
  (``package_softmax``, ``masks``, ``attn_course`` itself) when the master's
  own answers never use it (so ``split_heads`` stays allowed in lesson 16,
  whose answers build on it);
* importing a library that has the task ready-made (``torch``, ``jax``,
  ``tensorflow``, ``scipy``, ``sklearn``): the tasks are to build it in NumPy;
* running code from strings or files: ``exec``, ``eval``, ``compile``,
  ``__import__``, ``importlib``, ``runpy``;
* reaching past the notebook: ``ctypes``/``cffi``, ``os.environ`` (and
  ``getenv``, ``putenv``), ``sys.modules``, ``sys.meta_path``, and any text
  naming ``/proc``, ``solutions``, ``.ipynb`` or ``attn_course``.

A flagged answer cell is not run (its functions are replaced by ones that
raise ``PermissionError`` with the reason) and the tests of its exercise
score 0 with status ``refused``; answer cells that use a function defined in
a flagged cell are flagged with it. The scan is a gate for honest mistakes
and lazy cheats; determined obfuscation is met at run time (the grading
kernel cannot import the specs, the judged cases are secret, results are
collected outside the kernel).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["Finding", "bound_names", "package_names", "scan_answer", "scan_answers"]

SELF_CHECK = {"attn_course.grading": {"check", "test_inputs"}}
READY_MADE = ("torch", "jax", "jaxlib", "tensorflow", "scipy", "sklearn", "keras", "flax")
RUNS_CODE = {"exec", "eval", "compile", "__import__", "breakpoint"}
MODULES = {"importlib": "runs imported code by name", "runpy": "runs code from files"}
MODULES.update({name: "reaches past Python into C" for name in ("ctypes", "cffi", "_ctypes")})
ATTRIBUTES = {
    "environ": "reads the environment",
    "environb": "reads the environment",
    "getenv": "reads the environment",
    "putenv": "changes the environment",
    "meta_path": "changes how modules are imported",
    "modules": "reads loaded modules (sys.modules)",
}
TEXTS = ("/proc", "solutions", ".ipynb", "attn_course")


@dataclass(frozen=True)
class Finding:
    """One thing an answer cell may not do: ``what`` at ``line``."""

    line: int
    what: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.what}"


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _import_findings(node) -> list[Finding]:
    found = []
    if isinstance(node, ast.Import):
        modules = [(alias.name, []) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        modules = [(node.module, [alias.name for alias in node.names])]
    else:
        return [Finding(node.lineno, "a relative import")] if isinstance(node, ast.ImportFrom) else []
    for module, names in modules:
        top = _top(module)
        if top == "attn_course":
            allowed = SELF_CHECK.get(module)
            if allowed is None or not names or not set(names) <= allowed:
                found.append(Finding(node.lineno, f"imports {module} (the package holds the answer key)"))
        elif top in READY_MADE:
            found.append(Finding(node.lineno, f"imports {module} (the task is to build it in NumPy)"))
        elif top in MODULES:
            found.append(Finding(node.lineno, f"imports {module} ({MODULES[top]})"))
        elif module == "os" and set(names) & set(ATTRIBUTES):
            found.append(Finding(node.lineno, "imports os.environ or getenv (reads the environment)"))
        elif module == "sys" and set(names) & {"modules", "meta_path"}:
            found.append(Finding(node.lineno, "imports sys.modules or sys.meta_path"))
    return found


def _locals_of(function) -> set[str]:
    names = {arg.arg for arg in ast.walk(function.args) if isinstance(arg, ast.arg)}
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _name_findings(node: ast.Name, forbidden_names, local_names) -> list[Finding]:
    if node.id in RUNS_CODE:
        return [Finding(node.lineno, f"uses {node.id} (runs code from text or files)")]
    if isinstance(node.ctx, ast.Load) and node.id in forbidden_names and node.id not in local_names:
        return [Finding(node.lineno, f"uses {node.id}, which a locked cell imported from attn_course")]
    if node.id == "__builtins__":
        return [Finding(node.lineno, "uses __builtins__")]
    return []


def _node_findings(node, forbidden_names, local_names) -> list[Finding]:
    """What one syntax node does that an answer may not."""
    found = []
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        found = _import_findings(node)
    elif isinstance(node, ast.Name):
        found = _name_findings(node, forbidden_names, local_names)
    elif isinstance(node, ast.Attribute) and node.attr in ATTRIBUTES:
        found = [Finding(node.lineno, f"uses .{node.attr} ({ATTRIBUTES[node.attr]})")]
    elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
        found = [Finding(node.lineno, f"names {word!r} in a string") for word in TEXTS if word in text]
    return found


def scan_answer(source: str, forbidden_names=frozenset()) -> list[Finding]:
    """What is wrong with one answer cell's code (empty: nothing). Code that does not parse is not flagged
    (it fails when it runs, as it would for the learner)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found: list[Finding] = []
    shadowed: dict[int, set[str]] = {}  # id of a Name node -> the local names of its innermost function
    for function in ast.walk(tree):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            local = _locals_of(function)
            for node in ast.walk(function):
                if isinstance(node, ast.Name):
                    shadowed.setdefault(id(node), set()).update(local)
    for node in ast.walk(tree):
        found += _node_findings(node, forbidden_names, shadowed.get(id(node), set()))
    unique = {(finding.line, finding.what): finding for finding in found}
    return sorted(unique.values(), key=lambda finding: (finding.line, finding.what))


def bound_names(source: str) -> set[str]:
    """Names a cell binds at its top level: functions, classes, assignments, imports."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        else:
            names.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def used_names(source: str) -> set[str]:
    """Every name a cell's code reads."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def package_names(sources) -> set[str]:
    """Names that cells (a master's locked cells) bind from ``attn_course`` imports, beyond the self-check."""
    names = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(
                    (alias.asname or alias.name).split(".")[0]
                    for alias in node.names
                    if _top(alias.name) == "attn_course"
                )
            elif isinstance(node, ast.ImportFrom) and node.module and _top(node.module) == "attn_course":
                allowed = SELF_CHECK.get(node.module, set())
                names.update(alias.asname or alias.name for alias in node.names if alias.name not in allowed)
    return names


def scan_answers(answers: dict[str, str], forbidden_names=frozenset()) -> dict[str, list[str]]:
    """``{grade_id: [reasons]}`` for the flagged answer cells of one submission (``answers``: grade_id -> code).

    A cell that reads a name defined by a flagged cell is flagged too (its
    function would call the refused one), until nothing changes.
    """
    flagged = {
        grade_id: [str(finding) for finding in scan_answer(source, forbidden_names)]
        for grade_id, source in answers.items()
    }
    flagged = {grade_id: reasons for grade_id, reasons in flagged.items() if reasons}
    defined = {grade_id: bound_names(source) for grade_id, source in answers.items()}
    used = {grade_id: used_names(source) for grade_id, source in answers.items()}
    changed = True
    while changed:
        changed = False
        for grade_id in answers:
            if grade_id in flagged:
                continue
            for other in list(flagged):
                shared = sorted(used[grade_id] & defined[other] - defined[grade_id])
                if shared:
                    flagged[grade_id] = [f"uses {shared[0]} from the refused answer cell {other!r}"]
                    changed = True
                    break
    return flagged
