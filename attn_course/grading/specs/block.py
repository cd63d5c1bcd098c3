"""Exercises of lesson 09, the transformer block: ``solutions/09_the_transformer_block.ipynb``.

* ``layer_norm(x, gamma, beta, eps)``: normalise each token's features (the
  last axis) to mean 0 and variance 1 with the **biased** variance, then scale
  by ``gamma`` and shift by ``beta`` (``torch.nn.LayerNorm``'s formula);
* ``feed_forward(x, W1, b1, W2, b2)``: the block's MLP,
  ``gelu(x W1 + b1) W2 + b2``, with GELU in its tanh form;
* ``pre_ln_feed_forward(x, gamma, beta, W1, b1, W2, b2)``: the second half of a
  pre-LN block, ``x + feed_forward(layer_norm(x))`` with ``eps = 1e-5``;
* ``block_parameter_count(d_model, num_heads, mlp_ratio)`` (predict, then
  verify): the trainable numbers of one pre-LN block,
  ``2 * 2 d`` (two layer norms) ``+ 4 (d^2 + d)`` (W_q, W_k, W_v, W_o with
  biases) ``+ 2 r d^2 + r d + d`` (the MLP of width ``r d``), which does not
  depend on ``num_heads``. The notebook checks the formula against
  ``attn_course.torch_modules.TransformerBlock``.

The package computes these only inside its torch modules, so the references
are the plain formulas, in float64 at check time (the tanh form of GELU is
torch's ``nn.GELU(approximate="tanh")``; NumPy has no ``erf`` for the exact one).
"""

from __future__ import annotations

import math

import numpy as np

from ..judge import Case, Exercise, Invariant, Mistake, format_index, format_number
from .inputs import normal_array
from .secret_inputs import draw_int

__all__ = ["EXERCISES"]

LESSON = "09_the_transformer_block"
EPS = 1e-5


def _layer_norm(x, gamma, beta, eps, axis=-1, ddof=0, eps_inside=True):
    mean = x.mean(axis=axis, keepdims=True)
    centred = x - mean
    variance = (centred * centred).sum(axis=axis, keepdims=True) / (x.shape[axis] - ddof)
    spread = np.sqrt(variance + eps) if eps_inside else np.sqrt(variance) + eps
    return (centred / spread * gamma + beta).astype(x.dtype)


def _gelu(h):
    return 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))


def _feed_forward(x, W1, b1, W2, b2, activation=_gelu, after=lambda y: y):
    return after(activation(x @ W1 + b1) @ W2 + b2).astype(x.dtype)


# --------------------------------------------------------------------------- layer norm


def _norm_case(shape, eps=EPS, scale=3.0, offset=1.0, fresh=False, dtype=np.float32):
    """x of ``shape`` around ``offset`` with spread ``scale``; gamma near 1 and beta near 0 (1 and 0 if fresh)."""

    def make(rng):
        x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
        d = shape[-1]
        gamma = np.ones(d, dtype) if fresh else (1.0 + 0.3 * rng.standard_normal(d)).astype(dtype)
        beta = np.zeros(d, dtype) if fresh else (0.5 * rng.standard_normal(d)).astype(dtype)
        return x, gamma, beta, eps

    return make


def _constant_token(make, value=2.5):
    """``make``'s arguments with token 1 of x made constant (every feature ``value``): its variance is exactly 0."""

    def make_constant(rng):
        x, *rest = make(rng)
        x[..., 1, :] = value  # 2.5 and its sums are exact in float32: the mean is 2.5, the variance 0
        return (x, *rest)

    return make_constant


def normalised_mean_zero() -> Invariant:
    """Undoing gamma and beta leaves every token's features with mean 0."""

    def violation(outputs, args, tol):
        gamma = np.asarray(args[1], dtype=np.float64)
        beta = np.asarray(args[2], dtype=np.float64)
        means = ((outputs[0] - beta) / gamma).mean(axis=-1)
        bad = np.abs(means) > 10 * (tol["atol"] + tol["rtol"])
        if bool(np.any(bad)):
            first = np.argwhere(bad)[0]
            mean = format_number(means[tuple(first)])
            return f"token {format_index(first)} has mean {mean} after removing gamma and beta"
        return None

    return Invariant("each token's normalised features, (result - beta) / gamma, have mean 0", violation)


