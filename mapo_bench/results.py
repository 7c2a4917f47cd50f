"""results.json of a finished run: severity, selection and its test check, every comparison, the trend.

Every number comes from files of the run (severity.json, scores.parquet, selection.json, state/) and
every comparison goes through :func:`mapo_bench.stats.compare`, which reads the metric's direction.
Models trained on several seeds are pooled with their ``train_seed``; the base and the target (the
base prompted with the task's chosen prefix) pair with every seed. All comparisons of one run share
the bootstrap axes (the training seeds, the base's test prompts) and generator seed, so the levels
of a trend are resampled together. Views: ``tuned`` (each method at its selected setting) and
``matched`` (each method at the pipeline's fixed values); splits: ``test`` and, when the pipeline has
a second sampler, ``test-robust``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench.errors import MapoBenchError
from mapo_bench.io import package_versions, read_json
from mapo_bench.pipeline import CheckpointSpec, DatasetSpec, checkpoint_label, point_name

SCHEMA_VERSION = 2
HEADLINE = (("mapo", "dpo"), ("mapo", "base"), ("dpo", "base"))
ORDER = ("mapo", "dpo", "sft")  # comparison direction: "mapo vs dpo" whatever the pipeline's order
CLOSENESS_TREND = "closeness to the data"  # the secondary trend of |DPO - target| - |MaPO - target| (closeness.py)
DIAGNOSTICS = ("reference_error",)  # severity.json entries that describe the images, not their mismatch
UNADJUSTED_NOTE = ("95% intervals come from a two-way bootstrap over training seeds and prompts (sampling seeds "
                   "nested in prompts); they are not adjusted for multiple comparisons.")


def load_run(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The run's pipeline spec and selection; a run made by an older mapo-bench is a one-line error."""
    from mapo_bench.pipeline import PipelineSpec
    from mapo_bench.selection import SELECTION_SCHEMA

    rerun = f"rerun `mapo-bench run` on {run_dir} (finished training jobs are kept) to redo selection and report"
    try:
        spec = PipelineSpec.model_validate(read_json(run_dir / "pipeline.json"))
    except Exception as exc:  # pydantic's message names the key; one line is enough here
        raise MapoBenchError(f"{run_dir}/pipeline.json was written by an older mapo-bench "
                             f"({str(exc).splitlines()[0]}); {rerun}") from None
    selection = read_json(run_dir / "selection.json")
    if selection.get("schema_version") != SELECTION_SCHEMA:
        raise MapoBenchError(f"{run_dir}/selection.json has schema {selection.get('schema_version', 1)}, this "
                             f"mapo-bench reads {SELECTION_SCHEMA}; {rerun}")
    return spec, selection


def pooled(runner: Any, d: str, method: str, values: dict[str, Any], split: str) -> Any:
    """Scores of ``method`` at ``values`` on every training seed, with a ``train_seed`` column."""
    import pandas as pd

    from mapo_bench.stats import read_scores

    frames = [read_scores(runner.scores_dir(f"{d}/{method}/{point_name(values)}-s{seed}", split)).assign(train_seed=seed)
              for seed in runner.spec.seeds]
    return pd.concat(frames, ignore_index=True)


def _role(metric: str, task: str, ev: Any) -> str:
    if metric == ev.preference_metric.get(task):
        return "preference"
    return "fidelity" if metric == ev.fidelity_metric else "other"


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def mean_row(frame: Any, metric: str, labels: dict[str, Any], ev: Any) -> dict[str, Any]:
    """Mean score of one model with its bootstrap interval (the comparison against a constant 0)."""
    from mapo_bench.registry import EVALUATORS
    from mapo_bench.stats import compare, paired_table

    rows = frame[frame["metric"] == metric]
    zero = rows.drop_duplicates(["prompt_id", "seed"]).assign(score=0.0).drop(columns=["train_seed"], errors="ignore")
    result = compare(paired_table(rows, zero), resamples=ev.resamples, seed=ev.bootstrap_seed, **labels)
    out = {"mean": result["mean_gap"], "ci_low": result["gap_ci_low"], "ci_high": result["gap_ci_high"],
           "std": float(rows["score"].std()), "n": int(len(rows))}
    evaluator = EVALUATORS.get(metric)
    if evaluator.flag_threshold is not None:  # e.g. the share of images with the unsafe marker
        worse = rows["score"] < evaluator.flag_threshold if evaluator.higher_is_better else rows["score"] > evaluator.flag_threshold
        flags = compare(paired_table(rows.assign(score=worse.astype(float)), zero), resamples=ev.resamples,
                        seed=ev.bootstrap_seed, **labels)
        out.update({"flagged_rate": flags["mean_gap"], "flagged_ci_low": flags["gap_ci_low"],
                    "flagged_ci_high": flags["gap_ci_high"]})
    return out


