"""The command-line tools find the course's folders from an option or the working directory, so that they work
from an installed (not editable) package, and say what is missing when they cannot.

The installed copy is built once per module with ``pip install --no-deps --no-build-isolation --target``
(a few seconds, no network) and run with ``PYTHONPATH`` pointing at it, from a copy of the course and from an
unrelated folder.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attn_course import course_paths
from attn_course.course_paths import CoursePathError

REPO = Path(__file__).resolve().parents[1]
MASTERS = ("02_softmax_temperature_and_scaling.ipynb", "06_masking.ipynb")


def make_course(folder: Path, masters=MASTERS) -> Path:
    """A course folder holding a few masters and their generated exercises (no package)."""
    for sub in ("solutions", "exercises"):
        (folder / sub).mkdir(parents=True)
        for name in masters:
            shutil.copy(REPO / sub / name, folder / sub / name)
    return folder


# --------------------------------------------------------------------------- the lookup rules


def test_an_option_must_name_a_folder_of_masters(tmp_path):
    with pytest.raises(CoursePathError, match=r"--solutions .*missing: no such folder"):
        course_paths.solutions_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoursePathError, match=r"--solutions .*empty: the folder holds no master"):
        course_paths.solutions_dir(tmp_path / "empty")
    course = make_course(tmp_path / "course")
    assert course_paths.solutions_dir(course / "solutions") == course / "solutions"


def test_the_working_directory_or_a_parent_is_searched_first(tmp_path):
    course = make_course(tmp_path / "course")
    deeper = course / "submissions" / "week1"
    deeper.mkdir(parents=True)
    assert course_paths.course_root(deeper) == course.resolve()
    assert course_paths.solutions_dir(start=deeper) == course.resolve() / "solutions"
    assert course_paths.exercises_dir(start=deeper) == course.resolve() / "exercises"


def test_without_a_course_the_error_names_the_folder_and_the_option(tmp_path, monkeypatch):
    monkeypatch.setattr(course_paths, "CHECKOUT", tmp_path / "no-checkout")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(CoursePathError) as err:
        course_paths.solutions_dir(start=elsewhere)
    message = str(err.value)
    assert "no solutions/ folder" in message and str(elsewhere) in message and "--solutions DIR" in message
    with pytest.raises(CoursePathError, match=r"no exercises/ folder.*--exercises DIR"):
        course_paths.exercises_dir(start=elsewhere)
    with pytest.raises(CoursePathError, match=r"no notebooks/ folder.*--notebooks DIR"):
        course_paths.notebooks_dir(start=elsewhere)


def test_check_mode_needs_an_existing_exercises_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(course_paths, "CHECKOUT", tmp_path / "no-checkout")
    course = make_course(tmp_path / "course")
    shutil.rmtree(course / "exercises")
    assert course_paths.exercises_dir(start=course) == course.resolve() / "exercises"  # assign will create it
    with pytest.raises(CoursePathError, match="no exercises/ folder"):
        course_paths.exercises_dir(start=course, must_exist=True)
    with pytest.raises(CoursePathError, match=r"--exercises .*: no such folder"):
        course_paths.exercises_dir(course / "exercises", must_exist=True)


def test_the_checkout_is_found_from_anywhere_in_an_editable_install(tmp_path):
    # this test suite runs from the source checkout, so the checkout is the last resort
    assert course_paths.solutions_dir(start=tmp_path) == REPO / "solutions"
    assert course_paths.notebooks_dir(start=tmp_path) == REPO / "notebooks"


# --------------------------------------------------------------------------- the CLIs from an installed package


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed (not editable) into a folder of its own; the environment that uses it."""
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "attn_course", source / "attn_course", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    command += ["--no-compile", "--target", str(target), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (target / "solutions").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("PYTHONSAFEPATH", None)
    return target, env


def run(module_args, cwd, env):
    command = [sys.executable, "-m", *module_args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_installed_package_is_the_one_used(installed, tmp_path):
    target, env = installed
    probe = subprocess.run(
        [sys.executable, "-c", "import attn_course; print(attn_course.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(probe.stdout.strip()).is_relative_to(target)


def test_assign_from_the_course_folder_and_from_elsewhere(installed, tmp_path):
    _, env = installed
    course = make_course(tmp_path / "course")
    inside = run(["attn_course.assign", "--check"], course, env)
    assert inside.returncode == 0, inside.stderr
    assert str(course / "exercises") in inside.stdout

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = run(["attn_course.assign", "--check"], elsewhere, env)
    assert lost.returncode == 2
    assert "no solutions/ folder" in lost.stderr and "--solutions DIR" in lost.stderr

    options = ["--solutions", str(course / "solutions"), "--exercises", str(course / "exercises")]
    told = run(["attn_course.assign", "--check", *options], elsewhere, env)
    assert told.returncode == 0, told.stderr

    fresh = tmp_path / "fresh"
    written = run(
        ["attn_course.assign", "--solutions", str(course / "solutions"), "--exercises", str(fresh)], elsewhere, env
    )
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in fresh.iterdir()) == sorted(MASTERS)


def test_grade_from_elsewhere_says_which_option_is_missing(installed, tmp_path):
    _, env = installed
    done = run(["attn_course.grade", "02_x.ipynb", "--no-progress"], tmp_path, env)
    assert done.returncode == 2
    assert "no solutions/ folder" in done.stderr and "--solutions DIR" in done.stderr


@pytest.mark.grader
def test_grade_from_the_course_folder_with_the_installed_package(installed, tmp_path):
    _, env = installed
    course = make_course(tmp_path / "course", masters=MASTERS[:1])
    submission = course / "alice-02.ipynb"
    shutil.copy(course / "solutions" / MASTERS[0], submission)
    done = run(["attn_course.grade", submission.name, "--out", "report.json", "--no-progress"], course, env)
    assert done.returncode == 0, done.stderr
    report = json.loads((course / "report.json").read_text())
    assert report["max_score"] > 0 and report["score"] == report["max_score"], report["output"]
