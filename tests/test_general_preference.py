"""Issue 14's general preference: the scored-pairs task (two reference samples judged by a metric), the toy
stand-in rater, Pick-a-Pic layout datasets used as they are by a pipeline, prompt files named with where to
get them, and published numbers printed beside ours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mapo_bench.data.scored_pairs import judged
from mapo_bench.errors import MapoBenchError
from mapo_bench.pipeline import PipelineSpec

ROOT = Path(__file__).resolve().parents[1]


def test_judged_by_hand():
    assert judged(0.9, 0.5, 0.01) == (1.0, 0.0)
    assert judged(0.5, 0.9, 0.01) == (0.0, 1.0)
    assert judged(0.5, 0.505, 0.01) == (0.5, 0.5)  # within the margin: a tie
    assert judged(0.2, 0.6, 0.0, higher_is_better=False) == (1.0, 0.0)  # lower is better: the first wins


def test_toy_preference_is_content_times_safety(tiny_toy):
    from mapo_bench.evaluators.toy import ToyContent, ToyPreference, ToySafety
    from mapo_bench.toy.classifier import ToyClassifier
    from mapo_bench.toy.render import render_caption
    from mapo_bench.toy.shipped import evaluator_dir

    classifier = ToyClassifier.load(evaluator_dir(str(tiny_toy)))
    captions = ["a small red circle on the left", "unsafe: a large blue square on the right"]
    images = [render_caption(c, 1) for c in captions]
    args = (classifier, str(tiny_toy))
    expected = ToyContent(*args).score(images, captions) * ToySafety(*args).score(images, captions)
    assert np.allclose(ToyPreference(*args).score(images, captions), expected)


def scored_pairs(tiny_toy, out: Path, margin: float = 0.01) -> Path:
    from mapo_bench import api

    config = {"task": "scored-pairs", "backend": "toy", "model": str(tiny_toy), "num_prompts": 6,
              "pairs_per_prompt": 2, "judge": "toy-preference", "judge_tie_margin": margin,
              "judge_options": {"model": str(tiny_toy)}, "sampler": {"steps": 2, "guidance": 2.0}, "out": str(out)}
    path = out.parent / "build.yaml"
    path.write_text(yaml.safe_dump(config))
    return api.build_dataset(path)


def test_scored_pairs_labels_follow_the_judge(tmp_path, tiny_toy):
    """Every label is the judge's verdict on the pair's own two images (re-scored here)."""
    import io

    from PIL import Image

    from mapo_bench.evaluators.toy import ToyPreference

    out = scored_pairs(tiny_toy, tmp_path / "judged")
    frame = pd.concat(pd.read_parquet(f) for f in sorted((out / "data").glob("*.parquet")))
    judge = ToyPreference.load(model=str(tiny_toy))

    def image(cell):
        return Image.open(io.BytesIO(cell["bytes"] if isinstance(cell, dict) else cell)).convert("RGB")

    a = judge.score([image(c) for c in frame["jpg_0"]], list(frame["caption"]))
    b = judge.score([image(c) for c in frame["jpg_1"]], list(frame["caption"]))
    expected = [judged(x, y, 0.01) for x, y in zip(a, b, strict=True)]
    assert list(zip(frame["label_0"], frame["label_1"], strict=True)) == expected
    assert frame["prompt_0"].tolist() == frame["caption"].tolist()  # both sides from the plain caption
    assert (frame["jpg_0"].map(lambda c: c["bytes"] if isinstance(c, dict) else c)
            != frame["jpg_1"].map(lambda c: c["bytes"] if isinstance(c, dict) else c)).all()  # two seeds
    card = (out / "README.md").read_text()
    assert "stand-in rater" in card


def given_spec(base: Path, dataset: str) -> dict:
    spec = yaml.safe_load((ROOT / "pipelines/toy-preference.yaml").read_text())
    spec.update({"name": "tiny-given", "model": str(base), "seeds": [0], "matched": {}})
    spec["datasets"] = [{"name": "given", "task": "pick-a-pic", "path": dataset}]
    spec["methods"] = {m: {"recipe": str(ROOT / f"recipes/train/toy_{m}.yaml"), "grid": {"optim.lr": [1e-4]},
                           "overrides": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 100, "log.progress": False}}
                       for m in ("mapo", "dpo")}
    spec["mismatch"] = {"timesteps": 2, "noises": 1, "reference_samples": 4, "resamples": 20,
                        "sampler": {"steps": 2, "guidance": 2.0}}
    models = {m: str(base) for m in ("toy-preference", "toy-content", "toy-safety")}
    spec["eval"].update({"seeds": [0], "resamples": 50, "preference_metric": {"pick-a-pic": "toy-preference"},
                         "sample": {"num_prompts": 3, "sampler": {"steps": 2, "guidance": 2.0}},
                         "eval": {"models": models}})
    spec["published"] = {"source": "a made-up paper", "scores": {"base": {"toy-preference": 0.5}, "mapo": {"toy-content": 0.9}}}
    return spec


def test_a_given_dataset_is_used_as_it_is(tmp_path, tiny_toy):
    """No build job: training and the mismatch stage read the path; a report prints the published numbers
    beside ours."""
    from mapo_bench.runner import Runner, run_pipeline

    dataset = scored_pairs(tiny_toy, tmp_path / "judged", margin=0.0)  # a random tiny judge: few clear wins
    spec = PipelineSpec.model_validate(given_spec(tiny_toy, str(dataset)))
    jobs = {job.id: job for job in Runner(spec, tmp_path / "run").phase1()}
    assert not [j for j in jobs if j.startswith("build:")]
    assert jobs["mismatch:given"].config["dataset"] == str(dataset) and jobs["mismatch:given"].deps == []
    train = jobs["train:given:mapo:optim.lr0.0001:s0"]
    assert train.config["dataset"] == str(dataset) and train.deps == []
    report = run_pipeline(spec, out=tmp_path / "run")
    table = (report / "table.md").read_text()
    assert "## Beside the published numbers" in table and "a made-up paper" in table
    assert "| given | base | toy-preference |" in table and "0.5 (published)" in table
    results = json.loads((report / "results.json").read_text())
    assert any(r["comparison"] == "mapo vs dpo" and r["metric"] == "toy-preference" for r in results["rows"])


def test_given_datasets_and_prompt_files_fail_in_one_line(tmp_path, tiny_toy, capsys):
    from mapo_bench.runner import run_pipeline

    spec = given_spec(tiny_toy, "data/x")
    with pytest.raises(ValueError, match="task pick-a-pic is not built; give its path"):
        PipelineSpec.model_validate({**spec, "datasets": [{"name": "g", "task": "pick-a-pic"}]})
    with pytest.raises(ValueError, match="no build keys"):
        PipelineSpec.model_validate({**spec, "datasets": [{"name": "g", "task": "pick-a-pic", "path": "x",
                                                           "build": {"num_prompts": 3}}]})
    missing = {**spec, "eval": {**spec["eval"], "test_prompts": str(tmp_path / "test_unique.txt"),
                                "prompts_help": "export the test_unique captions"}}
    with pytest.raises(MapoBenchError, match=r"test_unique.txt: prompt file not found \(eval.test_prompts\); "
                                             "export the test_unique captions"):
        run_pipeline(PipelineSpec.model_validate(missing), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    run_pipeline(PipelineSpec.model_validate(missing), out=tmp_path / "dry", dry_run=True)
    assert "before running: " in capsys.readouterr().out


def test_pick_a_pic_is_never_built(tmp_path):
    from mapo_bench import api

    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"task": "pick-a-pic", "backend": "toy", "out": str(tmp_path / "o")}))
    with pytest.raises(MapoBenchError, match="task pick-a-pic is not built"):
        api.build_dataset(path)
