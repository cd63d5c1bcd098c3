"""exercises/ is generated from solutions/: up to date, without solution text, and malformed masters are refused."""

import copy
import json
import shutil

import nbformat
import pytest

from attn_course.grading import assign
from attn_course.grading.assign import (
    BEGIN,
    END,
    AssignError,
    build_exercise,
    read_master,
    solution_regions,
    stub_solutions,
)
from attn_course.grading.specs import EXERCISES

MASTERS = assign.find_masters()
MASTER_02 = assign.SOLUTIONS_DIR / "02_softmax_temperature_and_scaling.ipynb"


def exercise_text(master_path) -> str:
    return (assign.EXERCISES_DIR / master_path.name).read_text(encoding="utf-8")


def test_there_are_masters_and_each_has_an_exercise():
    assert len(MASTERS) >= 2
    for path in MASTERS:
        assert (assign.EXERCISES_DIR / path.name).is_file(), f"run python -m attn_course.assign ({path.name})"


def test_exercises_are_exactly_what_the_masters_generate(tmp_path):
    assert assign.check_exercises() == []
    written = assign.assign(assign.SOLUTIONS_DIR, tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in MASTERS)
    for path in written:
        assert path.read_bytes() == (assign.EXERCISES_DIR / path.name).read_bytes(), path.name


def test_check_mode_reports_every_kind_of_difference(tmp_path, capsys):
    exercises = tmp_path / "exercises"
    shutil.copytree(assign.EXERCISES_DIR, exercises)
    assert assign.main(["--check", "--exercises", str(exercises)]) == 0

    stale = exercises / MASTER_02.name
    stale.write_text(stale.read_text().replace("check(", "check (", 1))
    (exercises / "99_orphan.ipynb").write_text("{}")
    (exercises / "03_scaled_dot_product_attention.ipynb").unlink()
    assert assign.main(["--check", "--exercises", str(exercises)]) == 1
    err = capsys.readouterr().err
    assert f"{MASTER_02.name} differs" in err
    assert "99_orphan.ipynb has no master" in err
    assert "03_scaled_dot_product_attention.ipynb is missing" in err


@pytest.mark.parametrize("master_path", MASTERS, ids=lambda p: p.name)
def test_no_solution_text_reaches_the_exercise(master_path):
    master = read_master(master_path)
    text = exercise_text(master_path)
    notebook = nbformat.reads(text, as_version=4)
    sources = "\n".join(cell.source for cell in notebook.cells)
    assert BEGIN not in sources and END not in sources
    regions = [r for cell in master.cells if cell.kind == "solution" for r in solution_regions(cell.source)]
    assert regions, "a master without solution regions"
    for region in regions:
        assert region.strip() not in sources
        for line in region.splitlines():
            if len(line.strip()) >= 12:  # every substantial line of the answer is absent
                assert line.strip() not in sources, f"{master_path.name}: solution line leaked: {line.strip()!r}"


@pytest.mark.parametrize("master_path", MASTERS, ids=lambda p: p.name)
def test_exercise_keeps_ids_and_metadata_and_clears_outputs(master_path):
    master = nbformat.read(master_path, as_version=4)
    exercise = nbformat.read(assign.EXERCISES_DIR / master_path.name, as_version=4)
    assert [c.id for c in exercise.cells] == [c.id for c in master.cells]
    assert exercise.metadata["attn_course"]["master"] == master_path.stem
    assert exercise.metadata["kernelspec"]["name"] == "python3"
    for ours, theirs in zip(exercise.cells, master.cells, strict=True):
        assert ours.metadata.get("attn_course") == theirs.metadata.get("attn_course")
        if ours.cell_type == "code":
            assert ours.outputs == [] and ours.execution_count is None
            kind = ours.metadata["attn_course"]["kind"]
            if kind == "solution":
                assert "# YOUR CODE HERE" in ours.source and "raise NotImplementedError()" in ours.source
            else:
                assert ours.source == theirs.source
                assert ours.metadata["editable"] is False and ours.metadata["deletable"] is False


def test_every_exercise_is_checked_by_exactly_one_master():
    checked = [cell.exercise for path in MASTERS for cell in read_master(path).test_cells()]
    assert sorted(checked) == sorted(EXERCISES), "each exercise definition belongs to one test cell of one master"


def test_each_master_checks_the_exercises_of_its_own_lesson():
    for path in MASTERS:
        master = read_master(path)
        assert master.notebook.metadata["attn_course"]["lesson"] == f"notebooks/{path.name}"
        assert (assign.REPO / "notebooks" / path.name).is_file(), f"{path.name}: no lesson of that name"
        for cell in master.test_cells():
            assert EXERCISES[cell.exercise].lesson == path.stem, (path.name, cell.exercise)


