"""The dates translation task: formats, seeded disjoint splits, vocabularies and padded batches."""

import datetime
import re

import numpy as np
import pytest

from attn_course import masks
from attn_course.data import (
    FORMATS,
    CharVocabulary,
    make_batch,
    make_date_splits,
    parse_iso,
)
from attn_course.data import format_date as write

SPLITS = make_date_splits(3000, 400, 600, seed=5)


def test_the_same_seed_gives_the_same_splits_and_another_seed_others():
    assert make_date_splits(3000, 400, 600, seed=5) == SPLITS
    other = make_date_splits(3000, 400, 600, seed=6)
    assert other.test != SPLITS.test


def test_split_sizes():
    assert (len(SPLITS.train), len(SPLITS.valid), len(SPLITS.test)) == (3000, 400, 600)


def test_splits_share_no_date_and_no_source_string():
    dates = {name: {t for _, t in getattr(SPLITS, name)} for name in ("train", "valid", "test")}
    sources = {name: {s for s, _ in getattr(SPLITS, name)} for name in ("train", "valid", "test")}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not dates[a] & dates[b], f"{a} and {b} share dates"
        assert not sources[a] & sources[b], f"{a} and {b} share source strings"
    assert len(dates["test"]) == len(SPLITS.test)  # every test example is a different date


def test_every_format_is_produced_in_each_split():
    day = datetime.date(1998, 3, 3)
    # A source string's format is recognised by rewriting its date in every format.
    for name in ("train", "test"):
        seen = set()
        for source, target in getattr(SPLITS, name):
            date = datetime.date.fromisoformat(target)
            seen |= {fmt for fmt in FORMATS if write(date, fmt) == source}
        assert seen == set(FORMATS), f"{name} lacks {set(FORMATS) - seen}"
    assert len({write(day, fmt) for fmt in FORMATS}) == len(FORMATS)  # the formats really differ


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_names_its_date_unambiguously(fmt):
    # Parse the numbers back out of the string: the day, month name or number, and year are all there.
    for date in (datetime.date(1951, 1, 1), datetime.date(2049, 12, 31), datetime.date(1998, 3, 13)):
        text = write(date, fmt)
        numbers = [int(n) for n in re.findall(r"\d+", text)]
        year_written = date.year if str(date.year) in text else date.year % 100
        assert year_written in numbers, f"{fmt}: year missing from {text!r}"
        assert date.day in numbers, f"{fmt}: day missing from {text!r}"
    # Two different dates never give the same string in one format.
    start = datetime.date(1950, 1, 1)
    days = [start + datetime.timedelta(days=int(n)) for n in np.random.default_rng(1).choice(36525, 2000, False)]
    assert len({write(d, fmt) for d in days}) == len(days)


def test_examples_of_the_formats():
    day = datetime.date(1998, 3, 3)  # a Tuesday
    assert write(day, "english_ordinal") == "the 3rd of March, 1998"
    assert write(day, "dotted_day_first") == "03.03.98"
    assert write(day, "english_weekday").startswith(day.strftime("%A"))
    assert write(datetime.date(2011, 1, 1), "french") == "1er janvier 2011"
    assert write(datetime.date(2012, 3, 12), "english_ordinal") == "the 12th of March, 2012"
    assert write(datetime.date(2012, 3, 22), "english_ordinal") == "the 22nd of March, 2012"


def test_targets_are_iso_dates_that_parse_back():
    for _, target in SPLITS.train[:200]:
        assert parse_iso(target) is not None and parse_iso(target).isoformat() == target
    assert parse_iso("1998-02-30") is None
    assert parse_iso("98-02-03") is None


def test_vocabulary_round_trip_and_specials():
    vocab = CharVocabulary(s for s, _ in SPLITS.train)
    assert (vocab.PAD, vocab.BOS, vocab.EOS) == (0, 1, 2)
    assert len(vocab) == len(vocab.characters) + 3
    for source, _ in SPLITS.test[:100]:
        ids = vocab.encode(source, bos=True, eos=True)
        assert ids[0] == vocab.BOS and ids[-1] == vocab.EOS and min(ids[1:-1]) >= 3
        assert vocab.decode(ids) == source
        assert vocab.decode([*ids, 7, 8]) == source  # stops at <eos>
        assert vocab.decode([*vocab.encode(source), vocab.PAD, vocab.PAD]) == source


