"""The shipping-log summarization task: the digest rule, sentence kinds, seeded disjoint splits, bad input."""

import re

import pytest

from attn_course.data import (
    FILLERS,
    PROBLEMS,
    ROUTINE,
    STATUSES,
    CharVocabulary,
    digest,
    make_batch,
    make_report_splits,
    sentence_spans,
)

SPLITS = make_report_splits(1500, 200, 300, seed=3)
EVENT = re.compile(r"([A-Z]) (.+)")


def reference_digest(source: str) -> str:
    """The rule written a second way: walk the sentences, keep the events whose status is a problem."""
    kept = []
    for sentence in source.split("; "):
        match = EVENT.fullmatch(sentence)
        if match and match.group(2) in PROBLEMS:
            kept.append(f"{match.group(1)} {match.group(2)}")
    return ", ".join(kept) or "all clear"


def test_the_same_seed_gives_the_same_splits_and_another_seed_others():
    assert make_report_splits(1500, 200, 300, seed=3) == SPLITS
    assert make_report_splits(1500, 200, 300, seed=4).test != SPLITS.test


def test_split_sizes_and_no_log_in_two_splits_or_twice_in_one():
    assert (len(SPLITS.train), len(SPLITS.valid), len(SPLITS.test)) == (1500, 200, 300)
    logs = [source for split in (SPLITS.train, SPLITS.valid, SPLITS.test) for source, _ in split]
    assert len(set(logs)) == len(logs)


def test_targets_follow_the_digest_rule():
    for split in (SPLITS.train, SPLITS.valid, SPLITS.test):
        for source, target in split:
            assert target == digest(source) == reference_digest(source), source


def test_every_status_filler_and_digest_size_is_produced_in_each_split():
    for split in (SPLITS.train, SPLITS.test):
        sentences = {sentence for source, _ in split for sentence in source.split("; ")}
        statuses = {EVENT.fullmatch(s).group(2) for s in sentences if EVENT.fullmatch(s)}
        assert statuses == set(STATUSES)
        assert set(FILLERS) <= sentences
        sizes = {0 if target == "all clear" else target.count(", ") + 1 for _, target in split}
        assert sizes == {0, 1, 2, 3}  # the default max_problems=3
        lengths = {source.count("; ") + 1 for source, _ in split}
        assert lengths == {3, 4, 5}


def test_logs_respect_their_limits_and_name_each_ship_once():
    splits = make_report_splits(400, 0, 0, seed=1, min_sentences=2, max_sentences=4, max_problems=1)
    for source, target in splits.train:
        sentences = source.split("; ")
        assert 2 <= len(sentences) <= 4
        ships = [EVENT.fullmatch(s).group(1) for s in sentences if EVENT.fullmatch(s)]
        assert len(ships) == len(set(ships))
        assert "," not in target


def test_sentence_spans_cover_each_sentence_with_its_kind():
    for source, target in SPLITS.test[:100]:
        spans = sentence_spans(source)
        assert [source[start:end] for start, end, _ in spans] == source.split("; ")
        for start, end, kind in spans:
            sentence = source[start:end]
            status = sentence.split(" ", 1)[-1]
            expected = "filler" if sentence in FILLERS else "problem" if status in PROBLEMS else "routine"
            assert kind == expected, sentence
        problems = [source[start:end] for start, end, kind in spans if kind == "problem"]
        assert ", ".join(problems) == (target if target != "all clear" else "")


def test_examples():
    assert digest("K late; fog; B docked; Q sunk; crew ok") == "K late, Q sunk"
    assert digest("fog; B on time") == "all clear"
    assert sentence_spans("fog; B sunk; C docked") == [(0, 3, "filler"), (5, 11, "problem"), (13, 21, "routine")]
    assert set(ROUTINE).isdisjoint(PROBLEMS)


def test_pairs_batch_with_the_translation_machinery():
    vocabularies = [CharVocabulary(pair[side] for pair in SPLITS.train) for side in (0, 1)]  # source, target
    batch = make_batch(SPLITS.test[:5], *vocabularies)
    sources = [vocabularies[0].decode(row) for row in batch.source]
    targets = [vocabularies[1].decode(row) for row in batch.decoder_target]
    assert list(zip(sources, targets, strict=True)) == list(SPLITS.test[:5])


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [
        (lambda: make_report_splits(0, 1, 1), ValueError, "num_train"),
        (lambda: make_report_splits(10, -1, 1), ValueError, "num_valid"),
        (lambda: make_report_splits(10, 1, 2.5), TypeError, "num_test"),
        (lambda: make_report_splits(10, 1, 1, seed="a"), TypeError, "seed"),
        (lambda: make_report_splits(10, 1, 1, min_sentences=0), ValueError, "min_sentences"),
        (lambda: make_report_splits(10, 1, 1, min_sentences=4, max_sentences=3), ValueError, "max_sentences"),
        (lambda: make_report_splits(10, 1, 1, max_problems=True), TypeError, "max_problems"),
        (lambda: make_report_splits(10, 1, 1, max_problems=-1), ValueError, "max_problems"),
        (lambda: make_report_splits(10**6, 1, 1), ValueError, "num_train"),
        (lambda: make_report_splits(200, 0, 0, min_sentences=1, max_sentences=1), ValueError, "min_sentences=1"),
        (lambda: digest(3), TypeError, "source"),
        (lambda: digest(""), ValueError, "source"),
        (lambda: digest("K late; the sun rose"), ValueError, "source"),
        (lambda: sentence_spans("k late"), ValueError, "source"),
        (lambda: sentence_spans(None), TypeError, "source"),
    ],
)
def test_bad_input_is_refused_with_the_argument_named(call, error, names):
    with pytest.raises(error, match=names):
        call()
