"""Pictures of attention: weight heatmaps, masks, heads and block layouts.

Every lesson draws the same few pictures, so they are drawn here once:

* ``plot_attention(weights)``: a heatmap of one ``(L, S)`` weight matrix. Row
  ``i`` is query ``i``, column ``j`` is key ``j``, and the colour of cell
  ``(i, j)`` is how much query ``i`` takes from value ``j``
  (``out[i] = sum_j weights[i, j] * v[j]``), so every row of a softmax sums to 1.
* ``plot_mask(mask)``: a boolean ``(L, S)`` mask in two colours, *may attend*
  (``True``) and *blocked* (``False``).
* ``plot_heads(weights)``: one heatmap per head of ``(h, L, S)`` weights, on
  one shared colour scale so heads can be compared.
* ``plot_layout(layout, block_size)``: which ``block_size x block_size`` tiles
  block-sparse attention computes; with ``mask=`` it also shows the allowed
  pairs inside them, and flags allowed pairs that the layout misses.

Each function accepts NumPy, CuPy and torch arrays (and nested lists), checks
its input (a ``ValueError``/``TypeError`` names the argument and the shape or
dtype seen), titles the figure, labels both axes and shows the colour scale.
``plot_attention``, ``plot_mask`` and ``plot_layout`` return the Axes they drew
into (pass ``ax=`` to draw into an existing one); ``plot_heads`` returns its
Figure.

Importing this module only imports matplotlib: it never picks a backend.
"""

from __future__ import annotations

import math
import numbers

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap
from matplotlib.figure import FigureBase
from matplotlib.ticker import MaxNLocator

from .backend import get_namespace, to_numpy
from .validation import as_array, as_float_array, check_bool, check_int, dtype_name, shape_of

__all__ = ["plot_attention", "plot_heads", "plot_layout", "plot_mask"]

# Axis labels. With token labels the ticks name the tokens, so the axis just says which side it is.
QUERY_POSITION_LABEL = "query position i"
KEY_POSITION_LABEL = "key position j"
QUERY_TOKEN_LABEL = "query"
KEY_TOKEN_LABEL = "key"
WEIGHT_LABEL = "attention weight"

# Two-colour pictures: allowed pairs dark, blocked pairs light.
ALLOWED_COLOUR = "#2f5f98"
BLOCKED_COLOUR = "#e4e4e4"
SKIPPED_BLOCK_COLOUR = "#f7f7f7"
COMPUTED_BLOCK_COLOUR = "#f2b880"
MISSED_PAIR_COLOUR = "#d62728"

ANNOTATE_MAX_CELLS = 100  # plot_attention writes the values in the cells up to this many cells
GRID_MAX_CELLS = 64  # cell (or block) separators up to this many rows/columns; beyond, they would be a grey smear
EVERY_TICK_MAX = 16  # a tick at every position up to this many positions
SMOOTH_ABOVE = 256  # beyond this many rows/columns, average cells when shrinking the image instead of dropping them


# --------------------------------------------------------------------------- argument checks


def _float_matrix(name: str, x, ndim: int, layout: str, hint: str = "") -> np.ndarray:
    """``x`` as a non-empty NumPy array of real floats with ``ndim`` dimensions."""
    x = as_float_array(name, x)
    _require_shape(name, x, ndim, layout, hint)
    x = to_numpy(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _bool_matrix(name: str, x, ndim: int, layout: str, hint: str = "") -> np.ndarray:
    """``x`` as a non-empty NumPy boolean array with ``ndim`` dimensions."""
    x = as_array(name, x)
    xp = get_namespace(x)
    if not xp.isdtype(x.dtype, "bool"):
        fix = (
            "compare it, e.g. mask != 0"
            if xp.isdtype(x.dtype, "integral")
            else "an additive 0/-inf mask converts with mask == 0"
        )
        raise TypeError(f"{name} must be boolean (True = may attend); got dtype {dtype_name(x.dtype)} ({fix})")
    _require_shape(name, x, ndim, layout, hint)
    return to_numpy(x)


def _require_shape(name: str, x, ndim: int, layout: str, hint: str):
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}; got shape {shape_of(x)}{hint}")
    if 0 in shape_of(x):
        raise ValueError(f"{name} must not be empty; got shape {shape_of(x)}")