def test_batch_pads_and_shifts_the_target():
    source_vocab = CharVocabulary(s for s, _ in SPLITS.train)
    target_vocab = CharVocabulary(t for _, t in SPLITS.train)
    pairs = [("3 mars 1998", "1998-03-03"), ("the 21st of June, 2001", "2001-06-21"), ("03.03.98", "1998-03-03")]
    batch = make_batch(pairs, source_vocab, target_vocab)
    assert batch.source.shape == (3, len(pairs[1][0])) and batch.source.dtype == np.int64
    np.testing.assert_array_equal(batch.source_lengths, [len(s) for s, _ in pairs])
    assert batch.decoder_input.shape == batch.decoder_target.shape == (3, 11)
    np.testing.assert_array_equal(batch.target_lengths, [11, 11, 11])
    for b, (source, target) in enumerate(pairs):
        assert source_vocab.decode(batch.source[b]) == source
        assert np.all(batch.source[b, len(source) :] == CharVocabulary.PAD)
        assert batch.decoder_input[b, 0] == CharVocabulary.BOS
        np.testing.assert_array_equal(batch.decoder_input[b, 1:], batch.decoder_target[b, :-1])  # shifted by one
        assert target_vocab.decode(batch.decoder_target[b]) == target
    np.testing.assert_array_equal(batch.source_mask, masks.padding_mask(batch.source_lengths, batch.source.shape[1]))
    assert batch.source_mask.shape == (3, 1, 1, batch.source.shape[1])
    assert batch.target_mask.shape == (3, 1, 1, 11)


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [
        (lambda: make_date_splits(0, 1, 1), ValueError, "num_train"),
        (lambda: make_date_splits(10, -1, 1), ValueError, "num_valid"),
        (lambda: make_date_splits(10, 1, 2.5), TypeError, "num_test"),
        (lambda: make_date_splits(10, 1, 1, seed="a"), TypeError, "seed"),
        (lambda: make_date_splits(40000, 1, 1), ValueError, "num_train"),
        (lambda: write("1998-03-03", "french"), TypeError, "date"),
        (lambda: write(datetime.date(1949, 12, 31), "french"), ValueError, "date"),
        (lambda: write(datetime.date(1998, 3, 3), "klingon"), ValueError, "fmt"),
        (lambda: parse_iso(19980303), TypeError, "text"),
        (lambda: CharVocabulary("abc"), TypeError, "texts"),
        (lambda: CharVocabulary([]), TypeError, "texts"),
        (lambda: CharVocabulary(["ab"]).encode("abc"), ValueError, "text"),
        (lambda: CharVocabulary(["ab"]).encode(3), TypeError, "text"),
        (lambda: CharVocabulary(["ab"]).decode([0, 9]), ValueError, "ids"),
        (lambda: CharVocabulary(["ab"]).decode([[3]]), TypeError, "ids"),
        (lambda: make_batch([], CharVocabulary(["a"]), CharVocabulary(["a"])), ValueError, "pairs"),
        (lambda: make_batch([("a",)], CharVocabulary(["a"]), CharVocabulary(["a"])), TypeError, "pairs"),
        (lambda: make_batch([("a", "a")], {"a": 3}, CharVocabulary(["a"])), TypeError, "source_vocabulary"),
    ],
)
def test_bad_input_is_refused_with_the_argument_named(call, error, names):
    with pytest.raises(error, match=names):
        call()


# ---------------------------------------------------------------- the course's own text (lessons 09, 18, 19)


def _lesson(path, *markdown_and_code):
    import nbformat

    cells = [nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
             for kind, source in markdown_and_code]  # fmt: skip
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)


def test_the_snapshot_joins_the_markdown_of_lessons_00_to_08_in_order(tmp_path):
    from attn_course.data.corpus import snapshot

    for number in (3, 0, 8, 1, 2, 4, 5, 6, 7):  # written out of order: the lesson number orders them
        _lesson(tmp_path / f"0{number}_lesson.ipynb", ("md", f"# lesson {number}"), ("code", "x = 1"),
                ("md", f"end {number}"))  # fmt: skip
    _lesson(tmp_path / "09_later.ipynb", ("md", "not part of it"))
    expected = "\n\n".join(f"# lesson {n}\n\nend {n}" for n in range(9))
    assert snapshot(tmp_path) == expected


def test_the_snapshot_names_the_folder_when_lessons_are_missing(tmp_path):
    from attn_course.data.corpus import snapshot

    _lesson(tmp_path / "00_only.ipynb", ("md", "# one"))
    with pytest.raises(FileNotFoundError, match=r"notebooks_dir must hold the lessons 00-08.*found 1"):
        snapshot(tmp_path)


def test_the_stored_text_is_lesson_prose():
    from attn_course.data import course_text

    text = course_text()
    assert len(text) > 10_000
    assert text.startswith("# 00 ")  # lesson 00's title cell comes first
    for number in range(9):
        assert f"# 0{number} " in text, f"lesson 0{number}'s title is missing from the stored text"
