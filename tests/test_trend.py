"""The trend test: OLS slope, its bootstrap over effect and severity draws, the verdict, exact rank p."""

from __future__ import annotations

import numpy as np
import pytest

from mapo_bench.trend import (
    ols_slope,
    rank_correlation,
    severity_draws,
    slope_test,
    standing_phrase,
    standing_text,
    verdict,
)


def level(name: str, x: float, effect: float, draws: np.ndarray, x_ci: tuple[float, float] | None = None) -> dict:
    low, high = x_ci if x_ci else (None, None)
    return {"name": name, "x": x, "x_ci_low": low, "x_ci_high": high, "effect": effect, "draws": draws}


def test_ols_slope_by_hand():
    """x = 0, 1, 2 and y = 1, 3, 5: slope 2. Constant x: undefined (NaN). Batched along the last axis."""
    assert ols_slope(np.array([0.0, 1, 2]), np.array([1.0, 3, 5])) == pytest.approx(2.0)
    assert np.isnan(ols_slope(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])))
    np.testing.assert_allclose(ols_slope(np.array([[0.0, 1], [0, 2]]), np.array([[0.0, 1], [0, 1]])), [1.0, 0.5])


def test_verdict_rules():
    assert verdict(0.1, 0.3) == "grows"
    assert verdict(-0.3, -0.1) == "shrinks"
    assert verdict(-0.1, 0.3) == "no evidence either way"
    assert verdict(float("nan"), 1.0) == "not testable"


def test_slope_test_with_fixed_draws_is_exact():
    """Effects 0.1, 0.2, 0.3 at x = 1, 2, 3 with no spread anywhere: every draw's slope is 0.1, the interval
    is [0.1, 0.1] and the verdict "grows"; the rank correlation is perfect, exact p = 2 / 3! = 1/3."""
    levels = [level(f"l{i}", float(i), 0.1 * i, np.full(200, 0.1 * i)) for i in (1, 2, 3)]
    res = slope_test(levels)
    assert res["slope"] == pytest.approx(0.1)
    assert (res["slope_ci_low"], res["slope_ci_high"]) == (pytest.approx(0.1), pytest.approx(0.1))
    assert res["verdict"] == "grows" and res["spearman_rho"] == pytest.approx(1.0)
    assert res["spearman_p"] == pytest.approx(1 / 3)


def test_effect_noise_widens_the_interval_to_no_evidence():
    """Effect draws N(level mean, 0.5) around a true slope of 0.01 per unit x: the interval covers 0."""
    rng = np.random.default_rng(0)
    levels = [level(f"l{i}", float(i), 0.01 * i, 0.01 * i + rng.normal(0, 0.5, 1000)) for i in (1, 2, 3, 4)]
    res = slope_test(levels)
    assert res["slope_ci_low"] < 0 < res["slope_ci_high"] and res["verdict"] == "no evidence either way"


def test_severity_is_resampled_from_its_interval():
    """A 95% interval [0.9, 1.1] gives draws with sd 0.2 / 3.92 = 0.051; no interval gives the value itself."""
    rng = np.random.default_rng(0)
    draws = severity_draws(1.0, 0.9, 1.1, 20000, rng)
    assert draws.std() == pytest.approx(0.2 / 3.92, rel=0.03) and draws.mean() == pytest.approx(1.0, abs=0.002)
    assert (severity_draws(2.0, None, None, 5, rng) == 2.0).all()


def test_too_few_levels_are_not_testable():
    res = slope_test([level("a", 1.0, 0.1, np.zeros(10)), level("b", 2.0, 0.2, np.zeros(10))])
    assert res["verdict"] == "not testable" and res["slope"] is None and "at least 3" in res["reason"]


def test_rank_correlation_exact_p_for_four_levels():
    """A perfect ranking of 4 levels: rho = 1 and exact two-sided p = 2 / 4! = 0.0833 (the t-approximation
    would say 0)."""
    rho, p = rank_correlation(np.array([1.0, 2, 3, 4]), np.array([0.1, 0.2, 0.5, 0.9]))
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24)


def test_a_rising_deficit_is_not_called_a_lead():
    """Effects -0.3, -0.2, -0.1 (no spread) at x = 0, 0.0005, 0.004 with intervals [-0.001, 0.001],
    [0, 0.0012], [0.003, 0.005]: the slope is positive ("grows"), MaPO is behind at all 3 levels, and
    the first two severity intervals overlap; the standing clause says both."""
    xs = [(0.0, (-0.001, 0.001)), (0.0005, (0.0, 0.0012)), (0.004, (0.003, 0.005))]
    levels = [level(f"l{i}", x, e, np.full(100, e), ci) for i, ((x, ci), e) in enumerate(zip(xs, (-0.3, -0.2, -0.1), strict=True))]
    res = slope_test(levels)
    assert res["verdict"] == "grows"
    assert (res["levels_ahead"], res["levels_behind"]) == (0, 3)
    assert res["unresolved_severity"] == [["l0", "l1"]]
    text = standing_text(res)
    assert "behind at all 3 levels" in text and "shrinking deficit" in text and "l0 / l1" in text


def test_standing_counts_levels_whose_interval_excludes_zero():
    """Draws N(0.5, 0.01), N(0, 0.01), N(-0.5, 0.01): one level ahead, one behind, one level with DPO."""
    rng = np.random.default_rng(1)
    levels = [level(f"l{i}", float(i), m, m + rng.normal(0, 0.01, 500)) for i, m in enumerate((0.5, 0.0, -0.5))]
    res = slope_test(levels)
    assert (res["levels_ahead"], res["levels_behind"]) == (1, 1)
    assert standing_text(res) == "MaPO ahead at 1, behind at 1, level with it at 1 of 3 levels"


def test_standing_phrase_counts_levels_for_the_answer_and_the_plot_title():
    """A "grows" from behind must not read as a lead: the phrase counts levels ahead / behind / level
    (n - ahead - behind), and is empty without a slope or without the counts."""
    assert standing_phrase({"slope": 0.1, "n_levels": 3, "levels_ahead": 0, "levels_behind": 2}) == \
        "MaPO ahead at 0, behind at 2, level with it at 1 of 3 levels"
    assert standing_phrase({"slope": 0.1, "n_levels": 3, "levels_ahead": 0, "levels_behind": 3}) == \
        "MaPO behind at all 3 levels"
    assert standing_phrase({"slope": 0.1, "n_levels": 6, "levels_ahead": 6, "levels_behind": 0}) == \
        "MaPO ahead at all 6 levels"
    assert standing_phrase({"slope": None, "n_levels": 1, "levels_ahead": 0, "levels_behind": 0}) == ""
    assert standing_phrase({"slope": 0.1, "n_levels": 6}) == ""  # a trend block from before the counts
