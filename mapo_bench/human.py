"""Human votes as results (issue 16): the ``human`` block of results.json.

- Win rates: each vote is an outcome (1 = model A preferred, 0.5 tie, 0 = B) on one (prompt, sampling seed)
  item, compared through ``stats.compare`` like every other metric (intervals: the bootstrap over prompts;
  several raters' votes on one item stay in that prompt's cell).
- Votes per rater, and agreement where raters overlap: Cohen's kappa per pair of raters on the pairs both
  rated (three categories: A, B, tie; Cohen 1960), and their mean (Light's kappa, Light 1971).
- With three or more models rated in a dataset: a Bradley-Terry rating of each (Bradley & Terry 1952;
  P(i beats j) = sigmoid(theta_i - theta_j), ties half a win each, the model the paper's preference
  objective assumes), fitted by maximum likelihood with a weak ridge (``BT_RIDGE``) so a model that wins
  every vote keeps a finite rating, with a percentile bootstrap CI over prompts.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

OUTCOME = {"a": 1.0, "tie": 0.5, "b": 0.0}
BT_RIDGE = 1e-3  # penalty weight on sum(theta^2): keeps perfectly separated ratings finite


def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e), p_o the observed
    agreement and p_e the agreement expected from each rater's label frequencies. None when p_e = 1 (both
    raters always gave one and the same label: agreement cannot be told from chance)."""
    if len(x) != len(y) or not x:
        raise ValueError("cohen_kappa: two equally long, non-empty label lists")
    labels = sorted(set(x) | set(y))
    xs, ys = np.array(x), np.array(y)
    observed = float((xs == ys).mean())
    expected = float(sum((xs == label).mean() * (ys == label).mean() for label in labels))
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def bradley_terry(n_models: int, i: np.ndarray, j: np.ndarray, outcome: np.ndarray,
                  ridge: float = BT_RIDGE) -> np.ndarray:
    """Bradley-Terry log-strengths ``theta`` (``(n_models,)``, mean 0) from comparisons ``i`` vs ``j`` with
    ``outcome`` 1 (i won), 0.5 (tie: half a win each) or 0. Maximises
    sum[o log s(t_i - t_j) + (1 - o) log s(t_j - t_i)] - ridge * sum(t^2) with scipy's L-BFGS."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    i, j, outcome = np.asarray(i), np.asarray(j), np.asarray(outcome, dtype=np.float64)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta[i] - theta[j]
        value = -(outcome * log_expit(d) + (1 - outcome) * log_expit(-d)).sum() + ridge * (theta ** 2).sum()
        g = -(outcome - expit(d))
        grad = np.bincount(i, g, n_models) - np.bincount(j, g, n_models) + 2 * ridge * theta
        return float(value), grad

    theta = minimize(loss, np.zeros(n_models), jac=True, method="L-BFGS-B").x
    return theta - theta.mean()


def _bt_with_ci(frame: Any, models: list[str], resamples: int, seed: int, ci: float) -> dict[str, Any]:
    index = {m: k for k, m in enumerate(models)}
    i = frame["model_a"].map(index).to_numpy()
    j = frame["model_b"].map(index).to_numpy()
    outcome = frame["choice"].map(OUTCOME).to_numpy()
    theta = bradley_terry(len(models), i, j, outcome)
    prompts = frame["prompt_id"].to_numpy()
    unique = np.unique(prompts)
    rng = np.random.default_rng(seed)
    rows_of = {p: np.flatnonzero(prompts == p) for p in unique}
    draws = []
    for _ in range(resamples):
        take = np.concatenate([rows_of[p] for p in rng.choice(unique, len(unique))])
        draws.append(bradley_terry(len(models), i[take], j[take], outcome[take]))
    low, high = np.percentile(np.array(draws), [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return {m: {"theta": float(theta[k]), "ci_low": float(low[k]), "ci_high": float(high[k])}
            for m, k in index.items()}


def agreement(votes: Any) -> dict[str, Any]:
    """Cohen's kappa for every pair of raters who rated common pairs, and Light's kappa (their mean)."""
    by_rater = {r: dict(zip(g["pair_id"], g["choice"], strict=True)) for r, g in votes.groupby("rater")}
    pairs = []
    for r1, r2 in combinations(sorted(by_rater), 2):
        shared = sorted(set(by_rater[r1]) & set(by_rater[r2]))
        if shared:
            kappa = cohen_kappa([by_rater[r1][p] for p in shared], [by_rater[r2][p] for p in shared])
            pairs.append({"raters": [r1, r2], "shared_pairs": len(shared), "cohen_kappa": kappa})
    kappas = [p["cohen_kappa"] for p in pairs if p["cohen_kappa"] is not None]
    return {"pairs": pairs, "light_kappa": float(np.mean(kappas)) if kappas else None,
            "note": "no two raters rated a common pair" if not pairs else None}


def human_block(run_dir: Path, results: dict[str, Any], resamples: int = 1000, seed: int = 0,
                ci: float = 0.95) -> dict[str, Any] | None:
    """The ``human`` block from ``<run>/votes.sqlite`` (None when nobody voted)."""
    import pandas as pd

    from mapo_bench.results import selected_models
    from mapo_bench.stats import compare
    from mapo_bench.votes import read_votes

    votes = read_votes(run_dir)
    if not len(votes):
        return None
    rows, ratings = [], {}
    for (dataset, a, b), group in votes.groupby(["dataset", "model_a", "model_b"], sort=True):
        names = {label: name for name, label in selected_models(results, dataset)} if dataset in results["severity"] else {}
        table = pd.DataFrame({"train_seed": 0, "prompt_id": group["prompt_id"], "seed": group["seed"],
                              "outcome": group["choice"].map(OUTCOME)})
        row = compare(table, resamples=resamples, seed=seed, ci=ci)
        rows.append({"dataset": dataset, "comparison": f"{names.get(a, a)} vs {names.get(b, b)}", "model_a": a,
                     "model_b": b, "metric": "human", "raters": int(group["rater"].nunique()), **row})
    for dataset, group in votes.groupby("dataset", sort=True):
        models = sorted(set(group["model_a"]) | set(group["model_b"]))
        if len(models) >= 3:
            ratings[dataset] = _bt_with_ci(group, models, resamples, seed, ci)
    return {"votes": int(len(votes)), "votes_per_rater": {str(k): int(v) for k, v in votes["rater"].value_counts().sort_index().items()},
            "rows": rows, "agreement": agreement(votes), "bradley_terry": ratings,
            "note": "ties count half; intervals bootstrap prompts (one training seed rated)"}
