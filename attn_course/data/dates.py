"""A translation task made in code: human-written dates to ISO dates.

    "the 3rd of March, 1998"   "03.03.98"   "3 mars 1998"   "3. März 1998"   ->   "1998-03-03"

A source string is one date written in one of ``FORMATS`` (English in six
styles, two numeric styles, a military style, French, German and Spanish); the
target is always ``YYYY-MM-DD``. The task has the structure that makes
translation interesting: the output's parts (year, month, day) sit at different
places in the input depending on the format, months come as words in four
languages or as numbers, and two-digit years must be expanded. Every source
string names exactly one date:

* two-digit years mean 1950-2049 (``98 -> 1998``, ``07 -> 2007``), so dates are
  drawn from that century only;
* the slash format is the US one, month first (``03/14/1998``), and the dotted
  one is the European one, day first (``14.03.98``): the separator tells them apart.

Splits are drawn **by date**: the dates of the test split never appear in the
validation or training splits (in any format), so the test measures how well the
model translates dates it has never seen, not how well it remembers strings.

Characters become integer ids through ``CharVocabulary`` (ids 0, 1, 2 are the
special ``<pad>``, ``<bos>``, ``<eos>``), and ``make_batch`` pads a list of
pairs into arrays ``source (B, S)``, ``decoder_input (B, T)`` (``<bos>`` then
the target) and ``decoder_target (B, T)`` (the target then ``<eos>``), with the
lengths that the padding masks are built from.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from .. import masks
from ..validation import check_int

__all__ = [
    "FORMATS",
    "Batch",
    "CharVocabulary",
    "DateSplits",
    "format_date",
    "make_batch",
    "make_date_splits",
    "parse_iso",
]

FIRST_YEAR, LAST_YEAR = 1950, 2049  # the century that two-digit years name

ENGLISH = ("January February March April May June July August September October November December").split()
FRENCH = "janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split()
GERMAN = "Januar Februar März April Mai Juni Juli August September Oktober November Dezember".split()
SPANISH = "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


def _ordinal(day: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, 22nd, 23rd, ..., 31st."""
    if 11 <= day % 100 <= 13:
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th') }"


# One writer per format: date -> string. The example in each comment is 3 March 1998 (a Tuesday).
_WRITERS = {
    "english_ordinal": lambda d: f"the {_ordinal(d.day)} of {ENGLISH[d.month - 1]}, {d.year}",  # the 3rd of March, 1998
    "english_month_first": lambda d: f"{ENGLISH[d.month - 1]} {d.day}, {d.year}",  # March 3, 1998
    "english_short_year": lambda d: f"{ENGLISH[d.month - 1]} {d.day} {d.year % 100:02d}",  # March 3 98
    "english_day_first": lambda d: f"{d.day} {ENGLISH[d.month - 1]} {d.year}",  # 3 March 1998
    "english_abbreviated": lambda d: f"{ENGLISH[d.month - 1][:3]} {d.day}, {d.year}",  # Mar 3, 1998
    "english_weekday": lambda d: f"{WEEKDAYS[d.weekday()]}, {ENGLISH[d.month - 1]} {d.day}, {d.year}",  # Tuesday, ...
    "dotted_day_first": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year % 100:02d}",  # 03.03.98
    "us_slash_month_first": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",  # 03/03/1998
    "military": lambda d: f"{d.day:02d}-{ENGLISH[d.month - 1][:3].upper()}-{d.year % 100:02d}",  # 03-MAR-98
    "french": lambda d: f"{'1er' if d.day == 1 else d.day} {FRENCH[d.month - 1]} {d.year}",  # 3 mars 1998
    "german": lambda d: f"{d.day}. {GERMAN[d.month - 1]} {d.year}",  # 3. März 1998
    "spanish": lambda d: f"{d.day} de {SPANISH[d.month - 1]} de {d.year}",  # 3 de marzo de 1998
}
FORMATS: tuple[str, ...] = tuple(_WRITERS)


def format_date(date: datetime.date, fmt: str) -> str:
    """``date`` written in the format named ``fmt`` (one of ``FORMATS``)."""
    if isinstance(date, datetime.datetime) or not isinstance(date, datetime.date):
        raise TypeError(f"date must be a datetime.date; got {type(date).__name__}")
    if not FIRST_YEAR <= date.year <= LAST_YEAR:
        raise ValueError(f"date must lie in {FIRST_YEAR}-{LAST_YEAR} (two-digit years name that century); got {date}")
    if fmt not in _WRITERS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return _WRITERS[fmt](date)


