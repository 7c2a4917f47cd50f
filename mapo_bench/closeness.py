"""Closeness to the data: which of two models lands its mean preference score nearer the target's.

The preference advantage rewards moving further in the preferred direction however far the data asks to go:
on a blend whose chosen images are 10% cartoon, a model that turns 70% cartoon wins on toy-style although
the data never asked for it (docs/flow.md, toy-mismatch-flow at cartoon-0.1). The target (the base prompted
with the dataset's chosen prefix, sampled on the same test prompts and seeds) shows what the data asks for,
so beside the advantage each pair of trained methods gets

    closeness(A over B) = |gap_B| - |gap_A|,   gap_X = advantage of X over the target (metric units,
                                               positive: beyond the target in the preferred direction),

positive when A's mean lands nearer the target's. Its interval takes both gaps from the same two-way
resamples (:func:`mapo_bench.stats.compare` with shared draws), so the target's own noise, shared by both,
is resampled once. |mean| is biased away from 0 when a true gap is 0 (by about its standard error); the
bias is alike for both sides and mostly cancels in the difference. A one-number summary of the preference
metric, not a distance between image distributions: it tells overshoot from faithful learning on the axis
the headline scores, nothing more.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mapo_bench.stats import percentile

TARGET = "target"


def closeness(gap_a: float, gap_b: float, draws_a: np.ndarray, draws_b: np.ndarray, ci: float = 0.95) -> dict[str, Any]:
    """A's closeness to the target over B's: ``|gap_b| - |gap_a|`` with a percentile interval.

    ``gap_a``, ``gap_b``: A's and B's advantage over the target (scalars, metric units); ``draws_a``,
    ``draws_b``: their bootstrap values ``(R,)`` from the same resamples (index i of both from one draw of
    training seeds and prompts). Returns ``closeness``, ``closeness_ci_low/high`` and ``_draws`` ``(R,)``.
    """
    draws = np.abs(np.asarray(draws_b, dtype=np.float64)) - np.abs(np.asarray(draws_a, dtype=np.float64))
    low, high = percentile(draws, ci)
    return {"closeness": float(abs(gap_b) - abs(gap_a)), "closeness_ci_low": low, "closeness_ci_high": high,
            "_draws": draws}


def side_of_target(low: float, high: float) -> str:
    """Where a model's mean lies against the target's, from the interval of its advantage over the target."""
    return "beyond the target" if low > 0 else "short of the target" if high < 0 else "level with the target"


def attach_closeness(rows: list[dict[str, Any]], draws: dict[Any, dict[str, Any]], methods: list[str]) -> None:
    """Add closeness (and each side's gap to the target) to every preference row ``a vs b`` of two trained
    ``methods`` whose ``a vs target`` and ``b vs target`` rows were resampled with kept draws; the row's
    draws get a ``closeness`` entry, so a trend can be fitted to it like to the advantage."""
    index = {(r["split"], r["view"], r["dataset"], r["comparison"]): r for r in rows if r["role"] == "preference"}
    for key, row in index.items():
        a, _, b = row["comparison"].partition(" vs ")
        if a not in methods or b not in methods or key not in draws:
            continue
        to_target = [(*key[:3], f"{m} vs {TARGET}") for m in (a, b)]
        if not all(k in index and k in draws for k in to_target):
            continue
        (row_a, row_b), (draws_a, draws_b) = [index[k] for k in to_target], [draws[k]["advantage"] for k in to_target]
        result = closeness(row_a["advantage"], row_b["advantage"], draws_a, draws_b, ci=row["ci"])
        draws[key]["closeness"] = result.pop("_draws")
        row.update(result)
        for side, other in (("a", row_a), ("b", row_b)):
            row[f"target_gap_{side}"] = other["advantage"]
            row[f"target_gap_{side}_ci"] = [other["advantage_ci_low"], other["advantage_ci_high"]]
            row[f"target_side_{side}"] = side_of_target(other["advantage_ci_low"], other["advantage_ci_high"])


def overshoots(row: dict[str, Any]) -> str | None:
    """The method whose clear lead on the preference metric comes with landing clearly farther from the data
    than the other (the lead is then an overshoot, not better learning), or None."""
    if "closeness" not in row:
        return None
    a, _, b = row["comparison"].partition(" vs ")
    if row["advantage_ci_low"] > 0 and row["closeness_ci_high"] < 0:
        return a
    if row["advantage_ci_high"] < 0 and row["closeness_ci_low"] > 0:
        return b
    return None
