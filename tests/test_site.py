"""The course website (`make site`): built from the stored notebooks, complete, and working offline.

The site is built once for this module into a temporary folder by `docs/build.py`, the script
`make site` runs. The HTML is then read: a page for every lesson and exercise, the lessons listed in
order, each lesson's page linking to its exercise, and no script, style sheet, font or image loaded
from the network (MathJax comes from the site's own `_static/mathjax`). Last, headless Chromium
opens the site from a loopback HTTP server, as GitHub Pages would serve it, and checks on the pages
what a reader sees: typeset math, decoded figures, the "next" link to lesson 02, the link to the
exercise, search results, and not one request that failed.

Skips with a message where the docs extra (Sphinx, myst-nb, the theme, MathJax) is not installed;
the browser test also where Chromium or Playwright cannot be had (see tests/test_browser.py).
"""

import functools
import importlib.util
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.test_browser import browser, screenshot  # noqa: F401  (the fixture: headless Chromium)

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted(path.stem for path in (REPO / "notebooks").glob("*.ipynb"))
EXERCISES = sorted(path.stem for path in (REPO / "exercises").glob("*.ipynb"))
DOCS_EXTRA = ("sphinx", "myst_nb", "sphinx_book_theme", "mathjax")
BUILD_SECONDS = 600
# A tag that makes the browser fetch something: <script src>, <link href> (style sheets, fonts, preloads), <img src>.
FETCHING_TAG = re.compile(r"<(script|link|img|iframe|source)\b[^>]*?\b(src|href)=[\"']([^\"']+)[\"']", re.IGNORECASE)
REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = [name for name in DOCS_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the site needs the docs extra ({', '.join(missing)} missing): pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site") / "html"
    build = subprocess.run(
        [sys.executable, str(REPO / "docs" / "build.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=BUILD_SECONDS, cwd=REPO, check=False,
    )  # fmt: skip
    assert build.returncode == 0, f"the site did not build:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    assert "WARNING" not in build.stderr, f"Sphinx warned while building the site:\n{build.stderr[-3000:]}"
    return out


def page_text(site: Path, relative: str) -> str:
    return (site / relative).read_text(encoding="utf-8")


def test_every_lesson_and_exercise_has_a_page_and_the_index_lists_the_lessons_in_order(site):
    for folder, names in (("notebooks", LESSONS), ("exercises", EXERCISES)):
        missing = [name for name in names if not (site / folder / f"{name}.html").is_file()]
        assert not missing, f"no page for {folder}/{missing}"
    index = page_text(site, "index.html")
    listed = re.findall(r'href="notebooks/([0-9]{2}_[a-z0-9_]+)\.html"', index)
    assert list(dict.fromkeys(listed)) == LESSONS, "the index lists every lesson once, in lesson order"
    assert {f"exercises/{name}.html" for name in EXERCISES} <= set(re.findall(r'href="(exercises/[^"#]+)"', index))


def test_each_lesson_page_links_its_exercise_and_the_next_lesson(site):
    for number, name in enumerate(LESSONS):
        html = page_text(site, f"notebooks/{name}.html")
        article = html[html.index('<article class="bd-article"') :]  # the lesson itself, not the side bar
        if name in EXERCISES:
            assert f'href="../exercises/{name}.html"' in article, f"lesson {name} does not link its exercise"
        if number + 1 < len(LESSONS):
            assert re.search(rf'class="right-next"\s+href="{LESSONS[number + 1]}\.html"', html), name


def test_no_page_loads_anything_from_the_network(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= len(LESSONS) + len(EXERCISES) + 1
    remote = {
        f"{page.relative_to(site)}: {url}"
        for page in pages
        for _tag, _attribute, url in FETCHING_TAG.findall(page.read_text(encoding="utf-8"))
        if REMOTE.match(url)
    }
    assert not remote, f"pages fetch from the network: {sorted(remote)[:5]}"
    remote_url = re.compile(r"url\(\s*['\"]?(https?:)?//")
    styles = [css for css in (site / "_static").rglob("*.css") if remote_url.search(css.read_text())]
    assert not styles, f"style sheets fetch from the network: {styles}"

    lesson = page_text(site, f"notebooks/{LESSONS[1]}.html")
    (mathjax,) = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', lesson)
    assert (site / "notebooks" / mathjax).resolve().is_file(), f"MathJax is not in the site: {mathjax}"
    assert (site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir(), "MathJax's fonts"


@pytest.fixture
def served_site(site):
    """The built site on a loopback HTTP server, as GitHub Pages serves it; its base URL."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line per request in the test's output
        pass


def test_the_site_in_a_browser(served_site, browser):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    failures = []  # every request that got no answer or an error status

    def note_status(response):
        if response.status >= 400:
            failures.append(f"{response.url}: {response.status}")

    page.on("requestfailed", lambda request: failures.append(f"{request.url}: {request.failure}"))
    page.on("response", note_status)
    try:
        page.goto(f"{served_site}/index.html")
        page.locator("article a[href='notebooks/01_dot_products_as_similarity.html']").first.click()
        page.wait_for_url("**/notebooks/01_dot_products_as_similarity.html")

        # Math: MathJax typeset every formula, none left as TeX source.
        page.wait_for_function("document.querySelectorAll('article mjx-container').length > 10")
        raw_tex = page.locator("article p, article li").evaluate_all(
            "nodes => nodes.flatMap(node => (node.innerText.match(/\\$[^$\\n]*\\\\[a-zA-Z]+[^$\\n]*\\$/g) || []))"
        )
        assert raw_tex == [], f"formulas left as TeX source: {raw_tex[:3]}"
        # Figures: the stored images of the lesson, decoded.
        figures = page.locator("article .cell_output img")
        figures.first.scroll_into_view_if_needed()
        widths = figures.evaluate_all("images => images.map(image => image.complete ? image.naturalWidth : 0)")
        assert len(widths) >= 2 and all(width > 100 for width in widths), f"figures' natural widths: {widths}"
        figures.first.scroll_into_view_if_needed()
        screenshot(page, "site-lesson-page.png")

        # Links: the exercise named in the summary, then back and on to the next lesson.
        page.locator("article a[href='../exercises/01_dot_products_as_similarity.html']").first.click()
        page.wait_for_url("**/exercises/01_dot_products_as_similarity.html")
        assert "Exercise 01" in page.locator("article h1").first.inner_text()
        page.go_back()
        page.locator("a.right-next").click()
        page.wait_for_url("**/notebooks/02_softmax_temperature_and_scaling.html")
        assert page.locator("article h1").first.inner_text().startswith("02")

        # Search: Sphinx's own index, in the page, no server behind it.
        page.goto(f"{served_site}/search.html?q=softmax")
        results = page.locator("#search-results ul.search li")
        results.first.wait_for()
        assert results.count() >= 3, "a search for 'softmax' finds the lessons about it"
        assert not failures, f"requests that failed: {failures}"
    finally:
        page.close()
