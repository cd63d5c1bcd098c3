"""The structure diagrams: each draws, names shapes from its arguments, renders the same twice, refuses bad sizes."""

import io

import matplotlib

matplotlib.use("Agg")  # no window, no display needed

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from attn_course import diagrams, masks
from attn_course.kernels import KERNEL_TILE
from attn_course.layouts import FULL, PARTIAL, SKIP, block_cover, plan_from_cover


@pytest.fixture(autouse=True)
def close_figures():
    """Every test starts without figures and leaves none open."""
    plt.close("all")
    yield
    plt.close("all")


def texts(fig: Figure) -> str:
    """All the text of a figure (title, labels, legend), joined by newlines."""
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60, metadata={"Software": None})
    return buffer.getvalue()


# Each case: the function, arguments with unique sizes, strings that must appear, and a
# second set of arguments whose strings differ (the labels come from the arguments).
CASES = {
    "weighted_sum": (
        {"S": 5, "dv": 3},
        ["(S, dv) = (5, 3)", "(1, S) = (1, 5)", "(1, dv) = (1, 3)"],
        {"S": 7, "dv": 2},
        ["(S, dv) = (7, 2)", "(1, S) = (1, 7)", "(1, dv) = (1, 2)"],
    ),
    "qkv_flow": (
        {"L": 5, "S": 7, "d_model": 8, "d": 4, "dv": 6},
        [
            "(L, d) = (5, 4)",
            "(S, d) = (7, 4)",
            "(d, S) = (4, 7)",
            "(L, S) = (5, 7)",
            "(S, dv) = (7, 6)",
            "(L, dv) = (5, 6)",
            "K^T",
            "W_q",
            "= (8, 6)",
        ],
        {"L": 3, "S": 3, "d_model": 10, "d": 2, "dv": 9},
        ["(L, d) = (3, 2)", "(d, S) = (2, 3)", "(L, S) = (3, 3)", "(L, dv) = (3, 9)", "= (10, 9)"],
    ),
    "head_split": (
        {"L": 5, "num_heads": 3, "head_dim": 2},
        ["(L, h·d_head) = (5, 6)", "(h, L, d_head) = (3, 5, 2)", "(L, h, d_head) = (5, 3, 2)", "WRONG", "head 2"],
        {"L": 4, "num_heads": 2, "head_dim": 3},
        ["(L, h·d_head) = (4, 6)", "(h, L, d_head) = (2, 4, 3)", "(L, h, d_head) = (4, 2, 3)"],
    ),
    "pre_post_ln": (
        {"L": 5, "d_model": 12, "d_ff": 48, "num_heads": 3},
        ["(L, d_model) = (5, 12)", "(5, 12) → (5, 48) → (5, 12)", "h = 3 heads of 4", "pre-LN", "post-LN", "LayerNorm"],
        {"L": 7, "d_model": 8, "d_ff": 20, "num_heads": 2},
        ["(L, d_model) = (7, 8)", "(7, 8) → (7, 20) → (7, 8)", "h = 2 heads of 4"],
    ),
    "encoder_decoder": (
        {"B": 3, "S": 6, "T": 4, "d_model": 8},
        [
            "(B, 1, S) = (3, 1, 6)",
            "(B, T, T) = (3, 4, 4)",
            "(B, T, S) = (3, 4, 6)",
            "(B, S, d_model) = (3, 6, 8)",
            "cross-attention",
        ],
        {"B": 2, "S": 5, "T": 7, "d_model": 16},
        ["(B, 1, S) = (2, 1, 5)", "(B, T, T) = (2, 7, 7)", "(B, T, S) = (2, 7, 5)", "(B, T, d_model) = (2, 7, 16)"],
    ),
    "online_softmax_tiles": (
        {"R": 3, "S": 10, "key_tile": 4, "dv": 5},
        [
            "(R, S) = (3, 10)",
            "(R, 1) = (3, 1)",
            "(R, dv) = (3, 5)",
            "running max",
            "running sum",
            "out = a / \N{SCRIPT SMALL L}",
        ],
        {"R": 2, "S": 9, "key_tile": 3, "dv": 4},
        ["(R, S) = (2, 9)", "(R, 1) = (2, 1)", "(R, dv) = (2, 4)"],
    ),
    "block_sparse_tiles": (
        {"L": 20, "S": 24, "block": 4, "window": 3},
        ["(L, S) = (20, 24)", "tiles of 4 x 4", "(ceil(L/block), ceil(S/block)) = (5, 6)", "|i - j| <= 3"],
        {"L": 12, "S": 12, "block": 3, "window": 1},
        ["(L, S) = (12, 12)", "tiles of 3 x 3", "(ceil(L/block), ceil(S/block)) = (4, 4)", "|i - j| <= 1"],
    ),
    "gpu_kernel_schedule": (
        {"L": 256, "S": 320, "batch_heads": 3, "head_dim": 64},
        ["(ceil(L/64), B·h) = (4, 3)", "(S, d) = (320, 64)", "128 threads", "4 warps", "rows 48..63", "float16"],
        {"L": 128, "S": 128, "batch_heads": 5, "head_dim": 128, "dtype": "float32"},
        ["(ceil(L/64), B·h) = (2, 5)", "(S, d) = (128, 128)", "256 threads", "8 warps", "rows 56..63", "float32"],
    ),
    "kv_cache": (
        {"prompt": 4, "new_tokens": 3, "d": 5, "dv": 6},
        ["(t, d) = (4, 5)", "(t, d) = (7, 5)", "V (7, 6)", "q (1, 5)", "scores (1, 7)"],
        {"prompt": 6, "new_tokens": 2, "d": 3, "dv": 2, "window": 4, "sinks": 1},
        ["(t, d) = (5, 3)", "V (5, 2)", "scores (1, 5)", "evicted", "sliding window of 4, 1 sink"],
    ),
    "backward_saved": (
        {"L": 5, "S": 7, "d": 4, "dv": 3},
        [
            "(L, S) = (5, 7)",
            "(L, dv) = (5, 3)",
            "(L,) = (5,)",
            "(S, dv) = (7, 3)",
            "(L, d) = (5, 4)",
            "(S, d) = (7, 4)",
            "35 numbers (grows with L·S)",
            "20 numbers (grows with L only)",
            "dQ",
            "dK",
            "dV",
            "dS",
        ],
        {"L": 3, "S": 9, "d": 2, "dv": 6},
        ["(L, S) = (3, 9)", "(L, dv) = (3, 6)", "(L,) = (3,)", "(S, d) = (9, 2)", "27 numbers", "21 numbers"],
    ),
}


