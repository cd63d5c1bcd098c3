"""The notebook self-check: kind verdicts, hints for classic mistakes, never the solution; the grader's files."""

import math
import os

import numpy as np
import pytest

from attn_course.grading import RECORD_DIR_VARIABLE, CheckFailed, assign, check, test_inputs
from attn_course.grading.judge import Opaque, Raised, judge
from attn_course.grading.result_files import RecordError, load_array, read_result, write_inputs
from attn_course.grading.specs import EXERCISES, get_exercise

# the wrong answers below overflow on purpose
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)

# --------------------------------------------------------------------------- answers


def good_softmax(x):
    exps = np.exp(x - x.max(axis=-1, keepdims=True))
    return exps / exps.sum(axis=-1, keepdims=True)


def naive_softmax(x):
    exps = np.exp(x)
    return exps / exps.sum(axis=-1, keepdims=True)


def float64_scores(q, k):
    return q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])  # np.sqrt: a float64 scalar


def mask_after_softmax(q, k, v, mask=None):
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    weights = good_softmax(scores)
    if mask is not None:
        weights = weights * mask
    return weights @ v, weights


def solution_lines() -> list[str]:
    """Every substantial line of every master's answers: none may appear in a check's report."""
    lines = []
    for path in assign.find_masters():
        for cell in assign.read_master(path).cells:
            if cell.kind == "solution":
                for region in assign.solution_regions(cell.source):
                    lines += [line.strip() for line in region.splitlines() if len(line.strip()) >= 12]
    return lines


# --------------------------------------------------------------------------- check() in the notebook


def test_right_answer_passes_quietly(capsys):
    summary = check("softmax", good_softmax)
    assert summary.all_passed and summary.failed == 0
    assert summary.score == summary.max_score == get_exercise("softmax").max_score
    assert capsys.readouterr().out == ""  # the notebook shows the returned summary instead
    report = summary.report()
    assert report.startswith("softmax: 4 of 4 tests passed (5 of 5 points)")
    assert report.count("✓") == 4 and "✗" not in report


def test_wrong_answer_says_what_was_expected_what_came_back_and_why(capsys):
    with pytest.raises(CheckFailed) as raised:
        check("softmax", naive_softmax)
    out = capsys.readouterr().out
    assert "softmax: 3 of 4 tests passed (3 of 5 points)" in out
    assert "✗ large_scores" in out
    assert "expected: a NumPy float32 array of shape (3, 5), all entries finite" in out
    assert "NaN or infinite" in out and "first at [0, 0]" in out
    assert "Subtract each row's maximum" in out
    assert 'x, = test_inputs("softmax", "large_scores")' in out
    assert raised.value.summary.failed == 1
    assert raised.value._render_traceback_() == ["CheckFailed: 1 of 4 tests of softmax failed: see the report above"]
    for line in solution_lines():
        assert line not in out, f"the report shows a solution line: {line}"


def test_not_attempted_is_said_plainly_and_does_not_raise():
    def stub(x):
        raise NotImplementedError()

    summary = check("softmax", stub)
    assert summary.not_attempted == summary.total == 4 and summary.failed == 0
    assert "not attempted yet" in summary.report()


@pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) < "2.0.0",
    reason="NumPy 1.x casts by value: float32 / np.sqrt(d) stays float32, so the mistake only exists from NumPy 2",
)
def test_dtype_mistake_gets_the_numpy_scalar_hint():
    with pytest.raises(CheckFailed) as raised:
        check("attention_scores", float64_scores)
    report = raised.value.summary.report()
    assert "got:      a float64 array of shape (3, 5)" in report
    assert "The values themselves are right" in report and "math.sqrt(d)" in report
    assert raised.value.summary.passed == 1  # the float64 case is right


def test_mask_after_softmax_is_named():
    with pytest.raises(CheckFailed) as raised:
        check("scaled_dot_product_attention", mask_after_softmax)
    summary = raised.value.summary
    failed = {v.case: v for v in summary.verdicts if v.status == "failed"}
    assert set(failed) == {"batched_with_mask", "query_fully_masked", "float64"}
    assert all("before the softmax" in v.hint for v in failed.values())


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (lambda x: good_softmax(x).tolist(), "You returned a Python list"),
        (lambda x: None, "forget the return statement"),
        (lambda x: good_softmax(x)[..., :-1], "a float32 array of shape (3, 4)"),
        (lambda x: good_softmax(x.T).T, "first difference at"),
        (lambda x: np.full_like(x, np.nan), "NaN or infinite"),
        (lambda x: x.reshape(-1)[: x.size + 1].sum(axis=1), "AxisError"),
    ],
    ids=["list", "none", "shape", "values", "nan", "raises"],
)
def test_each_kind_of_failure_is_explained(answer, words):
    with pytest.raises(CheckFailed) as raised:
        check("softmax", answer, raise_on_failure=True)
    assert words in raised.value.summary.report()


