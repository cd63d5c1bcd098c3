"""The grader, end to end: masters score full, exercises score 0, and nothing a submission does earns points.

One batch, graded once by the command line with ``--jobs 2``, holds the masters,
the untouched exercises, classic wrong answers and adversarial submissions
(infinite loops, ``os._exit``, a memory bomb, monkeypatching, tampered cells,
wrong types, shapes and dtypes, huge prints, garbage files). Kernel start-ups
cost a second or two each, so the whole module shares that one run; the
tests then read its report and gradebook.
"""

import csv
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from attn_course.grading import assign
from attn_course.grading.grade import GRADER_VERSION, find_submissions, main, rebuild

# make test runs this module on one xdist worker (--dist loadfile); the batch is graded once per test run anyway
pytestmark = pytest.mark.grader

REPO = Path(__file__).resolve().parents[1]
MASTER_02 = "02_softmax_temperature_and_scaling.ipynb"
MASTER_03 = "03_scaled_dot_product_attention.ipynb"
MASTER_06 = "06_masking.ipynb"
MASTER_07 = "07_multi_head_attention.ipynb"
MASTER_16 = "16_application_translation.ipynb"
CELL_TIMEOUT = 5
SEED = 20240615  # the secret cases' seed: fixed, so that the expected scores below hold on every run
MASTERS = assign.find_masters()

# --------------------------------------------------------------------------- answers

GOOD = {
    "softmax": """
def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
""",
    "softmax_with_temperature": """
def softmax_with_temperature(x, temperature):
    z = x / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
""",
    "masked_softmax": """
def masked_softmax(x, mask):
    s = np.where(mask, x, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    t = e.sum(axis=-1, keepdims=True)
    return e / np.where(t > 0, t, 1)
""",
    "attention_scores": """
def attention_scores(q, k):
    return q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
""",
    "scaled_dot_product_attention": """
def scaled_dot_product_attention(q, k, v, mask=None):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    t = e.sum(axis=-1, keepdims=True)
    w = e / np.where(t > 0, t, 1)
    return w @ v, w
""",
}


def sdpa(weights_line: str, fill: str = "-np.inf") -> str:
    """An attention answer whose weights are computed by ``weights_line`` from scores ``s`` (mask applied)."""
    return f"""
def scaled_dot_product_attention(q, k, v, mask=None):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask, s, {fill})
    {weights_line}
    return w @ v, w
"""


NAIVE_SOFTMAX = "def softmax(x):\n    e = np.exp(x)\n    return e / e.sum(axis=-1, keepdims=True)\n"

