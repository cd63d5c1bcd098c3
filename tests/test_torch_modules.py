"""The trainable torch modules compute the same attention as the NumPy package (and torch) on the same weights."""

import numpy as np
import pytest
import torch

from attn_course import masks, scaled_dot_product_attention
from attn_course.torch_modules import (
    CharLanguageModel,
    FeedForward,
    MultiHeadAttention,
    MultiHeadCrossAttention,
    MultiHeadSelfAttention,
    SelfAttention,
    TransformerBlock,
    check_head_sizes,
)
from tests.support import assert_close

B, L, S, D_MODEL, D_HEAD, NUM_HEADS = 2, 5, 4, 12, 7, 3  # unique sizes


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def weights_of(linear: torch.nn.Linear) -> np.ndarray:
    return linear.weight.detach().double().numpy().T  # (in, out)


@pytest.mark.parametrize("is_causal", [False, True])
def test_self_attention_matches_numpy_on_the_same_weights(rng, is_causal):
    layer = SelfAttention(D_MODEL, D_HEAD)
    x = rng.standard_normal((B, L, D_MODEL)).astype(np.float32)
    out, weights = layer(torch.from_numpy(x), is_causal=is_causal, return_weights=True)
    x64 = x.astype(np.float64)
    q, k, v = (x64 @ weights_of(linear) for linear in (layer.query, layer.key, layer.value))
    expected, expected_weights = scaled_dot_product_attention(q, k, v, is_causal=is_causal, return_weights=True)
    assert out.shape == (B, L, D_HEAD) and weights.shape == (B, L, L)
    assert_close(out.detach().numpy(), expected)
    assert_close(weights.detach().numpy(), expected_weights)


def test_self_and_cross_attention_are_one_class():
    for named in (MultiHeadSelfAttention, MultiHeadCrossAttention):
        assert issubclass(named, MultiHeadAttention)
        assert named.forward is MultiHeadAttention.forward and named.to_numpy is MultiHeadAttention.to_numpy
        assert named.__init__ is MultiHeadAttention.__init__


def as_torch(array):
    return None if array is None else torch.from_numpy(array)


def with_nonzero_biases(layer):
    for linear in (layer.query, layer.key, layer.value, layer.out):
        torch.nn.init.normal_(linear.bias)  # so that a misplaced bias shows
    return layer


# mask(number of keys, rng), is_causal: none; padding (B, 1, 1, keys) for every head; one (B, L, keys) per sequence
MASK_CASES = {
    "none": (lambda keys, rng: None, False),
    "padding": (lambda keys, rng: masks.padding_mask([3, keys], keys), False),
    "per_sequence": (lambda keys, rng: rng.random((B, L, keys)) < 0.7, False),
    "causal": (lambda keys, rng: None, True),
}


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("case", MASK_CASES)
def test_multi_head_matches_the_numpy_layer(rng, cross, case):
    """Self-attention ``layer(x)`` and cross-attention ``layer(x, memory, memory)`` equal the NumPy layer's."""
    build_mask, is_causal = MASK_CASES[case]
    layer = with_nonzero_biases((MultiHeadCrossAttention if cross else MultiHeadSelfAttention)(D_MODEL, NUM_HEADS))
    keys = S if cross else L
    x = rng.standard_normal((B, L, D_MODEL)).astype(np.float32)
    memory = rng.standard_normal((B, S, D_MODEL)).astype(np.float32) if cross else None
    mask = build_mask(keys, rng)
    out, weights = layer(as_torch(x), as_torch(memory), as_torch(memory), mask=as_torch(mask), is_causal=is_causal,
                         return_weights=True)  # fmt: skip
    expected, expected_weights = layer.to_numpy()(x, memory, memory, mask=mask, is_causal=is_causal,
                                                  return_weights=True)  # fmt: skip
    assert out.shape == (B, L, D_MODEL) and weights.shape == (B, NUM_HEADS, L, keys)
    assert_close(out.detach().numpy(), expected)
    assert_close(weights.detach().numpy(), expected_weights)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_multi_head_matches_torch_multihead_attention(rng, cross):
    layer = with_nonzero_biases(MultiHeadAttention(D_MODEL, NUM_HEADS))
    reference = torch.nn.MultiheadAttention(D_MODEL, NUM_HEADS, batch_first=True)
    with torch.no_grad():  # the same weights: torch stacks W_q, W_k, W_v (out, in) into one in-projection
        reference.in_proj_weight.copy_(torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]))
        reference.in_proj_bias.copy_(torch.cat([layer.query.bias, layer.key.bias, layer.value.bias]))
        reference.out_proj.weight.copy_(layer.out.weight)
        reference.out_proj.bias.copy_(layer.out.bias)
    x = torch.from_numpy(rng.standard_normal((B, L, D_MODEL)).astype(np.float32))
    memory = torch.from_numpy(rng.standard_normal((B, S, D_MODEL)).astype(np.float32)) if cross else x
    lengths = [3, S] if cross else [3, L]
    padding = masks.padding_mask(lengths, memory.shape[1], like=memory)  # (B, 1, 1, keys), True = may attend
    with torch.no_grad():
        out, weights = (layer(x, memory, memory, mask=padding, return_weights=True) if cross
                        else layer(x, mask=padding, return_weights=True))  # fmt: skip
        expected, expected_weights = reference(
            x, memory, memory, key_padding_mask=~padding[:, 0, 0], average_attn_weights=False
        )  # torch's key_padding_mask: True = may NOT attend
    assert_close(out.numpy(), expected.double().numpy(), np.float32)
    assert_close(weights.numpy(), expected_weights.double().numpy(), np.float32)


