"""The one paired comparison of mapo-bench: effect size (mean gap) first, win rate second.

REFERENCE.md section 5 and DESIGN.md 5c. Two models are compared on images of the same (training seed,
prompt, sampling seed); a model without training seeds (the base) is paired with every seed. Per item
the gap is ``a - b`` in the metric's own units and the outcome is 1 if A is better (the metric's
direction decides), 0.5 on a tie (``|a - b| <= tie_margin``), 0 otherwise. ``compare`` is used by
``mapo-bench compare``, by the runner's selection and by the report; a human-vote table (outcomes without
scores) goes through the same function.

Intervals: a two-way cluster bootstrap (Owen's "pigeonhole" bootstrap for crossed designs): each
resample draws training seeds and prompts independently with replacement and keeps every
(drawn seed, drawn prompt) cell whole, so sampling seeds stay nested in prompts and both the
training-seed and the prompt variance enter. Beside it, with two or more training seeds, a t-interval
over the per-seed mean gaps. A win-rate interval that a saturated bootstrap would collapse to one point
is replaced by an exact (Clopper-Pearson) bound over the prompts, the coarsest independent unit, and
marked so. The sign test counts prompts (a prompt wins when its mean advantage exceeds the tie margin),
not images, because images of one prompt are not independent. Nothing is adjusted for multiple comparisons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench.errors import MapoBenchError

MULTIPLE_COMPARISONS_NOTE = "intervals and p-values are not adjusted for multiple comparisons"
PAIR_KEYS = ("prompt_id", "seed")
UNIT_KEYS = ("train_seed", "prompt_id", "seed")
NO_TRAIN_SEED = -1  # paired_table's train_seed when neither side has one (base vs target, a mean)
BOOTSTRAP_UNIT = "two-way: training seeds x prompts (sampling seeds nested in prompts)"


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
    """Two-sided exact binomial (sign) test of ``wins`` among ``wins + losses`` at p = 1/2 (scipy.stats.binomtest);
    1.0 with no trials."""
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(int(wins), int(wins + losses), 0.5).pvalue)


def exact_interval(successes: int, trials: int, ci: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion (scipy.stats.binomtest), e.g. ``(0.735, 1.0)`` for 12 of 12."""
    from scipy.stats import binomtest

    low, high = binomtest(int(successes), int(trials), 0.5).proportion_ci(confidence_level=ci, method="exact")
    return float(low), float(high)


# -- the two-way cluster bootstrap --------------------------------------------------------------------
def cell_sums(seed_index: np.ndarray, prompt_index: np.ndarray, values: np.ndarray, n_seeds: int,
              n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N,), (N,), (N, K) -> sums (S, P, K), counts (S, P)``: per (training seed, prompt) cell."""
    values = np.asarray(values, dtype=np.float64).reshape(len(seed_index), -1)
    flat = np.asarray(seed_index) * n_prompts + np.asarray(prompt_index)
    sums = np.stack([np.bincount(flat, weights=values[:, k], minlength=n_seeds * n_prompts)
                     for k in range(values.shape[1])], axis=-1).reshape(n_seeds, n_prompts, -1)
    counts = np.bincount(flat, minlength=n_seeds * n_prompts).astype(np.float64).reshape(n_seeds, n_prompts)
    return sums, counts


def bootstrap_draws(n_seeds: int, n_prompts: int, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index draws ``(R, S)`` of training seeds and ``(R, P)`` of prompts, with replacement, from one
    generator. Comparisons that share seeds and prompts (the levels of a trend) reuse the same draws."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, size=(resamples, n_seeds)), rng.integers(0, n_prompts, size=(resamples, n_prompts))


def resampled_means(sums: np.ndarray, counts: np.ndarray, draws: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``(S, P, K), (S, P), draws -> (R, K)``: the pooled mean of each resample (ratio of summed cells)."""
    seed_idx, prompt_idx = draws
    resamples, n_seeds = seed_idx.shape
    n_prompts = prompt_idx.shape[1]
    out = np.empty((resamples, sums.shape[-1]), dtype=np.float64)
    block = max(1, 4_000_000 // max(1, n_seeds * n_prompts * sums.shape[-1]))
    for start in range(0, resamples, block):
        s = seed_idx[start:start + block, :, None]
        p = prompt_idx[start:start + block, None, :]
        total = counts[s, p].sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + block] = sums[s, p].sum(axis=(1, 2)) / total[:, None]
    return out