def parse_iso(text: str) -> datetime.date | None:
    """The date that ``text`` names if it is a valid ``YYYY-MM-DD`` string, otherwise None."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class DateSplits:
    """Three lists of ``(source, target)`` pairs whose dates are disjoint."""

    train: tuple[tuple[str, str], ...]
    valid: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]


def make_date_splits(num_train: int, num_valid: int, num_test: int, *, seed: int = 0) -> DateSplits:
    """Seeded train / validation / test pairs ``("3 mars 1998", "1998-03-03")`` with no date in two splits.

    Every date from 1950-01-01 to 2049-12-31 is shuffled with ``seed``; the
    test split takes the first ``num_test`` dates, validation the next
    ``num_valid``, training the next ``num_train``, so no date (and therefore no
    source string) is in two splits. Each date is written in one format drawn
    uniformly from ``FORMATS``. The same arguments always give the same splits.
    """
    num_train = check_int("num_train", num_train, minimum=1)
    num_valid = check_int("num_valid", num_valid, minimum=0)
    num_test = check_int("num_test", num_test, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    first = datetime.date(FIRST_YEAR, 1, 1)
    num_days = (datetime.date(LAST_YEAR, 12, 31) - first).days + 1
    total = num_train + num_valid + num_test
    if total > num_days:
        raise ValueError(
            f"num_train + num_valid + num_test must be at most {num_days} (one date each, no date shared); got {total}"
        )
    rng = np.random.default_rng(seed)
    day_numbers = rng.permutation(num_days)[:total]  # (total,): distinct days after `first`
    formats = rng.integers(len(FORMATS), size=total)  # (total,): one format per example
    pairs = []
    for day_number, format_index in zip(day_numbers.tolist(), formats.tolist(), strict=True):
        date = first + datetime.timedelta(days=day_number)
        pairs.append((format_date(date, FORMATS[format_index]), date.isoformat()))
    test, valid, train = pairs[:num_test], pairs[num_test : num_test + num_valid], pairs[num_test + num_valid :]
    return DateSplits(train=tuple(train), valid=tuple(valid), test=tuple(test))


# --------------------------------------------------------------------------- characters to ids


class CharVocabulary:
    """Characters <-> integer ids, with the specials ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2.

    ``CharVocabulary(texts)`` gives every character seen in ``texts`` an id
    (3, 4, ... in sorted order); ``encode`` refuses a character it has not seen.
    """

    PAD, BOS, EOS = 0, 1, 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, texts):
        if isinstance(texts, str):
            raise TypeError("texts must be a collection of strings, not one string")
        texts = list(texts)
        if not texts or not all(isinstance(text, str) for text in texts):
            raise TypeError("texts must be a non-empty collection of strings")
        self.characters = tuple(sorted(set("".join(texts))))
        self._ids = {char: i + len(self.SPECIALS) for i, char in enumerate(self.characters)}

    def __len__(self) -> int:
        return len(self.SPECIALS) + len(self.characters)

    def __repr__(self) -> str:
        return f"CharVocabulary({len(self.characters)} characters + {len(self.SPECIALS)} specials)"

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """The ids of ``text``'s characters, after ``<bos>`` and before ``<eos>`` when asked."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise ValueError(f"text has characters the vocabulary has not seen: {unknown} in {text!r}")
        return [self.BOS] * bos + [self._ids[char] for char in text] + [self.EOS] * eos

    def decode(self, ids) -> str:
        """The text of ``ids`` (a sequence of ints): stops at the first ``<eos>``, skips ``<pad>`` and ``<bos>``."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(f"ids must be a 1-d sequence of integers; got shape {ids.shape} dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids must lie in 0..{len(self) - 1}; got values from {ids.min()} to {ids.max()}")
        characters = []
        for i in ids.tolist():
            if i == self.EOS:
                break
            if i >= len(self.SPECIALS):
                characters.append(self.characters[i - len(self.SPECIALS)])
        return "".join(characters)


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    """Padded int64 arrays for one batch of ``B`` pairs (padding is ``<pad>`` = 0).

    source (B, S): the source characters; source_lengths (B,).
    decoder_input (B, T): ``<bos>`` then the target characters (what the decoder reads).
    decoder_target (B, T): the target characters then ``<eos>`` (what it must predict at each position).
    target_lengths (B,): ``len(target) + 1``, the real positions of both.
    """

    source: np.ndarray
    source_lengths: np.ndarray
    decoder_input: np.ndarray
    decoder_target: np.ndarray
    target_lengths: np.ndarray

    @property
    def source_mask(self) -> np.ndarray:
        """(B, 1, 1, S) boolean, True on real source characters: the keys the decoder's queries may attend to."""
        return masks.padding_mask(self.source_lengths, self.source.shape[1])

    @property
    def target_mask(self) -> np.ndarray:
        """(B, 1, 1, T) boolean, True on real target positions (AND it with the causal mask in the decoder)."""
        return masks.padding_mask(self.target_lengths, self.decoder_input.shape[1])


def _pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(row) for row in rows], dtype=np.int64)  # (B,)
    padded = np.full((len(rows), int(lengths.max())), CharVocabulary.PAD, dtype=np.int64)  # (B, max length)
    for b, row in enumerate(rows):
        padded[b, : len(row)] = row
    return padded, lengths


def make_batch(pairs, source_vocabulary: CharVocabulary, target_vocabulary: CharVocabulary) -> Batch:
    """Encode and pad ``pairs`` (a sequence of ``(source, target)`` strings) into a ``Batch``."""
    for name, vocabulary in (("source_vocabulary", source_vocabulary), ("target_vocabulary", target_vocabulary)):
        if not isinstance(vocabulary, CharVocabulary):
            raise TypeError(f"{name} must be a CharVocabulary; got {type(vocabulary).__name__}")
    pairs = list(pairs) if not isinstance(pairs, str) else pairs
    if isinstance(pairs, str) or not pairs:
        raise ValueError("pairs must be a non-empty sequence of (source, target) string pairs")
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise TypeError(f"pairs must hold (source, target) string pairs; got {pair!r}")
        if not pair[0]:
            raise ValueError("pairs has an empty source string")
    source, source_lengths = _pad([source_vocabulary.encode(s) for s, _ in pairs])
    targets = [target_vocabulary.encode(t) for _, t in pairs]
    decoder_input, target_lengths = _pad([[CharVocabulary.BOS, *t] for t in targets])
    decoder_target, _ = _pad([[*t, CharVocabulary.EOS] for t in targets])
    return Batch(source, source_lengths, decoder_input, decoder_target, target_lengths)
