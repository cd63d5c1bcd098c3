"""``python -m attn_course.check_env``: what it says about this machine, and that it fails when it should."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attn_course import backend, check_env

REPO_ROOT = Path(__file__).resolve().parent.parent
NOT_INSTALLED = "attn-course-surely-not-installed"


def run_check_env(backend_choice=None, *args):
    """Run the module in a fresh interpreter with ``ATTN_COURSE_BACKEND`` set to ``backend_choice`` (None: unset)."""
    env = {key: value for key, value in os.environ.items() if key != backend.BACKEND_ENV_VAR}
    if backend_choice is not None:
        env[backend.BACKEND_ENV_VAR] = backend_choice
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "attn_course.check_env", *args],
        capture_output=True,
        check=False,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def gpu():
    """``(usable, reason)`` as this test process sees it: the subprocess must say the same."""
    return backend.gpu_status()


@pytest.fixture(scope="module")
def plain_run():
    return run_check_env(None)


def last_line(result):
    return result.stdout.strip().splitlines()[-1]


def test_plain_run_succeeds_and_lists_every_package(plain_run):
    assert plain_run.returncode == 0, plain_run.stdout + plain_run.stderr
    assert plain_run.stderr == ""
    out = plain_run.stdout
    assert f"Python       {sys.version.split()[0]} ({sys.executable})" in out
    for name in check_env.REQUIRED_DISTRIBUTIONS:
        assert f"\n  {name} " in out, f"{name} is not listed"
    assert "cupy" in out
    assert last_line(plain_run).startswith("OK: ")


def test_plain_run_names_the_backend_and_the_gpu_state(plain_run, gpu):
    usable, reason = gpu
    out = plain_run.stdout
    if not usable:
        assert "Backend  numpy: new arrays are made on the CPU" in out
        assert f"GPU      not usable: {reason}" in out
        assert last_line(plain_run).endswith("the backend is numpy.")
    else:
        assert "Backend  cupy: new arrays are made on the GPU" in out
        assert f"GPU      usable: {reason}" in out
        assert last_line(plain_run).endswith("the backend is cupy.")


def test_asking_for_cupy(gpu):
    usable, reason = gpu
    result = run_check_env("cupy")
    if not usable:
        assert result.returncode != 0
        problem = last_line(result)
        assert problem.startswith("PROBLEM: the array backend does not resolve")
        assert "ATTN_COURSE_BACKEND=cupy" in problem  # names the variable
        assert "pip install cupy-cuda12x" in problem  # and what to install
        assert reason in problem  # and why CuPy cannot run here
    else:
        assert result.returncode == 0, result.stdout
        assert "Backend  cupy: new arrays are made on the GPU (chosen by ATTN_COURSE_BACKEND=cupy)" in result.stdout


def test_an_unknown_backend_is_a_problem():
    result = run_check_env("bogus")
    assert result.returncode != 0
    assert "Backend  ERROR" in result.stdout
    assert last_line(result) == (
        "PROBLEM: the array backend does not resolve: ATTN_COURSE_BACKEND must be 'numpy' or 'cupy'; got 'bogus'"
    )


def test_numpy_can_always_be_chosen():
    result = run_check_env("numpy")
    assert result.returncode == 0, result.stdout
    assert "Backend  numpy: new arrays are made on the CPU (chosen by ATTN_COURSE_BACKEND=numpy)" in result.stdout


def test_a_missing_requirement_fails_and_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV_VAR, raising=False)
    required = (*check_env.REQUIRED_DISTRIBUTIONS, NOT_INSTALLED)
    report = check_env.gather_report(required)
    assert not report.ok
    assert [p.name for p in report.missing] == [NOT_INSTALLED]
    assert check_env.main([], required=required) == 1
    out = capsys.readouterr().out
    assert f"  {NOT_INSTALLED}" in out and "PROBLEM: not installed" in out
    python = check_env._quote(sys.executable)
    assert (
        last_line_of(out) == f"PROBLEM: missing {NOT_INSTALLED}; install with: {python} -m pip install {NOT_INSTALLED}"
    )


def test_the_pip_command_uses_the_versions_of_requirements_txt(tmp_path, monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV_VAR, raising=False)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        f"# a comment\n{NOT_INSTALLED}>=1.2,<2  # why\nother_pkg==0.11.0; platform_system != 'Darwin'\n"
    )
    report = check_env.gather_report((NOT_INSTALLED, "Other_Pkg"), requirements_file=requirements)
    python = check_env._quote(sys.executable)
    specs = f'"{NOT_INSTALLED}>=1.2,<2" "other_pkg==0.11.0"'  # ranges kept, markers dropped, quoted for the shell
    assert report.problems == [f"missing {NOT_INSTALLED}, Other_Pkg; install with: {python} -m pip install {specs}"]


def test_the_report_for_a_usable_gpu():
    report = check_env.EnvReport(
        python_version="3.12.1",
        python_executable="/usr/bin/python3",
        python_ok=True,
        packages=[
            check_env.PackageStatus("numpy", "2.1.0", True),
            check_env.PackageStatus("cupy-cuda12x", "13.3.0", False),
        ],
        backend="cupy",
        backend_choice="automatic",
        backend_error=None,
        gpu_usable=True,
        gpu_reason="CuPy 13.3.0 sees 1 GPU(s): NVIDIA H100",
    )
    text = check_env.format_report(report)
    assert "Optional packages\n  cupy-cuda12x  13.3.0" in text
    assert "Backend  cupy: new arrays are made on the GPU (automatic)" in text
    assert "GPU      usable: CuPy 13.3.0 sees 1 GPU(s): NVIDIA H100" in text
    assert last_line_of(text) == "OK: Python 3.12.1 and all 1 required packages are present; the backend is cupy."


def test_an_old_python_is_a_problem():
    report = check_env.EnvReport("3.9.18", "python", False, [], "numpy", "automatic", None, False, "no CuPy")
    assert not report.ok
    assert report.problems == ["Python 3.9.18 is too old; the course needs Python >= 3.10"]


def test_never_raises_when_probing_fails(monkeypatch, capsys):
    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(backend, "default_backend", broken)
    monkeypatch.setattr(backend, "gpu_status", broken)
    assert check_env.main([]) == 1
    out = capsys.readouterr().out
    assert "GPU      not usable: probing the GPU failed (RuntimeError: driver exploded)" in out
    assert last_line_of(out) == "PROBLEM: the array backend does not resolve: driver exploded"


def last_line_of(text):
    return text.strip().splitlines()[-1]


def gpu_less_report(packages, nvidia_driver):
    """A report for a machine whose CuPy state is ``packages`` and whose driver is ``nvidia_driver``."""
    return check_env.EnvReport(
        python_version="3.12.1",
        python_executable="/usr/bin/python3",
        python_ok=True,
        packages=[check_env.PackageStatus("numpy", "2.1.0", True), *packages],
        backend="numpy",
        backend_choice="automatic",
        backend_error=None,
        gpu_usable=False,
        gpu_reason="CuPy is not installed",
        nvidia_driver=nvidia_driver,
    )


CUPY_MISSING = check_env.PackageStatus("cupy", None, False, "not installed (only needed with an NVIDIA GPU)")
CUPY_PRESENT = check_env.PackageStatus("cupy-cuda12x", "13.3.0", False)


def test_an_nvidia_driver_without_cupy_suggests_the_gpu_extra():
    report = gpu_less_report([CUPY_MISSING], "/proc/driver/nvidia exists")
    text = check_env.format_report(report)
    assert report.ok  # advice, not a problem: the course runs on the CPU
    (suggestion,) = report.suggestions
    assert "/proc/driver/nvidia exists" in suggestion
    assert suggestion.endswith('/usr/bin/python3 -m pip install -e ".[gpu]"')
    assert f"\nSuggest  {suggestion}\n" in text
    assert last_line_of(text).startswith("OK: ")


@pytest.mark.parametrize(
    ("packages", "driver"),
    [([CUPY_PRESENT], "/usr/bin/nvidia-smi is on the path"), ([CUPY_MISSING], None)],
    ids=["cupy-installed", "no-driver"],
)
def test_no_suggestion_without_a_driver_or_with_cupy(packages, driver):
    report = gpu_less_report(packages, driver)
    assert report.suggestions == []
    assert "Suggest" not in check_env.format_report(report)


def test_the_driver_is_found_by_nvidia_smi_or_by_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(check_env.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert check_env.nvidia_driver_found() == "/opt/bin/nvidia-smi is on the path"
    monkeypatch.setattr(check_env.shutil, "which", lambda name: None)
    monkeypatch.setattr(check_env, "NVIDIA_PROC", tmp_path)
    assert check_env.nvidia_driver_found() == f"{tmp_path} exists"
    monkeypatch.setattr(check_env, "NVIDIA_PROC", tmp_path / "absent")
    assert check_env.nvidia_driver_found() is None


def test_the_pip_command_takes_the_ranges_of_the_package_metadata(monkeypatch, tmp_path):
    requires = ["numpy<3,>=1.26.4", 'matplotlib<4,>=3.8.4; extra == "viz"', 'attn_course[viz,torch]; extra == "course"']
    monkeypatch.setattr(check_env.importlib.metadata, "requires", lambda name: requires)
    specs = check_env._package_install_specs()
    assert specs == {"numpy": "numpy<3,>=1.26.4", "matplotlib": "matplotlib<4,>=3.8.4"}
    report = check_env.gather_report(("matplotlib",), requirements_file=tmp_path / "absent.txt")
    assert report.install_specs["matplotlib"] == "matplotlib<4,>=3.8.4"