LAYER_NORM = Exercise(
    name="layer_norm",
    function="layer_norm",
    params=("x", "gamma", "beta", "eps"),
    lesson=LESSON,
    reference=_layer_norm,
    cases=(
        Case(
            "fresh_layer",
            "x: float32 (4, 6) around 1 with spread 3, gamma = 1, beta = 0, eps = 1e-5",
            _norm_case((4, 6), fresh=True),
            seed=191,
        ),
        Case(
            "batched",
            "x: float32 (2, 5, 12), gamma, beta: (12,), eps = 1e-5",
            _norm_case((2, 5, 12)),
            seed=192,
            points=2.0,
        ),
        Case(
            "large_eps",
            "x: float32 (3, 7) with small spread 0.2, gamma, beta: (7,), eps = 0.1",
            _norm_case((3, 7), eps=0.1, scale=0.2),
            seed=193,
        ),
        Case(
            "offset_inputs",
            "x: float32 (3, 8) around 10 with spread 1, gamma, beta: (8,), eps = 1e-5",
            _norm_case((3, 8), scale=1.0, offset=10.0),
            seed=194,
        ),
    ),
    # edge cases a learner never sees (the grader runs them after the public case of the same name passed)
    hidden={
        "fresh_layer": (
            Case(
                "constant_token",
                "x: float32 (3, 7) whose token 1 has every feature 2.5 (variance 0), gamma, beta: (7,), eps = 1e-5: "
                "that token becomes beta",
                _constant_token(_norm_case((3, 7))),
                seed=3042,
            ),
        ),
        "batched": (
            Case(
                "two_batch_axes_float64",
                "x: float64 (2, 3, 4, 5), gamma, beta: (5,), eps = 1e-5: two leading batch axes, float64 kept",
                _norm_case((2, 3, 4, 5), dtype=np.float64),
                seed=3043,
            ),
            Case(
                "one_token",
                "x: float32 (1, 9), gamma, beta: (9,), eps = 1e-5: a single token",
                _norm_case((1, 9)),
                seed=3044,
            ),
        ),
    },
    invariants=(normalised_mean_zero(),),
    mistakes=(
        Mistake(
            "unbiased variance",
            "Layer norm uses the biased variance, dividing by d (np.var's default, ddof=0; torch's "
            "unbiased=False), not by d - 1.",
            lambda x, gamma, beta, eps: _layer_norm(x, gamma, beta, eps, ddof=1),
        ),
        Mistake(
            "normalised over the wrong axis",
            "Each token is normalised over its own features, the last axis: mean and variance with axis=-1 and "
            "keepdims=True, not over the positions or the batch.",
            lambda x, gamma, beta, eps: _layer_norm(x, gamma, beta, eps, axis=0 if x.ndim == 2 else -2),
        ),
        Mistake(
            "eps outside the square root",
            "eps goes inside the square root: (x - mean) / sqrt(variance + eps), not / (sqrt(variance) + eps).",
            lambda x, gamma, beta, eps: _layer_norm(x, gamma, beta, eps, eps_inside=False),
        ),
        Mistake(
            "eps left out",
            "Add eps to the variance before the square root: (x - mean) / sqrt(variance + eps).",
            lambda x, gamma, beta, eps: _layer_norm(x, gamma, beta, 0.0),
        ),
        Mistake(
            "gamma and beta swapped",
            "gamma scales and beta shifts: gamma * normalised + beta.",
            lambda x, gamma, beta, eps: _layer_norm(x, beta, gamma, eps),
        ),
    ),
    hints={
        "values": "Per token (last axis, keepdims=True): mean, then the variance of x - mean (divide by d), then "
        "(x - mean) / sqrt(variance + eps), then * gamma + beta. Compute the variance from x - mean (or np.var): "
        "mean(x**2) - mean(x)**2 loses digits in float32 when x is far from 0.",
        "shape": "Layer norm keeps the shape of x; gamma and beta (d,) broadcast along the last axis.",
        "dtype": "Keep x's dtype: gamma, beta and x share it, and eps is a Python float.",
    },
)


