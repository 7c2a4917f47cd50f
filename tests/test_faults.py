"""Fault injection (issue 15): each stage is SIGKILLed at a named point (``MAPO_BENCH_FAULT``), resumed by
the same command, and must end with outputs of record identical to an uninterrupted run (dataset shards,
weights, images, scores, severity measures). The default suite runs one point per stage; ``-m slow`` all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapo_bench.faults import POINTS

DEFAULT = {"build:before-shard-rename", "train:inside-checkpoint", "sample:after-batch", "eval:before-rename",
           "mismatch:before-write"}
SAMPLER = ["sampler.steps=2", "sampler.guidance=2.0"]


def cli(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAPO_BENCH_QUIET": "1", "MAPO_BENCH_THREADS": "1"}
    env.pop("MAPO_BENCH_FAULT", None)
    if fault:
        env["MAPO_BENCH_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "mapo_bench", *args], env=env, capture_output=True, text=True,
                          start_new_session=True)


def commands(base: Path, root: Path) -> dict[str, callable]:
    dataset, samples = root / "ref-dataset", root / "ref-samples"
    return {
        "build": lambda out: ["build-dataset", "pick-safety", "--backend", "toy", "--model", str(base),
                              "--num-prompts", "4", "--batch-size", "2", "shard_size=4", *SAMPLER, "--out", str(out)],
        "train": lambda out: ["train", "--method", "mapo", "--backend", "toy", "--model", str(base), "--dataset",
                              str(dataset), "max_steps=4", "checkpoint_every=2", "batch_size=2", "log.progress=false",
                              f"cache.dir={root / 'cache'}", "--out", str(out)],
        "sample": lambda out: ["sample", "--backend", "toy", "--model", str(base), "--prompts", "toy:test",
                               "num_prompts=3", "--seeds", "0,1", "batch_size=2", *SAMPLER, "--out", str(out)],
        "eval": lambda out: ["eval", "--images", str(samples), "--metrics", "toy-style,toy-content",
                             "target_style=cartoon", "base_style=photo", f"models.toy-style={base}",
                             f"models.toy-content={base}", "--out", str(out)],
        "mismatch": lambda out: ["mismatch", "--dataset", str(out), "--backend", "toy", f"reference={base}",
                                 "timesteps=2", "noises=1", "resamples=20", "reference_samples=4", *SAMPLER],
    }


def record(stage: str, out: Path) -> dict:
    """The outputs of record: file digests from the stage's manifest (logs and cards, which carry wall
    times, and config.yaml, which names the output folder, left out), or severity.json's measures."""
    if stage == "mismatch":
        return json.loads((out / "severity.json").read_text())["measures"]
    files = json.loads((out / "manifest.json").read_text())["files"]
    return {k: v["sha256"] for k, v in files.items() if not k.endswith((".jsonl", ".md", ".csv", "config.yaml"))
            and k != "summary.json"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny toy base and the uninterrupted reference output of every stage."""
    from mapo_bench.toy.tiny import build_tiny_toy

    root = tmp_path_factory.mktemp("faults")
    base = build_tiny_toy(root / "base")
    run = commands(base, root)
    for stage, out in (("build", root / "ref-dataset"), ("sample", root / "ref-samples"),
                       ("train", root / "ref-train"), ("eval", root / "ref-eval")):
        result = cli(run[stage](out))
        assert result.returncode == 0, result.stderr
    import shutil

    shutil.copytree(root / "ref-dataset", root / "ref-mismatch")
    assert cli(run["mismatch"](root / "ref-mismatch")).returncode == 0
    return base, root, run


STAGE_POINTS = [p for p in POINTS if not p.startswith("run:")]
RUN_POINTS = {"run:before-marker": "@3", "run:after-marker": "@5", "run:before-selection": ""}


@pytest.mark.parametrize("name", [pytest.param(p, marks=() if p in DEFAULT else pytest.mark.slow) for p in STAGE_POINTS])
def test_killed_at_a_named_point_then_resumed_gives_the_same_outputs(world, tmp_path, name):
    import shutil

    base, root, run = world
    stage = name.split(":")[0]
    out = tmp_path / "out"
    if stage == "mismatch":
        shutil.copytree(root / "ref-dataset", out)
    fault = name + ("@2" if name in ("build:after-batch", "sample:after-batch", "train:after-step") else "")
    args = run[stage](out)
    if name == "train:inside-cache-shard":  # the shared cache is full: this point needs one of its own
        args = [*args[:-2], f"cache.dir={tmp_path / 'cache'}", *args[-2:]]
    killed = cli(args, fault)
    assert killed.returncode == -9, f"{name} was not reached: {killed.stderr[-500:]}"
    resumed = cli(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = root / {"build": "ref-dataset", "train": "ref-train", "sample": "ref-samples",
                        "eval": "ref-eval", "mismatch": "ref-mismatch"}[stage]
    assert record(stage, out) == record(stage, reference)


@pytest.mark.slow
def test_a_long_training_run_killed_five_times_ends_with_the_same_weights(world, tmp_path):
    """200 steps, checkpoints every 20: killed five times (25 steps into each attempt, so each attempt
    loses 5 steps to the last checkpoint), then finished; weights equal those of one uninterrupted run."""
    base, root, run = world

    def args(out):
        return [*run["train"](out)[:-2], "max_steps=200", "checkpoint_every=20", "--out", str(out)]

    assert cli(args(tmp_path / "whole")).returncode == 0
    for _ in range(5):
        assert cli(args(tmp_path / "killed"), "train:after-step@25").returncode == -9
    assert cli(args(tmp_path / "killed")).returncode == 0
    assert record("train", tmp_path / "killed") == record("train", tmp_path / "whole")


def test_a_damaged_checkpoint_falls_back_to_the_one_before(world, tmp_path):
    """Seven steps, checkpoints at 2, 4 (kept: keep_last 2) and 6, killed inside the third; then one byte of
    step 4's weights is flipped. The resume says so, falls back to step 2 and ends with the weights of an
    uninterrupted run. A damaged checkpoint named explicitly is a one-line refusal instead."""
    base, root, run = world

    def args(out, *extra):
        return [*run["train"](out)[:-2], "max_steps=7", "checkpoint_every=2", "keep_last=2", *extra, "--out", str(out)]

    assert cli(args(tmp_path / "whole")).returncode == 0
    out = tmp_path / "killed"
    assert cli(args(out), "train:inside-checkpoint@3").returncode == -9
    step4 = tmp_path / "killed.partial" / "checkpoints" / "step-00000004"  # an unfinished run's work folder
    weights = step4 / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    explicit = cli(args(out, f"resume={step4}"))
    assert explicit.returncode == 2 and "damaged checkpoint" in explicit.stderr
    assert len([line for line in explicit.stderr.splitlines() if line.strip()]) == 1
    resumed = cli(args(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "checkpoint step-00000004 is damaged" in resumed.stderr and "falling back" in resumed.stderr
    assert "resuming from" in resumed.stderr and "step-00000002" in resumed.stderr
    assert record("train", out) == record("train", tmp_path / "whole")


DISK_FULL = {"build:before-shard-rename": "a dataset shard", "train:inside-checkpoint": "a training checkpoint",
             "sample:after-batch": "sample images", "eval:before-rename": "a scores file"}


@pytest.mark.parametrize("name", [pytest.param(p, marks=() if p == "train:inside-checkpoint" else pytest.mark.slow)
                                  for p in sorted(DISK_FULL)])
def test_a_full_disk_is_one_line_and_the_rerun_finishes_identically(world, tmp_path, name):
    """ENOSPC injected where each stage writes its outputs of record: one line naming what and where, exit 1,
    no manifest (nothing that looks done), and the rerun after "freeing space" ends identical."""
    base, root, run = world
    stage = name.split(":")[0]
    out = tmp_path / "out"
    full = cli(run[stage](out), f"{name}!enospc")
    assert full.returncode == 1, full.stderr[-1500:]
    lines = [line for line in full.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device while writing " + DISK_FULL[name])
    assert str(out) in lines[0] and "run the same command again" in lines[0]
    assert not (out / "manifest.json").exists()
    assert cli(run[stage](out)).returncode == 0
    reference = root / {"build": "ref-dataset", "train": "ref-train", "sample": "ref-samples", "eval": "ref-eval"}[stage]
    assert record(stage, out) == record(stage, reference)


def test_a_full_disk_while_writing_the_report_keeps_the_previous_one(tiny_runs, tmp_path):
    import shutil

    _, (run1, _) = tiny_runs
    run = tmp_path / "run"
    shutil.copytree(run1, run)
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir() if p.is_file()}
    full = cli(["report", str(run)], "report:before-rename!enospc")
    assert full.returncode == 1 and "while writing the report" in full.stderr
    assert {p.name: p.read_bytes() for p in (run / "report").iterdir() if p.is_file()} == before
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]  # the temp folder is gone
    assert cli(["report", str(run)]).returncode == 0
    assert cli(["verify", str(run)]).returncode == 0


@pytest.fixture(scope="module")
def tiny_run_reference(tmp_path_factory):
    """The full tiny pipeline as a YAML file and its uninterrupted run, through the CLI like the killed ones,
    in this module's own worker (the tiny_runs group is the suite's longest already). (An in-process run of
    the same spec gives the same results.json: test_a_run_reproduces_in_an_empty_folder.)"""
    from tiny_pipeline import write_tiny_pipeline

    root = tmp_path_factory.mktemp("run-faults")
    _, pipeline = write_tiny_pipeline(root)
    result = cli(["run", str(pipeline), "--out", str(root / "reference")])
    assert result.returncode == 0, result.stderr[-2000:]
    return pipeline, root / "reference"


def comparable_results(run: Path) -> dict:
    results = json.loads((run / "report" / "results.json").read_text())
    results.pop("wall_s")
    results.pop("versions")
    return results


@pytest.mark.parametrize("name", [pytest.param(p, marks=() if p == "run:before-marker" else pytest.mark.slow)
                                  for p in RUN_POINTS])
def test_a_run_killed_at_a_named_point_then_resumed_gives_the_same_results(tiny_run_reference, tmp_path, name):
    """`mapo-bench run` SIGKILLed between a job's outputs and its marker, after a marker, and before
    selection.json; the same command resumes it, and results.json equals the uninterrupted run's but for
    timings and versions."""
    pipeline, reference = tiny_run_reference
    out = tmp_path / "run"
    killed = cli(["run", str(pipeline), "--out", str(out)], name + RUN_POINTS[name])
    assert killed.returncode == -9, f"{name} was not reached: {killed.stderr[-500:]}"
    assert not (out / "report" / "results.json").exists()
    resumed = cli(["run", str(pipeline), "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert comparable_results(out) == comparable_results(reference)


# -- tiny SDXL: the same kills on a real model family (latent cache, two text encoders, micro-conditioning) ----
SDXL_DEFAULT = {"train:inside-cache-shard"}
SDXL_POINTS = {"build:before-shard-rename": "", "train:after-cache": "", "train:inside-cache-shard": "",
               "train:after-step": "@2", "train:inside-checkpoint": "", "sample:after-batch": "@2"}


@pytest.fixture(scope="module")
def sdxl_world(tmp_path_factory):
    """A tiny SDXL pipeline, a pair dataset, and the uninterrupted outputs of build, train and sample."""
    from pairs_fixture import write_pairs

    from mapo_bench.testing import build_tiny_sdxl

    root = tmp_path_factory.mktemp("faults-sdxl")
    model = build_tiny_sdxl(root / "sdxl")
    write_pairs(root / "pairs", n=6, size=(32, 32))

    def command(stage: str, out: Path, cache: Path) -> list[str]:
        return {
            "build": ["build-dataset", "pick-safety", "--backend", "sdxl", "--model", str(model), "--num-prompts",
                      "4", "--batch-size", "2", "shard_size=4", "sampler.steps=2", "sampler.height=32",
                      "sampler.width=32", "--out", str(out)],
            "train": ["train", "--method", "mapo", "--backend", "sdxl", "--model", str(model), "--dataset",
                      str(root / "pairs"), "max_steps=4", "checkpoint_every=2", "batch_size=2", "data.resolution=32",
                      "log.progress=false", f"cache.dir={cache}", "--out", str(out)],
            "sample": ["sample", "--backend", "sdxl", "--model", str(model), "--prompts", "toy:test", "num_prompts=2",
                       "--seeds", "0,1", "batch_size=2", "sampler.steps=2", "sampler.height=32", "sampler.width=32",
                       "--out", str(out)],
        }[stage]

    def reference(stage: str) -> Path:
        """The stage's uninterrupted output, made on first use (the default suite needs only train's)."""
        out = root / f"ref-{stage}"
        if not out.exists():
            result = cli(command(stage, out, root / "ref-cache"))
            assert result.returncode == 0, result.stderr[-2000:]
        return out

    return reference, command


@pytest.mark.parametrize("name", [pytest.param(p, marks=() if p in SDXL_DEFAULT else pytest.mark.slow) for p in SDXL_POINTS])
def test_tiny_sdxl_killed_at_a_named_point_then_resumed_gives_the_same_outputs(sdxl_world, tmp_path, name):
    """Each kill in a fresh output folder and a fresh latent cache (the cache's kill points need one)."""
    reference, command = sdxl_world
    stage = name.split(":")[0]
    args = command(stage, tmp_path / "out", tmp_path / "cache")
    killed = cli(args, name + SDXL_POINTS[name])
    assert killed.returncode == -9, f"{name} was not reached: {killed.stderr[-500:]}"
    resumed = cli(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert record(stage, tmp_path / "out") == record(stage, reference(stage))
