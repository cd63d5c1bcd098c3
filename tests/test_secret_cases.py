"""The grader's secret variants of the cases: never the public arguments, valid, and as telling as the public ones.

The grader judges every case on arguments drawn from a seed the learner cannot
know (``Case.args(seed)``), so that a table of outputs computed at home from
``test_inputs()`` earns nothing. A case whose inputs are only sizes or
constants draws its secret sizes with ``Case.secret``.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from attn_course.grading import test_inputs
from attn_course.grading.judge import Case, Raised, expected_outputs, judge
from attn_course.grading.result_files import write_inputs
from attn_course.grading.specs import EXERCISES

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SEEDS = (12345, 2**63 + 17, 7, 98765)  # the grader's seeds are 64-bit (secret_seed)
MISTAKE_SEEDS = range(1000, 1012)

CASES = [(name, case) for name, exercise in EXERCISES.items() for case in exercise.cases]
IDS = [f"{name}/{case.name}" for name, case in CASES]


def verdict_of(exercise, case, compute, args):
    """The grader's verdict on ``compute(*args)``: an error raised is judged as the grader judges one."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = compute(*args)
    except Exception as err:  # a mistake that does not even run on these inputs
        result = Raised.from_exception(err)
    return judge(exercise, case, result, args)


def assert_reference_runs(exercise, case, seeds, folder):
    """On each seed's arguments the grader can hand them to the kernel, the reference gives finite numbers, and its
    own result passes the judge."""
    for seed in seeds:
        args = case.args(seed=seed)
        write_inputs(folder, exercise.name, {case.name: args})  # only types the grader can hand to the kernel
        values, _ = expected_outputs(exercise, args)
        for value in values:
            if np.issubdtype(value.dtype, np.number):
                assert np.all(np.isfinite(value)), f"seed {seed}: the reference gives non-finite values"
        verdict = judge(exercise, case, exercise.reference(*args), args)
        assert verdict.status == "passed", f"seed {seed}: {verdict.text()}"


def test_no_secret_variant_is_the_public_case():
    same = [
        f"{name}/{case.name} (seed {seed})"
        for name, case in CASES
        for seed in SEEDS
        if Case.same_args(case.args(), case.args(seed=seed))
    ]
    assert not same, f"secret variants equal to the public case: {same}"


def test_a_case_whose_arguments_ignore_the_rng_has_a_secret_variant():
    constant = [
        f"{name}/{case.name}"
        for name, case in CASES
        if case.secret is None and Case.same_args(case.make_args(np.random.default_rng(1)), case.args())
    ]
    assert not constant, f"cases without a secret variant whose make_args ignores its rng: {constant}"


@pytest.mark.parametrize(("name", "case"), CASES, ids=IDS)
def test_public_case_is_unchanged_and_deterministic(name, case):
    public = case.args()
    assert Case.same_args(public, case.args())
    assert Case.same_args(public, tuple(case.make_args(np.random.default_rng(case.seed))))
    assert Case.same_args(public, test_inputs(name, case.name))  # the learner's inputs are make_args's, as before
    for seed in SEEDS[:2]:
        assert Case.same_args(case.args(seed=seed), case.args(seed=seed)), "a secret draw must be reproducible"


def test_secret_is_an_optional_last_field():
    parameters = list(inspect.signature(Case).parameters.values())
    assert parameters[-1].name == "secret" and parameters[-1].default is None
    case = Case("plain", "n = 3", lambda rng: (3,), seed=1)
    assert case.args() == (3,) and case.args(seed=5) == (3,)  # no secret: make_args as before
    drawn = Case("drawn", "n = 3", lambda rng: (3,), seed=1, secret=lambda rng: (int(rng.integers(4, 9)),))
    assert drawn.args() == (3,) and 4 <= drawn.args(seed=5)[0] <= 8


@pytest.mark.parametrize(("name", "case"), CASES, ids=IDS)
def test_secret_variants_run_the_reference_to_finite_outputs(name, case, tmp_path):
    assert_reference_runs(EXERCISES[name], case, SEEDS, tmp_path)


# Cases whose public input is the one value of its kind (a single token): any other size also shows a mistake that
# this edge case cannot show, so there the secret variant fails more classic mistakes than the public case.
MORE_TELLING = {("causal_mask", "one_token")}


@pytest.mark.parametrize(("name", "case"), CASES, ids=IDS)
def test_each_mistake_fails_and_is_named_on_the_secret_variants_as_on_the_public_case(name, case):
    exercise = EXERCISES[name]
    problems = []
    for mistake in exercise.mistakes:
        public = verdict_of(exercise, case, mistake.compute, case.args())
        for seed in MISTAKE_SEEDS:
            secret = verdict_of(exercise, case, mistake.compute, case.args(seed=seed))
            if public.status == "failed" and secret.status != "failed":
                problems.append(f"{mistake.name!r} passes on seed {seed}")
            elif public.status == "failed" and public.hint == mistake.hint and secret.hint != mistake.hint:
                problems.append(f"{mistake.name!r} is not named on seed {seed}")
            elif (
                public.status == "passed"
                and secret.status != "passed"
                and case.secret is not None
                and (name, case.name) not in MORE_TELLING
            ):  # a drawn size in the public case's regime: a wrong answer loses the points it loses publicly
                problems.append(f"{mistake.name!r} passes the public case but fails on seed {seed}")
    assert not problems, problems
