"""The grader's hidden edge cases: valid, new, fair to a right answer, and able to catch a classic shortcut.

A hidden case (``Exercise.hidden``) hangs on a public case and is run only by the
grader: one query or one key, a single head, two leading batch axes, a block as
long as the sequence, an empty cache, scores near 1000, ... A failure there
costs the public case's points. These tests check, for every hidden case, that
the reference runs on it to finite outputs and passes its own judge, that its
name and seed are its own and its shapes differ from its public case's, that
the master's answer (the answer cells of ``solutions/``, run here in-process)
passes it on the public seed and on secret seeds, and that shortcuts which
pass every public case fail on it.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np
import pytest

from attn_course.grading import assign
from attn_course.grading.judge import Case
from attn_course.grading.specs import EXERCISES
from tests.test_secret_cases import assert_reference_runs, verdict_of

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SEEDS = (None, 12345, 2**63 + 17)  # the public draw and two of the grader's (64-bit) secret seeds

HIDDEN = [
    (name, public, case)
    for name, exercise in EXERCISES.items()
    for public, cases in exercise.hidden.items()
    for case in cases
]
IDS = [f"{name}/{public}/{case.name}" for name, public, case in HIDDEN]


def _signature(args) -> tuple:
    """The sizes among ``args``: the shape of every array and every integer argument (nested ones included)."""
    shapes = []
    for arg in args:
        if isinstance(arg, np.ndarray):
            shapes.append(arg.shape)
        elif isinstance(arg, int) and not isinstance(arg, bool):
            shapes.append(arg)
        elif isinstance(arg, (tuple, list)):
            shapes.append(_signature(arg))
    return tuple(shapes)


@cache
def master_function(lesson: str, function: str):
    """The master's answer for ``function``: the setup and answer cells of ``solutions/<lesson>.ipynb``, run here."""
    master = assign.read_master(assign.SOLUTIONS_DIR / f"{lesson}.ipynb")
    namespace: dict = {}
    for cell in master.cells:
        if cell.kind == "solution" or (cell.kind == "locked" and cell.grade_id == "setup"):
            exec(compile(cell.source, f"{master.name}:{cell.grade_id}", "exec"), namespace)
    return namespace[function]


def test_there_are_hidden_cases_for_most_exercises():
    with_hidden = [name for name, exercise in EXERCISES.items() if exercise.hidden]
    assert len(with_hidden) >= 45, with_hidden


def test_hidden_names_and_seeds_are_unique():
    names = Counter((name, case.name) for name, _, case in HIDDEN)
    assert not [key for key, count in names.items() if count > 1]
    for name, exercise in EXERCISES.items():
        public = {case.name for case in exercise.cases}
        assert not public & {case.name for cases in exercise.hidden.values() for case in cases}, name
    seeds = Counter(case.seed for _, _, case in HIDDEN)
    assert not [seed for seed, count in seeds.items() if count > 1], "two hidden cases share a seed"
    public_seeds = {case.seed for exercise in EXERCISES.values() for case in exercise.cases}
    assert not public_seeds & set(seeds), "a hidden case reuses a public case's seed"


@pytest.mark.parametrize(("name", "public", "case"), HIDDEN, ids=IDS)
def test_hidden_case_is_new_and_keeps_its_shapes(name, public, case):
    exercise = EXERCISES[name]
    assert case.about.strip(), "the report quotes a hidden case's about when it fails"
    shapes = _signature(case.args())
    assert shapes != _signature(exercise.case(public).args()), "a hidden case must differ in shape from its public case"
    for seed in SEEDS[1:]:  # the grader draws other values of the same shapes
        assert _signature(case.args(seed)) == shapes
        assert Case.same_args(case.args(seed), case.args(seed)), "a draw must be reproducible"


