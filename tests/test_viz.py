"""The lesson pictures: what is drawn (titles, labels, ticks, colour bars, image data) and what is refused."""

import matplotlib

matplotlib.use("Agg")  # no window, no display needed

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from attn_course import masks, viz

QUERY_TOKENS = ["the", "cat", "sat"]  # L = 3
KEY_TOKENS = ["a", "b", "c", "d", "e"]  # S = 5


@pytest.fixture(autouse=True)
def close_figures():
    """Every test starts without figures and leaves none open."""
    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture
def weights(rng):
    """Softmax rows (L=3, S=5), float32, with values far from each other."""
    scores = rng.standard_normal((3, 5)).astype(np.float32) * 2
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def tick_texts(axis):
    return [label.get_text() for label in axis.get_ticklabels()]


def colorbar_axes(fig, drawn):
    """The axes of ``fig`` that are not the pictures themselves: the colour bars."""
    return [ax for ax in fig.axes if ax not in drawn]


# --------------------------------------------------------------------------- plot_attention


def test_plot_attention_draws_labelled_heatmap(weights):
    ax = viz.plot_attention(weights, QUERY_TOKENS, KEY_TOKENS, title="Who looks at whom")
    fig = ax.figure
    assert ax.get_title() == "Who looks at whom"
    assert ax.get_ylabel() == "query"
    assert ax.get_xlabel() == "key"
    assert tick_texts(ax.yaxis) == QUERY_TOKENS
    assert tick_texts(ax.xaxis) == KEY_TOKENS
    assert all(label.get_rotation() == 45 for label in ax.get_xticklabels())  # key labels rotated
    (image,) = ax.images
    np.testing.assert_array_equal(image.get_array(), weights)
    assert image.get_clim() == (0.0, pytest.approx(float(weights.max())))
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert colorbar_axes(fig, [ax])[0].get_ylabel() == "attention weight"


def test_plot_attention_without_labels_names_positions(weights):
    ax = viz.plot_attention(weights)
    assert ax.get_title() == "Attention weights"
    assert ax.get_ylabel() == "query position i"
    assert ax.get_xlabel() == "key position j"
    assert tick_texts(ax.xaxis) == ["0", "1", "2", "3", "4"]
    assert tick_texts(ax.yaxis) == ["0", "1", "2"]


def test_plot_attention_annotates_small_matrices_with_two_decimals(weights):
    ax = viz.plot_attention(weights)
    texts = [text.get_text() for text in ax.texts]
    assert texts == [f"{value:.2f}" for value in weights.ravel()]  # row by row, one per cell
    # a value sits in its own cell: text k is at (column, row)
    assert ax.texts[7].get_position() == (2, 1)


def test_plot_attention_annotation_switches(rng):
    big = rng.random((11, 10))  # 110 cells: more than the default limit of 100
    assert len(viz.plot_attention(big).texts) == 0
    assert len(viz.plot_attention(big, annotate=True).texts) == 110
    assert len(viz.plot_attention(big[:10], annotate=False).texts) == 0
    assert len(viz.plot_attention(big[:10]).texts) == 100


def test_plot_attention_annotation_is_readable_on_dark_and_light_cells():
    ax = viz.plot_attention(np.array([[0.0, 1.0]]))  # viridis: dark purple, light yellow
    assert [text.get_color() for text in ax.texts] == ["white", "black"]


def test_plot_attention_draws_into_given_axes_and_accepts_torch(weights):
    fig, (left, right) = plt.subplots(1, 2)
    tensor = torch.from_numpy(weights).requires_grad_()
    returned = viz.plot_attention(tensor, ax=right, vmax=1.0, cmap="magma")
    assert returned is right
    assert len(left.images) == 0
    np.testing.assert_array_equal(right.images[0].get_array(), weights)
    assert right.images[0].get_clim() == (0.0, 1.0)
    assert right.images[0].get_cmap().name == "magma"
    assert len(fig.axes) == 3  # two panels and one colour bar


def test_plot_attention_of_scores_with_own_scale(rng):
    scores = rng.standard_normal((3, 5))
    ax = viz.plot_attention(scores.tolist(), vmin=None, colorbar_label="score")
    assert ax.images[0].get_clim() == (pytest.approx(scores.min()), pytest.approx(scores.max()))
    assert colorbar_axes(ax.figure, [ax])[0].get_ylabel() == "score"


