"""Build the course website (``make site``): the stored lessons and exercises as static HTML pages.

Sphinx reads one source folder, so this lays one out under ``build/site-src``: ``index.md`` from
``docs/`` and fresh copies of the repository's ``notebooks/`` and ``exercises/`` (their times kept, so
Sphinx reads again only the notebooks that changed). The configuration stays in ``docs/conf.py``
(Sphinx's ``-c``); the HTML goes to ``build/site`` (``--out``), with ``index.html`` at its top, and
Sphinx's cache and myst-nb's image files beside it (``build/site-doctrees``, ``build/jupyter_execute``).
Nothing is executed and nothing is fetched: the build works offline.

    python docs/build.py            # incremental: only changed notebooks are read again
    python docs/build.py --clean    # from nothing
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SOURCES = ("notebooks", "exercises")  # the repository folders that become pages, in the index's order


def lay_out_sources(source_dir: Path) -> None:
    """``source_dir`` gets index.md and a copy of each folder of notebooks, modification times kept."""
    source_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(DOCS / "index.md", source_dir / "index.md")
    for name in SOURCES:
        shutil.rmtree(source_dir / name, ignore_errors=True)  # a notebook removed from the repository goes too
        shutil.copytree(REPO / name, source_dir / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))


def build(out_dir: Path, clean: bool = False, jobs: str = "1") -> int:
    from sphinx.cmd.build import build_main

    source_dir = out_dir.parent / f"{out_dir.name}-src"
    doctrees = out_dir.parent / f"{out_dir.name}-doctrees"  # Sphinx's cache of parsed pages
    outputs = out_dir.parent / "jupyter_execute"  # where myst-nb puts the notebooks' images before Sphinx copies them
    if clean:
        for folder in (out_dir, source_dir, doctrees, outputs):
            shutil.rmtree(folder, ignore_errors=True)
    lay_out_sources(source_dir)
    args = ["-b", "html", "-c", str(DOCS), "-d", str(doctrees), "-j", jobs, "-q", str(source_dir), str(out_dir)]
    return build_main(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "site", help="where the HTML goes")
    parser.add_argument("--clean", action="store_true", help="remove the previous build first")
    parser.add_argument("-j", "--jobs", default="1", help="Sphinx's parallel readers (a number or 'auto')")
    options = parser.parse_args(argv)
    try:
        import mathjax  # noqa: F401
        import myst_nb  # noqa: F401
        import sphinx_book_theme  # noqa: F401
    except ImportError as missing:
        print(f"make site needs the docs extra ({missing.name} is missing): pip install -e '.[docs]'", file=sys.stderr)
        return 2
    start = time.perf_counter()
    status = build(options.out.resolve(), clean=options.clean, jobs=options.jobs)
    if status == 0:
        index = options.out.resolve() / "index.html"
        shown = index.relative_to(Path.cwd()) if index.is_relative_to(Path.cwd()) else index
        print(f"site built in {time.perf_counter() - start:.1f} s: {shown}")
    return status


if __name__ == "__main__":
    sys.exit(main())