def percentile(values: np.ndarray, ci: float) -> tuple[float, float]:
    """The percentile interval of finite bootstrap values (NaN, NaN when there are none)."""
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = (1.0 - ci) / 2.0
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def seed_t_interval(per_seed: np.ndarray, ci: float) -> tuple[float, float] | None:
    """Student-t interval of the mean over training seeds' means (scipy.stats.t); None with < 2 seeds."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    if len(per_seed) < 2:
        return None
    from scipy.stats import t

    half = float(t.ppf(0.5 + ci / 2.0, len(per_seed) - 1) * per_seed.std(ddof=1) / np.sqrt(len(per_seed)))
    return float(per_seed.mean() - half), float(per_seed.mean() + half)


# -- pairing --------------------------------------------------------------------------------------------
def paired_table(a: Any, b: Any, metric: str | None = None) -> Any:
    """Scores of A and B (DataFrames with ``score`` and the pair keys) joined into one table with columns
    ``train_seed, prompt_id, seed, a, b``. A side without ``train_seed`` (the base) pairs with every seed."""
    import pandas as pd

    sides = []
    for frame in (a, b):
        if metric is not None:
            frame = frame[frame["metric"] == metric]
        sides.append(frame)
    a, b = sides
    keys = list(PAIR_KEYS)
    has_a, has_b = "train_seed" in a.columns, "train_seed" in b.columns
    if has_a and has_b:
        keys = ["train_seed", *keys]
    left = a[[*keys, "score"] + (["train_seed"] if has_a and not has_b else [])].rename(columns={"score": "a"})
    right = b[[*keys, "score"] + (["train_seed"] if has_b and not has_a else [])].rename(columns={"score": "b"})
    validate = "many_to_one" if has_a and not has_b else "one_to_many" if has_b and not has_a else "one_to_one"
    try:
        joined = left.merge(right, on=keys, how="inner", validate=validate)
    except pd.errors.MergeError:
        raise MapoBenchError(f"{'metric ' + repr(metric) + ': ' if metric else ''}a model has several scores for one "
                             f"({', '.join(keys)}); evaluate each sample folder once") from None
    if "train_seed" not in joined.columns:
        joined["train_seed"] = NO_TRAIN_SEED
    if joined.empty:
        raise MapoBenchError(f"no paired images{f' for metric {metric!r}' if metric else ''}: were both models "
                             "sampled on the same prompts and seeds?")
    return pd.DataFrame({k: joined[k].to_numpy() for k in (*UNIT_KEYS, "a", "b")})


def _labels(values: Any, labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
    labels = np.unique(np.asarray(values)) if labels is None else np.asarray(labels)
    index = np.searchsorted(labels, np.asarray(values))
    if (index >= len(labels)).any() or (labels[np.minimum(index, len(labels) - 1)] != np.asarray(values)).any():
        raise MapoBenchError("compare: a unit label is missing from the shared labels")
    return labels, index


def compare(table: Any, higher_is_better: bool = True, tie_margin: float = 0.0, resamples: int = 1000, seed: int = 0,
            ci: float = 0.95, seed_labels: Any = None, prompt_labels: Any = None,
            keep_draws: bool = False) -> dict[str, Any]:
    """Paired comparison of A over B: mean gap with intervals, then the win rate with its interval.

    ``table``: a DataFrame from :func:`paired_table` (``train_seed, prompt_id, seed, a, b``) or an outcome
    table (``train_seed, prompt_id, seed, outcome``, e.g. human votes: 1 = A preferred, 0.5 tie, 0 = B).
    Returns ``mean_gap`` (mean of a - b, metric units) with ``gap_ci_low/high`` (bootstrap) and
    ``gap_seed_t_low/high``; ``advantage`` (the gap signed so that positive means A is better) with its
    interval; ``win_rate`` with ``ci_low/high`` and ``win_ci_method``; ``wins/ties/losses`` over images;
    the prompt-level sign test (``prompts_won/lost``, ``sign_p``); counts; and the bootstrap settings.
    ``seed_labels`` / ``prompt_labels`` fix the resampling axes so several comparisons can share draws;
    ``keep_draws`` adds the bootstrap ``advantage`` and ``win_rate`` values (``_draws``) for a trend.
    """
    if not 0.0 < ci < 1.0:
        raise MapoBenchError(f"compare: ci must be in (0, 1), got {ci}")
    if resamples < 1:
        raise MapoBenchError(f"compare: resamples must be >= 1, got {resamples}")
    if len(table) == 0:
        raise MapoBenchError("compare: no paired items (do A and B share prompt ids and seeds?)")
    votes = "outcome" in table.columns
    if votes:
        out = table["outcome"].to_numpy(dtype=np.float64)
        if not np.isin(out, (0.0, 0.5, 1.0)).all():
            raise MapoBenchError("compare: outcomes must be 1 (A preferred), 0.5 (tie) or 0 (B preferred)")
        gap = np.full(len(out), np.nan)
    else:
        a, b = table["a"].to_numpy(dtype=np.float64), table["b"].to_numpy(dtype=np.float64)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise MapoBenchError("compare: scores contain NaN or inf")
        out = outcomes(a, b, higher_is_better, tie_margin)
        gap = a - b
    sign = 1.0 if higher_is_better else -1.0
    if (table["train_seed"] == NO_TRAIN_SEED).all():
        seed_labels = None  # no training seeds to resample (e.g. the base against its target)
    seeds, seed_index = _labels(table["train_seed"].to_numpy(), seed_labels)
    prompts, prompt_index = _labels(table["prompt_id"].to_numpy(), prompt_labels)
    values = np.stack([np.nan_to_num(gap), out], axis=1)
    sums, counts = cell_sums(seed_index, prompt_index, values, len(seeds), len(prompts))
    draws = resampled_means(sums, counts, bootstrap_draws(len(seeds), len(prompts), resamples, seed))
    wins, losses = int((out == 1.0).sum()), int((out == 0.0).sum())
    result: dict[str, Any] = {"n": int(len(out)), "n_train_seeds": int((counts.sum(axis=1) > 0).sum()),
                              "n_prompts": int((counts.sum(axis=0) > 0).sum()), "ci": float(ci),
                              "higher_is_better": bool(higher_is_better), "tie_margin": float(tie_margin),
                              "resamples": int(resamples), "seed": int(seed), "bootstrap": BOOTSTRAP_UNIT}
    if not votes:
        mean_gap = float(gap.mean())
        low, high = percentile(draws[:, 0], ci)
        per_seed = np.array([gap[seed_index == i].mean() for i in np.unique(seed_index)])
        t_ci = seed_t_interval(per_seed, ci)
        method = ("bootstrap" if high > low else "no finite resample" if not np.isfinite(low)
                  else "degenerate: every resample gives the same gap")
        result.update({"mean_gap": mean_gap, "gap_ci_low": low, "gap_ci_high": high,
                       "gap_seed_t_low": t_ci[0] if t_ci else None, "gap_seed_t_high": t_ci[1] if t_ci else None,
                       "gap_ci_method": method, "advantage": sign * mean_gap,
                       **_signed("advantage_ci", low, high, sign),
                       **(_signed("advantage_seed_t", *t_ci, sign) if t_ci else
                          {"advantage_seed_t_low": None, "advantage_seed_t_high": None}),
                       "mean_a": float(table["a"].mean()), "mean_b": float(table["b"].mean())})
    win_rate = float(out.mean())
    low, high = percentile(draws[:, 1], ci)
    method = "bootstrap"
    n_prompts = int((counts.sum(axis=0) > 0).sum())
    if high <= low and win_rate in (0.0, 1.0):  # every resample saturated: an exact bound instead
        low, high = exact_interval(round(win_rate * n_prompts), n_prompts, ci)
        method = (f"exact binomial bound over the {n_prompts} prompts (every bootstrap resample saturated; prompts "
                  "are the coarsest independent unit)")
    elif high <= low:
        method = "degenerate: every resample gives the same win rate"
    per_prompt = np.maximum(counts.sum(axis=0), 1)
    if votes:
        prompt_adv, margin = sums[..., 1].sum(axis=0) / per_prompt - 0.5, 0.0
    else:
        prompt_adv, margin = sign * sums[..., 0].sum(axis=0) / per_prompt, tie_margin
    present = counts.sum(axis=0) > 0
    won, lost = int((prompt_adv[present] > margin).sum()), int((prompt_adv[present] < -margin).sum())
    result.update({"win_rate": win_rate, "ci_low": low, "ci_high": high, "win_ci_method": method,
                   "wins": wins, "ties": int(len(out) - wins - losses), "losses": losses,
                   "prompts_won": won, "prompts_lost": lost, "sign_p": sign_test_p(won, lost)})
    if keep_draws:
        result["_draws"] = {"advantage": sign * draws[:, 0] if not votes else None, "win_rate": draws[:, 1]}
    return result


def _signed(prefix: str, low: float, high: float, sign: float) -> dict[str, float]:
    """An interval of a - b as an interval of the advantage (the gap times the metric's direction)."""
    return {f"{prefix}_low": min(sign * low, sign * high), f"{prefix}_high": max(sign * low, sign * high)}


def half_width(row: dict[str, Any]) -> float:
    """Half the width of a comparison's mean-gap interval (the wider of the bootstrap and the seed t-interval)."""
    widths = [row["gap_ci_high"] - row["gap_ci_low"]]
    if row.get("gap_seed_t_low") is not None:
        widths.append(row["gap_seed_t_high"] - row["gap_seed_t_low"])
    return float(max(widths) / 2.0)


# -- score files ---------------------------------------------------------------------------------------
def read_scores(source: Any) -> Any:
    """A scores DataFrame from a DataFrame, a ``scores.parquet`` file or a folder holding one."""
    import pandas as pd

    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "scores.parquet"
    if not path.is_file():
        raise MapoBenchError(f"{path}: no scores file; pass a scores.parquet or the folder `mapo-bench eval` wrote "
                             "(inside a run folder: rerun `mapo-bench run` to finish its eval jobs)")
    frame = pd.read_parquet(path)
    missing = [c for c in ("model", "metric", "score", *PAIR_KEYS) if c not in frame.columns]
    if missing:
        raise MapoBenchError(f"{path}: not a scores table (missing columns {', '.join(missing)})")
    return frame


def metric_direction(frame: Any, metric: str) -> bool:
    """Whether higher is better for ``metric``: the scores' own column, else the evaluator registry."""
    rows = frame[frame["metric"] == metric] if "metric" in frame.columns else frame
    if "higher_is_better" in rows.columns and len(rows):
        return bool(rows["higher_is_better"].iloc[0])
    from mapo_bench.registry import EVALUATORS

    return bool(EVALUATORS.get(EVALUATORS.check(metric)).higher_is_better)


def compare_frames(a: Any, b: Any, metric: str, tie_margin: float = 0.0, resamples: int = 1000, seed: int = 0,
                   ci: float = 0.95, **labels: Any) -> dict[str, Any]:
    """:func:`compare` of two score frames on ``metric``, direction read from the scores."""
    return compare(paired_table(a, b, metric), higher_is_better=metric_direction(a, metric), tie_margin=tie_margin,
                   resamples=resamples, seed=seed, ci=ci, **labels)


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
                   resamples: int = 1000, seed: int = 0, ci: float = 0.95,
                   tie_margins: dict[str, float] | None = None) -> dict[str, Any]:
    """``mapo-bench compare``: per metric, :func:`compare` of ``model_a`` over ``model_b`` on images paired by
    (prompt_id, seed). ``scores_b=None``: both models are in ``scores_a``. A metric present on one side only
    is listed in ``skipped``. Direction follows each metric's ``higher_is_better`` (nsfw: lower wins)."""
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
        a, b = rows_a[rows_a["metric"] == metric], rows_b[rows_b["metric"] == metric]
        _check_pairable(a, b, metric)
        stats = compare_frames(a, b, metric, tie_margin=(tie_margins or {}).get(metric, 0.0), resamples=resamples,
                               seed=seed, ci=ci)
        stats["unpaired_a"] = int(len(a) - stats["n"])
        stats["unpaired_b"] = int(len(b) - stats["n"])
        result["metrics"][metric] = stats
    if not result["metrics"]:
        raise MapoBenchError(f"models {model_a!r} and {model_b!r} share no metric "
                             f"(A: {', '.join(sorted(metrics_a)) or 'none'}; B: {', '.join(sorted(metrics_b)) or 'none'})")
    return result


