"""A learner's browser: JupyterLab, started as `make lab` starts it, driven in headless Chromium.

Playwright's Python package drives the system's Chromium (Debian's `chromium`, which `.ci/run`
installs; Playwright's own browser download is never used). The test opens a lesson the way a
learner does: it clears the stored outputs (Edit > Clear Outputs of All Cells), runs every cell
(Run > Run All Cells), waits for the kernel to go idle, and asserts that no cell wrote an error or
to stderr, that the lesson's figures came back as decoded images and that its math was typeset by
MathJax. Then it opens an exercise, runs its check cell on the untouched stub (the verdict on the
page says the task is not attempted yet), types the master's answer into the answer cell, runs the
check again and reads the new verdict: every test passed. Last, it runs lesson 02's temperature
slider (attn_course.interactive), moves it with the keyboard and sees the figure redrawn. The
notebooks are copies in a scratch folder under `build/`, so Lab never saves over a tracked file.

Screenshots for a person to look at go to `build/screenshots/` (or `$ATTN_COURSE_SCREENSHOTS`).
Without Chromium or Playwright the tests skip and say which is missing.
"""

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_lab import get_json, lab_server  # noqa: F401  (the fixture: JupyterLab with the Makefile's LAB_FLAGS)

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("ATTN_COURSE_SCREENSHOTS", REPO / "build" / "screenshots"))
# The quickest lesson of the README's run-time table that has both figures and math, and its exercise.
LESSON = "01_dot_products_as_similarity.ipynb"
EXERCISE_ANSWER = "dot_product_similarity"  # grade_id of the answer cell filled in; its check cell follows it
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, and quiet on a machine without internet: no background requests, no component updates.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
KERNEL_SECONDS = 60  # for Lab to start a notebook's kernel
RUN_SECONDS = 120  # a lesson runs in under 2 minutes (the course's rule), so Run All must finish by then
STDERR = '[data-mime-type="application/vnd.jupyter.stderr"]'  # tracebacks and stderr streams in Lab


def chromium_executable() -> str | None:
    """The system's Chromium: $ATTN_COURSE_CHROMIUM, else the first of the usual names on PATH."""
    if os.environ.get("ATTN_COURSE_CHROMIUM"):
        return os.environ["ATTN_COURSE_CHROMIUM"]
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium under Playwright, shared by the tests of one module."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need Playwright: pip install -e '.[browser]'"
    )
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set ATTN_COURSE_CHROMIUM to a Chromium binary)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    return path


def code_cells(notebook: Path) -> list[dict]:
    return [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]


def stored_images(notebook: Path) -> int:
    return sum("image/png" in output.get("data", {}) for cell in code_cells(notebook) for output in cell["outputs"])


def index_of(cells: list[dict], grade_id: str) -> int:
    """Where the cell with this grading id is among a notebook's cells."""
    ids = [cell["metadata"].get("attn_course", {}).get("grade_id") for cell in cells]
    return ids.index(grade_id)


def master_answer(exercise_name: str, grade_id: str) -> str:
    """The master's answer cell from solutions/, without the BEGIN/END SOLUTION marker lines."""
    cells = json.loads((REPO / "solutions" / exercise_name).read_text())["cells"]
    source = "".join(cells[index_of(cells, grade_id)]["source"])
    return "\n".join(line for line in source.splitlines() if not re.match(r"\s*### (BEGIN|END) SOLUTION", line))


@pytest.fixture
def scratch():
    """A folder inside the served repository (under the git-ignored build/) for copies of notebooks."""
    (REPO / "build").mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="browser-test-", dir=REPO / "build"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def lab(monkeypatch, tmp_path, browser):
    """JupyterLab as `make lab` starts it (tests/test_lab.py's fixture), with settings and workspaces of its own."""
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path / "lab-settings"))
    monkeypatch.setenv("JUPYTERLAB_WORKSPACES_DIR", str(tmp_path / "lab-workspaces"))
    settings = {  # a settings file of Lab's own per plugin
        # no "get Jupyter news?" toast over the screenshots
        "apputils-extension/notification": '{"fetchNews": "false"}',
        # every cell in the page, on screen or not, so the test can count them (Lab 4.2's default windowing, "full",
        # attaches only the cells on screen; later releases keep them all by default, off-screen ones hidden by CSS)
        "notebook-extension/tracker": '{"windowingMode": "none"}',
    }
    for plugin, text in settings.items():
        path = tmp_path / "lab-settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def open_notebook(browser, base: str, token: str, path: Path):
    """A new page with the notebook `path` (inside the repository) open, all its cells there, its kernel idle.

    On a busy machine Lab may ask which kernel to start (its "Select Kernel" dialog, the course's
    Python 3 already chosen); a learner clicks Select, and so does this, whenever the dialog shows.
    """
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    kernel_dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    served_path = path.relative_to(REPO).as_posix()
    page.goto(f"{base}/lab/tree/{served_path}?token={token}")
    num_cells = len(json.loads(path.read_text())["cells"])
    page.wait_for_function(f"document.querySelectorAll('.jp-Notebook .jp-Cell').length === {num_cells}")
    deadline = time.monotonic() + KERNEL_SECONDS
    while True:
        if kernel_dialog.is_visible():
            kernel_dialog.locator(".jp-mod-accept").click()
        elif has_kernel(base, token, served_path):  # none while the dialog waits for an answer
            break
        assert time.monotonic() < deadline, f"no kernel started for {served_path} in {KERNEL_SECONDS} s"
        page.wait_for_timeout(250)
    wait_until_idle(page)
    return page


