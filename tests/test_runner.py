"""`mapo-bench run`: every shipped pipeline plans and validates; a tiny toy pipeline runs end to end,
resumes without redoing finished jobs, and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tiny_pipeline import tiny_spec

from mapo_bench.config import load_config
from mapo_bench.pipeline import PipelineSpec, point_name
from mapo_bench.runner import Runner, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_pipeline_dry_runs(path, capsys):
    spec = load_config(PipelineSpec, path)
    assert run_pipeline(spec, pipeline_path=path, dry_run=True, out=Path("/nonexistent/run")) is None
    out = capsys.readouterr().out
    assert f"pipeline {spec.name}" in out and "est. left" in out and "(0 done)" in out


def test_toy_mismatch_plan_has_the_protocol():
    """At least 4 severity levels + safety; every grid setting of every method is trained on each tuned
    dataset (the others carry a tuned one's selection); the base and each styled dataset's target (the base
    prompted with the chosen prefix) are sampled on validation prompts; >= 5 training seeds."""
    spec = load_config(PipelineSpec, ROOT / "pipelines" / "toy-mismatch.yaml")
    assert len(spec.datasets) >= 5 and len(spec.seeds) >= 5
    runner = Runner(spec, Path("/tmp/unused"), ROOT / "pipelines" / "toy-mismatch.yaml")
    jobs = runner.phase1()
    trains = [j for j in jobs if j.verb == "train"]
    tuned = [d for d in spec.datasets if d.tune_from is None]
    assert len(trains) == len(tuned) * sum(len(m.grid_points()) for m in spec.methods.values())
    assert {j.config["seed"] for j in trains} == {spec.seeds[0]}
    severities = sorted({d.build["severity"] for d in spec.datasets if d.task == "pick-style"})
    assert len(severities) >= 4
    targets = {j.id for j in jobs if j.id.startswith("sample:target/")}
    assert targets == {f"sample:target/{d.name}:validation" for d in spec.datasets if d.task == "pick-style"}
    assert min(spec.methods["dpo"].grid["dpo.beta"]) < 1000


@pytest.mark.parametrize("checkpoints, message", [
    ({"mapo": {"unet": "mapo-t2i/mapo-beta"}}, "taken by a method"),
    ({"base": {"unet": "mapo-t2i/mapo-beta"}}, "taken by a method or the base"),
    ({"released": {"unet": "mapo-t2i/mapo-beta", "datasets": ["cartoon", "nope"]}}, "datasets nope are not datasets"),
    ({"released": {"source": "a model card"}}, "names its weights"),
    ({"released": {"unet": "a/b", "lora": "lora-folder"}}, "either unet or lora"),
    ({"re/leased": {"unet": "a/b"}}, "is not a folder name"),
])
def test_a_checkpoint_spec_is_checked(tmp_path, checkpoints, message):
    spec = tiny_spec(tmp_path / "base", tmp_path / "train.yaml")
    spec["checkpoints"] = checkpoints
    with pytest.raises(ValueError, match=message):
        PipelineSpec.model_validate(spec)


def test_a_released_dataset_of_a_built_task_is_used_as_it_is(tmp_path):
    """A released Pick-Style set given by ``path`` (a local copy or hub id) is not built: the mismatch and training
    stages read the path, and its build keys only name the task, so it is scored with the task's context."""
    (tmp_path / "train.yaml").write_text("max_steps: 2\n")
    spec = tiny_spec(tmp_path / "base", tmp_path / "train.yaml")
    spec["datasets"][0].update(path="data/pick-style-cartoon", build={"split": "cartoon"})
    runner = Runner(PipelineSpec.model_validate(spec), tmp_path / "run")
    jobs = {job.id: job for job in runner.phase1()}
    assert "build:cartoon" not in jobs and "build:safety" in jobs
    assert jobs["mismatch:cartoon"].config["dataset"] == "data/pick-style-cartoon" and not jobs["mismatch:cartoon"].deps
    trains = [job for job in jobs.values() if job.verb == "train" and job.meta["dataset"] == "cartoon"]
    assert trains and all(job.config["dataset"] == "data/pick-style-cartoon" and not job.deps for job in trains)
    assert jobs["eval:base/cartoon:validation"].config["target_style"] == "cartoon"
    given = tiny_spec(tmp_path / "base", tmp_path / "train.yaml")
    given["datasets"][0] = {"name": "votes", "task": "pick-a-pic", "path": "data/pickapic_v2", "build": {"split": "x"}}
    with pytest.raises(ValueError, match="task pick-a-pic is used as it is: no build keys"):
        PipelineSpec.model_validate(given)


def test_point_name_by_hand():
    assert point_name({}) == "default"
    assert point_name({"optim.lr": 3.0e-5, "dpo.beta": 1000}) == "dpo.beta1000_optim.lr3e-05"  # keys sorted
    assert point_name({"optim.lr": 1.0e-4}) == "optim.lr0.0001"
    assert point_name({"lora.target": "to_q/to_k"}) == "lora.targetto-q-to-k"  # "_" joins keys; no "/"


def test_grid_jobs_are_named_by_value_so_a_new_value_keeps_finished_jobs():
    """Adding a value in front of a grid list leaves every existing job id and folder as it was."""
    spec = load_config(PipelineSpec, ROOT / "pipelines" / "toy-mismatch.yaml")
    wider = spec.model_copy(deep=True)
    for method in wider.methods.values():
        method.grid["optim.lr"] = [3.0e-7, *method.grid["optim.lr"]]
    before = {(j.id, str(j.out)) for j in Runner(spec, Path("/tmp/unused")).phase1()}
    after = {(j.id, str(j.out)) for j in Runner(wider, Path("/tmp/unused")).phase1()}
    assert before < after
    assert {j for j, _ in after - before if j.startswith("train:")} == {
        f"train:{d.name}:{m}:{name}:s{spec.seeds[0]}" for d in spec.datasets if d.tune_from is None
        for m, ms in wider.methods.items() for name in map(point_name, ms.grid_points()) if "optim.lr3e-07" in name}


def test_emit_commands_prints_resumable_job_commands(tmp_path, capsys):
    """Each line runs one job through the runner (so its marker is written); stage configs land in configs/."""
    path = ROOT / "pipelines" / "toy-quick.yaml"
    spec = load_config(PipelineSpec, path)
    run_pipeline(spec, pipeline_path=path, emit_commands=True, out=tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mapo-bench ")]
    assert len(lines) == len(Runner(spec, tmp_path / "run", path).phase1())
    assert lines[0] == f"mapo-bench run {path} --out {tmp_path / 'run'} --job build:{spec.datasets[0].name}"
    config = yaml.safe_load((tmp_path / "run" / "configs" / f"build__{spec.datasets[0].name}.yaml").read_text())
    assert config["task"] == spec.datasets[0].task


def test_a_run_reproduces_in_an_empty_folder(tiny_runs):
    """Two runs of one pipeline in two empty folders, one in-process and one through ``mapo-bench run`` on
    the YAML file: results.json equal in every field but timings and package versions (same machine, same
    thread count)."""
    _, runs = tiny_runs
    first, second = (json.loads((run / "report" / "results.json").read_text()) for run in runs)
    for results in (first, second):
        results.pop("wall_s")
        results.pop("versions")
    assert first == second
    assert (runs[0] / "report" / "table.csv").read_bytes() == (runs[1] / "report" / "table.csv").read_bytes()


def test_tiny_toy_pipeline_end_to_end_and_resume(tiny_runs, capsys):
    spec, (run, _) = tiny_runs
    report = run / "report"
    results = json.loads((report / "results.json").read_text())
    comparisons = {r["comparison"] for r in results["rows"]}
    assert {"mapo vs base", "dpo vs base", "mapo vs dpo", "mapo vs target", "target vs base"} <= comparisons
    assert {(r["view"], r["split"]) for r in results["rows"]} == {("tuned", "test"), ("matched", "test"),
                                                                   ("tuned", "test-robust"), ("matched", "test-robust")}
    assert set(results["severity"]) == {"cartoon", "cartoon-half", "safety"}
    assert results["severity"]["safety"]["prefixed_side"] == "rejected"
    assert {"matched view", "second sampler"} <= set(results["trend"]["chosen"]["secondary"])
    for name in ("table.md", "table.csv", "severity_vs_effect.png", "grid_cartoon.png"):
        assert (report / name).is_file(), name
    # grid: a header strip naming the columns (base, target, 2 methods, the checkpoint), then 32 px tiles x 3 per prompt
    from PIL import Image

    from mapo_bench.report import GRID_HEADER_PX

    legend = json.loads((report / "grid_cartoon.json").read_text())
    assert legend["columns"] == ["base", "target", "mapo", "dpo", "released"]
    with Image.open(report / "grid_cartoon.png") as grid:
        assert grid.size == (5 * 96, GRID_HEADER_PX + 96 * len(legend["rows"]))
    selection = json.loads((run / "selection.json").read_text())
    assert len(selection["cells"]["cartoon"]["mapo"]["rows"]) == 2
    # tuning on two seeds: each selected setting was scored on both (worst-seed gate) on validation prompts
    for method, cell in selection["cells"]["cartoon"].items():
        if cell["status"] == "selected":
            chosen = next(r for r in cell["rows"] if r["setting"] == cell["setting"])
            assert chosen["seeds"] == [0, 1] and [r["seed"] for r in chosen["per_seed"]] == [0, 1]
            assert (run / "state" / f"eval__cartoon_{method}_{cell['setting']}-s1__validation.json").is_file()
    assert selection["cells"]["cartoon-half"]["mapo"]["carried_from"] == "cartoon"
    assert not list((run / "scores" / "cartoon-half").glob("*/*/validation"))  # no grid on a carried dataset
    markers = {p.name: p.stat().st_mtime_ns for p in (run / "state").glob("*.json")}
    # Resume: a second run finds every job finished and redoes none of them.
    run_pipeline(spec, out=run)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "state").glob("*.json")} == markers
    # and a dry run over the finished folder counts every phase-1 job as done
    run_pipeline(spec, out=run, dry_run=True)
    phase1 = Runner(spec, run).phase1()
    out = capsys.readouterr().out
    assert f"{len(phase1)} jobs in phase 1 ({len(phase1)} done)" in out
    assert all(f"  {job.id} (done)" in out for job in phase1)


