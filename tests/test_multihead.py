"""split_heads / merge_heads, and MultiHeadAttention against torch.nn.MultiheadAttention (float32)."""

import math

import numpy as np
import pytest
import torch

from attn_course.backend import asarray, to_numpy
from attn_course.masks import padding_mask
from attn_course.multihead import MultiHeadAttention, merge_heads, split_heads
from tests.support import BACKENDS, assert_close, random_array, same_library

L, S, D_MODEL, NUM_HEADS = 3, 5, 12, 3  # unique sizes: a transposed axis cannot pass by accident
HEAD_DIM = D_MODEL // NUM_HEADS  # 4
BATCH_SHAPES = [(), (2,), (2, 3)]


# --------------------------------------------------------------------------- helpers


def torch_module(bias=True, seed=0, **kwargs):
    """A torch MHA in eval mode with random (non-zero) biases, so that a misplaced bias shows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = torch.nn.MultiheadAttention(D_MODEL, NUM_HEADS, bias=bias, batch_first=True, **kwargs)
        if bias:
            with torch.no_grad():
                module.in_proj_bias.normal_()
                module.out_proj.bias.normal_()
    return module.eval()


def torch_reference(module, query, key, value, attn_mask=None, key_padding_mask=None, average=True):
    """The torch module's output and weights; any batch shape is flattened to torch's single batch axis.

    Masks are given in torch's convention (True = may NOT attend); a 3-d ``attn_mask`` is (B * h, L, S).
    """
    query, key, value = (np.asarray(to_numpy(a), dtype=np.float32) for a in (query, key, value))
    batch = query.shape[:-2]
    as_batched = lambda a: torch.from_numpy(a.reshape(-1, *a.shape[-2:]))
    with torch.no_grad():
        out, weights = module(
            as_batched(query),
            as_batched(key),
            as_batched(value),
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=True,
            average_attn_weights=average,
        )
    return out.numpy().reshape(*batch, *out.shape[1:]), weights.numpy().reshape(*batch, *weights.shape[1:])


def random_mask(rng, shape):
    """A random boolean mask (True = may attend) where every query row may attend to some key."""
    mask = rng.random(shape) < 0.5
    rows = np.indices(shape[:-1])
    mask[(*rows, rng.integers(shape[-1], size=shape[:-1]))] = True  # torch gives NaN for rows that see nothing
    return mask


def forbidden(mask):
    """Our mask (True = may attend) in nn.MultiheadAttention's convention (True = may NOT attend)."""
    return torch.from_numpy(~np.asarray(to_numpy(mask)))


# --------------------------------------------------------------------------- split / merge


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_split_heads_gives_each_head_its_columns(rng, backend, batch):
    x = random_array(rng, (*batch, L, D_MODEL), np.float32, backend)
    heads = split_heads(x, NUM_HEADS)
    assert same_library(heads, x)
    assert heads.shape == (*batch, NUM_HEADS, L, HEAD_DIM)
    x_np, heads_np = to_numpy(x), to_numpy(heads)
    for head in range(NUM_HEADS):
        columns = x_np[..., :, head * HEAD_DIM : (head + 1) * HEAD_DIM]  # (..., L, head_dim)
        np.testing.assert_array_equal(heads_np[..., head, :, :], columns)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_merge_heads_puts_heads_side_by_side(rng, backend, batch):
    heads = random_array(rng, (*batch, NUM_HEADS, L, HEAD_DIM), np.float64, backend)
    merged = merge_heads(heads)
    assert same_library(merged, heads)
    assert merged.shape == (*batch, L, D_MODEL)
    heads_np, merged_np = to_numpy(heads), to_numpy(merged)
    for position in range(L):
        expected = np.concatenate([heads_np[..., head, position, :] for head in range(NUM_HEADS)], axis=-1)
        np.testing.assert_array_equal(merged_np[..., position, :], expected)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_split_and_merge_are_inverse(rng, dtype, batch):
    x = random_array(rng, (*batch, L, D_MODEL), dtype)
    heads = split_heads(x, NUM_HEADS)
    assert heads.dtype == dtype
    np.testing.assert_array_equal(merge_heads(heads), x)
    y = random_array(rng, (*batch, NUM_HEADS, L, HEAD_DIM), dtype)
    np.testing.assert_array_equal(split_heads(merge_heads(y), NUM_HEADS), y)