WRONG = {
    # (master, answers, expected score, {test: status} for the tests that must fail)
    "wrong_02a": (
        MASTER_02,
        {
            "softmax": NAIVE_SOFTMAX,
            "softmax_with_temperature": "def softmax_with_temperature(x, temperature):\n"
            "    return softmax(x * temperature)\n",
            "masked_softmax": "def masked_softmax(x, mask):\n    return softmax(x) * mask\n",
        },
        3,
        {
            "softmax: large_scores": "Subtract each row's maximum",
            "softmax_with_temperature: sharpen": "do not multiply",
        },
    ),
    "wrong_02b": (
        MASTER_02,
        {
            "softmax": "def softmax(x):\n    e = np.exp(x - x.max())\n    return e / e.sum(axis=-1, keepdims=True)\n",
            "softmax_with_temperature": "def softmax_with_temperature(x, temperature):\n"
            "    return softmax(x) / temperature\n",
            "masked_softmax": GOOD["masked_softmax"].replace("-np.inf", "-1e9"),
        },
        6,
        {
            "softmax: large_scores": "maximum of the whole array",
            "softmax_with_temperature: flatten": "before the softmax",
            "masked_softmax: row_fully_masked": "instead of -inf",
        },
    ),
    "wrong_03a": (
        MASTER_03,
        {
            "attention_scores": "def attention_scores(q, k):\n    return q @ np.swapaxes(k, -1, -2)\n",
            "scaled_dot_product_attention": """
def scaled_dot_product_attention(q, k, v, mask=None):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    w = e / e.sum(axis=-1, keepdims=True)
    if mask is not None:
        w = w * mask
    return w @ v, w
""",
        },
        2,
        {
            "attention_scores: single": "Divide the dot products by sqrt(d)",
            "scaled_dot_product_attention: float64": "before the softmax",
        },
    ),
    "student_03_b": (  # no master metadata: found by the number in its file name
        MASTER_03,
        {
            "attention_scores": "def attention_scores(q, k):\n    return q @ np.swapaxes(k, -1, -2) / q.shape[-1]\n",
            "scaled_dot_product_attention": sdpa(
                "e = np.exp(s - s.max(axis=-2, keepdims=True)); w = e / e.sum(axis=-2, keepdims=True)"
            ),
        },
        0,
        {"attention_scores: batched": "not 1 / d", "scaled_dot_product_attention: no_mask": "over the keys"},
    ),
    "wrong_03c": (
        MASTER_03,
        {
            "attention_scores": "def attention_scores(q, k):\n"
            "    return k @ np.swapaxes(q, -1, -2) / math.sqrt(q.shape[-1])\n",
            "scaled_dot_product_attention": sdpa(
                "e = np.exp(s - s.max(axis=-1, keepdims=True)); w = e / e.sum(axis=-1, keepdims=True)"
            ),
        },
        5,
        {
            "attention_scores: single": "k @ q^T gives (..., S, L)",
            "scaled_dot_product_attention: query_fully_masked": "0 / 0 = NaN",
        },
    ),
    "wrong_06": (  # booleans and integers through the files: a float mask, a mask of the wrong shape, left padding
        MASTER_06,
        {
            "causal_mask": "def causal_mask(n):\n    return np.tril(np.ones((n, n)))\n",
            "padding_mask": "def padding_mask(lengths, n):\n    return np.arange(n)[None, :] < lengths[:, None]\n",
            "left_padded_causal_mask": """
def left_padded_causal_mask(lengths, n):
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return (j <= i)[None, None] & (j < lengths[:, None])[:, None, None, :]
""",
        },
        0,
        {
            "causal_mask: six_tokens": "A mask holds booleans",
            "padding_mask: lesson_batch": "Return shape (B, 1, 1, n)",
            "left_padded_causal_mask: two_prompts": "the padding comes FIRST",
        },
    ),
    "wrong_07": (
        MASTER_07,
        {
            "split_heads": """
def split_heads(x, num_heads):
    *batch, L, width = x.shape
    return np.swapaxes(x.reshape(*batch, L, num_heads, width // num_heads), -3, -2)
""",
            "merge_heads": """
def merge_heads(x):
    *batch, h, L, head_dim = x.shape
    return x.reshape(*batch, L, h * head_dim)
""",
            "multi_head_attention": """
def multi_head_attention(x, W_q, W_k, W_v, W_o, num_heads):
    q, k, v = (split_heads(x @ W, num_heads) for W in (W_q, W_k, W_v))
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(x.shape[-1])
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    w = e / e.sum(axis=-1, keepdims=True)
    heads = np.swapaxes(w @ v, -3, -2)
    return heads.reshape(*heads.shape[:-2], -1) @ W_o, w
""",
        },
        3,
        {
            "merge_heads: batched": "merged in the wrong order",
            "multi_head_attention: single": "not 1/sqrt(d_model)",
        },
    ),
    "wrong_16": (  # a causal cross-attention mask, and greedy decoding that never pads; cross-attention right
        MASTER_16,
        {
            "decoder_masks": """
def decoder_masks(target_lengths, source_lengths, num_targets, num_sources):
    i, j = np.arange(num_targets)[:, None], np.arange(num_targets)[None, :]
    self_mask = (j <= i) & (j < target_lengths[:, None, None, None])
    s = np.arange(num_sources)[None, :]
    cross_mask = (s <= i) & (s < source_lengths[:, None, None, None])
    return self_mask, cross_mask
""",
            "multi_head_cross_attention": """
def multi_head_cross_attention(y, memory, W_q, W_k, W_v, W_o, num_heads, cross_mask):
    q = split_heads(y @ W_q, num_heads)
    k, v = split_heads(memory @ W_k, num_heads), split_heads(memory @ W_v, num_heads)
    out, w = scaled_dot_product_attention(q, k, v, cross_mask, return_weights=True)
    return merge_heads(out) @ W_o, w
""",
            "greedy_decode": """
def greedy_decode(step_scores, bos, eos, pad):
    B, steps = step_scores.shape[:2]
    tokens = np.full((B, 1), bos)
    for t in range(steps):
        tokens = np.concatenate([tokens, step_scores[np.arange(B), t, tokens[:, -1]].argmax(-1)[:, None]], axis=1)
        if (tokens == eos).any(axis=1).all():
            break
    return tokens[:, 1:]
""",
        },
        5,
        {
            "decoder_masks: lesson_batch": "Cross-attention is not causal",
            "greedy_decode: all_end": "Once a sequence has written <eos>",
        },
    ),
}

UNINTERRUPTIBLE = """
import time

def masked_softmax(x, mask):
    while True:
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            pass
"""

MONKEYPATCH = """
import IPython
import attn_course.grading

np.testing.assert_allclose = lambda *a, **k: None
np.allclose = lambda *a, **k: True
np.array_equal = lambda *a, **k: True
IPython.get_ipython().showtraceback = lambda *a, **k: None
attn_course.grading.check = lambda *a, **k: print("softmax: 4 of 4 tests passed")
check = attn_course.grading.check

def softmax(x):
    return np.zeros_like(x)
"""

FORGED_RECORDS = """
import json, os, pathlib

out = pathlib.Path(os.environ["ATTN_COURSE_RECORD_DIR"]) / "outputs" / "masked_softmax"
out.mkdir(parents=True, exist_ok=True)
for name in ["some_masked", "broadcast_mask", "row_fully_masked", "large_scores"]:
    np.save(out / f"{name}.npy", np.array([object()], dtype=object), allow_pickle=True)
    (out / f"{name}.json").write_text(json.dumps({"status": "returned", "value": {"kind": "array"}}))

def masked_softmax(x, mask):
    return x
"""

ADVERSARIAL = {
    "adv_loop": (
        MASTER_02,
        {
            "softmax": "def softmax(x):\n    while True:\n        pass\n",
            "softmax_with_temperature": GOOD["softmax_with_temperature"],
            "masked_softmax": UNINTERRUPTIBLE,
        },
    ),
    "adv_exit": (
        MASTER_03,
        {
            "attention_scores": "import os\n\ndef attention_scores(q, k):\n    os._exit(1)\n",
            "scaled_dot_product_attention": GOOD["scaled_dot_product_attention"],
        },
    ),
    "adv_memory": (
        MASTER_02,
        {
            "softmax": "def softmax(x):\n    hog = np.ones(2 * 2**30 // 8)  # 2 GB, over the 1 GB limit\n"
            "    return hog[: x.size].reshape(x.shape)\n",
            "softmax_with_temperature": GOOD["softmax_with_temperature"],
            "masked_softmax": GOOD["masked_softmax"],
        },
    ),
    "adv_monkeypatch": (
        MASTER_02,
        {
            "softmax": MONKEYPATCH,
            "softmax_with_temperature": "def softmax_with_temperature(x, temperature):\n    return x\n",
            "masked_softmax": FORGED_RECORDS,
        },
    ),
    "adv_types": (
        MASTER_02,
        {
            "softmax": GOOD["softmax"] + "\n_right = softmax\n\ndef softmax(x):\n    return _right(x).tolist()\n",
            "softmax_with_temperature": GOOD["softmax_with_temperature"].replace(
                "z = x / temperature", "z = x.astype(np.float64) / temperature"
            ),
            "masked_softmax": "for i in range(20000):\n    print(i)\n\n"
            "def masked_softmax(x, mask):\n    print('x' * 3_000_000)\n    return np.full_like(x, np.nan)\n",
        },
    ),
    "adv_shapes": (
        MASTER_03,
        {
            "attention_scores": """
print("y" * 10_000_000)

def attention_scores(q, k):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    return s[..., :-1]
""",
            "scaled_dot_product_attention": GOOD["scaled_dot_product_attention"].replace(
                "return w @ v, w", "out = w @ v\n    return out.reshape(-1, out.shape[-1]), w"
            ),
        },
    ),
}