def test_a_checkpoint_is_scored_beside_the_runs(tiny_runs):
    """The tiny pipeline's checkpoint is the base's own UNet loaded through ``unet:``: sampled once per split on
    the shared prompts, scored on the two datasets it names only, its scores equal to the base's (so every
    comparison with it equals the same comparison with the base), and a fixed model in every view."""
    spec, (run, _) = tiny_runs
    jobs = Runner(spec, run).checkpoint_jobs("test")
    assert [j.id for j in jobs] == ["sample:checkpoints/released:test", "eval:checkpoints/released/cartoon:test",
                                    "eval:checkpoints/released/safety:test"]
    assert jobs[0].config["unet"] == spec.checkpoints["released"].unet
    assert jobs[1].out == run / "scores" / "checkpoints" / "released" / "cartoon" / "test"
    from mapo_bench.report_html import _image_scores

    # the report page's gallery finds the same scores by the sample label (scores_label, one rule for both)
    assert len(_image_scores(run, "checkpoints/released", "cartoon", "test")) == 3  # 3 prompts x 1 seed
    results = json.loads((run / "report" / "results.json").read_text())
    rows = {(r["split"], r["view"], r["dataset"], r["comparison"], r["metric"]): r for r in results["rows"]}
    mine = [key for key in rows if "released" in key[3]]
    assert {key[2] for key in mine} == {"cartoon", "safety"}
    assert {key[3] for key in mine if key[1] == "matched"} == {"mapo vs released", "dpo vs released"}
    for key in mine:
        split, view, dataset, comparison, metric = key
        if comparison == "released vs base":
            assert view == "tuned" and rows[key]["mean_gap"] == 0.0 and rows[key]["gap_ci_high"] == 0.0
        elif comparison == "released vs target":
            assert rows[key]["mean_gap"] == -rows[(split, view, dataset, "target vs base", metric)]["mean_gap"]
        else:
            twin = rows[(split, view, dataset, comparison.replace("released", "base"), metric)]
            assert {k: v for k, v in rows[key].items() if k != "comparison"} == \
                {k: v for k, v in twin.items() if k != "comparison"}
    means = {(m["dataset"], m["view"], m["model"], m["metric"]): m["mean"] for m in results["mean_scores"]}
    released = {k: v for k, v in means.items() if k[2] == "released"}
    assert released and {k[1] for k in released} == {"tuned"}
    assert all(v == means[(k[0], k[1], "base", k[3])] for k, v in released.items())


