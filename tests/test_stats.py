"""The one paired comparison: mean gap, win rate, two-way bootstrap, sign test over prompts, saturated
intervals, outcome tables; every expected number derived by hand in the docstrings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mapo_bench.errors import MapoBenchError
from mapo_bench.stats import (
    bootstrap_draws,
    cell_sums,
    compare,
    compare_scores,
    exact_interval,
    outcomes,
    paired_table,
    resampled_means,
    seed_t_interval,
    sign_test_p,
)


def table(a, b, prompts, train_seeds=None, seeds=None) -> pd.DataFrame:
    n = len(a)
    return pd.DataFrame({"train_seed": train_seeds if train_seeds is not None else [0] * n, "prompt_id": prompts,
                         "seed": seeds if seeds is not None else [0] * n, "a": a, "b": b})


def test_outcomes_and_ties():
    """a = [3, 2, 1, 5], b = [1, 2, 4, 0]: 1, 0.5, 0, 1. Margin 0.01 on a = [0.995, 0.9], b = [0.99, 0.95]:
    |0.005| is a tie -> 0.5, then 0."""
    assert outcomes(np.array([3.0, 2, 1, 5]), np.array([1.0, 2, 4, 0])).tolist() == [1.0, 0.5, 0.0, 1.0]
    assert outcomes(np.array([0.995, 0.9]), np.array([0.99, 0.95]), tie_margin=0.01).tolist() == [0.5, 0.0]
    assert outcomes(np.array([0.1, 0.5]), np.array([0.2, 0.2]), higher_is_better=False).tolist() == [1.0, 0.0]


def test_compare_by_hand():
    """a = [3, 2, 1, 5], b = [1, 2, 4, 0], one image per prompt: mean gap (2 + 0 - 3 + 5) / 4 = 1.0, win rate
    2.5 / 4 = 0.625; wins 2, ties 1, losses 1. Prompts: gaps 2, 0, -3, 5 -> 2 won, 1 lost: sign p = 1.0."""
    res = compare(table([3.0, 2, 1, 5], [1.0, 2, 4, 0], [0, 1, 2, 3]), resamples=200, seed=3)
    assert res["mean_gap"] == pytest.approx(1.0) and res["advantage"] == pytest.approx(1.0)
    assert res["win_rate"] == pytest.approx(0.625)
    assert (res["wins"], res["ties"], res["losses"], res["n"]) == (2, 1, 1, 4)
    assert (res["prompts_won"], res["prompts_lost"], res["sign_p"]) == (2, 1, pytest.approx(1.0))
    assert res["gap_ci_low"] <= 1.0 <= res["gap_ci_high"] and res["ci_low"] <= 0.625 <= res["ci_high"]
    assert res["gap_seed_t_low"] is None  # one training seed: no t-interval


def test_lower_is_better_flips_advantage_and_wins():
    """nsfw: A = [0.1, 0.1], B = [0.3, 0.2]: gap a - b = -0.15 (metric units), advantage +0.15, A wins both."""
    res = compare(table([0.1, 0.1], [0.3, 0.2], [0, 1]), higher_is_better=False, resamples=50)
    assert res["mean_gap"] == pytest.approx(-0.15) and res["advantage"] == pytest.approx(0.15)
    assert res["win_rate"] == 1.0 and res["prompts_won"] == 2
    assert res["advantage_ci_low"] <= 0.15 <= res["advantage_ci_high"]


def test_sign_test_counts_prompts_not_images():
    """4 prompts x 25 seeds all won: 100 images but 4 prompts, so p = 2 / 2^4 = 0.125 (not 2 / 2^100)."""
    res = compare(table(np.ones(100), np.zeros(100), np.repeat(np.arange(4), 25), seeds=np.tile(np.arange(25), 4)),
                  resamples=50)
    assert res["sign_p"] == pytest.approx(0.125) and res["prompts_won"] == 4


def test_sign_test_exact_values():
    """8 of 10: 2 * (C(10,8) + C(10,9) + C(10,10)) / 2^10 = 112/1024; 10 of 10: 2/1024; none: 1."""
    assert sign_test_p(8, 2) == pytest.approx(112 / 1024)
    assert sign_test_p(2, 8) == pytest.approx(112 / 1024)
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert sign_test_p(0, 0) == 1.0


def test_saturated_win_rate_gets_an_exact_bound_not_a_point():
    """Every pair won on 4 prompts x 3 seeds: every resample is 1, so the bootstrap interval would be [1, 1].
    The 4 (seed, prompt) cells are the independent units: Clopper-Pearson for 4 of 4 at 95% has lower bound
    0.025^(1/4) = 0.3976 and upper bound 1."""
    res = compare(table(np.ones(12), np.zeros(12), np.repeat(np.arange(4), 3), seeds=np.tile(np.arange(3), 4)),
                  resamples=50)
    assert res["win_rate"] == 1.0
    assert res["ci_low"] == pytest.approx(0.025 ** 0.25, abs=1e-4) and res["ci_high"] == 1.0
    assert "exact" in res["win_ci_method"]
    assert exact_interval(4, 4) == (pytest.approx(0.3976, abs=1e-4), 1.0)


def test_training_seeds_enter_the_bootstrap():
    """One prompt, two training seeds with gaps 1 and 0. Seeds resampled with replacement: (0, 0) 1/4 -> 1,
    (1, 1) 1/4 -> 0, mixed 1/2 -> 0.5; a prompt-only bootstrap would give a zero-width interval."""
    sums, counts = cell_sums(np.array([0, 1]), np.array([0, 0]), np.array([1.0, 0.0]), 2, 1)
    means = resampled_means(sums, counts, bootstrap_draws(2, 1, 4000, seed=0))[:, 0]
    values, hits = np.unique(means, return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0]
    np.testing.assert_allclose(hits / hits.sum(), [0.25, 0.5, 0.25], atol=0.03)
    res = compare(table([1.0, 0.0], [0.0, 0.0], [7, 7], train_seeds=[0, 1]), resamples=4000)
    assert (res["gap_ci_low"], res["gap_ci_high"]) == (0.0, 1.0)


def test_crossed_resample_keeps_cells_whole_by_hand():
    """Seeds x prompts 2 x 2; cell (s, p) holds gaps: (0,0): [1, 3] (two sampling seeds), (0,1): [10],
    (1,0): [0], (1,1): [4]. Draw seeds (0, 0) and prompts (1, 0): cells (0,1), (0,0), (0,1), (0,0) ->
    sums 10 + 4 + 10 + 4 = 28 over counts 1 + 2 + 1 + 2 = 6 -> 14/3."""
    sums, counts = cell_sums(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 0, 1]), np.array([1.0, 3, 10, 0, 4]), 2, 2)
    draws = (np.array([[0, 0]]), np.array([[1, 0]]))
    assert resampled_means(sums, counts, draws)[0, 0] == pytest.approx(28 / 6)


def test_seed_t_interval_by_hand():
    """Per-seed means 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.3027 -> half-width 4.3027 / sqrt(3) = 2.4841."""
    low, high = seed_t_interval(np.array([1.0, 2.0, 3.0]), 0.95)
    assert (low, high) == (pytest.approx(2 - 2.4841, abs=1e-4), pytest.approx(2 + 2.4841, abs=1e-4))
    assert seed_t_interval(np.array([1.0]), 0.95) is None


def test_outcome_tables_use_the_same_function():
    """Votes: A, tie, B, A on 4 prompts -> win rate (1 + 0.5 + 0 + 1) / 4 = 0.625; no score gap."""
    votes = pd.DataFrame({"train_seed": 0, "prompt_id": [0, 1, 2, 3], "seed": 0, "outcome": [1.0, 0.5, 0.0, 1.0]})
    res = compare(votes, resamples=100)
    assert res["win_rate"] == pytest.approx(0.625) and "mean_gap" not in res
    assert (res["prompts_won"], res["prompts_lost"]) == (2, 1)
    with pytest.raises(MapoBenchError, match="outcomes must be"):
        compare(votes.assign(outcome=[1.0, 2.0, 0.0, 1.0]))


def test_paired_table_pairs_the_base_with_every_training_seed():
    """A has seeds 0 and 1 on one (prompt, seed); the base has one row: two paired rows, gaps 0.5 and 0.7."""
    a = pd.DataFrame({"metric": "m", "prompt_id": [0, 0], "seed": [0, 0], "score": [1.0, 1.2], "train_seed": [0, 1]})
    base = pd.DataFrame({"metric": "m", "prompt_id": [0], "seed": [0], "score": [0.5]})
    joined = paired_table(a, base, "m")
    assert sorted(joined["a"] - joined["b"]) == [pytest.approx(0.5), pytest.approx(0.7)]
    assert sorted(joined["train_seed"]) == [0, 1]


def test_bootstrap_is_seeded_and_narrows_with_more_prompts():
    """Outcomes i.i.d. Bernoulli(0.7) per prompt: the 95% interval of 400 prompts is about
    sqrt(0.21 / 400) * 3.92 = 0.09 wide, of 25 prompts about 0.36; the same seed gives the same result."""
    rng = np.random.default_rng(1)
    wins = (rng.random(400) < 0.7).astype(float)
    big = table(wins, np.full(400, 0.5), np.arange(400))
    assert compare(big, resamples=500, seed=7) == compare(big, resamples=500, seed=7)
    r = compare(big, resamples=500, seed=7)
    small = compare(big.iloc[:25], resamples=500, seed=7)
    assert r["ci_high"] - r["ci_low"] == pytest.approx(0.09, abs=0.03)
    assert small["ci_high"] - small["ci_low"] == pytest.approx(0.36, abs=0.1)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(MapoBenchError, match="no paired"):
        compare(table([], [], []))
    with pytest.raises(MapoBenchError, match="NaN"):
        compare(table([np.nan], [1.0], [0]))
    with pytest.raises(MapoBenchError, match="ci must be"):
        compare(table([1.0], [0.0], [0]), ci=1.5)


def _scores(model: str, values: list[float], metric: str = "pickscore", higher: bool = True) -> pd.DataFrame:
    return pd.DataFrame({"model": model, "metric": metric, "metric_version": "1", "score": values,
                         "prompt_id": list(range(len(values))), "seed": 0, "prompt": [f"p{i}" for i in range(len(values))],
                         "higher_is_better": higher})


def test_compare_scores_reads_direction_and_checks_pairing(tmp_path):
    """pickscore A = [2, 3], B = [1, 1]: gap +1.5, A wins both. nsfw (lower is better) A = [0.1, 0.2],
    B = [0.3, 0.1]: gap -0.05, advantage +0.05, win rate 0.5."""
    both = pd.concat([_scores("A", [2.0, 3.0]), _scores("B", [1.0, 1.0]),
                      _scores("A", [0.1, 0.2], "nsfw", False), _scores("B", [0.3, 0.1], "nsfw", False)])
    res = compare_scores(both, model_a="A", model_b="B", resamples=100)
    assert res["metrics"]["pickscore"]["mean_gap"] == pytest.approx(1.5)
    assert res["metrics"]["pickscore"]["win_rate"] == 1.0
    assert res["metrics"]["nsfw"]["advantage"] == pytest.approx(0.05)
    assert res["metrics"]["nsfw"]["win_rate"] == 0.5 and res["metrics"]["nsfw"]["higher_is_better"] is False
    both[both["model"] == "A"].to_parquet(tmp_path / "a.parquet")
    (tmp_path / "b").mkdir()
    both[both["model"] == "B"].to_parquet(tmp_path / "b" / "scores.parquet")
    assert compare_scores(tmp_path / "a.parquet", tmp_path / "b", resamples=100)["metrics"]["pickscore"]["n"] == 2
    assert compare_scores(both, model_b="B", resamples=10)["model_a"] == "A"
    with pytest.raises(MapoBenchError, match="holds models"):
        compare_scores(pd.concat([both, _scores("C", [1.0, 1.0])]))
    with pytest.raises(MapoBenchError, match="did you mean 'A'"):
        compare_scores(both, model_a="AA", model_b="B")
    with pytest.raises(MapoBenchError, match="different versions"):
        compare_scores(_scores("A", [1.0, 2.0]), _scores("B", [1.0, 2.0]).assign(metric_version="2"))
    with pytest.raises(MapoBenchError, match="is 'p0' in A"):
        compare_scores(_scores("A", [1.0, 2.0]), _scores("B", [1.0, 2.0]).assign(prompt=["x", "y"]))


def _grid_scores(model: str, values: dict[tuple[int, int], float]) -> pd.DataFrame:
    return pd.DataFrame([{"prompt_id": p, "prompt": f"prompt {p}", "seed": s, "model": model, "metric": "m",
                          "metric_version": "1", "score": v, "higher_is_better": True} for (p, s), v in values.items()])


def test_compare_scores_pairs_by_prompt_and_seed():
    """A beats B on (0,0), (0,1), (1,0); ties on (1,1); B's extra image (2,0) is unpaired.
    win rate = (1 + 1 + 1 + 0.5) / 4 = 0.875; mean gap = (1 + 2 + 3 + 0) / 4 = 1.5."""
    a = _grid_scores("A", {(0, 0): 2.0, (0, 1): 3.0, (1, 0): 4.0, (1, 1): 1.0})
    b = _grid_scores("B", {(0, 0): 1.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 1.0, (2, 0): 9.0})
    res = compare_scores(pd.concat([a, b]), model_a="A", model_b="B", resamples=100, seed=0)
    m = res["metrics"]["m"]
    assert m["win_rate"] == pytest.approx(0.875) and m["mean_gap"] == pytest.approx(1.5)
    assert (m["n"], m["unpaired_a"], m["unpaired_b"]) == (4, 0, 1)
    assert "not adjusted" in res["note"]
    with pytest.raises(MapoBenchError, match="several scores"):
        compare_scores(pd.concat([a, a]), b)


def test_saturation_bound_counts_prompts_and_only_at_zero_or_one():
    """2 training seeds x 4 prompts, all won: the bound is still over the 4 prompts (cells sharing a prompt
    are not independent): 0.025^(1/4) = 0.3976. Every prompt exactly tied: win rate 0.5 with a zero-width
    bootstrap, which is reported as degenerate, not replaced by a bound."""
    won = compare(table(np.ones(8), np.zeros(8), np.tile(np.arange(4), 2), train_seeds=np.repeat([0, 1], 4)),
                  resamples=50)
    assert won["ci_low"] == pytest.approx(0.025 ** 0.25, abs=1e-4) and "4 prompts" in won["win_ci_method"]
    tied = compare(table(np.ones(4), np.ones(4), np.arange(4)), resamples=50)
    assert (tied["win_rate"], tied["ci_low"], tied["ci_high"]) == (0.5, 0.5, 0.5)
    assert tied["win_ci_method"].startswith("degenerate")


def test_sign_test_ties_prompts_within_the_margin():
    """Prompt mean gaps +0.005, +0.2, -0.3 with margin 0.01: one tie, one win, one loss."""
    res = compare(table([0.505, 0.7, 0.2], [0.5, 0.5, 0.5], [0, 1, 2]), tie_margin=0.01, resamples=20)
    assert (res["prompts_won"], res["prompts_lost"]) == (1, 1)


def test_no_training_seed_ignores_the_shared_seed_axis_and_duplicates_are_refused():
    """base vs target (neither has training seeds) with shared seed labels [1, 2] (no 0): compared on one
    seed axis. A duplicated (prompt, seed) row is one line, not a silent extra pair."""
    a = pd.DataFrame({"metric": "m", "prompt_id": [0, 1], "seed": 0, "score": [1.0, 2.0]})
    b = a.assign(score=[0.5, 0.5])
    res = compare(paired_table(a, b, "m"), seed_labels=np.array([1, 2]), resamples=20)
    assert res["mean_gap"] == pytest.approx(1.0) and res["n_train_seeds"] == 1
    with pytest.raises(MapoBenchError, match="several scores"):
        paired_table(pd.concat([a, a]), b, "m")


def test_seed_t_interval_of_the_advantage_follows_the_direction():
    """Lower is better, per-seed gaps -0.1 and -0.3 (A lower, so better): advantage +0.2 with a seed
    t-interval around +0.2, i.e. the gap's interval negated and reordered."""
    res = compare(table([0.1, 0.0], [0.2, 0.3], [0, 0], train_seeds=[0, 1]), higher_is_better=False, resamples=20)
    assert res["advantage"] == pytest.approx(0.2)
    assert res["advantage_seed_t_low"] == pytest.approx(-res["gap_seed_t_high"])
    assert res["advantage_seed_t_low"] < 0.2 < res["advantage_seed_t_high"]
