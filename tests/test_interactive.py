"""The slider figures of attn_course.interactive: each control changes the picture, bad input is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attn_course import interactive, masks
from attn_course.softmax import softmax


def titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def test_temperature_title_gives_the_entropy_of_the_weights():
    scores = np.array([2.0, -1.0, 0.5, 3.0, 0.0])  # S = 5
    explorer = interactive.temperature_explorer(scores, tau=0.7)
    for tau in (0.05, 0.7, 20.0):
        weights = softmax(scores / tau)
        expected = -np.sum(weights * np.log(weights))
        (title,) = titles(explorer.draw(tau=tau))
        assert f"entropy {expected:.2f} nats" in title
    assert f"log S = {math.log(5):.2f}" in title
    bars = explorer.draw(tau=0.7).axes[0].patches
    assert [bar.get_height() for bar in bars] == pytest.approx(softmax(scores / 0.7))


def test_moving_a_control_changes_the_picture():
    explorer = interactive.temperature_explorer(np.array([1.0, 0.0, -1.0]))
    before = explorer.png()
    explorer.set(tau=5.0)
    assert explorer.values["tau"] == 5.0
    assert explorer.png() != before
    assert explorer.png(tau=1.0) == before  # the same values draw the same picture
    with pytest.raises(ValueError, match="unknown control"):
        explorer.set(temperature=2.0)


def test_scale_keeps_the_largest_weight_in_check():
    explorer = interactive.scale_explorer(d=4, num_keys=9)
    unscaled, scaled = titles(explorer.draw(d=1024))
    largest = [float(title.rsplit(" ", 1)[1]) for title in (unscaled, scaled)]
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(1024), rng.standard_normal((9, 1024))
    assert largest == pytest.approx([softmax(k @ q).max(), softmax(k @ q / 32).max()], abs=0.005)
    with pytest.raises(ValueError, match="d must be a power of two"):
        interactive.scale_explorer(d=5)


@pytest.mark.parametrize("pattern", interactive.PATTERNS)
def test_mask_title_counts_the_pattern_pairs(pattern):
    explorer = interactive.mask_explorer(n=11, pattern=pattern, window=3)
    (title,) = titles(explorer.draw(pattern=pattern, window=3))
    expected = {
        "causal": masks.causal_mask(11),
        "sliding window": masks.sliding_window_mask(11, 3),
        "causal sliding window": masks.sliding_window_mask(11, 3, causal=True),
        "dilated window": masks.dilated_window_mask(11, 3, dilation=2),
        "strided": masks.strided_mask(11, 4),
        "longformer": masks.longformer_mask(11, 3, [0]),
    }[pattern]
    assert f"{int(expected.sum())} of 121 pairs" in title


def test_head_explorer_shows_one_head_at_a_time():
    rng = np.random.default_rng(1)
    weights = softmax(rng.standard_normal((3, 4, 6)) * 2)  # (h=3, L=4, S=6)
    explorer = interactive.head_explorer(weights)
    assert explorer.controls["head"] == ("int", 0, 2)
    for head in range(3):
        expected = np.mean(-np.sum(weights[head] * np.log(weights[head]), axis=-1))
        assert f"head {head} of 3: mean entropy {expected:.2f}" in titles(explorer.draw(head=head))[0]
    assert explorer.png(head=0) != explorer.png(head=2)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="scores must be one row"):
        interactive.temperature_explorer(np.ones((2, 3)))
    with pytest.raises(ValueError, match="tau must be a positive"):
        interactive.temperature_explorer(np.ones(3), tau=0)
    with pytest.raises(ValueError, match="pattern must be one of"):
        interactive.mask_explorer(pattern="diagonal")
    with pytest.raises(ValueError, match=r"weights must be \(h, L, S\)"):
        interactive.head_explorer(np.ones((4, 6)))


def test_display_puts_sliders_above_one_image(monkeypatch):
    pytest.importorskip("ipywidgets")
    shown = []
    import IPython.display

    class Handle:
        def update(self, obj):
            shown.append(("update", obj))

    def fake_display(obj, display_id=False):
        shown.append(("display", obj))
        return Handle() if display_id else None

    monkeypatch.setattr(IPython.display, "display", fake_display)
    explorer = interactive.mask_explorer(n=9, pattern="sliding window", window=2)
    explorer._ipython_display_()
    (kind, box), (kind2, image) = shown
    assert (kind, kind2) == ("display", "display")
    assert [w.description for w in box.children] == ["pattern", "window"]
    assert image.data == explorer.png()
    explorer.widgets["window"].value = 5  # as a learner moving the slider
    assert shown[-1][0] == "update" and shown[-1][1].data == explorer.png(window=5) != image.data
