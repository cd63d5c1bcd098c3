"""The trainable torch modules compute the same attention as the NumPy package on the same weights."""

import numpy as np
import pytest
import torch

from attn_course import masks, scaled_dot_product_attention
from attn_course.torch_modules import CharLanguageModel, MultiHeadSelfAttention, SelfAttention, TransformerBlock
from tests.support import assert_close

B, L, D_MODEL, D_HEAD, NUM_HEADS = 2, 5, 12, 7, 3  # unique sizes


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


@pytest.mark.parametrize("with_mask", [False, True])
def test_multi_head_matches_the_numpy_layer(rng, with_mask):
    layer = MultiHeadSelfAttention(D_MODEL, NUM_HEADS)
    torch.nn.init.normal_(layer.out.bias)  # non-zero biases, so a misplaced bias shows
    x = rng.standard_normal((B, L, D_MODEL)).astype(np.float32)
    mask = masks.padding_mask([3, 5], L) if with_mask else None
    out, weights = layer(torch.from_numpy(x), None if mask is None else torch.from_numpy(mask), return_weights=True)
    expected, expected_weights = layer.to_numpy()(x, mask=mask, return_weights=True)
    assert weights.shape == (B, NUM_HEADS, L, L)
    assert_close(out.detach().numpy(), expected)
    assert_close(weights.detach().numpy(), expected_weights)


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
        (lambda: MultiHeadSelfAttention(0, 1), "d_model must be a positive integer"),
        (lambda: SelfAttention(4, -2), "d_model must be a positive integer"),
        (lambda: TransformerBlock(12, 5), "d_model must be divisible by num_heads"),
        (lambda: CharLanguageModel(0), "vocab_size must be a positive integer"),
        (lambda: CharLanguageModel(5, context_length=0), "context_length must be a positive integer"),
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
        MultiHeadSelfAttention(8, 2)(torch.zeros(1, 3, 8), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        SelfAttention(8)(torch.zeros(1, 3, 8), torch.ones(3, 3))