def test_every_public_diagram_is_tested():
    assert sorted(CASES) == sorted(diagrams.__all__)


@pytest.mark.parametrize("name", sorted(CASES))
def test_draws_a_titled_figure_with_its_shape_labels(name):
    function = getattr(diagrams, name)
    arguments, expected, other_arguments, other_expected = CASES[name]
    fig = function(**arguments)
    assert isinstance(fig, Figure)
    assert len(fig.axes) >= 1
    assert fig.get_suptitle().strip() != ""
    found = texts(fig)
    missing = [label for label in expected if label not in found]
    assert missing == [], f"{name}{arguments} lacks {missing}"
    other = texts(function(**other_arguments))
    assert [label for label in other_expected if label not in other] == []
    # the labels follow the arguments: the first case's shape labels are not in the second picture
    shape_labels = [label for label in expected if label.endswith(")") and "=" in label]
    assert shape_labels, name
    assert any(label not in other for label in shape_labels)


@pytest.mark.parametrize("name", sorted(CASES))
def test_renders_the_same_way_twice(name):
    function = getattr(diagrams, name)
    arguments = CASES[name][0]
    first, second = png_bytes(function(**arguments)), png_bytes(function(**arguments))
    assert first == second


@pytest.mark.parametrize("name", sorted(CASES))
def test_is_readable_at_lesson_width(name):
    fig = getattr(diagrams, name)(**CASES[name][0])
    width, height = fig.get_size_inches()
    assert 9 <= width <= 10.5
    assert 2 <= height <= 8
    # every text artist lies inside the figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    for text in fig.findobj(Text):
        if not text.get_text() or not text.get_visible():
            continue
        box = text.get_window_extent(renderer)
        assert box.x0 >= figure_box.x0 - 1 and box.x1 <= figure_box.x1 + 1, (name, text.get_text())
        assert box.y0 >= figure_box.y0 - 1 and box.y1 <= figure_box.y1 + 1, (name, text.get_text())