@pytest.mark.parametrize(
    ("x", "num_heads", "error", "match"),
    [
        (np.zeros((L, D_MODEL)), 0, ValueError, "num_heads must be >= 1"),
        (np.zeros((L, D_MODEL)), 1.5, TypeError, "num_heads must be an integer"),
        (np.zeros((L, D_MODEL)), 5, ValueError, r"x \(12 features\) must be divisible by num_heads \(5\)"),
        (np.zeros(D_MODEL), NUM_HEADS, ValueError, r"x must have at least 2 dimensions.*\(12,\)"),
        (np.zeros((L, D_MODEL), dtype=np.int64), NUM_HEADS, TypeError, "x must have a floating dtype"),
        ("not an array", NUM_HEADS, TypeError, "x must have a floating dtype"),
    ],
)
def test_split_heads_refuses_bad_input(x, num_heads, error, match):
    with pytest.raises(error, match=match):
        split_heads(x, num_heads)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (np.zeros((L, D_MODEL)), ValueError, r"x must have at least 3 dimensions.*\(3, 12\)"),
        (np.zeros(D_MODEL), ValueError, "x must have at least 3 dimensions"),
        (np.zeros((NUM_HEADS, L, HEAD_DIM), dtype=np.int32), TypeError, "x must have a floating dtype"),
        (np.zeros((NUM_HEADS, L, HEAD_DIM), dtype=bool), TypeError, "x must have a floating dtype"),
        (None, TypeError, "x must be an array"),
    ],
)
def test_merge_heads_refuses_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        merge_heads(x)


