"""`mapo-bench run`: every shipped pipeline plans and validates; a tiny toy pipeline runs end to end,
resumes without redoing finished jobs, and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mapo_bench.config import load_config
from mapo_bench.pipeline import PipelineSpec
from mapo_bench.runner import Runner, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_pipeline_dry_runs(path, capsys):
    spec = load_config(PipelineSpec, path)
    assert run_pipeline(spec, pipeline_path=path, dry_run=True, out=Path("/nonexistent/run")) is None
    out = capsys.readouterr().out
    assert f"pipeline {spec.name}" in out and "est. total" in out


def test_toy_mismatch_plan_has_the_protocol():
    """4 severity levels + safety = 5 datasets; every grid setting of every method is trained per dataset;
    after selection 3 methods x (3 - 1) extra seeds per dataset are trained."""
    spec = load_config(PipelineSpec, ROOT / "pipelines" / "toy-mismatch.yaml")
    assert len(spec.datasets) >= 5 and len(spec.seeds) >= 3
    runner = Runner(spec, Path("/tmp/unused"), ROOT / "pipelines" / "toy-mismatch.yaml")
    jobs = runner.phase1()
    trains = [j for j in jobs if j.verb == "train"]
    assert len(trains) == 5 * sum(len(m.grid_points()) for m in spec.methods.values())
    assert {j.config["seed"] for j in trains} == {spec.seeds[0]}
    severities = sorted({d.build["severity"] for d in spec.datasets if d.task == "pick-style"})
    assert len(severities) >= 4


def test_emit_commands_writes_standalone_configs(tmp_path, capsys):
    path = ROOT / "pipelines" / "toy-quick.yaml"
    spec = load_config(PipelineSpec, path)
    run_pipeline(spec, pipeline_path=path, emit_commands=True, out=tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mapo-bench ")]
    assert lines and all("--config" in line for line in lines)
    verb, config = lines[0].split()[1], Path(lines[0].split("--config ")[1])
    assert verb == "build-dataset" and yaml.safe_load(config.read_text())["task"] == "pick-style"


@pytest.fixture(scope="module")
def tiny_toy(tmp_path_factory):
    from mapo_bench.toy.tiny import build_tiny_toy

    return build_tiny_toy(tmp_path_factory.mktemp("toy") / "base")


def tiny_spec(base: Path, train_recipe: Path) -> dict:
    models = {m: str(base) for m in ("toy-style", "toy-content", "toy-safety")}
    return {
        "name": "tiny", "backend": "toy", "model": str(base),
        "datasets": [{"name": "cartoon", "task": "pick-style", "build": {"split": "cartoon", "num_prompts": 4,
                                                                          "sampler": {"steps": 2, "guidance": 2.0}}},
                     {"name": "safety", "task": "pick-safety", "build": {"num_prompts": 4,
                                                                         "sampler": {"steps": 2, "guidance": 2.0}}}],
        "methods": {"mapo": {"recipe": str(train_recipe), "grid": {"optim.lr": [1e-4, 1e-3]}},
                    "dpo": {"recipe": str(train_recipe), "overrides": {"beta": 500}}},
        "seeds": [0, 1],
        "mismatch": {"timesteps": 2, "noises": 1, "reference_samples": 4, "resamples": 50,
                     "sampler": {"steps": 2, "guidance": 2.0}},
        "eval": {"validation_prompts": "toy:validation", "test_prompts": "toy:test", "seeds": [0],
                 "metrics": ["toy-style", "toy-content", "toy-safety"],
                 "preference_metric": {"pick-style": "toy-style", "pick-safety": "toy-safety"},
                 "fidelity_metric": "toy-content", "resamples": 100,
                 "sample": {"num_prompts": 3, "sampler": {"steps": 2, "guidance": 2.0}},
                 "eval": {"models": models}},
    }


def test_tiny_toy_pipeline_end_to_end_and_resume(tmp_path, tiny_toy):
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 2, "batch_size": 2, "checkpoint_every": 100,
                                      "log": {"progress": False}}))
    spec = PipelineSpec.model_validate(tiny_spec(tiny_toy, recipe))
    run = tmp_path / "run"
    report = run_pipeline(spec, out=run)
    results = json.loads((report / "results.json").read_text())
    comparisons = {r["comparison"] for r in results["rows"]}
    assert {"mapo vs base", "dpo vs base", "mapo vs dpo"} <= comparisons
    assert set(results["severity"]) == {"cartoon", "safety"}
    assert results["severity"]["safety"]["prefixed_side"] == "rejected"
    for name in ("table.md", "table.csv", "severity_vs_winrate.png", "grid_cartoon.png"):
        assert (report / name).is_file(), name
    selection = json.loads((run / "selection.json").read_text())
    assert len(selection["cartoon"]["mapo"]["rows"]) == 2
    markers = {p.name: p.stat().st_mtime_ns for p in (run / "state").glob("*.json")}
    # Resume: a second run finds every job finished and redoes none of them.
    run_pipeline(spec, out=run)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "state").glob("*.json")} == markers
