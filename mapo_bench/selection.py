"""Setting selection (DESIGN.md section 5b): on validation prompts, per tuned dataset and method, the fidelity
gate and preference effect of every grid setting, and the selected setting.

Tuning runs in two steps when the pipeline tunes on more than one training seed (``eval.tuning_seeds``): every
setting is trained on the first seed; the ``eval.tuning_finalists`` best settings eligible there are trained
on the other tuning seeds too (:func:`recheck_jobs`). A finalist is eligible only if it passes the gate on
every tuning seed (its row carries the worst seed's fidelity) and is ranked by its mean preference advantage
over them. A cell whose finalists all fail on a later seed takes the next finalists (a round per call of
:func:`recheck_jobs`) until one passes or the eligible settings run out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mapo_bench.pipeline import DatasetSpec, point_name

if TYPE_CHECKING:
    from mapo_bench.runner import Job, Runner

SELECTION_SCHEMA = 2


def grid_edges(values: dict[str, Any], grid: dict[str, list[Any]]) -> list[str]:
    """Grid axes (with two or more values) on which ``values`` sits at the lowest or highest value."""
    edges = []
    for key, options in grid.items():
        if len(options) > 1 and key in values:
            ordered = sorted(options)
            if values[key] == ordered[0]:
                edges.append(f"{key} at the grid's low end ({values[key]})")
            elif values[key] == ordered[-1]:
                edges.append(f"{key} at the grid's high end ({values[key]})")
    return edges


def fidelity_check(scores: Any, reference: Any, ev: Any, resamples: int, seed: int) -> dict[str, Any]:
    """The fidelity gate (the same quantity on validation and test): the mean fidelity gap to the
    reference, its win rate at the recorded tie margin, and whether the gap is within ``fidelity_margin``."""
    from mapo_bench.stats import compare_frames

    metric = ev.fidelity_metric
    result = compare_frames(scores, reference, metric, tie_margin=ev.tie_margins.get(metric, 0.0),
                            resamples=resamples, seed=seed)
    return {"fidelity_advantage": result["advantage"], "fidelity_ci_low": result["advantage_ci_low"],
            "fidelity_ci_high": result["advantage_ci_high"], "fidelity_win_rate": result["win_rate"],
            "eligible": passes_gate(result["advantage"], ev.fidelity_margin)}


def passes_gate(fidelity_advantage: float, margin: float) -> bool:
    """The fidelity gate: mean fidelity at most ``margin`` below the reference's."""
    return fidelity_advantage >= -margin


def reference_label(runner: Runner, d: DatasetSpec, split: str) -> str:
    """The fidelity gate's reference for dataset ``d`` on ``split``: its target (base + chosen prefix) or the
    base, as the pipeline names it; for "lower", whichever of the two has the lower mean fidelity on
    ``split`` (the target wins a tie). Datasets without a target prefix use the base."""
    rule = runner.spec.eval.fidelity_reference
    if rule == "base" or runner.target_prefix(d) is None:
        return "base"
    if rule == "target":
        return "target"
    means = {label: mean_score(reference_scores(runner, d, split, label), runner.spec.eval.fidelity_metric)
             for label in ("target", "base")}
    return "base" if means["base"] < means["target"] else "target"


def reference_scores(runner: Runner, d: DatasetSpec, split: str, label: str | None = None) -> Any:
    from mapo_bench.stats import read_scores

    return read_scores(runner.scores_dir(f"{label or reference_label(runner, d, split)}/{d.name}", split))


def mean_score(scores: Any, metric: str) -> float:
    return float(scores.loc[scores["metric"] == metric, "score"].mean())


def reference_rule(ev: Any) -> str:
    """The gate's rule in words, for results.json and the report."""
    reference = {"target": "the target's (the base prompted with the task's chosen prefix)",
                 "base": "the base's",
                 "lower": "the lower of the target's (the base prompted with the task's chosen prefix) and the "
                          "base's"}[ev.fidelity_reference]
    return f"mean {ev.fidelity_metric} at most {ev.fidelity_margin:g} below {reference}"