# --------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_self_attention_matches_torch(rng, backend, batch):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    x = random_array(rng, (*batch, L, D_MODEL), np.float32, backend)
    out = mha(x)
    assert same_library(out, x)
    assert out.shape == (*batch, L, D_MODEL)
    expected, _ = torch_reference(module, x, x, x)
    assert_close(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_cross_attention_matches_torch(rng, backend, batch):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    query = random_array(rng, (*batch, L, D_MODEL), np.float32, backend)
    key = random_array(rng, (*batch, S, D_MODEL), np.float32, backend)
    value = random_array(rng, (*batch, S, D_MODEL), np.float32, backend)
    out, weights = mha(query, key, value, return_weights=True)
    assert same_library(out, query) and same_library(weights, query)
    assert weights.shape == (*batch, NUM_HEADS, L, S)
    expected, expected_weights = torch_reference(module, query, key, value, average=False)
    assert_close(out, expected)
    assert_close(weights, expected_weights, what="per-head weights")


def test_value_defaults_to_key(rng):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module)
    query = random_array(rng, (2, L, D_MODEL))
    key = random_array(rng, (2, S, D_MODEL))
    assert_close(mha(query, key), torch_reference(module, query, key, key)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_shared_mask_matches_torch(rng, backend, batch):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    query = random_array(rng, (*batch, L, D_MODEL), np.float32, backend)
    key = random_array(rng, (*batch, S, D_MODEL), np.float32, backend)
    mask = random_mask(rng, (L, S))
    out, weights = mha(query, key, key, asarray(mask, backend), return_weights=True)
    expected, expected_weights = torch_reference(module, query, key, key, attn_mask=forbidden(mask), average=False)
    assert_close(out, expected)
    assert_close(weights, expected_weights, what="per-head weights")
    assert np.all(to_numpy(weights)[..., ~mask] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [(2,), (2, 3)])
def test_per_sequence_mask_matches_torch(rng, backend, batch):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    query = random_array(rng, (*batch, L, D_MODEL), np.float32, backend)
    key = random_array(rng, (*batch, S, D_MODEL), np.float32, backend)
    mask = random_mask(rng, (*batch, L, S))  # one mask per sequence, shared by its heads
    out = mha(query, key, key, asarray(mask, backend))
    per_head = np.repeat(mask.reshape(-1, L, S), NUM_HEADS, axis=0)  # torch's (B * h, L, S), batch-major
    expected, _ = torch_reference(module, query, key, key, attn_mask=forbidden(per_head))
    assert_close(out, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_head_mask_matches_torch(rng, backend):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    query = random_array(rng, (2, L, D_MODEL), np.float32, backend)
    key = random_array(rng, (2, S, D_MODEL), np.float32, backend)
    mask = random_mask(rng, (2, NUM_HEADS, L, S))  # a different mask for every head
    out, weights = mha(query, key, key, asarray(mask, backend), return_weights=True)
    expected, expected_weights = torch_reference(
        module, query, key, key, attn_mask=forbidden(mask.reshape(-1, L, S)), average=False
    )
    assert_close(out, expected)
    assert_close(weights, expected_weights, what="per-head weights")


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_mask_matches_torch_key_padding_mask(rng, backend):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    query = random_array(rng, (2, L, D_MODEL), np.float32, backend)
    key = random_array(rng, (2, S, D_MODEL), np.float32, backend)
    lengths = np.array([S, 2])
    mask = padding_mask(lengths, S, like=backend)  # (2, 1, 1, S)
    out, weights = mha(query, key, key, mask, return_weights=True)
    padded = np.arange(S)[None, :] >= lengths[:, None]  # (2, S), True = padding (torch's convention)
    expected, expected_weights = torch_reference(
        module, query, key, key, key_padding_mask=torch.from_numpy(padded), average=False
    )
    assert_close(out, expected)
    assert_close(weights, expected_weights, what="per-head weights")
    assert np.all(to_numpy(weights)[1, ..., 2:] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("batch", "keys"), [((), L), ((2,), L), ((2, 3), S)])
def test_causal_matches_torch(rng, backend, batch, keys):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    query = random_array(rng, (*batch, L, D_MODEL), np.float32, backend)
    key = random_array(rng, (*batch, keys, D_MODEL), np.float32, backend)
    out = mha(query, key, key, is_causal=True)
    future = np.triu(np.ones((L, keys), dtype=bool), k=1)  # key j > query i: not allowed
    expected, _ = torch_reference(module, query, key, key, attn_mask=torch.from_numpy(future))
    assert_close(out, expected)


def test_causal_and_mask_combine(rng):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module)
    x = random_array(rng, (2, L, D_MODEL))
    mask = random_mask(rng, (L, L))
    mask[:, 0] = True  # the first key stays visible to every query, so no row is empty once causal
    future = np.triu(np.ones((L, L), dtype=bool), k=1)
    expected, _ = torch_reference(module, x, x, x, attn_mask=forbidden(mask) | torch.from_numpy(future))
    assert_close(mha(x, mask=mask, is_causal=True), expected)


@pytest.mark.parametrize("batch", BATCH_SHAPES)
def test_without_bias_matches_torch(rng, batch):
    module = torch_module(bias=False)
    mha = MultiHeadAttention.from_torch(module)
    assert mha.b_q is None and mha.b_o is None
    query = random_array(rng, (*batch, L, D_MODEL))
    key = random_array(rng, (*batch, S, D_MODEL))
    assert_close(mha(query, key), torch_reference(module, query, key, key)[0])


def test_float64_module_and_float64_input(rng):
    module = torch_module().double()
    mha = MultiHeadAttention.from_torch(module)
    assert mha.W_q.dtype == np.float64
    query = rng.standard_normal((2, L, D_MODEL))
    key = rng.standard_normal((2, S, D_MODEL))
    with torch.no_grad():
        expected = module(*(torch.from_numpy(a) for a in (query, key, key)), need_weights=False)[0]
    assert_close(mha(query, key), expected.numpy())


def test_float16_input_keeps_its_dtype(rng):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module)
    query = random_array(rng, (2, L, D_MODEL), np.float16)
    key = random_array(rng, (2, S, D_MODEL), np.float16)
    out, weights = mha(query, key, return_weights=True)
    assert weights.dtype == np.float16
    assert_close(out, torch_reference(module, query, key, key)[0], np.float16)


def test_weights_are_in_and_out_orientation(rng):
    """W_q is (in, out): the query projection of head 0 is query @ W_q[:, :head_dim] + b_q[:head_dim]."""
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module)
    in_weight = module.in_proj_weight.detach().numpy()
    np.testing.assert_array_equal(mha.W_k, in_weight[D_MODEL : 2 * D_MODEL].T)
    np.testing.assert_array_equal(mha.W_o, module.out_proj.weight.detach().numpy().T)
    np.testing.assert_array_equal(mha.b_v, module.in_proj_bias.detach().numpy()[2 * D_MODEL :])
    x = random_array(rng, (L, D_MODEL))
    _, weights = mha(x, return_weights=True)
    q0 = x @ mha.W_q[:, :HEAD_DIM] + mha.b_q[:HEAD_DIM]  # (L, head_dim)
    k0 = x @ mha.W_k[:, :HEAD_DIM] + mha.b_k[:HEAD_DIM]
    scores = q0.astype(np.float64) @ k0.T.astype(np.float64) / math.sqrt(HEAD_DIM)
    expected = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)
    assert_close(weights[0], expected, what="weights of head 0")


