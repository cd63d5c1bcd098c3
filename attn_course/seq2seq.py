"""Training and decoding an encoder-decoder on pairs of strings (lessons 16 and 17).

Both applications train the same ``Translator`` (``attn_course.translation``) on
pairs ``(source, target)`` of strings, with the same recipe:

* each step draws ``batch_size`` training pairs at random (seeded), pads them
  into a batch (``attn_course.data.make_batch``) and runs the whole target
  through the decoder at once (teacher forcing: the decoder reads the true
  previous characters; its causal mask keeps each position from its answer);
* the loss is the cross-entropy of the next character, padding ignored
  (token 0 is ``<pad>``), minimised by AdamW (Adam with the weight decay
  applied to the weights directly, not through the gradient) under a one-cycle
  schedule (the learning rate rises to ``lr`` over the first 10 % of the steps,
  then falls towards zero);
* training runs on one thread, so that with a fixed seed the sums happen in the
  same order on every run and the numbers are the same each time.

Decoding is greedy (``Translator.greedy_decode``); ``exact_match`` is the
fraction of pairs whose whole output string is right. torch is imported here:
import this module only where torch is installed.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .data import make_batch
from .validation import check_int

__all__ = ["as_tensors", "decode", "exact_match", "train_seq2seq"]


def as_tensors(batch):
    """A batch's arrays as torch tensors: source, source_lengths, decoder_input, decoder_target, target_lengths."""
    arrays = (batch.source, batch.source_lengths, batch.decoder_input, batch.decoder_target, batch.target_lengths)
    return tuple(torch.from_numpy(array) for array in arrays)


def _check_pairs(pairs):
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"pairs must be a non-empty list of (source, target) strings; got {type(pairs).__name__}")
    return pairs


def train_seq2seq(model, pairs, source_vocab, target_vocab, num_steps, *, batch_size=64, lr=3e-3, seed=0,
                  desc="training"):  # fmt: skip
    """Teacher-forced training of ``model`` on ``pairs``; returns ``(losses per step, seconds)``.

    model: a ``Translator``; pairs: the training ``(source, target)`` strings;
    source_vocab, target_vocab: ``CharVocabulary`` objects; lr: the peak
    learning rate of the one-cycle schedule; seed: the draw of the batches.
    A progress bar named ``desc`` shows the current loss.
    """
    from tqdm import tqdm

    pairs = _check_pairs(pairs)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every run
    batch_rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=num_steps, pct_start=0.1)
    losses, start = [], time.perf_counter()
    model.train()
    for _ in (progress := tqdm(range(num_steps), desc=desc, mininterval=1.0)):
        picks = batch_rng.integers(len(pairs), size=batch_size)
        source, lengths, decoder_input, decoder_target, target_lengths = as_tensors(
            make_batch([pairs[i] for i in picks], source_vocab, target_vocab)
        )
        logits = model(source, lengths, decoder_input, target_lengths)  # (B, T, target_vocab)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), decoder_target.flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return losses, time.perf_counter() - start


@torch.no_grad()
def decode(model, pairs, source_vocab, target_vocab, max_new: int):
    """Greedy outputs for the pairs' sources, and the cross-attention weights (B, h, T, S) of each decoder layer."""
    pairs = _check_pairs(pairs)
    max_new = check_int("max_new", max_new, minimum=1)
    source, lengths, *_ = as_tensors(make_batch(pairs, source_vocab, target_vocab))
    tokens, cross_weights = model.eval().greedy_decode(source, lengths, max_new=max_new)
    return [target_vocab.decode(row) for row in tokens.numpy()], cross_weights


def exact_match(model, pairs, source_vocab, target_vocab, max_new: int):
    """The fraction of pairs whose output is exactly the target, and the outputs."""
    predictions, _ = decode(model, pairs, source_vocab, target_vocab, max_new)
    return float(np.mean([p == target for p, (_, target) in zip(predictions, pairs, strict=True)])), predictions
