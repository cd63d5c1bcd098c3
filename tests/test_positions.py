"""sinusoidal_encoding against explicit loops, apply_rope against complex multiplication (float64 references)."""

import math

import numpy as np
import pytest

from attn_course.backend import asarray, to_numpy
from attn_course.positions import apply_rope, sinusoidal_encoding
from tests.support import BACKENDS, FLOAT_DTYPES, TOLERANCES, assert_close, random_array, same_library

N, D = 7, 10  # positions and features of the encodings: unique sizes
L, D_ROPE = 5, 6  # sequence length and (even) feature size for RoPE
BATCH_SHAPES = [(), (2,), (2, 3)]


def sinusoidal_by_loops(n, d):
    table = np.zeros((n, d))
    for pos in range(n):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            table[pos, 2 * i] = math.sin(angle)
            table[pos, 2 * i + 1] = math.cos(angle)
    return table


def rope_by_complex(x, positions=None, base=10000.0):
    """RoPE as complex multiplication: pair (x_2i, x_2i+1) is z_i = x_2i + i x_2i+1, turned by exp(i pos theta_i)."""
    x = np.asarray(to_numpy(x), dtype=np.float64)
    length, d = x.shape[-2:]
    positions = np.arange(length) if positions is None else np.asarray(to_numpy(positions), dtype=np.float64)
    theta = base ** (-np.arange(d // 2) * 2 / d)  # (d/2,)
    z = x[..., 0::2] + 1j * x[..., 1::2]  # (..., L, d/2)
    turned = z * np.exp(1j * positions[..., None] * theta)
    out = np.empty(np.broadcast_shapes(x.shape, (*turned.shape[:-1], d)))
    out[..., 0::2] = turned.real
    out[..., 1::2] = turned.imag
    return out


# --------------------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sinusoidal_matches_formula(backend, dtype):
    table = sinusoidal_encoding(N, D, dtype=np.dtype(dtype).name, like=backend)
    assert same_library(table, asarray(np.zeros(1), backend))
    assert table.shape == (N, D)
    assert_close(table, sinusoidal_by_loops(N, D), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sinusoidal_defaults_and_like_array(rng, backend):
    like = random_array(rng, (2,), np.float64, backend)
    table = sinusoidal_encoding(N, D, like=like)
    assert same_library(table, like)
    assert_close(table, sinusoidal_by_loops(N, D), np.float32)  # float32 by default
    np.testing.assert_array_equal(to_numpy(table)[0], np.tile([0.0, 1.0], D // 2))  # position 0: sin 0, cos 0


def test_sinusoidal_accepts_dtype_objects():
    assert sinusoidal_encoding(N, D, dtype=np.float64).dtype == np.float64
    assert sinusoidal_encoding(N, D, dtype=np.dtype("float16")).dtype == np.float16


def test_sinusoidal_long_sequence_stays_bounded_and_distinct():
    table = sinusoidal_encoding(2048, 64, dtype="float64")
    assert np.abs(table).max() <= 1.0
    rows = {row.tobytes() for row in np.round(table, 6)}
    assert len(rows) == 2048  # every position gets its own code
    assert_close(table[-3:], sinusoidal_by_loops(2048, 64)[-3:])


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((0, D), {}, ValueError, "n must be >= 1; got 0"),
        ((-3, D), {}, ValueError, "n must be >= 1; got -3"),
        ((N, 9), {}, ValueError, "d must be even.*d=9"),
        ((N, 0), {}, ValueError, "d must be >= 1"),
        ((N, 2.5), {}, TypeError, "d must be an integer"),
        ((7.0, D), {}, TypeError, "n must be an integer"),
        ((N, D), {"dtype": "int32"}, TypeError, "dtype must be one of float16, float32, float64"),
        ((N, D), {"dtype": np.int64}, TypeError, "dtype must be one of"),
        ((N, D), {"like": "torch"}, ValueError, "like must be an array"),
    ],
)
def test_sinusoidal_refuses_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        sinusoidal_encoding(*args, **kwargs)


# --------------------------------------------------------------------------- RoPE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_rope_matches_complex_rotation(rng, backend, dtype, batch):
    x = random_array(rng, (*batch, L, D_ROPE), dtype, backend)
    rotated = apply_rope(x)
    assert same_library(rotated, x)
    assert_close(rotated, rope_by_complex(x), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_positions_argument(rng, backend):
    x = random_array(rng, (2, L, D_ROPE), np.float64, backend)
    shifted = np.arange(L) + 11  # integer positions, e.g. the continuation of a cached prefix
    out = apply_rope(x, positions=asarray(shifted, backend))
    assert same_library(out, x)
    assert_close(out, rope_by_complex(x, shifted))
    per_sequence = rng.uniform(-4, 40, size=(2, L))  # real-valued positions, one row per sequence
    assert_close(apply_rope(x, positions=asarray(per_sequence, backend)), rope_by_complex(x, per_sequence))
    assert_close(apply_rope(x, positions=asarray(np.arange(L), backend)), apply_rope(x))  # the default


def test_rope_base(rng):
    x = random_array(rng, (L, D_ROPE), np.float64)
    assert_close(apply_rope(x, base=500.0), rope_by_complex(x, base=500.0))
    assert not np.allclose(apply_rope(x, base=500.0), apply_rope(x))


def test_rope_position_zero_is_identity_and_norms_are_kept(rng):
    x = random_array(rng, (2, L, D_ROPE), np.float64)
    rotated = apply_rope(x)
    assert_close(rotated[:, 0], x[:, 0], what="position 0")
    assert not np.allclose(rotated[:, 1:], x[:, 1:])  # later positions do move
    assert_close(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), what="row norms")
    x32 = random_array(rng, (2, L, D_ROPE), np.float32)
    norms = np.linalg.norm(apply_rope(x32).astype(np.float64), axis=-1)
    assert_close(norms.astype(np.float32), np.linalg.norm(x32.astype(np.float64), axis=-1), what="float32 norms")


def rotated_score(q, k, m, n):
    """rope(q at position m) . rope(k at position n) for single vectors q, k of shape (d,)."""
    q_m = apply_rope(q[None, :], positions=np.array([m]))[0]
    k_n = apply_rope(k[None, :], positions=np.array([n]))[0]
    return float(q_m @ k_n)


@pytest.mark.parametrize("offset", [0, 1, 3, -2])
def test_rope_scores_depend_only_on_the_offset(rng, offset):
    q, k = rng.standard_normal(D_ROPE), rng.standard_normal(D_ROPE)
    scores = [rotated_score(q, k, n + offset, n) for n in (0, 1, 5, 17, 250)]
    np.testing.assert_allclose(scores, scores[0], **TOLERANCES[np.dtype(np.float64)])
    others = [rotated_score(q, k, offset + other, 0) for other in (1, 2, 7)]  # other offsets give other scores
    assert all(abs(score - scores[0]) > 1e-6 for score in others)


def test_rope_relative_scores_with_real_positions(rng):
    q, k = rng.standard_normal(D_ROPE), rng.standard_normal(D_ROPE)
    first = rotated_score(q, k, 2.5, 1.0)
    np.testing.assert_allclose(rotated_score(q, k, 10.25, 8.75), first, rtol=1e-10)


@pytest.mark.parametrize(("dtype", "start"), [(np.float16, 300.3), (np.float32, 10000.37)])
def test_rope_angles_stay_accurate_at_far_positions(rng, dtype, start):
    """Angles rounded to the input's dtype would be off by far more than its tolerance here."""
    x = random_array(rng, (2, L, D_ROPE), dtype)
    positions = np.arange(L) + start
    out = apply_rope(x, positions=positions)
    assert_close(out, rope_by_complex(x, positions), dtype)


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (np.zeros((L, 5)), {}, ValueError, r"last axis of x \(d\) must be even.*\(5, 5\)"),
        (np.zeros((L, 0)), {}, ValueError, "last axis of x"),
        (np.zeros(D_ROPE), {}, ValueError, r"x must have at least 2 dimensions .*\(6,\)"),
        (np.zeros((L, D_ROPE), dtype=np.int64), {}, TypeError, "x must have a floating dtype"),
        (np.zeros((L, D_ROPE)), {"positions": np.arange(L + 1)}, ValueError, r"positions \(6,\) for x \(5, 6\)"),
        (np.zeros((L, D_ROPE)), {"positions": np.zeros((2, L))}, ValueError, r"positions \(2, 5\) for x \(5, 6\)"),
        (np.zeros((2, L, D_ROPE)), {"positions": np.zeros((3, L))}, ValueError, "positions must have L=5"),
        (np.zeros((L, D_ROPE)), {"positions": np.float64(2.0)}, ValueError, r"positions \(\) for x"),
        (np.zeros((L, D_ROPE)), {"positions": np.array([0, 1, np.nan, 3, 4])}, ValueError, "positions contains NaN"),
        (np.zeros((L, D_ROPE)), {"positions": np.ones(L, bool)}, TypeError, "positions must hold integers or real"),
        (np.zeros((L, D_ROPE)), {"base": 0.0}, ValueError, "base must be a finite number > 0"),
        (np.zeros((L, D_ROPE)), {"base": -10.0}, ValueError, "base must be a finite number > 0"),
        (np.zeros((L, D_ROPE)), {"base": math.inf}, ValueError, "base must be a finite number > 0"),
        (np.zeros((L, D_ROPE)), {"base": "10000"}, TypeError, "base must be a real number"),
    ],
)
def test_rope_refuses_bad_input(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        apply_rope(x, **kwargs)