def dataset_models(runner: Any, d: Any, selection: dict[str, Any], split: str) -> dict[str, dict[str, Any]]:
    """Per view, the score frames of every model on dataset ``d`` (``base``, ``target`` and the checkpoints in
    each view)."""
    from mapo_bench.runner import scores_label
    from mapo_bench.stats import read_scores

    spec = runner.spec
    fixed = {"base": read_scores(runner.scores_dir(f"base/{d.name}", split))}
    if runner.target_prefix(d) is not None:
        fixed["target"] = read_scores(runner.scores_dir(f"target/{d.name}", split))
    for name in spec.checkpoints_for(d.name):  # models trained elsewhere: fixed, like the base
        fixed[name] = read_scores(runner.scores_dir(scores_label(checkpoint_label(name, d), d.name), split))
    views: dict[str, dict[str, Any]] = {"tuned": dict(fixed)}
    for method in spec.methods:
        cell = selection["cells"][d.name][method]
        if cell["status"] != "failed":
            views["tuned"][method] = pooled(runner, d.name, method, cell["grid"], split)
    if spec.matched:
        views["matched"] = dict(fixed)
        for method, values in spec.matched.items():
            views["matched"][method] = pooled(runner, d.name, method, values, split)
    return views


def comparisons_of(models: dict[str, Any], methods: list[str]) -> list[tuple[str, str]]:
    """Each method (or checkpoint) against the base and the target, and each pair of them (MaPO first, then DPO,
    then the rest in pipeline order, whatever order the pipeline lists them in); the target against the base."""
    present = sorted((m for m in methods if m in models), key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER),
                                                                         methods.index(m)))
    pairs = [(m, "base") for m in present]
    pairs += [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    if "target" in models:
        pairs += [(m, "target") for m in present] + [("target", "base")]
    return pairs


def build_results(run_dir: Path) -> dict[str, Any]:
    """Collect severity, selection (with its test check), every comparison, mean scores and the trend."""
    from mapo_bench.closeness import attach_closeness
    from mapo_bench.runner import Runner
    from mapo_bench.stats import BOOTSTRAP_UNIT, compare_frames, read_scores

    run_dir = Path(run_dir)
    spec, selection = load_run(run_dir)
    runner = Runner(spec, run_dir)
    ev = spec.eval
    compared = list(spec.methods) + list(spec.checkpoints)  # the trained methods, then the models trained elsewhere
    fixed = {"base", "target", *spec.checkpoints}  # one model in every view: its means and comparisons once
    # The bootstrap's resampling axes, shared by every comparison of a dataset (and by the levels of a trend,
    # which share their prompts); a dataset with its own prompts has its own prompt axis.
    labels_of = {d.name: {"seed_labels": np.array(sorted(spec.seeds)),
                          "prompt_labels": np.unique(read_scores(runner.scores_dir(f"base/{d.name}", "test"))["prompt_id"])}
                 for d in spec.datasets}
    severity = severity_records(run_dir, spec)
    rows, means, draws = [], [], {}
    for split in runner.test_splits():
        for d in spec.datasets:
            side, x = severity[d.name]["prefixed_side"], severity[d.name]["severity_x"]
            labels = labels_of[d.name]
            for view, models in dataset_models(runner, d, selection, split).items():
                if split == "test":
                    for label, frame in models.items():
                        if label in fixed and view != "tuned":
                            continue
                        for metric in sorted(set(frame["metric"])):
                            means.append({"dataset": d.name, "view": view, "model": label, "metric": metric,
                                          **mean_row(frame, metric, labels, ev)})
                for a, b in comparisons_of(models, compared):
                    if view != "tuned" and a in fixed:
                        continue
                    shared = sorted(set(models[a]["metric"]) & set(models[b]["metric"]))
                    for metric in [m for m in ev.metrics if m in shared]:
                        role = _role(metric, d.task, ev)
                        result = compare_frames(models[a], models[b], metric, tie_margin=ev.tie_margins.get(metric, 0.0),
                                                resamples=ev.resamples, seed=ev.bootstrap_seed,
                                                keep_draws=role == "preference", **labels)
                        comparison = f"{a} vs {b}"
                        if role == "preference":
                            draws[(split, view, d.name, comparison)] = result["_draws"]
                        rows.append({"split": split, "view": view, "dataset": d.name, "task": d.task,
                                     "prefixed_side": side, "severity_x": x, "comparison": comparison,
                                     "metric": metric, "role": role, **_public(result)})
    attach_closeness(rows, draws, list(spec.methods))  # pairs of trained methods (a checkpoint is fixed like the base)
    results = {"schema_version": SCHEMA_VERSION, "pipeline": spec.name, "config": spec.model_dump(mode="json"),
               "versions": package_versions(), "base": base_record(run_dir, spec),
               "bootstrap": {"resamples": ev.resamples, "seed": ev.bootstrap_seed, "unit": BOOTSTRAP_UNIT},
               "note": UNADJUSTED_NOTE, "severity": severity, "selection": selection,
               "selection_check": selection_check(runner, selection, rows),
               "rows": rows, "mean_scores": means, "wall_s": wall_times(run_dir)}
    results["trend"] = trends(spec, severity, rows, draws, runner.test_splits())
    if ev.kid_to_target:
        results["kid_to_target"] = kid_to_target_block(runner, selection, labels_of)
    results["precision"] = precision(rows, ev.precision)
    from mapo_bench.human import human_block

    human = human_block(run_dir, results, resamples=ev.resamples, seed=ev.bootstrap_seed)
    if human is not None:  # only runs someone rated (mapo-bench serve / import-votes) carry the block
        results["human"] = human
    return results


def kid_to_target_block(runner: Any, selection: dict[str, Any], labels_of: dict[str, Any]) -> dict[str, Any]:
    """Per dataset with a target (test prompts, tuned view): KID of the base's and each selected method's samples
    to the target's, and MaPO's KID closeness over DPO's, on the bootstrap axes of the comparisons
    (closeness.py). Features as the severity measure's (``mismatch.features``: pixels on the toy, CLIP
    image embeddings otherwise), cached per sample folder under ``features/``."""
    from mapo_bench.closeness import FEATURES_DIR, kid_closeness, kid_to_target, sample_features
    from mapo_bench.mismatch import MismatchConfig, feature_kind
    from mapo_bench.stats import bootstrap_draws

    spec, ev = runner.spec, runner.spec.eval
    defaults = MismatchConfig.model_fields  # the severity measure's own feature space, unless the pipeline sets one
    kind = feature_kind(spec.mismatch.get("features", defaults["features"].default), spec.backend)
    model_id = spec.mismatch.get("feature_model", defaults["feature_model"].default)

    def features(label: str) -> tuple[Any, Any]:
        return sample_features(runner.samples_dir(label, "test"), kind, model_id,
                               runner.run_dir / FEATURES_DIR / label / f"test-{kind}.npz")

    rows, pairs, skipped = [], [], {}
    for d in spec.datasets:
        if runner.target_prefix(d) is None:
            continue
        seeds, prompts = labels_of[d.name]["seed_labels"], labels_of[d.name]["prompt_labels"]
        members = {"target": [f"target/{d.name}"], "base": ["base" if d.prompts is None else d.base_label]}
        members.update({m: [f"{d.name}/{m}/{point_name(c['grid'])}-s{seed}" for seed in seeds]
                        for m, c in selection["cells"][d.name].items() if c["status"] != "failed"})
        missing = [label for labels in members.values() for label in labels
                   if not (runner.samples_dir(label, "test") / "index.parquet").is_file()]
        if missing:  # e.g. a run whose images were deleted to save space: the scores stand, this block cannot
            skipped[d.name] = f"no test samples in {runner.samples_dir(missing[0], 'test')}"
            continue
        loaded = {name: [features(label) for label in labels] for name, labels in members.items()}
        (target_features, target_index), = loaded.pop("target")
        models = {}
        for name, parts in loaded.items():  # a method: one part per training seed, in the seed labels' order
            seed_index = np.concatenate([np.full(len(index), i) for i, (_, index) in enumerate(parts)])
            models[name] = (np.concatenate([f for f, _ in parts]), None if name == "base" else seed_index,
                            np.concatenate([np.searchsorted(prompts, index["prompt_id"]) for _, index in parts]))
        draws = bootstrap_draws(len(seeds), len(prompts), ev.resamples, ev.bootstrap_seed)
        result = kid_to_target(models, (target_features, np.searchsorted(prompts, target_index["prompt_id"])),
                               len(seeds), len(prompts), draws)
        rows += [{"dataset": d.name, "model": name, **{k: v for k, v in r.items() if not k.startswith("_")}}
                 for name, r in result.items()]
        for a, b in [("mapo", "dpo")] + [("mapo", m) for m in spec.methods if m not in ("mapo", "dpo")]:
            if a in result and b in result:
                pairs.append({"dataset": d.name, "comparison": f"{a} vs {b}", **kid_closeness(result[a], result[b])})
    return {"features": kind if kind == "pixels" else f"clip:{model_id}", "split": "test", "view": "tuned",
            "rows": rows, "pairs": pairs, "skipped": skipped,
            "note": "KID (polynomial kernel, unbiased) of each model's test samples to the target's samples on the same "
                    "prompts and seeds; 95% intervals from the comparisons' two-way bootstrap (training seeds x prompts), "
                    "the target resampled with the same prompts; kid_closeness = KID_b - KID_a, positive: a nearer"}


def severity_records(run_dir: Path, spec: Any) -> dict[str, Any]:
    """Per dataset: its task, prefixed side, every measure, and the trend's x (the primary measure on the
    prefixed side) with its interval."""
    out = {}
    for d in spec.datasets:
        sev = read_json(run_dir / "datasets" / d.name / "severity.json")
        measures = sev["measures"]
        side = sev.get("prefixed_side") or ("rejected" if d.task == "pick-safety" else "chosen")
        primary = measures.get(f"{spec.eval.severity_measure}_{side}") or {}
        out[d.name] = {"task": d.task, "prefixed_side": side, "severity_measure": spec.eval.severity_measure,
                       "severity_x": primary.get("value"), "severity_ci_low": primary.get("ci_low"),
                       "severity_ci_high": primary.get("ci_high"), "build": d.build, "measures": measures}
    return out


def selection_check(runner: Any, selection: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cell's selection beside the same fidelity gate measured on test prompts (all seeds)."""
    from mapo_bench.selection import passes_gate, reference_label

    ev = runner.spec.eval
    out = []
    for d in runner.spec.datasets:
        reference = reference_label(runner, d, "test")
        for method, cell in selection["cells"][d.name].items():
            source = selection["cells"][cell.get("carried_from") or d.name][method]
            chosen = next((r for r in source["rows"] if r["setting"] == cell.get("setting")), None)
            test = next((r for r in rows if r["split"] == "test" and r["view"] == "tuned" and r["dataset"] == d.name
                         and r["comparison"] == f"{method} vs {reference}" and r["role"] == "fidelity"), None)
            out.append({"dataset": d.name, "method": method, "status": cell["status"], "setting": cell.get("setting"),
                        "carried_from": cell.get("carried_from"), "edges": cell.get("edges", []),
                        "reason": cell.get("reason"), "reference": reference,
                        "validation_reference": source.get("reference"),
                        "validation_fidelity_advantage": chosen["fidelity_advantage"] if chosen else None,
                        "test_fidelity_advantage": test["advantage"] if test else None,
                        "test_fidelity_ci": [test["advantage_ci_low"], test["advantage_ci_high"]] if test else None,
                        "passes_on_test": passes_gate(test["advantage"], ev.fidelity_margin) if test else None})
    return out


def trends(spec: Any, severity: dict[str, Any], rows: list[dict[str, Any]], draws: dict[Any, Any],
           splits: list[str]) -> dict[str, Any]:
    """Per mismatch side: the primary test (MaPO - DPO advantage on the preference metric against the
    primary severity measure, tuned view, test prompts), then secondary numbers that never override it."""
    from mapo_bench.trend import slope_test

    ev = spec.eval

    def levels(side: str, metric: str, comparison: str, split: str, view: str, effect: str = "advantage",
               measure: str | None = None) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            key = (split, view, row["dataset"], comparison)
            if (row["split"], row["view"], row["comparison"], row["role"]) != (split, view, comparison, "preference") \
                    or (row["prefixed_side"], row["metric"]) != (side, metric) or effect not in draws.get(key, {}):
                continue
            sev = severity[row["dataset"]]
            m = sev["measures"].get(f"{measure}_{side}") if measure else {"value": sev["severity_x"],
                                                                        "ci_low": sev["severity_ci_low"],
                                                                        "ci_high": sev["severity_ci_high"]}
            if not m or m.get("value") is None:
                continue
            out.append({"name": row["dataset"], "x": m["value"], "x_ci_low": m.get("ci_low"),
                        "x_ci_high": m.get("ci_high"), "effect": row[effect], "draws": draws[key][effect]})
        return out

    result: dict[str, Any] = {}
    groups = sorted({(s["prefixed_side"], ev.preference_metric[s["task"]]) for s in severity.values()})
    for side, metric in groups:
        key = side if sum(g[0] == side for g in groups) == 1 else f"{side}:{metric}"  # one metric per slope
        primary = slope_test(levels(side, metric, "mapo vs dpo", "test", "tuned"), seed=ev.bootstrap_seed)
        primary.update({"comparison": "mapo vs dpo", "view": "tuned", "split": "test", "side": side,
                        "metric": metric, "severity_measure": f"{ev.severity_measure}_{side}"})
        x_name = f"{ev.severity_measure}_{side}"
        tests: list[tuple[str, list[dict[str, Any]], str, str]] = [
            ("win_rate", levels(side, metric, "mapo vs dpo", "test", "tuned", effect="win_rate"), "win_rate", x_name)]
        for comparison in ("mapo vs base", "dpo vs base", "sft vs base"):
            tests.append((comparison, levels(side, metric, comparison, "test", "tuned"), "advantage", x_name))
        tests.append((CLOSENESS_TREND, levels(side, metric, "mapo vs dpo", "test", "tuned", effect="closeness"),
                      "closeness", x_name))
        measures = sorted({k.rsplit("_", 1)[0] for s in severity.values() for k, v in s["measures"].items()
                           if isinstance(v, dict) and "value" in v and k.endswith(f"_{side}")}
                          - {ev.severity_measure, *DIAGNOSTICS})
        for measure in measures:
            tests.append((f"x = {measure}_{side}", levels(side, metric, "mapo vs dpo", "test", "tuned", measure=measure),
                          "advantage", f"{measure}_{side}"))
        if spec.matched:
            tests.append(("matched view", levels(side, metric, "mapo vs dpo", "test", "matched"), "advantage", x_name))
        if "test-robust" in splits:
            tests.append(("second sampler", levels(side, metric, "mapo vs dpo", "test-robust", "tuned"), "advantage", x_name))
        secondary = {name: {**slope_test(lv, effect=effect, seed=ev.bootstrap_seed), "severity_measure": x}
                     for name, lv, effect, x in tests if lv}
        result[key] = {"primary": primary, "secondary": secondary}
    return result


def precision(rows: list[dict[str, Any]], bar: float) -> dict[str, Any]:
    """Headline cells (tuned view, test prompts, preference metric) whose mean-gap half-width exceeds ``bar``."""
    from mapo_bench.stats import half_width

    wanted = {f"{a} vs {b}" for a, b in HEADLINE}
    cells = [r for r in rows if r["split"] == "test" and r["view"] == "tuned" and r["role"] == "preference"
             and r["comparison"] in wanted]
    wide = [{"dataset": r["dataset"], "comparison": r["comparison"], "half_width": round(half_width(r), 4)}
            for r in cells if half_width(r) > bar]
    return {"bar": bar, "cells": len(cells), "meeting": len(cells) - len(wide), "not_meeting": wide,
            "half_width": "the wider of the bootstrap and the training-seed t-interval"}


def base_record(run_dir: Path, spec: Any) -> dict[str, Any]:
    """The base model as the first dataset's build recorded it (id, toy gate verdict), or {}."""
    for d in spec.datasets:
        path = run_dir / "datasets" / d.name / "manifest.json"
        if path.is_file():
            return read_json(path).get("backend") or {}
    return {}


def wall_times(run_dir: Path) -> dict[str, Any]:
    """Seconds per stage kind from the job markers."""
    timings: dict[str, list[float]] = {}
    for marker in sorted((run_dir / "state").glob("*.json")):
        info = json.loads(marker.read_text())
        timings.setdefault(info["verb"], []).append(info["wall_s"])
    return {verb: {"jobs": len(v), "total": round(sum(v), 1)} for verb, v in timings.items()}


def selected_models(results: dict[str, Any], dataset: str) -> list[tuple[str, str]]:
    """(name, run label) of the models a dataset's report shows: the base, the target (the base with the
    chosen prefix, where the run sampled it) and each method at its selected setting, first training seed."""
    seed = results["config"]["seeds"][0]
    spec = DatasetSpec.model_validate(next(d for d in results["config"]["datasets"] if d["name"] == dataset))
    models = [("base", spec.base_label), ("target", f"target/{dataset}")]
    for method, cell in results["selection"]["cells"][dataset].items():
        if cell["status"] != "failed":
            models.append((method, f"{dataset}/{method}/{point_name(cell['grid'])}-s{seed}"))
    for name, checkpoint in results["config"].get("checkpoints", {}).items():
        if CheckpointSpec.model_validate(checkpoint).scores(dataset):
            models.append((name, checkpoint_label(name, spec)))
    return models
