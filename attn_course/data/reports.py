"""A summarization-style task made in code: a shipping log to a one-line digest of its problems.

    "K late; fog; B docked; Q sunk; crew ok"   ->   "K late, Q sunk"

A source is a log of 3 to 5 short sentences joined by ``"; "``. Each sentence
is one of two kinds:

* an **event**, ``"X STATUS"``: a ship named by one capital letter (each
  ship at most once per log) and one of ``STATUSES``, either routine (``ROUTINE``: docked,
  on time) or a problem (``PROBLEMS``: late, lost, sunk);
* **filler**, one of ``FILLERS`` ("fog", "crew ok", ...): true but irrelevant.

The target, ``digest(source)``, lists the ships with a problem, in the order
of the log, as ``"X status"`` joined by ``", "``; a log without a problem
gives ``"all clear"``. So a summary must skip the filler and the routine
events (most of the source does not reach the output) and keep the order of
what it copies.

``make_report_splits`` deals seeded, distinct logs into train / validation /
test splits that share no source string; ``sentence_spans`` says which
characters of a log belong to which kind of sentence (for measuring where the
attention goes). ``CharVocabulary`` and ``make_batch`` from ``dates`` turn the
pairs into padded id arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validation import check_int

__all__ = [
    "FILLERS",
    "KINDS",
    "PROBLEMS",
    "ROUTINE",
    "STATUSES",
    "ReportSplits",
    "digest",
    "make_report_splits",
    "sentence_spans",
]

ROUTINE: tuple[str, ...] = ("docked", "on time")
PROBLEMS: tuple[str, ...] = ("late", "lost", "sunk")
STATUSES: tuple[str, ...] = ROUTINE + PROBLEMS
FILLERS: tuple[str, ...] = ("fog", "calm sea", "crew ok", "port busy")
SEPARATOR = "; "
ALL_CLEAR = "all clear"
SHIPS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # one capital letter per ship
MIN_SENTENCES, MAX_SENTENCES = 3, 5

# The kinds of sentence that ``sentence_spans`` tells apart: "problem" (an event the digest copies),
# "routine" (an event it skips) and "filler" (one of FILLERS, skipped too).
KINDS: tuple[str, ...] = ("problem", "routine", "filler")


def _parse_sentence(sentence: str) -> tuple[str, str] | None:
    """``(ship, status)`` of an event sentence, None for a filler; ValueError for anything else."""
    if sentence in FILLERS:
        return None
    ship, _, status = sentence.partition(" ")
    if len(ship) == 1 and ship in SHIPS and status in STATUSES:
        return ship, status
    raise ValueError(f"source has a sentence that is neither 'X STATUS' (X a capital) nor a filler: {sentence!r}")


def _events(source: str) -> list[tuple[int, int, str | None, str | None]]:
    """For each sentence of ``source``: (start, end, ship, status); ship and status are None for a filler."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str; got {type(source).__name__}")
    if not source:
        raise ValueError("source must not be empty")
    events, start = [], 0
    for sentence in source.split(SEPARATOR):
        parsed = _parse_sentence(sentence)
        ship, status = parsed if parsed is not None else (None, None)
        events.append((start, start + len(sentence), ship, status))
        start += len(sentence) + len(SEPARATOR)
    return events


def digest(source: str) -> str:
    """The summary of a log: ``"X status"`` for each ship with a problem, in log order, or ``"all clear"``."""
    problems = [f"{ship} {status}" for _, _, ship, status in _events(source) if status in PROBLEMS]
    return ", ".join(problems) if problems else ALL_CLEAR


def sentence_spans(source: str) -> list[tuple[int, int, str]]:
    """``(start, end, kind)`` for each sentence of the log: ``source[start:end]`` is the sentence, kind in ``KINDS``.

    The separators ``"; "`` between sentences belong to no span.
    """
    return [
        (start, end, "filler" if ship is None else "problem" if status in PROBLEMS else "routine")
        for start, end, ship, status in _events(source)
    ]


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class ReportSplits:
    """Three tuples of ``(log, digest)`` pairs; no log is in two of them (nor twice in one)."""

    train: tuple[tuple[str, str], ...]
    valid: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]


def _draw_log(rng: np.random.Generator, num_sentences: int, max_problems: int) -> str:
    """One log: each sentence a filler (probability 0.3) or an event about a new ship, a problem with
    probability 0.5 while the log has fewer than ``max_problems``."""
    sentences, num_problems = [], 0
    ships = [SHIPS[i] for i in rng.permutation(len(SHIPS))[:num_sentences]]  # distinct ships
    for ship in ships:
        if rng.random() < 0.3:
            sentences.append(FILLERS[rng.integers(len(FILLERS))])
            continue
        problem = rng.random() < 0.5 and num_problems < max_problems
        num_problems += problem
        statuses = PROBLEMS if problem else ROUTINE
        sentences.append(f"{ship} {statuses[rng.integers(len(statuses))]}")
    return SEPARATOR.join(sentences)


def make_report_splits(
    num_train: int,
    num_valid: int,
    num_test: int,
    *,
    seed: int = 0,
    min_sentences: int = MIN_SENTENCES,
    max_sentences: int = MAX_SENTENCES,
    max_problems: int = 3,
) -> ReportSplits:
    """Seeded train / validation / test pairs ``(log, digest(log))``, every log different.

    Logs of ``min_sentences`` to ``max_sentences`` sentences (drawn uniformly),
    with at most ``max_problems`` problems each, are drawn with ``seed`` until
    there are ``num_train + num_valid + num_test`` distinct ones; the test
    split takes the first ``num_test``, validation the next ``num_valid``,
    training the rest. The same arguments always give the
    same splits.
    """
    num_train = check_int("num_train", num_train, minimum=1)
    num_valid = check_int("num_valid", num_valid, minimum=0)
    num_test = check_int("num_test", num_test, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    min_sentences = check_int("min_sentences", min_sentences, minimum=1)
    max_sentences = check_int("max_sentences", max_sentences, minimum=min_sentences)
    max_problems = check_int("max_problems", max_problems, minimum=0)
    total = num_train + num_valid + num_test
    if total > 1_000_000:
        raise ValueError(f"num_train + num_valid + num_test must be at most 1,000,000; got {total}")
    rng = np.random.default_rng(seed)
    logs: dict[str, None] = {}  # insertion-ordered set
    for _ in range(100 * total):  # far more draws than needed unless the logs allowed are very few
        logs.setdefault(_draw_log(rng, int(rng.integers(min_sentences, max_sentences + 1)), max_problems))
        if len(logs) == total:
            break
    else:
        raise ValueError(
            f"could not draw {total} distinct logs with min_sentences={min_sentences}, max_sentences={max_sentences}"
        )
    pairs = [(log, digest(log)) for log in logs]
    test, valid, train = pairs[:num_test], pairs[num_test : num_test + num_valid], pairs[num_test + num_valid :]
    return ReportSplits(train=tuple(train), valid=tuple(valid), test=tuple(test))