def test_inputs_are_fresh_and_a_mutating_answer_does_not_change_the_reference():
    def mutating(x):
        result = good_softmax(x)
        x[...] = 0  # spoils its own input: the reference is computed from a fresh copy
        return result

    assert check("softmax", mutating).all_passed
    q, k, v, mask = test_inputs("scaled_dot_product_attention", "batched_with_mask")
    assert (q.shape, k.shape, v.shape, mask.shape) == ((2, 3, 4), (2, 5, 4), (2, 5, 6), (3, 5))
    again = test_inputs("scaled_dot_product_attention", "batched_with_mask")
    assert np.array_equal(q, again[0]) and q is not again[0]


def test_check_refuses_a_non_function_and_an_unknown_name():
    with pytest.raises(TypeError, match=r"check\(\'softmax\', softmax\)"):
        check("softmax", np.zeros(3))
    with pytest.raises(KeyError, match=r"known exercises: .*softmax"):
        check("sofmax", good_softmax)


# --------------------------------------------------------------------------- the exercise definitions themselves


@pytest.mark.parametrize("name", list(EXERCISES))
def test_reference_passes_and_each_classic_mistake_fails_with_its_own_hint(name):
    exercise = EXERCISES[name]
    assert len(exercise.cases) >= 3
    for case in exercise.cases:
        assert judge(exercise, case, exercise.reference(*case.args())).status == "passed", case.name
    for mistake in exercise.mistakes:
        verdicts = []
        for case in exercise.cases:
            try:
                result = mistake.compute(*case.args())
            except Exception as err:
                result = Raised.from_exception(err)
            verdicts.append(judge(exercise, case, result))
        failed = [v for v in verdicts if v.status == "failed"]
        assert failed, f"{name}: mistake {mistake.name!r} passes every test"
        assert any(v.hint == mistake.hint for v in failed), f"{name}: mistake {mistake.name!r} is never named"


def test_cases_use_distinct_dimensions_so_swapped_axes_fail():
    q, k, v, _ = test_inputs("scaled_dot_product_attention", "no_mask")
    L, d = q.shape
    S, dv = v.shape
    assert len({L, S, d, dv}) == 4 and k.shape == (S, d)


# --------------------------------------------------------------------------- classic mistakes, written by hand


def cosine_keys_not_normalised(q, k):
    return (q / np.linalg.norm(q, axis=-1, keepdims=True)) @ np.swapaxes(k, -1, -2)


def causal_of_floats(n):
    return np.tril(np.ones((n, n)))


def padding_without_axes(lengths, n):
    return np.arange(n)[None, :] < lengths[:, None]


def left_padding_written_as_right_padding(lengths, n):
    causal = np.tril(np.ones((n, n), dtype=bool))
    real = np.arange(n) < np.asarray(lengths).reshape(-1, 1)  # the rule for padding on the right
    return causal.reshape(1, 1, n, n) & real.reshape(-1, 1, 1, n)


def merge_by_reshape(x):
    *batch, h, L, head_dim = x.shape
    return x.reshape(*batch, L, h * head_dim)


def sines_then_cosines(n, d):
    angles = np.arange(n)[:, None] / 10000 ** (np.arange(0, d, 2) / d)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def rope_rotate_half(x, positions):
    d = x.shape[-1]
    angles = positions[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d)
    first, second = x[..., : d // 2], x[..., d // 2 :]
    cos, sin = np.cos(angles), np.sin(angles)
    return np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1).astype(x.dtype)


def layer_norm_unbiased(x, gamma, beta, eps):
    centred = x - x.mean(axis=-1, keepdims=True)
    return gamma * centred / np.sqrt(x.var(axis=-1, ddof=1, keepdims=True) + eps) + beta


def layer_norm_over_positions(x, gamma, beta, eps):
    centred = x - x.mean(axis=-2, keepdims=True)
    return gamma * centred / np.sqrt(x.var(axis=-2, keepdims=True) + eps) + beta