def has_kernel(base: str, token: str, served_path: str) -> bool:
    """The server runs a kernel for the notebook at `served_path` (Jupyter's sessions API)."""
    sessions = get_json(f"{base}/api/sessions?token={token}")
    return any(session["path"] == served_path and session.get("kernel") for session in sessions)


def wait_until_idle(page, seconds: float = 60) -> None:
    """The kernel's status in the notebook's toolbar says idle."""
    indicator = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    indicator.wait_for(state="attached", timeout=seconds * 1000)


def wait_for_prompt(cell, number: int, seconds: float = RUN_SECONDS) -> None:
    """The cell's input prompt shows execution number `number`: it ran, and as the `number`-th execution."""
    prompt = cell.locator(".jp-InputPrompt", has_text=re.compile(rf"^\[{number}\]:$"))
    prompt.wait_for(state="attached", timeout=seconds * 1000)


def select(cell) -> None:
    """Click the cell's prompt area, as a learner selects a cell, and wait until Lab marks it active."""
    cell.locator(".jp-InputPrompt").click()
    cell.and_(cell.page.locator(".jp-mod-active")).wait_for(state="attached")


def menu(page, top: str, item: str) -> None:
    """Choose `item` in the main menu bar's `top` menu, as a learner clicks it."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{top}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{re.escape(item)}$")).click()


def texts(page, selector: str) -> list[str]:
    """The text of every element matching `selector`, on screen or not (cells off screen have no innerText)."""
    return page.locator(selector).evaluate_all("elements => elements.map(element => element.textContent.trim())")


def all_prompts(regex: str) -> str:
    """A page function: true when every code cell's input prompt matches the JavaScript `regex`."""
    return (
        "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
        f".every(prompt => {regex}.test(prompt.textContent.trim()))"
    )


def test_a_lesson_runs_in_jupyterlab(lab, lab_server, browser, scratch):  # noqa: F811
    base, token = lab_server
    lesson = shutil.copy2(REPO / "notebooks" / LESSON, scratch / LESSON)
    page = open_notebook(browser, base, token, lesson)
    try:
        num_code_cells = len(code_cells(lesson))

        menu(page, "Edit", "Clear Outputs of All Cells")  # the stored outputs and execution numbers go
        page.wait_for_function(all_prompts("/^\\[ \\]:$/"))
        assert page.locator(".jp-OutputArea-output img").count() == 0
        menu(page, "Run", "Run All Cells")
        # every code cell numbered again: none waiting ([ ]) or running ([*])
        page.wait_for_function(all_prompts("/^\\[\\d+\\]:$/"), timeout=RUN_SECONDS * 1000)
        wait_until_idle(page)

        numbers = [int(re.sub(r"\D", "", text)) for text in texts(page, ".jp-CodeCell .jp-InputPrompt")]
        assert numbers == list(range(1, num_code_cells + 1)), f"cells ran out of order or not at all: {numbers}"
        errors = texts(page, f".jp-OutputArea-output{STDERR}")
        assert errors == [], f"the lesson wrote errors or warnings in the browser: {errors}"

        images = page.locator(".jp-OutputArea-output img")
        images.first.scroll_into_view_if_needed()
        widths = images.evaluate_all("images => images.map(image => image.complete ? image.naturalWidth : 0)")
        assert len(widths) == stored_images(lesson), "each figure the stored lesson shows comes back as an image"
        assert all(width > 100 for width in widths), f"figures not decoded as images: natural widths {widths}"

        math = page.locator(".jp-MarkdownOutput mjx-container")
        assert math.count() > 0, "MathJax typeset none of the lesson's formulas"
        raw_tex = page.locator(".jp-MarkdownOutput").evaluate_all(
            "cells => cells.flatMap(cell => (cell.innerText.match(/\\$[^$\\n]*\\\\[a-zA-Z]+[^$\\n]*\\$/g) || []))"
        )
        assert raw_tex == [], f"formulas left as TeX source: {raw_tex[:3]}"
        screenshot(page, "jupyterlab-lesson-after-run-all.png")
    except Exception:
        screenshot(page, "jupyterlab-lesson-FAILED.png")
        raise
    finally:
        page.close()


