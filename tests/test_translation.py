"""The encoder-decoder translator: cross-attention equals the NumPy layer, masks, pre-LN order, greedy decoding."""

import numpy as np
import pytest
import torch

from attn_course import masks, torch_modules
from attn_course.torch_modules import FeedForward, MultiHeadSelfAttention
from attn_course.translation import (
    DecoderLayer,
    MultiHeadCrossAttention,
    Translator,
    decoder_self_mask,
    source_padding_mask,
)
from tests.support import assert_close

B, T, S, D_MODEL, NUM_HEADS = 3, 5, 7, 12, 3  # unique sizes
SOURCE_VOCAB, TARGET_VOCAB = 13, 11
SOURCE_LENGTHS = [7, 4, 2]
requires_torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch with a CUDA GPU is needed")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def small_translator(context="attention"):
    return Translator(SOURCE_VOCAB, TARGET_VOCAB, d_model=D_MODEL, num_heads=NUM_HEADS, num_encoder_layers=2,
                      num_decoder_layers=2, max_length=16, context=context).eval()  # fmt: skip


def source_batch():
    lengths = torch.tensor(SOURCE_LENGTHS)
    source = torch.randint(3, SOURCE_VOCAB, (B, S))
    source[torch.arange(S)[None, :] >= lengths[:, None]] = 0  # <pad> after each source
    return source, lengths


def test_cross_attention_matches_the_numpy_layer_on_the_same_weights(rng):
    layer = MultiHeadCrossAttention(D_MODEL, NUM_HEADS)
    torch.nn.init.normal_(layer.out.bias)  # non-zero biases, so a misplaced bias shows
    torch.nn.init.normal_(layer.key.bias)
    x = rng.standard_normal((B, T, D_MODEL)).astype(np.float32)
    memory = rng.standard_normal((B, S, D_MODEL)).astype(np.float32)
    mask = masks.padding_mask(SOURCE_LENGTHS, S)  # (B, 1, 1, S)
    memory_tensor = torch.from_numpy(memory)  # keys and values
    out, weights = layer(torch.from_numpy(x), memory_tensor, memory_tensor, mask=torch.from_numpy(mask),
                         return_weights=True)  # fmt: skip
    expected, expected_weights = layer.to_numpy()(x, memory, memory, mask=mask, return_weights=True)
    assert out.shape == (B, T, D_MODEL) and weights.shape == (B, NUM_HEADS, T, S)
    assert_close(out.detach().numpy(), expected)
    assert_close(weights.detach().numpy(), expected_weights)
    assert float(weights.detach()[1, :, :, 4:].abs().max()) == 0.0  # no query reads a padded source position


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_masks_equal_the_numpy_package_masks(dtype):
    target_lengths = torch.tensor([5, 3, 0], dtype=dtype)  # a length 0 masks every key of its sequence
    expected = masks.causal_mask(T)[None, None] & masks.padding_mask(target_lengths.numpy(), T)  # (B, 1, T, T)
    got = decoder_self_mask(target_lengths, T)
    assert got.dtype == torch.bool and got.shape == (B, 1, T, T)
    np.testing.assert_array_equal(got.numpy(), expected)
    # and written by hand: key j <= query i and j < length
    positions = np.arange(T)
    by_hand = (positions[None, :] <= positions[:, None]) & (positions < target_lengths.numpy()[:, None, None, None])
    np.testing.assert_array_equal(got.numpy(), by_hand)
    source_lengths = torch.tensor(SOURCE_LENGTHS, dtype=dtype)
    got_source = source_padding_mask(source_lengths, S)
    assert got_source.dtype == torch.bool and got_source.shape == (B, 1, 1, S)
    np.testing.assert_array_equal(got_source.numpy(), masks.padding_mask(SOURCE_LENGTHS, S))
    empty = torch.zeros(0, dtype=dtype)
    assert source_padding_mask(empty, S).shape == (0, 1, 1, S) and decoder_self_mask(empty, T).shape == (0, 1, T, T)


@requires_torch_cuda
def test_masks_are_made_on_the_device_of_the_lengths():
    lengths = torch.tensor(SOURCE_LENGTHS, device="cuda")
    assert source_padding_mask(lengths, S).device == lengths.device
    assert decoder_self_mask(lengths, S).device == lengths.device