def test_stub_takes_the_indentation_of_its_marker():
    source = (
        "def f(x):\n"
        '    """doc"""\n'
        "    if x:\n"
        f"        {BEGIN}\n"
        "        return 1\n"
        f"        {END}\n"
        f"    {BEGIN}\n"
        "    y = 2\n"
        "    return y\n"
        f"    {END}\n"
        "# after"
    )
    assert stub_solutions(source) == (
        "def f(x):\n"
        '    """doc"""\n'
        "    if x:\n"
        "        # YOUR CODE HERE\n"
        "        raise NotImplementedError()\n"
        "    # YOUR CODE HERE\n"
        "    raise NotImplementedError()\n"
        "# after"
    )
    assert solution_regions(source) == ["        return 1", "    y = 2\n    return y"]


# --------------------------------------------------------------------------- malformed masters are refused


def _cell(notebook, grade_id):
    return next(
        c for c in notebook["cells"] if c.get("metadata", {}).get("attn_course", {}).get("grade_id") == grade_id
    )


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _unclosed(nb):
    cell = _cell(nb, "softmax")
    cell["source"] = _source(cell).replace(END, "")


def _nested(nb):
    cell = _cell(nb, "softmax")
    cell["source"] = _source(cell).replace(BEGIN, f"{BEGIN}\n    {BEGIN}", 1)


def _end_first(nb):
    cell = _cell(nb, "softmax")
    cell["source"] = f"{END}\n" + _source(cell)


def _in_locked(nb):
    cell = _cell(nb, "setup")
    cell["source"] = f"{BEGIN}\nx = 1\n{END}\n" + _source(cell)


def _in_markdown(nb):
    cell = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    cell["source"] = f"{BEGIN}\nthe answer\n{END}"


def _no_region(nb):
    cell = _cell(nb, "softmax")
    cell["source"] = _source(cell).replace(BEGIN, "").replace(END, "")


def _duplicate(nb):
    _cell(nb, "masked_softmax")["metadata"]["attn_course"]["grade_id"] = "softmax"


def _no_metadata(nb):
    del _cell(nb, "setup")["metadata"]["attn_course"]


def _bad_kind(nb):
    _cell(nb, "setup")["metadata"]["attn_course"]["kind"] = "answer"


def _wrong_points(nb):
    _cell(nb, "softmax_tests")["metadata"]["attn_course"]["points"] = 7


def _unknown_exercise(nb):
    _cell(nb, "softmax_tests")["metadata"]["attn_course"]["exercise"] = "no_such_exercise"


def _no_id(nb):
    del _cell(nb, "softmax")["id"]


@pytest.mark.parametrize(
    ("breaks", "grade_id", "message"),
    [
        (_unclosed, "softmax", "never closed"),
        (_nested, "softmax", "nested"),
        (_end_first, "softmax", "without a ### BEGIN SOLUTION"),
        (_in_locked, "setup", "outside a solution cell"),
        (_in_markdown, None, "outside a solution cell"),
        (_no_region, "softmax", "needs a ### BEGIN SOLUTION"),
        (_duplicate, "softmax", "already used by cell"),
        (_no_metadata, None, "without 'attn_course' metadata"),
        (_bad_kind, "setup", "kind must be one of"),
        (_wrong_points, "softmax_tests", "differ from the 5 points"),
        (_unknown_exercise, "softmax_tests", "names the exercise it checks"),
        (_no_id, "softmax", "has no id"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else None,
)
def test_malformed_master_is_an_error_naming_file_and_cell(tmp_path, capsys, breaks, grade_id, message):
    notebook = json.loads(MASTER_02.read_text(encoding="utf-8"))
    broken = copy.deepcopy(notebook)
    breaks(broken)
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    target = solutions / MASTER_02.name
    target.write_text(json.dumps(broken, indent=1))

    with pytest.raises(AssignError) as raised:
        read_master(target)
    text = str(raised.value)
    assert str(target) in text and ", cell " in text and message in text
    if grade_id:
        assert f"grade_id {grade_id!r}" in text

    assert assign.main(["--solutions", str(solutions), "--exercises", str(exercises)]) == 2
    assert message in capsys.readouterr().err
    assert not exercises.exists() or not list(exercises.iterdir()), "nothing is written when a master is broken"


def test_build_exercise_does_not_touch_the_master():
    master = read_master(MASTER_02)
    before = copy.deepcopy(master.notebook)
    build_exercise(master)
    assert master.notebook == before