def _check_pairable(rows_a: Any, rows_b: Any, metric: str) -> None:
    """One score per (prompt, seed) and side, one metric version, the same prompt text behind each id."""
    for rows, side in ((rows_a, "A"), (rows_b, "B")):
        duplicated = rows.duplicated([k for k in UNIT_KEYS if k in rows.columns])
        if duplicated.any():
            first = rows[duplicated].iloc[0]
            raise MapoBenchError(f"metric {metric!r}: model {side} has several scores for prompt_id "
                                 f"{first['prompt_id']} seed {first['seed']}; evaluate each sample folder once")
    versions = {str(v) for v in rows_a.get("metric_version", [])} | {str(v) for v in rows_b.get("metric_version", [])}
    if len(versions) > 1:
        raise MapoBenchError(f"metric {metric!r}: A and B were scored with different versions ({', '.join(sorted(versions))})")
    if "prompt" in rows_a.columns and "prompt" in rows_b.columns:
        merged = rows_a.merge(rows_b, on=list(PAIR_KEYS), suffixes=("_a", "_b"))
        differ = merged["prompt_a"] != merged["prompt_b"]
        if differ.any():
            row = merged[differ].iloc[0]
            raise MapoBenchError(f"metric {metric!r}: prompt_id {row['prompt_id']} is {row['prompt_a']!r} in A but "
                                 f"{row['prompt_b']!r} in B; sample both models from the same prompt source")
