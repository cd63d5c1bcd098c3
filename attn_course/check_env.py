"""Check that this Python can run the course: ``python -m attn_course.check_env``.

It prints the Python in use, the version of every package the course needs
(and of CuPy, which only the GPU lessons use), the array backend that new
arrays will use (``default_backend()``, which ``ATTN_COURSE_BACKEND`` can
override) and whether a GPU is usable, and why not. The last line is
``OK: ...`` or ``PROBLEM: ...`` with the ``pip`` command that fixes it; the
exit status is 0 when every required package is present and the backend
resolves, 1 otherwise. Where an NVIDIA driver is present (``nvidia-smi`` on the
path, or ``/proc/driver/nvidia``) but CuPy is not installed, it suggests the
``gpu`` extra (``pip install -e ".[gpu]"``); that is advice, not a problem.

By default a package counts as present when its distribution is installed and
its module can be found; nothing heavy is imported. ``--deep`` also imports
each one (slower; catches broken installs such as a torch missing its
libraries). A machine without a GPU is a normal case, not a problem.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import backend

__all__ = [
    "REQUIRED_DISTRIBUTIONS",
    "EnvReport",
    "PackageStatus",
    "format_report",
    "gather_report",
    "main",
    "nvidia_driver_found",
]

# What the lessons, the package, the grader and the tests need: the package and its
# `course` extra (pyproject.toml says which versions). CuPy is optional: the `gpu`
# extra, for machines with an NVIDIA GPU.
REQUIRED_DISTRIBUTIONS = (
    "numpy",
    "array-api-compat",
    "torch",
    "matplotlib",
    "tqdm",
    "nbformat",
    "nbclient",
    "jupyter-client",
    "traitlets",
    "ipykernel",
    "jupyterlab",
    "nbval",
    "pytest",
)
MIN_PYTHON = (3, 10)
# The module each distribution provides, where it is not the name with "-" -> "_".
IMPORT_NAMES: dict[str, str] = {}
# Never imported, even with --deep: starting the lab's server code is slow and checks nothing more.
NOT_IMPORTED = frozenset({"jupyterlab"})
# The pip command takes the version ranges from the package's metadata (pyproject.toml's
# dependencies and extras) and, where one is given, from a requirements file.
PACKAGE_DISTRIBUTION = "attn_course"
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "requirements.txt"
# What installs CuPy: the package's gpu extra, run in the course's folder.
GPU_EXTRA_COMMAND = 'pip install -e ".[gpu]"'
# Where Linux shows a loaded NVIDIA driver, even when nvidia-smi is not on the path.
NVIDIA_PROC = Path("/proc/driver/nvidia")


@dataclass
class PackageStatus:
    """One distribution: its installed version (``None`` when absent) and what is wrong with it, if anything."""

    name: str
    version: str | None
    required: bool
    problem: str | None = None


@dataclass
class EnvReport:
    """Everything ``check_env`` found; ``ok`` says whether the course can run."""

    python_version: str
    python_executable: str
    python_ok: bool
    packages: list[PackageStatus]
    backend: str | None
    backend_choice: str
    backend_error: str | None
    gpu_usable: bool
    gpu_reason: str
    install_specs: dict[str, str] = field(default_factory=dict)
    nvidia_driver: str | None = None  # how an NVIDIA driver was seen (``nvidia_driver_found``); None: not seen

    @property
    def suggestions(self) -> list[str]:
        """Advice that is not a problem: the gpu extra, where an NVIDIA driver is present but CuPy is not."""
        cupy_installed = any(not p.required and p.version is not None for p in self.packages)
        if self.nvidia_driver is None or cupy_installed:
            return []
        return [
            f"an NVIDIA GPU driver is present ({self.nvidia_driver}) but CuPy is not installed; to compute on "
            f"the GPU, install the gpu extra in the course folder: {_quote(self.python_executable)} -m "
            f"{GPU_EXTRA_COMMAND}"
        ]

    @property
    def missing(self) -> list[PackageStatus]:
        """Required packages that are not installed."""
        return [p for p in self.packages if p.required and p.version is None]

    @property
    def broken(self) -> list[PackageStatus]:
        """Required packages that are installed but cannot be used."""
        return [p for p in self.packages if p.required and p.version is not None and p.problem]

    def pip_command(self, packages: list[PackageStatus], reinstall: bool = False) -> str:
        """The pip command, for this very Python, that installs ``packages``."""
        specs = [_quote(self.install_specs.get(_normalise(p.name), p.name)) for p in packages]
        flag = " --force-reinstall" if reinstall else ""
        return f"{_quote(self.python_executable)} -m pip install{flag} {' '.join(specs)}"

    @property
    def problems(self) -> list[str]:
        """What stops the course from running, each with how to fix it; empty when all is well."""
        found = []
        if not self.python_ok:
            wanted = ".".join(map(str, MIN_PYTHON))
            found.append(f"Python {self.python_version} is too old; the course needs Python >= {wanted}")
        if self.missing:
            names = ", ".join(p.name for p in self.missing)
            found.append(f"missing {names}; install with: {self.pip_command(self.missing)}")
        if self.broken:
            names = ", ".join(p.name for p in self.broken)
            found.append(f"installed but unusable: {names}; reinstall with: {self.pip_command(self.broken, True)}")
        if self.backend_error is not None:
            found.append(f"the array backend does not resolve: {self.backend_error}")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


# --------------------------------------------------------------------------- gathering


def _normalise(name: str) -> str:
    """A distribution name as pip compares them: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _quote(word: str) -> str:
    """Double quotes where a shell would misread the word (works in bash, cmd and PowerShell)."""
    return f'"{word}"' if re.search(r"[\s<>=!;,|&]", word) else word


