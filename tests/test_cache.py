"""KVCache and decoding: chunked decoding against the full causal pass, windows and sinks against their masks."""

import numpy as np
import pytest
import torch

from attn_course import KVCache, MultiHeadAttention, masks
from attn_course.backend import asarray, to_numpy
from attn_course.cache import decode_mask
from attn_course.torch_modules import CharLanguageModel
from attn_course.torch_modules import MultiHeadAttention as TorchMultiHeadAttention
from attn_course.translation import Translator
from tests.support import BACKENDS, assert_close, random_array, same_library

D_MODEL, NUM_HEADS, N = 24, 6, 11  # head_dim 4; sequences of 11 positions
CHUNKINGS = [[1] * N, [4, 3, 4], [N], [2, 1, 5, 3], [1, 10]]
HEADS = [6, 3, 2, 1]  # key/value heads: MHA, GQA, GQA, MQA


def decode_in_chunks(mha, x, cache, chunks):
    """Feed x (..., N, d_model) to ``mha.decode`` in chunks of the given sizes; the outputs side by side."""
    outputs, start = [], 0
    for size in chunks:
        outputs.append(to_numpy(mha.decode(x[..., start : start + size, :], cache)))
        start += size
    assert start == x.shape[-2]
    return np.concatenate(outputs, axis=-2)


def windowed_mask(n, window, sinks):
    """The (n, n) mask a cache of ``window`` positions and ``sinks`` sinks stands for, from the masks module."""
    in_window = masks.sliding_window_mask(n, window - 1, causal=True)  # |i - j| <= window - 1: the query included
    sink_columns = masks.causal_mask(n) & (np.arange(n)[None, :] < sinks)
    return in_window | sink_columns


# --------------------------------------------------------------------------- the cache itself


def test_plain_cache_returns_every_position_in_order(rng):
    cache = KVCache()
    k, v = rng.standard_normal((2, 3, 7, 4)), rng.standard_normal((2, 3, 7, 6))
    for start, stop in [(0, 3), (3, 4), (4, 7)]:
        keys, values, positions = cache.append(k[..., start:stop, :], v[..., start:stop, :])
        assert np.array_equal(keys, k[..., :stop, :]) and np.array_equal(values, v[..., :stop, :])
        assert np.array_equal(positions, np.arange(stop))
        assert cache.length == stop
    assert np.array_equal(cache.positions, np.arange(7))
    assert cache.nbytes == 2 * 3 * 7 * (4 + 6) * 8
    assert cache.batch_shape == (2, 3) and cache.feature_sizes == (4, 6)


@pytest.mark.parametrize(("window", "sinks"), [(3, 0), (4, 2), (1, 1), (5, 0)])
@pytest.mark.parametrize("chunks", [[1] * 13, [3, 1, 4, 5], [6, 7], [13]])
def test_windowed_cache_keeps_the_last_positions_and_the_sinks(rng, window, sinks, chunks):
    cache = KVCache(window=window, sinks=sinks)
    k = rng.standard_normal((2, 13, 4))
    v = rng.standard_normal((2, 13, 6))
    start = 0
    for size in chunks:
        keys, values, positions = cache.append(k[:, start : start + size], v[:, start : start + size])
        stop = start + size
        # every returned key is the one at its stated position, and every key a new query may see is there
        assert np.array_equal(keys, k[:, positions]) and np.array_equal(values, v[:, positions])
        needed = {j for i in range(start, stop) for j in range(i + 1) if i - j < window or j < sinks}
        assert needed <= set(positions.tolist())
        start = stop
        kept = sorted(cache.positions.tolist())
        expected = sorted(set(range(min(sinks, stop))) | set(range(max(0, stop - window), stop)))
        assert kept == expected
        assert cache.nbytes == len(expected) * 2 * (4 + 6) * 8