def test_decoder_layer_is_pre_layer_norm(rng):
    layer = DecoderLayer(D_MODEL, NUM_HEADS)
    y = torch.from_numpy(rng.standard_normal((B, T, D_MODEL)).astype(np.float32))
    memory = torch.from_numpy(rng.standard_normal((B, S, D_MODEL)).astype(np.float32))
    self_mask = decoder_self_mask(torch.tensor([5, 3, 4]), T)
    source_mask = source_padding_mask(torch.tensor(SOURCE_LENGTHS), S)
    with torch.no_grad():
        step = y + layer.self_attention(layer.norm_self(y), is_causal=False, mask=self_mask)
        step = step + layer.cross_attention(layer.norm_cross(step), memory, memory, mask=source_mask)
        expected = step + layer.mlp(layer.norm_mlp(step))
        out, weights = layer(y, memory, self_mask, source_mask)
    assert_close(out.numpy(), expected.double().numpy(), np.float32)
    assert weights.shape == (B, NUM_HEADS, T, S)


def test_decoder_layer_is_made_of_the_shared_modules():
    layer = DecoderLayer(D_MODEL, NUM_HEADS, mlp_ratio=2)
    assert MultiHeadCrossAttention is torch_modules.MultiHeadCrossAttention  # one class, re-exported
    assert isinstance(layer.self_attention, MultiHeadSelfAttention)
    assert isinstance(layer.cross_attention, torch_modules.MultiHeadAttention)
    assert isinstance(layer.mlp, FeedForward) and layer.mlp[0].out_features == 2 * D_MODEL
    names = [name for name, _ in layer.named_parameters()]  # seeded lessons rely on this order
    assert [name.rsplit(".", 1)[0] for name in names[::2]] == [
        "norm_self", "self_attention.query", "self_attention.key", "self_attention.value", "self_attention.out",
        "norm_cross", "cross_attention.query", "cross_attention.key", "cross_attention.value", "cross_attention.out",
        "norm_mlp", "mlp.0", "mlp.2",
    ]  # fmt: skip


def test_decoder_is_causal_and_ignores_source_padding():
    model = small_translator()
    source, lengths = source_batch()
    decoder_input = torch.randint(3, TARGET_VOCAB, (B, T))
    changed_target = decoder_input.clone()
    changed_target[:, -1] = (changed_target[:, -1] + 1) % TARGET_VOCAB
    changed_padding = source.clone()
    changed_padding[2, 2:] = 5  # only padded positions of the third source change
    with torch.no_grad():
        logits, cross = model(source, lengths, decoder_input, return_weights=True)
        later_changed = model(source, lengths, changed_target)
        padding_changed = model(changed_padding, lengths, decoder_input)
    assert logits.shape == (B, T, TARGET_VOCAB) and len(cross) == 2 and cross[0].shape == (B, NUM_HEADS, T, S)
    torch.testing.assert_close(logits[:, :-1], later_changed[:, :-1])  # earlier outputs ignore later inputs
    assert not torch.allclose(logits[:, -1], later_changed[:, -1])
    torch.testing.assert_close(logits, padding_changed)  # padding is never read
    for weights in cross:
        torch.testing.assert_close(weights.sum(-1), torch.ones(B, NUM_HEADS, T))


def test_the_source_changes_the_output_only_through_cross_attention():
    model = small_translator()
    source, lengths = source_batch()
    other = source.clone()
    other[0, 0] = 3 if source[0, 0] != 3 else 4
    decoder_input = torch.randint(3, TARGET_VOCAB, (B, T))
    with torch.no_grad():
        first, second = model(source, lengths, decoder_input), model(other, lengths, decoder_input)
        for layer in model.decoder:  # cut the only path from the source to the decoder
            layer.cross_attention.out.weight.zero_()
            layer.cross_attention.out.bias.zero_()
        cut_first, cut_second = model(source, lengths, decoder_input), model(other, lengths, decoder_input)
    assert not torch.allclose(first[0], second[0])
    torch.testing.assert_close(cut_first, cut_second)


