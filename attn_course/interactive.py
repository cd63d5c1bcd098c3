"""Figures with sliders: move a setting and watch the attention picture change.

Three explorers, for the places where a learner would rather move a slider than
edit a number and rerun a cell:

* ``temperature_explorer(scores)`` (lesson 02): the softmax weights of one row
  of scores at temperature ``tau`` (``softmax(scores / tau)``), with their entropy;
* ``scale_explorer()`` (lesson 02): the weights of one query against random keys
  of feature size ``d``, with and without the ``1 / sqrt(d)`` scale;
* ``mask_explorer(n)`` (lessons 06, 11): a mask pattern of ``masks`` and its
  window, drawn with ``viz.plot_mask``, with the count of allowed pairs;
* ``head_explorer(weights)`` (lesson 07): one head's ``(L, S)`` weights at a time.

Each returns an :class:`Explorer`. Shown as a cell's result it displays its
controls (ipywidgets) and ONE figure as a PNG image; moving a control redraws
the image in place. The image stored in the notebook is the picture at the
starting values, so a notebook viewer without a kernel (or a test that
compares stored outputs) still sees it. Without ipywidgets only the picture is
shown, with a line saying what to install.

``explorer.draw(**values)`` returns the matplotlib Figure for any values,
without widgets: what the sliders do, callable from code.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import masks, viz
from .backend import to_numpy
from .softmax import softmax
from .validation import as_float_array, check_int, shape_of

__all__ = ["Explorer", "head_explorer", "mask_explorer", "scale_explorer", "temperature_explorer"]

INSTALL_HINT = "(no sliders: ipywidgets is not installed; `pip install -e .[lab]` adds them)"


@dataclass
class Explorer:
    """A figure drawn by ``draw(**values)``, and the controls that choose the values.

    controls: name -> a description of the control: ``("float", low, high, step)``,
    ``("log", low, high)`` (a slider over powers of ten), ``("int", low, high)`` or
    ``("choice", [options])``. start: the starting value of each control.
    """

    draw: Callable[..., Figure]
    controls: dict[str, tuple]
    start: dict[str, object]
    values: dict[str, object] = field(init=False)
    widgets: dict[str, object] = field(init=False, default_factory=dict)
    _handle: object = field(init=False, default=None)

    def __post_init__(self):
        self.values = dict(self.start)

    def png(self, **values) -> bytes:
        """The figure for ``values`` (the current ones where omitted) as PNG bytes."""
        figure = self.draw(**{**self.values, **values})
        buffer = io.BytesIO()
        FigureCanvasAgg(figure).print_png(buffer)
        return buffer.getvalue()

    def set(self, **values) -> None:
        """Change values (as a slider does) and redraw the displayed image."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; this explorer has {sorted(self.controls)}")
        self.values.update(values)
        if self._handle is not None:
            from IPython.display import Image

            self._handle.update(Image(data=self.png(), format="png"))

    def _ipython_display_(self):
        from IPython.display import Image, display

        try:
            import ipywidgets
        except ImportError:
            display(Image(data=self.png(), format="png"))
            print(INSTALL_HINT)
            return
        self.widgets = {name: _make_widget(ipywidgets, name, spec, self.values[name])
                        for name, spec in self.controls.items()}  # fmt: skip
        for name, widget in self.widgets.items():
            widget.observe(lambda change, name=name: self.set(**{name: change["new"]}), names="value")
        display(ipywidgets.HBox(list(self.widgets.values())))
        self._handle = display(Image(data=self.png(), format="png"), display_id=True)


def _make_widget(ipywidgets, name: str, spec: tuple, value):
    kind, *options = spec
    style = {"description_width": "initial"}
    if kind == "float":
        low, high, step = options
        return ipywidgets.FloatSlider(value=value, min=low, max=high, step=step, description=name, style=style,
                                      continuous_update=False)  # fmt: skip
    if kind == "log":
        low, high = options
        return ipywidgets.FloatLogSlider(value=value, base=10, min=math.log10(low), max=math.log10(high), step=0.05,
                                         description=name, style=style, continuous_update=False)  # fmt: skip
    if kind == "int":
        low, high = options
        return ipywidgets.IntSlider(value=value, min=low, max=high, description=name, style=style,
                                    continuous_update=False)  # fmt: skip
    return ipywidgets.Dropdown(options=options[0], value=value, description=name, style=style)


def _entropy(weights: np.ndarray) -> float:
    """Entropy in nats of one row of weights (0 log 0 = 0)."""
    positive = weights[weights > 0]
    return float(-(positive * np.log(positive)).sum())


# ------------------------------------------------------------------ lesson 02: temperature and scale


def temperature_explorer(scores, tau: float = 1.0) -> Explorer:
    """The weights ``softmax(scores / tau)`` of one row of scores, with a slider for ``tau`` (0.05 to 20).

    scores: (S,) one query's scores. The title gives the entropy of the weights:
    ``log S`` nats for uniform weights (large ``tau``), 0 for all weight on one key (small ``tau``).
    """
    scores = to_numpy(as_float_array("scores", scores)).astype(np.float64)
    if scores.ndim != 1 or scores.size < 2:
        raise ValueError(f"scores must be one row (S,) with S >= 2; got shape {shape_of(scores)}")
    if not tau > 0:
        raise ValueError(f"tau must be a positive temperature; got {tau}")

    def draw(tau):
        weights = softmax(scores / tau)  # (S,)
        figure = Figure(figsize=(6.4, 3.2), layout="constrained")
        ax = figure.add_subplot()
        ax.bar(np.arange(scores.size), weights, color=viz.ALLOWED_COLOUR)
        ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(scores.size))
        ax.set_xlabel("key position j")
        ax.set_ylabel("weight softmax(s / tau)_j")
        ax.set_title(
            f"tau = {tau:.3g}: entropy {_entropy(weights):.2f} nats (uniform: log S = {math.log(scores.size):.2f})"
        )
        return figure

    return Explorer(draw, {"tau": ("log", 0.05, 20.0)}, {"tau": float(tau)})


