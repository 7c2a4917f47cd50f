"""Win rates of model A over model B on paired images, with a prompt-level bootstrap and a sign test.

REFERENCE.md section 5: per (prompt, seed) pair the outcome is 1 if A scores better than B, 0.5 if
equal, 0 otherwise; the win rate is their mean. The 95% interval is a percentile bootstrap that
resamples prompts with replacement, each drawn prompt bringing all its seeds (seeds nested in
prompts: a cluster bootstrap, since images of one prompt are not independent); its resample count and
seed are recorded. The sign test is the two-sided exact binomial test of wins against losses (ties
dropped). Intervals are not adjusted for multiple comparisons.
"""

from __future__ import annotations

from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench.errors import MapoBenchError

MULTIPLE_COMPARISONS_NOTE = "intervals and p-values are not adjusted for multiple comparisons"
PAIR_KEYS = ("prompt_id", "seed")


def outcomes(a: np.ndarray, b: np.ndarray, higher_is_better: bool = True, tie_margin: float = 0.0) -> np.ndarray:
    """``(N,), (N,) -> (N,)``: 1 where A beats B, 0.5 on ties, 0 where B beats A.

    ``tie_margin`` (score units, default 0 = REFERENCE 5's exact ties): ``|a - b| <= tie_margin`` is a
    tie, for scores whose small differences are noise (a classifier probability near 1).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    better = a > b if higher_is_better else a < b
    tie = a == b if tie_margin <= 0 else np.abs(a - b) <= tie_margin
    return np.where(tie, 0.5, better.astype(np.float64))


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` among ``wins + losses`` trials at p = 1/2.

    ``p = min(1, 2 * min(P(X <= wins), P(X >= wins)))``, X ~ Binomial(wins + losses, 1/2); 1.0 with no trials.
    Exact integer arithmetic, so large counts do not underflow to a wrong value.
    """
    m = wins + losses
    if m == 0:
        return 1.0
    low = sum(comb(m, i) for i in range(0, wins + 1))
    high = sum(comb(m, i) for i in range(wins, m + 1))
    return min(1.0, 2 * min(low, high) / 2**m)


