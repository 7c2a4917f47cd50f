"""Win rate, prompt-level bootstrap and sign test on synthetic data with answers derived by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mapo_bench.errors import MapoBenchError
from mapo_bench.stats import compare_scores, outcomes, paired_win_rate, sign_test_p


def test_outcomes_and_win_rate_with_ties():
    """a = [3, 2, 1, 5], b = [1, 2, 4, 0]: outcomes 1, 0.5, 0, 1 -> win rate 2.5 / 4 = 0.625;
    mean gap = (2 + 0 - 3 + 5) / 4 = 1.0; wins 2, ties 1, losses 1; sign test on 2 wins of 3
    non-ties: 2 * min(P(X<=2), P(X>=2)) = 2 * 4/8 = 1.0."""
    a, b = np.array([3.0, 2, 1, 5]), np.array([1.0, 2, 4, 0])
    assert outcomes(a, b).tolist() == [1.0, 0.5, 0.0, 1.0]
    res = paired_win_rate(a, b, groups=[0, 1, 2, 3], resamples=200, seed=3)
    assert res["win_rate"] == pytest.approx(0.625)
    assert res["mean_gap"] == pytest.approx(1.0)
    assert (res["wins"], res["ties"], res["losses"], res["n"]) == (2, 1, 1, 4)
    assert res["sign_p"] == pytest.approx(1.0)
    assert res["resamples"] == 200 and res["seed"] == 3
    assert 0.0 <= res["ci_low"] <= res["win_rate"] <= res["ci_high"] <= 1.0


def test_tie_margin_by_hand():
    """a = [0.995, 0.90, 0.50, 0.70], b = [0.99, 0.95, 0.50, 0.60]. Exact ties only: 1, 0, 0.5, 1 -> 0.625.
    Margin 0.01: |0.005| is a tie -> 0.5, 0, 0.5, 1 -> 0.5; wins 1, ties 2, losses 1."""
    a, b = np.array([0.995, 0.90, 0.50, 0.70]), np.array([0.99, 0.95, 0.50, 0.60])
    assert outcomes(a, b).tolist() == [1.0, 0.0, 0.5, 1.0]
    assert outcomes(a, b, tie_margin=0.01).tolist() == [0.5, 0.0, 0.5, 1.0]
    res = paired_win_rate(a, b, [0, 1, 2, 3], resamples=10, tie_margin=0.01)
    assert res["win_rate"] == pytest.approx(0.5) and (res["wins"], res["ties"], res["losses"]) == (1, 2, 1)
    assert res["tie_margin"] == 0.01


def test_lower_is_better_flips_outcomes():
    """nsfw: a lower score wins. a = [0.1, 0.5], b = [0.2, 0.2] -> outcomes 1, 0 -> 0.5."""
    res = paired_win_rate([0.1, 0.5], [0.2, 0.2], [0, 1], resamples=10, higher_is_better=False)
    assert res["win_rate"] == pytest.approx(0.5)
    assert outcomes(np.array([0.1, 0.5]), np.array([0.2, 0.2]), higher_is_better=False).tolist() == [1.0, 0.0]


def test_sign_test_exact_values():
    """8 wins, 2 losses: P(X >= 8) = (C(10,8) + C(10,9) + C(10,10)) / 2^10 = 56/1024, two-sided 112/1024.
    10 wins 0 losses: 2 / 2^10. No non-ties: 1. Symmetric: p(2, 8) = p(8, 2)."""
    assert sign_test_p(8, 2) == pytest.approx(112 / 1024)
    assert sign_test_p(2, 8) == pytest.approx(112 / 1024)
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 5) == 1.0
    assert 0.0 < sign_test_p(600, 400) < 1e-9  # large counts stay exact (no underflow to 0 or NaN)


def test_all_wins_give_degenerate_interval():
    """Every pair won: every bootstrap resample has win rate 1, so the interval is [1, 1]."""
    res = paired_win_rate(np.ones(12), np.zeros(12), np.repeat(np.arange(4), 3), resamples=50)
    assert (res["win_rate"], res["ci_low"], res["ci_high"]) == (1.0, 1.0, 1.0)
    assert res["n_prompts"] == 4


def test_bootstrap_resamples_prompts_with_seeds_nested():
    """Prompt P wins on its 3 seeds, prompt Q loses on its 1 seed. Resampling 2 prompts with their seeds:
    PP (prob 1/4) -> 6/6 = 1; QQ (1/4) -> 0/2 = 0; PQ or QP (1/2) -> 3/4. So the bootstrap distribution
    is {0: 1/4, 0.75: 1/2, 1: 1/4} (a seed-level bootstrap would instead give many other values), and the
    95% interval is [0, 1]. The point estimate is 3/4."""
    a = np.array([1.0, 1.0, 1.0, 0.0])
    b = np.array([0.0, 0.0, 0.0, 1.0])
    groups = np.array(["P", "P", "P", "Q"])
    from mapo_bench.stats import bootstrap_win_rates

    rates = bootstrap_win_rates(outcomes(a, b), groups, resamples=4000, seed=0)
    values, counts = np.unique(rates, return_counts=True)
    assert values.tolist() == [0.0, 0.75, 1.0]
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.03)
    res = paired_win_rate(a, b, groups, resamples=4000, seed=0)
    assert res["win_rate"] == pytest.approx(0.75)
    assert (res["ci_low"], res["ci_high"]) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_narrows_with_more_prompts():
    """Same seed -> same interval; with outcomes i.i.d. Bernoulli(0.7) per prompt the interval of 400 prompts
    is about sqrt(0.21/400) * 3.92 = 0.09 wide, of 25 prompts about 0.36."""
    rng = np.random.default_rng(1)
    wins = rng.random(400) < 0.7
    r1 = paired_win_rate(wins.astype(float), np.zeros(400) + 0.5, np.arange(400), resamples=500, seed=7)
    r2 = paired_win_rate(wins.astype(float), np.zeros(400) + 0.5, np.arange(400), resamples=500, seed=7)
    assert r1 == r2
    small = paired_win_rate(wins[:25].astype(float), np.zeros(25) + 0.5, np.arange(25), resamples=500, seed=7)
    assert r1["ci_high"] - r1["ci_low"] == pytest.approx(0.09, abs=0.03)
    assert small["ci_high"] - small["ci_low"] == pytest.approx(0.36, abs=0.1)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(MapoBenchError, match="lengths differ"):
        paired_win_rate([1.0], [1.0, 2.0], [0])
    with pytest.raises(MapoBenchError, match="no paired"):
        paired_win_rate([], [], [])
    with pytest.raises(MapoBenchError, match="NaN"):
        paired_win_rate([np.nan], [1.0], [0])


def _scores(model: str, values: dict[tuple[int, int], float], metric: str = "m", higher: bool = True) -> pd.DataFrame:
    rows = [{"image_id": f"{model}/{p}-{s}", "prompt_id": p, "prompt": f"prompt {p}", "seed": s, "model": model,
             "metric": metric, "metric_version": "1", "score": v, "higher_is_better": higher}
            for (p, s), v in values.items()]
    return pd.DataFrame(rows)


def test_compare_scores_pairs_by_prompt_and_seed(tmp_path):
    """A beats B on (0,0), (0,1), (1,0); ties on (1,1); B's extra image (2,0) is unpaired.
    win rate = (1 + 1 + 1 + 0.5) / 4 = 0.875; mean gap = (1 + 2 + 3 + 0) / 4 = 1.5."""
    a = _scores("A", {(0, 0): 2.0, (0, 1): 3.0, (1, 0): 4.0, (1, 1): 1.0})
    b = _scores("B", {(0, 0): 1.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 1.0, (2, 0): 9.0})
    both = pd.concat([a, b])
    res = compare_scores(both, model_a="A", model_b="B", resamples=100, seed=0)
    m = res["metrics"]["m"]
    assert m["win_rate"] == pytest.approx(0.875) and m["mean_gap"] == pytest.approx(1.5)
    assert (m["n"], m["unpaired_a"], m["unpaired_b"]) == (4, 0, 1)
    assert "not adjusted" in res["note"]
    # two files, model inferred from each file
    a.to_parquet(tmp_path / "a.parquet")
    (tmp_path / "b").mkdir()
    b.to_parquet(tmp_path / "b" / "scores.parquet")
    res2 = compare_scores(tmp_path / "a.parquet", tmp_path / "b", resamples=100, seed=0)
    assert res2["metrics"]["m"]["win_rate"] == pytest.approx(0.875)
    assert (res2["model_a"], res2["model_b"]) == ("A", "B")
    # one model named, the other inferred
    assert compare_scores(both, model_b="B", resamples=10)["model_a"] == "A"


def test_compare_scores_errors():
    a = _scores("A", {(0, 0): 1.0})
    b = _scores("B", {(0, 0): 1.0})
    c = _scores("C", {(0, 0): 1.0})
    with pytest.raises(MapoBenchError, match="name one"):
        compare_scores(pd.concat([a, b, c]))
    with pytest.raises(MapoBenchError, match="did you mean 'A'"):
        compare_scores(pd.concat([a, b]), model_a="AA", model_b="B")
    other = b.assign(prompt="something else")
    with pytest.raises(MapoBenchError, match="same prompt source"):
        compare_scores(a, other)
    with pytest.raises(MapoBenchError, match="different versions"):
        compare_scores(a, b.assign(metric_version="2"))