NON_POSITIVE = [
    ("weighted_sum", "S"),
    ("weighted_sum", "dv"),
    ("qkv_flow", "L"),
    ("qkv_flow", "S"),
    ("qkv_flow", "d_model"),
    ("qkv_flow", "d"),
    ("qkv_flow", "dv"),
    ("head_split", "L"),
    ("head_split", "num_heads"),
    ("head_split", "head_dim"),
    ("pre_post_ln", "L"),
    ("pre_post_ln", "d_model"),
    ("pre_post_ln", "d_ff"),
    ("pre_post_ln", "num_heads"),
    ("encoder_decoder", "B"),
    ("encoder_decoder", "S"),
    ("encoder_decoder", "T"),
    ("encoder_decoder", "d_model"),
    ("online_softmax_tiles", "R"),
    ("online_softmax_tiles", "S"),
    ("online_softmax_tiles", "key_tile"),
    ("online_softmax_tiles", "dv"),
    ("block_sparse_tiles", "L"),
    ("block_sparse_tiles", "S"),
    ("block_sparse_tiles", "block"),
    ("gpu_kernel_schedule", "L"),
    ("gpu_kernel_schedule", "S"),
    ("gpu_kernel_schedule", "batch_heads"),
    ("gpu_kernel_schedule", "head_dim"),
    ("kv_cache", "prompt"),
    ("kv_cache", "new_tokens"),
    ("kv_cache", "d"),
    ("kv_cache", "dv"),
    ("kv_cache", "window"),
    ("backward_saved", "L"),
    ("backward_saved", "S"),
    ("backward_saved", "d"),
    ("backward_saved", "dv"),
]