@pytest.mark.parametrize(("name", "public", "case"), HIDDEN, ids=IDS)
def test_reference_runs_on_the_hidden_case_to_finite_outputs(name, public, case, tmp_path):
    assert_reference_runs(EXERCISES[name], case, SEEDS, tmp_path)


@pytest.mark.parametrize(("name", "public", "case"), HIDDEN, ids=IDS)
def test_the_master_answer_passes_the_hidden_case(name, public, case):
    exercise = EXERCISES[name]
    answer = master_function(exercise.lesson, exercise.function)
    for seed in SEEDS:
        args = case.args(seed)
        verdict = verdict_of(exercise, case, answer, args)
        assert verdict.status == "passed", f"seed {seed}: {verdict.text()}"


# Shortcuts that pass every public case (on its public and its secret draws), and the hidden cases they fail.
SHORTCUTS = {
    "dot_product_similarity": (
        "def f(q, k):\n    return q @ (np.swapaxes(k, 1, 2) if k.ndim == 3 else k.T)\n",
        {"two_batch_axes"},
    ),
    "attention_scores": (
        "def f(q, k):\n    return np.squeeze(q @ np.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])\n",
        {"one_key"},
    ),
    "split_heads": (
        "def f(x, h):\n    *b, L, w = x.shape\n"
        "    return np.squeeze(np.swapaxes(x.reshape(*b, L, h, w // h), -2, -3))\n",
        {"one_head", "one_feature_per_head"},
    ),
    "layer_norm": (
        "def f(x, g, b, eps):\n    c = x - x.mean(-1, keepdims=True)\n"
        "    return (c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * g + b).astype(np.float32)\n",
        {"two_batch_axes_float64"},
    ),
    "receptive_field": (
        "def f(mask, layers):\n    reach = mask.astype(bool)\n    for _ in range(layers - 1):\n"
        "        reach = reach | ((reach.astype(np.int64) @ mask.astype(np.int64)) > 0)\n    return reach\n",
        {"no_self_connection"},
    ),
    "elu_feature_map": (
        "def f(x):\n    return (x > 0) * (x + 1) + (x <= 0) * np.exp(x)\n",
        {"large_positive"},
    ),
    "even_spread_shares": (
        "def f(labels, num_parts):\n    real = labels[labels >= 0]\n    return np.bincount(real) / real.size\n",
        {"empty_part"},
    ),
    "decode_step": (
        "def f(q, k, v, kc, vc):\n    keys, values = np.concatenate([kc, k], -2), np.concatenate([vc, v], -2)\n"
        "    t, S = q.shape[-2], keys.shape[-2]\n    s = q @ np.swapaxes(keys, -1, -2) / math.sqrt(q.shape[-1])\n"
        "    s = np.where(np.arange(S)[None, :] <= np.arange(t)[:, None] + kc.shape[-2], s, -np.inf)\n"
        "    s = s - s.max(-1, keepdims=True)\n    p = np.exp(s)\n    p = p / p.sum(-1, keepdims=True)\n"
        "    return (p @ values).astype(q.dtype), keys, values\n",
        set(),  # right everywhere: a control, the hidden cases fail no honest answer
    ),
}


@pytest.mark.parametrize("name", list(SHORTCUTS))
def test_a_shortcut_passes_every_public_case_and_fails_a_hidden_one(name):
    exercise = EXERCISES[name]
    source, bitten_by = SHORTCUTS[name]
    namespace = {"np": np, "math": __import__("math")}
    exec(source, namespace)
    shortcut = namespace["f"]
    for case in exercise.cases:
        for seed in SEEDS:
            args = case.args(seed)
            verdict = verdict_of(exercise, case, shortcut, args)
            assert verdict.status == "passed", f"{case.name} (seed {seed}): {verdict.text()}"
    failed = {
        case.name
        for cases in exercise.hidden.values()
        for case in cases
        if verdict_of(exercise, case, shortcut, case.args(SEEDS[1])).status != "passed"
    }
    assert failed == bitten_by