def test_plot_attention_of_all_zero_weights_still_draws():
    ax = viz.plot_attention(np.zeros((3, 5)))  # a fully masked matrix: no NaN, no error
    low, high = ax.images[0].get_clim()
    assert low == 0.0 and high > low


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weights": np.ones(5)}, ValueError, r"weights must have 2 dimensions .*got shape \(5,\)"),
        ({"weights": np.ones((2, 3, 5))}, ValueError, r"weights must have 2 dimensions .*got shape \(2, 3, 5\)"),
        ({"weights": np.ones((0, 5))}, ValueError, r"weights must not be empty; got shape \(0, 5\)"),
        ({"weights": np.ones((3, 5), dtype=np.int64)}, TypeError, "weights must have a floating dtype.*int64"),
        ({"weights": np.ones((3, 5), dtype=complex)}, TypeError, "weights must have a floating dtype.*complex128"),
        ({"weights": np.ones((3, 5), dtype=bool)}, TypeError, "weights must have a floating dtype.*bool"),
        (
            {"query_labels": ["the", "cat"]},
            ValueError,
            r"query_labels has 2 labels but there are 3 query rows .*\(3, 5\)",
        ),
        ({"key_labels": KEY_TOKENS[:4]}, ValueError, "key_labels has 4 labels but there are 5 key columns"),
        ({"query_labels": "abc"}, TypeError, "query_labels must be a list of labels"),
        ({"key_labels": 5}, TypeError, "key_labels must be a list of labels"),
        ({"ax": "left"}, TypeError, "ax must be a matplotlib Axes"),
        ({"annotate": "yes"}, TypeError, "annotate must be True or False"),
        ({"vmin": 0.5, "vmax": 0.5}, ValueError, "vmin must be below vmax"),
        ({"vmax": float("nan")}, ValueError, "vmax must be finite"),
        ({"vmin": "0"}, TypeError, "vmin must be a real number"),
        ({"cmap": "no-such-map"}, ValueError, "cmap must name a matplotlib colormap"),
        ({"title": None}, TypeError, "title must be a string"),
    ],
)
def test_plot_attention_refuses_bad_input(weights, kwargs, error, match):
    arguments = {"weights": weights, **kwargs}
    with pytest.raises(error, match=match):
        viz.plot_attention(**arguments)
    assert plt.get_fignums() == []  # checked before anything is drawn


# --------------------------------------------------------------------------- plot_mask


def test_plot_mask_draws_two_colours_with_their_meaning():
    mask = masks.causal_mask(5)[:3]  # (L=3, S=5)
    ax = viz.plot_mask(mask)
    assert ax.get_title() == "Attention mask"
    assert ax.get_xlabel() == "key position j"
    assert ax.get_ylabel() == "query position i"
    (image,) = ax.images
    np.testing.assert_array_equal(image.get_array(), mask.astype(int))
    colours = image.to_rgba(image.get_array())  # (3, 5, 4) RGBA per cell
    allowed_colour, blocked_colour = colours[0, 0], colours[0, 1]
    assert not np.allclose(allowed_colour, blocked_colour)
    np.testing.assert_array_equal(np.all(colours == allowed_colour, axis=-1), mask)
    np.testing.assert_array_equal(np.all(colours == blocked_colour, axis=-1), ~mask)
    (colorbar,) = colorbar_axes(ax.figure, [ax])
    allowed, blocked = int(mask.sum()), int((~mask).sum())
    assert tick_texts(colorbar.yaxis) == [f"blocked ({blocked})", f"may attend ({allowed})"]


def test_plot_mask_colours_are_the_same_for_every_pattern():
    """True is always the same colour, even in a mask that is all True."""
    full = viz.plot_mask(np.ones((3, 5), dtype=bool)).images[0]
    causal = viz.plot_mask(masks.causal_mask(4)).images[0]
    assert tuple(full.to_rgba(full.get_array())[0, 0]) == tuple(causal.to_rgba(causal.get_array())[0, 0])
    assert tuple(causal.to_rgba(causal.get_array())[0, 0]) == to_rgba(viz.ALLOWED_COLOUR)


def test_plot_mask_small_has_cell_lines_large_has_none():
    small = viz.plot_mask(masks.sliding_window_mask(16, 2))
    assert len(small.get_xticks(minor=True)) == 17  # a line between every two cells, and the edges
    assert small.get_xlim() == (-0.5, 15.5)
    large = viz.plot_mask(masks.sliding_window_mask(1024, 8))
    assert len(large.get_xticks(minor=True)) == 0
    assert large.images[0].get_array().shape == (1024, 1024)
    assert len(large.get_xticks()) < 12  # readable integer ticks, not 1024 of them


