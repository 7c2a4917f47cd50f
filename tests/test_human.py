"""Human votes as results (issue 16): Cohen's kappa and Bradley-Terry against hand-derived numbers, and the
``human`` block of results.json from a votes file on the synthetic run (win rates through stats.compare)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_report import make_run

from mapo_bench.human import bradley_terry, cohen_kappa


def test_cohen_kappa_by_hand():
    """x = a a b b, y = a b b b: p_o = 3/4; p_e = 0.5 * 0.25 + 0.5 * 0.75 = 0.5; kappa = 0.25 / 0.5 = 0.5.
    Perfect agreement on two labels: 1. One label from both raters: undefined (None)."""
    assert cohen_kappa(list("aabb"), list("abbb")) == pytest.approx(0.5)
    assert cohen_kappa(list("ab"), list("ab")) == pytest.approx(1.0)
    assert cohen_kappa(["tie"] * 3, ["tie"] * 3) is None
    # systematic disagreement: p_o = 0, p_e = 0.5 -> -1
    assert cohen_kappa(list("ab"), list("ba")) == pytest.approx(-1.0)


def test_bradley_terry_by_hand():
    """Two models, 0 beats 1 in 3 of 4: the MLE has sigmoid(t0 - t1) = 3/4, t0 - t1 = log 3 (the ridge moves it
    by < 1%). Two ties only: equal strengths. Mean zero always."""
    theta = bradley_terry(2, np.array([0, 0, 0, 0]), np.array([1, 1, 1, 1]), np.array([1, 1, 1, 0.0]))
    assert theta[0] - theta[1] == pytest.approx(math.log(3), rel=0.01) and theta.sum() == pytest.approx(0, abs=1e-9)
    ties = bradley_terry(2, np.array([0, 0]), np.array([1, 1]), np.array([0.5, 0.5]))
    assert ties[0] == pytest.approx(ties[1], abs=1e-6)
    # a chain 0 > 1 > 2, each 3 of 4, and no direct 0-2 votes: ordered, 0-2 gap about twice log 3
    i, j = np.array([0] * 4 + [1] * 4), np.array([1] * 4 + [2] * 4)
    chain = bradley_terry(3, i, j, np.array([1, 1, 1, 0] * 2, dtype=float))
    assert chain[0] > chain[1] > chain[2]
    assert chain[0] - chain[2] == pytest.approx(2 * math.log(3), rel=0.02)


def test_votes_become_the_human_block(tmp_path):
    """Two raters on the synthetic run's style-a: 3 prompts x 2 seeds of mapo vs dpo and mapo vs base.
    alice prefers mapo every time; bob ties on every mapo-vs-dpo pair and agrees with alice on mapo vs base.
    mapo vs dpo: 6 wins (alice) + 6 ties (bob) -> win rate (6 + 3) / 12 = 0.75; mapo vs base: 12 / 12 = 1.
    Kappa on the 12 shared pairs: p_o = 6/12, p_e = 1 * 0.5 (alice always 'a'; bob 'a' half the time) -> 0."""
    from mapo_bench.report import write_report
    from mapo_bench.results import selected_models
    from mapo_bench.votes import VOTES_FILE, RatingPair, VoteStore

    run = make_run(tmp_path)
    write_report(run)
    results = json.loads((run / "report" / "results.json").read_text())
    assert "human" not in results  # nobody voted yet
    store = VoteStore(run / VOTES_FILE)
    labels = dict(selected_models(results, "style-a"))  # column name -> run label (dpo: a failed cell here)
    labels["dpo"] = "style-a/dpo/default-s0"
    for other in ("dpo", "base"):
        for prompt in range(3):
            for seed in range(2):
                pair = RatingPair(f"{other}{prompt}{seed}", "style-a", labels["mapo"], labels[other], f"p{prompt}",
                                  prompt, seed, run / "a.png", run / "b.png")
                store.record("alice", pair, "a", pair.model_a)
                store.record("bob", pair, "tie" if other == "dpo" else "a", pair.model_a)
    store.close()
    out = write_report(run)
    human = json.loads((out / "results.json").read_text())["human"]
    assert human["votes"] == 24 and human["votes_per_rater"] == {"alice": 12, "bob": 12}
    rows = {r["model_b"]: r for r in human["rows"]}
    assert rows[labels["dpo"]]["win_rate"] == pytest.approx(0.75) and rows[labels["dpo"]]["n"] == 12
    assert rows["base"]["win_rate"] == pytest.approx(1.0) and rows["base"]["ci_low"] < 1.0  # exact bound, not [1, 1]
    assert rows["base"]["comparison"] == "mapo vs base" and rows[labels["dpo"]]["raters"] == 2
    assert human["agreement"]["pairs"][0]["shared_pairs"] == 12
    assert human["agreement"]["light_kappa"] == pytest.approx(0.0)
    bt = human["bradley_terry"]["style-a"]
    assert bt[labels["mapo"]]["theta"] > bt[labels["dpo"]]["theta"] > bt["base"]["theta"]
    assert "## Human votes" in (out / "table.md").read_text()
    assert 'id="human"' in (out / "index.html").read_text()