# --------------------------------------------------------------------------- masked rows, init


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_row_gives_output_bias(rng, backend):
    module = torch_module()
    mha = MultiHeadAttention.from_torch(module, like=backend)
    query = random_array(rng, (2, L, D_MODEL), np.float32, backend)
    key = random_array(rng, (2, S, D_MODEL), np.float32, backend)
    mask = random_mask(rng, (2, L, S))
    mask[1, 2] = False  # query 2 of sequence 1 may attend to nothing
    out, weights = mha(query, key, key, asarray(mask, backend), return_weights=True)
    out, weights = to_numpy(out), to_numpy(weights)
    assert not np.isnan(out).any() and not np.isnan(weights).any()
    np.testing.assert_array_equal(weights[1, :, 2], np.zeros((NUM_HEADS, S)))
    assert_close(out[1, 2], to_numpy(mha.b_o), what="output row of the masked query")
    per_head = np.repeat(mask, NUM_HEADS, axis=0)
    expected, _ = torch_reference(module, query, key, key, attn_mask=forbidden(per_head))
    assert np.isnan(expected[1, 2]).all()  # torch's answer for that row: NaN
    seen = np.ones((2, L), dtype=bool)
    seen[1, 2] = False
    assert_close(out[seen], expected[seen], what="the other rows")


def test_init_is_deterministic_and_seeded():
    first = MultiHeadAttention(D_MODEL, NUM_HEADS, seed=7)
    again = MultiHeadAttention(D_MODEL, NUM_HEADS, seed=np.random.default_rng(7))
    other = MultiHeadAttention(D_MODEL, NUM_HEADS, seed=8)
    for name in ("W_q", "W_k", "W_v", "W_o"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
        assert not np.array_equal(getattr(first, name), getattr(other, name)), name
    assert not np.array_equal(first.W_q, first.W_k)


def test_init_scale_shapes_and_dtype():
    mha = MultiHeadAttention(D_MODEL, NUM_HEADS)
    assert (mha.d_model, mha.num_heads, mha.head_dim) == (D_MODEL, NUM_HEADS, HEAD_DIM)
    in_bound = math.sqrt(6 / (4 * D_MODEL))  # torch's xavier_uniform_ on the stacked (3 d, d) in-projection
    for name in ("W_q", "W_k", "W_v"):
        weight = getattr(mha, name)
        assert weight.shape == (D_MODEL, D_MODEL) and weight.dtype == np.float32
        assert np.abs(weight).max() <= in_bound
        assert np.abs(weight).max() > 0.8 * in_bound
    assert np.abs(mha.W_o).max() <= 1 / math.sqrt(D_MODEL)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        np.testing.assert_array_equal(getattr(mha, name), np.zeros(D_MODEL, dtype=np.float32))
    no_bias = MultiHeadAttention(D_MODEL, NUM_HEADS, bias=False)
    assert no_bias.b_q is None and no_bias.b_k is None and no_bias.b_v is None and no_bias.b_o is None
    assert "d_model=12" in repr(mha) and "num_heads=3" in repr(mha) and "head_dim=4" in repr(mha)


@pytest.mark.parametrize("backend", BACKENDS)
def test_like_places_the_weights(rng, backend):
    mha = MultiHeadAttention(D_MODEL, NUM_HEADS, bias=False, like=backend)
    x = random_array(rng, (2, L, D_MODEL), np.float32, backend)
    assert same_library(mha.W_v, x)
    out = mha(x)
    assert same_library(out, x)
    # no bias: a self-attention output is a weighted sum of value rows, projected by W_o
    _, weights = mha(x, return_weights=True)
    values = split_heads(to_numpy(x) @ to_numpy(mha.W_v), NUM_HEADS).astype(np.float64)
    expected = merge_heads(to_numpy(weights).astype(np.float64) @ values) @ to_numpy(mha.W_o).astype(np.float64)
    assert_close(out, expected)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((10, NUM_HEADS), {}, ValueError, "d_model must be divisible by num_heads.*d_model=10, num_heads=3"),
        ((0, NUM_HEADS), {}, ValueError, "d_model must be >= 1"),
        ((D_MODEL, "3"), {}, TypeError, "num_heads must be an integer"),
        ((D_MODEL, 0), {}, ValueError, "num_heads must be >= 1"),
        ((D_MODEL, NUM_HEADS), {"seed": "7"}, TypeError, "seed must be an integer or a numpy.random.Generator"),
        ((D_MODEL, NUM_HEADS), {"bias": 1}, TypeError, "bias must be True or False"),
        ((D_MODEL, NUM_HEADS), {"like": "torch"}, ValueError, "like must be an array"),
    ],
)
def test_constructor_refuses_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        MultiHeadAttention(*args, **kwargs)


