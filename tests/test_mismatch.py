"""Severity measures: the pure statistics against hand-derived numbers, and the stage on a tiny SD1.5."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from mapo_bench.severity_math import bootstrap_interval, frechet_distance, kid, kid_interval


def test_kid_hand_derived():
    """d = 1, k(a, b) = (ab + 1)^3, x = {0, 1}, y = {1, 2}.
    within x: k(0,1) = 1 -> 1; within y: k(1,2) = 27 -> 27;
    across: k(0,1)=1, k(0,2)=1, k(1,1)=8, k(1,2)=27 -> mean 9.25; KID = 1 + 27 - 2 * 9.25 = 9.5."""
    assert kid(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])) == pytest.approx(9.5)


def test_frechet_hand_derived():
    """x = {0, 1}, y = {1, 2}: means differ by 1, equal variances 0.5 -> FD = 1 + 0.5 + 0.5 - 2*0.5 = 1."""
    assert frechet_distance(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]])) == pytest.approx(1.0)


def test_kid_near_zero_for_same_distribution_and_interval_covers_it():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(150, 4)), rng.normal(size=(150, 4))
    low, high = kid_interval(a, b, resamples=100)
    assert low < 0 < high or abs(kid(a, b)) < 0.05
    assert kid(a, b + 2.0) > 10 * abs(kid(a, b))


def test_bootstrap_interval_of_constant_is_degenerate():
    assert bootstrap_interval(np.full(20, 0.3), resamples=50) == pytest.approx((0.3, 0.3))


def _tiny_pairs(folder, backend, n=4):
    from mapo_bench.config import SamplerConfig

    prompts = [f"a photo of object {i}" for i in range(n)]
    sampler = SamplerConfig(steps=2, guidance=5.0)
    chosen = backend.generate([f"cartoon. {p}" for p in prompts], list(range(n)), sampler)
    rejected = backend.generate(prompts, list(range(n)), sampler)

    def png(im):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    rows = [{"caption": p, "jpg_0": png(c), "jpg_1": png(r), "label_0": 1.0, "label_1": 0.0,
             "prompt_0": f"cartoon. {p}", "prompt_1": p} for p, c, r in zip(prompts, chosen, rejected, strict=False)]
    (folder / "data").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "data" / "train-00000.parquet")
    (folder / "manifest.json").write_text(json.dumps({"config": {"task": "pick-style"}}))


def test_measure_mismatch_on_tiny_sd15(tmp_path, tiny_sd15):
    from mapo_bench.backends import load_backend
    from mapo_bench.mismatch import MismatchConfig, measure_mismatch

    _tiny_pairs(tmp_path / "ds", load_backend("sd15", str(tiny_sd15)))
    cfg = MismatchConfig(dataset=tmp_path / "ds", backend="sd15", reference=str(tiny_sd15), timesteps=2, noises=1,
                         reference_samples=4, features="pixels", resamples=50,
                         sampler={"steps": 2, "guidance": 5.0})
    out = measure_mismatch(cfg)
    record = json.loads(out.read_text())
    measures = record["measures"]
    assert record["prefixed_side"] == "chosen" and measures["n_pairs"] == 4
    for key in ("prefix_excess_chosen", "prefix_excess_rejected", "reference_pair_accuracy", "kid_chosen",
                "frechet_rejected"):
        assert np.isfinite(measures[key]["value"]), key
    # The rejected side was generated from the plain caption itself: its prefix excess is exactly 0.
    assert measures["prefix_excess_rejected"]["value"] == pytest.approx(0.0, abs=1e-7)
    assert (tmp_path / "ds" / "severity.md").is_file()
    again = json.loads(measure_mismatch(cfg).read_text())["measures"]
    assert again["prefix_excess_chosen"] == measures["prefix_excess_chosen"]


def test_missing_prompt_columns_skip_prefix_excess_with_reason(tmp_path, tiny_sd15):
    from mapo_bench.backends import load_backend
    from mapo_bench.mismatch import MismatchConfig, measure_mismatch

    _tiny_pairs(tmp_path / "ds", load_backend("sd15", str(tiny_sd15)), n=3)
    shard = tmp_path / "ds" / "data" / "train-00000.parquet"
    pd.read_parquet(shard).drop(columns=["prompt_0", "prompt_1"]).to_parquet(shard)
    cfg = MismatchConfig(dataset=tmp_path / "ds", backend="sd15", reference=str(tiny_sd15), timesteps=1, noises=1,
                         reference_samples=3, features="pixels", resamples=20, sampler={"steps": 2})
    measures = json.loads(measure_mismatch(cfg).read_text())["measures"]
    assert "prefix_excess_chosen" not in measures
    assert "prompt_0" in measures["skipped"]["prefix_excess_chosen"]


def test_clip_features_are_batched_and_the_model_is_loaded_once(tiny_clip):
    """A tiny CLIP's features of 5 images: the same in batches of 2 as in one batch of 64 (batching is not
    allowed to change a number), unit length, and the second call reuses the loaded model (one cache miss)."""
    import numpy as np
    from PIL import Image

    from mapo_bench.mismatch import _clip, image_features

    _clip.cache_clear()
    images = [Image.new("RGB", (32, 32), (40 * i, 255 - 40 * i, 90)) for i in range(5)]
    one = image_features(images, "clip", str(tiny_clip))
    batched = image_features(images, "clip", str(tiny_clip), batch_size=2)
    assert one.shape[0] == 5 and np.allclose(one, batched, atol=1e-6)
    assert np.allclose(np.linalg.norm(one, axis=1), 1.0)
    assert _clip.cache_info().misses == 1 and _clip.cache_info().hits == 1