@pytest.mark.parametrize(("name", "argument"), NON_POSITIVE)
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes_are_refused_naming_the_argument(name, argument, value):
    arguments = dict(CASES[name][0]) | {argument: value}
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        getattr(diagrams, name)(**arguments)
    assert plt.get_fignums() == []  # refused before drawing


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("weighted_sum", {"S": 13}, "S=13 is too large"),
        ("weighted_sum", {"S": 3, "weights": [0.5, 0.5]}, r"weights must have shape \(S,\) = \(3,\)"),
        ("weighted_sum", {"S": 2, "weights": [0.7, 0.7]}, "sum to 1"),
        ("head_split", {"num_heads": 4, "head_dim": 5}, "num_heads \\* head_dim = 20"),
        ("pre_post_ln", {"d_model": 10, "num_heads": 3}, "num_heads must divide d_model"),
        ("encoder_decoder", {"B": 2, "S": 4, "source_lengths": [4, 5]}, "source_lengths must be at most S=4"),
        ("encoder_decoder", {"B": 2, "source_lengths": [3]}, "one length per batch element"),
        ("encoder_decoder", {"B": 2, "example": 2}, "example must be a batch index below B=2"),
        ("online_softmax_tiles", {"S": 8, "key_tile": 4, "current": 2}, "current must be a tile index below"),
        ("block_sparse_tiles", {"L": 8, "block": 4, "block_row": 2}, "block_row must be below"),
        ("block_sparse_tiles", {"window": -1}, "window must be >= 0"),
        ("gpu_kernel_schedule", {"dtype": "bfloat16"}, "dtype must be 'float16' or 'float32'"),
        ("kv_cache", {"sinks": -1}, "sinks must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(name, arguments, message):
    with pytest.raises(ValueError, match=message):
        getattr(diagrams, name)(**arguments)


def test_sizes_must_be_integers():
    with pytest.raises(TypeError, match="L must be an integer"):
        diagrams.qkv_flow(L=2.5)


def test_weighted_sum_draws_the_given_weights():
    fig = diagrams.weighted_sum(S=3, dv=2, weights=[0.2, 0.5, 0.3])
    found = texts(fig)
    assert "0.20" in found and "0.50" in found and "0.30" in found
    one_hot = texts(diagrams.weighted_sum(S=3, dv=2, weights=[0.0, 1.0, 0.0]))
    assert "1.00" in one_hot and "0.50" not in one_hot


def test_block_sparse_tiles_counts_the_packages_plan():
    L, S, block, window = 20, 24, 4, 3
    cover = block_cover(masks.sliding_window(window), block, L, S)
    plan = plan_from_cover(cover.some, cover.every)
    counts = {state: int((plan == state).sum()) for state in (SKIP, PARTIAL, FULL)}
    found = texts(diagrams.block_sparse_tiles(L=L, S=S, block=block, window=window))
    assert f"tiles: {counts[FULL]} full, {counts[PARTIAL]} partial, {counts[SKIP]} skipped of {plan.size}" in found
    letters = found.split("\n")
    assert letters.count("F") == counts[FULL]
    assert letters.count("P") == counts[PARTIAL]


def test_block_sparse_tiles_accepts_an_array_mask():
    mask = masks.causal_mask(12)
    found = texts(diagrams.block_sparse_tiles(L=12, block=4, mask=mask))
    # causal with tiles of 4: 3 diagonal tiles partial, 3 below full, 3 above skipped
    assert "tiles: 3 full, 3 partial, 3 skipped of 9" in found


def test_gpu_kernel_schedule_reads_the_kernel_numbers():
    for dtype in ("float16", "float32"):
        found = texts(diagrams.gpu_kernel_schedule(L=4 * KERNEL_TILE, dtype=dtype))
        assert f"rows 0..{KERNEL_TILE // (4 if dtype == 'float16' else 8) - 1}" in found


def test_gpu_kernel_schedule_causal_skips_the_tiles_above_the_diagonal():
    found = texts(diagrams.gpu_kernel_schedule(L=5 * KERNEL_TILE, is_causal=True))
    assert "visits key tiles 0..2; 2 skipped" in found


def test_kv_cache_window_keeps_sinks_and_the_last_positions():
    found = texts(diagrams.kv_cache(prompt=6, new_tokens=3, d=4, dv=4, window=3, sinks=2))
    # after the last token: 9 positions, kept = 2 sinks + 3 in the window
    assert "cache K (t, d) = (5, 4)" in found
    assert "(t, d) = (9, 4)" not in found
    unbounded = texts(diagrams.kv_cache(prompt=6, new_tokens=3, d=4, dv=4))
    assert "cache K (t, d) = (9, 4)" in unbounded


def test_head_split_marks_exactly_the_misplaced_cells():
    L, h, dh = 4, 3, 2
    flat = np.arange(L * h * dh).reshape(L, h * dh)
    wrong = flat.reshape(h, L, dh)
    position, head = flat // (h * dh), (flat % (h * dh)) // dh
    misplaced = sum(
        int(head.flat[i] != k or position.flat[i] != row) for k in range(h) for (row, _), i in np.ndenumerate(wrong[k])
    )
    fig = diagrams.head_split(L=L, num_heads=h, head_dim=dh)
    red = [
        p
        for p in fig.axes[0].patches
        if isinstance(p, Rectangle)
        and not p.get_fill()
        and p.get_edgecolor()[:3] == matplotlib.colors.to_rgb(diagrams.HIGHLIGHT)
    ]
    assert misplaced > 0
    assert len(red) == misplaced
