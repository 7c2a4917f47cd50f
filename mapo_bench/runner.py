"""`mapo-bench run`: expand a PipelineSpec into stage jobs, run them (resumably, in parallel), report.

Phase 1: build and measure every dataset; sample and score the base, and each dataset's target (the base
prompted with the task's chosen prefix); train every grid setting of every method on the first seed of
each tuned dataset and score it on validation prompts. With ``eval.tuning_seeds`` > 1, re-check rounds
train the best settings eligible on the first seed on the other tuning seeds (selection.py). Selection: per
dataset and method, the largest preference advantage over the base among the settings whose mean fidelity
is within the pipeline's margin of the reference on every tuning seed (DESIGN.md section 5b); no such
setting is a failed cell. Phase 2: the selected settings (and the matched view) on every seed, scored on
test prompts (and at the second sampler).
Then the report. Each job writes its stage config to ``configs/<job>.yaml`` (so ``--emit-commands`` can
hand it to a scheduler) and a marker to ``state/<job>.json`` when it finishes; a job whose marker
matches its config is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mapo_bench import faults
from mapo_bench.config import config_hash, set_path
from mapo_bench.errors import MapoBenchError
from mapo_bench.io import hold_lock
from mapo_bench.launch import distributed_rank, wait_for_everyone
from mapo_bench.pipeline import CHECKPOINTS_DIR, DatasetSpec, PipelineSpec, checkpoint_label, point_name
from mapo_bench.registry import BACKENDS, METHODS
from mapo_bench.selection import recheck_jobs, select_settings

CLI_VERBS = {"build": "build-dataset", "mismatch": "mismatch", "train": "train", "sample": "sample", "eval": "eval"}
OVERWRITABLE = ("build", "train", "sample", "eval")  # verbs whose stage skips a finished output of the same config
API_FUNCTIONS = {"build": "build_dataset", "mismatch": "measure_mismatch", "train": "train", "sample": "sample",
                 "eval": "evaluate"}


@dataclass
class Job:
    """One stage run: its verb, its config (a dict validated by the stage), where it writes, what it needs."""

    id: str
    verb: str
    config: dict[str, Any]
    out: Path
    deps: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def job_file_name(job_id: str) -> str:
    """A job id as one file name (ids hold ':' and '/'), for its marker, config and executor records."""
    return job_id.replace(":", "__").replace("/", "_")


def base_identity(spec: PipelineSpec) -> dict[str, Any]:
    """What job configs name but do not contain: the toy base's weights, by the config hash in its
    manifest (so finished jobs are redone after the shipped base changes). Hub ids are their own identity."""
    identity: dict[str, Any] = {"backend": spec.backend, "model": spec.model}
    from mapo_bench.registry import BACKENDS, toy_world

    if toy_world(spec.backend):
        from mapo_bench.toy.shipped import read_manifest, resolve_toy_model

        try:
            folder = resolve_toy_model(spec.model or BACKENDS.get(spec.backend).default_model)
            identity["toy_config_hash"] = (read_manifest(folder) or {}).get("config_hash")
        except MapoBenchError:
            pass  # the stage itself reports the missing model
    return identity


class Runner:
    """Plans, executes and resumes the jobs of one pipeline in ``run_dir``.

    Under ``torchrun`` / ``accelerate launch`` every process walks the same plan one job at a time and
    runs each stage as a collective; rank 0 alone writes markers, selection and report.
    """

    def __init__(self, spec: PipelineSpec, run_dir: Path, pipeline_path: Path | None = None) -> None:
        self.spec = spec
        # Absolute, so a job's identity (its config names its folders) does not depend on how the run folder
        # was spelled: `--out runs/x` from the project and `--out /abs/runs/x` are the same run.
        self.run_dir = Path(run_dir).resolve()
        self.pipeline_path = pipeline_path
        self.base = base_identity(spec)
        self.rank, self.world = distributed_rank()
        # selection.py's scored tuning rows, per (dataset, method, setting, seed): a finished job's scores do
        # not change, so the re-check rounds and the selection score each one once
        self.tuning_rows: dict[tuple[str, str, str, int], dict[str, Any]] = {}

    def job_hash(self, job: Job) -> str:
        """The job's config and the base it runs on: what a finished marker must match."""
        config = {k: v for k, v in job.config.items() if k != "overwrite"}
        return config_hash({"config": config, "base": self.base})

    # -- paths ---------------------------------------------------------------------------------
    def dataset_source(self, d: DatasetSpec) -> str:
        """What stages read as the dataset: a given dataset's path, else the folder the run builds."""
        return d.path if d.path is not None else str(self.dataset_dir(d))

    def build_deps(self, d: DatasetSpec) -> list[str]:
        return [] if d.path is not None else [f"build:{d.name}"]

    def dataset_dir(self, d: DatasetSpec) -> Path:
        return self.run_dir / "datasets" / d.name

    def model_dir(self, d: str, method: str, point: str, seed: int) -> Path:
        return self.run_dir / "models" / d / method / f"{point}-s{seed}"

    def samples_dir(self, label: str, split: str) -> Path:
        return self.run_dir / "samples" / label / split

    def scores_dir(self, label: str, split: str) -> Path:
        return self.run_dir / "scores" / label / split

    # -- planning -------------------------------------------------------------------------------
    def recipe_path(self, recipe: Path) -> Path:
        """A recipe path as given, else relative to the project holding the pipeline file."""
        if recipe.is_absolute() or recipe.exists():
            return recipe
        roots = [self.pipeline_path.resolve().parent.parent] if self.pipeline_path else []
        roots.append(Path(__file__).resolve().parent.parent)
        for root in roots:
            if (root / recipe).is_file():
                return root / recipe
        return recipe

    def _common(self) -> dict[str, Any]:
        common: dict[str, Any] = {"backend": self.spec.backend}
        if self.spec.model:
            common["model"] = self.spec.model
        if self.spec.backend_options:
            common["backend_options"] = dict(self.spec.backend_options)
        return common

    def _prompts(self, split: str, d: DatasetSpec | None = None) -> str:
        default = self.spec.eval.validation_prompts if split == "validation" else self.spec.eval.test_prompts
        return default if d is None else d.prompt_source(split, default)

    def class_images_dir(self, d: DatasetSpec) -> Path:
        return self.run_dir / "datasets" / f"{d.name}.class-images"

    def _sample_job(self, label: str, split: str, deps: list[str], trained: dict[str, str], meta: dict[str, Any],
                    d: DatasetSpec | None = None) -> Job:
        config = {**self._common(), **self.spec.eval.sample, "prompts": self._prompts(split, d),
                  "seeds": list(self.spec.eval.seeds), "out": str(self.samples_dir(label, split)),
                  "model_name": label.replace("/", ":")}
        if split == ROBUST_SPLIT:
            config["sampler"] = self.spec.eval.robustness_sampler
            config["seeds"] = list(self.spec.eval.robustness_seeds or self.spec.eval.seeds)
        config.update(trained)
        return Job(f"sample:{label}:{split}", "sample", config, self.samples_dir(label, split), deps,
                   {**meta, "split": split, "label": label})

    def _eval_job(self, d: DatasetSpec, label: str, split: str, sample: Job, meta: dict[str, Any]) -> Job:
        scored = scores_label(label, d.name)
        context = score_context(d, self.spec.backend)
        config = {**self.spec.eval.eval, **context, "metrics": metrics_for(self.spec.eval.metrics, context),
                  "images": [str(sample.out)], "out": str(self.scores_dir(scored, split))}
        return Job(f"eval:{scored}:{split}", "eval", config, self.scores_dir(scored, split), [sample.id],
                   {**meta, "split": split, "label": label, "dataset": d.name, "scores": str(self.scores_dir(scored, split))})

    def _train_chain(self, d: DatasetSpec, method: str, values: dict[str, Any], seed: int, splits: list[str]) -> list[Job]:
        """Train ``method`` at grid ``values`` on dataset ``d`` with ``seed``, then sample and score it on each split."""
        spec = self.spec.methods[method]
        name = point_name(values)
        config: dict[str, Any] = {}
        if spec.recipe:
            from mapo_bench.config import read_yaml

            config = read_yaml(self.recipe_path(spec.recipe))
        for key, value in {**spec.overrides, **values}.items():
            set_path(config, key, value)
        out = self.model_dir(d.name, method, name, seed)
        config.update({**self._common(), "method": method, "dataset": self.dataset_source(d), "out": str(out),
                       "seed": seed})
        deps = self.build_deps(d)
        entry = METHODS.get(method)
        if entry.uses_prior and d.class_images is not None:  # the method's second stream: this dataset's class images
            set_path(config, f"{method}.{entry.prior_option}", str(self.class_images_dir(d)))
            deps.append(f"build:{d.name}.class-images")
        meta = {"dataset": d.name, "task": d.task, "method": method, "grid": values, "seed": seed}
        train = Job(f"train:{d.name}:{method}:{name}:s{seed}", "train", config, out, deps, meta)
        label = f"{d.name}/{method}/{name}-s{seed}"
        lora = bool((config.get("lora") or {}).get("enabled"))
        trained = {"lora": str(out)} if lora else {"unet": str(out / BACKENDS.get(self.spec.backend).denoiser_name)}
        jobs = [train]
        for split in splits:
            sample = self._sample_job(label, split, [train.id], trained, meta, d)
            jobs += [sample, self._eval_job(d, label, split, sample, meta)]
        return jobs

    def target_prefix(self, d: DatasetSpec) -> str | None:
        """The chosen prefix of ``d``'s task (None when the chosen side is the plain prompt)."""
        return dataset_task(d, self.spec.backend).prefixes()[0]

    def base_jobs(self, split: str) -> list[Job]:
        """The base on plain prompts scored against every dataset, and each dataset's target: the base
        prompted with the chosen prefix (the fidelity gate's reference; skipped where there is no prefix)."""
        jobs: list[Job] = []
        shared = [d for d in self.spec.datasets if d.prompts is None]
        if shared:
            sample = self._sample_job("base", split, [], {}, {"method": "base"})
            jobs += [sample] + [self._eval_job(d, "base", split, sample, {"method": "base"}) for d in shared]
        for d in self.spec.datasets:
            if d.prompts is not None:  # its own prompts: the base sampled on them, for this dataset alone
                sample = self._sample_job(d.base_label, split, [], {}, {"method": "base", "dataset": d.name}, d)
                jobs += [sample, self._eval_job(d, d.base_label, split, sample, {"method": "base"})]
        for d in self.spec.datasets:
            prefix = self.target_prefix(d)
            if prefix is None:
                continue
            target = self._sample_job(f"target/{d.name}", split, [], {"prompt_prefix": prefix},
                                      {"method": "target", "dataset": d.name}, d)
            jobs += [target, self._eval_job(d, f"target/{d.name}", split, target, {"method": "target"})]
        return jobs

    def checkpoint_jobs(self, split: str) -> list[Job]:
        """Each checkpoint (a model trained elsewhere) sampled like the base and scored against its datasets."""
        jobs: list[Job] = []
        for name, checkpoint in self.spec.checkpoints.items():
            samples: dict[str, Job] = {}
            for d in (d for d in self.spec.datasets if checkpoint.scores(d.name)):
                label = checkpoint_label(name, d)
                meta = {"method": "checkpoint", "checkpoint": name}
                if label not in samples:
                    samples[label] = self._sample_job(label, split, [], checkpoint.sample_keys(), meta, d)
                    jobs.append(samples[label])
                jobs.append(self._eval_job(d, label, split, samples[label], meta))
        return jobs

    def phase1(self) -> list[Job]:
        jobs: list[Job] = []
        for d in self.spec.datasets:
            if d.path is None:
                build = {**self._common(), "task": d.task, **d.build, "out": str(self.dataset_dir(d))}
                jobs.append(Job(f"build:{d.name}", "build", build, self.dataset_dir(d), [], {"dataset": d.name}))
            if d.class_images is not None:
                classes = {**self._common(), "task": "class-images", **d.class_images, "out": str(self.class_images_dir(d))}
                jobs.append(Job(f"build:{d.name}.class-images", "build", classes, self.class_images_dir(d), [],
                                {"dataset": d.name}))
            severity = {**self._common(), **self.spec.mismatch, "dataset": self.dataset_source(d),
                        "out": str(self.dataset_dir(d) / "severity.json")}
            severity["reference"] = severity.pop("model", None)
            jobs.append(Job(f"mismatch:{d.name}", "mismatch", severity, self.dataset_dir(d) / "severity.json",
                            self.build_deps(d), {"dataset": d.name}))
        jobs += self.base_jobs("validation")
        for d in self.spec.datasets:
            if d.tune_from is not None:
                continue
            for method, method_spec in self.spec.methods.items():
                for values in method_spec.grid_points():
                    jobs += self._train_chain(d, method, values, self.spec.seeds[0], ["validation"])
        return jobs

    def test_splits(self) -> list[str]:
        return ["test", ROBUST_SPLIT] if self.spec.eval.robustness_sampler else ["test"]

    def phase2(self, selection: dict[str, Any]) -> list[Job]:
        """Selected settings (tuned view) and the matched view on every seed, on test prompts (and on the
        robustness sampler when the spec has one). Failed cells get no jobs."""
        jobs: list[Job] = []
        for split in self.test_splits():
            jobs += self.base_jobs(split) + self.checkpoint_jobs(split)
        for d in self.spec.datasets:
            for method in self.spec.methods:
                views = [self.spec.matched[method]] if method in self.spec.matched else []
                cell = selection["cells"][d.name][method]
                if cell["status"] != "failed":
                    views.insert(0, cell["grid"])
                for values in views:
                    for seed in self.spec.seeds:
                        jobs += self._train_chain(d, method, values, seed, self.test_splits())
        unique: dict[str, Job] = {}
        for job in jobs:  # the matched view may coincide with the selected setting
            unique.setdefault(job.id, job)
        return list(unique.values())

    # -- execution ------------------------------------------------------------------------------
    def marker(self, job: Job) -> Path:
        return self.marker_path(job.id)

    def marker_path(self, job_id: str) -> Path:
        """Where job ``job_id``'s finished marker is (written by the runner, or by a `--job` run)."""
        return self.run_dir / "state" / f"{job_file_name(job_id)}.json"

    def config_path(self, job: Job) -> Path:
        return self.run_dir / "configs" / f"{job_file_name(job.id)}.yaml"

    def is_done(self, job: Job) -> bool:
        """Finished with this config and base, and its recorded files still as the stage left them."""
        path = self.marker(job)
        if not path.is_file() or not job.out.exists():
            return False
        return json.loads(path.read_text()).get("config_hash") == self.job_hash(job) and not outputs_changed(job.out)

    def is_stale(self, job: Job) -> bool:
        """Finished under another config or base, or its files changed since: the stage's own cache (keyed by
        its config, which names the base but does not hold it) must not hand back the old output, so the job
        reruns with overwrite."""
        path = self.marker(job)
        return path.is_file() and job.out.exists() and not self.is_done(job)

    def prepare(self, job: Job) -> Path:
        """Write the job's stage config (with ``overwrite`` when its old output is stale); returns its path."""
        if self.is_stale(job) and job.verb in OVERWRITABLE:
            job.config = {**job.config, "overwrite": True}
        return self.write_config(job)

    def write_config(self, job: Job) -> Path:
        from mapo_bench.io import write_text_atomic

        path = self.config_path(job)
        header = f"# job {job.id} of pipeline {self.spec.name}; run: mapo-bench {CLI_VERBS[job.verb]} --config {path}\n"
        write_text_atomic(path, header + yaml.safe_dump(job.config, sort_keys=False))
        return path

    def execute(self, jobs: list[Job], workers: int = 1, pool: Any = None) -> None:
        """Run ``jobs`` respecting deps; finished jobs (marker matches their config) are skipped. ``pool``: an
        executor of :mod:`mapo_bench.executors` (None: one job at a time in this process); this process only
        plans, waits and writes markers. The caller closes the pool."""
        from concurrent.futures import FIRST_COMPLETED, wait

        from mapo_bench.progress import RunDisplay

        pending = {job.id: job for job in jobs}
        known = set(pending)
        done: set[str] = set()
        running: dict[Any, Job] = {}
        display = RunDisplay(self.spec.name, [(j.id, j.verb) for j in jobs], workers=workers,
                             estimates_s=self.spec.estimates_s, enabled=self.rank == 0)
        with display:
            try:
                while pending or running:
                    ready = [j for j in pending.values() if all(d in done or d not in known for d in j.deps)]
                    for job in ready:
                        if pool is not None and pool.slots and len(running) >= pool.slots:
                            break  # an executor without a queue of its own (submitit's local one) takes so many
                        del pending[job.id]
                        if self.is_done(job):
                            done.add(job.id)
                            display.skip(job.id, job.verb)
                            continue
                        path = self.prepare(job)
                        display.started(job.id, job.verb)
                        if pool is None:
                            wall = run_pipeline_job(job.verb, str(path))
                            self._finish(job, wall)
                            wait_for_everyone()
                            done.add(job.id)
                            display.finished(job.id, job.verb, wall)
                        else:
                            running[pool.submit(job.id, job.verb, str(path))] = job
                    if pool is None or not running:
                        if pending and not ready and not running:
                            raise MapoBenchError(f"jobs wait on each other: {', '.join(sorted(pending))}")
                        continue
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in finished:
                        job = running.pop(future)
                        try:
                            wall = future.result()
                        except MapoBenchError as exc:
                            raise MapoBenchError(f"job {job.id} failed: {exc}") from None
                        self._finish(job, wall)
                        done.add(job.id)
                        display.finished(job.id, job.verb, wall)
            except BaseException:
                if pool is not None:
                    pool.stop()  # stages are crash-safe; a job left running would race a resumed run
                raise

    def _finish(self, job: Job, wall: float) -> None:
        """Mark ``job`` finished; the marker (config hash, wall seconds) is what resume and the report read."""
        from mapo_bench.io import write_json_atomic

        wall = round(wall, 2)
        if self.rank != 0:
            return
        faults.point("run:before-marker", self.marker(job))  # the job's outputs are written, its marker not yet
        write_json_atomic(self.marker(job), {"config_hash": self.job_hash(job), "wall_s": wall, "verb": job.verb,
                                             "meta": job.meta, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        faults.point("run:after-marker")


MTIME_SLACK_S = 2.0  # file systems and copies round times; a later change by more than this is a change


def outputs_changed(out: Path) -> bool:
    """The fast check on resume (issue 15): a file the stage's manifest records is missing, has another size,
    or was modified after the manifest was written. ``mapo-bench verify`` re-hashes; this only stats."""
    manifest = out / "manifest.json" if out.is_dir() else None
    if manifest is None or not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text()).get("files") or {}
    except ValueError:
        return True
    written = manifest.stat().st_mtime + MTIME_SLACK_S
    for relative, record in files.items():
        path = out / relative
        try:
            stat = path.stat()
        except OSError:
            return True
        if stat.st_size != record.get("bytes") or stat.st_mtime > written:
            return True
    return False


def run_pipeline_job(verb: str, config_path: str) -> float:
    """``run_job`` inside ``mapo-bench run``: the stage's own progress output stays off (the run's display
    shows its progress)."""
    from mapo_bench.progress import quiet_stage

    with quiet_stage():
        return run_job(verb, config_path)


def run_job(verb: str, config_path: str) -> float:
    """Run one stage from its config file (in this process or a worker process); returns its wall seconds."""
    from mapo_bench import api

    start = time.perf_counter()
    getattr(api, API_FUNCTIONS[verb])(config_path)
    return time.perf_counter() - start


def scores_label(label: str, dataset: str) -> str:
    """Where the run scores a sample folder: the base and each checkpoint once per dataset (each task's scoring
    context), whether sampled on the shared prompts (``base``, ``checkpoints/<name>``) or on the dataset's own
    (``<dataset>/base``, ``checkpoints/<name>/<dataset>``, already per dataset)."""
    if label in ("base", f"{dataset}/base"):
        return f"base/{dataset}"
    if label.startswith(f"{CHECKPOINTS_DIR}/") and label.count("/") == 1:
        return f"{label}/{dataset}"
    return label


STYLE_METRICS = ("style", "toy-style")
ROBUST_SPLIT = "test-robust"  # test prompts at the pipeline's second sampler setting


def metrics_for(metrics: list[str], context: dict[str, Any]) -> list[str]:
    """The metrics that apply to a dataset: style metrics need a target style (Pick-Safety has none)."""
    return [m for m in metrics if m not in STYLE_METRICS or context.get("target_style")]


def dataset_task(d: DatasetSpec, backend: str) -> Any:
    """The Task object of dataset ``d`` (its prefixes and scoring context), from the build keys that name it."""
    from mapo_bench.data.tasks import make_task, task_options

    return make_task(d.task, backend=backend, **task_options(d.task, d.build))


def score_context(d: DatasetSpec, backend: str) -> dict[str, Any]:
    """EvalConfig keys (task, target_style, base_style, and the subject's images where the task has a subject)
    for scoring images against dataset ``d``'s task."""
    context = dataset_task(d, backend).score_context()
    keys = {"task": context.task, "target_style": context.target_style, "base_style": context.base_style}
    if context.subject_images is not None:
        keys["subject_images"] = context.subject_images
    return keys


def describe_plan(runner: Runner, jobs: list[Job], phase2_count: int) -> str:
    """The --dry-run table: jobs per stage kind, how many phase-1 jobs are finished already (their markers
    match), and the estimated cost of the rest (phase 2 counted as not done)."""
    from collections import Counter

    finished = {job.id for job in jobs if runner.is_done(job)}
    counts = Counter(job.verb for job in jobs)
    done = Counter(job.verb for job in jobs if job.id in finished)
    estimates = runner.spec.estimates_s
    lines = [f"pipeline {runner.spec.name}: {len(jobs)} jobs in phase 1 ({len(finished)} done), "
             f"{phase2_count} after it (re-checked finalists, then the selected settings)", f"run folder: {runner.run_dir}", "",
             f"{'stage':10s} {'jobs':>5s} {'done':>5s} {'est. each':>10s} {'est. left':>10s}"]
    total = 0.0
    per_phase2 = _phase2_counts(runner)
    for verb in ("build", "mismatch", "train", "sample", "eval"):
        n = counts.get(verb, 0) + per_phase2.get(verb, 0)
        each = estimates.get(verb)
        cost = (each or 0.0) * (n - done[verb])
        total += cost
        lines.append(f"{verb:10s} {n:5d} {done[verb]:5d} {(f'{each:.0f} s' if each else '?'):>10s} "
                     f"{(f'{cost / 60:.1f} min' if each else '?'):>10s}")
    lines.append(f"{'total':10s} {len(jobs) + phase2_count:5d} {len(finished):5d} {'':>10s} {total / 60:>6.1f} min "
                 "(one worker; divide by --workers for parallel stages)")
    lines.append("")
    lines += [f"  {job.id}{' (done)' if job.id in finished else ''}" for job in jobs]
    lines.append(f"  ... then {phase2_count} jobs for the selected settings on seeds {runner.spec.seeds} (test prompts)")
    return "\n".join(lines)


def _phase2_counts(runner: Runner) -> dict[str, int]:
    """Jobs after the first tuning step, per verb: one round of re-checked finalists, and phase 2 as if every
    cell selected its first grid setting (an upper bound when the matched view coincides with a selection;
    failed cells need fewer)."""
    from collections import Counter

    spec = runner.spec
    cells = {d.name: {m: {"status": "selected", "grid": spec.methods[m].grid_points()[0]} for m in spec.methods}
             for d in spec.datasets}
    phase1 = {job.id for job in runner.phase1()}
    counts = Counter(job.verb for job in runner.phase2({"cells": cells}) if job.id not in phase1)
    ev = spec.eval
    tuned = [d for d in spec.datasets if d.tune_from is None]
    rechecked = sum(min(ev.tuning_finalists, len(spec.methods[m].grid_points())) for m in spec.methods) * len(tuned)
    for verb in ("train", "sample", "eval"):  # one round of the tuning's second step (its seed-1 runs counted once)
        counts[verb] += rechecked * (ev.tuning_seeds - 1)
    return dict(counts)


def run_pipeline(spec: PipelineSpec, pipeline_path: Path | None = None, workers: int = 1, dry_run: bool = False,
                 emit_commands: bool = False, out: Path | None = None, job: str | None = None,
                 executor: str = "local", ray_address: str | None = None) -> Path | None:
    """Plan and run a pipeline; returns the report folder (None for --dry-run, --emit-commands, --job)."""
    run_dir = Path(out) if out else Path("runs") / spec.name
    runner = Runner(spec, run_dir, pipeline_path)
    missing = missing_prompt_files(spec)
    if missing and not dry_run:
        raise MapoBenchError(missing[0])
    jobs = runner.phase1()
    _validate_jobs(jobs)
    if dry_run:
        print(describe_plan(runner, jobs, sum(_phase2_counts(runner).values())))
        for line in missing:
            print(f"before running: {line}")
        return None
    # One full runner per run folder; single jobs (--job) share the folder with each other, one per job.
    exclusive = job is None and not emit_commands
    with hold_lock(run_dir / ".lock", shared=not exclusive, enabled=runner.rank == 0,
                   busy=f"{run_dir}: another mapo-bench run is using this run folder; wait for it or stop it, "
                        "then run again to resume"):
        if runner.rank == 0:
            from mapo_bench.io import write_json_atomic

            write_json_atomic(run_dir / "pipeline.json", spec.model_dump(mode="json"))
        return _run_phases(runner, jobs, workers, emit_commands, job, executor, ray_address)


def _run_phases(runner: Runner, jobs: list[Job], workers: int, emit_commands: bool, job: str | None,
                executor: str = "local", ray_address: str | None = None) -> Path | None:
    """Phase 1 (``jobs``), selection, phase 2, report; or, for --job / --emit-commands, the current phase."""
    if job is not None or emit_commands:
        if all(runner.is_done(j) for j in jobs):
            jobs = recheck_jobs(runner) or runner.phase2(_select(runner))
        if job is not None:
            run_single_job(runner, jobs, job)
        else:
            print_commands(runner, jobs)
        return None
    from mapo_bench.executors import make_executor

    if runner.world > 1 and (workers > 1 or executor != "local"):
        raise MapoBenchError(f"--workers {workers} / --executor {executor} under a {runner.world}-process launch: the "
                             "processes already share each job; use --workers 1 and the local executor")
    pool = make_executor(executor, workers, runner, ray_address)  # one for both phases (a Ray cluster starts once)
    try:
        runner.execute(jobs, workers, pool)
        while recheck := recheck_jobs(runner):  # the tuning's second step, a round per pass (selection.py)
            runner.execute(recheck, workers, pool)
        runner.execute(runner.phase2(_select(runner)), workers, pool)
    finally:
        if pool is not None:
            pool.close()
    if runner.rank != 0:
        return None
    from mapo_bench.report import write_report

    return write_report(runner.run_dir)


def _select(runner: Runner) -> dict[str, Any]:
    """Select settings from the phase-1 scores (every rank reads them; rank 0 writes selection.json)."""
    selection = select_settings(runner)
    if runner.rank == 0:
        from mapo_bench.io import write_json_atomic

        faults.point("run:before-selection", runner.run_dir / "selection.json")
        write_json_atomic(runner.run_dir / "selection.json", selection)
    return selection


def print_commands(runner: Runner, jobs: list[Job]) -> None:
    """Every unfinished job of the current phase as a standalone command, in dependency order.

    ``mapo-bench run P --job ID`` runs one stage and records it as finished, so a later ``mapo-bench run P``
    skips it; prefix it with ``accelerate launch [...]`` (the console script's path) or ``torchrun -m
    mapo_bench`` to run that stage on several processes. Each job's stage config is also written to
    ``configs/`` for schedulers that call the stage directly (the runner then cannot see it finished).
    """
    todo = [j for j in jobs if not runner.is_done(j)]
    phase = "selected settings (phase 2)" if any(j.meta.get("split") == "test" for j in jobs) else "grid (phase 1)"
    print(f"# {len(todo)} unfinished jobs of the {phase}, in dependency order")
    run = f"mapo-bench run {shlex.quote(str(runner.pipeline_path or runner.spec.name))} --out {shlex.quote(str(runner.run_dir))}"
    for j in todo:
        runner.write_config(j)
        print(f"{run} --job {shlex.quote(j.id)}")
    print(f"# when they have finished: {run} --emit-commands (next phase) or without it (finish and report)")


def run_single_job(runner: Runner, jobs: list[Job], job_id: str) -> None:
    """Run one job of the current phase in this process (all ranks under a launcher), then mark it done."""
    by_id = {j.id: j for j in jobs}
    if job_id not in by_id:
        from mapo_bench.registry import suggest

        raise MapoBenchError(f"--job {job_id}: not a job of this phase of {runner.spec.name}{suggest(job_id, list(by_id))}; "
                             "list them with --emit-commands")
    job = by_id[job_id]
    missing = [d for d in job.deps if d in by_id and not runner.is_done(by_id[d])]
    if missing:
        raise MapoBenchError(f"--job {job_id}: waits on unfinished {', '.join(missing)}")
    lock = runner.marker(job).with_suffix(".lock")
    with hold_lock(lock, enabled=runner.rank == 0, busy=f"--job {job_id}: already running in another process"):
        if runner.is_done(job):
            print(f"{job_id}: already finished")
            return
        runner._finish(job, run_job(job.verb, str(runner.prepare(job))))
    wait_for_everyone()


def missing_prompt_files(spec: PipelineSpec) -> list[str]:
    """One line per prompt file the pipeline names but the machine lacks, saying where to get it."""
    lines = []
    for where, source in spec.prompt_files():
        path = Path(source.rsplit(":", 1)[0] if re.search(r"\.(csv|jsonl|parquet):\w+$", source) else source)
        if not path.is_file():
            lines.append(f"{source}: prompt file not found ({where})"
                         + (f"; {spec.eval.prompts_help}" if spec.eval.prompts_help else ""))
    return lines


def _validate_jobs(jobs: list[Job]) -> None:
    """Validate every job's config against its stage's class before anything runs (fail fast, one line)."""
    from mapo_bench.api import stage_config_class
    from mapo_bench.config import validate

    stage_of = {"build": "build", "mismatch": "mismatch", "train": "train", "sample": "sample", "eval": "eval"}
    for job in jobs:
        validate(stage_config_class(stage_of[job.verb]), job.config, source=f"job {job.id}")
