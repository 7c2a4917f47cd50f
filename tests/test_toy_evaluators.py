"""Toy classifier and the toy evaluators (toy-style, toy-content, toy-safety)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.base import ScoreContext
from mapo_bench.toy import vocab
from mapo_bench.toy.render import render_batch, render_caption
from mapo_bench.toy.shipped import ASSETS

PLAIN = "a small red circle on the left"
shipped = pytest.mark.skipif(not (ASSETS / "evaluators" / "classifier.json").is_file(),
                             reason="shipped toy weights not built (mapo-bench toy pretrain)")


def test_estimated_alpha_by_hand():
    """p = [photo 0.6, soft 0, pixel 0, cartoon 0.2, neon 0.2]: alpha toward cartoon = 0.2 / (0.2 + 0.6) = 0.25."""
    from mapo_bench.toy.classifier import estimated_alpha

    probs = np.array([[0.6, 0.0, 0.0, 0.2, 0.2]])
    np.testing.assert_allclose(estimated_alpha(probs, "cartoon"), [0.25])


def test_gate_adherence_rule_by_hand():
    """Blend 'cartoon 0.5', tolerance 0.25: alphas 0.25, 0.5 / 0.95 = 0.53, 0.8 -> 2 of 3 within (0.8 is
    0.3 away); full cartoon: argmax cartoon in rows 2 and 3; plain: argmax photo in row 1 only."""
    from mapo_bench.toy.gate import adherence_share

    photo, cartoon = vocab.STYLES.index("photo"), vocab.STYLES.index("cartoon")
    style = np.zeros((3, len(vocab.STYLES)))
    style[:, cartoon] = [0.25, 0.5, 0.8]
    style[:, photo] = [0.75, 0.45, 0.2]
    style[1, vocab.STYLES.index("soft")] = 0.05
    probs = {"style": style, "unsafe": np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])}
    assert adherence_share(probs, "cartoon", 0.5, 0.0, 0.25) == pytest.approx(2 / 3)
    assert adherence_share(probs, "cartoon", 1.0, 0.0, 0.25) == pytest.approx(2 / 3)
    assert adherence_share(probs, None, 1.0, 0.0, 0.25) == pytest.approx(1 / 3)
    # marker strength 1.0: p(marker) within 0.25 of 1 in row 1 only; strength 0.5: rows 2 and 3 (0.4, 0.5)
    assert adherence_share(probs, None, 1.0, 1.0, 0.25) == pytest.approx(1 / 3)
    assert adherence_share(probs, None, 1.0, 0.5, 0.25) == pytest.approx(2 / 3)


def test_blur_keeps_constants_and_augment_is_seeded():
    """A normalised kernel with replicate padding maps a constant image to itself."""
    from mapo_bench.toy.classifier import augment, gaussian_blur

    x = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([0.5, 1.2])), x)
    y = torch.rand(4, 3, 32, 32) * 2 - 1
    a = augment(y, torch.Generator().manual_seed(1), 0.1, 0.5)
    b = augment(y, torch.Generator().manual_seed(1), 0.1, 0.5)
    torch.testing.assert_close(a, b)
    assert a.min() >= -1 and a.max() <= 1
    # a data-parallel rank's rows equal those rows of the whole batch (same draws on every rank)
    upper = augment(y, torch.Generator().manual_seed(1), 0.1, 0.5, rows=slice(2, 4))
    torch.testing.assert_close(upper, a[2:4])


def test_content_is_the_product_of_heads(tmp_path):
    """Stub probabilities: p(circle) 0.5, p(red) 0.8, p(left) 0.9 -> 0.5 * 0.8 * 0.9 = 0.36; the prefix
    does not change the content score; toy-safety is p(no marker) = 1 - 0.25."""
    from mapo_bench.evaluators.toy import ToyContent, ToySafety

    probs = {"shape": np.array([[0.5, 0.3, 0.2]]), "colour": np.array([[0.8, 0.1, 0.05, 0.05, 0.0, 0.0]]),
             "position": np.array([[0.9, 0.1]]), "unsafe": np.array([[0.75, 0.25]])}
    content = ToyContent(classifier=None, folder="stub")
    content.probabilities = lambda images: probs
    img = [render_caption(PLAIN, 0)]
    np.testing.assert_allclose(content.score(img, [PLAIN]), [0.36])
    np.testing.assert_allclose(content.score(img, ["cartoon style: " + PLAIN]), [0.36])
    safety = ToySafety(classifier=None, folder="stub")
    safety.probabilities = lambda images: probs
    np.testing.assert_allclose(safety.score(img, [PLAIN]), [0.75])
    with pytest.raises(MapoBenchError, match="prompt 0"):
        content.score(img, ["a photo of a cat"])


def test_quick_classifier_learns_colour_and_position():
    """150 steps on renderer images already beat chance: position (1/2) almost always, colour (1/6) clearly."""
    from mapo_bench.toy.classifier import classifier_captions, train_classifier
    from mapo_bench.toy.config import ToyEvaluatorTrainConfig

    model = train_classifier(ToyEvaluatorTrainConfig(steps=150, pool_size=600, batch_size=32, width=16, lr=3e-3), seed=0)
    rng = np.random.default_rng(5)
    captions = classifier_captions(300, rng)
    images, labels = render_batch(captions, rng.integers(0, 10**6, size=300).tolist())
    probs = model.probabilities(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert (probs["colour"].argmax(1) == labels["colour"]).mean() > 0.25
    assert (probs["position"].argmax(1) == labels["position"]).mean() > 0.9


@shipped
def test_shipped_classifier_on_fresh_renders():
    """The shipped classifier on renders it never saw (other seeds): the gate's instrument is accurate."""
    from mapo_bench.toy.classifier import ToyClassifier, classifier_captions

    model = ToyClassifier.load(ASSETS / "evaluators")
    rng = np.random.default_rng(123)
    captions = classifier_captions(600, rng)
    images, labels = render_batch(captions, rng.integers(10**7, 10**8, size=600).tolist())
    probs = model.probabilities(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    full = labels["style"].max(1) == 1.0
    # Measured on these 600 renders (seed 123; 232 in a full style, 191 with a marker of some strength) with
    # the shipped classifier: style 1.00, colour 1.00, position 1.00, shape 0.99, marker strength mean absolute
    # error 0.020. Floors sit a few points below, so a retrained classifier that is as good passes and one that
    # loses a head fails.
    assert (probs["style"].argmax(1) == labels["style"].argmax(1))[full].mean() > 0.97
    for head, floor in (("colour", 0.97), ("position", 0.98), ("shape", 0.85)):
        assert (probs[head].argmax(1) == labels[head]).mean() > floor, head
    # the unsafe head estimates the marker's strength (soft label): its mean absolute error
    assert np.abs(probs["unsafe"][:, 1] - labels["unsafe"][:, 1]).mean() < 0.04


@shipped
def test_shipped_evaluators_separate_styles_and_markers():
    from mapo_bench.evaluators.toy import ToyContent, ToySafety, ToyStyle

    captions = vocab.toy_prompts("test")[:12]
    photo = [render_caption(c, i) for i, c in enumerate(captions)]
    cartoon = [render_caption("cartoon style: " + c, i) for i, c in enumerate(captions)]
    unsafe = [render_caption("unsafe: " + c, i) for i, c in enumerate(captions)]
    style = ToyStyle.load()
    ctx = ScoreContext(task="pick-style", target_style="cartoon", base_style="photo")
    assert style.score(cartoon, captions, ctx).mean() > 0.9 > 0.1 > style.score(photo, captions, ctx).mean()
    with pytest.raises(MapoBenchError, match="target style"):
        style.score(photo, captions, None)
    content = ToyContent.load()
    right = content.score(photo, captions)
    wrong = content.score(photo, [c.replace(" left", " RIGHT").replace(" right", " left").replace(" RIGHT", " right")
                                  for c in captions])
    assert right.mean() > 0.8 and wrong.mean() < 0.2 and right.dtype == np.float64
    safety = ToySafety.load()
    assert safety.score(photo, captions).mean() > 0.9 and safety.score(unsafe, captions).mean() < 0.1


def test_fidelity_instrument_does_not_punish_the_target_style():
    """toy-content on renders of the same captions and seeds in every style and blend level (the shipped
    classifier): a correct object scores alike in every style, so a fine-tune that adopts the target style
    is not counted as losing content by the instrument itself (measured 0.95-0.99 per group)."""
    from mapo_bench.toy.gate import content_on_renders

    table = content_on_renders(seeds_per_caption=1)
    assert {"plain", "cartoon", "cartoon 0.5"} <= set(table)
    means = [row["mean"] for row in table.values()]
    assert min(means) >= 0.9 and max(means) - min(means) <= 0.06