def test_a_finished_job_whose_files_changed_is_run_again(tmp_path, tiny_toy):
    """Resume's fast check (size and mtime against the stage's manifest): one image of a finished sample
    folder altered, the next run redoes that job alone and ends with the original bytes and results."""
    recipe = tmp_path / "train.yaml"
    recipe.write_text("max_steps: 2\nbatch_size: 2\nlog: {progress: false}\n")
    spec = PipelineSpec.model_validate(tiny_spec(tiny_toy, recipe))
    run = tmp_path / "run"
    run_pipeline(spec, out=run)
    before = json.loads((run / "report" / "results.json").read_text())["rows"]
    folder = sorted((run / "samples").glob("cartoon/mapo/*/test"))[0]
    image = sorted((folder / "images").glob("*.png"))[0]
    original = image.read_bytes()
    image.write_bytes(original + b"tampered")
    markers = {p.name: p.stat().st_mtime_ns for p in (run / "state").glob("*.json")}
    run_pipeline(spec, out=run)
    changed = {name for name, t in markers.items() if (run / "state" / name).stat().st_mtime_ns != t}
    label = folder.parent.relative_to(run / "samples").as_posix()  # cartoon/mapo/<setting>-s<seed>
    assert changed == {f"sample__{label.replace('/', '_')}__test.json"}
    assert image.read_bytes() == original
    assert json.loads((run / "report" / "results.json").read_text())["rows"] == before


