"""Sphinx configuration of the course website: the lessons and exercises as pages, read, never run.

The site is built from the notebooks as they are stored (outputs included), so it shows exactly
what nbval checks; nothing is executed (myst-nb's ``nb_execution_mode = "off"``). ``docs/build.py``
(``make site``) lays out the sources and calls Sphinx; the pages need no network: MathJax 3 is
copied from the ``django-static-mathjax`` wheel (a plain copy of MathJax's ``es5`` folder, with
no Django dependency) into ``_static/mathjax``, and the theme ships its own scripts and fonts.
"""

import re
import shutil
from pathlib import Path

import mathjax  # the django-static-mathjax distribution: MathJax 3 files only
from docutils import nodes
from sphinx import addnodes

project = "Attention from scratch"
author = "the attn_course authors"
copyright = "the attn_course authors, MIT licence"  # the footer line

extensions = ["myst_nb", "sphinx.ext.mathjax"]
root_doc = "index"
# exercises/README.md is the instructors' guide to handing out and grading: in the repository, not on the site.
exclude_patterns = ["_build", "**.ipynb_checkpoints", "exercises/README.md"]

# The lessons are shown as stored: never executed while building.
nb_execution_mode = "off"
nb_merge_streams = True
# No ipywidgets loader from a CDN: a widget's stored output is its static picture.
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]

html_theme = "sphinx_book_theme"
html_title = "Attention from scratch"
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_copy_source = False
html_last_updated_fmt = None
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "show_prev_next": True,
    "navigation_with_keys": True,
}

# MathJax 3 from the local copy (a path relative to _static), never from a CDN.
MATHJAX_ES5 = Path(next(iter(mathjax.__path__))) / "static" / "mathjax" / "es5"  # a namespace package in 3.2.2.0
mathjax_path = "mathjax/tex-chtml.js"
# What tex-chtml.js loads on demand; the other bundles, the SVG output and the speech engine stay out.
MATHJAX_PARTS = ["tex-chtml.js", "input/tex/extensions", "output/chtml/fonts/woff-v2", "ui", "a11y", "adaptors"]

# `exercises/NN_topic.ipynb` written as code in a lesson's summary becomes a link to that exercise's page.
EXERCISE_MENTION = re.compile(r"^exercises/(\d\d_[a-z0-9_]+)\.ipynb$")


def link_exercise_mentions(app, doctree):
    """Wrap each literal naming an exercise notebook of the site in a cross-reference to its page."""
    found = set(app.env.found_docs)
    for literal in list(doctree.findall(nodes.literal)):
        match = EXERCISE_MENTION.match(literal.astext())
        if not match or f"exercises/{match.group(1)}" not in found or isinstance(literal.parent, nodes.reference):
            continue
        xref = addnodes.pending_xref(
            "", refdomain="std", reftype="doc", reftarget=f"/exercises/{match.group(1)}", refexplicit=True
        )
        literal.replace_self(xref)
        xref += literal


def copy_mathjax(app, exception):
    """Put the parts of MathJax the pages load under _static/mathjax of the built site."""
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        source = MATHJAX_ES5 / part
        if source.is_dir():
            shutil.copytree(source, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / part)


def setup(app):
    app.connect("doctree-read", link_exercise_mentions)
    app.connect("build-finished", copy_mathjax)
