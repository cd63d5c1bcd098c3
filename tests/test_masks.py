"""Every mask pattern against its paper's definition, written as plain loops over (i, j)."""

import math
import tracemalloc

import numpy as np
import pytest
import torch

from attn_course import masks
from attn_course.backend import to_numpy
from tests.support import BACKENDS


def from_definition(n, allowed):
    """The (n, n) mask whose entry [i, j] is allowed(i, j), one pair at a time."""
    return np.array([[bool(allowed(i, j)) for j in range(n)] for i in range(n)])


SIZES = [1, 7, 13]

# (array form, predicate form, keyword arguments, the paper's rule for one pair)
PATTERNS = [
    ("causal", {}, lambda i, j: j <= i),
    ("sliding_window", {"window": 2}, lambda i, j: abs(i - j) <= 2),
    ("sliding_window", {"window": 0}, lambda i, j: i == j),
    ("sliding_window", {"window": 3, "causal": True}, lambda i, j: 0 <= i - j <= 3),
    ("dilated_window", {"window": 2, "dilation": 3}, lambda i, j: abs(i - j) <= 6 and (i - j) % 3 == 0),
    ("dilated_window", {"window": 2, "dilation": 1}, lambda i, j: abs(i - j) <= 2),
    ("dilated_window", {"window": 1, "dilation": 2, "causal": True}, lambda i, j: i - j in (0, 2)),
    ("strided", {"stride": 3}, lambda i, j: j <= i and (i - j < 3 or (i - j) % 3 == 0)),
    ("strided", {"stride": 1}, lambda i, j: j <= i),
    ("fixed", {"block": 4, "c": 1}, lambda i, j: j <= i and (j // 4 == i // 4 or j % 4 >= 3)),
    ("fixed", {"block": 3, "c": 2}, lambda i, j: j <= i and (j // 3 == i // 3 or j % 3 >= 1)),
]


def pattern_id(pattern):
    name, kwargs, _ = pattern
    return name + "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("pattern", PATTERNS, ids=pattern_id)
def test_pattern_matches_paper_definition(n, pattern):
    name, kwargs, rule = pattern
    expected = from_definition(n, rule)
    array = getattr(masks, name + "_mask")(n, **kwargs)
    assert array.dtype == bool and array.shape == (n, n)
    np.testing.assert_array_equal(array, expected)
    predicate = getattr(masks, name)(**kwargs)
    np.testing.assert_array_equal(masks.materialize(predicate, n), expected)
    # the predicate itself, on index arrays of another shape (a column of queries against one key row)
    np.testing.assert_array_equal(predicate(np.arange(n)[:, None], np.arange(n)), expected)


@pytest.mark.parametrize("n", SIZES)
def test_global_and_longformer(n):
    listed = [0, n // 2]
    in_list = lambda p: p in listed
    np.testing.assert_array_equal(
        masks.global_mask(n, listed), from_definition(n, lambda i, j: in_list(i) or in_list(j))
    )
    np.testing.assert_array_equal(
        masks.longformer_mask(n, 1, listed),
        from_definition(n, lambda i, j: abs(i - j) <= 1 or in_list(i) or in_list(j)),
    )
    np.testing.assert_array_equal(
        masks.materialize(masks.longformer(1, listed), n), masks.longformer_mask(n, 1, listed)
    )
    np.testing.assert_array_equal(masks.global_mask(n, []), np.zeros((n, n), dtype=bool))


@pytest.mark.parametrize(("n", "block"), [(16, 2), (23, 4), (24, 3)])
def test_bigbird_block_structure(n, block):
    num_window, num_global, num_random = 3, 1, 2
    mask = masks.bigbird_mask(n, block, num_window, num_global, num_random, seed=5)
    blocks = math.ceil(n / block)
    layout = masks.block_layout(mask, block)
    # every token pair in a block has the block's value: the pattern is made of whole blocks
    np.testing.assert_array_equal(mask, np.repeat(np.repeat(layout, block, 0), block, 1)[:n, :n])
    for row in range(blocks):
        window = {c for c in range(blocks) if abs(row - c) <= num_window // 2}
        seen = set(np.flatnonzero(layout[row]))
        if row < num_global:
            assert seen == set(range(blocks)), "a global block row sees every block"
            continue
        assert window | set(range(num_global)) <= seen, "window and global blocks are always seen"
        randoms = seen - window - set(range(num_global))
        available = blocks - len(window | set(range(num_global)))
        assert len(randoms) == min(num_random, available)
    assert layout[:, :num_global].all(), "every block row sees the global blocks"


def test_bigbird_is_seeded():
    first = masks.bigbird_mask(64, 4, 3, 1, 2, seed=1)
    np.testing.assert_array_equal(first, masks.bigbird_mask(64, 4, 3, 1, 2, seed=1))
    assert not np.array_equal(first, masks.bigbird_mask(64, 4, 3, 1, 2, seed=2))
    generator_made = masks.bigbird_mask(64, 4, 3, 1, 2, seed=np.random.default_rng(1))
    np.testing.assert_array_equal(first, generator_made)


def test_padding_mask():
    mask = masks.padding_mask([2, 5, 0], 5)
    assert mask.shape == (3, 1, 1, 5)
    expected = np.array([[j < length for j in range(5)] for length in (2, 5, 0)])
    np.testing.assert_array_equal(mask[:, 0, 0], expected)
    assert masks.padding_mask(torch.tensor([1, 2]), 3).shape == (2, 1, 1, 3)


def test_predicates_combine():
    n = 11
    both = masks.causal() & masks.sliding_window(2)
    np.testing.assert_array_equal(masks.materialize(both, n), masks.sliding_window_mask(n, 2, causal=True))
    either = masks.strided(4) | masks.sliding_window(1)
    np.testing.assert_array_equal(
        masks.materialize(either, n), masks.strided_mask(n, 4) | masks.sliding_window_mask(n, 1)
    )
    np.testing.assert_array_equal(masks.materialize(~masks.causal(), n), ~masks.causal_mask(n))
    assert "causal" in repr(both) and "sliding_window" in repr(both)


def test_materialize_cross_shapes_and_libraries():
    rect = masks.materialize(masks.causal(), 3, 5)
    np.testing.assert_array_equal(rect, np.tril(np.ones((3, 5), dtype=bool)))
    as_torch = masks.causal_mask(4, like=torch.zeros(1))
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.bool
    np.testing.assert_array_equal(as_torch.numpy(), masks.causal_mask(4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_array_forms_on_backend(backend):
    mask = masks.longformer_mask(9, 2, [0], like=backend)
    assert type(mask).__module__.split(".")[0] == backend
    np.testing.assert_array_equal(to_numpy(mask), masks.longformer_mask(9, 2, [0]))


def layout_by_loops(mask, block):
    L, S = mask.shape
    return np.array(
        [[mask[r : r + block, c : c + block].any() for c in range(0, S, block)] for r in range(0, L, block)]
    )


LAYOUT_PREDICATES = [
    masks.causal(),
    masks.sliding_window(3),
    masks.dilated_window(2, 3, causal=True),
    masks.strided(5),
    masks.fixed(4, 1),
    masks.longformer(2, [0, 9]),
    masks.causal() & masks.sliding_window(4),
]


@pytest.mark.parametrize(("L", "S"), [(13, 13), (17, 11), (5, 19)])
@pytest.mark.parametrize("block", [1, 3, 4, 7])
@pytest.mark.parametrize("predicate", LAYOUT_PREDICATES, ids=repr)
def test_block_layout_matches_block_by_block_any(L, S, block, predicate):
    mask = masks.materialize(predicate, L, S)
    expected = layout_by_loops(mask, block)
    np.testing.assert_array_equal(masks.block_layout(mask, block), expected)
    np.testing.assert_array_equal(masks.block_layout(predicate, block, L, S), expected)


def test_block_layout_of_random_and_batched_arrays(rng):
    mask = rng.random((2, 11, 9)) < 0.1
    layout = masks.block_layout(mask, 4)
    assert layout.shape == (2, 3, 3)
    for b in range(2):
        np.testing.assert_array_equal(layout[b], layout_by_loops(mask[b], 4))


@pytest.mark.parametrize("predicate", [masks.sliding_window(256), masks.fixed(64, 8)], ids=repr)
def test_block_layout_of_a_predicate_never_builds_the_full_mask(predicate):
    n, block = 16_384, 64
    full_mask_bytes = n * n  # one byte per bool
    masks.block_layout(predicate, block, 256, 256)  # warm up: first calls allocate caches of their own
    tracemalloc.start()
    try:
        layout = masks.block_layout(predicate, block, n, n)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert layout.shape == (n // block, n // block)
    assert peak < full_mask_bytes / 40, (
        f"peak {peak / 2**20:.1f} MiB: the (L, S) mask would be {full_mask_bytes / 2**20:.0f} MiB"
    )


BAD = [
    (masks.causal_mask, (0,), {}, ValueError, "n must be >= 1"),
    (masks.causal_mask, (2.5,), {}, TypeError, "n must be an integer"),
    (masks.sliding_window_mask, (5, -1), {}, ValueError, "window must be >= 0"),
    (masks.sliding_window_mask, (5, 2), {"causal": "no"}, TypeError, "causal must be True or False"),
    (masks.dilated_window_mask, (5, 2, 0), {}, ValueError, "dilation must be >= 1"),
    (masks.strided_mask, (5, 0), {}, ValueError, "stride must be >= 1"),
    (masks.fixed_mask, (5, 0, 1), {}, ValueError, "block must be >= 1"),
    (masks.fixed_mask, (8, 4, 5), {}, ValueError, "c .* must be <= block"),
    (masks.fixed_mask, (8, 4, 0), {}, ValueError, "c must be >= 1"),
    (masks.global_mask, (5, [1, 5]), {}, ValueError, "global_idx must hold positions < n=5"),
    (masks.global_mask, (5, [-1]), {}, ValueError, "global_idx must hold positions >= 0"),
    (masks.global_mask, (5, [[1]]), {}, ValueError, "global_idx must be a 1-d list"),
    (masks.longformer_mask, (5, 1, [0.5]), {}, TypeError, "global_idx must hold integer positions"),
    (masks.bigbird_mask, (16, 2, 2, 1, 1), {}, ValueError, "num_window_blocks must be odd"),
    (masks.bigbird_mask, (16, 4, 3, 5, 1), {}, ValueError, "num_global_blocks=5 exceeds the 4 blocks"),
    (masks.bigbird_mask, (16, 4, 3, 1, -1), {}, ValueError, "num_random_blocks must be >= 0"),
    (masks.bigbird_mask, (16, 4, 3, 1, 1), {"seed": "x"}, TypeError, "seed must be an integer"),
    (masks.padding_mask, ([2, 6], 5), {}, ValueError, "lengths must be <= n=5"),
    (masks.padding_mask, ([-1], 5), {}, ValueError, "lengths must be >= 0"),
    (masks.padding_mask, ([1.5], 5), {}, TypeError, "lengths must hold integers"),
    (masks.padding_mask, ([[1]], 5), {}, ValueError, "lengths must be 1-d"),
    (masks.materialize, ("causal", 4), {}, TypeError, "mask_fn must be a predicate"),
    (masks.materialize, (lambda i, j: i - j, 4), {}, TypeError, "mask_fn must return booleans"),
    (masks.materialize, (masks.causal(), 4, 0), {}, ValueError, "S must be >= 1"),
    (masks.causal_mask, (4,), {"like": "jax"}, ValueError, "like must be an array, 'numpy', 'cupy' or None"),
    (masks.block_layout, (masks.causal(), 4), {}, ValueError, "needs the sequence lengths L and S"),
    (masks.block_layout, (np.ones((4, 4)), 2), {}, TypeError, "mask must be boolean"),
    (masks.block_layout, (np.ones(4, dtype=bool), 2), {}, ValueError, "mask must have at least 2 dimensions"),
    (masks.block_layout, (np.ones((4, 4), dtype=bool), 0), {}, ValueError, "block must be >= 1"),
    (masks.block_layout, (np.ones((4, 4), dtype=bool), 2, 5, 4), {}, ValueError, r"L=5, S=4 do not match the mask"),
]


@pytest.mark.parametrize(
    ("function", "args", "kwargs", "error", "match"), BAD, ids=lambda x: getattr(x, "__name__", None)
)
def test_bad_input(function, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        function(*args, **kwargs)


ARRAY_FORMS = {
    "causal_mask": {},
    "sliding_window_mask": {"window": 1},
    "dilated_window_mask": {"window": 1, "dilation": 2},
    "strided_mask": {"stride": 2},
    "fixed_mask": {"block": 2, "c": 1},
    "global_mask": {"global_idx": [0]},
    "longformer_mask": {"window": 1, "global_idx": [0]},
    "bigbird_mask": {"block": 2, "num_window_blocks": 1, "num_global_blocks": 1, "num_random_blocks": 0},
}


@pytest.mark.parametrize("name", sorted(ARRAY_FORMS))
@pytest.mark.parametrize(
    ("n", "like", "error", "match"),
    [
        (0, None, ValueError, "n must be >= 1; got 0"),
        (-3, None, ValueError, "n must be >= 1; got -3"),
        (2.5, None, TypeError, r"n must be an integer; got 2\.5"),
        ("8", None, TypeError, "n must be an integer; got '8'"),
        (True, None, TypeError, "n must be an integer; got True"),
        (8, "jax", ValueError, "like must be an array, 'numpy', 'cupy' or None; got 'jax'"),
        (8, [1, 2], TypeError, "like must be an array, 'numpy', 'cupy' or None; got list"),
    ],
)
def test_every_array_form_refuses_bad_sizes_and_libraries(name, n, like, error, match):
    with pytest.raises(error, match=match):
        getattr(masks, name)(n, **ARRAY_FORMS[name], like=like)


# --------------------------------------------------------------------------- causal alignment when L != S (round 2)


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")  # torch's note for L > S
@pytest.mark.parametrize(("L", "S"), [(3, 5), (5, 3), (1, 7), (4, 4), (6, 2)])
def test_bottom_right_causal_matches_torch_causal_lower_right(L, S):
    from torch.nn.attention.bias import causal_lower_right

    expected = causal_lower_right(L, S)._materialize().numpy()  # (L, S) booleans: True = may attend
    assert np.array_equal(masks.causal_mask(L, S, align="bottom_right"), expected)
    assert np.array_equal(masks.materialize(masks.causal("bottom_right", L=L, S=S), L, S), expected)
    from_definition_rect = np.array([[j <= i + (S - L) for j in range(S)] for i in range(L)])
    assert np.array_equal(expected, from_definition_rect)


@pytest.mark.parametrize(("L", "S"), [(3, 5), (5, 3), (4, 4)])
def test_top_left_causal_matches_torch_is_causal_and_square_forms_agree(L, S):
    from torch.nn.attention.bias import causal_upper_left

    expected = causal_upper_left(L, S)._materialize().numpy()
    assert np.array_equal(masks.causal_mask(L, S), expected)
    assert np.array_equal(masks.causal_mask(L, S, align="top_left"), expected)
    assert np.array_equal(masks.causal_mask(L), masks.causal_mask(L, L, align="bottom_right"))


def test_bottom_right_is_the_last_rows_of_the_square_mask():
    """t new queries after S - t cached keys: the last t rows of the (S, S) causal mask."""
    S = 7
    for t in range(1, S + 1):
        assert np.array_equal(masks.causal_mask(t, S, align="bottom_right"), masks.causal_mask(S)[S - t :])
        assert not np.array_equal(masks.causal_mask(t, S), masks.causal_mask(S)[S - t :]) or t == S


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: masks.causal("bottom_right"), ValueError, r"shifts the diagonal by S - L: pass"),
        (lambda: masks.causal("bottom"), ValueError, "align must be 'top_left' or 'bottom_right'; got 'bottom'"),
        (lambda: masks.causal_mask(3, 5, align="lower_right"), ValueError, "align must be 'top_left' or"),
        (lambda: masks.causal_mask(3, 0), ValueError, "S must be >= 1; got 0"),
        (lambda: masks.causal_mask(3, 5.0), TypeError, "S must be an integer"),
        (lambda: masks.causal("bottom_right", L=0, S=3), ValueError, "L must be >= 1; got 0"),
    ],
)
def test_causal_alignment_refuses_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