# --------------------------------------------------------------------------- exercises 01-08: tasks beyond the lesson

# Each of these tasks (predict then verify, an experiment with an answer, an extension) gets a classic wrong answer
# that fails every case, so it loses all of the task's points and must show its own hint. For the masters that had no
# wrong submission yet, one submission answers the other tasks with the master's own answers. The submissions above
# answer these tasks with the same wrong answers, so that their scores and statuses stay as they state.
MASTER_01 = "01_dot_products_as_similarity.ipynb"
MASTER_04 = "04_self_attention_vs_traditional_attention.ipynb"
MASTER_05 = "05_the_self_attention_layer.ipynb"
MASTER_08 = "08_positional_information.ipynb"

BEYOND_THE_LESSON = {  # master: ({grade_id: classic wrong answer}, {test: words of its hint})
    MASTER_01: (
        {"dot_product_spread": "def dot_product_spread(d, sigma):\n    return np.asarray(sigma**2 * d, dtype=float)\n"},
        {"dot_product_spread: long_vectors": "VARIANCES add up"},
    ),
    MASTER_02: (
        {
            "entropy_limits": """
def entropy_limits(x):
    return np.zeros(x.shape[:-1]), np.full(x.shape[:-1], np.log(x.shape[-1]))
"""
        },
        {"entropy_limits: ties": "its entropy is log(m), not 0"},
    ),
    MASTER_03: (
        {
            "attention_shapes": """
def attention_shapes(q_shape, k_shape, v_shape):
    batch = np.broadcast_shapes(tuple(q_shape[:-2]), tuple(k_shape[:-2]), tuple(v_shape[:-2]))
    return np.array([*batch, q_shape[-2], k_shape[-2]]), np.array([*batch, q_shape[-2], q_shape[-1]])
"""
        },
        {"attention_shapes: broadcast_batch": "weighted sum of VALUE rows"},
    ),
    MASTER_04: (
        {
            "shuffled_cross_attention": """
def shuffled_cross_attention(output, weights, query_order, memory_order):
    back_q, back_m = np.argsort(query_order), np.argsort(memory_order)
    return output[..., back_q, :], weights[..., back_q, :][..., back_m]
"""
        },
        {"shuffled_cross_attention: one_sentence": "not with its inverse"},
    ),
    MASTER_05: (
        {
            "sharpening_factor": """
def sharpening_factor(x, W_q, W_k, target):
    def top(c):  # W_q and W_k both scaled by c
        s = (x @ (c * W_q)) @ np.swapaxes(x @ (c * W_k), -1, -2) / math.sqrt(W_q.shape[1])
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return (1 / e.sum(axis=-1)).mean()

    low, high = 0.0, 1.0
    while top(high) < target:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if top(middle) < target else (low, middle)
    return np.asarray(high, dtype=np.float64)
"""
        },
        {"sharpening_factor: batched_half": "Scale W_q only"},
    ),
    MASTER_06: ({"left_padded_causal_mask": WRONG["wrong_06"][1]["left_padded_causal_mask"]}, {}),
    MASTER_07: (
        {
            "intermediate_shapes": """
def intermediate_shapes(B, L, d_model, num_heads):
    per_head = np.array([B, L, num_heads, d_model // num_heads])
    return per_head, np.array([B, num_heads, L, L]), np.asarray(B * num_heads * L * L)
"""
        },
        {"intermediate_shapes: wide_heads": "BEFORE the positions"},
    ),
    MASTER_08: (
        {
            "apply_rope_half_split": """
def apply_rope_half_split(x, positions):
    d = x.shape[-1]
    angles = positions[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d)
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * np.cos(angles) - x[..., 1::2] * np.sin(angles)
    out[..., 1::2] = x[..., 0::2] * np.sin(angles) + x[..., 1::2] * np.cos(angles)
    return out
"""
        },
        {"apply_rope_half_split: in_order": "holds the first feature of every pair"},
    ),
}


def master_answers(master: str) -> dict:
    """The master's own answer cells, without the solution markers, by grade_id."""
    answers = {}
    for cell in assign.read_master(assign.SOLUTIONS_DIR / master).cells:
        if cell.kind == "solution":
            lines = [line for line in cell.source.splitlines() if line.strip() not in (assign.BEGIN, assign.END)]
            answers[cell.grade_id] = "\n".join(lines) + "\n"
    return answers


def points_of(master: str, grade_ids) -> float:
    """The points of the tests of ``master`` that check the functions answered by the cells ``grade_ids``."""
    tests = [cell for cell in assign.read_master(assign.SOLUTIONS_DIR / master).cells if cell.kind == "test"]
    return sum(cell.points for cell in tests if cell.exercise in grade_ids)