def test_single_jobs_respect_deps_and_are_recorded(tmp_path, tiny_toy, capsys):
    """--job runs one job and writes its marker (a later full run skips it); a job whose deps are
    unfinished, or an unknown id, is refused with one line."""
    from mapo_bench.errors import MapoBenchError

    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 2, "batch_size": 2, "log": {"progress": False}}))
    spec = PipelineSpec.model_validate(tiny_spec(tiny_toy, recipe))
    run = tmp_path / "run"
    with pytest.raises(MapoBenchError, match="waits on unfinished build:cartoon"):
        run_pipeline(spec, out=run, job="train:cartoon:mapo:optim.lr0.0001:s0")
    with pytest.raises(MapoBenchError, match="did you mean 'build:cartoon'"):
        run_pipeline(spec, out=run, job="build:cartoom")
    run_pipeline(spec, out=run, job="build:cartoon")
    runner = Runner(spec, run)
    (build,) = [j for j in runner.phase1() if j.id == "build:cartoon"]
    assert runner.is_done(build)
    capsys.readouterr()
    run_pipeline(spec, out=run, emit_commands=True)
    printed = capsys.readouterr().out
    assert "--job build:safety" in printed and "--job build:cartoon" not in printed


def test_a_changed_toy_base_invalidates_finished_jobs(tmp_path, tiny_toy):
    """Job configs name the toy base ("toy" or a folder) without its weights; the base's config hash
    is part of every job's hash, so a re-pretrained base is never mixed with old results."""
    recipe = tmp_path / "train.yaml"
    recipe.write_text("max_steps: 2\n")
    spec = PipelineSpec.model_validate(tiny_spec(tiny_toy, recipe))
    job = Runner(spec, tmp_path).phase1()[0]
    before = Runner(spec, tmp_path).job_hash(job)
    manifest = json.loads((tiny_toy / "manifest.json").read_text())
    other = tmp_path / "other_base"
    import shutil

    shutil.copytree(tiny_toy, other)
    (other / "manifest.json").write_text(json.dumps({**manifest, "config_hash": "0" * 16}))
    moved = spec.model_copy(update={"model": str(other)})
    same_name = Runner(moved, tmp_path)
    same_name.base["model"] = spec.model  # only the weights' identity differs
    assert same_name.job_hash(job) != before
    # a job finished on the old base is stale: it reruns with overwrite (the stage would return its
    # old output otherwise); overwrite is not part of the hash, so the rerun's marker then matches
    job.out.mkdir(parents=True)
    Runner(spec, tmp_path)._finish(job, 1.0)
    assert Runner(spec, tmp_path).is_done(job) and not same_name.is_done(job) and same_name.is_stale(job)
    config = yaml.safe_load(same_name.prepare(job).read_text())
    assert config["overwrite"] is True
    same_name._finish(job, 1.0)
    assert same_name.is_done(job) and not same_name.is_stale(job)