def test_plot_mask_with_tokens_and_given_axes():
    fig, ax = plt.subplots()
    mask = torch.from_numpy(masks.causal_mask(3))
    returned = viz.plot_mask(mask, ax=ax, title="Causal", query_labels=QUERY_TOKENS, key_labels=QUERY_TOKENS)
    assert returned is ax
    assert ax.get_title() == "Causal"
    assert tick_texts(ax.yaxis) == QUERY_TOKENS
    assert tick_texts(ax.xaxis) == QUERY_TOKENS
    assert len(fig.axes) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mask": np.tril(np.ones((3, 5), dtype=np.int64))}, TypeError, "mask must be boolean .*int64.*mask != 0"),
        ({"mask": np.zeros((3, 5))}, TypeError, "mask must be boolean .*float64.*mask == 0"),
        ({"mask": np.ones(5, dtype=bool)}, ValueError, r"mask must have 2 dimensions .*got shape \(5,\)"),
        (
            {"mask": masks.padding_mask([2, 3], 5)},
            ValueError,
            r"mask must have 2 dimensions .*\(2, 1, 1, 5\).*mask\[b, 0\]",
        ),
        ({"mask": np.ones((3, 0), dtype=bool)}, ValueError, r"mask must not be empty; got shape \(3, 0\)"),
        ({"query_labels": QUERY_TOKENS[:2]}, ValueError, "query_labels has 2 labels but there are 3 query rows"),
        ({"key_labels": [*KEY_TOKENS, "f"]}, ValueError, "key_labels has 6 labels but there are 5 key columns"),
        ({"ax": plt}, TypeError, "ax must be a matplotlib Axes"),
    ],
)
def test_plot_mask_refuses_bad_input(kwargs, error, match):
    arguments = {"mask": masks.causal_mask(5)[:3], **kwargs}
    with pytest.raises(error, match=match):
        viz.plot_mask(**arguments)


# --------------------------------------------------------------------------- plot_heads


def test_plot_heads_draws_one_titled_panel_per_head_and_one_colour_bar(rng):
    stack = rng.random((5, 3, 4)).astype(np.float32)  # (h=5, L=3, S=4)
    fig = viz.plot_heads(stack, ncols=2)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.get_suptitle() == "Attention weights per head"
    panels = fig.axes[:5]
    assert [ax.get_title() for ax in panels] == [f"head {k}" for k in range(5)]
    assert len(fig.axes) == 6  # 5 heads (the sixth grid cell removed) + one shared colour bar
    assert fig.axes[5].get_ylabel() == "attention weight"
    for head, ax in enumerate(panels):
        np.testing.assert_array_equal(ax.images[0].get_array(), stack[head])
        assert ax.images[0].get_clim() == (0.0, pytest.approx(float(stack.max())))  # one shared scale
    # 3 rows x 2 columns: query labels on the left column, key labels under the lowest panel of each column
    assert [ax.get_ylabel() for ax in panels] == ["query position i", "", "query position i", "", "query position i"]
    assert [ax.get_xlabel() for ax in panels] == ["", "", "", "key position j", "key position j"]


def test_plot_heads_with_tokens_into_given_figure(rng):
    stack = torch.softmax(torch.from_numpy(rng.standard_normal((2, 3, 5))), dim=-1)
    fig = plt.figure()
    returned = viz.plot_heads(stack, QUERY_TOKENS, KEY_TOKENS, title="Two heads", fig=fig, vmax=1.0)
    assert returned is fig
    assert fig.get_suptitle() == "Two heads"
    assert len(fig.axes) == 3
    for ax in fig.axes[:2]:
        assert tick_texts(ax.xaxis) == KEY_TOKENS
        assert ax.images[0].get_clim() == (0.0, 1.0)
    assert tick_texts(fig.axes[0].yaxis) == QUERY_TOKENS
    assert fig.axes[0].get_ylabel() == "query"
    assert fig.axes[1].get_ylabel() == ""  # the inner panel repeats no labels


