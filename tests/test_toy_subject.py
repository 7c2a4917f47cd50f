"""Issue 14's toy subject and concept: the caption grammar's reserved word, the pattern the renderer draws,
the `toy-subject` metric against hand-derived spectra, the shipped example folders, and the personalization
pipeline (from-images dataset with its own prompts, DreamBooth's class images) end to end on a tiny base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.subject import ToySubjectSimilarity, highpass_power, ring_contrast, subject_peaks
from mapo_bench.toy import vocab
from mapo_bench.toy.images import subject_items, subject_prompts, write_example
from mapo_bench.toy.render import PATTERN_DEPTH, coverage, make_scene, pattern_mask, render_array

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def test_reserved_word_parses_before_the_shape_and_round_trips():
    c = vocab.parse_caption("cartoon style: a small yellow sks square on the left")
    assert (c.modifier, c.shape, c.colour, c.style) == ("sks", "square", "yellow", "cartoon")
    assert c.plain == "a small yellow sks square on the left"
    plain = vocab.parse_caption("a small red circle on the left")
    assert plain.modifier is None and plain.plain == "a small red circle on the left"
    with pytest.raises(ValueError, match="unknown modifier 'fluffy'"):
        vocab.parse_caption("a small red fluffy circle on the left")


def test_pattern_darkens_only_the_object_by_the_stated_depth():
    """The pattern render against the same scene drawn without the pattern: pixels outside the object are
    equal, inside they are scaled by 1 - 0.4 * inner coverage * mask (then rounded to uint8)."""
    caption = vocab.parse_caption("cartoon style: a large yellow striped square on the left")
    patterned = render_array(caption, 3).astype(float)
    from dataclasses import replace

    from mapo_bench.toy.render import draw_style

    scene = make_scene(caption, 3)
    plain = np.clip(draw_style("cartoon", replace(caption, modifier=None), scene), 0, 1)
    inner = coverage("square", scene.cx, scene.cy, scene.radius - 0.5)
    expected = np.round(plain * (1 - PATTERN_DEPTH * (inner * pattern_mask("striped"))[..., None]) * 255)
    assert np.array_equal(patterned, expected)
    assert (inner * pattern_mask("striped")).sum() > 10  # the pattern is actually drawn
    # horizontal stripes of period 4: rows 0-1 light, 2-3 dark, ...
    assert pattern_mask("striped")[:4, 0].tolist() == [0, 0, 1, 1]


def _cosine_image(fy: int, fx: int, amplitude: float = 0.25) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    grey = 0.5 + amplitude * np.cos(2 * np.pi * (fy * y + fx * x) / 32)
    return np.repeat(np.round(grey * 255)[..., None], 3, axis=2).astype(np.uint8)


def test_highpass_power_peaks_and_ring_contrast_by_hand():
    """A horizontal cosine of 8 cycles with amplitude a (64/255 after rounding) has power P = (a * 1024 / 2)^2 at
    frequencies (+-8, 0) (flat bins 256 and 768) and nothing else but rounding noise; a 2-cycle one lies below
    the cutoff. Its peaks are those two bins only (the rounding noise is below 5% of P). The ring of radius 8
    above the cutoff (8 <= r < 8.5) holds 32 bins: (+-8, 0), (0, +-8), and 8 each of (8, 1), (8, 2) and (7, 4)
    up to signs and order, 4 of (6, 6); so the contrast at each peak is P - 2P/32."""
    image = _cosine_image(8, 0)
    power = highpass_power(image[None])
    amplitude = (image[..., 0].astype(float) / 255).max() - 0.5  # the rounded amplitude, about 0.25
    expected = (amplitude * 1024 / 2) ** 2
    assert power[0, 8, 0] == pytest.approx(expected, rel=2e-3) and power[0, 24, 0] == pytest.approx(expected, rel=2e-3)
    assert power[0].sum() == pytest.approx(2 * expected, rel=1e-2)
    assert subject_peaks(power).tolist() == [256, 768]
    assert highpass_power(_cosine_image(2, 0)[None]).sum() < 1e-3 * expected  # only uint8 rounding is left
    assert ring_contrast(power, np.array([256])).tolist() == pytest.approx([expected * (1 - 2 / 32)], rel=2e-3)


def test_vertical_cosine_outside_the_subjects_bins_by_hand():
    """The vertical cosine's power sits in the horizontal one's ring but not in its bins: its contrast there is
    -(4P/32), against the subject's 2P - 4P/32: -2/30."""
    subject = highpass_power(_cosine_image(8, 0)[None])
    bins = subject_peaks(subject)
    other = ring_contrast(highpass_power(_cosine_image(0, 8)[None]), bins)
    assert other[0] / ring_contrast(subject, bins)[0] == pytest.approx(-2 / 30, rel=2e-3)