def best_eligible(rows: list[dict[str, Any]], margin: float, seeds: int = 1) -> dict[str, Any] | None:
    """The row with the largest (mean) preference advantage among those checked on ``seeds`` training seeds and
    within ``margin`` of the fidelity reference on each (ties broken by fidelity); None when no row is."""
    eligible = [r for r in rows if len(r.get("seeds", [0])) >= seeds and passes_gate(r["fidelity_advantage"], margin)]
    return max(eligible, key=lambda r: (r["preference_advantage"], r["fidelity_advantage"])) if eligible else None


def seed_row(runner: Runner, d: DatasetSpec, method: str, values: dict[str, Any], seed: int, base: Any,
             reference: Any) -> dict[str, Any]:
    """One setting on one training seed: its fidelity gate and preference effect against the base (scored once
    per runner: ``runner.tuning_rows``)."""
    from mapo_bench.stats import compare_frames, read_scores

    key = (d.name, method, point_name(values), seed)
    if key in runner.tuning_rows:
        return runner.tuning_rows[key]
    ev = runner.spec.eval
    preference = ev.preference_metric[d.task]
    scores = read_scores(runner.scores_dir(f"{d.name}/{method}/{point_name(values)}-s{seed}", "validation"))
    pref = compare_frames(scores, base, preference, tie_margin=ev.tie_margins.get(preference, 0.0),
                          resamples=ev.resamples, seed=ev.bootstrap_seed)
    row = {"setting": point_name(values), "grid": values, "seed": seed,
           **fidelity_check(scores, reference, ev, ev.resamples, ev.bootstrap_seed),
           "preference_advantage": pref["advantage"], "preference_win_rate": pref["win_rate"]}
    runner.tuning_rows[key] = row
    return row