def total_points(master: str) -> float:
    return sum(cell.points for cell in assign.read_master(assign.SOLUTIONS_DIR / master).cells if cell.kind == "test")


for _name, (_master, _answers, *_) in {**WRONG, **ADVERSARIAL}.items():  # the older submissions: see above
    for _grade_id, _wrong in BEYOND_THE_LESSON.get(_master, ({}, {}))[0].items():
        _answers.setdefault(_grade_id, _wrong)

WRONG.update(
    {
        f"wrong_beyond_{master[:2]}": (
            master,
            {**master_answers(master), **wrong},
            total_points(master) - points_of(master, wrong),
            must_fail,
        )
        for master, (wrong, must_fail) in BEYOND_THE_LESSON.items()
        if must_fail
    }
)

GOOD["attention_shapes"] = master_answers(MASTER_03)["attention_shapes"]

# --------------------------------------------------------------------------- exercises 09-17: tasks beyond the lesson

WRONG_UNDERSTANDING = {
    # one classic wrong answer per new task; the lesson's own tasks keep the master's answers
    "wrong_09_heads": (
        "09_the_transformer_block.ipynb",
        {
            "block_parameter_count": """
def block_parameter_count(d_model, num_heads, mlp_ratio):
    d, hidden = d_model, mlp_ratio * d_model
    attention = num_heads * 4 * d * d + 4 * d
    return np.asarray(float(4 * d + attention + 2 * d * hidden + hidden + d), dtype=np.float64)
""",
        },
        11,
        {"block_parameter_count: gpt2_small": "Splitting into heads does not add weights"},
    ),
    "wrong_10_rounded": (
        "10_the_cost_of_attention.ipynb",
        {
            "longest_sequence": """
def longest_sequence(memory_bytes, B, H, itemsize):
    return np.asarray(float(round(math.sqrt(memory_bytes / (B * H * itemsize)))), dtype=np.float64)
""",
        },
        10,
        {"longest_sequence: one_gigabyte": "rounded down (math.isqrt)"},
    ),
    "wrong_11_products": (
        "11_sparse_attention_patterns.ipynb",
        {
            "layers_to_connect": """
def layers_to_connect(mask):
    n = len(mask)
    wanted = np.tril(np.ones((n, n), dtype=bool))
    reach, products = mask.astype(bool), 0
    while products < n:
        if reach[wanted].all():
            return np.asarray(float(products), dtype=np.float64)
        reach = (reach.astype(np.int64) @ mask.astype(np.int64)) > 0
        products += 1
    return np.asarray(-1.0, dtype=np.float64)
""",
        },
        14,
        {"layers_to_connect: causal_window": "Count layers"},
    ),
    "wrong_12_edges": (
        "12_making_sparsity_pay.ipynb",
        {
            "window_tiles": """
def window_tiles(N, window, block):
    tiles, reach = -(-N // block), -(-window // block)
    return np.asarray(float(tiles * (2 * reach + 1)), dtype=np.float64)
""",
        },
        10,
        {"window_tiles: small": "cut off at the edges"},
    ),
    "wrong_13_diagonal": (
        "13_memory_efficient_exact_attention.ipynb",
        {
            "causal_tiled_attention": """
def causal_tiled_attention(q, k, v, block):
    N, d = q.shape[-2:]
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)
    tile = np.arange(N) // block
    s = np.where(tile[None, :] <= tile[:, None], s, -np.inf)  # whole diagonal tiles kept
    m = s.max(axis=-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(axis=-1, keepdims=True)
    return (p / l) @ v, (m + np.log(l))[..., 0]
""",
            "causal_tiles": """
def causal_tiles(N, block):
    tiles = -(-N // block)
    return np.asarray(float(tiles * (tiles - 1) // 2), dtype=np.float64)
""",
        },
        10,
        {
            "causal_tiled_attention: partial_last_tile": "a tile ON the diagonal holds pairs with j > i",
            "causal_tiles: small": "T (T + 1) / 2, not",
        },
    ),
    "wrong_14_tie": (
        "14_linear_attention.ipynb",
        {
            "causal_linear_attention": """
def causal_linear_attention(q, k, v):
    phi_q = np.where(q > 0, q + 1, np.exp(np.minimum(q, 0)))
    phi_k = np.where(k > 0, k + 1, np.exp(np.minimum(k, 0)))
    outer = phi_k[..., :, :, None] * v[..., :, None, :]
    S = np.cumsum(outer, axis=-3) - outer  # shifted: row i without its own key
    z = np.cumsum(phi_k, axis=-2) - phi_k
    numerator = np.einsum("...ld,...lde->...le", phi_q, S)
    return (numerator / (phi_q * z).sum(axis=-1, keepdims=True)).astype(q.dtype)
""",
            "reorder_crossover": """
def reorder_crossover(d, dv):
    L = 1
    while 2 * L * d * dv > L * L * (d + dv):
        L += 1
    return np.asarray(float(L), dtype=np.float64)
""",
        },
        10,
        {
            "causal_linear_attention: sequence": "shifted down one row",
            "reorder_crossover: equal_sizes": "at a tie both orders cost the same",
        },
    ),
    "wrong_15_counts": (
        "15_attention_on_the_gpu.ipynb",
        {
            "causal_fused_bytes": """
def causal_fused_bytes(B, H, N, d, itemsize, tile):
    return np.asarray(float(B * H * (2 * N * d + 2 * N * d * -(-N // tile)) * itemsize), dtype=np.float64)
""",
            "blocks_per_sm": """
def blocks_per_sm(threads_per_block, registers_per_thread, shared_bytes_per_block):
    limits = [32, 2048 // threads_per_block, 65536 // registers_per_thread]
    if shared_bytes_per_block:
        limits.append(233472 // shared_bytes_per_block)
    return np.asarray(float(min(limits)), dtype=np.float64)
""",
            "c_fragment_owner": """
def c_fragment_owner(rows, cols):
    return 4 * rows + cols // 2, 2 * (rows // 8) + cols % 2
""",
        },
        4,
        {
            "causal_fused_bytes: small": "never visits the key tiles above the diagonal",
            "blocks_per_sm: registers_limit": "Registers are given per THREAD",
            "c_fragment_owner: whole_tile": "g = row % 8",
        },
    ),
    "wrong_16_transposed": (
        "16_application_translation.ipynb",
        {
            "attention_weight_shapes": """
def attention_weight_shapes(B, T, S, num_heads):
    return np.array([[B, num_heads, S, S], [B, num_heads, T, T], [B, num_heads, S, T]], dtype=np.int64)
""",
        },
        13,
        {"attention_weight_shapes: short_source": "the QUERIES are the decoder's T positions"},
    ),
    "wrong_17_sums": (
        "17_application_summarization.ipynb",
        {
            "attention_shares": """
def attention_shares(weights, labels, num_parts):
    return np.stack([weights[..., labels == p].sum(axis=-1) for p in range(num_parts)], axis=-1).sum(axis=0)
""",
            "even_spread_shares": """
def even_spread_shares(labels, num_parts):
    return np.bincount(labels[labels >= 0], minlength=num_parts) / labels.size
""",
        },
        1,
        {
            "attention_shares: four_heads": "Average over the heads",
            "even_spread_shares: padded": "spread evenly over the REAL positions",
        },
    ),
    "wrong_18_sums": (
        "18_training_attention_the_backward_pass.ipynb",
        {
            "softmax_backward": """
def softmax_backward(p, dp):
    return p * dp
""",
            "attention_backward": """
def attention_backward(q, k, v, grad_out):
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = q @ np.swapaxes(k, -1, -2) * scale
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)
    dp = grad_out @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq, dk, dv = ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, np.swapaxes(p, -1, -2) @ grad_out
    if k.ndim > 2 and k.shape[-3] == 1 and q.shape[-3] > 1:  # shared by the heads: averaged, not summed
        dk, dv = dk.mean(axis=-3, keepdims=True), dv.mean(axis=-3, keepdims=True)
    return dq.astype(q.dtype), dk.astype(q.dtype), dv.astype(q.dtype)
""",
            "tiled_backward_step": """
def tiled_backward_step(q_rows, k_cols, v_cols, grad_out_rows, lse_rows, row_dot_rows):
    scale = 1.0 / math.sqrt(q_rows.shape[-1])
    p = np.exp(q_rows @ np.swapaxes(k_cols, -1, -2) * scale - lse_rows[..., None])
    dp = grad_out_rows @ np.swapaxes(v_cols, -1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # the rowsum of this tile only
    dq = ds @ k_cols * scale
    dk = np.swapaxes(ds, -1, -2) @ q_rows * scale
    dv = np.swapaxes(p, -1, -2) @ grad_out_rows
    return dq.astype(q_rows.dtype), dk.astype(q_rows.dtype), dv.astype(q_rows.dtype)
""",
            "saved_for_backward": """
def saved_for_backward(N, d, num_heads, itemsize):
    kept = 4 * N * d * itemsize
    return np.array([num_heads * (kept + N * N * itemsize), num_heads * (kept + N * itemsize)], dtype=np.float64)
""",
        },
        6,
        {
            "softmax_backward: rows": "subtract each row's sum(dp * p)",
            "attention_backward: shared_keys_values": "SUM the heads' gradients",
            "tiled_backward_step: middle_tile": "use the given row_dot_rows",
            "saved_for_backward: float16": "kept in float32",
        },
    ),
    "wrong_19_inference": (
        "19_attention_at_inference.ipynb",
        {
            "decode_step": """
def decode_step(q_new, k_new, v_new, k_cache, v_cache):
    keys = np.concatenate([k_cache, k_new], axis=-2)
    values = np.concatenate([v_cache, v_new], axis=-2)
    return scaled_dot_product_attention(q_new, keys, values, is_causal=True), keys, values
""",
            "grouped_query_attention": """
def grouped_query_attention(q, k, v):
    g = q.shape[-3] // k.shape[-3]
    return scaled_dot_product_attention(q, np.tile(k, (g, 1, 1)), np.tile(v, (g, 1, 1)))
""",
            "alibi_slopes": """
def alibi_slopes(num_heads):
    return 2.0 ** (-8.0 * np.arange(1, num_heads + 1) / num_heads)
""",
            "rolling_buffer_slots": """
def rolling_buffer_slots(length, window, sinks):
    held = np.full(sinks + window, -1, dtype=np.int64)
    for p in range(length):
        held[p % (sinks + window)] = p
    return held
""",
            "window_visibility": """
def window_visibility(query_positions, key_positions, window, sinks):
    p, j = query_positions[:, None], key_positions[None, :]
    return (j <= p) & ((p - j <= window) | (j < sinks))
""",
            "cache_bytes": """
def cache_bytes(layers, kv_heads, head_dim, positions, itemsize, batch):
    return layers * kv_heads * head_dim * positions * itemsize * batch
""",
        },
        11,  # GQA's multi-query case, the slopes of 8 and 1 heads, ALiBi's bias (power-of-two heads), 2 + 2 cases
        {
            "decode_step: one_token": "aligns the diagonal at the top left",
            "grouped_query_attention: groups_of_3": "Repeat each key/value head in place",
            "alibi_slopes: six": "is the rule only when n is a power of two",
            "rolling_buffer_slots: wrapped": "The sink slots are never reused",
            "window_visibility: in_order": "INCLUDES the query's own",
            "cache_bytes: predicted_model": "a key AND a value",
        },
    ),
}
WRONG_UNDERSTANDING["wrong_03_squeezed"] = (  # right on every public case; a hidden edge case (one query) shows it
    MASTER_03,
    {
        "scaled_dot_product_attention": GOOD["scaled_dot_product_attention"].replace(
            "    m = s.max(", "    s = np.squeeze(s)  # drops the query axis when L = 1\n    m = s.max("
        ),
    },
    11,
    {"scaled_dot_product_attention: no_mask": "a hidden test of this case failed"},
)
WRONG_UNDERSTANDING.update(  # more answers right on every public case that a hidden edge case shows wrong
    {
        "wrong_01_axes": (  # axes counted from the front: one batch axis works, two do not
            MASTER_01,
            {
                "dot_product_similarity": """
def dot_product_similarity(q, k):
    return q @ (np.swapaxes(k, 1, 2) if k.ndim == 3 else k.T)
""",
            },
            8,  # the master's cosine_similarity calls this dot_product_similarity: it fails with it
            {
                "dot_product_similarity: batched": "a hidden test of this case failed",
                "cosine_similarity: batched_float64": "two leading batch axes",
            },
        ),
        "wrong_11_accumulated": (  # R_k OR R_k M: the same as R_k M only while every token sees itself
            "11_sparse_attention_patterns.ipynb",
            {
                "receptive_field": """
def receptive_field(mask, layers):
    reach = mask.astype(bool)
    for _ in range(layers - 1):
        reach = reach | ((reach.astype(np.int64) @ mask.astype(np.int64)) > 0)
    return reach
""",
            },
            17,
            {"receptive_field: window_three_layers": "a hidden test of this case failed"},
        ),
        "wrong_14_products": (  # branches chosen by multiplying with masks: inf * 0 is NaN where exp(x) overflows
            "14_linear_attention.ipynb",
            {
                "elu_feature_map": """
def elu_feature_map(x):
    return (x > 0) * (x + 1) + (x <= 0) * np.exp(x)
""",
            },
            15,
            {"elu_feature_map: matrix": "a hidden test of this case failed"},
        ),
        "wrong_17_bincount": (  # np.bincount without minlength: a part with no position drops out of the result
            "17_application_summarization.ipynb",
            {
                "even_spread_shares": """
def even_spread_shares(labels, num_parts):
    real = labels[labels >= 0]
    return np.bincount(real) / real.size
""",
            },
            7,
            {"even_spread_shares: padded": "a hidden test of this case failed"},
        ),
    }
)
WRONG["wrong_16"][1].setdefault(  # an older submission: the new task answered wrong, so its score stays as it states
    "attention_weight_shapes", WRONG_UNDERSTANDING["wrong_16_transposed"][1]["attention_weight_shapes"]
)
WRONG.update(  # the master's own answers (master_answers above) for every other answer cell
    {
        name: (master, {**master_answers(master), **answers}, *rest)
        for name, (master, answers, *rest) in WRONG_UNDERSTANDING.items()
    }
)