def test_weights_keep_only_the_windowed_texture_by_hand():
    """Weights 1 on the left half and 0 on the right: a cosine drawn on the right half only leaves a constant
    grey under the window, so no power at all; the same cosine on the left half keeps its power (a quarter
    of the whole-image cosine's at its peak, half the pixels: the transform's amplitude halves)."""
    full = _cosine_image(8, 0)
    flat = np.full_like(full, 128)
    left = np.ones((32, 32))
    left[:, 16:] = 0
    right_only = np.where(left[..., None] == 0, full, flat)
    left_only = np.where(left[..., None] == 1, full, flat)
    assert highpass_power(right_only[None], left[None]).max() < 1e-20
    whole = highpass_power(full[None])[0, 8, 0]
    assert highpass_power(left_only[None], left[None])[0, 8, 0] == pytest.approx(whole / 4, rel=1e-2)


def test_separation_by_hand():
    """Four pixels, grey levels 1, 1, 0, 0 (as RGB). Mask {0, 1}: n_in = n_out = 2, mean gap (1, 1, 1) -> 2 * 2 * 3
    = 12; mask {0}: means 1 and 1/3, 1 * 3 * 3 * (2/3)^2 = 4; the full mask 0; soft weights (1, 1, 0.5, 0): n_in
    2.5, n_out 1.5, mean_in (1 + 1) / 2.5 = 0.8, mean_out 0, so 2.5 * 1.5 * 3 * 0.64 = 7.2."""
    from mapo_bench.toy.locate import separation

    pixels = np.array([[1.0] * 3, [1.0] * 3, [0.0] * 3, [0.0] * 3])
    masks = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0.5, 0]], dtype=float)
    assert separation(masks, pixels).tolist() == pytest.approx([12.0, 4.0, 0.0, 7.2])


@pytest.mark.parametrize("style", ["photo", "cartoon", "pixel", "neon", "soft"])
def test_the_object_is_found_where_the_renderer_drew_it(style):
    """On renders of every shape, side and size: the window's centre of mass lies within 1 px of the drawn
    object's inner region's (measured at most 0.5-0.97 px over three seeds; neon 1.35 px, its glow spreading
    past the outline)."""
    from mapo_bench.toy.locate import object_weights

    captions = [f"a {z} {c} {s} on the {p}" for s in vocab.SHAPES for p in vocab.POSITIONS for z in vocab.SIZES
                for c in ("red", "blue")]
    captions = [c if style == "photo" else f"{style} style: {c}" for c in captions]
    images = np.stack([render_array(c, 7) for c in captions])
    weights = object_weights(images, captions)
    y, x = np.mgrid[0:32, 0:32] + 0.5
    for caption, w in zip(captions, weights, strict=True):
        parsed = vocab.parse_caption(caption)
        scene = make_scene(parsed, 7)
        truth = coverage(parsed.shape, scene.cx, scene.cy, scene.radius - 1.0)
        found = np.array([(w * x).sum(), (w * y).sum()]) / w.sum()
        drawn = np.array([(truth * x).sum(), (truth * y).sum()]) / truth.sum()
        assert np.abs(found - drawn).max() < (1.5 if style == "neon" else 1.0), (caption, found, drawn)


SUBJECT_SQUARE = "a large yellow sks square on the left"