def _check_labels(name: str, labels, n: int, what: str, shape: tuple[int, ...]) -> list[str] | None:
    """Token labels as strings, one per row (or column); ``None`` stays ``None``."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)):
        raise TypeError(f"{name} must be a list of labels, one per {what}; got a single string {labels!r}")
    try:
        labels = [str(label) for label in labels]
    except TypeError:
        raise TypeError(f"{name} must be a list of labels, one per {what}; got {type(labels).__name__}") from None
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} labels but there are {n} {what}s (shape {shape})")
    return labels


def _check_axes(ax) -> Axes | None:
    if ax is not None and not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None; got {type(ax).__name__}")
    return ax


def _check_title(title) -> str:
    if not isinstance(title, str):
        raise TypeError(f"title must be a string; got {type(title).__name__}")
    return title


def _check_cmap(cmap) -> Colormap:
    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a matplotlib colormap or its name, e.g. 'viridis'; got {type(cmap).__name__}")
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"cmap must name a matplotlib colormap, e.g. 'viridis' or 'magma'; got {cmap!r}") from None


def _check_limits(vmin, vmax, data: np.ndarray) -> tuple[float | None, float | None]:
    """The colour scale's ends: finite numbers or ``None`` (then the data's min or max)."""
    for name, value in (("vmin", vmin), ("vmax", vmax)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number or None; got {value!r} ({type(value).__name__})")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite; got {value!r}")
    finite = data[np.isfinite(data)]
    low = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if vmin is not None and vmax is not None and low >= high:
        raise ValueError(f"vmin must be below vmax; got vmin={vmin!r}, vmax={vmax!r}")
    if high <= low:  # e.g. all weights 0 (a fully masked matrix) with the default vmin=0
        high = low + 1.0
    return low, high


# --------------------------------------------------------------------------- drawing helpers


def _panel_size(rows: int, cols: int, largest: float) -> tuple[float, float]:
    """Inches for a ``rows x cols`` picture: readable cells when small, at most ``largest`` a side when big."""
    if _aspect(rows, cols) == "equal":
        cell = min(0.45, largest / max(rows, cols))
        return max(1.6, cols * cell), max(1.6, rows * cell)
    return min(largest, max(1.6, cols * 0.45)), min(largest, max(1.6, rows * 0.45))


def _new_axes(rows: int, cols: int) -> Axes:
    """A fresh figure, room for the labels and the colour bar around a picture of ``rows x cols`` cells."""
    width, height = _panel_size(rows, cols, largest=5.5)
    _, ax = plt.subplots(figsize=(width + 2.6, height + 1.6), layout="constrained")
    return ax


def _aspect(rows: int, cols: int) -> str:
    """Square cells unless that would make the picture a thin strip."""
    return "equal" if max(rows, cols) <= 4 * min(rows, cols) else "auto"


def _image_options(rows: int, cols: int) -> dict:
    """Sharp cells for small matrices; averaged (not dropped) cells when a big one is shrunk to fit."""
    if max(rows, cols) > SMOOTH_ABOVE:
        return {"interpolation": "antialiased", "interpolation_stage": "rgba"}
    return {"interpolation": "nearest"}


def _set_position_ticks(axis, n: int, labels: list[str] | None, rotate: bool = False):
    """Token labels at every position, else integer positions (every one when there are few)."""
    if labels is not None:
        extra = {"rotation": 45, "ha": "right", "rotation_mode": "anchor"} if rotate else {}
        axis.set_ticks(range(n), labels=labels, fontsize=9 if n <= 40 else 6, **extra)
    elif n <= EVERY_TICK_MAX:
        axis.set_ticks(range(n))
    else:
        axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 4, 5, 10]))


def _label_axes(ax: Axes, rows: int, cols: int, query_labels, key_labels, *, left: bool = True, bottom: bool = True):
    """Ticks and axis labels for a ``(queries, keys)`` picture; inner panels of a grid get none."""
    _set_position_ticks(ax.yaxis, rows, query_labels)
    _set_position_ticks(ax.xaxis, cols, key_labels, rotate=True)
    if left:
        ax.set_ylabel(QUERY_TOKEN_LABEL if query_labels is not None else QUERY_POSITION_LABEL)
    else:
        ax.tick_params(axis="y", labelleft=False)
    if bottom:
        ax.set_xlabel(KEY_TOKEN_LABEL if key_labels is not None else KEY_POSITION_LABEL)
    else:
        ax.tick_params(axis="x", labelbottom=False)


def _cell_grid(ax: Axes, rows: int, cols: int, step: int = 1, colour: str = "white", linewidth: float | None = None):
    """Lines between the cells of a ``rows x cols`` picture, or between its blocks of ``step x step`` cells.

    Drawn only up to 64 blocks a side, where they stay visible; the picture's
    limits are kept (a last partial block ends where the picture does).
    """
    blocks_down, blocks_across = math.ceil(rows / step), math.ceil(cols / step)
    if max(blocks_down, blocks_across) > GRID_MAX_CELLS:
        return
    if linewidth is None:
        linewidth = 1.0 if max(blocks_down, blocks_across) <= 16 else 0.5
    ax.set_xticks(np.minimum(np.arange(blocks_across + 1) * step, cols) - 0.5, minor=True)
    ax.set_yticks(np.minimum(np.arange(blocks_down + 1) * step, rows) - 0.5, minor=True)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.grid(which="minor", color=colour, linewidth=linewidth)
    ax.grid(which="major", visible=False)
    ax.tick_params(which="minor", length=0)


def _annotate_cells(ax: Axes, image, matrix: np.ndarray):
    """Write each value (2 decimals) in its cell, dark on light colours and light on dark ones."""
    fontsize = 9 if matrix.size <= 36 else 7
    for (row, col), value in np.ndenumerate(matrix):
        red, green, blue, _ = image.cmap(image.norm(value))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        ax.text(
            col, row, f"{value:.2f}", ha="center", va="center", fontsize=fontsize, color="black" if light else "white"
        )


def _draw_categories(ax: Axes, codes: np.ndarray, colours: list[str], names: list[str], label: str = "", extent=None):
    """An image of integer category codes ``0..n-1``; its colour bar names each category and counts its cells."""
    rows, cols = codes.shape
    count = len(colours)
    norm = BoundaryNorm(np.arange(count + 1) - 0.5, count)
    image = ax.imshow(
        codes,
        cmap=ListedColormap(colours),
        norm=norm,
        extent=extent,
        aspect=_aspect(rows, cols),
        **_image_options(rows, cols),
    )
    colorbar = ax.figure.colorbar(image, ax=ax, shrink=min(0.6, 0.2 * count), label=label)
    sizes = np.bincount(codes.ravel(), minlength=count)
    colorbar.set_ticks(range(count), labels=[f"{name} ({size})" for name, size in zip(names, sizes, strict=True)])
    colorbar.minorticks_off()
    return image


# --------------------------------------------------------------------------- the pictures


def plot_attention(
    weights,
    query_labels=None,
    key_labels=None,
    *,
    ax=None,
    title: str = "Attention weights",
    cmap="viridis",
    annotate: bool | None = None,
    vmin: float | None = 0.0,
    vmax: float | None = None,
    colorbar_label: str = WEIGHT_LABEL,
) -> Axes:
    """Heatmap of one attention weight matrix ``weights: (L, S)``; returns the Axes.

    Rows are queries (y axis, query 0 at the top), columns are keys (x axis).
    ``query_labels``/``key_labels`` (one string per row/column) name the
    tokens on the axes. The colour bar shows the scale, from ``vmin`` (default
    0) to ``vmax`` (default: the largest weight). ``annotate`` writes each value
    with 2 decimals in its cell; by default it does so when there are at most
    100 cells. For raw scores (before the softmax) pass ``vmin=None`` and a
    ``colorbar_label`` such as ``"score q.k / sqrt(d)"``.
    """
    hint = ". For one head of batched weights (B, h, L, S) pass weights[b, head], or use plot_heads"
    matrix = _float_matrix("weights", weights, 2, "(L, S): queries x keys", hint)
    rows, cols = matrix.shape
    query_labels = _check_labels("query_labels", query_labels, rows, "query row", matrix.shape)
    key_labels = _check_labels("key_labels", key_labels, cols, "key column", matrix.shape)
    ax = _check_axes(ax)
    title = _check_title(title)
    cmap = _check_cmap(cmap)
    low, high = _check_limits(vmin, vmax, matrix)
    annotate = matrix.size <= ANNOTATE_MAX_CELLS if annotate is None else check_bool("annotate", annotate)

    ax = _new_axes(rows, cols) if ax is None else ax
    image = ax.imshow(matrix, cmap=cmap, vmin=low, vmax=high, aspect=_aspect(rows, cols), **_image_options(rows, cols))
    _label_axes(ax, rows, cols, query_labels, key_labels)
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label=str(colorbar_label))
    if annotate:
        _annotate_cells(ax, image, matrix)
    return ax


def plot_mask(mask, *, ax=None, title: str = "Attention mask", query_labels=None, key_labels=None) -> Axes:
    """A boolean mask ``(L, S)`` in two colours: dark = may attend (``True``), light = blocked; returns the Axes.

    Row ``i`` is query ``i``, column ``j`` key ``j``. The colour bar names the
    two colours and counts the pairs of each. Up to 64 rows and
    columns, thin lines separate the cells; beyond that (e.g. ``L = 1024``) the
    picture has no cell lines and large masks are averaged, not sampled, when
    shrunk to fit.
    """
    hint = ". For a padding mask (B, 1, 1, S) pass mask[b, 0]"
    mask = _bool_matrix("mask", mask, 2, "(L, S): queries x keys", hint)
    rows, cols = mask.shape
    query_labels = _check_labels("query_labels", query_labels, rows, "query row", mask.shape)
    key_labels = _check_labels("key_labels", key_labels, cols, "key column", mask.shape)
    ax = _check_axes(ax)
    title = _check_title(title)

    ax = _new_axes(rows, cols) if ax is None else ax
    codes = mask.astype(np.uint8)  # 0 = blocked, 1 = may attend
    _draw_categories(ax, codes, [BLOCKED_COLOUR, ALLOWED_COLOUR], ["blocked", "may attend"])
    _label_axes(ax, rows, cols, query_labels, key_labels)
    _cell_grid(ax, rows, cols)
    ax.set_title(title)
    return ax


def plot_heads(
    weights,
    query_labels=None,
    key_labels=None,
    *,
    ncols: int = 4,
    title: str = "Attention weights per head",
    cmap="viridis",
    fig=None,
    vmin: float | None = 0.0,
    vmax: float | None = None,
):
    """One heatmap per head of ``weights: (h, L, S)``, in a grid of ``ncols`` columns; returns the Figure.

    Panel ``k`` (titled ``"head k"``, from 0 as in ``weights[k]``) is
    ``fig.axes[k]``; ``fig.axes[h]`` is the one colour bar that all heads
    share (``vmin`` to ``vmax``, default 0 to the largest weight of any head),
    so equal colours mean equal weights across heads. Token labels appear on
    the left column and on the lowest panel of each column. ``fig``: an empty
    Figure (or SubFigure) to draw into; by default a new one.
    """
    hint = ". For batched weights (B, h, L, S) pass weights[b]; for one matrix (L, S) use plot_attention"
    stack = _float_matrix("weights", weights, 3, "(h, L, S): heads x queries x keys", hint)
    heads, rows, cols = stack.shape
    query_labels = _check_labels("query_labels", query_labels, rows, "query row", stack.shape)
    key_labels = _check_labels("key_labels", key_labels, cols, "key column", stack.shape)
    ncols = check_int("ncols", ncols, minimum=1)
    title = _check_title(title)
    cmap = _check_cmap(cmap)
    low, high = _check_limits(vmin, vmax, stack)
    if fig is not None and not isinstance(fig, FigureBase):
        raise TypeError(f"fig must be a matplotlib Figure or None; got {type(fig).__name__}")
    if fig is not None and fig.axes:
        raise ValueError(f"fig must be an empty Figure; it already holds {len(fig.axes)} axes")

    ncols = min(ncols, heads)
    nrows = math.ceil(heads / ncols)
    if fig is None:
        width, height = _panel_size(rows, cols, largest=2.5)
        label_room = 0.6 if key_labels is not None else 0.3
        fig = plt.figure(
            figsize=(ncols * (width + 0.4) + 1.6, nrows * (height + 0.5 + label_room) + 0.6), layout="constrained"
        )
    grid = fig.subplots(nrows, ncols, squeeze=False)
    panels = []
    for head, ax in enumerate(grid.flat):
        if head >= heads:
            ax.remove()  # the unused end of the last row
            continue
        image = ax.imshow(
            stack[head], cmap=cmap, vmin=low, vmax=high, aspect=_aspect(rows, cols), **_image_options(rows, cols)
        )
        left = head % ncols == 0
        bottom = head + ncols >= heads  # no panel below this one
        _label_axes(ax, rows, cols, query_labels, key_labels, left=left, bottom=bottom)
        ax.set_title(f"head {head}")
        panels.append(ax)
    fig.colorbar(image, ax=panels, label=WEIGHT_LABEL)
    fig.suptitle(title)
    return fig


def plot_layout(layout, block_size: int, *, mask=None, ax=None, title: str = "Block layout") -> Axes:
    """Which tiles block-sparse attention computes; returns the Axes.

    layout: a boolean ``(ceil(L/block_size), ceil(S/block_size))`` array, e.g.
    from ``masks.block_layout(mask, block_size)``. It is drawn in token
    coordinates, one ``block_size x block_size`` square per tile, so it lines
    up with ``plot_mask``: orange = computed, light = skipped; the colour bar
    counts tiles. (Without the mask the sequence lengths are unknown, so a last
    partial tile is drawn whole.)

    With ``mask`` (the boolean ``(L, S)`` element mask) each pair is coloured:
    blue = allowed (computed), orange = computed but masked out (the work a
    block layout wastes), light = skipped, and red = allowed but in a skipped
    tile, i.e. a layout that misses part of the mask (only shown when present);
    the colour bar then counts pairs.
    """
    layout = _bool_matrix("layout", layout, 2, "(query blocks, key blocks)")
    block_size = check_int("block_size", block_size, minimum=1)
    ax = _check_axes(ax)
    title = _check_title(title)
    block_rows, block_cols = layout.shape

    if mask is None:
        rows, cols = block_rows * block_size, block_cols * block_size
        ax = _new_axes(rows, cols) if ax is None else ax
        extent = (-0.5, cols - 0.5, rows - 0.5, -0.5)
        codes = layout.astype(np.uint8)  # 0 = skipped, 1 = computed
        label = f"tiles of {block_size} x {block_size} pairs"
        _draw_categories(
            ax, codes, [SKIPPED_BLOCK_COLOUR, COMPUTED_BLOCK_COLOUR], ["skipped", "computed"], label, extent
        )
    else:
        mask = _bool_matrix("mask", mask, 2, "(L, S): queries x keys")
        rows, cols = mask.shape
        expected = (math.ceil(rows / block_size), math.ceil(cols / block_size))
        if expected != layout.shape:
            raise ValueError(
                f"mask of shape {mask.shape} with block_size={block_size} needs a layout of shape {expected}; "
                f"got layout of shape {layout.shape}"
            )
        ax = _new_axes(rows, cols) if ax is None else ax
        in_computed_tile = layout[np.arange(rows)[:, None] // block_size, np.arange(cols)[None, :] // block_size]
        codes = np.where(in_computed_tile, np.where(mask, 2, 1), np.where(mask, 3, 0)).astype(np.uint8)
        colours = [SKIPPED_BLOCK_COLOUR, COMPUTED_BLOCK_COLOUR, ALLOWED_COLOUR, MISSED_PAIR_COLOUR]
        names = ["skipped", "computed, masked out", "computed, may attend", "MISSED: allowed, not computed"]
        count = 4 if (codes == 3).any() else 3
        _draw_categories(
            ax, codes, colours[:count], names[:count], f"pairs (query, key); tiles of {block_size} x {block_size}"
        )

    _set_position_ticks(ax.yaxis, rows, None)
    _set_position_ticks(ax.xaxis, cols, None)
    if block_rows <= EVERY_TICK_MAX and block_cols <= EVERY_TICK_MAX:  # ticks where the tiles start
        ax.set_yticks(np.arange(block_rows) * block_size)
        ax.set_xticks(np.arange(block_cols) * block_size)
    ax.set_ylabel(QUERY_POSITION_LABEL)
    ax.set_xlabel(KEY_POSITION_LABEL)
    _cell_grid(ax, rows, cols, step=block_size, colour="#8c8c8c", linewidth=0.8)
    ax.set_title(title)
    return ax