def merge_seeds(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """A setting's row over the seeds it was checked on: the worst seed's fidelity (the gate must hold on every
    one) and the mean preference advantage and win rate; each seed's row under ``per_seed``."""
    worst = min(per_seed, key=lambda r: r["fidelity_advantage"])
    row = {k: v for k, v in worst.items() if k != "seed"}
    row.update({"seeds": [r["seed"] for r in per_seed],
                "preference_advantage": sum(r["preference_advantage"] for r in per_seed) / len(per_seed),
                "preference_win_rate": sum(r["preference_win_rate"] for r in per_seed) / len(per_seed),
                "eligible": all(r["eligible"] for r in per_seed)})
    if len(per_seed) > 1:
        row["per_seed"] = per_seed
    return row


def is_finished(runner: Runner, d: DatasetSpec, method: str, values: dict[str, Any], seed: int) -> bool:
    """Whether this setting's validation scores on ``seed`` are finished under the current config."""
    return runner.is_done(runner._train_chain(d, method, values, seed, ["validation"])[-1])


def tuning_rows(runner: Runner, d: DatasetSpec) -> dict[str, list[dict[str, Any]]]:
    """Per method, every grid setting's row over the tuning seeds it has been scored on (the first always)."""
    from mapo_bench.stats import read_scores

    spec = runner.spec
    base = read_scores(runner.scores_dir(f"base/{d.name}", "validation"))
    reference = reference_scores(runner, d, "validation", reference_label(runner, d, "validation"))
    seeds = spec.seeds[:spec.eval.tuning_seeds]
    out = {}
    for method, method_spec in spec.methods.items():
        out[method] = [merge_seeds([seed_row(runner, d, method, values, seed, base, reference) for seed in seeds
                                    if seed == seeds[0] or is_finished(runner, d, method, values, seed)])
                       for values in method_spec.grid_points()]
    return out


def next_finalists(rows: list[dict[str, Any]], count: int, margin: float, seeds: int) -> list[dict[str, Any]]:
    """The settings to check on the other tuning seeds next: none while a fully checked one passes; else the
    ``count`` best first-seed-eligible settings not yet fully checked."""
    if best_eligible(rows, margin, seeds) is not None:
        return []
    waiting = [r for r in rows if len(r["seeds"]) < seeds and passes_gate(r["fidelity_advantage"], margin)]
    return sorted(waiting, key=lambda r: (r["preference_advantage"], r["fidelity_advantage"]), reverse=True)[:count]


def recheck_jobs(runner: Runner) -> list[Job]:
    """The next round of the tuning's second step: each tuned cell's next finalists trained on the other tuning
    seeds and scored on validation prompts (empty when every cell is decided, or with one tuning seed)."""
    spec = runner.spec
    ev = spec.eval
    jobs: list[Job] = []
    if ev.tuning_seeds <= 1:
        return jobs
    for d in [d for d in spec.datasets if d.tune_from is None]:
        for method, rows in tuning_rows(runner, d).items():
            for row in next_finalists(rows, ev.tuning_finalists, ev.fidelity_margin, ev.tuning_seeds):
                for seed in spec.seeds[1:ev.tuning_seeds]:
                    jobs += runner._train_chain(d, method, row["grid"], seed, ["validation"])
    return jobs


def select_settings(runner: Runner) -> dict[str, Any]:
    """Per dataset and method, on validation prompts: every grid setting's fidelity gate and preference effect,
    and the selected setting: the largest preference advantage over the base among the eligible ones (on
    every tuning seed). No eligible setting: a failed cell (never filled in). A dataset with ``tune_from``
    carries that dataset's selection."""
    spec = runner.spec
    ev = spec.eval
    seeds = ev.tuning_seeds
    cells: dict[str, Any] = {}
    for d in [d for d in spec.datasets if d.tune_from is None]:
        reference_name = reference_label(runner, d, "validation")
        cells[d.name] = {}
        for method, rows in tuning_rows(runner, d).items():
            best = best_eligible(rows, ev.fidelity_margin, seeds)
            cell: dict[str, Any] = {"rows": rows, "preference_metric": ev.preference_metric[d.task],
                                    "fidelity_metric": ev.fidelity_metric, "reference": reference_name,
                                    "margin_sensitivity": {f"{m:g}": (best_eligible(rows, m, seeds) or {}).get("setting")
                                                           for m in (ev.fidelity_margin / 2, ev.fidelity_margin * 2)}}
            if best is not None:
                cell.update({"status": "selected", "setting": best["setting"], "grid": best["grid"],
                             "edges": grid_edges(best["grid"], spec.methods[method].grid)})
            else:
                cell.update({"status": "failed", "setting": None, "grid": None, "edges": [],
                             "reason": f"no setting's mean {ev.fidelity_metric} is within {ev.fidelity_margin:g} of "
                                       f"the {reference_name}'s" + (f" on each of the first {seeds} training seeds"
                                                                    if seeds > 1 else "")})
            cells[d.name][method] = cell
    for d in [d for d in spec.datasets if d.tune_from is not None]:
        cells[d.name] = {m: {**{k: v for k, v in cell.items() if k != "rows"}, "rows": [], "carried_from": d.tune_from}
                         for m, cell in cells[d.tune_from].items()}
    on = "first training seed" if seeds == 1 else (f"on each of the first {seeds} training seeds (every setting on "
                                                   f"the first; the {ev.tuning_finalists} best eligible there on the others)")
    return {"schema_version": SELECTION_SCHEMA, "rule": {
        "eligible": f"{reference_rule(ev)} (validation prompts, {on})",
        "selected": "largest mean preference advantage over the base among the eligible settings"
                    + (f", averaged over the {seeds} tuning seeds" if seeds > 1 else ""),
        "fidelity_reference": ev.fidelity_reference, "fidelity_margin": ev.fidelity_margin,
        "tuning_seeds": spec.seeds[:seeds]}, "cells": cells}