def test_toy_subject_scores_by_hand():
    """The subject's own image scores 1; its contrast about mid-grey halved, a quarter (power goes with the square
    of the amplitude, and the object is found at the same place); a flat subject has nothing to compare with."""
    image = render_array(SUBJECT_SQUARE, 3)
    metric = ToySubjectSimilarity([Image.fromarray(image)], [SUBJECT_SQUARE], "digest")
    half = np.round(128 + 0.5 * (image.astype(float) - 128)).astype(np.uint8)
    scores = metric.score([Image.fromarray(image), Image.fromarray(half)], [SUBJECT_SQUARE] * 2)
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.25, rel=0.03)
    with pytest.raises(MapoBenchError, match="no high-frequency texture"):
        ToySubjectSimilarity([Image.new("RGB", (32, 32), (90, 90, 90))], [SUBJECT_SQUARE], "flat")
    with pytest.raises(MapoBenchError, match="reads toy captions to find the object: not a toy caption"):
        metric.score([Image.fromarray(image)], ["a photo of a dog"])


def _shipped_subject() -> ToySubjectSimilarity:
    return ToySubjectSimilarity.load(subject_images=EXAMPLES / "toy-subject-sks" / "images")


def test_toy_subject_does_not_reward_noise():
    """White noise spreads its power evenly over each ring, so its contrast is about 0 (the absolute power at
    the subject's bins, the first rule, scored noise of s.d. 20 grey levels at 9 x the base's samples)."""
    metric = _shipped_subject()
    noise = np.random.default_rng(0).normal(128, 20, (200, 32, 32, 1)).repeat(3, axis=-1)
    scores = metric.score([Image.fromarray(a) for a in np.clip(noise, 0, 255).astype(np.uint8)], [SUBJECT_SQUARE] * 200)
    assert abs(scores.mean()) < 3 * scores.std() / np.sqrt(len(scores)) + 0.01


def test_toy_subject_separates_the_subject_from_the_plain_object_and_from_a_textured_background():
    """On renders at new seeds: the subject's images about 1, the plain yellow square about 0, and the plain
    square with the subject's stripes drawn over the background only (what SFT drew on toy-personalization's
    run of 2026-12-04) about 0 too; the whole-image rule scored that background 6.0 (measured)."""
    metric = _shipped_subject()
    items = [(c, s + 100) for c, s in subject_items("sks", "yellow", "square")]
    subject = [render_array(c, s) for c, s in items]
    prompts = [c for c, _ in items]
    assert metric.score([Image.fromarray(a) for a in subject], prompts).mean() == pytest.approx(1.0, abs=0.25)
    plain, striped = [], []
    for caption, seed in items:
        parsed = vocab.parse_caption(caption.replace("sks ", ""))
        image = render_array(parsed.plain, seed).astype(float)
        scene = make_scene(parsed, seed)
        background = 1 - coverage(parsed.shape, scene.cx, scene.cy, scene.radius + 1.0)
        plain.append(Image.fromarray(image.astype(np.uint8)))
        dark = image * (1 - PATTERN_DEPTH * (background * pattern_mask("sks"))[..., None])
        striped.append(Image.fromarray(np.round(dark).astype(np.uint8)))
    assert abs(metric.score(plain, prompts).mean()) < 0.02
    assert abs(metric.score(striped, prompts).mean()) < 0.02