def causal_linear_shifted_prefix(q, k, v):  # exercise 14: the prefix sums stop one row early, row 0 is 0 / 0
    phi_q, phi_k = (np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))) for x in (q, k))
    outer = phi_k[..., :, :, None] * v[..., :, None, :]
    S, z = np.cumsum(outer, axis=-3) - outer, np.cumsum(phi_k, axis=-2) - phi_k
    with np.errstate(invalid="ignore"):
        return np.einsum("...ld,...lde->...le", phi_q, S) / (phi_q * z).sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    ("name", "answer", "words"),
    [
        ("cosine_similarity", cosine_keys_not_normalised, "Divide the keys by their lengths too"),
        ("causal_mask", causal_of_floats, "A mask holds booleans"),
        ("padding_mask", padding_without_axes, "Return shape (B, 1, 1, n)"),
        ("left_padded_causal_mask", left_padding_written_as_right_padding, "the padding comes FIRST"),
        ("merge_heads", merge_by_reshape, "merged in the wrong order"),
        ("sinusoidal_encoding", sines_then_cosines, "Interleave sines and cosines"),
        ("apply_rope", rope_rotate_half, "'rotate half'"),
        ("layer_norm", layer_norm_unbiased, "biased variance"),
        ("layer_norm", layer_norm_over_positions, "over its own features"),
        ("causal_linear_attention", causal_linear_shifted_prefix, "shifted down one row"),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
def test_hand_written_classic_mistakes_lose_points_and_get_their_hint(name, answer, words):
    """Not the definitions' own mistake functions: answers as a learner writes them (other rounding, other code)."""
    with pytest.raises(CheckFailed) as raised:
        check(name, answer)
    summary = raised.value.summary
    assert summary.score < summary.max_score
    failed = [verdict for verdict in summary.verdicts if verdict.status == "failed"]
    assert any(words in verdict.hint for verdict in failed), [verdict.hint for verdict in failed]


def test_masks_and_integers_travel_through_the_graded_files(tmp_path, monkeypatch):
    """Integer arguments (lengths, n, num_heads) reach the kernel, boolean masks come back and are judged exactly."""
    exercise = get_exercise("padding_mask")
    args = {case.name: case.args() for case in exercise.cases}
    write_inputs(tmp_path, "padding_mask", args)
    monkeypatch.setenv(RECORD_DIR_VARIABLE, str(tmp_path))
    assert check("padding_mask", padding_without_axes).recorded == len(args)
    monkeypatch.delenv(RECORD_DIR_VARIABLE)
    lengths, n = args["lesson_batch"]
    assert lengths.dtype == np.int64 and type(n) is int
    recorded = read_result(tmp_path, "padding_mask", "lesson_batch")
    assert recorded.dtype == np.bool_ and recorded.shape == (3, 6)
    verdict = judge(exercise, exercise.case("lesson_batch"), recorded)
    assert verdict.problem == "shape" and "(B, 1, 1, n)" in verdict.hint
    right = recorded[:, None, None, :]
    assert judge(exercise, exercise.case("lesson_batch"), right).status == "passed"
    assert judge(exercise, exercise.case("lesson_batch"), right.astype(np.int8)).problem == "dtype"


# --------------------------------------------------------------------------- graded mode and the files


def test_graded_mode_only_records(tmp_path, monkeypatch, capsys):
    exercise = get_exercise("softmax")
    args = {case.name: case.args() for case in exercise.cases}
    write_inputs(tmp_path, "softmax", args)
    monkeypatch.setenv(RECORD_DIR_VARIABLE, str(tmp_path))

    def flaky(x):
        if x.shape == (4, 6):
            raise ValueError("no float64 today")
        return naive_softmax(x)

    summary = check("softmax", flaky)  # a wrong answer: nothing is judged, nothing raised
    assert summary.recorded == 4 and summary.verdicts == []
    assert "recorded" in summary.report() and capsys.readouterr().out == ""
    monkeypatch.delenv(RECORD_DIR_VARIABLE)

    rows = read_result(tmp_path, "softmax", "rows")
    assert isinstance(rows, np.ndarray) and np.array_equal(rows, naive_softmax(args["rows"][0]))
    assert read_result(tmp_path, "softmax", "float64_input") == Raised("ValueError", "no float64 today")
    assert read_result(tmp_path, "masked_softmax", "rows") is None
    large = read_result(tmp_path, "softmax", "large_scores")
    assert judge(exercise, exercise.case("large_scores"), large).problem == "nonfinite"


def test_grader_side_refuses_unsafe_or_damaged_files(tmp_path):
    folder = tmp_path / "outputs" / "softmax"
    folder.mkdir(parents=True)
    np.save(folder / "rows.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "rows.json").write_text('{"status": "returned", "value": {"kind": "array"}}')
    with pytest.raises(RecordError, match="dtype object"):
        read_result(tmp_path, "softmax", "rows")

    header = np.lib.format.header_data_from_array_1_0(np.zeros(3, dtype=np.float32))
    header["shape"] = (10**6, 10**6)  # claims 4 TB of data
    with open(folder / "batched.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\0" * 12)
    with pytest.raises(RecordError, match="declares"):
        load_array(folder / "batched.npy")

    os.symlink("/etc/hostname", folder / "link.npy")
    with pytest.raises(RecordError, match=r"cannot be opened|not a regular file"):
        load_array(folder / "link.npy")

    (folder / "large_scores.json").write_text('{"status": "returned", "value": {"kind": "sequence", "items": 3}}')
    with pytest.raises(RecordError, match="damaged"):
        read_result(tmp_path, "softmax", "large_scores")

    (folder / "float64_input.json").write_text(
        '{"status": "returned", "value": {"kind": "opaque", "description": "a list of 4 items", "type": "list"}}'
    )
    opaque = read_result(tmp_path, "softmax", "float64_input")
    assert opaque == Opaque("a list of 4 items", "list")
    verdict = judge(get_exercise("softmax"), get_exercise("softmax").case("float64_input"), opaque)
    assert verdict.problem == "type" and "Python list" in verdict.hint
