"""sample -> eval -> compare end to end on tiny SD1.5 / SDXL pipelines with tiny evaluators (offline)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.config import EvalConfig
from mapo_bench.evaluators.run import SCORE_COLUMNS, evaluate, summarize

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
STYLE = {"target_style": "a Disney style animated image", "base_style": "a realistic photo"}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_clip):
    from mapo_bench.evaluators.tiny import (
        build_tiny_aesthetic,
        build_tiny_hps,
        build_tiny_image_reward,
        build_tiny_safety_checker,
    )

    root = tmp_path_factory.mktemp("weights")
    return {"clip": tiny_clip, "hps": build_tiny_hps(root / "hps"),
            "nsfw": build_tiny_safety_checker(root / "nsfw"),
            "aesthetic": build_tiny_aesthetic(root / "aesthetic.pth"),
            "imagereward": build_tiny_image_reward(root / "ImageReward")}


def _eval_options(w) -> dict:
    """Config keys pointing every metric at the tiny weights."""
    from mapo_bench.evaluators.tiny import TINY_IMAGE_REWARD_VISION
    from mapo_bench.testing import tiny_open_clip_config

    clip = str(w["clip"])
    return {"models": {"pickscore": clip, "clip": clip, "style": clip, "hps": str(w["hps"]), "nsfw": str(w["nsfw"]),
                       "aesthetic": str(w["aesthetic"]), "imagereward": str(w["imagereward"])},
            "options": {"pickscore": {"processor": clip}, "aesthetic": {"clip_model": clip},
                        "hps": {"arch": tiny_open_clip_config()},
                        "imagereward": {"tokenizer": str(w["imagereward"]), "arch": TINY_IMAGE_REWARD_VISION}}}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_sd15):
    """Base and a 'fine-tuned' model (UNet of another seed) sampled through the api, as the CLI does."""
    from mapo_bench import api
    from mapo_bench.testing import build_tiny_sd15

    root = tmp_path_factory.mktemp("e2e")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    tuned = build_tiny_sd15(root / "tuned-model", seed=1)
    common = [f"model={tiny_sd15}", "backend=sd15", f"prompts={root / 'prompts.txt'}", "seeds=[0,1]",
              "sampler.steps=2", "sampler.guidance=5.0", "device=cpu"]
    base = api.sample(None, common + [f"out={root / 'samples/base'}", "model_name=base"])
    mapo = api.sample(None, common + [f"out={root / 'samples/mapo'}", f"unet={tuned / 'unet'}", "model_name=mapo"])
    return root, base, mapo


def test_eval_all_metrics_end_to_end(two_models, tiny_weights):
    from mapo_bench import api

    root, base, mapo = two_models
    config = {"metrics": ["pickscore", "hps", "aesthetic", "clip", "style", "nsfw", "imagereward"],
              "images": [str(base), str(mapo)],
              "out": str(root / "scores"), "batch_size": 4, "device": "cpu", "task": "pick-style", **STYLE,
              **_eval_options(tiny_weights)}
    path = root / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    out = api.evaluate(path)
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert len(scores) == 2 * 3 * 2 * 7  # models x prompts x seeds x metrics
    assert np.isfinite(scores["score"]).all()
    assert set(scores.loc[scores.metric == "hps", "metric_version"]) == {"v2.1"}
    assert not scores.loc[scores.metric == "nsfw", "higher_is_better"].any()
    style = scores.loc[scores.metric == "style", "score"]
    assert ((style >= 0) & (style <= 1)).all()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 14 and set(summary["n"]) == {6}
    assert (out / "summary.md").read_text().startswith("| model | metric |")
    assert json.loads((out / "summary.json").read_text())["schema_version"] == 1

    # the wiring keeps image/prompt order: clip scores equal the evaluator applied to the PNGs directly
    from PIL import Image

    from mapo_bench.evaluators import backbones
    from mapo_bench.evaluators.clip_score import ClipScore

    rows = scores[(scores.metric == "clip") & (scores.model == "mapo")]
    index = pd.read_parquet(mapo / "index.parquet").set_index(["prompt_id", "seed"])
    images = [Image.open(mapo / index.loc[(p, s), "file"]).convert("RGB") for p, s in zip(rows.prompt_id, rows.seed, strict=True)]
    direct = ClipScore.load(model=str(tiny_weights["clip"])).score(images, list(rows.prompt))
    backbones.clear()
    np.testing.assert_allclose(rows.score.to_numpy(), direct, atol=1e-5, rtol=0)

    # compare through the api (what `mapo-bench compare` prints)
    result = api.compare(out, model_a="mapo", model_b="base", resamples=200, seed=1)
    assert set(result["metrics"]) == {"pickscore", "hps", "aesthetic", "clip", "style", "nsfw", "imagereward"}
    for stats in result["metrics"].values():
        assert stats["n"] == 6 and 0 <= stats["ci_low"] <= stats["win_rate"] <= stats["ci_high"] <= 1
        assert stats["resamples"] == 200 and stats["seed"] == 1
    json.dumps(result)  # printable as JSON

    # a finished eval with the same config and samples is returned as is
    stamp = (out / "manifest.json").stat().st_mtime_ns
    api.evaluate(path)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_eval_sdxl_and_compare_two_files(tiny_sdxl, tiny_weights, tmp_path):
    from mapo_bench.config import SamplerConfig
    from mapo_bench.evaluators.config import SampleConfig
    from mapo_bench.sampling import sample
    from mapo_bench.stats import compare_scores

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS))
    outs = []
    for name, guidance in (("g5", 5.0), ("g1", 1.0)):
        folder = sample(SampleConfig(model=str(tiny_sdxl), backend="sdxl", prompts=str(tmp_path / "p.txt"), seeds=[0],
                                     sampler=SamplerConfig(steps=2, guidance=guidance), model_name=name,
                                     out=tmp_path / name, device="cpu"))
        opts = _eval_options(tiny_weights)
        outs.append(evaluate(EvalConfig(metrics=["clip", "aesthetic"], images=[folder], out=tmp_path / f"scores-{name}",
                                        device="cpu", models=opts["models"], options=opts["options"])))
    result = compare_scores(outs[0], outs[1], resamples=100)
    assert (result["model_a"], result["model_b"]) == ("g5", "g1")
    assert result["metrics"]["clip"]["n"] == 3


def test_unknown_metric_lists_available():
    from mapo_bench.config import validate

    with pytest.raises(MapoBenchError) as info:
        validate(EvalConfig, {"metrics": ["pickscor"]}, "eval.yaml")
    message = str(info.value)
    assert "did you mean 'pickscore'" in message and "toy-style" in message and "\n" not in message
    assert EvalConfig(metrics="clip,aesthetic").metrics == ["clip", "aesthetic"]


def test_eval_missing_index_and_style_context(tmp_path, two_models, tiny_weights):
    with pytest.raises(MapoBenchError, match="no index.parquet"):
        evaluate(EvalConfig(metrics=["clip"], images=[tmp_path], out=tmp_path / "o"))
    _, base, _ = two_models
    opts = _eval_options(tiny_weights)
    with pytest.raises(MapoBenchError, match="target_style"):
        evaluate(EvalConfig(metrics=["style"], images=[base], out=tmp_path / "o", device="cpu",
                            models=opts["models"]))
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_summary_clamps_clip_mean_only():
    """clip: reported = max(mean, 0) = 0 for scores (-3, -1); another metric reports its mean -2; std = sqrt(2)."""
    frame = pd.DataFrame({"model": ["m"] * 4, "metric": ["clip", "clip", "x", "x"], "metric_version": ["1"] * 4,
                          "score": [-3.0, -1.0, -3.0, -1.0], "higher_is_better": [True] * 4})
    summary = summarize(frame).set_index("metric")
    assert summary.loc["clip", "reported"] == 0.0 and summary.loc["x", "reported"] == -2.0
    assert summary.loc["clip", "mean"] == -2.0 and summary.loc["x", "std"] == pytest.approx(2**0.5)


def test_config_classes_import_without_torch():
    import subprocess
    import sys

    code = ("import sys; import mapo_bench.evaluators.config, mapo_bench.stats; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("stage", ["sample", "eval"])
def test_recipes_validate(stage):
    """Every recipes/sample and recipes/eval file loads into its config class (what `config validate` does)."""
    from pathlib import Path

    from mapo_bench.config import load_config
    from mapo_bench.evaluators.config import SampleConfig

    files = sorted((Path(__file__).parent.parent / "recipes" / stage).glob("*.yaml"))
    assert files
    for file in files:
        assert file.read_text().startswith("# ")  # the comment header: purpose, command, hardware, time
        load_config(SampleConfig if stage == "sample" else EvalConfig, file)


def test_eval_scores_image_folders_of_other_tools_and_pairs_them(tmp_path, tiny_weights):
    """Two imagefolders (metadata.jsonl captions, one with seeds and a model label, one without): scored like
    sample folders, prompt ids from the caption text so the same prompt pairs across folders, a bad caption
    named by file and line."""
    from PIL import Image

    from mapo_bench.data.imagefolder import prompt_key
    from mapo_bench.stats import compare_scores

    rng = np.random.default_rng(0)
    for name, meta in (("ours", lambda i, p: {"seed": i % 2, "model": "ours"}), ("theirs", lambda i, p: {})):
        folder = tmp_path / name
        folder.mkdir()
        lines = []
        for i, prompt in enumerate([PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
            lines.append(json.dumps({"file_name": f"{i}.png", "prompt": prompt, **meta(i, prompt)}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    opts = _eval_options(tiny_weights)
    outs = [evaluate(EvalConfig(metrics=["clip"], images=[tmp_path / name], out=tmp_path / f"scores-{name}",
                                device="cpu", models=opts["models"])) for name in ("ours", "theirs")]
    scores = pd.read_parquet(outs[1] / "scores.parquet")
    assert set(scores["model"]) == {"theirs"} and sorted(scores["seed"]) == [0, 0, 1, 1]
    assert set(scores["prompt_id"]) == {prompt_key(PROMPTS[0]), prompt_key(PROMPTS[1])}
    result = compare_scores(outs[0], outs[1], resamples=50)["metrics"]["clip"]
    ours = pd.read_parquet(outs[0] / "scores.parquet").set_index(["prompt_id", "seed"])["score"]
    theirs = scores.set_index(["prompt_id", "seed"])["score"]
    assert result["n"] == 4 and result["mean_gap"] == pytest.approx(float((ours - theirs).mean()))
    meta = tmp_path / "theirs" / "metadata.jsonl"
    meta.write_text('{"file_name": "0.png", "prompt": " "}\n' + "\n".join(meta.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(MapoBenchError, match=r"0.png \(metadata.jsonl line 1\): 'prompt' must be a non-empty"):
        evaluate(EvalConfig(metrics=["clip"], images=[tmp_path / "theirs"], out=tmp_path / "bad", device="cpu",
                            models=opts["models"]))