def bootstrap_win_rates(out: np.ndarray, groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` win rates, each over a resample (with replacement) of the groups, all members kept."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=out)
    counts = np.bincount(inverse).astype(np.float64)
    k = len(sums)
    rng = np.random.default_rng(seed)
    rates = np.empty(resamples, dtype=np.float64)
    block = max(1, min(resamples, 2_000_000 // max(k, 1)))
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, k, size=(stop - start, k))
        rates[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return rates


def paired_win_rate(a: Any, b: Any, groups: Any, resamples: int = 1000, seed: int = 0, ci: float = 0.95,
                    higher_is_better: bool = True, tie_margin: float = 0.0) -> dict[str, Any]:
    """Win rate of A over B on paired scores.

    ``a``, ``b``: ``(N,)`` scores of the same (prompt, seed) items; ``groups``: ``(N,)`` prompt ids (the
    bootstrap unit). Returns ``win_rate``, ``ci_low``, ``ci_high`` (percentile bootstrap), ``n``,
    ``mean_gap`` (mean of a - b, in score units), ``sign_p``, ``resamples``, ``seed`` plus ``wins``,
    ``ties``, ``losses``, ``n_prompts`` and ``ci``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not (len(a) == len(b) == len(groups)):
        raise MapoBenchError(f"paired_win_rate: lengths differ (a {len(a)}, b {len(b)}, groups {len(groups)})")
    if len(a) == 0:
        raise MapoBenchError("paired_win_rate: no paired items (do A and B share prompt ids and seeds?)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MapoBenchError("paired_win_rate: scores contain NaN or inf")
    if not 0.0 < ci < 1.0:
        raise MapoBenchError(f"paired_win_rate: ci must be in (0, 1), got {ci}")
    if resamples < 1:
        raise MapoBenchError(f"paired_win_rate: resamples must be >= 1, got {resamples}")
    out = outcomes(a, b, higher_is_better, tie_margin)
    wins = int((out == 1.0).sum())
    losses = int((out == 0.0).sum())
    rates = bootstrap_win_rates(out, groups, resamples, seed)
    tail = (1.0 - ci) / 2.0
    return {
        "win_rate": float(out.mean()),
        "ci_low": float(np.quantile(rates, tail)),
        "ci_high": float(np.quantile(rates, 1.0 - tail)),
        "n": int(len(out)),
        "mean_gap": float((a - b).mean()),
        "sign_p": sign_test_p(wins, losses),
        "resamples": int(resamples),
        "seed": int(seed),
        "wins": wins,
        "ties": int(len(out) - wins - losses),
        "losses": losses,
        "n_prompts": int(len(np.unique(groups))),
        "ci": float(ci),
        "tie_margin": float(tie_margin),
    }


def read_scores(source: Any) -> Any:
    """A scores DataFrame from a DataFrame, a ``scores.parquet`` file or a folder holding one."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "scores.parquet"
    if not path.is_file():
        raise MapoBenchError(f"{path}: no scores file; pass a scores.parquet or the folder `mapo-bench eval` wrote")
    frame = pd.read_parquet(path)
    missing = [c for c in ("model", "metric", "score", *PAIR_KEYS) if c not in frame.columns]
    if missing:
        raise MapoBenchError(f"{path}: not a scores table (missing columns {', '.join(missing)})")
    return frame


def _pick_model(frame: Any, wanted: str | None, where: str, exclude: str | None = None) -> str:
    models = sorted(str(m) for m in frame["model"].unique())
    if wanted is not None:
        if wanted not in models:
            from mapo_bench.registry import suggest

            raise MapoBenchError(f"{where}: no model {wanted!r}{suggest(wanted, models)}; models: {', '.join(models)}")
        return wanted
    left = [m for m in models if m != exclude]
    if len(left) == 1:
        return left[0]
    raise MapoBenchError(f"{where}: holds models {', '.join(models)}; name one with --model-a / --model-b")


def compare_scores(scores_a: Any, scores_b: Any = None, model_a: str | None = None, model_b: str | None = None,
                   resamples: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Per metric, the win rate of ``model_a`` over ``model_b`` on images paired by (prompt_id, seed).

    ``scores_b=None``: both models are in ``scores_a``. A metric present on one side only is listed in
    ``skipped``. Direction follows each metric's ``higher_is_better`` column (nsfw: lower wins).
    """
    frame_a = read_scores(scores_a)
    frame_b = read_scores(scores_b) if scores_b is not None else frame_a
    where_a = str(scores_a) if not hasattr(scores_a, "columns") else "scores A"
    where_b = str(scores_b) if scores_b is not None and not hasattr(scores_b, "columns") else where_a
    if scores_b is None and model_a is None and model_b is not None:
        model_a = _pick_model(frame_a, None, where_a, exclude=model_b)
    model_a = _pick_model(frame_a, model_a, where_a, exclude=model_b if scores_b is None else None)
    model_b = _pick_model(frame_b, model_b, where_b, exclude=model_a if scores_b is None else None)
    if scores_b is None and model_a == model_b:
        raise MapoBenchError(f"{where_a}: model A and model B are both {model_a!r}; name two different models")
    rows_a = frame_a[frame_a["model"] == model_a]
    rows_b = frame_b[frame_b["model"] == model_b]
    metrics_a, metrics_b = set(rows_a["metric"]), set(rows_b["metric"])
    result: dict[str, Any] = {
        "model_a": model_a, "model_b": model_b, "resamples": int(resamples), "seed": int(seed), "ci": ci,
        "pair_keys": list(PAIR_KEYS), "note": MULTIPLE_COMPARISONS_NOTE, "metrics": {},
        "skipped": sorted(metrics_a ^ metrics_b),
    }
    for metric in sorted(metrics_a & metrics_b):
        result["metrics"][metric] = _compare_metric(rows_a[rows_a["metric"] == metric],
                                                    rows_b[rows_b["metric"] == metric], metric, resamples, seed, ci)
    if not result["metrics"]:
        raise MapoBenchError(f"models {model_a!r} and {model_b!r} share no metric "
                             f"(A: {', '.join(sorted(metrics_a)) or 'none'}; B: {', '.join(sorted(metrics_b)) or 'none'})")
    return result


def _compare_metric(rows_a: Any, rows_b: Any, metric: str, resamples: int, seed: int, ci: float) -> dict[str, Any]:
    for rows, side in ((rows_a, "A"), (rows_b, "B")):
        duplicated = rows.duplicated(list(PAIR_KEYS))
        if duplicated.any():
            first = rows[duplicated].iloc[0]
            raise MapoBenchError(f"metric {metric!r}: model {side} has several scores for prompt_id "
                                 f"{first['prompt_id']} seed {first['seed']}; evaluate each sample folder once")
    versions = {str(v) for v in rows_a.get("metric_version", [])} | {str(v) for v in rows_b.get("metric_version", [])}
    if len(versions) > 1:
        raise MapoBenchError(f"metric {metric!r}: A and B were scored with different versions ({', '.join(sorted(versions))})")
    merged = rows_a.merge(rows_b, on=list(PAIR_KEYS), suffixes=("_a", "_b"))
    if "prompt_a" in merged.columns:
        differ = merged["prompt_a"] != merged["prompt_b"]
        if differ.any():
            row = merged[differ].iloc[0]
            raise MapoBenchError(f"metric {metric!r}: prompt_id {row['prompt_id']} is {row['prompt_a']!r} in A but "
                                 f"{row['prompt_b']!r} in B; sample both models from the same prompt source")
    higher = bool(rows_a["higher_is_better"].iloc[0]) if "higher_is_better" in rows_a.columns else True
    stats = paired_win_rate(merged["score_a"].to_numpy(), merged["score_b"].to_numpy(), merged["prompt_id"].to_numpy(),
                            resamples=resamples, seed=seed, ci=ci, higher_is_better=higher)
    stats["higher_is_better"] = higher
    stats["unpaired_a"] = int(len(rows_a) - len(merged))
    stats["unpaired_b"] = int(len(rows_b) - len(merged))
    stats["mean_a"] = float(merged["score_a"].mean())
    stats["mean_b"] = float(merged["score_b"].mean())
    return stats