# --------------------------------------------------------------------------- the MLP


def _mlp_case(shape, hidden, dtype=np.float32):
    def make(rng):
        d = shape[-1]
        x = normal_array(rng, shape, dtype)
        W1 = (normal_array(rng, (d, hidden), np.float64) / math.sqrt(d)).astype(dtype)
        b1 = (0.1 * normal_array(rng, (hidden,), np.float64)).astype(dtype)
        W2 = (normal_array(rng, (hidden, d), np.float64) / math.sqrt(hidden)).astype(dtype)
        b2 = (0.1 * normal_array(rng, (d,), np.float64)).astype(dtype)
        return x, W1, b1, W2, b2

    return make


def _exact_gelu(h):
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))).astype(h.dtype)


FEED_FORWARD = Exercise(
    name="feed_forward",
    function="feed_forward",
    params=("x", "W1", "b1", "W2", "b2"),
    lesson=LESSON,
    reference=_feed_forward,
    cases=(
        Case(
            "block_sizes",
            "x: float32 (2, 5, 6), W1: (6, 24), b1: (24,), W2: (24, 6), b2: (6,)",
            _mlp_case((2, 5, 6), 24),
            seed=195,
        ),
        Case(
            "narrow_hidden",
            "x: float32 (4, 3), W1: (3, 7), b1: (7,), W2: (7, 3), b2: (3,)",
            _mlp_case((4, 3), 7),
            seed=196,
        ),
        Case(
            "float64",
            "x: float64 (3, 8), W1: (8, 32), b1: (32,), W2: (32, 8), b2: (8,)",
            _mlp_case((3, 8), 32, np.float64),
            seed=197,
        ),
    ),
    hidden={
        "block_sizes": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 4, 5), W1: (5, 20), b1: (20,), W2: (20, 5), b2: (5,): two leading batch axes",
                _mlp_case((2, 3, 4, 5), 20),
                seed=3045,
            ),
        ),
        "narrow_hidden": (
            Case(
                "one_token",
                "x: float32 (1, 6), W1: (6, 1), b1: (1,), W2: (1, 6), b2: (6,): one token, a hidden layer of width 1",
                _mlp_case((1, 6), 1),
                seed=3046,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "ReLU instead of GELU",
            "Use GELU, 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3))), not ReLU: it is smooth and lets small "
            "negative values through.",
            lambda x, W1, b1, W2, b2: _feed_forward(x, W1, b1, W2, b2, activation=lambda h: np.maximum(h, 0)),
        ),
        Mistake(
            "exact GELU",
            "This exercise uses GELU's tanh form, 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3))) "
            "(torch's nn.GELU(approximate='tanh')); the erf form differs by up to about 1e-3.",
            lambda x, W1, b1, W2, b2: _feed_forward(x, W1, b1, W2, b2, activation=_exact_gelu),
        ),
        Mistake(
            "activation after the second layer too",
            "The non-linearity sits between the two linear maps only: gelu(x W1 + b1) W2 + b2, with nothing "
            "applied to the result.",
            lambda x, W1, b1, W2, b2: _feed_forward(x, W1, b1, W2, b2, after=_gelu),
        ),
        Mistake(
            "no activation",
            "Apply GELU to the hidden layer: without a non-linearity the two linear maps collapse into one.",
            lambda x, W1, b1, W2, b2: _feed_forward(x, W1, b1, W2, b2, activation=lambda h: h),
        ),
    ),
    hints={
        "raised": "x (..., d) @ W1 (d, hidden) gives (..., hidden); b1 (hidden,) adds by broadcasting; "
        "then @ W2 (hidden, d) and + b2 (d,).",
        "shape": "The MLP keeps the shape of x, (..., d): up to the hidden width and back.",
        "dtype": "Keep x's dtype: use math.sqrt(2 / math.pi) (a Python float), not np.sqrt, for the constant.",
    },
)