def call_cases():
    x = np.zeros((2, L, D_MODEL), np.float32)
    keys = np.zeros((2, S, D_MODEL), np.float32)
    return [
        ({"query": x.astype(np.int64)}, TypeError, "query must have a floating dtype"),
        ({"query": np.zeros((2, L, 8), np.float32)}, ValueError, r"query must have d_model=12 .*\(2, 3, 8\)"),
        ({"query": np.zeros(D_MODEL, np.float32)}, ValueError, "query must have at least 2 dimensions"),
        ({"query": x, "key": keys, "value": np.zeros((2, 4, D_MODEL), np.float32)}, ValueError, "key and value"),
        ({"query": x, "key": keys, "value": keys.astype(np.float64)}, TypeError, "query, key, value must share"),
        ({"query": x, "mask": np.ones(S, bool)}, ValueError, r"mask must have shape \(L, S\).*got mask \(5,\)"),
        ({"query": x, "mask": np.ones((1, 2, 1, L, L), bool)}, ValueError, r"mask must have shape .*\(1, 2, 1, 3, 3\)"),
        ({"query": x, "mask": np.ones((2, 2, L, L), bool)}, ValueError, r"mask of shape \(2, 2, 3, 3\) does not"),
        ({"query": x, "mask": np.ones((2, L, S), bool)}, ValueError, r"mask of shape \(2, 3, 5\) does not"),
        ({"query": x, "mask": np.ones((L, L), np.float32)}, TypeError, "mask must be boolean"),
        ({"query": x, "is_causal": "yes"}, TypeError, "is_causal must be True or False"),
        ({"query": torch.zeros(2, L, D_MODEL)}, TypeError, "query is a torch array but the weights are numpy"),
    ]


@pytest.mark.parametrize(("kwargs", "error", "match"), call_cases())
def test_call_refuses_bad_input(kwargs, error, match):
    mha = MultiHeadAttention(D_MODEL, NUM_HEADS)
    with pytest.raises(error, match=match):
        mha(**kwargs)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: torch.nn.Linear(D_MODEL, D_MODEL), TypeError, "module must be a torch.nn.MultiheadAttention"),
        (lambda: torch.nn.MultiheadAttention(D_MODEL, NUM_HEADS), ValueError, "batch_first=False"),
        (lambda: torch_module(kdim=8, vdim=8), ValueError, "kdim=8, vdim=8"),
        (lambda: torch_module(add_bias_kv=True), ValueError, "add_bias_kv=True"),
        (lambda: torch_module(add_zero_attn=True), ValueError, "add_zero_attn=True"),
    ],
)
def test_from_torch_refuses_unsupported_modules(make, error, match):
    with pytest.raises(error, match=match):
        MultiHeadAttention.from_torch(make())


# --------------------------------------------------------------------------- shared key/value heads (round 2)

GQA_HEADS = [(6, 6), (6, 3), (6, 2), (6, 1)]  # (num_heads, num_kv_heads): MHA, GQA, GQA, MQA