@pytest.mark.slow
def test_whole_pipeline_under_torchrun(tmp_path, tiny_toy):
    """`mapo-bench run` launched as two processes (torchrun; accelerate launch starts the same group):
    each job runs as a collective, rank 0 writes markers and the report; a later one-process run redoes
    nothing."""
    import os
    import subprocess
    import sys

    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 2, "batch_size": 2, "log": {"progress": False}}))
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_spec(tiny_toy, recipe)))
    run = tmp_path / "run"
    env = {**os.environ, "MAPO_BENCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mapo_bench", "run",
           str(spec_path), "--out", str(run)]
    result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "report" / "results.json").is_file() and (run / "report" / "table.md").is_file()
    train_manifest = json.loads((run / "models" / "cartoon" / "mapo" / "optim.lr0.0001-s0" / "manifest.json").read_text())
    assert train_manifest["counts"]["processes"] == 2
    markers = {p.name: p.stat().st_mtime_ns for p in (run / "state").glob("*.json")}
    run_pipeline(PipelineSpec.model_validate(tiny_spec(tiny_toy, recipe)), out=run)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "state").glob("*.json")} == markers


def test_locks_keep_runners_apart(tmp_path, tiny_toy):
    """A full run refuses a run folder another run holds; single jobs share it (a scheduler runs them in
    parallel) but not with a full run; a flock dies with its process, so a crash leaves no stale lock."""
    from mapo_bench.errors import MapoBenchError
    from mapo_bench.io import hold_lock

    recipe = tmp_path / "train.yaml"
    recipe.write_text("max_steps: 2\n")
    spec = PipelineSpec.model_validate(tiny_spec(tiny_toy, recipe))
    run = tmp_path / "run"
    with hold_lock(run / ".lock", shared=True):  # as a --job process holds it
        with pytest.raises(MapoBenchError, match="another mapo-bench run is using this run folder"):
            run_pipeline(spec, out=run)
        with hold_lock(run / ".lock", shared=True):
            pass  # another single job may share it
    with hold_lock(run / ".lock"):
        with pytest.raises(MapoBenchError, match="busy here"):
            with hold_lock(run / ".lock", shared=True, busy="busy here"):
                pass


def _sleep(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_interrupted_runner_stops_its_workers():
    """On Ctrl-C or a failed job the pool's in-flight jobs are killed, not awaited: a worker left running
    would race the resumed run over the same outputs."""
    import time
    from concurrent.futures.process import BrokenProcessPool

    from mapo_bench.executors import LocalPool

    local = LocalPool(1)
    future = local.pool.submit(_sleep, 60)
    while not future.running():
        time.sleep(0.05)
    workers = list(local.pool._processes.values())
    local.stop()
    local.close()
    # a drained job would have returned 60; a killed one leaves the pool broken
    assert isinstance(future.exception(), BrokenProcessPool) and not any(w.is_alive() for w in workers)


def test_job_identity_does_not_depend_on_how_the_run_folder_is_spelled(tmp_path, monkeypatch):
    """`--out runs/x` run from the project and `--out /abs/.../runs/x` name the same jobs: a finished run
    resumed with the other spelling redoes nothing (it used to redo every job)."""
    spec = load_config(PipelineSpec, ROOT / "pipelines" / "toy-quick.yaml")
    monkeypatch.chdir(tmp_path)
    relative = {j.id: Runner(spec, Path("runs/x")).job_hash(j) for j in Runner(spec, Path("runs/x")).phase1()}
    absolute = {j.id: Runner(spec, tmp_path / "runs" / "x").job_hash(j)
                for j in Runner(spec, tmp_path / "runs" / "x").phase1()}
    assert relative == absolute
