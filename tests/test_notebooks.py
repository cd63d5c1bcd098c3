"""Lesson notebook hygiene: what strict nbval needs to really check a lesson.

nbval compares only cells that were stored executed, so an unexecuted lesson
would pass while checking nothing. Each lesson must be stored as a fresh
"restart and run all": every code cell executed in order and showing an
output, no stray errors, the course's kernel, and (from lesson 01 on) a figure.
"""

import re
from pathlib import Path

import nbformat
import pytest

from attn_course.lessons import lesson_paths

LESSONS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = lesson_paths(LESSONS_DIR)


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


@pytest.fixture(params=LESSONS, ids=lambda path: path.name)
def lesson(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_lesson_names_say_number_and_topic():
    for path in LESSONS_DIR.glob("*.ipynb"):
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: name lessons NN_topic.ipynb"


def test_every_code_cell_was_executed_in_order(lesson):
    path, notebook = lesson
    counts = [cell.execution_count for cell in code_cells(notebook)]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts {counts}; restart and run all"


def test_every_code_cell_has_stored_output(lesson):
    path, notebook = lesson
    silent = [n for n, cell in enumerate(code_cells(notebook), 1) if cell.source.strip() and not cell.outputs]
    assert not silent, f"{path.name}: code cells {silent} store no output, so nbval compares nothing there"


def test_errors_only_where_a_cell_teaches_one(lesson):
    path, notebook = lesson
    for number, cell in enumerate(code_cells(notebook), 1):
        raised = any(output.output_type == "error" for output in cell.outputs)
        expected = "raises-exception" in tags(cell)
        problem = "stored an error, not tagged raises-exception" if raised else "tagged raises-exception, no error"
        assert raised == expected, f"{path.name}, code cell {number}: {problem}"


def test_kernel_is_python3(lesson):
    path, notebook = lesson
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"


def test_lessons_show_figures_and_no_figure_reprs(lesson):
    path, notebook = lesson
    outputs = [output for cell in code_cells(notebook) for output in cell.outputs]
    if not path.name.startswith("00_"):
        assert any("image/png" in output.get("data", {}) for output in outputs), f"{path.name}: no figure"
    for output in outputs:  # a figure drawn inline also stores "<Figure size ...>" beside its image: fine
        if output.output_type == "execute_result" and "image/png" not in output.get("data", {}):
            text = output.get("data", {}).get("text/plain", "")
            assert not text.startswith(("<Figure", "<Axes", "<matplotlib")), (
                f"{path.name}: a plotting cell returned {text[:40]!r}; end it with plt.show() or ';'"
            )


def test_first_code_cell_makes_the_lesson_deterministic(lesson):
    path, notebook = lesson
    first = code_cells(notebook)[0].source
    for needed in ("default_rng", "set_printoptions"):
        assert needed in first, f"{path.name}: the first code cell must seed and set print options ({needed})"


def test_lesson_opens_with_goals_and_ends_with_the_exercise(lesson):
    path, notebook = lesson
    assert notebook.cells[0].cell_type == "markdown", f"{path.name}: open with a markdown cell"
    opening = notebook.cells[0].source.lower()
    for needed in ("you will be able to", "article", "prerequisites"):
        assert needed in opening, f"{path.name}: the opening cell must say '{needed}'"
    closing = notebook.cells[-1]
    assert closing.cell_type == "markdown" and f"exercises/{path.name[:2]}_" in closing.source, (
        f"{path.name}: end with a summary that points to exercises/{path.name[:2]}_....ipynb"
    )


def test_test_plumbing_uses_tags_not_comments(lesson):
    path, notebook = lesson
    for cell in code_cells(notebook):
        assert "NBVAL_" not in cell.source, (
            f"{path.name}: use cell tags (nbval-ignore-output, ...), not NBVAL_ comments"
        )


def test_stored_streams_read_as_a_terminal_shows_them(lesson):
    """A progress bar is stored as one line, not as one fragment per redraw (attn_course.lessons.render_streams)."""
    path, notebook = lesson
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                assert "\r" not in output["text"], f"{path.name} cell {index}: a stream keeps its redraws (\\r)"


def test_render_streams_keeps_the_last_state_of_each_line():
    from attn_course.lessons import render_line

    assert render_line("\rbar  10%\rbar  50%\rbar 100%\ndone\n") == "bar 100%\ndone\n"
    assert render_line("plain text\nno carriage returns") == "plain text\nno carriage returns"