def gqa_reference(mha, query, mask=None, is_causal=False):
    """torch float64: project, split into h query and h_kv key/value heads, F.sdpa(enable_gqa=True), merge."""
    as64 = lambda a: None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))
    x = as64(query)
    project = lambda name: x @ as64(getattr(mha, f"W_{name}")) + as64(getattr(mha, f"b_{name}"))

    def heads(y, count):  # (..., L, count * hd) -> (..., count, L, hd)
        return y.reshape(*y.shape[:-1], count, -1).transpose(-3, -2)

    q, k, v = (
        heads(project("q"), mha.num_heads),
        heads(project("k"), mha.num_kv_heads),
        heads(project("v"), mha.num_kv_heads),
    )
    attn_mask = None if mask is None else torch.from_numpy(mask)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                           enable_gqa=True)  # fmt: skip
    merged = out.transpose(-3, -2).reshape(*query.shape[:-1], -1)
    return (merged @ as64(mha.W_o) + as64(mha.b_o)).numpy()


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), GQA_HEADS)
@pytest.mark.parametrize("batch", [(), (2,)])
def test_grouped_query_attention_matches_torch(rng, num_heads, num_kv_heads, batch):
    mha = MultiHeadAttention(24, num_heads, num_kv_heads=num_kv_heads, seed=3)
    mha.b_q, mha.b_k, mha.b_v, mha.b_o = (rng.standard_normal(b.shape).astype(np.float32) for b in
                                          (mha.b_q, mha.b_k, mha.b_v, mha.b_o))  # fmt: skip
    head_dim = 24 // num_heads
    assert mha.W_q.shape == (24, 24) and mha.W_o.shape == (24, 24)
    assert mha.W_k.shape == mha.W_v.shape == (24, num_kv_heads * head_dim)
    x = random_array(rng, (*batch, 7, 24))
    assert_close(mha(x), gqa_reference(mha, x), np.float32)
    assert_close(mha(x, is_causal=True), gqa_reference(mha, x, is_causal=True), np.float32)
    mask = random_mask(rng, (7, 7))
    assert_close(mha(x, mask=mask), gqa_reference(mha, x, mask=mask), np.float32)


def test_query_heads_read_their_groups_key_value_head(rng):
    """Repeating each key/value head g times (head h reads h // g) gives the same layer as an MHA."""
    gqa = MultiHeadAttention(24, 6, num_kv_heads=2, seed=5)
    mha = MultiHeadAttention(24, 6, seed=0)
    mha.W_q, mha.W_o, mha.b_q, mha.b_o = gqa.W_q, gqa.W_o, gqa.b_q, gqa.b_o
    head_dim = 4
    for name in ("k", "v"):
        weight = getattr(gqa, f"W_{name}").reshape(24, 2, head_dim)  # (d_model, h_kv, hd)
        setattr(mha, f"W_{name}", np.repeat(weight, 3, axis=1).reshape(24, 24))  # kv heads 0,0,0,1,1,1
        setattr(mha, f"b_{name}", np.repeat(getattr(gqa, f"b_{name}").reshape(2, head_dim), 3, axis=0).ravel())
    x = random_array(rng, (2, 7, 24))
    assert_close(gqa(x, is_causal=True), mha(x, is_causal=True), np.float32)


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "error", "match"),
    [
        (6, 4, ValueError, "num_kv_heads must divide num_heads.*num_heads=6, num_kv_heads=4"),
        (6, 0, ValueError, "num_kv_heads must be >= 1; got 0"),
        (6, 2.0, TypeError, "num_kv_heads must be an integer"),
    ],
)
def test_num_kv_heads_refuses_bad_values(num_heads, num_kv_heads, error, match):
    with pytest.raises(error, match=match):
        MultiHeadAttention(24, num_heads, num_kv_heads=num_kv_heads)


def test_default_num_kv_heads_keeps_the_weights_of_plain_mha():
    """num_kv_heads = num_heads draws the weights plain MHA always drew: q, k, v Xavier (4 d_model), then o."""
    rng = np.random.default_rng(7)
    bound = math.sqrt(6.0 / (4 * 12))
    expected = {name: rng.uniform(-bound, bound, (12, 12)) for name in "qkv"}
    expected["o"] = rng.uniform(-1 / math.sqrt(12), 1 / math.sqrt(12), (12, 12))
    for layer in (MultiHeadAttention(12, 3, seed=7), MultiHeadAttention(12, 3, num_kv_heads=3, seed=7)):
        for name, weight in expected.items():
            assert np.array_equal(getattr(layer, f"W_{name}"), weight.astype(np.float32))
        assert layer.num_kv_heads == 3 and not layer.grouped