def test_feed_forward_shapes_and_layers(rng):
    feed_forward = FeedForward(D_MODEL, mlp_ratio=3)
    linear_in, activation, linear_out = feed_forward
    assert isinstance(activation, torch.nn.GELU)
    assert linear_in.weight.shape == (3 * D_MODEL, D_MODEL) and linear_out.weight.shape == (D_MODEL, 3 * D_MODEL)
    x = torch.from_numpy(rng.standard_normal((B, L, D_MODEL)).astype(np.float32))
    with torch.no_grad():
        out = feed_forward(x)
        expected = linear_out(torch.nn.functional.gelu(linear_in(x)))
        one_position = feed_forward(x[:, 2:3])  # (B, 1, d_model): positions do not mix
    assert out.shape == (B, L, D_MODEL)
    assert_close(out.numpy(), expected.double().numpy(), np.float32)
    assert_close(one_position.numpy(), out[:, 2:3].double().numpy(), np.float32)


def test_block_parameters_keep_their_order_and_shapes():
    """Seeded lessons (09, 16, 17) rely on this order: the same seed must give the same initial weights."""
    block = TransformerBlock(D_MODEL, NUM_HEADS, mlp_ratio=2)
    assert isinstance(block.attention, MultiHeadSelfAttention) and isinstance(block.mlp, FeedForward)
    layout = [(name, tuple(parameter.shape)) for name, parameter in block.named_parameters()]
    d, hidden = D_MODEL, 2 * D_MODEL
    assert layout == [
        ("norm1.weight", (d,)), ("norm1.bias", (d,)),
        ("attention.query.weight", (d, d)), ("attention.query.bias", (d,)),
        ("attention.key.weight", (d, d)), ("attention.key.bias", (d,)),
        ("attention.value.weight", (d, d)), ("attention.value.bias", (d,)),
        ("attention.out.weight", (d, d)), ("attention.out.bias", (d,)),
        ("norm2.weight", (d,)), ("norm2.bias", (d,)),
        ("mlp.0.weight", (hidden, d)), ("mlp.0.bias", (hidden,)),
        ("mlp.2.weight", (d, hidden)), ("mlp.2.bias", (d,)),
    ]  # fmt: skip