def test_windowed_cache_memory_stays_flat():
    cache = KVCache(window=8, sinks=2)
    sizes = []
    for position in range(200):
        cache.append(np.full((3, 1, 4), position, dtype=np.float32), np.zeros((3, 1, 5), dtype=np.float32))
        sizes.append(cache.nbytes)
    assert cache.length == 200
    assert max(sizes) == sizes[-1] == 3 * 10 * (4 + 5) * 4  # sinks + window positions, never more
    assert sorted(cache.positions.tolist()) == [0, 1, *range(192, 200)]
    assert set(cache.keys[0, :, 0].tolist()) == {0.0, 1.0, *map(float, range(192, 200))}


def test_decode_mask_is_causal_window_and_sinks():
    queries, keys = np.arange(5, 8), np.array([0, 1, 7, 3, 4, 5, 6])  # keys in a rolling buffer's order
    expected = np.array([[(j <= i) and (i - j < 3 or j < 2) for j in keys] for i in queries])
    assert np.array_equal(decode_mask(queries, keys, window=3, sinks=2), expected)
    assert np.array_equal(decode_mask(queries, keys), keys[None, :] <= queries[:, None])


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: KVCache(window=-1), ValueError, "window must be >= 1; got -1"),
        (lambda: KVCache(window=0), ValueError, "window must be >= 1; got 0"),
        (lambda: KVCache(window=2.5), TypeError, "window must be an integer"),
        (lambda: KVCache(window=4, sinks=-1), ValueError, "sinks must be >= 0; got -1"),
        (lambda: KVCache(sinks=2), ValueError, "sinks=2 needs a window"),
    ],
)
def test_cache_refuses_bad_settings(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("k", "v", "error", "match"),
    [
        (np.zeros((3, 1, 4)), np.zeros((3, 1, 6)), ValueError, r"differs in its leading axes.*or its feature size d"),
        (np.zeros((2, 1, 5)), np.zeros((2, 1, 6)), ValueError, r"holds keys of shape \(2, 'n', 4\)"),
        (np.zeros((2, 1, 4)), np.zeros((2, 1, 5)), ValueError, "another feature size dv"),
        (np.zeros((2, 1, 4), np.float32), np.zeros((2, 1, 6), np.float32), TypeError, "holds float64 keys"),
        (np.zeros((2, 1, 4)), np.zeros((2, 2, 6)), ValueError, "must agree in every axis but the last"),
        (np.zeros((2, 1, 4), dtype=np.int64), np.zeros((2, 1, 6)), TypeError, "k must have a floating dtype"),
        (np.zeros((2, 0, 4)), np.zeros((2, 0, 6)), ValueError, "need at least one position and one feature"),
    ],
)
def test_append_refuses_what_does_not_fit(k, v, error, match):
    cache = KVCache()
    cache.append(np.zeros((2, 3, 4)), np.zeros((2, 3, 6)))
    with pytest.raises(error, match=match):
        cache.append(k, v)
    assert cache.length == 3  # nothing was added