# --------------------------------------------------------------------------- the residual step


def _residual_case(shape, hidden, dtype=np.float32):
    norm, mlp = _norm_case(shape, dtype=dtype), _mlp_case(shape, hidden, dtype)

    def make(rng):
        x, gamma, beta, _ = norm(rng)
        _, W1, b1, W2, b2 = mlp(rng)
        return x, gamma, beta, W1, b1, W2, b2

    return make


def _pre_ln(x, gamma, beta, W1, b1, W2, b2):
    return x + _feed_forward(_layer_norm(x, gamma, beta, EPS), W1, b1, W2, b2)


def _normalised_residual(x, gamma, beta, W1, b1, W2, b2):
    normalised = _layer_norm(x, gamma, beta, EPS)
    return normalised + _feed_forward(normalised, W1, b1, W2, b2)


RESIDUAL = Exercise(
    name="pre_ln_feed_forward",
    function="pre_ln_feed_forward",
    params=("x", "gamma", "beta", "W1", "b1", "W2", "b2"),
    lesson=LESSON,
    reference=_pre_ln,
    cases=(
        Case(
            "block_sizes",
            "x: float32 (2, 5, 6), gamma, beta: (6,), W1: (6, 24), b1: (24,), W2: (24, 6), b2: (6,)",
            _residual_case((2, 5, 6), 24),
            seed=198,
        ),
        Case(
            "single_sequence",
            "x: float32 (7, 4), gamma, beta: (4,), W1: (4, 16), b1: (16,), W2: (16, 4), b2: (4,)",
            _residual_case((7, 4), 16),
            seed=199,
        ),
        Case(
            "float64",
            "x: float64 (3, 8), gamma, beta: (8,), W1: (8, 5), b1: (5,), W2: (5, 8), b2: (8,)",
            _residual_case((3, 8), 5, np.float64),
            seed=200,
        ),
    ),
    hidden={
        "block_sizes": (
            Case(
                "two_batch_axes",
                "x: float32 (2, 3, 4, 5), gamma, beta: (5,), W1: (5, 20), b1: (20,), W2: (20, 5), b2: (5,): two "
                "leading batch axes",
                _residual_case((2, 3, 4, 5), 20),
                seed=3047,
            ),
        ),
        "single_sequence": (
            Case(
                "one_token",
                "x: float32 (1, 6), gamma, beta: (6,), W1: (6, 24), b1: (24,), W2: (24, 6), b2: (6,): a single token",
                _residual_case((1, 6), 24),
                seed=3048,
            ),
        ),
    },
    mistakes=(
        Mistake(
            "post-LN",
            "Pre-LN normalises the sub-layer's input and leaves the residual sum alone: x + MLP(LN(x)). "
            "LN(x + MLP(x)) is the original 2017 (post-LN) order.",
            lambda x, gamma, beta, W1, b1, W2, b2: _layer_norm(x + _feed_forward(x, W1, b1, W2, b2), gamma, beta, EPS),
        ),
        Mistake(
            "no residual connection",
            "Add the sub-layer's result to its input: x + MLP(LN(x)). The residual stream carries x through.",
            lambda x, gamma, beta, W1, b1, W2, b2: _feed_forward(_layer_norm(x, gamma, beta, EPS), W1, b1, W2, b2),
        ),
        Mistake(
            "normalised x added back",
            "The residual adds the block's input x itself, not its normalised version: x + MLP(LN(x)), "
            "not LN(x) + MLP(LN(x)).",
            _normalised_residual,
        ),
        Mistake(
            "layer norm skipped",
            "Normalise before the MLP: x + MLP(LN(x)), with LN using gamma, beta and eps = 1e-5.",
            lambda x, gamma, beta, W1, b1, W2, b2: x + _feed_forward(x, W1, b1, W2, b2),
        ),
    ),
    hints={
        "raised": "Reuse your layer_norm (with eps=1e-5) and feed_forward from exercises 1 and 2.",
        "shape": "Every step keeps the shape of x, (..., d).",
        "values": "Check layer_norm and feed_forward with their own tests first; then the step is one line, "
        "x + feed_forward(layer_norm(x, gamma, beta, 1e-5), W1, b1, W2, b2).",
    },
)

