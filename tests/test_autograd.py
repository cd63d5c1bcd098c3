"""The autograd Function: gradcheck in float64, torch's own gradients, and lesson 09's model trained through it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attn_course import masks
from attn_course.autograd import Attention, TiledSelfAttention, attention, use_tiled_attention
from attn_course.torch_modules import CharLanguageModel, MultiHeadSelfAttention
from tests.support import assert_close


def leaf(generator, *shape):
    return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_(True)


@pytest.fixture
def qkv():
    generator = torch.Generator().manual_seed(0)
    return leaf(generator, 2, 3, 5, 4), leaf(generator, 2, 1, 7, 4), leaf(generator, 2, 1, 7, 6)  # k, v shared


MASK = torch.from_numpy(np.random.default_rng(1).random((5, 7)) < 0.6)
MASK[2] = False  # query 2 may attend to nothing

OPTIONS = [
    {},
    {"is_causal": True},
    {"mask": MASK, "block_size": 2},
    {"mask": masks.sliding_window(2), "is_causal": True, "block_size": 3},
    {"scale": 0.3, "block_size": 3},
]


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "causal", "mask", "predicate", "scale"])
def test_gradcheck_in_float64(qkv, options):
    fast_mode = bool(options)  # every entry of the Jacobian for the plain case; random projections for the others
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, **options), qkv, fast_mode=fast_mode)


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradients_equal_torch_scaled_dot_product_attention(qkv, is_causal):
    generator = torch.Generator().manual_seed(2)
    grad_out = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=generator)
    ours = attention(*qkv, is_causal=is_causal, block_size=2)
    ours_grads = torch.autograd.grad(ours, qkv, grad_out)
    theirs = F.scaled_dot_product_attention(*qkv, is_causal=is_causal)
    theirs_grads = torch.autograd.grad(theirs, qkv, grad_out)
    assert_close(ours.detach(), theirs.detach(), np.float64, what="out")
    for name, a, b in zip(("dq", "dk", "dv"), ours_grads, theirs_grads, strict=True):
        assert a.shape == b.shape
        assert_close(a, b, np.float64, what=name)


def test_float32_and_the_module(qkv):
    q, k, v = (x.detach().float().requires_grad_(True) for x in qkv)
    out = Attention(block_size=2)(q, k, v, is_causal=True)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 5, 6)
    out.square().sum().backward()
    q64, k64, v64 = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    F.scaled_dot_product_attention(q64, k64, v64, is_causal=True).square().sum().backward()
    for name, a, b in (("dq", q, q64), ("dk", k, k64), ("dv", v, v64)):
        assert_close(a.grad, b.grad, np.float32, what=name)


def test_lesson_09_model_gives_the_same_loss_and_gradients_with_tiled_attention():
    torch.manual_seed(0)
    reference = CharLanguageModel(11, d_model=16, num_heads=2, num_layers=2, context_length=12).double()
    tiled = CharLanguageModel(11, d_model=16, num_heads=2, num_layers=2, context_length=12).double()
    tiled.load_state_dict(reference.state_dict())
    assert use_tiled_attention(tiled) is tiled
    assert all(isinstance(block.attention, TiledSelfAttention) for block in tiled.blocks)
    ids = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (reference, tiled):
        loss = F.cross_entropy(model(ids[:, :-1]).reshape(-1, 11), ids[:, 1:].reshape(-1))
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    tiled_parameters = dict(tiled.named_parameters())
    for name, parameter in reference.named_parameters():
        assert_close(tiled_parameters[name].grad, parameter.grad, np.float64, what=name)
    _, weights = tiled(ids, return_weights=True)
    assert weights == [None, None]  # the tiled layers never form the weights


def test_tiled_self_attention_keeps_the_parent_call():
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(8, 2).double()
    tiled = TiledSelfAttention(8, 2).double()
    tiled.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.from_numpy(np.random.default_rng(0).random((2, 5, 5)) < 0.7)
    mask[..., 0] = True
    assert_close(tiled(x, mask=mask).detach(), layer(x, mask=mask).detach(), np.float64)


def test_bad_input_names_the_argument(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="q must be a torch tensor"):
        attention(q.detach().numpy(), k, v)
    with pytest.raises(TypeError, match="mask must be None"):
        attention(q, k, v, mask=np.ones((5, 7), dtype=bool))
    with pytest.raises(ValueError, match="q and k"):
        attention(q, k[..., :3], v)


def test_tiled_layer_with_grouped_query_heads_matches_the_plain_layer():
    from torch import nn as torch_nn

    from attn_course.torch_modules import MultiHeadAttention as TorchMultiHeadAttention

    torch.manual_seed(3)
    plain = TorchMultiHeadAttention(12, 6, num_kv_heads=2).double()
    holder = torch_nn.ModuleList([TorchMultiHeadAttention(12, 6, num_kv_heads=2).double()])
    holder[0].load_state_dict(plain.state_dict())
    use_tiled_attention(holder)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(holder[0](x, is_causal=True), plain(x, is_causal=True), rtol=1e-10, atol=1e-12)
