"""Does an effect change with measured mismatch severity? The `trend` block of results.json (DESIGN 5c).

Primary test, one per mismatch side: the ordinary least-squares slope of an effect (the MaPO - DPO
advantage on the task's preference metric, in metric units) against the primary severity measure, with
a bootstrap interval. Each bootstrap resample takes the effect of every level from the same two-way
resample of training seeds and prompts (:func:`mapo_bench.stats.compare` with shared draws: the levels
share their test prompts and seed labels, so their errors are correlated and are resampled together),
and redraws every level's severity from a normal with the spread of its own 95% interval (severity.json
holds intervals, not draws). Verdict: "grows" if the interval lies above 0, "shrinks" if below, else
"no evidence either way". Secondary numbers (Spearman's rank correlation via scipy.stats, the win-rate
slope, other severity measures, other comparisons) are reported beside it and never override it.
"""

from __future__ import annotations

import itertools
from math import factorial
from typing import Any

import numpy as np

MIN_LEVELS = 3
Z95 = 1.959963984540054


def ols_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(..., L), (..., L) -> (...)``: least-squares slope of y on x along the last axis,
    ``sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)``; NaN when x does not vary."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    den = (dx * dx).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def severity_draws(value: float, ci_low: float | None, ci_high: float | None, resamples: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``(R,)`` draws of one level's severity: normal with sd = interval width / (2 * 1.96); fixed when the
    measure has no interval."""
    if ci_low is None or ci_high is None or not ci_high > ci_low:
        return np.full(resamples, float(value))
    return rng.normal(float(value), (float(ci_high) - float(ci_low)) / (2 * Z95), size=resamples)


def verdict(low: float, high: float) -> str:
    """The generated verdict on an effect's slope from its interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not testable"
    if low > 0:
        return "grows"
    if high < 0:
        return "shrinks"
    return "no evidence either way"


def slope_test(levels: list[dict[str, Any]], effect: str = "advantage", ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Slope of ``effect`` against severity over ``levels`` with its bootstrap interval and verdict.

    Each level: ``name``, ``x`` (severity value), ``x_ci_low``, ``x_ci_high``, ``effect`` (the point
    estimate) and ``draws`` (its bootstrap values, the same resamples at every level). Fewer than
    ``MIN_LEVELS`` levels: reported, verdict "not testable".
    """
    levels = sorted(levels, key=lambda lv: lv["x"])
    record: dict[str, Any] = {"effect": effect, "levels": [{k: lv[k] for k in ("name", "x", "x_ci_low", "x_ci_high",
                                                                              "effect")} for lv in levels],
                              "n_levels": len(levels), "ci": ci}
    if len(levels) < MIN_LEVELS:
        record.update({"slope": None, "slope_ci_low": None, "slope_ci_high": None, "verdict": "not testable",
                       "reason": f"{len(levels)} level(s); a trend needs at least {MIN_LEVELS}"})
        return record
    x = np.array([lv["x"] for lv in levels])
    y = np.array([lv["effect"] for lv in levels])
    draws = np.stack([np.asarray(lv["draws"], dtype=np.float64) for lv in levels], axis=1)  # (R, L)
    rng = np.random.default_rng([seed, 1])  # its own stream, apart from the resample indices
    xs = np.stack([severity_draws(lv["x"], lv.get("x_ci_low"), lv.get("x_ci_high"), len(draws), rng)
                   for lv in levels], axis=1)
    slopes = ols_slope(xs, draws)
    slopes = slopes[np.isfinite(slopes)]
    tail = (1.0 - ci) / 2.0
    low, high = (float(np.quantile(slopes, tail)), float(np.quantile(slopes, 1 - tail))) if len(slopes) else (np.nan, np.nan)
    rho, p = rank_correlation(x, y)
    record.update({"slope": float(ols_slope(x, y)), "slope_ci_low": low, "slope_ci_high": high,
                   "verdict": verdict(low, high), "resamples": int(len(slopes)),
                   **standing(draws, tail), "unresolved_severity": overlapping_neighbours(levels),
                   "spearman_rho": float(rho), "spearman_p": float(p),
                   "spearman_note": f"exact permutation p; with {len(levels)} levels the smallest possible "
                                    f"two-sided p is {2 / factorial(len(levels)):.3g}"})
    return record


def standing(draws: np.ndarray, tail: float) -> dict[str, int]:
    """``(R, L)`` effect draws -> how many levels have their interval above 0 (ahead) or below 0 (behind):
    a slope that "grows" from a deficit to a smaller deficit is not a lead, and the verdict line says so."""
    low = np.quantile(draws, tail, axis=0)
    high = np.quantile(draws, 1 - tail, axis=0)
    return {"levels_ahead": int((low > 0).sum()), "levels_behind": int((high < 0).sum())}


def overlapping_neighbours(levels: list[dict[str, Any]]) -> list[list[str]]:
    """Adjacent levels (sorted by severity) whose severity intervals overlap: the measure does not order
    them, so the slope rests on the levels it does separate."""
    pairs = []
    for a, b in itertools.pairwise(levels):
        if None not in (a.get("x_ci_high"), b.get("x_ci_low")) and a["x_ci_high"] >= b["x_ci_low"]:
            pairs.append([a["name"], b["name"]])
    return pairs


def standing_phrase(record: dict[str, Any]) -> str:
    """Where MaPO stands against DPO: at how many levels its interval is above / below 0 ("" for a trend
    block without a slope or from before the counts). The answer line and the plot title both say it."""
    if record.get("slope") is None or "levels_ahead" not in record:
        return ""
    n, ahead, behind = record["n_levels"], record["levels_ahead"], record["levels_behind"]
    if behind == n:
        return f"MaPO behind at all {n} levels"
    if ahead == n:
        return f"MaPO ahead at all {n} levels"
    return f"MaPO ahead at {ahead}, behind at {behind}, level with it at {n - ahead - behind} of {n} levels"


def standing_text(record: dict[str, Any]) -> str:
    """A clause on where MaPO stands beside the slope (:func:`standing_phrase`), and which neighbouring
    levels the severity measure does not separate ("" when there is nothing to add)."""
    phrase = standing_phrase(record)
    if not phrase:
        return ""
    parts = [phrase + (", so a rising slope is a shrinking deficit, not a lead"
                       if record["levels_behind"] == record["n_levels"] else "")]
    unresolved = record.get("unresolved_severity") or []
    if unresolved:
        parts.append("severity intervals overlap for " + ", ".join(" / ".join(p) for p in unresolved))
    return "; ".join(parts)


def rank_correlation(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho (scipy.stats.spearmanr) with an exact two-sided permutation p-value over every
    ordering of y (scipy.stats.permutation_test, "pairings"): with a handful of levels the usual
    t-approximation reports p near 0 for a perfect ranking of 4 points, whose exact p is 2/4! = 0.083."""
    from scipy.stats import permutation_test, spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant side has no ranking
        return float("nan"), float("nan")
    rho = float(spearmanr(x, y).statistic)
    if not np.isfinite(rho):
        return rho, float("nan")
    test = permutation_test((np.asarray(y, dtype=np.float64),), lambda yy: spearmanr(x, yy).statistic,
                            permutation_type="pairings", alternative="two-sided", n_resamples=np.inf)
    return rho, float(test.pvalue)
