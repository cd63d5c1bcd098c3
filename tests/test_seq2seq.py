"""Training and decoding helpers of lessons 16 and 17 (attn_course.seq2seq)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attn_course.data import CharVocabulary, make_date_splits
from attn_course.seq2seq import decode, exact_match, train_seq2seq
from attn_course.translation import Translator


@pytest.fixture(scope="module")
def setup():
    splits = make_date_splits(300, 20, 30, seed=3)
    source_vocab = CharVocabulary(source for source, _ in splits.train)
    target_vocab = CharVocabulary(target for _, target in splits.train)
    return splits, source_vocab, target_vocab


def new_model(source_vocab, target_vocab):
    torch.manual_seed(1)
    return Translator(len(source_vocab), len(target_vocab), d_model=16, num_heads=2,
                      num_encoder_layers=1, num_decoder_layers=1, max_length=32)  # fmt: skip


def test_training_is_repeatable_and_lowers_the_loss(setup):
    splits, source_vocab, target_vocab = setup
    threads = torch.get_num_threads()
    try:
        runs = [
            train_seq2seq(
                new_model(source_vocab, target_vocab),
                splits.train,
                source_vocab,
                target_vocab,
                40,
                batch_size=16,
                lr=1e-2,
                seed=5,
            )[0]
            for _ in range(2)
        ]
    finally:
        torch.set_num_threads(threads)
    assert len(runs[0]) == 40
    assert runs[0] == runs[1], "one thread and a seed: the same losses on every run"
    assert np.mean(runs[0][-10:]) < np.mean(runs[0][:10]), "the loss falls as the model learns the characters"


def test_decode_and_exact_match_agree(setup):
    splits, source_vocab, target_vocab = setup
    model = new_model(source_vocab, target_vocab)
    pairs = splits.test[:7]
    predictions, cross_weights = decode(model, pairs, source_vocab, target_vocab, max_new=11)
    assert len(predictions) == 7 and all(isinstance(p, str) and len(p) <= 11 for p in predictions)
    assert cross_weights[-1].shape[:2] == (7, 2)  # (B, h, T, S)
    accuracy, same = exact_match(model, pairs, source_vocab, target_vocab, max_new=11)
    assert same == predictions
    assert accuracy == np.mean([p == t for p, (_, t) in zip(predictions, pairs, strict=True)])
    # a perfect answer key scores 1: exact_match compares whole strings
    answer_key = [(s, p) for p, (s, _) in zip(predictions, pairs, strict=True)]
    assert exact_match(model, answer_key, source_vocab, target_vocab, 11)[0] == 1


def test_bad_arguments_name_what_is_wrong(setup):
    splits, source_vocab, target_vocab = setup
    model = new_model(source_vocab, target_vocab)
    with pytest.raises(ValueError, match="pairs"):
        decode(model, [], source_vocab, target_vocab, max_new=3)
    with pytest.raises(ValueError, match="max_new"):
        decode(model, splits.test[:2], source_vocab, target_vocab, max_new=0)
    with pytest.raises(ValueError, match="num_steps"):
        train_seq2seq(model, splits.train, source_vocab, target_vocab, 0)