def test_transformer_block_is_pre_layer_norm(rng):
    block = TransformerBlock(D_MODEL, NUM_HEADS)
    x = torch.from_numpy(rng.standard_normal((B, L, D_MODEL)).astype(np.float32))
    with torch.no_grad():
        after_attention = x + block.attention(block.norm1(x), is_causal=True)
        expected = after_attention + block.mlp(block.norm2(after_attention))
        out = block(x, is_causal=True)
    assert_close(out.numpy(), expected.double().numpy(), np.float32)


def test_gradients_reach_every_projection(rng):
    block = TransformerBlock(D_MODEL, NUM_HEADS)
    x = torch.from_numpy(rng.standard_normal((B, L, D_MODEL)).astype(np.float32))
    block(x, is_causal=True).square().sum().backward()
    for name in ("query", "key", "value", "out"):
        grad = getattr(block.attention, name).weight.grad
        assert grad is not None and torch.count_nonzero(grad) > 0, f"no gradient reaches W_{name}"


def test_language_model_is_causal_and_samples_repeatably():
    model = CharLanguageModel(11, d_model=D_MODEL, num_heads=NUM_HEADS, num_layers=2, context_length=8)
    ids = torch.randint(0, 11, (B, 6))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    with torch.no_grad():
        logits, weights = model(ids, return_weights=True)
        changed_logits = model(changed)
    assert logits.shape == (B, 6, 11) and len(weights) == 2 and weights[0].shape == (B, NUM_HEADS, 6, 6)
    torch.testing.assert_close(logits[:, :-1], changed_logits[:, :-1])  # the past ignores the future
    assert not torch.allclose(logits[:, -1], changed_logits[:, -1])
    first = model.generate(ids, 5, generator=torch.Generator().manual_seed(3))
    second = model.generate(ids, 5, generator=torch.Generator().manual_seed(3))
    assert first.shape == (B, 11) and torch.equal(first, second) and torch.equal(first[:, :6], ids)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MultiHeadSelfAttention(10, 3), "d_model must be divisible by num_heads"),
        (lambda: MultiHeadSelfAttention(0, 1), "d_model must be >= 1; got 0"),
        (lambda: MultiHeadCrossAttention(12, 0), "num_heads must be >= 1; got 0"),
        (lambda: check_head_sizes(12, 5), "d_model must be divisible by num_heads"),
        (lambda: SelfAttention(4, -2), "d_head must be >= 1; got -2"),
        (lambda: TransformerBlock(12, 5), "d_model must be divisible by num_heads"),
        (lambda: FeedForward(12, mlp_ratio=0), "mlp_ratio must be >= 1"),
        (lambda: CharLanguageModel(0), "vocab_size must be >= 1; got 0"),
        (lambda: CharLanguageModel(5, context_length=0), "context_length must be >= 1; got 0"),
    ],
)
def test_bad_sizes(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_calls():
    model = CharLanguageModel(5, d_model=8, num_heads=2, num_layers=1, context_length=4)
    with pytest.raises(ValueError, match=r"ids must be \(B, L\) with L <= 4; got shape \(1, 6\)"):
        model(torch.zeros((1, 6), dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate(torch.zeros((1, 2), dtype=torch.long), 2, temperature=0)
    with pytest.raises(ValueError, match="mask of shape"):
        MultiHeadSelfAttention(8, 2)(torch.zeros(1, 3, 8), mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"key must be a float torch tensor .* mask goes in mask="):
        MultiHeadSelfAttention(8, 2)(torch.zeros(1, 3, 8), torch.ones(3, 3, dtype=torch.bool))  # mask as key
    with pytest.raises(ValueError, match=r"value must have shape \(\.\.\., n, d_model\) with d_model=8"):
        MultiHeadCrossAttention(8, 2)(torch.zeros(1, 3, 8), torch.zeros(1, 4, 8), torch.zeros(1, 4, 5))
    with pytest.raises(TypeError, match="num_heads must be an integer"):
        check_head_sizes(8, 2.0)
    with pytest.raises(TypeError, match="mask must be boolean"):
        SelfAttention(8)(torch.zeros(1, 3, 8), torch.ones(3, 3))
