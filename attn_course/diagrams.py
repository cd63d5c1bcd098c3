"""Structure diagrams: the shapes, flows and schedules that the lessons teach, drawn from their sizes.

Where ``viz`` plots numbers (weights, masks, layouts), this module draws
structure: boxes for arrays with their shape written inside, arrows for the data
that flows between them, and small boolean grids for masks and tiles. Every
shape in a picture is computed from the function's arguments, so a lesson and
its test call the same function and the picture cannot drift from the sizes it
names. The central formula that most of them take apart is

    out = softmax(Q K^T * scale) V,    Q (L, d), K (S, d), V (S, dv), out (L, dv).

One function per structure, each returning its matplotlib Figure:

* ``weighted_sum`` (lessons 01, 03): one query's output as the weighted sum of value rows;
* ``qkv_flow`` (lesson 03): x -> Q, K, V -> scores -> weights -> out, with every shape;
* ``head_split`` (lesson 07): ``(L, h*d_head) -> (h, L, d_head)``: reshape + transpose beside the wrong bare reshape;
* ``pre_post_ln`` (lesson 09): where the layer norms sit relative to the residual additions;
* ``encoder_decoder`` (lesson 16): self-, causal and cross-attention, and the mask each one uses;
* ``online_softmax_tiles`` (lesson 13): a block of score rows cut into key tiles, and what is kept per row;
* ``block_sparse_tiles`` (lesson 12): the tile plan (skipped, full, partial) of a mask, from ``layouts``;
* ``gpu_kernel_schedule`` (lesson 15): the fused kernel's grid, warps and key tiles, read from its CUDA source;
* ``kv_cache`` (lesson 19): decoding with a key/value cache, optionally a sliding window with sinks;
* ``backward_saved`` (lesson 18): what the forward saves and what the backward recomputes.

Nothing is random except the example numbers of ``weighted_sum``, which are
seeded. Bad sizes raise ``ValueError``/``TypeError`` naming the argument;
sizes too large to draw legibly are refused with the largest one that is.
Importing this module only imports matplotlib: it never picks a backend.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgb, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, Patch, Rectangle

from . import masks
from .kernels import KERNEL_TILE, kernel_source
from .layouts import FULL, PARTIAL, SKIP, block_cover, plan_from_cover
from .validation import as_array, check_bool, check_int
from .viz import ALLOWED_COLOUR, BLOCKED_COLOUR, COMPUTED_BLOCK_COLOUR, MISSED_PAIR_COLOUR, SKIPPED_BLOCK_COLOUR

__all__ = [
    "backward_saved",
    "block_sparse_tiles",
    "encoder_decoder",
    "gpu_kernel_schedule",
    "head_split",
    "kv_cache",
    "online_softmax_tiles",
    "pre_post_ln",
    "qkv_flow",
    "weighted_sum",
]

# One colour per role, light enough for black text; the same role has the same colour in every diagram.
ROLE_COLOURS = {
    "input": "#e6e6e6",
    "param": "#dcd0ec",
    "query": "#c6dbef",
    "key": "#fdd9b5",
    "value": "#c7e9c0",
    "score": "#fff2b3",
    "output": "#b2e0dc",
    "norm": "#ffe08a",
    "saved": "#f6c5c5",
}
EDGE = "#404040"
ARROW = "#303030"
HIGHLIGHT = MISSED_PAIR_COLOUR  # red: the one thing a diagram asks you to look at
HEAD_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
FONT = 9
CHAR_WIDTH = 0.064  # inches per character of SMALL text, about
SMALL = 8
TITLE_ROOM = 0.5  # inches above the drawing for the title
WIDTH = 10.0  # inches: the lessons' figure width


# --------------------------------------------------------------------------- argument checks


def _size(name: str, value, maximum: int | None = None, minimum: int = 1) -> int:
    """A size argument: an integer >= ``minimum``, and at most ``maximum`` where more would not be legible."""
    value = check_int(name, value, minimum=minimum)
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} is too large to draw legibly; this diagram draws {name} <= {maximum}")
    return value


def _lengths(name: str, lengths, batch: int, longest: int, longest_name: str) -> list[int]:
    """Sequence lengths, one per batch element, each in ``1..longest``."""
    values = [check_int(f"{name}[{b}]", n, minimum=1) for b, n in enumerate(lengths)]
    if len(values) != batch:
        raise ValueError(f"{name} must hold one length per batch element (B={batch}); got {len(values)}")
    too_long = [n for n in values if n > longest]
    if too_long:
        raise ValueError(f"{name} must be at most {longest_name}={longest}; got {values}")
    return values


# --------------------------------------------------------------------------- drawing helpers


class Box(NamedTuple):
    """A rectangle in drawing units (inches), lower-left corner ``(x, y)``."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w, self.y + self.h / 2)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


def _canvas(width: float, height: float, title: str):
    """A figure whose drawing area is ``width x height`` inches, one data unit per inch, titled above."""
    fig = plt.figure(figsize=(width, height + TITLE_ROOM))
    ax = fig.add_axes((0.0, 0.0, 1.0, height / (height + TITLE_ROOM)))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    fig.suptitle(title, y=1 - 0.12 / (height + TITLE_ROOM), va="top", fontsize=12, fontweight="bold")
    return fig, ax


def _box(ax, box: Box, name: str, *lines: str, colour: str = ROLE_COLOURS["input"], edge: str = EDGE, lw=1.2):
    """A rounded box holding a bold name and lines under it (formula, shape)."""
    ax.add_patch(Rectangle((box.x, box.y), box.w, box.h, facecolor=colour, edgecolor=edge, linewidth=lw, zorder=2))
    text = [name]
    for line in lines:  # a shape too wide for the box goes on two lines: "(L, d_model)" / "= (6, 8)"
        if " = " in line and len(line) * CHAR_WIDTH > box.w - 0.12:
            symbols, numbers = line.split(" = ", 1)
            text += [symbols, f"= {numbers}"]
        else:
            text.append(line)
    step = 0.17
    top = box.y + box.h / 2 + step * (len(text) - 1) / 2
    for n, line in enumerate(text):
        ax.text(
            box.x + box.w / 2,
            top - n * step,
            line,
            ha="center",
            va="center",
            fontsize=FONT if n == 0 else SMALL,
            fontweight="bold" if n == 0 else "normal",
            zorder=3,
        )
    return box