# --------------------------------------------------------------------------- decoding with MultiHeadAttention


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_kv_heads", HEADS)
@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_chunked_decoding_equals_the_full_causal_pass(rng, backend, num_kv_heads, chunks):
    mha = MultiHeadAttention(D_MODEL, NUM_HEADS, num_kv_heads=num_kv_heads, seed=2, like=backend)
    x = random_array(rng, (2, N, D_MODEL), np.float32, backend)
    full = mha(x, is_causal=True)  # (2, N, d_model)
    cache = mha.new_cache()
    assert_close(decode_in_chunks(mha, x, cache, chunks), full, np.float32)
    assert cache.length == N and cache.batch_shape == (2, num_kv_heads)
    assert cache.nbytes == 2 * num_kv_heads * N * 2 * (D_MODEL // NUM_HEADS) * 4  # keys and values, float32


@pytest.mark.parametrize("num_kv_heads", HEADS)
@pytest.mark.parametrize(("window", "sinks"), [(3, 0), (4, 2), (1, 1), (N, 0)])
@pytest.mark.parametrize("chunks", [[1] * N, [4, 3, 4], [2, 1, 5, 3], [N]])
def test_windowed_decoding_equals_the_windowed_mask(rng, num_kv_heads, window, sinks, chunks):
    mha = MultiHeadAttention(D_MODEL, NUM_HEADS, num_kv_heads=num_kv_heads, seed=4)
    x = random_array(rng, (2, N, D_MODEL))
    expected = mha(x, mask=windowed_mask(N, window, sinks))
    cache = mha.new_cache(window=window, sinks=sinks)
    assert_close(decode_in_chunks(mha, x, cache, chunks), expected, np.float32)
    assert len(cache.positions) == min(N, window + sinks)


def test_decoding_float64_and_without_bias(rng):
    mha = MultiHeadAttention(D_MODEL, NUM_HEADS, num_kv_heads=2, bias=False, seed=1)
    mha.W_q, mha.W_k, mha.W_v, mha.W_o = (w.astype(np.float64) for w in (mha.W_q, mha.W_k, mha.W_v, mha.W_o))
    x = rng.standard_normal((3, N, D_MODEL))
    out = decode_in_chunks(mha, x, mha.new_cache(), [5, 1, 5])
    assert out.dtype == np.float64
    assert_close(out, mha(x, is_causal=True))


def test_top_left_alignment_would_be_wrong_when_decoding(rng):
    """The point of bottom-right alignment: with is_causal (top-left) the new query sees only the first key."""
    mha = MultiHeadAttention(D_MODEL, NUM_HEADS, seed=0)
    x = random_array(rng, (1, N, D_MODEL))
    cache = mha.new_cache()
    mha.decode(x[:, : N - 1], cache)
    last = mha.decode(x[:, N - 1 :], cache)
    assert_close(last, mha(x, is_causal=True)[:, -1:], np.float32)
    q_row = mha(x[:, N - 1 :], x, is_causal=True)  # one query, N keys, top-left: it sees key 0 only
    assert not np.allclose(to_numpy(q_row), to_numpy(last), atol=1e-3)


@pytest.mark.parametrize(
    ("layer_heads", "cache_heads", "match"),
    [
        (2, 3, r"the cache holds keys .* with 3 heads of 4 features.*num_kv_heads=2 of head_dim=4"),
        (6, 2, r"with 2 heads.*num_kv_heads=6"),
    ],
)
def test_decode_refuses_a_cache_of_another_layout(rng, layer_heads, cache_heads, match):
    other = MultiHeadAttention(D_MODEL, NUM_HEADS, num_kv_heads=cache_heads)
    cache = other.new_cache()
    x = random_array(rng, (1, 3, D_MODEL))
    other.decode(x, cache)
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(D_MODEL, NUM_HEADS, num_kv_heads=layer_heads).decode(x, cache)


def test_decode_refuses_a_cache_of_another_feature_size(rng):
    cache = KVCache()
    cache.append(np.zeros((1, 2, 3, 5), np.float32), np.zeros((1, 2, 3, 5), np.float32))  # head_dim 5, not 4
    with pytest.raises(ValueError, match=r"2 heads of 5 features.*num_kv_heads=2 of head_dim=4"):
        MultiHeadAttention(D_MODEL, NUM_HEADS, num_kv_heads=2).decode(random_array(rng, (1, 1, D_MODEL)), cache)


@pytest.mark.parametrize(
    ("x", "cache", "error", "match"),
    [
        (np.zeros((1, 2, 7), np.float32), KVCache(), ValueError, "x_new must have d_model=24 features"),
        (np.zeros((1, 2, 24), np.int64), KVCache(), TypeError, "x_new must have a floating dtype"),
        (np.zeros((1, 2, 24), np.float32), None, TypeError, "cache must be an attn_course.KVCache"),
    ],
)
def test_decode_refuses_bad_input(x, cache, error, match):
    with pytest.raises(error, match=match):
        MultiHeadAttention(D_MODEL, NUM_HEADS).decode(x, cache)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_keeps_the_library(rng, backend):
    cache = KVCache(window=3)
    k = asarray(rng.standard_normal((2, 4, 5)).astype(np.float32), backend)
    keys, _, positions = cache.append(k, k)
    assert same_library(keys, k) and same_library(positions, k)
    cache.append(k[:, :1], k[:, :1])
    assert same_library(cache.positions, k)


# --------------------------------------------------------------------------- the torch modules of lessons 09 and 16


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 3])
def test_torch_decode_matches_the_full_pass(num_kv_heads, window):
    torch.manual_seed(0)
    layer = TorchMultiHeadAttention(16, 4, num_kv_heads=num_kv_heads).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    if window is None:
        expected = layer(x, is_causal=True)
    else:
        expected = layer(x, mask=torch.from_numpy(windowed_mask(9, window, 0)))
    cache = KVCache(window=window)
    with torch.no_grad():
        out = torch.cat([layer.decode(x[:, a:b], cache) for a, b in [(0, 4), (4, 5), (5, 9)]], dim=1)
    assert_close(out, expected.detach())
    numpy_layer = layer.float().to_numpy()
    assert numpy_layer.num_kv_heads == num_kv_heads
    assert_close(numpy_layer(x.float().numpy(), is_causal=True), layer(x.float(), is_causal=True).detach())