def test_shipped_example_folders_are_what_the_command_writes(tmp_path):
    for name, word, concept in (("toy-subject-sks", "sks", False), ("toy-concept-striped", "striped", True)):
        out = write_example(tmp_path / name, word, concept=concept)
        shipped = EXAMPLES / name
        files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
        for rel in files:
            assert (out / rel).read_bytes() == (shipped / rel).read_bytes(), rel
    meta = [json.loads(line) for line in (EXAMPLES / "toy-subject-sks/images/metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 8 and meta[0] == {"file_name": "000.png", "prompt": "a small yellow sks square on the left",
                                          "seed": 0}
    # new contexts only: no test or validation prompt is a training caption
    train = {m["prompt"] for m in meta}
    for split in ("validation", "test"):
        assert not train & set(subject_prompts("sks", "yellow", "square", split))
    assert len(subject_prompts("sks", "yellow", "square", "test")) == 20


def test_toy_images_refuses_what_the_toy_world_lacks(tmp_path):
    with pytest.raises(MapoBenchError, match="unknown word 'fluffy'"):
        write_example(tmp_path / "x", "fluffy")
    with pytest.raises(MapoBenchError, match="unknown colour 'pink'"):
        write_example(tmp_path / "x", "sks", colour="pink")


def personalization_spec(base: Path) -> dict:
    spec = yaml.safe_load((ROOT / "pipelines/toy-personalization.yaml").read_text())
    spec["name"], spec["model"] = "tiny-personalization", str(base)
    dataset = spec["datasets"][0]
    dataset["build"].update({"images": str(EXAMPLES / "toy-subject-sks/images"), "pairs_per_prompt": 1,
                             "sampler": {"steps": 2, "guidance": 2.0}})
    dataset["prompts"] = {s: str(EXAMPLES / f"toy-subject-sks/{s}.txt") for s in ("validation", "test")}
    dataset["class_images"].update({"pairs_per_prompt": 1, "sampler": {"steps": 2, "guidance": 2.0}})
    for method in spec["methods"].values():
        method.update({"recipe": str(ROOT / method["recipe"]), "grid": {"optim.lr": [1e-4]},
                       "overrides": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 100, "log.progress": False}})
    spec["seeds"], spec["matched"] = [0], {}
    spec["mismatch"] = {"timesteps": 2, "noises": 1, "reference_samples": 4, "resamples": 20,
                        "sampler": {"steps": 2, "guidance": 2.0}}
    # one training seed here, so one tuning seed (the two-seed rule is tested on the tiny pipeline)
    spec["eval"].update({"tuning_seeds": 1, "tuning_finalists": 1, "seeds": [0], "resamples": 50,
                         "sample": {"num_prompts": 3, "sampler": {"steps": 2, "guidance": 2.0}},
                         "eval": {"models": {"toy-content": str(base)}}})
    return spec


def test_personalization_pipeline_plans_the_subject_protocol(tmp_path):
    """The dataset's own prompts for its base and models, its class images built beside it and handed to
    DreamBooth alone, and the subject's folder handed to the subject metric."""
    from mapo_bench.pipeline import PipelineSpec
    from mapo_bench.runner import Runner

    spec = PipelineSpec.model_validate(personalization_spec(tmp_path / "base"))
    runner = Runner(spec, tmp_path / "run")
    jobs = {job.id: job for job in runner.phase1()}
    classes = jobs["build:sks-square.class-images"]
    assert classes.config["task"] == "class-images" and classes.config["subject_class"] == "square"
    dreambooth = jobs["train:sks-square:dreambooth:optim.lr0.0001:s0"]
    assert dreambooth.config["dreambooth"]["class_data"] == str(runner.class_images_dir(spec.datasets[0]))
    assert "build:sks-square.class-images" in dreambooth.deps
    mapo = jobs["train:sks-square:mapo:optim.lr0.0001:s0"]
    assert "dreambooth" not in mapo.config and mapo.deps == ["build:sks-square"]
    base = jobs["sample:sks-square/base:validation"]
    assert base.config["prompts"].endswith("toy-subject-sks/validation.txt") and "sample:base:validation" not in jobs
    scored = jobs["eval:base/sks-square:validation"]
    assert scored.config["subject_images"].endswith("toy-subject-sks/images")
    assert jobs["sample:sks-square/mapo/optim.lr0.0001-s0:validation"].config["prompts"].endswith("validation.txt")


def test_personalization_pipeline_end_to_end(tmp_path):
    """Build (with class images), tune, train on test, report: MaPO, DPO, SFT and DreamBooth side by side."""
    from mapo_bench.pipeline import PipelineSpec
    from mapo_bench.runner import run_pipeline
    from mapo_bench.toy.tiny import build_tiny_toy

    spec = PipelineSpec.model_validate(personalization_spec(build_tiny_toy(tmp_path / "base")))
    report = run_pipeline(spec, out=tmp_path / "run")
    results = json.loads((report / "results.json").read_text())
    comparisons = {r["comparison"] for r in results["rows"] if r["metric"] == "toy-subject" and r["view"] == "tuned"}
    assert {"mapo vs dpo", "mapo vs dreambooth", "dreambooth vs base", "sft vs base"} <= comparisons
    assert results["severity"]["sks-square"]["severity_measure"] == "kid"
    table = (report / "table.md").read_text()
    assert "dreambooth vs base" in table
