"""Benchmarks: speed and memory are measured here, never asserted in tests.

``python -m attn_course.bench SUITE`` runs one suite and prints a table:

* ``notebooks``: the wall time of each lesson notebook, run top to bottom.

Every suite measures its figures in one process (the machines are shared and
noisy: compare ratios measured side by side, not numbers from different runs)
and names the machine they came from.
"""
