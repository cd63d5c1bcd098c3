"""Data sets generated in code, for the lessons that train on a real task (lesson 16).

* ``dates``: human-written dates in many formats and four languages, to be
  translated into ISO dates (``"the 3rd of March, 1998" -> "1998-03-03"``),
  with seeded splits that share no date, character vocabularies and padded batches.

Nothing is downloaded: every example is produced from a seed.
"""

from .dates import (
    FORMATS,
    Batch,
    CharVocabulary,
    DateSplits,
    format_date,
    make_batch,
    make_date_splits,
    parse_iso,
)

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