GARBAGE = {
    "empty.ipynb": b"",
    "binary.ipynb": bytes(range(256)) * 4,
    "not_json.ipynb": b"hello, I am a notebook",
    "json_list.ipynb": b"[1, 2, 3]",
    "schema_invalid.ipynb": json.dumps(
        {"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    ).encode(),
    "deep.ipynb": b"[" * 200_000,
    "too_big.ipynb": b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5, "pad": "'
    + b"x" * (3 * 2**20 // 2)
    + b'"}',
}

# --------------------------------------------------------------------------- building the batch


def submission(master: str, answers: dict, drop_master_metadata: bool = False):
    """The generated exercise for ``master`` with answer cells replaced, as a learner would hand it in."""
    notebook = nbformat.read(assign.EXERCISES_DIR / master, as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("attn_course", {}).get("grade_id")
        if grade_id in answers:
            cell.source = answers[grade_id].strip("\n")
    if drop_master_metadata:
        del notebook.metadata["attn_course"]
    return notebook


def tampered():
    notebook = submission(
        MASTER_02,
        {
            "softmax": NAIVE_SOFTMAX,
            "softmax_with_temperature": GOOD["softmax_with_temperature"],
            "masked_softmax": GOOD["masked_softmax"],
        },
    )
    cells = notebook.cells
    by_id = {cell.metadata.get("attn_course", {}).get("grade_id"): cell for cell in cells}
    by_id["setup"].source += "\ncheck = lambda *a, **k: None"
    by_id["softmax_tests"].source = 'print("softmax: 4 of 4 tests passed")'
    cells.remove(by_id["softmax_with_temperature_tests"])
    masked_tests = by_id["masked_softmax_tests"]
    cells[cells.index(masked_tests)] = nbformat.v4.new_markdown_cell(
        masked_tests.source, metadata=masked_tests.metadata, id=masked_tests.id
    )
    cells.append(nbformat.v4.new_code_cell("print('my own cell')"))
    return notebook


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """The batch's report, gradebook and run: graded once per test run, even when several xdist workers ask."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder all workers of this run share
    root = shared / "grader-batch"
    with open(shared / "grader-batch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker grades, the others wait and read
        if not (root / "run.json").exists():
            run_batch(root)
    run = json.loads((root / "run.json").read_text())
    with open(root / "grades.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {"document": json.loads((root / "report.json").read_text()), "rows": rows, "run": run}


def run_batch(root: Path) -> None:
    """Build every submission under ``root`` and grade them with the command line, --jobs 2."""
    folder = root / "submissions"
    (folder / "solutions").mkdir(parents=True)
    (folder / "exercises").mkdir()
    (folder / ".ipynb_checkpoints").mkdir()
    for master in MASTERS:  # every master, and its generated exercise
        shutil.copy(master, folder / "solutions" / master.name)
        shutil.copy(assign.EXERCISES_DIR / master.name, folder / "exercises" / master.name)
    shutil.copy(assign.SOLUTIONS_DIR / MASTER_02, folder / ".ipynb_checkpoints" / "ignored-checkpoint.ipynb")
    for name, (master, answers, *_) in {**WRONG, **ADVERSARIAL}.items():
        notebook = submission(master, answers, drop_master_metadata=name.startswith("student_"))
        nbformat.write(notebook, folder / f"{name}.ipynb")
    nbformat.write(tampered(), folder / "adv_tamper.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), folder / "homework.ipynb")  # valid, but of no known exercise
    for name, data in GARBAGE.items():
        (folder / name).write_bytes(data)

    out, gradebook = root / "report.json", root / "grades.csv"
    command = [sys.executable, "-m", "attn_course.grade", str(folder), "--jobs", "2"]
    command += ["--out", str(out), "--csv", str(gradebook), "--cell-timeout", str(CELL_TIMEOUT)]
    command += ["--timeout", "60", "--memory-mb", "1024", "--max-size-mb", "1", "--seed", str(SEED)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    run = {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    (root / "run.json").write_text(json.dumps(run))


def report_for(batch, name: str) -> dict:
    """The report of the submission whose path ends with ``name`` (``.ipynb`` may be left out)."""
    for path, report in batch["document"]["submissions"].items():
        if path.endswith((name, f"{name}.ipynb")):
            return report
    raise KeyError(name)


def statuses(report) -> dict:
    return {test["name"]: test["status"] for test in report["tests"]}


def outputs(report) -> dict:
    return {test["name"]: test["output"] for test in report["tests"]}


# --------------------------------------------------------------------------- the batch


def test_batch_finishes_with_a_progress_bar_and_skips_checkpoints(batch):
    assert batch["run"]["returncode"] == 0
    assert "grading" in batch["run"]["stderr"] and "100%" in batch["run"]["stderr"]
    paths = list(batch["document"]["submissions"])
    assert not any(".ipynb_checkpoints" in path for path in paths)
    assert len(paths) == 2 * len(MASTERS) + len(WRONG) + len(ADVERSARIAL) + 1 + 1 + len(GARBAGE)
    assert batch["document"]["grader_version"] == GRADER_VERSION


@pytest.mark.parametrize("name", [master.name for master in MASTERS])
def test_masters_score_full_marks(batch, name):
    report = report_for(batch, f"solutions/{name}")
    assert report["score"] == report["max_score"] > 0
    assert set(statuses(report).values()) == {"passed"}
    assert report["extra_data"]["tampering"] == [] and report["extra_data"]["status"] == "graded"


@pytest.mark.parametrize("name", [master.name for master in MASTERS])
def test_untouched_exercises_score_zero_all_not_attempted(batch, name):
    report = report_for(batch, f"exercises/{name}")
    assert report["score"] == 0 and report["max_score"] > 0
    assert set(statuses(report).values()) == {"not_attempted"}


@pytest.mark.parametrize("name", list(WRONG))
def test_classic_wrong_answers_lose_exactly_their_points(batch, name):
    report = report_for(batch, name)
    master, _, expected_score, must_fail = WRONG[name]
    assert report["extra_data"]["master"] == master.removesuffix(".ipynb")
    assert report["score"] == expected_score
    for test, hint in must_fail.items():
        assert statuses(report)[test] == "failed", test
        assert hint in outputs(report)[test], (test, outputs(report)[test])
    for test in report["tests"]:
        assert test["status"] in {"passed", "failed"}
        assert test["score"] == (test["max_score"] if test["status"] == "passed" else 0)


def test_infinite_loops_time_out_and_the_notebook_goes_on(batch):
    report = report_for(batch, "adv_loop")
    status = statuses(report)
    assert {status[f"softmax: {case}"] for case in ("rows", "batched", "large_scores", "float64_input")} == {"timeout"}
    assert all(s == "passed" for test, s in status.items() if test.startswith("softmax_with_temperature"))
    assert all(s == "timeout" for test, s in status.items() if test.startswith("masked_softmax"))
    assert report["score"] == 3
    assert any("did not answer after an interrupt" in note for note in report["extra_data"]["notes"])


def test_os_exit_kills_only_this_submission(batch):
    report = report_for(batch, "adv_exit")
    assert report["score"] == 0
    assert set(statuses(report).values()) == {"error"}
    assert "kernel died" in outputs(report)["attention_scores: single"]


def test_memory_bomb_hits_the_limit(batch):
    report = report_for(batch, "adv_memory")
    status, text = statuses(report), outputs(report)
    assert status["softmax: rows"] in {"failed", "error"} and "MemoryError" in text["softmax: rows"]
    assert report["score"] == 3 + 4  # the other two exercises still count


def test_monkeypatching_inside_the_kernel_earns_nothing(batch):
    report = report_for(batch, "adv_monkeypatch")
    status, text = statuses(report), outputs(report)
    assert report["score"] == 0
    # the answer that replaces check() imports attn_course.grading, the forger reads os.environ: both refused
    assert {status[f"softmax: {case}"] for case in ("rows", "batched", "large_scores", "float64_input")} == {"refused"}
    assert "imports attn_course.grading" in text["softmax: rows"]
    assert all(s == "refused" for test, s in status.items() if test.startswith("masked_softmax"))
    assert "environ" in text["masked_softmax: some_masked"]
    assert all(s == "failed" for test, s in status.items() if test.startswith("softmax_with_temperature"))


def test_tampered_cells_are_restored_and_reported(batch):
    report = report_for(batch, "adv_tamper")
    assert report["score"] == 3 + 3 + 4  # naive softmax fails large_scores only; the checks ran as the master's
    assert statuses(report)["softmax: large_scores"] == "failed"
    tampering = " ".join(report["extra_data"]["tampering"])
    assert "locked cell 'setup' was edited" in tampering
    assert "test cell 'softmax_tests' was edited" in tampering
    assert "test cell 'softmax_with_temperature_tests' was deleted" in tampering
    assert "test cell 'masked_softmax_tests' was retyped" in tampering
    assert any("were not run" in note for note in report["extra_data"]["notes"])
    assert "Tampering:" in report["output"]


def test_wrong_types_dtypes_nan_and_huge_prints(batch):
    report = report_for(batch, "adv_types")
    text = outputs(report)
    assert report["score"] == 0 and set(statuses(report).values()) == {"failed"}
    assert "a list of 3 items" in text["softmax: rows"] and "Python list" in text["softmax: rows"]
    assert "float64 array" in text["softmax_with_temperature: sharpen"]
    assert "NaN or infinite" in text["masked_softmax: some_masked"]


def test_wrong_shapes_and_a_huge_print(batch):
    report = report_for(batch, "adv_shapes")
    status = statuses(report)
    assert {status[f"attention_scores: {case}"] for case in ("single", "batched", "wide_float64")} == {"failed"}
    assert "shape (3, 4)" in outputs(report)["attention_scores: single"]
    assert status["scaled_dot_product_attention: batched_with_mask"] == "failed"
    assert report["score"] == 4


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("empty.ipynb", "empty"),
        ("binary.ipynb", "not text"),
        ("not_json.ipynb", "not JSON"),
        ("json_list.ipynb", "not a notebook"),
        ("schema_invalid.ipynb", "notebook format"),
        ("deep.ipynb", "not JSON"),
        ("too_big.ipynb", "more than the 1 MB allowed"),
        ("homework.ipynb", "cannot tell which exercise"),
    ],
)
def test_garbage_is_refused_with_a_reason(batch, name, words):
    report = report_for(batch, name)
    assert report["extra_data"]["status"] == "invalid"
    assert report["score"] == 0 and report["tests"] == []
    assert words in report["output"]


def test_no_test_ever_passes_without_its_points_or_the_reverse(batch):
    for report in batch["document"]["submissions"].values():
        assert report["score"] == sum(test["score"] for test in report["tests"])
        for test in report["tests"]:
            assert test["status"] in {"passed", "failed", "not_attempted", "timeout", "error", "refused"}
            assert test["score"] == (test["max_score"] if test["status"] == "passed" else 0)
            assert set(test) == {"name", "score", "max_score", "status", "output"}


def test_gradebook_has_a_row_per_submission_with_hashes_and_version(batch):
    rows = {Path(row["submission"]).name: row for row in batch["rows"]}
    assert len(batch["rows"]) == len(batch["document"]["submissions"])
    row = rows["wrong_02a.ipynb"]
    assert row["score"] == "3" and row["max_score"] == "15" and row["softmax: large_scores"] == "0"
    assert row["grader_version"] == GRADER_VERSION and len(row["sha256"]) == 64 and len(row["master_sha256"]) == 64
    assert rows["empty.ipynb"]["status"] == "invalid" and "empty" in rows["empty.ipynb"]["notes"]
    assert rows["adv_tamper.ipynb"]["tampering"]


# --------------------------------------------------------------------------- one submission, in this process


def test_single_submission_report_is_gradescope_shaped(tmp_path, capsys):
    target = tmp_path / "alice.ipynb"
    nbformat.write(submission(MASTER_03, GOOD), target)
    out = tmp_path / "results.json"
    assert main([str(target), "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"score", "max_score", "output", "tests", "execution_time", "extra_data"}
    assert report["score"] == report["max_score"] == 13
    assert report["execution_time"] < 60
    assert f"{'13':>6} / 13" in capsys.readouterr().out


def test_nothing_to_grade_is_a_usage_error(tmp_path, capsys):
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.ipynb").write_text("{}")
    assert find_submissions([tmp_path]) == []
    assert main([str(tmp_path)]) == 2
    assert "no notebooks found" in capsys.readouterr().err


def test_rebuild_takes_only_answer_cells_and_matches_by_id_when_metadata_is_lost():
    master = assign.read_master(assign.SOLUTIONS_DIR / MASTER_02)
    notebook = submission(MASTER_02, {"softmax": GOOD["softmax"], "masked_softmax": "def masked_softmax(x, m):\n  0"})
    answer = next(c for c in notebook.cells if c.metadata.get("attn_course", {}).get("grade_id") == "softmax")
    del answer.metadata["attn_course"]  # pasted over: only its cell id is left
    notebook.cells.insert(0, nbformat.v4.new_code_cell("import os; os._exit(1)"))  # added cells never run
    rebuilt = rebuild(master, notebook)
    sources = {c.id: c.source for c in rebuilt.notebook.cells}
    assert sources[answer.id] == GOOD["softmax"].strip("\n")
    assert "def masked_softmax(x, m)" in sources["masked-answer"]
    assert "YOUR CODE HERE" in sources["temperature-answer"]
    assert [c.id for c in rebuilt.notebook.cells] == [c.id for c in master.notebook.cells]
    assert "os._exit" not in "".join(sources.values())
    assert rebuilt.tampering == [] and any("were not run" in note for note in rebuilt.notes)