def _requirement_spec(line: str) -> tuple[str, str] | None:
    """``("name", "name>=x,<y")`` from one requirement (comments, markers and extras dropped); None if not one."""
    requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
    match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?", requirement)
    if not match or requirement.startswith("-"):
        return None
    name = match.group(1)
    return _normalise(name), (name + requirement[match.end() :]).replace(" ", "")


def _package_install_specs(distribution: str = PACKAGE_DISTRIBUTION) -> dict[str, str]:
    """``{name: "name>=x,<y"}`` from the installed package's dependencies and extras; empty when not installed."""
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except Exception:  # not installed (run from a plain checkout), or damaged metadata
        return {}
    specs = {}
    for requirement in requirements:
        found = _requirement_spec(requirement)
        if found is not None and found[0] != _normalise(distribution):  # `course` names the package's own extras
            specs.setdefault(*found)
    return specs


def nvidia_driver_found() -> str | None:
    """How an NVIDIA driver shows itself on this machine (``nvidia-smi`` on the path, ``/proc/driver/nvidia``).

    Returns a few words saying which, or None. Never runs the driver's tools and never imports CuPy.
    """
    found = shutil.which("nvidia-smi")
    if found:
        return f"{found} is on the path"
    if NVIDIA_PROC.exists():
        return f"{NVIDIA_PROC} exists"
    return None


def _read_install_specs(path: Path) -> dict[str, str]:
    """``{name: "name>=x,<y"}`` from a requirements file; empty when there is none (an installed package)."""
    specs = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return specs
    for line in lines:
        found = _requirement_spec(line)
        if found is not None:
            specs[found[0]] = found[1]
    return specs


def _package_status(name: str, deep: bool) -> PackageStatus:
    """Installed version of ``name`` and whether its module can be found (``deep``: imported)."""
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return PackageStatus(name, None, True, "not installed")
    except Exception as err:  # a damaged metadata folder
        return PackageStatus(name, None, True, f"unreadable metadata ({type(err).__name__}: {err})")
    module = IMPORT_NAMES.get(name, name.replace("-", "_").lower())
    try:
        if importlib.util.find_spec(module) is None:
            return PackageStatus(name, version, True, f"module {module!r} not found")
        if deep and name not in NOT_IMPORTED:
            importlib.import_module(module)
    except Exception as err:
        return PackageStatus(name, version, True, f"import {module} fails ({type(err).__name__}: {err})")
    return PackageStatus(name, version, True)


def _cupy_status() -> PackageStatus:
    """CuPy ships under several names (cupy-cuda12x, cupy-cuda11x, cupy, ...): whichever is installed."""
    try:
        for dist in importlib.metadata.distributions():
            name = dist.metadata["Name"] or ""
            if _normalise(name) == "cupy" or _normalise(name).startswith("cupy-"):
                return PackageStatus(name, dist.version, False)
    except Exception as err:
        return PackageStatus("cupy", None, False, f"could not list the installed packages ({err})")
    return PackageStatus("cupy", None, False, "not installed (only needed with an NVIDIA GPU)")