def test_an_exercise_check_cell_gives_its_verdict(lab, lab_server, browser, scratch):  # noqa: F811
    base, token = lab_server
    exercise = shutil.copy2(REPO / "exercises" / LESSON, scratch / LESSON)
    cells = json.loads(exercise.read_text())["cells"]
    answer_index = index_of(cells, EXERCISE_ANSWER)
    check_index = answer_index + 1
    assert "".join(cells[check_index]["source"]).startswith(f'check("{EXERCISE_ANSWER}"')

    page = open_notebook(browser, base, token, exercise)
    try:
        notebook_cells = page.locator(".jp-Notebook .jp-Cell")
        answer_cell, check_cell = notebook_cells.nth(answer_index), notebook_cells.nth(check_index)
        code_above = sum(cell["cell_type"] == "code" for cell in cells[:check_index])

        # The untouched stub: the cells above the check run, then the check says the task is not attempted yet.
        select(check_cell)
        menu(page, "Run", "Run All Above Selected Cell")
        wait_for_prompt(answer_cell, code_above)  # the last code cell above the check ran
        select(check_cell)
        page.keyboard.press("Shift+Enter")
        wait_for_prompt(check_cell, code_above + 1)
        verdict = check_cell.locator(".jp-OutputArea").inner_text()
        assert f"{EXERCISE_ANSWER}: not attempted yet" in verdict, verdict

        # The master's answer typed into the answer cell (replacing the stub), that cell run, then the check again.
        answer_cell.locator(".cm-content").click()
        page.keyboard.press("Control+A")
        page.keyboard.insert_text(master_answer(LESSON, EXERCISE_ANSWER))
        page.keyboard.press("Shift+Enter")  # runs the answer cell and selects the check cell below it
        wait_for_prompt(answer_cell, code_above + 2)
        select(check_cell)
        page.keyboard.press("Shift+Enter")
        wait_for_prompt(check_cell, code_above + 3)
        wait_until_idle(page)
        verdict = check_cell.locator(".jp-OutputArea").inner_text()
        passed = re.search(rf"{EXERCISE_ANSWER}: (\d+) of (\d+) tests passed", verdict)
        assert passed and passed.group(1) == passed.group(2), verdict
        check_cell.scroll_into_view_if_needed()
        screenshot(page, "jupyterlab-exercise-verdict.png")
    except Exception:
        screenshot(page, "jupyterlab-exercise-FAILED.png")
        raise
    finally:
        page.close()


SLIDER_LESSON = "02_softmax_temperature_and_scaling.ipynb"  # its temperature explorer (attn_course.interactive)


def slider_notebook(folder: Path) -> Path:
    """A notebook of lesson 02's setup cell, the cell defining its scores, and its temperature-slider cell."""
    cells = json.loads((REPO / "notebooks" / SLIDER_LESSON).read_text())["cells"]
    wanted = ("import attn_course", "token_scores = np.array", "interactive.temperature_explorer(")
    chosen = [next(cell for cell in cells if cell["cell_type"] == "code" and text in "".join(cell["source"]))
              for text in wanted]  # fmt: skip
    notebook = {"cells": [{**cell, "outputs": [], "execution_count": None} for cell in chosen],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    path = folder / SLIDER_LESSON
    path.write_text(json.dumps(notebook))
    return path


def test_moving_a_slider_redraws_the_figure(lab, lab_server, browser, scratch):  # noqa: F811
    base, token = lab_server
    notebook = slider_notebook(scratch)
    page = open_notebook(browser, base, token, notebook)
    try:
        menu(page, "Run", "Run All Cells")
        page.wait_for_function(all_prompts("/^\\[\\d+\\]:$/"), timeout=RUN_SECONDS * 1000)
        wait_until_idle(page)
        explorer = page.locator(".jp-CodeCell").nth(2)
        handle = explorer.locator(".widget-slider .noUi-handle")
        handle.wait_for(state="visible")
        readout = explorer.locator(".widget-readout")
        image = explorer.locator(".jp-OutputArea-output img")
        before_value, before_image = readout.inner_text(), image.get_attribute("src")
        assert before_image and before_image.startswith("data:image/png"), "the explorer shows its figure as a PNG"

        handle.focus()
        for _ in range(10):  # ten steps of 0.05 in log10(tau): tau from 1.0 to about 3.2
            page.keyboard.press("ArrowRight")
        deadline = time.monotonic() + 30  # the kernel redraws; Lab replaces the image element with the new one
        while image.first.get_attribute("src") == before_image:
            assert time.monotonic() < deadline, "moving the slider did not redraw the figure within 30 s"
            page.wait_for_timeout(250)
        assert readout.inner_text() != before_value, "the slider's value did not move"
        assert image.count() == 1, "the figure is redrawn in place, not added below"
        explorer.scroll_into_view_if_needed()
        screenshot(page, "jupyterlab-slider-moved.png")
    except Exception:
        screenshot(page, "jupyterlab-slider-FAILED.png")
        raise
    finally:
        page.close()
