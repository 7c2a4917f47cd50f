"""Closeness to the data (closeness.py) against numbers derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mapo_bench.closeness import attach_closeness, closeness, overshoots, side_of_target


def test_closeness_is_the_difference_of_absolute_gaps_with_paired_draws():
    """A short of the target by 0.02, B beyond it by 0.66: A is nearer by 0.66 - 0.02 = 0.64. Draws pair by
    index: |b| - |a| = |0.5|-|0.1|, |-0.3|-|-0.1|, |0.1|-|0|, |0.1|-|0.2| = 0.4, 0.2, 0.1, -0.1; the 50%
    interval's ends are numpy's linear quantiles 0.25 and 0.75 of the sorted (-0.1, 0.1, 0.2, 0.4): -0.1 +
    0.75 x 0.2 = 0.05 and 0.2 + 0.25 x 0.2 = 0.25."""
    result = closeness(-0.02, 0.66, np.array([0.1, -0.1, 0.0, 0.2]), np.array([0.5, -0.3, 0.1, 0.1]), ci=0.5)
    assert result["closeness"] == pytest.approx(0.64)
    assert result["_draws"] == pytest.approx([0.4, 0.2, 0.1, -0.1])
    assert (result["closeness_ci_low"], result["closeness_ci_high"]) == pytest.approx((0.05, 0.25))


def test_the_side_of_the_target_needs_an_interval_clear_of_zero():
    assert side_of_target(0.01, 0.2) == "beyond the target"
    assert side_of_target(-0.2, -0.01) == "short of the target"
    assert side_of_target(-0.01, 0.2) == "level with the target"


def _row(comparison, advantage, low, high, dataset="d"):
    return {"split": "test", "view": "tuned", "dataset": dataset, "comparison": comparison, "role": "preference",
            "advantage": advantage, "advantage_ci_low": low, "advantage_ci_high": high, "ci": 0.95}


def test_attach_closeness_pairs_each_method_with_its_gap_to_the_target():
    """mapo 0.02 beyond the target, dpo 0.08 short of it: mapo is nearer by 0.08 - 0.02 = 0.06; with every draw
    equal to the point estimate the interval is that point. Rows of a model against the base or the target get
    nothing; a pair without both target rows gets nothing."""
    rows = [_row("mapo vs dpo", 0.1, 0.1, 0.1), _row("mapo vs target", 0.02, 0.01, 0.03),
            _row("dpo vs target", -0.08, -0.09, -0.07), _row("mapo vs base", 0.2, 0.1, 0.3),
            _row("mapo vs dpo", 0.1, 0.1, 0.1, dataset="safety")]
    draws = {("test", "tuned", r["dataset"], r["comparison"]): {"advantage": np.full(10, r["advantage"])} for r in rows}
    attach_closeness(rows, draws, ["mapo", "dpo"])
    pair = rows[0]
    assert pair["closeness"] == pytest.approx(0.06)
    assert (pair["closeness_ci_low"], pair["closeness_ci_high"]) == pytest.approx((0.06, 0.06))
    assert pair["target_gap_a"] == 0.02 and pair["target_gap_b_ci"] == [-0.09, -0.07]
    assert (pair["target_side_a"], pair["target_side_b"]) == ("beyond the target", "short of the target")
    assert draws[("test", "tuned", "d", "mapo vs dpo")]["closeness"] == pytest.approx(np.full(10, 0.06))
    assert all("closeness" not in r for r in rows[1:])


def test_an_overshoot_is_a_clear_lead_that_lands_clearly_farther_from_the_data():
    """DPO ahead (advantage of mapo over dpo below 0) and MaPO clearly nearer: DPO's lead is the overshoot;
    MaPO ahead and nearer is no overshoot; an interval touching 0 on either is none either."""
    base = {"comparison": "mapo vs dpo", "closeness": 0.6}
    assert overshoots({**base, "advantage_ci_low": -0.8, "advantage_ci_high": -0.5,
                       "closeness_ci_low": 0.5, "closeness_ci_high": 0.7}) == "dpo"
    assert overshoots({**base, "advantage_ci_low": 0.1, "advantage_ci_high": 0.3,
                       "closeness_ci_low": -0.3, "closeness_ci_high": -0.1}) == "mapo"
    assert overshoots({**base, "advantage_ci_low": 0.1, "advantage_ci_high": 0.3,
                       "closeness_ci_low": 0.1, "closeness_ci_high": 0.3}) is None
    assert overshoots({**base, "advantage_ci_low": -0.8, "advantage_ci_high": -0.5,
                       "closeness_ci_low": -0.1, "closeness_ci_high": 0.7}) is None
    assert overshoots({"comparison": "mapo vs dpo", "advantage_ci_low": 0.1, "advantage_ci_high": 0.3}) is None