def _resolve_backend() -> tuple[str | None, str, str | None]:
    """``(backend, how it was chosen, error message)``: what ``default_backend()`` says here."""
    requested = os.environ.get(backend.BACKEND_ENV_VAR, "").strip()
    if requested:
        choice = f"chosen by {backend.BACKEND_ENV_VAR}={requested}"
    else:
        choice = f"automatic: CuPy only where a GPU is usable; set {backend.BACKEND_ENV_VAR}=numpy|cupy to choose"
    try:
        return backend.default_backend(), choice, None
    except Exception as err:  # an unknown value, or CuPy asked for where it cannot run
        return None, choice, str(err)


def gather_report(
    required=REQUIRED_DISTRIBUTIONS, *, deep: bool = False, requirements_file=REQUIREMENTS_FILE
) -> EnvReport:
    """Look at this Python and return what was found; never raises, never needs a GPU.

    required: the distribution names the course needs (a test can add one that
    is not installed). deep: import each package instead of only finding it.
    requirements_file: a requirements file whose version ranges the pip command
    prefers to those of the package's metadata (the checkout's requirements.txt
    holds only ``-e .[course]``, so there the metadata's ranges are used).
    """
    packages = [_package_status(name, deep) for name in required]
    packages.append(_cupy_status())
    chosen, choice, error = _resolve_backend()
    try:
        gpu_usable, gpu_reason = backend.gpu_status()
    except Exception as err:  # gpu_status never raises; this is only a safety net
        gpu_usable, gpu_reason = False, f"probing the GPU failed ({type(err).__name__}: {err})"
    return EnvReport(
        python_version=platform.python_version(),
        python_executable=sys.executable,
        python_ok=sys.version_info[:2] >= MIN_PYTHON,
        packages=packages,
        backend=chosen,
        backend_choice=choice,
        backend_error=error,
        gpu_usable=gpu_usable,
        gpu_reason=gpu_reason,
        install_specs={**_package_install_specs(), **_read_install_specs(Path(requirements_file))},
        nvidia_driver=nvidia_driver_found(),
    )


# --------------------------------------------------------------------------- printing


def format_report(report: EnvReport) -> str:
    """The report as text; the last line starts with ``OK:`` or ``PROBLEM:``."""
    from . import __version__  # here, not at the top: the package may import this module before defining it

    width = max(len(p.name) for p in report.packages) + 2
    lines = [
        "attn_course environment check",
        f"  Python       {report.python_version} ({report.python_executable})",
        f"  attn_course  {__version__} ({Path(__file__).resolve().parent})",
        "",
        "Required packages",
    ]
    for package in report.packages:
        if not package.required and lines[-1] != "Optional packages":
            lines.append("Optional packages")
        version = package.version or "-"
        status = f"  {package.name:<{width}}{version:<12}"
        if package.problem:
            status += ("PROBLEM: " if package.required else "") + package.problem
        elif not package.required:
            status += "the GPU backend (needs an NVIDIA GPU)"
        lines.append(status.rstrip())
    lines.append("")
    if report.backend_error is None:
        where = "on the GPU" if report.backend == "cupy" else "on the CPU"
        lines.append(f"Backend  {report.backend}: new arrays are made {where} ({report.backend_choice})")
    else:
        lines.append(f"Backend  ERROR ({report.backend_choice}): {report.backend_error}")
    lines.append(f"GPU      {'usable' if report.gpu_usable else 'not usable'}: {report.gpu_reason}")
    lines.extend(f"Suggest  {suggestion}" for suggestion in report.suggestions)
    lines.append("")
    if report.ok:
        required = sum(p.required for p in report.packages)
        lines.append(
            f"OK: Python {report.python_version} and all {required} required packages are present; "
            f"the backend is {report.backend}."
        )
    else:
        lines.append("PROBLEM: " + "; ".join(report.problems))
    return "\n".join(lines)


def main(argv=None, *, required=REQUIRED_DISTRIBUTIONS) -> int:
    """Print the report; return 0 when the course can run here, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m attn_course.check_env",
        description="Check that this Python has what the attention course needs.",
    )
    parser.add_argument(
        "--deep", action="store_true", help="also import each package (slower; catches broken installs)"
    )
    args = parser.parse_args(argv)
    report = gather_report(required, deep=args.deep)
    print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
