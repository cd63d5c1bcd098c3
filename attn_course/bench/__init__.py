"""Benchmarks: speed and memory are measured here, never asserted in tests.

``python -m attn_course.bench SUITE`` runs one suite and prints a table:

* ``notebooks``: the wall time of each lesson notebook, run top to bottom.
* ``cpu`` (``--quick``, ``--out DIR``): dense, tiled, sparse and linear
  attention against torch and against each other, each CPU goal of
  ``performance.md`` printed next to its measured ratio; CSV files and a plot
  go to ``benchmarks/results/``. Its measuring functions (``time_attention``,
  ``peak_memory``, ``scaling_curve``, ``loglog_slope``) live in
  ``attn_course.bench.cpu`` for the lessons to call at small sizes.

Every suite measures its figures in one process (the machines are shared and
noisy: compare ratios measured side by side, not numbers from different runs)
and names the machine they came from.
"""