def _arrow(ax, start, end, label: str | None = None, *, colour: str = ARROW, side: str = "above", lw: float = 1.3):
    """An arrow from ``start`` to ``end``, optionally labelled beside its middle."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=colour, linewidth=lw, zorder=4))
    if label:
        mid_x, mid_y = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        offsets = {"above": (0, 0.1, "center", "bottom"), "below": (0, -0.1, "center", "top")}
        offsets |= {"left": (-0.08, 0, "right", "center"), "right": (0.08, 0, "left", "center")}
        dx, dy, ha, va = offsets[side]
        ax.text(mid_x + dx, mid_y + dy, label, ha=ha, va=va, fontsize=SMALL, color=colour, zorder=5)


def _path(ax, points, label: str | None = None, *, colour: str = ARROW, label_at: int = 0, side="above", lw=1.3):
    """A polyline through ``points`` ending in an arrow head; ``label`` beside segment ``label_at``."""
    xs, ys = zip(*points[:-1], strict=True)
    ax.add_line(Line2D(xs, ys, color=colour, linewidth=lw, zorder=4, solid_capstyle="butt"))
    ax.add_patch(
        FancyArrowPatch(
            points[-2], points[-1], arrowstyle="-|>", mutation_scale=12, color=colour, linewidth=lw, zorder=4
        )
    )
    if label:
        (x0, y0), (x1, y1) = points[label_at], points[label_at + 1]
        offsets = {"above": (0, 0.08, "center", "bottom"), "below": (0, -0.08, "center", "top")}
        offsets |= {"left": (-0.08, 0, "right", "center"), "right": (0.08, 0, "left", "center")}
        dx, dy, ha, va = offsets[side]
        ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy, label, ha=ha, va=va, fontsize=SMALL, color=colour, zorder=5)


def _cells(ax, x: float, top: float, colours, cell: float, texts=None, edge: str = "white", lw: float = 0.8):
    """A grid of square cells, row 0 at the top; ``colours[r][c]`` fills cell ``(r, c)``."""
    for row, line in enumerate(colours):
        for col, colour in enumerate(line):
            left, bottom = x + col * cell, top - (row + 1) * cell
            ax.add_patch(
                Rectangle((left, bottom), cell, cell, facecolor=colour, edgecolor=edge, linewidth=lw, zorder=2)
            )
            if texts is not None and texts[row][col]:
                dark = sum(to_rgb(colour)) < 1.5
                ax.text(
                    left + cell / 2,
                    bottom + cell / 2,
                    texts[row][col],
                    ha="center",
                    va="center",
                    fontsize=7 if cell < 0.35 else SMALL,
                    color="white" if dark else "black",
                    zorder=3,
                )


def _frame(ax, x: float, y: float, w: float, h: float, colour: str = EDGE, lw: float = 1.2, style: str = "-"):
    ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=lw, linestyle=style, zorder=6))


def _legend(ax, entries, loc: str = "lower right", ncol: int = 1, anchor=None):
    """A legend of ``(label, face colour[, edge])`` entries or ready Patches; face ``None`` draws a line in ``edge``."""
    handles = []
    for entry in entries:
        if isinstance(entry, Patch):  # a ready-made entry, e.g. hatched
            handles.append(entry)
            continue
        label, face, *rest = entry
        edge = rest[0] if rest else EDGE
        if face is None:
            handles.append(Line2D([], [], color=edge, linewidth=2, label=label))
        else:
            handles.append(Patch(facecolor=face, edgecolor=edge, label=label))
    extra = {"bbox_to_anchor": anchor, "bbox_transform": ax.transData} if anchor is not None else {}
    ax.legend(handles=handles, loc=loc, ncol=ncol, fontsize=SMALL, frameon=True, framealpha=1.0, **extra)


def _note(ax, x: float, y: float, text: str, **options):
    defaults = {"ha": "left", "va": "center", "fontsize": SMALL, "color": "#202020"}
    ax.text(x, y, text, **(defaults | options))


def _shape(names: str, values) -> str:
    """``"(L, S) = (6, 8)"``: the symbolic shape and its numbers."""
    numbers = ", ".join(str(v) for v in values) + ("," if len(values) == 1 else "")
    return f"({names}) = ({numbers})"


def _number(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` decimals, never ``-0.00``."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _tint(colour: str, amount: float) -> tuple[float, float, float]:
    """``colour`` mixed with white: ``amount`` 0 keeps it, 1 gives white."""
    return tuple((1 - amount) * c + amount for c in to_rgb(colour))


# --------------------------------------------------------------------------- 1. weighted sum (lessons 01, 03)


def weighted_sum(S: int = 5, dv: int = 4, *, weights=None, seed: int = 0) -> Figure:
    """One query's output as the weighted sum of the value rows: ``out = sum_j w_j v_j``.

    Left, the query's weights over the ``S`` keys as bars, one beside each value
    row ``v_j`` of ``V (S, dv)``; middle, each row scaled by its weight; right,
    the output row ``out (1, dv)``, their sum. ``weights``: ``S`` non-negative
    numbers that sum to 1 (default: a softmax of seeded random scores); the
    values are seeded random numbers, written in the cells.
    """
    S = _size("S", S, maximum=12)
    dv = _size("dv", dv, maximum=8)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    values = np.round(rng.standard_normal((S, dv)), 1)  # (S, dv)
    if weights is None:
        scores = 1.5 * rng.standard_normal(S)
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
    else:
        weights = np.asarray(as_array("weights", weights), dtype=np.float64)
        if weights.shape != (S,):
            raise ValueError(f"weights must have shape (S,) = ({S},); got shape {weights.shape}")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or abs(weights.sum() - 1) > 1e-6:
            raise ValueError(f"weights must be non-negative and sum to 1 (a softmax row); got sum {weights.sum():.6g}")
    scaled = weights[:, None] * values  # (S, dv)
    out = scaled.sum(axis=0)  # (dv,)

    cell = min(0.4, 1.6 / dv, 3.6 / S)
    height = S * cell + 2.0
    fig, ax = _canvas(WIDTH, height, "Attention output = weighted sum of the value rows")
    top = height - 0.75
    limit = max(np.abs(values).max(), 1e-9)
    cmap = plt.get_cmap("coolwarm")

    def colours(matrix):
        return [[cmap(0.5 + 0.5 * value / limit) for value in row] for row in np.atleast_2d(matrix)]

    def numbers(matrix, decimals=2):
        return [[_number(value, decimals) if cell >= 0.3 else "" for value in row] for row in np.atleast_2d(matrix)]

    bar_x, bar_len = 0.7, 1.2
    v_x = 2.6
    block = dv * cell
    scaled_x = v_x + block + 1.1
    out_x = scaled_x + block + 1.1
    ax.text(
        bar_x + bar_len / 2, top + 0.3, f"weights w of one query\n{_shape('1, S', (1, S))}", ha="center", fontsize=FONT
    )
    ax.text(v_x + block / 2, top + 0.3, f"V: value rows v_j\n{_shape('S, dv', (S, dv))}", ha="center", fontsize=FONT)
    ax.text(scaled_x + block / 2, top + 0.3, f"w_j v_j\n{_shape('S, dv', (S, dv))}", ha="center", fontsize=FONT)
    for j, weight in enumerate(weights):
        y = top - (j + 0.5) * cell
        _note(ax, 0.15, y, f"j={j}")
        length = bar_len * weight / weights.max() if weights.max() > 0 else 0.0
        ax.add_patch(
            Rectangle((bar_x, y - 0.38 * cell), length, 0.76 * cell, facecolor=ROLE_COLOURS["score"], edgecolor=EDGE)
        )
        _note(ax, bar_x + length + 0.05, y, f"{weight:.2f}")
    _cells(ax, v_x, top, colours(values), cell, numbers(values, 1))
    _cells(ax, scaled_x, top, colours(scaled), cell, numbers(scaled))
    middle = top - S * cell / 2
    _arrow(ax, (v_x + block + 0.1, middle), (scaled_x - 0.1, middle), "scale row j by w_j")
    out_top = middle + cell / 2
    ax.text(
        out_x + block / 2, out_top + 0.1, f"out\n{_shape('1, dv', (1, dv))}", ha="center", va="bottom", fontsize=FONT
    )
    _arrow(ax, (scaled_x + block + 0.1, middle), (out_x - 0.1, middle), "sum over j")
    _cells(ax, out_x, out_top, colours(out), cell, numbers(out))
    _frame(ax, out_x, out_top - cell, block, cell, colour=EDGE)
    _note(
        ax,
        0.15,
        0.45,
        "out = Σ_j w_j v_j: the weights (a softmax row, summing to 1) mix the value rows. "
        "Colour = value: blue < 0 < red, one scale for all three arrays.",
    )
    return fig


# --------------------------------------------------------------------------- 2. the Q/K/V flow (lesson 03)


def qkv_flow(L: int = 6, S: int = 6, d_model: int = 8, d: int = 4, dv: int = 4) -> Figure:
    """The data flow of scaled dot-product attention with the shape of every array.

    ``x (L, d_model)`` is projected by ``W_q``, ``W_k``, ``W_v`` to ``Q (L, d)``,
    ``K (S, d)``, ``V (S, dv)``; ``scores = Q K^T / sqrt(d)`` is ``(L, S)``, the
    softmax over each row gives ``weights (L, S)`` and ``weights V`` is
    ``out (L, dv)``. With ``S != L`` the keys and values come from a second
    sequence (``memory (S, d_model)``, cross-attention).
    """
    L = _size("L", L)
    S = _size("S", S)
    d_model = _size("d_model", d_model)
    d = _size("d", d)
    dv = _size("dv", dv)
    height = 5.0
    fig, ax = _canvas(WIDTH, height, "Scaled dot-product attention: the Q/K/V data flow and every shape")
    w, h = 1.3, 0.95
    rows = {"q": 4.15, "k": 2.7, "v": 1.25}  # centre heights
    cols = [0.15, 1.9, 3.65, 5.4, 7.15, 8.6]

    def at(col: int, row: str, width: float = w) -> Box:
        return Box(cols[col], rows[row] - h / 2, width, h)

    if S == L:
        x_box = _box(
            ax,
            Box(cols[0], rows["v"] - 0.5, w, rows["q"] - rows["v"] + 1.0),
            "x",
            "input rows",
            _shape("L, d_model", (L, d_model)),
        )
        sources = {"q": x_box, "k": x_box, "v": x_box}
        ax.text(cols[0] + w / 2, rows["v"] - 0.62, "self-attention: S = L", ha="center", va="top", fontsize=SMALL)
    else:
        x_box = _box(ax, at(0, "q"), "x", "queries' rows", _shape("L, d_model", (L, d_model)))
        memory = Box(cols[0], rows["v"] - h / 2, w, rows["k"] - rows["v"] + h)
        memory = _box(ax, memory, "memory", "keys' rows", _shape("S, d_model", (S, d_model)))
        sources = {"q": x_box, "k": memory, "v": memory}
    projections = {"q": ("W_q", d, "Q", "L", L, "query"), "k": ("W_k", d, "K", "S", S, "key")}
    projections["v"] = ("W_v", dv, "V", "S", S, "value")
    made = {}
    for row, (weight, width, name, n_name, n, role) in projections.items():
        w_box = _box(
            ax,
            at(1, row),
            weight,
            _shape(f"d_model, {'dv' if row == 'v' else 'd'}", (d_model, width)),
            colour=ROLE_COLOURS["param"],
        )
        src = sources[row]
        _arrow(ax, (src.x + src.w, rows[row]), w_box.left)
        made[row] = _box(
            ax,
            at(2, row),
            name,
            f"{'x' if row == 'q' or S == L else 'memory'} {weight}",
            _shape(f"{n_name}, {'dv' if row == 'v' else 'd'}", (n, width)),
            colour=ROLE_COLOURS[role],
        )
        _arrow(ax, w_box.right, made[row].left)
    k_t = _box(ax, at(3, "k"), "K^T", "transpose of K", _shape("d, S", (d, S)), colour=ROLE_COLOURS["key"])
    _arrow(ax, made["k"].right, k_t.left)
    scores = _box(ax, at(3, "q"), "scores", "Q K^T / √d", _shape("L, S", (L, S)), colour=ROLE_COLOURS["score"])
    _arrow(ax, made["q"].right, scores.left)
    _arrow(ax, k_t.top, scores.bottom)
    weights = _box(
        ax, at(4, "q"), "weights", "softmax of each row", _shape("L, S", (L, S)), colour=ROLE_COLOURS["score"]
    )
    _arrow(ax, scores.right, weights.left)
    out = _box(ax, at(5, "k"), "out", "weights V", _shape("L, dv", (L, dv)), colour=ROLE_COLOURS["output"])
    out_x = out.x + out.w / 2
    _path(ax, [weights.right, (out_x, rows["q"]), out.top])
    _path(ax, [made["v"].right, (out_x, rows["v"]), out.bottom], "V", label_at=0)
    _note(ax, 5.4, 2.0, f"scale = 1/√d = {1 / math.sqrt(d):.3f}\neach weights row sums to 1", va="top")
    _legend(
        ax,
        [
            ("input", ROLE_COLOURS["input"]),
            ("learned weights", ROLE_COLOURS["param"]),
            ("queries", ROLE_COLOURS["query"]),
            ("keys", ROLE_COLOURS["key"]),
            ("values", ROLE_COLOURS["value"]),
            ("scores, weights", ROLE_COLOURS["score"]),
            ("output", ROLE_COLOURS["output"]),
        ],
        loc="lower left",
        ncol=7,
        anchor=(0.1, 0.0),
    )
    return fig


# --------------------------------------------------------------------------- 3. head split and merge (lesson 07)


def head_split(L: int = 4, num_heads: int = 3, head_dim: int = 2) -> Figure:
    """Splitting ``(L, h*d_head)`` into heads ``(h, L, d_head)``: reshape + transpose beside the wrong bare reshape.

    Each cell of ``x (L, h*dh)`` is coloured by the head its column belongs to
    (hue) and shaded by its position (the number written in it). The right
    split, ``reshape(L, h, dh).transpose(1, 0, 2)``, gives each head one colour
    and every position; a bare ``reshape(h, L, dh)`` gives head k a run of the
    flat array: rows of other positions and columns of other heads (red frames).
    Merging is the inverse: ``transpose(1, 0, 2)`` then ``reshape(L, h*dh)``.
    """
    L = _size("L", L, maximum=12)
    num_heads = _size("num_heads", num_heads, maximum=len(HEAD_COLOURS))
    head_dim = _size("head_dim", head_dim)
    width_all = num_heads * head_dim
    if width_all > 16:
        raise ValueError(f"num_heads * head_dim = {width_all} is too large to draw legibly; this diagram draws <= 16")
    h, dh = num_heads, head_dim
    flat = np.arange(L * width_all).reshape(L, width_all)  # (L, h*dh): the index of every cell
    position, head = flat // width_all, (flat % width_all) // dh
    right = flat.reshape(L, h, dh).transpose(1, 0, 2)  # (h, L, dh)
    wrong = flat.reshape(h, L, dh)  # (h, L, dh): positions mixed into heads

    cell = min(0.36, 3.4 / width_all, 1.7 / L)
    panel_gap = 0.3
    height = 2 * L * cell + 2.75
    fig, ax = _canvas(WIDTH, height, "Splitting the model dimension into heads, and merging them back")

    def colour(index: int):
        shade = 0.65 * position.flat[index] / max(L - 1, 1)  # later positions lighter
        return _tint(HEAD_COLOURS[head.flat[index]], 0.15 + shade)

    def draw(x: float, top: float, indices: np.ndarray, panel_head: int | None = None):
        _cells(
            ax,
            x,
            top,
            [[colour(i) for i in row] for row in indices],
            cell,
            [[str(position.flat[i]) for i in row] for row in indices],
            edge="white",
        )
        if panel_head is None:
            return
        for (row, col), index in np.ndenumerate(indices):
            if head.flat[index] != panel_head or position.flat[index] != row:
                _frame(
                    ax,
                    x + col * cell + 0.02,
                    top - (row + 1) * cell + 0.02,
                    cell - 0.04,
                    cell - 0.04,
                    HIGHLIGHT,
                    lw=1.6,
                )

    in_x, in_w = 0.3, width_all * cell
    upper_top = height - 0.75
    lower_top = upper_top - L * cell - 1.05
    in_top = (upper_top + lower_top - L * cell) / 2 + L * cell / 2
    ax.text(
        in_x + in_w / 2,
        in_top + 0.12,
        f"x\n{_shape('L, h·d_head', (L, width_all))}",
        ha="center",
        va="bottom",
        fontsize=FONT,
    )
    draw(in_x, in_top, flat)
    for k in range(h):
        ax.text(in_x + (k + 0.5) * dh * cell, in_top - L * cell - 0.08, f"h{k}", ha="center", va="top", fontsize=7)

    panels_x = in_x + in_w + 1.5
    titles = {
        upper_top: (f"right: reshape to (L, h, d_head) = ({L}, {h}, {dh}), then transpose(1, 0, 2)", right, "#1a7f37"),
        lower_top: ("WRONG: bare reshape to (h, L, d_head), no transpose", wrong, HIGHLIGHT),
    }
    for top, (title, heads, title_colour) in titles.items():
        ax.text(panels_x, top + 0.38, title, fontsize=FONT, color=title_colour, fontweight="bold", va="bottom")
        ax.text(panels_x, top + 0.08, f"heads {_shape('h, L, d_head', (h, L, dh))}", fontsize=SMALL, va="bottom")
        for k in range(h):
            x = panels_x + k * (dh * cell + panel_gap)
            draw(x, top, heads[k], panel_head=k if heads is wrong else None)
            ax.text(x + dh * cell / 2, top - L * cell - 0.06, f"head {k}", ha="center", va="top", fontsize=SMALL)
        _arrow(ax, (in_x + in_w + 0.15, in_top - L * cell / 2), (panels_x - 0.15, top - L * cell / 2))
    merge_x = panels_x + h * (dh * cell + panel_gap) + 0.1
    _note(
        ax,
        merge_x,
        upper_top - L * cell / 2,
        f"merge: transpose(1, 0, 2),\nthen reshape to {_shape('L, h·d_head', (L, width_all))}:"
        "\nx comes back cell for cell",
    )
    _note(
        ax,
        merge_x,
        lower_top - L * cell / 2,
        "head k gets a run of the flat array:\nrows of other positions and\ncolumns of other heads (red)",
        color=HIGHLIGHT,
    )
    _note(
        ax,
        0.3,
        0.3,
        "Colour = the head a column of x belongs to; shade and number = the position (row of x) it came from. "
        "Red frame = a cell that is not (this head, this row).",
    )
    return fig


# --------------------------------------------------------------------------- 4. pre-LN and post-LN (lesson 09)


def pre_post_ln(L: int = 6, d_model: int = 8, d_ff: int = 32, num_heads: int = 2) -> Figure:
    """The post-LN block (the original Transformer) beside the pre-LN block (lesson 09, GPT-2 and after).

    Post-LN: ``x = LN(x + MHA(x))``, ``x = LN(x + FFN(x))``: a layer norm after
    each residual addition. Pre-LN: ``x = x + MHA(LN(x))``, ``x = x + FFN(LN(x))``:
    the norm sits inside each branch, so the residual path from input to output
    passes through additions only (and a final LayerNorm follows the last block).
    Every arrow carries ``(L, d_model)``; the feed-forward widens to ``d_ff``.
    """
    L = _size("L", L)
    d_model = _size("d_model", d_model)
    d_ff = _size("d_ff", d_ff)
    num_heads = _size("num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(f"num_heads must divide d_model; got d_model={d_model}, num_heads={num_heads}")
    step, box_h, box_w = 0.66, 0.44, 2.9
    height = 8 * step + 1.4
    fig, ax = _canvas(WIDTH, height, "Where the layer norms sit: post-LN beside pre-LN")
    stream = _shape("L, d_model", (L, d_model))
    attention = ("multi-head attention", f"h = {num_heads} heads of {d_model // num_heads}", "query")
    ffn = ("feed-forward", f"({L}, {d_model}) → ({L}, {d_ff}) → ({L}, {d_model})", "value")
    norm = ("LayerNorm", "over d_model", "norm")
    residual_colour = ALLOWED_COLOUR
    layouts = {
        "post-LN (original Transformer)": (1.9, ["in", attention, "+", norm, ffn, "+", norm, "out"]),
        "pre-LN (this course's TransformerBlock)": (7.0, ["in", norm, attention, "+", norm, ffn, "+", "out"]),
    }
    formulas = {
        "post-LN (original Transformer)": "x = LN(x + MHA(x));  x = LN(x + FFN(x))",
        "pre-LN (this course's TransformerBlock)": "x = x + MHA(LN(x));  x = x + FFN(LN(x))",
    }
    for title, (centre, items) in layouts.items():
        top = height - 0.55
        ax.text(centre, top + 0.05, title, ha="center", va="bottom", fontsize=FONT + 1, fontweight="bold")
        previous = branch_from = None
        for n, item in enumerate(items):
            y = top - (n + 0.5) * step
            if item == "+":
                ax.add_patch(Circle((centre, y), 0.16, facecolor="white", edgecolor=EDGE, linewidth=1.3, zorder=3))
                ax.text(centre, y, "+", ha="center", va="center", fontsize=11, zorder=4)
                node_top, node_bottom = (centre, y + 0.16), (centre, y - 0.16)
                # the residual: from the branch point down the left side into the addition
                bx, by = branch_from
                side = centre - box_w / 2 - 0.35
                _path(ax, [(bx, by), (side, by), (side, y), (centre - 0.16, y)], colour=residual_colour, lw=1.6)
            else:
                if item in ("in", "out"):
                    label = ("x (block input)" if item == "in" else "block output", stream, "input")
                else:
                    label = item
                name, detail, role = label
                box = _box(
                    ax, Box(centre - box_w / 2, y - box_h / 2, box_w, box_h), name, detail, colour=ROLE_COLOURS[role]
                )
                node_top, node_bottom = box.top, box.bottom
            if previous is not None:
                _arrow(ax, previous, node_top)
            if n in (1, 4):  # each sublayer's branch starts here: the residual leaves the stream above this node
                branch_from = (centre, (previous[1] + node_top[1]) / 2)
                ax.add_patch(Circle(branch_from, 0.05, color=residual_colour, zorder=5))
            previous = node_bottom
        _note(ax, centre, 0.62, formulas[title], ha="center", fontsize=FONT)
    _note(ax, 7.0, 0.3, "…and one final LayerNorm after the last block", ha="center", color="#555555")
    _note(ax, 1.9, 0.3, "every arrow carries " + stream, ha="center", color="#555555")
    _legend(
        ax,
        [
            ("LayerNorm", ROLE_COLOURS["norm"]),
            ("attention", ROLE_COLOURS["query"]),
            ("feed-forward", ROLE_COLOURS["value"]),
            ("residual path", None, residual_colour),
        ],
        loc="center",
        anchor=(4.45, height / 2),
    )
    return fig


# --------------------------------------------------------------------------- 5. encoder-decoder (lesson 16)


def encoder_decoder(  # noqa: PLR0915 (one drawing, step by step)
    B: int = 2,
    S: int = 6,
    T: int = 5,
    d_model: int = 8,
    *,
    source_lengths=None,
    target_lengths=None,
    example: int | None = None,
) -> Figure:
    """The encoder-decoder and the mask each of its three attentions uses.

    Encoder self-attention: every source position reads every real source
    position (source padding mask ``(B, 1, S)``). Decoder self-attention: target
    position i reads real targets j <= i (causal AND target padding,
    ``(B, T, T)``). Cross-attention: decoder queries read the encoder's keys and
    values, again only real source positions (``(B, T, S)``, the source padding
    broadcast over the T query rows). The thumbnails are the package's masks
    (``masks.padding_mask``, ``masks.causal_mask``) for batch element ``example``
    (default: the last); lengths default to ``S, S-2, ...`` and ``T, T-1, ...``.
    """
    B = _size("B", B)
    S = _size("S", S, maximum=16)
    T = _size("T", T, maximum=16)
    d_model = _size("d_model", d_model)
    if source_lengths is None:
        source_lengths = [max(1, S - 2 * b) for b in range(B)]
    if target_lengths is None:
        target_lengths = [max(1, T - b) for b in range(B)]
    source_lengths = _lengths("source_lengths", source_lengths, B, S, "S")
    target_lengths = _lengths("target_lengths", target_lengths, B, T, "T")
    example = B - 1 if example is None else check_int("example", example, minimum=0)
    if example >= B:
        raise ValueError(f"example must be a batch index below B={B}; got {example}")
    source_pad = np.asarray(masks.padding_mask(np.asarray(source_lengths), S))[:, 0, 0, :]  # (B, S)
    target_pad = np.asarray(masks.padding_mask(np.asarray(target_lengths), T))[:, 0, 0, :]  # (B, T)
    causal = np.asarray(masks.causal_mask(T))  # (T, T)
    encoder_mask = source_pad[example][None, :]  # (1, S): one row for every query
    decoder_mask = causal & target_pad[example][None, :]  # (T, T)
    cross_mask = np.broadcast_to(source_pad[example][None, :], (T, S))  # (T, S)

    height = 6.3
    fig, ax = _canvas(WIDTH, height, "Encoder-decoder attention: which mask each attention uses")
    cell = min(0.22, 1.6 / max(S, T))
    box_w, box_h = 2.2, 0.85

    def thumbnail(x: float, centre_y: float, mask: np.ndarray, label: str, rows_name: str, cols_name: str):
        rows, cols = mask.shape
        top = centre_y + rows * cell / 2
        _cells(ax, x, top, [[ALLOWED_COLOUR if m else BLOCKED_COLOUR for m in row] for row in mask], cell, lw=0.6)
        _frame(ax, x, top - rows * cell, cols * cell, rows * cell, colour="#808080", lw=0.8)
        ax.text(x, top + 0.08, label, fontsize=SMALL, va="bottom")
        ax.text(x + cols * cell / 2, top - rows * cell - 0.05, cols_name, fontsize=7, ha="center", va="top")
        if rows_name:
            ax.text(x - 0.05, centre_y, rows_name, fontsize=7, ha="right", va="center", rotation=90)

    # encoder column
    enc_x, dec_x = 0.3, 5.35
    tokens_y, self_y, cross_y, out_y = 5.0, 3.45, 1.55, 0.35
    src = _box(ax, Box(enc_x, tokens_y, box_w, 0.7), "source tokens", _shape("B, S", (B, S)))
    enc = _box(
        ax,
        Box(enc_x, self_y - box_h / 2, box_w, box_h),
        "encoder self-attention",
        "each source position",
        "reads the real source",
        colour=ROLE_COLOURS["query"],
    )
    memory = _box(
        ax,
        Box(enc_x, cross_y - box_h / 2, box_w, box_h),
        "memory (encoder output)",
        _shape("B, S, d_model", (B, S, d_model)),
        colour=ROLE_COLOURS["value"],
    )
    _arrow(ax, src.bottom, enc.top)
    _arrow(ax, enc.bottom, memory.top, "\N{MULTIPLICATION SIGN} n_layers encoder layers", side="right")
    thumbnail(
        enc_x + box_w + 0.35, self_y, encoder_mask, f"source padding\n{_shape('B, 1, S', (B, 1, S))}", "", "key j"
    )
    # decoder column
    tgt = _box(ax, Box(dec_x, tokens_y, box_w, 0.7), "target tokens (shifted)", _shape("B, T", (B, T)))
    dec = _box(
        ax,
        Box(dec_x, self_y - box_h / 2, box_w, box_h),
        "causal self-attention",
        "target i reads real",
        "targets j <= i",
        colour=ROLE_COLOURS["query"],
    )
    cross = _box(
        ax,
        Box(dec_x, cross_y - box_h / 2, box_w, box_h),
        "cross-attention",
        "decoder queries read",
        "encoder keys, values",
        colour=ROLE_COLOURS["key"],
    )
    out = _box(
        ax,
        Box(dec_x, out_y, box_w, 0.55),
        "decoder output",
        _shape("B, T, d_model", (B, T, d_model)),
        colour=ROLE_COLOURS["output"],
    )
    _arrow(ax, tgt.bottom, dec.top)
    _arrow(ax, dec.bottom, cross.top, f"queries {_shape('B, T', (B, T))}", side="right")
    _arrow(ax, cross.bottom, out.top)
    _arrow(ax, memory.right, cross.left, "keys, values", side="above")
    thumbnail(
        dec_x + box_w + 0.45,
        self_y,
        decoder_mask,
        f"causal & target padding\n{_shape('B, T, T', (B, T, T))}",
        "query i",
        "key j",
    )
    thumbnail(
        dec_x + box_w + 0.45,
        cross_y,
        cross_mask,
        f"source padding, every row\n{_shape('B, T, S', (B, T, S))}",
        "query i",
        "key j",
    )
    _note(
        ax,
        0.3,
        0.95,
        f"Masks drawn for batch element b = {example}: source length\n{source_lengths[example]} of S = {S}, "
        f"target length {target_lengths[example]} of T = {T}.\n"
        "The package stores them with a head axis, (B, 1, 1, S) and\n(B, 1, T, T), broadcast over heads and queries.",
        va="top",
    )
    _legend(
        ax, [("may attend", ALLOWED_COLOUR), ("blocked", BLOCKED_COLOUR)], loc="lower right", anchor=(WIDTH - 0.1, 0.0)
    )
    return fig


# --------------------------------------------------------------------------- 6. online softmax tiles (lesson 13)


def online_softmax_tiles(R: int = 4, S: int = 12, key_tile: int = 4, dv: int = 3, *, current: int = 1) -> Figure:
    """The online-softmax tile loop: one block of ``R`` query rows visits its scores one key tile at a time.

    The ``(R, S)`` scores are cut into tiles of ``key_tile`` keys (the last may
    be narrower); tiles before ``current`` are done, ``current`` is being
    read, the rest are to come. Per row the loop keeps the running max
    ``m (R, 1)``, the running sum ``l (R, 1)`` (drawn as a script l, as lesson 13
    writes it) and the running output ``a (R, dv)``, and updates them with the
    rule written under the picture.
    """
    R = _size("R", R, maximum=12)
    S = _size("S", S, maximum=48)
    key_tile = _size("key_tile", key_tile)
    dv = _size("dv", dv, maximum=8)
    num_tiles = math.ceil(S / key_tile)
    current = check_int("current", current, minimum=0)
    if current >= num_tiles:
        raise ValueError(f"current must be a tile index below ceil(S / key_tile) = {num_tiles}; got {current}")
    cell = min(0.34, 5.2 / S, 1.5 / R)
    height = R * cell + 3.5
    fig, ax = _canvas(WIDTH, height, "The online softmax: one block of query rows, key tile by key tile")
    x0, top = 0.55, height - 0.95
    states = {"done": "#d9d9d9", "now": ROLE_COLOURS["score"], "next": "white"}
    fills = []
    for _row in range(R):
        line = []
        for j in range(S):
            tile = j // key_tile
            line.append(states["done" if tile < current else "now" if tile == current else "next"])
        fills.append(line)
    _cells(ax, x0, top, fills, cell, edge="#b0b0b0", lw=0.5)
    ax.text(x0, top + 0.1, f"scores s of one query block {_shape('R, S', (R, S))}", fontsize=FONT, va="bottom")
    for i in range(R):
        ax.text(x0 - 0.06, top - (i + 0.5) * cell, f"i={i}", fontsize=7, ha="right", va="center")
    for t in range(num_tiles):
        first, last = t * key_tile, min(S, (t + 1) * key_tile)
        colour = HIGHLIGHT if t == current else EDGE
        _frame(
            ax,
            x0 + first * cell,
            top - R * cell,
            (last - first) * cell,
            R * cell,
            colour,
            lw=2.0 if t == current else 1.2,
        )
        ax.text(x0 + (first + last) / 2 * cell, top - R * cell - 0.08, f"tile {t}", fontsize=7, ha="center", va="top")
    first, last = current * key_tile, min(S, (current + 1) * key_tile)
    grid_bottom = top - R * cell
    _arrow(
        ax,
        (x0, grid_bottom - 0.4),
        (x0 + S * cell, grid_bottom - 0.4),
        "keys are read one tile at a time",
        side="below",
    )
    ax.text(
        x0 + (first + last) / 2 * cell,
        top + 0.38,
        f"tile {current}: s_t {_shape('R, key_tile', (R, last - first))}",
        fontsize=SMALL,
        ha="center",
        va="bottom",
        color=HIGHLIGHT,
    )
    # the running state per row
    state_x = x0 + S * cell + 0.9
    state_cell = min(cell, 0.3)
    kept = [
        ("m", "running max", 1, "(R, 1)", ROLE_COLOURS["score"]),
        ("\N{SCRIPT SMALL L}", "running sum", 1, "(R, 1)", ROLE_COLOURS["score"]),
    ]
    kept.append(("a", "running output", dv, "(R, dv)", ROLE_COLOURS["output"]))
    x = state_x
    _arrow(
        ax,
        (x0 + S * cell + 0.1, top - R * cell / 2),
        (state_x - 0.15, top - R * cell / 2),
        f"update\nwith tile {current}",
    )
    for name, meaning, cols, symbols, colour in kept:
        _cells(ax, x, top, [[colour] * cols for _ in range(R)], state_cell, edge=EDGE, lw=0.6)
        numbers = (R, cols)
        ax.text(
            x, top + 0.1, f"{name}: {meaning}\n{symbols} = ({numbers[0]}, {numbers[1]})", fontsize=SMALL, va="bottom"
        )
        x += max(cols * state_cell, 1.0) + 0.45
    rule = (
        "start:  m = -∞,  \N{SCRIPT SMALL L} = 0,  a = 0   (for every row i)\n"
        "for each key tile t, with its keys j and value rows v_j:\n"
        "      m' = max(m, max_j s_ij)   (the new running max)\n"
        "      \N{GREEK SMALL LETTER ALPHA} = exp(m - m')   (rescales what was summed relative to the old max)\n"
        "      \N{SCRIPT SMALL L} = \N{GREEK SMALL LETTER ALPHA} \N{SCRIPT SMALL L} + Σ_j exp(s_ij - m')\n"
        "      a = \N{GREEK SMALL LETTER ALPHA} a + Σ_j exp(s_ij - m') v_j\n"
        "      m = m'\n"
        f"end:  out = a / \N{SCRIPT SMALL L},   {_shape('R, dv', (R, dv))}"
    )
    ax.text(0.4, grid_bottom - 0.75, rule, fontsize=FONT, va="top", linespacing=1.4)
    _legend(
        ax,
        [("tiles done", states["done"]), ("tile being read", states["now"]), ("tiles to come", states["next"])],
        loc="upper right",
        anchor=(WIDTH - 0.2, grid_bottom - 0.7),
    )
    return fig


# --------------------------------------------------------------------------- 7. block-sparse tile map (lesson 12)


def block_sparse_tiles(  # noqa: PLR0915 (one drawing, step by step)
    L: int = 24,
    S: int | None = None,
    block: int = 4,
    window: int = 5,
    *,
    causal: bool = False,
    mask=None,
    block_row: int | None = None,
) -> Figure:
    """The tile plan of block-sparse attention: which ``block x block`` tiles are skipped, full or partial.

    The plan is the package's: ``layouts.block_cover`` of the mask (default the
    sliding window ``|i - j| <= window``, only ``j <= i`` with ``causal``; or any
    ``mask``, a boolean ``(L, S)`` array or a predicate) turned into states by
    ``layouts.plan_from_cover``. A full tile is computed without a mask, a
    partial one with the mask applied inside (its masked pairs drawn hatched), a
    skipped one not at all. The keys that one block row gathers are shown under
    the map.
    """
    L = _size("L", L, maximum=64)
    S = L if S is None else _size("S", S, maximum=64)
    block = _size("block", block)
    causal = check_bool("causal", causal)
    if mask is None:
        window = check_int("window", window, minimum=0)
        mask = masks.sliding_window(window, causal=causal)
        pattern = f"sliding window |i - j| <= {window}" + (", causal" if causal else "")
    else:
        pattern = "the given mask"
    cover = block_cover(mask, block, L, S)
    plan = plan_from_cover(np.asarray(cover.some), np.asarray(cover.every))  # (ceil(L/block), ceil(S/block))
    allowed = np.asarray(masks.materialize(mask, L, S) if callable(mask) else as_array("mask", mask), dtype=bool)
    rows, cols = plan.shape
    block_row = rows // 2 if block_row is None else check_int("block_row", block_row, minimum=0)
    if block_row >= rows:
        raise ValueError(f"block_row must be below ceil(L / block) = {rows}; got {block_row}")

    cell = min(0.2, 4.4 / max(L, S))
    height = L * cell + 2.1
    fig, ax = _canvas(WIDTH, height, f"Block-sparse attention: the tile plan of a {pattern}")
    x0, top = 0.6, height - 0.7
    skipped, computed, masked_in = SKIPPED_BLOCK_COLOUR, COMPUTED_BLOCK_COLOUR, "#fdf0e2"
    state = plan[np.arange(L)[:, None] // block, np.arange(S)[None, :] // block]  # (L, S): each pair's tile state
    image = np.empty((L, S, 4))
    image[...] = to_rgba(skipped)
    image[(state != SKIP) & allowed] = to_rgba(computed)
    image[(state == PARTIAL) & ~allowed] = (0.0, 0.0, 0.0, 0.0)  # see-through: the hatched tile below shows
    for r, c in zip(*np.nonzero(plan == PARTIAL), strict=True):  # partial tiles: hatched, for their masked pairs
        i0, j0 = r * block, c * block
        h_tile, w_tile = min(block, L - i0), min(block, S - j0)
        ax.add_patch(
            Rectangle(
                (x0 + j0 * cell, top - (i0 + h_tile) * cell),
                w_tile * cell,
                h_tile * cell,
                facecolor=masked_in,
                edgecolor="#f2b880",
                hatch="////",
                linewidth=0,
                zorder=1,
            )
        )
    extent = (x0, x0 + S * cell, top - L * cell, top)
    ax.imshow(image, extent=extent, aspect="auto", interpolation="nearest", zorder=2)
    ax.hlines(top - np.arange(1, L) * cell, x0, x0 + S * cell, colors="white", linewidth=0.3, zorder=3)
    ax.vlines(x0 + np.arange(1, S) * cell, top - L * cell, top, colors="white", linewidth=0.3, zorder=3)
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, height)
    for r in range(rows):
        for c in range(cols):
            i0, j0 = r * block, c * block
            h_tile, w_tile = min(block, L - i0), min(block, S - j0)
            _frame(ax, x0 + j0 * cell, top - (i0 + h_tile) * cell, w_tile * cell, h_tile * cell, "#808080", lw=0.8)
            letter = {SKIP: "", FULL: "F", PARTIAL: "P"}[int(plan[r, c])]
            if letter and block * cell >= 0.3:
                ax.text(
                    x0 + (j0 + w_tile / 2) * cell,
                    top - (i0 + h_tile / 2) * cell,
                    letter,
                    ha="center",
                    va="center",
                    fontsize=SMALL,
                    fontweight="bold",
                    zorder=7,
                    color="#5a3a1a",
                )
    r0, r_h = block_row * block, min(block, L - block_row * block)
    _frame(ax, x0 - 0.04, top - (r0 + r_h) * cell - 0.04, S * cell + 0.08, r_h * cell + 0.08, HIGHLIGHT, lw=2.2)
    ax.text(
        x0 + S * cell / 2,
        top + 0.1,
        f"scores {_shape('L, S', (L, S))}, tiles of {block} x {block}",
        ha="center",
        va="bottom",
        fontsize=FONT,
    )
    ax.text(x0 - 0.1, top - L * cell / 2, "query i", rotation=90, ha="right", va="center", fontsize=SMALL)
    # the keys gathered for the highlighted block row
    gathered = np.repeat(plan[block_row] != SKIP, block)[:S]  # (S,)
    strip_top = top - L * cell - 0.35
    _cells(ax, x0, strip_top, [[HIGHLIGHT if g else BLOCKED_COLOUR for g in gathered]], cell, lw=0.3)
    ax.text(
        x0 + S * cell / 2,
        strip_top - cell - 0.06,
        f"key j: the keys block row {block_row} gathers (red)",
        ha="center",
        va="top",
        fontsize=SMALL,
    )
    counts = {state: int((plan == state).sum()) for state in (SKIP, PARTIAL, FULL)}
    n_keys = int(gathered.sum())
    right = x0 + S * cell + 0.6
    lines = [
        f"layout {_shape('ceil(L/block), ceil(S/block)', (rows, cols))}",
        f"tiles: {counts[FULL]} full, {counts[PARTIAL]} partial, {counts[SKIP]} skipped of {rows * cols}",
        f"computed: {(counts[FULL] + counts[PARTIAL])} tiles of {rows * cols}, "
        f"{100 * (counts[FULL] + counts[PARTIAL]) / (rows * cols):.0f} % of the dense work",
        "",
        f"block row {block_row} (red): queries {r0}..{r0 + r_h - 1}",
        f"gathers {n_keys} keys: scores {_shape('block, keys', (r_h, n_keys))}",
        f"instead of {_shape('block, S', (r_h, S))}",
    ]
    _note(ax, right, top - 0.1, "\n".join(lines), va="top", fontsize=FONT, linespacing=1.5)
    _legend(
        ax,
        [
            ("full tile: no mask needed", computed),
            ("partial tile: allowed pair", computed),
            Patch(facecolor=masked_in, edgecolor=computed, hatch="////", label="partial tile: masked pair"),
            ("skipped tile", skipped),
            ("gathered key", HIGHLIGHT),
        ],
        loc="lower left",
        anchor=(right, 0.2),
    )
    return fig


# --------------------------------------------------------------------------- 8. the GPU kernel's schedule (lesson 15)


def _kernel_numbers(dtype: str) -> dict[str, int]:
    """Tile, threads, warps and query rows per warp of the fused kernel, read from its CUDA source."""
    source = kernel_source(dtype)
    defines = dict(re.findall(r"^#define\s+(\w+)\s+(.+?)\s*(?://.*)?$", source, flags=re.MULTILINE))
    tile = int(defines["TILE"])
    threads_text = defines["THREADS"]
    if "WARPS" in threads_text:  # "(32 * WARPS)"
        threads = 32 * int(defines["WARPS"])
    else:
        threads = int(threads_text)
    warps = threads // 32
    return {"tile": tile, "threads": threads, "warps": warps, "rows_per_warp": tile // warps}


def gpu_kernel_schedule(  # noqa: PLR0915 (one drawing, step by step)
    L: int = 256,
    S: int | None = None,
    batch_heads: int = 4,
    head_dim: int = 64,
    *,
    dtype: str = "float16",
    is_causal: bool = False,
) -> Figure:
    """The fused GPU kernel's schedule: thread blocks over (query tiles, batch*heads), warps, key tiles.

    Read from the kernel itself (``attn_course.kernels``): one thread block per
    64 query rows of one (batch, head) pair; inside it the warps each own a
    band of rows (float16: 4 warps of 16 rows on the tensor cores; float32: 8
    warps of 8 rows); the key/value tiles of 64 keys are copied from global
    memory into shared memory one after the other (float16: double buffered).
    With ``is_causal`` a block skips the key tiles above its diagonal. The
    highlighted block is the middle query tile of pair 0.
    """
    L = _size("L", L)
    S = L if S is None else _size("S", S)
    batch_heads = _size("batch_heads", batch_heads)
    head_dim = _size("head_dim", head_dim)
    is_causal = check_bool("is_causal", is_causal)
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32'; got {dtype!r}")
    numbers = _kernel_numbers(dtype)
    tile, warps, rows_per_warp = numbers["tile"], numbers["warps"], numbers["rows_per_warp"]
    if tile != KERNEL_TILE:
        raise RuntimeError(f"the {dtype} kernel's TILE {tile} differs from KERNEL_TILE {KERNEL_TILE}")
    query_tiles, key_tiles = math.ceil(L / tile), math.ceil(S / tile)
    if query_tiles > 32 or batch_heads > 32 or key_tiles > 32:
        raise ValueError(
            f"the grid is too large to draw legibly: ceil(L/{tile}) = {query_tiles}, batch_heads = {batch_heads}, "
            f"ceil(S/{tile}) = {key_tiles}; this diagram draws at most 32 of each"
        )
    height = 5.6
    title = f"The fused {dtype} kernel: grid of thread blocks, warps in a block, key tiles through shared memory"
    fig, ax = _canvas(WIDTH, height, title)
    top = height - 0.95

    # A: the grid
    cell = min(0.5, 2.6 / query_tiles, 3.0 / batch_heads)
    gx = 0.55
    chosen_tile = (query_tiles - 1) // 2  # a middle tile: with is_causal it skips some key tiles, not none
    fills = [[ROLE_COLOURS["query"]] * query_tiles for _ in range(batch_heads)]
    fills[0][chosen_tile] = HIGHLIGHT
    _cells(ax, gx, top, fills, cell, edge=EDGE, lw=0.6)
    ax.text(
        gx,
        top + 0.12,
        f"grid: {_shape('ceil(L/64), B·h', (query_tiles, batch_heads))}\nthread blocks",
        fontsize=FONT,
        va="bottom",
    )
    ax.text(
        gx + query_tiles * cell / 2,
        top - batch_heads * cell - 0.08,
        f"query tile (64 rows each)\nL = {L}",
        ha="center",
        va="top",
        fontsize=SMALL,
    )
    ax.text(
        gx - 0.1,
        top - batch_heads * cell / 2,
        "(batch, head) pair",
        rotation=90,
        ha="right",
        va="center",
        fontsize=SMALL,
    )

    # B: one block's warps
    bx, bw = 4.0, 1.5
    band = 3.4 / warps
    warp_colours = HEAD_COLOURS
    for w in range(warps):
        y = top - (w + 1) * band
        ax.add_patch(
            Rectangle(
                (bx, y),
                bw,
                band,
                facecolor=_tint(warp_colours[w % len(warp_colours)], 0.55),
                edgecolor=EDGE,
                linewidth=0.8,
                zorder=2,
            )
        )
        ax.text(
            bx + bw / 2,
            y + band / 2,
            f"warp {w}: rows {w * rows_per_warp}..{(w + 1) * rows_per_warp - 1}",
            ha="center",
            va="center",
            fontsize=SMALL if band >= 0.4 else 7,
            zorder=3,
        )
    _frame(ax, bx, top - warps * band, bw, warps * band, HIGHLIGHT, lw=2.0)
    ax.text(
        bx + bw / 2,
        top + 0.12,
        f"one block: {numbers['threads']} threads\n= {warps} warps of 32",
        ha="center",
        va="bottom",
        fontsize=FONT,
    )
    where_q = "Q rows in registers" if dtype == "float16" else "Q^T tile in shared memory"
    ax.text(
        bx + bw / 2,
        top - warps * band - 0.08,
        f"{_shape('64, d', (tile, head_dim))} query rows\n{where_q};\nper row: m, \N{SCRIPT SMALL L} and O (1, d)",
        ha="center",
        va="top",
        fontsize=SMALL,
    )
    _path(ax, [(gx + (chosen_tile + 1) * cell, top - cell / 2), (bx - 0.1, top - cell / 2)], colour=HIGHLIGHT)

    # C: key tiles streamed through shared memory
    kx = 6.55
    visited = [not is_causal or t * tile <= chosen_tile * tile + tile - 1 for t in range(key_tiles)]
    k_cell = min(0.42, 3.1 / key_tiles)
    fills = [[ROLE_COLOURS["key"] if v else BLOCKED_COLOUR for v in visited]]
    _cells(
        ax, kx, top, fills, k_cell, [[str(t) for t in range(key_tiles)]] if k_cell >= 0.25 else None, edge=EDGE, lw=0.6
    )
    ax.text(
        kx,
        top + 0.12,
        f"global memory: K, V in {key_tiles} tiles\nof 64 keys, {_shape('S, d', (S, head_dim))}",
        fontsize=FONT,
        va="bottom",
    )
    ax.text(kx + key_tiles * k_cell + 0.05, top - k_cell / 2, "t →", fontsize=SMALL, va="center")
    smem_top = top - 1.3
    buffers = 2 if dtype == "float16" else 1
    for b in range(buffers):
        box = Box(kx + b * 1.6, smem_top - 0.95, 1.45, 0.95)
        name = f"buffer {b}" if buffers > 1 else "shared memory"
        _box(
            ax,
            box,
            name,
            f"K tile {_shape('64, d', (tile, head_dim))}",
            f"V tile {_shape('64, d', (tile, head_dim))}",
            colour=ROLE_COLOURS["value"],
        )
    _arrow(ax, (kx + 0.7, top - k_cell - 0.05), (kx + 0.7, smem_top + 0.02), "copy tile t", side="right")
    smem_note = (
        "double buffering: tile t+1 is copied\n(cp.async) while the warps compute on tile t"
        if buffers > 1
        else "one tile at a time: copy, then compute"
    )
    _note(ax, kx, smem_top - 1.15, smem_note, va="top")
    _note(
        ax,
        kx,
        smem_top - 1.75,
        f"per tile: S = Q K^T {_shape('64, 64', (tile, tile))},\nonline softmax update, O += P V",
        va="top",
    )
    _arrow(ax, (kx - 0.1, smem_top - 0.5), (bx + bw + 0.1, smem_top - 0.5), "every warp\nreads the tile", side="above")
    skipped = key_tiles - sum(visited)
    footer = (
        f"Causal: the red block (query tile {chosen_tile}) visits key tiles 0..{chosen_tile}; {skipped} skipped (grey)."
        if is_causal
        else "Dense: every block visits every key tile; no (L, S) array is ever stored."
    )
    _note(ax, 0.4, 0.25, footer + f"  Numbers read from attention_{'fp16' if dtype == 'float16' else 'fp32'}.cu.")
    return fig


# --------------------------------------------------------------------------- 9. the key/value cache (lesson 19)


def kv_cache(
    prompt: int = 4, new_tokens: int = 4, d: int = 4, dv: int = 4, *, window: int | None = None, sinks: int = 0
) -> Figure:
    """Decoding with a key/value cache: what is stored, appended, attended to and evicted at each step.

    Row 0: the prompt's ``prompt`` keys and values are computed at once and
    stored. Each later row: one new token appends one key row ``(1, d)`` and one
    value row ``(1, dv)``, and its query ``(1, d)`` attends to every key kept.
    With ``window=w`` only the last ``w`` positions are kept, plus the first
    ``sinks`` (attention sinks); the others are evicted, so the cache never
    holds more than ``sinks + w`` rows.
    """
    prompt = _size("prompt", prompt)
    new_tokens = _size("new_tokens", new_tokens, maximum=10)
    d = _size("d", d)
    dv = _size("dv", dv)
    sinks = check_int("sinks", sinks, minimum=0)
    if window is not None:
        window = _size("window", window)
    total = prompt + new_tokens
    if total > 28:
        raise ValueError(f"prompt + new_tokens = {total} is too large to draw legibly; this diagram draws <= 28")
    cell = min(0.34, 5.6 / total)
    steps = new_tokens + 1
    height = steps * (cell + 0.12) + 1.55
    title = "Decoding with a key/value cache" + (f": sliding window of {window}, {sinks} sink(s)" if window else "")
    fig, ax = _canvas(WIDTH, height, title)
    x0, top = 1.4, height - 0.55
    colours = {"kept": ALLOWED_COLOUR, "new": COMPUTED_BLOCK_COLOUR, "evicted": "#bdbdbd", "future": "white"}
    ax.text(x0, top + 0.12, f"positions 0..{total - 1} (prompt: 0..{prompt - 1})", fontsize=FONT, va="bottom")
    for step in range(steps):
        length = prompt + step  # positions appended so far, after this step
        new = range(prompt) if step == 0 else [length - 1]
        kept = [p for p in range(length) if window is None or p < sinks or p >= length - window]
        row_top = top - step * (cell + 0.12)
        fills = []
        for p in range(total):
            if p >= length:
                fills.append(colours["future"])
            elif p not in kept:
                fills.append(colours["evicted"])
            elif p in new:
                fills.append(colours["new"])
            else:
                fills.append(colours["kept"])
        _cells(ax, x0, row_top, [fills], cell, edge="#909090", lw=0.5)
        for p in range(length):
            if p not in kept:
                ax.text(
                    x0 + (p + 0.5) * cell,
                    row_top - cell / 2,
                    "\N{MULTIPLICATION SIGN}",
                    ha="center",
                    va="center",
                    fontsize=SMALL,
                    zorder=3,
                )
        label = f"prefill {prompt}" if step == 0 else f"token {length - 1}"
        ax.text(x0 - 0.1, row_top - cell / 2, label, ha="right", va="center", fontsize=SMALL)
        queries = prompt if step == 0 else 1
        ax.text(
            x0 + total * cell + 0.2,
            row_top - cell / 2,
            f"cache K {_shape('t, d', (len(kept), d))}, V ({len(kept)}, {dv}); "
            f"q ({queries}, {d}) → scores ({queries}, {len(kept)})",
            va="center",
            fontsize=SMALL,
        )
    bottom = top - steps * (cell + 0.12)
    rule = "each step appends one key row (1, d) and one value row (1, dv); the new query attends to every key kept" + (
        f"; kept: positions < {sinks} (sinks) and the last {window}" if window else "; nothing is evicted"
    )
    _note(ax, 0.3, bottom - 0.2, rule, va="top")
    entries = [("stored, attended to", colours["kept"]), ("appended this step", colours["new"])]
    if window:
        entries.append(("evicted (\N{MULTIPLICATION SIGN})", colours["evicted"]))
    entries.append(("not generated yet", colours["future"]))
    _legend(ax, entries, loc="lower left", ncol=len(entries), anchor=(0.25, 0.0))
    return fig


# --------------------------------------------------------------------------- 10. the backward pass (lesson 18)


def backward_saved(L: int = 6, S: int = 8, d: int = 4, dv: int = 5) -> Figure:
    """What the forward pass saves for the backward, and the gradient flow of attention.

    Textbook: the forward keeps ``P (L, S)``, the softmax weights, for the
    backward. FlashAttention-style: it keeps only ``out (L, dv)`` and the
    log-sum-exp ``lse (L,)`` of each row and recomputes ``P`` tile by tile as
    ``exp(Q K^T * scale - lse)``. Both then run the same gradient flow:
    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - D)`` with
    ``D = rowsum(dO * out)``, ``dQ = dS K * scale``, ``dK = dS^T Q * scale``.
    """
    L = _size("L", L)
    S = _size("S", S)
    d = _size("d", d)
    dv = _size("dv", dv)
    height = 6.4
    fig, ax = _canvas(WIDTH, height, "The backward pass: what the forward saves, what the backward recomputes")
    saved_top = height - 0.55
    panels = {
        "Textbook: the forward saves": (0.3, [("P", "softmax weights", _shape("L, S", (L, S)))], L * S),
        "FlashAttention-style: the forward saves": (
            5.2,
            [("out", "the output", _shape("L, dv", (L, dv))), ("lse", "log-sum-exp per row", _shape("L,", (L,)))],
            L * dv + L,
        ),
    }
    for title, (x, items, count) in panels.items():
        ax.text(x, saved_top, title, fontsize=FONT + 1, fontweight="bold", va="top")
        _box(ax, Box(x, saved_top - 1.25, 1.35, 0.8), "Q, K, V", "the inputs", colour=ROLE_COLOURS["input"])
        for n, (name, meaning, shape) in enumerate(items):
            _box(
                ax,
                Box(x + 1.55 + n * 1.6, saved_top - 1.25, 1.45, 0.8),
                name,
                meaning,
                shape,
                colour=ROLE_COLOURS["saved"],
            )
        per_row = "grows with L·S" if len(items) == 1 else "grows with L only"
        _note(ax, x, saved_top - 1.5, f"saved besides Q, K, V: {count} numbers ({per_row})", va="top")
    _note(
        ax,
        5.2,
        saved_top - 1.85,
        "backward: P recomputed tile by tile, P = exp(Q K^T · scale - lse)",
        va="top",
        color=HIGHLIGHT,
    )
    ax.add_line(Line2D([0.3, WIDTH - 0.3], [saved_top - 2.3, saved_top - 2.3], color="#b0b0b0", linewidth=1))
    ax.text(
        0.3,
        saved_top - 2.45,
        "The gradient flow (the same in both): from dO to dQ, dK, dV",
        fontsize=FONT + 1,
        fontweight="bold",
        va="top",
    )
    bw, bh = 1.9, 0.85
    y_hi, y_lo = 2.05, 0.6
    d_out = _box(
        ax,
        Box(0.3, (y_hi + y_lo) / 2, 1.45, bh),
        "dO",
        "given",
        _shape("L, dv", (L, dv)),
        colour=ROLE_COLOURS["output"],
    )
    d_p = _box(ax, Box(2.35, y_hi, bw, bh), "dP", "dO V^T", _shape("L, S", (L, S)), colour=ROLE_COLOURS["score"])
    d_v = _box(
        ax, Box(2.35, y_lo - 0.3, bw, bh), "dV", "P^T dO", _shape("S, dv", (S, dv)), colour=ROLE_COLOURS["value"]
    )
    d_s = _box(
        ax, Box(4.85, y_hi, 2.25, bh), "dS", "P ∘ (dP - D)", _shape("L, S", (L, S)), colour=ROLE_COLOURS["score"]
    )
    p_box = _box(
        ax,
        Box(4.85, y_lo - 0.3, 2.25, bh),
        "P",
        "stored / recomputed",
        _shape("L, S", (L, S)),
        colour=ROLE_COLOURS["saved"],
    )
    d_q = _box(
        ax, Box(7.85, y_hi + 0.25, bw, bh), "dQ", "dS K · scale", _shape("L, d", (L, d)), colour=ROLE_COLOURS["query"]
    )
    d_k = _box(
        ax, Box(7.85, y_lo - 0.05, bw, bh), "dK", "dS^T Q · scale", _shape("S, d", (S, d)), colour=ROLE_COLOURS["key"]
    )
    _arrow(ax, d_out.right, d_p.left)
    _arrow(ax, d_out.right, d_v.left)
    _arrow(ax, d_p.right, d_s.left)
    _arrow(ax, p_box.top, d_s.bottom)
    _arrow(ax, p_box.left, d_v.right)
    _arrow(ax, d_s.right, d_q.left)
    _arrow(ax, d_s.right, d_k.left)
    _note(ax, 4.85, y_hi + bh + 0.15, f"D = rowsum(dO ∘ out) {_shape('L,', (L,))}", va="bottom")
    return fig