def scale_explorer(d: int = 64, num_keys: int = 12, seed: int = 0) -> Explorer:
    """One query's weights over ``num_keys`` random keys of feature size ``d``, unscaled and scaled by 1/sqrt(d).

    Queries and keys have standard normal entries, so the dot products have
    standard deviation ``sqrt(d)``: unscaled, the softmax puts nearly all weight
    on one key once ``d`` is large; scaled, the spread stays the same for every ``d``.
    A slider chooses ``d`` (1 to 1024, powers of two).
    """
    d = check_int("d", d, minimum=1)
    num_keys = check_int("num_keys", num_keys, minimum=2)
    choices = [2**p for p in range(11)]
    if d not in choices:
        raise ValueError(f"d must be a power of two from 1 to 1024 (the slider's values); got {d}")

    def draw(d):
        rng = np.random.default_rng(seed)
        q, k = rng.standard_normal(d), rng.standard_normal((num_keys, d))  # (d,), (num_keys, d)
        scores = k @ q  # (num_keys,)
        figure = Figure(figsize=(8, 3.0), layout="constrained")
        for column, (name, row) in enumerate(
            (("unscaled q·k", scores), ("scaled q·k / sqrt(d)", scores / math.sqrt(d)))
        ):
            weights = softmax(row)
            ax = figure.add_subplot(1, 2, column + 1)
            ax.bar(np.arange(num_keys), weights, color=viz.ALLOWED_COLOUR)
            ax.set_ylim(0, 1)
            ax.set_xlabel("key position j")
            ax.set_ylabel("weight")
            ax.set_title(f"{name}: largest weight {weights.max():.2f}")
        figure.suptitle(f"d = {d}: scores have standard deviation about sqrt(d) = {math.sqrt(d):.1f} unscaled")
        return figure

    return Explorer(draw, {"d": ("choice", choices)}, {"d": d})


# ------------------------------------------------------------------ lessons 06 and 11: mask patterns

PATTERNS = ("causal", "sliding window", "causal sliding window", "dilated window", "strided", "longformer")


def _pattern_mask(pattern: str, n: int, window: int) -> np.ndarray:
    if pattern == "causal":
        return masks.causal_mask(n)
    if pattern == "sliding window":
        return masks.sliding_window_mask(n, window)
    if pattern == "causal sliding window":
        return masks.sliding_window_mask(n, window, causal=True)
    if pattern == "dilated window":
        return masks.dilated_window_mask(n, window, dilation=2)
    if pattern == "strided":
        return masks.strided_mask(n, window + 1)
    return masks.longformer_mask(n, window, [0])


def mask_explorer(n: int = 16, pattern: str = "sliding window", window: int = 2) -> Explorer:
    """A mask pattern of ``masks`` on ``n`` positions, with a menu of patterns and a slider for the window.

    pattern: one of ``PATTERNS``; window: keys on each side for the window patterns
    (``w``), the stride minus one for ``strided``, and the window of ``longformer``
    (global token 0). The title counts the allowed pairs against the ``n^2`` of dense attention.
    """
    n = check_int("n", n, minimum=2)
    window = check_int("window", window, minimum=1)
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}; got {pattern!r}")

    def draw(pattern, window):
        mask = _pattern_mask(pattern, n, window)  # (n, n) boolean
        figure = Figure(figsize=(4.6, 4.6), layout="constrained")
        ax = figure.add_subplot()
        setting = "" if pattern == "causal" else f", w = {window}"
        viz.plot_mask(mask, ax=ax, title=f"{pattern}{setting}: {int(mask.sum())} of {n * n} pairs")
        return figure

    return Explorer(
        draw,
        {"pattern": ("choice", list(PATTERNS)), "window": ("int", 1, n - 1)},
        {"pattern": pattern, "window": min(window, n - 1)},
    )


# ------------------------------------------------------------------ lesson 07: heads


def head_explorer(weights, *, tokens=None, title: str = "head") -> Explorer:
    """One head's weights at a time from ``weights`` (h, L, S), with a slider over the heads.

    tokens: optional labels for the positions (``L == S``). The title gives the
    head's mean entropy per query, to compare heads by number, not only by eye.
    """
    weights = to_numpy(as_float_array("weights", weights)).astype(np.float64)
    if weights.ndim != 3:
        raise ValueError(f"weights must be (h, L, S): one (L, S) map per head; got shape {shape_of(weights)}")
    num_heads = weights.shape[0]

    def draw(head):
        figure = Figure(figsize=(4.8, 4.4), layout="constrained")
        ax = figure.add_subplot()
        entropy = np.mean([_entropy(row) for row in weights[head]])
        viz.plot_attention(weights[head], ax=ax, query_labels=tokens, key_labels=tokens, vmin=0.0,
                           vmax=float(weights.max()),
                           title=f"{title} {head} of {num_heads}: mean entropy {entropy:.2f} nats")  # fmt: skip
        return figure

    return Explorer(draw, {"head": ("int", 0, num_heads - 1)}, {"head": 0})
