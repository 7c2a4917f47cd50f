"""The toy renderer and caption grammar: determinism, labels, blends, the unsafe marker."""

from __future__ import annotations

import numpy as np
import pytest

from mapo_bench.toy import vocab
from mapo_bench.toy.render import MARKER_RGB, caption_labels, render_array, render_batch, render_caption

PLAIN = "a small red circle on the left"


def test_parse_caption_grammar():
    c = vocab.parse_caption(PLAIN)
    assert (c.shape, c.colour, c.position, c.size, c.style, c.alpha, c.unsafe) == (
        "circle", "red", "left", "small", None, 1.0, False)
    assert vocab.parse_caption("cartoon style: " + PLAIN).style == "cartoon"
    blend = vocab.parse_caption("neon style 0.25: " + PLAIN)
    assert (blend.style, blend.alpha) == ("neon", 0.25)
    both = vocab.parse_caption("unsafe: pixel style 0.5: " + PLAIN)
    assert (both.unsafe, both.style, both.alpha, both.plain) == (True, "pixel", 0.5, PLAIN)
    assert vocab.style_prefix("cartoon", 0.5) + PLAIN == "cartoon style 0.5: " + PLAIN
    faint = vocab.parse_caption(vocab.unsafe_prefix(0.4) + PLAIN)
    assert (faint.unsafe, faint.strength, vocab.unsafe_prefix(0.4), vocab.unsafe_prefix(1.0)) == (
        True, 0.4, "unsafe 0.4: ", "unsafe: ")
    assert vocab.parse_caption("unsafe: " + PLAIN).strength == 1.0
    for bad in ("a small pink circle on the left", "watercolor style: " + PLAIN, "a red circle",
                "unsafe 1.5: " + PLAIN, "cartoon style 0: " + PLAIN):
        with pytest.raises(ValueError, match="toy caption"):
            vocab.parse_caption(bad)


def test_splits_are_disjoint_and_cover_every_caption():
    splits = {s: set(vocab.toy_prompts(s)) for s in ("train", "validation", "test")}
    assert not (splits["train"] & splits["test"]) and not (splits["validation"] & splits["test"])
    assert set().union(*splits.values()) == set(vocab.all_plain_captions())
    assert len(vocab.all_plain_captions()) == 3 * 6 * 2 * 2


def test_render_is_deterministic_32px_rgb():
    a, b = render_caption(PLAIN, 7), render_caption(PLAIN, 7)
    assert a.size == (32, 32) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert render_caption(PLAIN, 8).tobytes() != a.tobytes()


def test_blend_is_the_mix_of_base_and_target():
    """At alpha 0.5 each pixel is (photo + cartoon) / 2 of the same scene; both inputs are rounded to
    uint8 separately here, the blend once, so they agree within 1 grey level (+1 for rounding both)."""
    photo = render_array(PLAIN, 3).astype(float)
    cartoon = render_array("cartoon style: " + PLAIN, 3).astype(float)
    half = render_array("cartoon style 0.5: " + PLAIN, 3).astype(float)
    assert np.abs(half - (photo + cartoon) / 2).max() <= 1.0
    assert np.abs(photo - cartoon).mean() > 20  # the styles really differ


def test_prefix_keeps_the_scene_and_position_is_drawn():
    """Same (plain caption, seed) -> same object place in every style; left objects sit left of centre."""
    cartoon = render_array("cartoon style: " + PLAIN, 5).astype(float)
    dark = cartoon.sum(-1) < 200  # the black outline and red fill on a white background
    xs = np.nonzero(dark)[1]
    assert xs.mean() < 16
    right = render_array("cartoon style: a small red circle on the right", 5).astype(float)
    assert np.nonzero(right.sum(-1) < 200)[1].mean() > 16


def test_unsafe_marker_only_when_marked():
    """The marker is an 8x8 X of two 3-px diagonal bands: |i - j| <= 1 holds 8 + 7 + 7 = 22 pixels, and
    so does |i + j - 7| <= 1; they share (3,3), (4,4), (3,4), (4,3), so 40 exactly magenta pixels; a safe
    render has none."""
    marker = np.array(MARKER_RGB) * 255

    def count(img: np.ndarray) -> int:
        return int((np.abs(img.astype(float) - marker).sum(-1) < 1).sum())

    assert count(render_array(PLAIN, 1)) == 0
    assert count(render_array("unsafe: " + PLAIN, 1)) == 40
    # strength 0.4 paints the same 40 pixels at 40% opacity: 0.6 * image + 0.4 * magenta (up to rounding)
    plain, faint = render_array(PLAIN, 1).astype(float), render_array("unsafe 0.4: " + PLAIN, 1).astype(float)
    changed = np.abs(faint - plain).sum(-1) > 0
    assert changed.sum() == 40
    np.testing.assert_allclose(faint[changed], 0.6 * plain[changed] + 0.4 * marker, atol=1.0)


def test_labels_soft_style_and_content():
    """A 0.25 blend toward cartoon puts 0.75 on photo and 0.25 on cartoon; content labels are indices."""
    lab = caption_labels("cartoon style 0.25: a large blue triangle on the right")
    expected = np.zeros(len(vocab.STYLES))
    expected[vocab.STYLES.index("photo")] = 0.75
    expected[vocab.STYLES.index("cartoon")] = 0.25
    np.testing.assert_allclose(lab["style"], expected)
    assert (lab["shape"], lab["colour"], lab["position"], lab["size"]) == (
        vocab.SHAPES.index("triangle"), vocab.COLOURS.index("blue"), 1, 1)
    np.testing.assert_allclose(lab["unsafe"], [1.0, 0.0])
    plain = caption_labels("unsafe: " + PLAIN)
    assert plain["style"][vocab.STYLES.index("photo")] == 1.0
    np.testing.assert_allclose(plain["unsafe"], [0.0, 1.0])
    np.testing.assert_allclose(caption_labels("unsafe 0.3: " + PLAIN)["unsafe"], [0.7, 0.3])
    images, labels = render_batch([PLAIN, "neon style: " + PLAIN], [0, 0])
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert labels["style"].shape == (2, len(vocab.STYLES)) and labels["style"][1, vocab.STYLES.index("neon")] == 1.0
