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


def test_weighted_kid_matches_hand_numbers_with_a_cluster_drawn_twice():
    """1-d features, kernel (a b + 1)^3: k(0,0) = k(0,1) = k(0,2) = 1, k(1,1) = 8, k(1,2) = 27, k(2,2) = 125.
    x = {0, 1} (clusters 0, 1), y = {0, 2} (clusters 0, 1). Every weight 1: within x = k(0,1) = 1, within y =
    k(0,2) = 1, cross = (1 + 1 + 1 + 27) / 4 = 7.5, KID = 1 + 1 - 15 = -13 (= kid()). x's cluster 0 drawn twice,
    {0, 0', 1}: within x leaves out the pair (0, 0'), so its 4 ordered pairs all have k = 1; cross = (2 x (1 + 1)
    + 1 + 27) / 6 = 32 / 6; KID = 2 - 64 / 6 = -26 / 3. Only copies of one image on a side: NaN."""
    from mapo_bench.severity_math import cluster_kernel_sums, kid, weighted_kid

    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    sums = cluster_kernel_sums(x, np.array([0, 1]), 2, y, np.array([0, 1]), 2)
    assert weighted_kid(sums, np.ones(2), np.ones(2))[0] == pytest.approx(-13.0) == kid(x, y)
    assert weighted_kid(sums, np.array([2.0, 1.0]), np.ones(2))[0] == pytest.approx(-26.0 / 3.0)
    assert np.isnan(weighted_kid(sums, np.array([2.0, 0.0]), np.ones(2))[0])


def test_cluster_weights_count_each_cell_of_a_two_way_draw():
    """Seeds drawn (1, 1), prompts (0, 2, 2): seed counts (0, 2), prompt counts (1, 0, 2); cell s * 3 + p weighs
    2 x (1, 0, 2) on seed 1 and nothing on seed 0; a model without seeds weighs the prompts alone."""
    from mapo_bench.closeness import cluster_weights

    draws = (np.array([[1, 1]]), np.array([[0, 2, 2]]))
    assert cluster_weights(draws, 2, 3, with_seeds=True).tolist() == [[0, 0, 0, 2, 0, 4]]
    assert cluster_weights(draws, 2, 3, with_seeds=False).tolist() == [[1, 0, 2]]


def test_kid_to_target_points_are_plain_kid_and_closeness_is_their_difference():
    """The point estimate of each model is kid() of its features and the target's (every cell once); a model
    drawn like the target is nearer than a shifted one, and kid_closeness is KID_b - KID_a per resample."""
    from mapo_bench.closeness import kid_closeness, kid_to_target
    from mapo_bench.severity_math import kid
    from mapo_bench.stats import bootstrap_draws

    rng = np.random.default_rng(0)
    target = rng.normal(size=(12, 4))
    prompts = np.tile(np.arange(3), 4)
    near = rng.normal(size=(24, 4))
    far = rng.normal(size=(24, 4)) + 2.0
    seeds = np.repeat([0, 1], 12)
    models = {"near": (near, seeds, np.tile(prompts, 2)), "far": (far, seeds, np.tile(prompts, 2)),
              "base": (near[:12], None, prompts)}
    result = kid_to_target(models, (target, prompts), 2, 3, bootstrap_draws(2, 3, 200, 0))
    for name, (features, _, _) in models.items():
        assert result[name]["kid"] == pytest.approx(kid(features, target))
    assert result["near"]["kid"] < result["far"]["kid"]
    pair = kid_closeness(result["near"], result["far"])
    assert pair["kid_closeness"] == pytest.approx(result["far"]["kid"] - result["near"]["kid"])
    assert pair["ci_low"] > 0