# --------------------------------------------------------------------------- counting parameters (predict, then verify)


def _count(d_model, num_heads, mlp_ratio, *, norms=True, biases=True, per_head=False, one_mlp_matrix=False):
    """The parameters of a pre-LN block, with switches for the classic miscounts; a 0-d float64 array."""
    d, hidden = d_model, mlp_ratio * d_model
    attention = 4 * d * d * (num_heads if per_head else 1) + (4 * d if biases else 0)
    mlp = (1 if one_mlp_matrix else 2) * d * hidden + ((hidden + d) if biases else 0)
    layer_norms = 2 * 2 * d if norms else 0
    return np.asarray(float(attention + mlp + layer_norms), dtype=np.float64)


def _block_sizes(rng, heads, head_dims, ratios):
    """A secret ``(d_model, num_heads, mlp_ratio)``: num_heads divides d_model."""
    h = draw_int(rng, *heads)
    return h * draw_int(rng, *head_dims), h, draw_int(rng, *ratios)


COUNT_HINTS = {
    "type": "Return a 0-d NumPy float64 array, not a Python number: return np.asarray(count, dtype=np.float64).",
    "shape": "Return a single number as a 0-d array: np.asarray(count, dtype=np.float64).",
    "values": "Go through the block's pieces one by one and write each one's weights and biases: two layer norms "
    "(a gain and a shift of d numbers each), four (d, d) projections with a bias of d each, and an MLP "
    "d -> r d -> d with a bias after each linear map.",
}

PARAMETERS = Exercise(
    name="block_parameter_count",
    function="block_parameter_count",
    params=("d_model", "num_heads", "mlp_ratio"),
    lesson=LESSON,
    reference=_count,
    cases=(
        Case(
            "tiny_block",
            "d_model = 6, num_heads = 2, mlp_ratio = 4",
            lambda rng: (6, 2, 4),
            seed=1901,
            secret=lambda rng: _block_sizes(rng, (2, 3), (2, 6), (3, 4)),
        ),
        Case(
            "narrow_mlp",
            "d_model = 10, num_heads = 5, mlp_ratio = 2",
            lambda rng: (10, 5, 2),
            seed=1902,
            secret=lambda rng: _block_sizes(rng, (3, 8), (2, 4), (2, 2)),
        ),
        Case(
            "gpt2_small",
            "d_model = 768, num_heads = 12, mlp_ratio = 4: one block of GPT-2 small",
            lambda rng: (768, 12, 4),
            seed=1903,
            secret=lambda rng: _block_sizes(rng, (8, 16), (64, 64), (4, 4)),
            points=2.0,
        ),
    ),
    mistakes=(
        Mistake(
            "projections counted per head",
            "Splitting into heads does not add weights: W_q, W_k, W_v are each one (d, d) matrix whose columns are "
            "cut into num_heads groups of d / num_heads. The count does not depend on num_heads.",
            lambda d, h, r: _count(d, h, r, per_head=True),
        ),
        Mistake(
            "biases forgotten",
            "Each linear map has a bias as well as a weight matrix: d for each of W_q, W_k, W_v, W_o, r d and d for "
            "the MLP's two maps.",
            lambda d, h, r: _count(d, h, r, biases=False),
        ),
        Mistake(
            "layer norms forgotten",
            "A layer norm learns two vectors of d numbers, a gain gamma and a shift beta, and a pre-LN block has two "
            "layer norms.",
            lambda d, h, r: _count(d, h, r, norms=False),
        ),
        Mistake(
            "one MLP matrix",
            "The MLP has two weight matrices: (d, r d) up and (r d, d) back down.",
            lambda d, h, r: _count(d, h, r, one_mlp_matrix=True),
        ),
    ),
    hints=COUNT_HINTS,
)

EXERCISES = (LAYER_NORM, FEED_FORWARD, RESIDUAL, PARAMETERS)