def test_plot_heads_with_more_columns_than_heads(rng):
    fig = viz.plot_heads(rng.random((1, 3, 5)))  # ncols=4 by default, one head
    assert [ax.get_title() for ax in fig.axes] == ["head 0", ""]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weights": np.ones((3, 5))}, ValueError, r"weights must have 3 dimensions .*\(3, 5\).*plot_attention"),
        (
            {"weights": np.ones((1, 2, 3, 5))},
            ValueError,
            r"weights must have 3 dimensions .*\(1, 2, 3, 5\).*weights\[b\]",
        ),
        ({"weights": np.ones((2, 3, 5), dtype=np.int32)}, TypeError, "weights must have a floating dtype.*int32"),
        (
            {"weights": np.ones((2, 3, 5), dtype=np.complex64)},
            TypeError,
            "weights must have a floating dtype.*complex64",
        ),
        ({"ncols": 0}, ValueError, "ncols must be >= 1; got 0"),
        ({"ncols": 2.0}, TypeError, "ncols must be an integer"),
        ({"query_labels": QUERY_TOKENS * 2}, ValueError, "query_labels has 6 labels but there are 3 query rows"),
        ({"key_labels": KEY_TOKENS[:1]}, ValueError, "key_labels has 1 labels but there are 5 key columns"),
        ({"fig": "figure"}, TypeError, "fig must be a matplotlib Figure"),
        ({"cmap": 3}, TypeError, "cmap must be a matplotlib colormap"),
    ],
)
def test_plot_heads_refuses_bad_input(kwargs, error, match):
    arguments = {"weights": np.full((2, 3, 5), 0.2), **kwargs}
    with pytest.raises(error, match=match):
        viz.plot_heads(**arguments)


def test_plot_heads_refuses_a_figure_that_already_has_axes():
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="fig must be an empty Figure; it already holds 1 axes"):
        viz.plot_heads(np.full((2, 3, 5), 0.2), fig=fig)


# --------------------------------------------------------------------------- plot_layout


def test_plot_layout_draws_tiles_in_token_coordinates():
    layout = masks.block_layout(masks.causal(), 4, L=12, S=8)  # (3, 2) tiles of 4 x 4
    ax = viz.plot_layout(layout, 4)
    assert ax.get_title() == "Block layout"
    assert ax.get_xlabel() == "key position j" and ax.get_ylabel() == "query position i"
    (image,) = ax.images
    np.testing.assert_array_equal(image.get_array(), layout.astype(int))
    assert image.get_extent() == [-0.5, 7.5, 11.5, -0.5]  # one tile = 4 x 4 positions
    assert list(ax.get_yticks()) == [0, 4, 8]  # ticks where the tiles start
    (colorbar,) = colorbar_axes(ax.figure, [ax])
    assert tick_texts(colorbar.yaxis) == ["skipped (1)", "computed (5)"]


def test_plot_layout_with_mask_shows_wasted_and_missed_pairs():
    mask = masks.causal_mask(6)  # tiles of 4: (2, 2)
    layout = np.array([[True, False], [False, True]])  # misses the lower-left tile
    ax = viz.plot_layout(layout, 4, mask=mask, title="Causal, block 4")
    codes = ax.images[0].get_array()
    assert codes.shape == (6, 6)
    assert codes[0, 0] == 2  # computed, may attend
    assert codes[0, 1] == 1  # computed, masked out
    assert codes[0, 5] == 0  # skipped
    assert codes[5, 0] == 3  # allowed but not computed
    assert ax.get_xlim() == (-0.5, 5.5)  # the last tile is partial: the picture ends with the mask
    (colorbar,) = colorbar_axes(ax.figure, [ax])
    assert tick_texts(colorbar.yaxis)[-1] == "MISSED: allowed, not computed (8)"


def test_plot_layout_of_a_correct_layout_has_no_missed_category():
    mask = masks.sliding_window_mask(10, 1)
    ax = viz.plot_layout(masks.block_layout(mask, 3), 3, mask=mask)
    (colorbar,) = colorbar_axes(ax.figure, [ax])
    assert len(tick_texts(colorbar.yaxis)) == 3
    assert (ax.images[0].get_array() != 3).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layout": np.ones((2, 2), dtype=np.int64)}, TypeError, "layout must be boolean.*int64"),
        ({"layout": np.ones((1, 2, 2), dtype=bool)}, ValueError, r"layout must have 2 dimensions .*\(1, 2, 2\)"),
        ({"block_size": 0}, ValueError, "block_size must be >= 1; got 0"),
        ({"block_size": "4"}, TypeError, "block_size must be an integer"),
        (
            {"mask": np.ones((9, 8), dtype=bool)},
            ValueError,
            r"mask of shape \(9, 8\) with block_size=4 needs a layout of shape \(3, 2\)",
        ),
        ({"mask": np.ones((8, 8))}, TypeError, "mask must be boolean"),
    ],
)
def test_plot_layout_refuses_bad_input(kwargs, error, match):
    arguments = {"layout": np.ones((2, 2), dtype=bool), "block_size": 4, **kwargs}
    with pytest.raises(error, match=match):
        viz.plot_layout(**arguments)
