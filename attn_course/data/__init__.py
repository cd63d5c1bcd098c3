"""Data sets for the lessons that train models: generated in code (lessons 16 and 17), or the course's own text.

* ``dates``: human-written dates in many formats and four languages, to be
  translated into ISO dates (``"the 3rd of March, 1998" -> "1998-03-03"``),
  with seeded splits that share no date, character vocabularies and padded batches.
* ``reports``: short shipping logs to be summarized into a digest of their
  problems (``"K late; fog; B docked; Q sunk" -> "K late, Q sunk"``), with seeded
  splits that share no log; they use the same vocabularies and batches.
* ``course_text``: the prose of lessons 00-08, stored in the package, which
  lessons 09, 18 and 19 train character-level language models on.

Nothing is downloaded: every example is produced from a seed or stored here.
"""

from .corpus import course_text
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
from .reports import (
    FILLERS,
    KINDS,
    PROBLEMS,
    ROUTINE,
    STATUSES,
    ReportSplits,
    digest,
    make_report_splits,
    sentence_spans,
)

__all__ = [
    "FILLERS",
    "FORMATS",
    "KINDS",
    "PROBLEMS",
    "ROUTINE",
    "STATUSES",
    "Batch",
    "CharVocabulary",
    "DateSplits",
    "ReportSplits",
    "course_text",
    "digest",
    "format_date",
    "make_batch",
    "make_date_splits",
    "make_report_splits",
    "parse_iso",
    "sentence_spans",
]