def test_char_model_decodes_in_chunks_like_its_forward():
    torch.manual_seed(1)
    model = CharLanguageModel(13, d_model=16, num_heads=2, context_length=20).eval()
    ids = torch.randint(0, 13, (2, 12))
    caches = model.new_caches()
    with torch.no_grad():
        logits = torch.cat([model.decode(ids[:, a:b], caches) for a, b in [(0, 5), (5, 6), (6, 12)]], dim=1)
        expected = model(ids)
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="context_length=20"):
        model.decode(ids, caches)  # 12 cached + 12 new > 20


@pytest.mark.parametrize("num_new", [5, 30])  # within the context, and past it (the window then slides)
def test_generation_with_the_cache_gives_the_same_characters(num_new):
    torch.manual_seed(2)
    model = CharLanguageModel(17, d_model=16, num_heads=2, context_length=24).eval()
    prompt = torch.randint(0, 17, (3, 6))
    cached = model.generate(prompt, num_new, temperature=0.8, generator=torch.Generator().manual_seed(5))
    full = model.generate(prompt, num_new, temperature=0.8, generator=torch.Generator().manual_seed(5),
                          use_cache=False)  # fmt: skip
    assert cached.shape == (3, 6 + num_new)
    assert torch.equal(cached, full)


@pytest.mark.parametrize("context", ["attention", "mean"])
def test_greedy_decoding_with_the_cache_gives_the_same_tokens_and_weights(context):
    torch.manual_seed(3)
    model = Translator(12, 9, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=2,
                       max_length=16, context=context).eval()  # fmt: skip
    source = torch.randint(3, 12, (4, 8))
    lengths = torch.tensor([8, 5, 6, 3])
    tokens, weights = model.greedy_decode(source, lengths, max_new=10, eos=99)  # eos never drawn: all 10 steps
    full_tokens, full_weights = model.greedy_decode(source, lengths, max_new=10, eos=99, use_cache=False)
    assert tokens.shape == (4, 10)
    assert torch.equal(tokens, full_tokens)
    assert len(weights) == len(full_weights) == (2 if context == "attention" else 0)
    for step_rows, full_rows in zip(weights, full_weights, strict=True):
        assert step_rows.shape == (4, 2, 10, 8)
        np.testing.assert_allclose(step_rows.numpy(), full_rows.numpy(), atol=1e-5)