@pytest.mark.parametrize("context", ["attention", "mean"])
def test_greedy_decoding_takes_the_argmax_of_its_own_prefix(context):
    model = small_translator(context)
    source, lengths = source_batch()
    tokens, cross = model.greedy_decode(source, lengths, max_new=6)
    assert tokens.dtype == torch.int64 and tokens.shape[0] == B and 1 <= tokens.shape[1] <= 6
    decoder_input = torch.cat([torch.full((B, 1), 1), tokens[:, :-1]], dim=1)  # <bos> then the output
    with torch.no_grad():
        logits, expected_cross = model(source, lengths, decoder_input, return_weights=True)
    best = logits.argmax(-1)  # (B, n): what a teacher-forced pass prefers at each step
    for b in range(B):
        ended = (tokens[b] == 2).nonzero()
        n = int(ended[0]) + 1 if len(ended) else tokens.shape[1]
        torch.testing.assert_close(tokens[b, :n], best[b, :n])
        assert bool((tokens[b, n:] == 0).all())  # <pad> after <eos>
    if context == "attention":
        assert len(cross) == 2
        for got, expected in zip(cross, expected_cross, strict=True):
            torch.testing.assert_close(got, expected)
    else:
        assert cross == [] and all(layer.cross_attention is None for layer in model.decoder)


def test_training_step_reaches_every_cross_attention_projection():
    model = small_translator().train()
    source, lengths = source_batch()
    model(source, lengths, torch.randint(3, TARGET_VOCAB, (B, T))).square().sum().backward()
    for layer in model.decoder:
        for name in ("query", "key", "value", "out"):
            grad = getattr(layer.cross_attention, name).weight.grad
            assert grad is not None and torch.count_nonzero(grad) > 0, f"no gradient reaches cross W_{name}"


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda m, s, n: Translator(0, 5), ValueError, "source_vocab_size"),
        (lambda m, s, n: Translator(5, 5, d_model=10, num_heads=3), ValueError, "d_model"),
        (lambda m, s, n: Translator(5, 5, context="sum"), ValueError, "context"),
        (lambda m, s, n: m(s.float(), n, s[:, :3]), TypeError, "source"),
        (lambda m, s, n: m(s[0], n, s[:, :3]), ValueError, "source"),
        (lambda m, s, n: m(s, n[:2], s[:, :3]), ValueError, "source_lengths"),
        (lambda m, s, n: m(s, n + 5, s[:, :3]), ValueError, "source_lengths"),
        (lambda m, s, n: m(s, n.float(), s[:, :3]), TypeError, "source_lengths"),
        (lambda m, s, n: m(s, n, s[:, :3] + 20), ValueError, "decoder_input"),
        (lambda m, s, n: m(s, n, torch.zeros(B, 17, dtype=torch.int64)), ValueError, "decoder_input"),
        (lambda m, s, n: m(s, n, s[:, :3], torch.tensor([4, 1, 1])), ValueError, "target_lengths"),
        (lambda m, s, n: m.greedy_decode(s, n, max_new=0), ValueError, "max_new"),
        (lambda m, s, n: source_padding_mask(n.float(), S), TypeError, "source_lengths"),
        (lambda m, s, n: source_padding_mask(n, S - 3), ValueError, "source_lengths"),
        (lambda m, s, n: source_padding_mask(n, 0), ValueError, "num_sources"),
        (lambda m, s, n: decoder_self_mask([3, 2], T), TypeError, "target_lengths"),
        (lambda m, s, n: decoder_self_mask(torch.tensor([3, 2]), 2.5), ValueError, "num_targets"),
        (lambda m, s, n: DecoderLayer(10, 3), ValueError, "d_model"),
        (lambda m, s, n: MultiHeadCrossAttention(D_MODEL, 0), ValueError, "num_heads"),
        (lambda m, s, n: m.decoder[0].cross_attention(torch.zeros(B, T, 5), torch.zeros(B, S, D_MODEL)),
         ValueError, r"query must have shape \(\.\.\., n, d_model\) with d_model=12; got \(3, 5, 5\)"),
        (lambda m, s, n: m.decoder[0].cross_attention(torch.zeros(B, T, D_MODEL), torch.zeros(B, S, 5)),
         ValueError, "key must have shape"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_with_the_argument_named(call, error, name):
    model = small_translator()
    source, lengths = source_batch()
    with pytest.raises(error, match=name):
        call(model, source, lengths)
