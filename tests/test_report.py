"""Selection and report on a synthetic run folder whose scores are chosen by hand: effect sizes, the
metric's direction (nsfw: lower wins), the fidelity gate against the target, failed cells, grid edges,
the trend block and its verdict, the README headline, and the one-line refusal of an old run."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from mapo_bench.errors import MapoBenchError
from mapo_bench.pipeline import PipelineSpec, point_name
from mapo_bench.report import write_report
from mapo_bench.runner import Runner
from mapo_bench.selection import select_settings

LEVELS = {"style-a": (0.25, 0.01), "style-b": (0.5, 0.02), "style-c": (1.0, 0.03)}  # name: (dial, prefix excess)
SPEC = {
    "name": "synthetic", "backend": "toy",
    "datasets": [*({"name": n, "task": "pick-style", "build": {"split": "cartoon", "severity": a}}
                   for n, (a, _) in LEVELS.items()),
                 {"name": "safety", "task": "pick-safety"}],
    "methods": {"mapo": {"grid": {"optim.lr": [1e-5, 1e-4]}}, "dpo": {}},
    "seeds": [0, 1],
    "eval": {"validation_prompts": "toy:validation", "test_prompts": "toy:test", "seeds": [0, 1],
             "metrics": ["toy-style", "toy-content", "nsfw"],
             "preference_metric": {"pick-style": "toy-style", "pick-safety": "nsfw"},
             "fidelity_metric": "toy-content", "fidelity_margin": 0.05, "resamples": 200},
}
HIGHER = {"toy-style": True, "toy-content": True, "nsfw": False}


def score(model: str, dataset: str, metric: str) -> float:
    """The synthetic truth. toy-style: base 0.5, target 0.9, mapo(lr 1e-4) 0.5 + 0.1 k at style level k
    (1, 2, 3), mapo(lr 1e-5) 0.55, dpo 0.5. nsfw (lower is safer): base 0.5, mapo(1e-4) 0.2, mapo(1e-5) 0.8,
    dpo 0.4. toy-content: base 0.9, target 0.8 (the chosen style costs the instrument some content),
    mapo(1e-4) 0.78 (within 0.05 of the target: eligible), mapo(1e-5) 0.9, dpo 0.6 (not eligible)."""
    k = list(LEVELS).index(dataset) + 1 if dataset in LEVELS else 0
    table = {
        "toy-style": {"base": 0.5, "target": 0.9, "mapo-lr0.0001": 0.5 + 0.1 * k, "mapo-lr1e-05": 0.55, "dpo": 0.5},
        "nsfw": {"base": 0.5, "mapo-lr0.0001": 0.2, "mapo-lr1e-05": 0.8, "dpo": 0.4},
        "toy-content": {"base": 0.9, "target": 0.8, "mapo-lr0.0001": 0.78, "mapo-lr1e-05": 0.9, "dpo": 0.6},
    }
    return table[metric][model]


def write_scores(folder, model: str, dataset: str, metrics: list[str]) -> None:
    rows = [{"prompt_id": p, "prompt": f"p{p}", "seed": s, "model": model, "metric": m, "metric_version": "1",
             "score": score(model, dataset, m), "higher_is_better": HIGHER[m]}
            for m in metrics for p in range(3) for s in range(2)]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "scores.parquet")


def make_run(tmp_path, spec_dict=SPEC):
    """A run folder as `mapo-bench run` leaves it before the report, the selection made by the runner."""
    run = tmp_path / "run"
    spec = PipelineSpec.model_validate(spec_dict)
    runner = Runner(spec, run)
    run.mkdir()
    (run / "pipeline.json").write_text(json.dumps(spec.model_dump(mode="json")))
    for d in spec.datasets:
        metrics = ["toy-style", "toy-content"] if d.task == "pick-style" else ["nsfw", "toy-content"]
        side, x = ("chosen", LEVELS[d.name][1]) if d.name in LEVELS else ("rejected", 0.02)
        (run / "datasets" / d.name).mkdir(parents=True)
        measures = {"n_pairs": 10, "skipped": {}, f"prefix_excess_{side}": {"value": x, "ci_low": x - 1e-4,
                                                                           "ci_high": x + 1e-4}}
        (run / "datasets" / d.name / "severity.json").write_text(json.dumps({"measures": measures, "prefixed_side": side}))
        for split in ("validation", "test"):
            write_scores(runner.scores_dir(f"base/{d.name}", split), "base", d.name, metrics)
            if d.task == "pick-style":
                write_scores(runner.scores_dir(f"target/{d.name}", split), "target", d.name, metrics)
            for lr in (1e-5, 1e-4):
                name = point_name({"optim.lr": lr})
                for seed in (0, 1) if split == "test" else (0,):
                    write_scores(runner.scores_dir(f"{d.name}/mapo/{name}-s{seed}", split), f"mapo-lr{lr:g}", d.name,
                                 metrics)
            for seed in (0, 1) if split == "test" else (0,):
                write_scores(runner.scores_dir(f"{d.name}/dpo/default-s{seed}", split), "dpo", d.name, metrics)
    (run / "selection.json").write_text(json.dumps(select_settings(runner)))
    (run / "state").mkdir()
    (run / "state" / "a.json").write_text(json.dumps({"verb": "train", "wall_s": 2.5}))
    return run


def test_selection_reads_direction_gate_and_flags_edges(tmp_path):
    """style: mapo lr 1e-4 (style advantage 0.1 k, content 0.78 vs target 0.8: eligible) beats lr 1e-5
    (advantage 0.05); it sits at the grid's high end. safety (nsfw, lower is better; reference = the base,
    content 0.9): lr 1e-4 has nsfw 0.2 < base 0.5, an advantage of +0.3, but content 0.78 is 0.12 below the
    base: not eligible; lr 1e-5 (nsfw 0.8, advantage -0.3, content 0.9) is the only eligible one. dpo
    (content 0.6) fails everywhere: a failed cell, never filled in."""
    selection = json.loads((make_run(tmp_path) / "selection.json").read_text())
    style = selection["cells"]["style-b"]
    assert style["mapo"]["status"] == "selected" and style["mapo"]["grid"] == {"optim.lr": 1e-4}
    assert style["mapo"]["edges"] == ["optim.lr at the grid's high end (0.0001)"]
    rows = {r["setting"]: r for r in style["mapo"]["rows"]}
    assert rows["optim.lr0.0001"]["fidelity_advantage"] == pytest.approx(-0.02)
    assert rows["optim.lr0.0001"]["preference_advantage"] == pytest.approx(0.2)
    assert style["dpo"]["status"] == "failed" and style["dpo"]["grid"] is None
    safety = selection["cells"]["safety"]["mapo"]
    by_setting = {r["setting"]: r for r in safety["rows"]}
    assert by_setting["optim.lr0.0001"]["preference_advantage"] == pytest.approx(0.3)  # lower nsfw = better
    assert by_setting["optim.lr0.0001"]["preference_win_rate"] == 1.0
    assert not by_setting["optim.lr0.0001"]["eligible"]
    assert safety["grid"] == {"optim.lr": 1e-5}


def test_lower_is_better_is_reported_as_a_win(tmp_path):
    """nsfw in the report: a model with the lower score wins. Make every safety setting eligible (margin 0.2):
    mapo lr 1e-4 is then selected (advantage +0.3 over the base: nsfw 0.2 vs 0.5); mean gap -0.3 in nsfw
    units, advantage +0.3, win rate 1."""
    spec = {**SPEC, "eval": {**SPEC["eval"], "fidelity_margin": 0.2}}
    out = write_report(make_run(tmp_path, spec))
    results = json.loads((out / "results.json").read_text())
    row = next(r for r in results["rows"] if (r["dataset"], r["comparison"], r["metric"], r["view"])
               == ("safety", "mapo vs base", "nsfw", "tuned"))
    assert row["mean_gap"] == pytest.approx(-0.3) and row["advantage"] == pytest.approx(0.3)
    assert row["win_rate"] == 1.0 and row["role"] == "preference" and row["higher_is_better"] is False
    means = {(r["model"], r["metric"]): r for r in results["mean_scores"] if r["dataset"] == "safety"}
    # nsfw flags an image when its score is > 0: every base image (0.5) is flagged; toy-content has no flag
    assert means[("base", "nsfw")]["mean"] == pytest.approx(0.5) and means[("base", "nsfw")]["flagged_rate"] == 1.0
    assert "flagged_rate" not in means[("base", "toy-content")]


def test_report_effects_trend_and_tables(tmp_path):
    """Tuned view, test prompts: mapo vs base on toy-style = 0.1 k at k = 1, 2, 3 and severity x = 0.01, 0.02,
    0.03, but dpo failed on every style level, so the primary trend (mapo vs dpo) has no level: not
    testable; its secondary "mapo vs base" slope is 0.1 / 0.01 = 10 (x intervals +-1e-4: "grows")."""
    out = write_report(make_run(tmp_path))
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2 and "not adjusted for multiple comparisons" in results["note"]
    rows = {(r["dataset"], r["comparison"], r["metric"]): r for r in results["rows"] if r["view"] == "tuned"}
    mapo = rows[("style-c", "mapo vs base", "toy-style")]
    assert mapo["advantage"] == pytest.approx(0.3) and mapo["n"] == 12 and mapo["win_rate"] == 1.0
    assert mapo["ci_low"] < 1.0 and "exact" in mapo["win_ci_method"]  # saturated: an exact bound, not [1, 1]
    assert ("style-c", "mapo vs dpo", "toy-style") not in rows  # dpo failed here
    assert rows[("style-a", "mapo vs target", "toy-content")]["advantage"] == pytest.approx(-0.02)
    chosen = results["trend"]["chosen"]
    assert chosen["primary"]["verdict"] == "not testable"
    assert chosen["secondary"]["mapo vs base"]["slope"] == pytest.approx(10.0)
    assert chosen["secondary"]["mapo vs base"]["verdict"] == "grows"
    check = {(c["dataset"], c["method"]): c for c in results["selection_check"]}
    assert check[("style-b", "mapo")]["passes_on_test"] is True
    assert check[("style-b", "dpo")]["status"] == "failed"
    table = (out / "table.md").read_text()
    assert "## Answer" in table and "is **not testable**" in table and "failed cell" in table
    assert "style-b dpo" in table  # listed among the failed cells
    assert len(pd.read_csv(out / "table.csv")) == len(results["rows"])
    assert (out / "severity_vs_effect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["base"] == {} and "toy base" not in table.lower()  # no dataset manifest: no gate line


def test_the_severity_plot_draws_one_panel_per_side_the_run_has(tmp_path):
    """A run with chosen-side datasets only (a personalization run) gets one 6-inch panel (720 px at 120
    dpi), not an empty rejected-side panel beside it; a run with both sides gets two (1440 px)."""
    from PIL import Image

    from mapo_bench.report import plot_severity

    def row(dataset, side):
        return {"dataset": dataset, "prefixed_side": side, "role": "preference", "severity_x": 0.1, "split": "test",
                "view": "tuned", "comparison": "mapo vs dpo", "advantage": 0.2, "advantage_ci_low": 0.1,
                "advantage_ci_high": 0.3}

    severity = {d: {"severity_ci_low": 0.05, "severity_ci_high": 0.15, "severity_measure": "kid"} for d in ("a", "b")}
    chosen_only = {"pipeline": "p", "rows": [row("a", "chosen")], "severity": severity, "trend": {}}
    both = {**chosen_only, "rows": [row("a", "chosen"), row("b", "rejected")]}
    width_one = Image.open(plot_severity(chosen_only, tmp_path / "one.png")).size[0]
    width_two = Image.open(plot_severity(both, tmp_path / "two.png")).size[0]
    assert (width_one, width_two) == (720, 1440)


def test_report_says_when_the_toy_base_is_ungated(tmp_path):
    run = make_run(tmp_path)
    record = {"backend": "toy", "model_id": "my-base", "gate": "ungated", "gate_status": "ungated",
              "gate_failures": ["prefix adherence 'cartoon 0.5' 0.79 < 0.8"]}
    (run / "datasets" / "style-a" / "manifest.json").write_text(json.dumps({"backend": record}))
    out = write_report(run)
    line = "Toy base `my-base` is **ungated** (gate ungated: prefix adherence 'cartoon 0.5' 0.79 < 0.8)"
    assert line in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text())["base"] == record


def test_report_refuses_a_folder_that_is_not_a_run_and_an_old_run(tmp_path):
    with pytest.raises(MapoBenchError, match="pipeline.json"):
        write_report(tmp_path)
    run = make_run(tmp_path)
    selection = json.loads((run / "selection.json").read_text())
    (run / "selection.json").write_text(json.dumps(selection["cells"]))  # schema 1 had no version key
    with pytest.raises(MapoBenchError, match="schema 1.*rerun `mapo-bench run`"):
        write_report(run)
    old = {**SPEC, "eval": {**SPEC["eval"], "fidelity_threshold": 0.45}}
    (run / "pipeline.json").write_text(json.dumps(old))
    with pytest.raises(MapoBenchError, match="older mapo-bench.*rerun"):
        write_report(run)


def test_publish_rewrites_only_the_readme_results_section(tmp_path):
    from mapo_bench.report import publish

    run = make_run(tmp_path)
    write_report(run)
    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    publish(run, tmp_path / "docs" / "results", readme)
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("tail\n") and "old" not in text
    assert "![severity vs effect](docs/results/severity_vs_effect.png)" in text
    assert "**Chosen-side mismatch**" in text and "| style-c | 0.0300 [0.0299, 0.0301] | toy-style |" in text
    assert (tmp_path / "docs" / "results" / "pipeline.json").is_file()
    # a README with this pipeline's own markers: that section is rewritten, the headline experiment's kept
    readme.write_text("<!-- results:start -->\nheadline\n<!-- results:end -->\n"
                      "<!-- results:synthetic:start -->\nold\n<!-- results:synthetic:end -->\n")
    publish(run, tmp_path / "docs" / "results", readme)
    text = readme.read_text()
    assert "headline" in text and "old" not in text and text.index("**Chosen-side mismatch**") > text.index("headline")


def test_comparison_direction_does_not_follow_the_pipeline_order(tmp_path):
    """A pipeline listing dpo before mapo still gets "mapo vs dpo" rows (the primary trend's comparison)."""
    spec = {**SPEC, "methods": {"dpo": {}, "mapo": {"grid": {"optim.lr": [1e-5, 1e-4]}}},
            "eval": {**SPEC["eval"], "fidelity_margin": 0.5}}
    results = json.loads((write_report(make_run(tmp_path, spec)) / "results.json").read_text())
    comparisons = {r["comparison"] for r in results["rows"]}
    assert "mapo vs dpo" in comparisons and "dpo vs mapo" not in comparisons
    assert set(results["trend"]) == {"chosen", "rejected"}
    assert results["trend"]["chosen"]["primary"]["metric"] == "toy-style"


def test_answer_says_when_the_verdict_depends_on_the_severity_measure():
    """A secondary severity measure with another verdict is named in the answer line; agreeing ones are not."""
    import copy
    import json
    from pathlib import Path

    from mapo_bench.report import answer_lines

    published = json.loads((Path(__file__).parents[1] / "docs" / "results" / "toy-mismatch" / "results.json").read_text())
    results = copy.deepcopy(published)
    block = next(iter(results["trend"].values()))
    block["primary"]["verdict"] = "grows"
    measures = [k for k in block["secondary"] if k.startswith("x = ")]
    assert measures
    for key in measures:
        block["secondary"][key]["verdict"] = "grows"
    line = next(line for line in answer_lines(results) if block["primary"]["side"].capitalize() + "-side" in line)
    assert "depends on the severity measure" not in line
    block["secondary"][measures[0]]["verdict"] = "shrinks"
    line = next(line for line in answer_lines(results) if block["primary"]["side"].capitalize() + "-side" in line)
    assert f"depends on the severity measure** ({measures[0].removeprefix('x = ')}: shrinks)" in line


def test_the_printed_answer_and_the_page_name_the_failed_cells_and_the_verdict(tmp_path):
    """The synthetic run (dpo fails the fidelity gate everywhere: toy-content 0.6 against 0.8 / 0.9): every
    printed mapo - dpo cell is a failed cell naming dpo, the verdicts are printed with the page and plot paths, and
    index.html shows the same verdict and every failed headline cell (mapo vs dpo and dpo vs base, 4 each)."""
    from rich.console import Console

    from mapo_bench.report_console import print_answer

    out = write_report(make_run(tmp_path))
    console = Console(record=True, width=120)
    print_answer(out, console)
    text = console.export_text()
    assert text.count("failed: dpo (gate)") == 4 and "safety" in text and "0.0200 [0.0199, 0.0201]" in text
    assert "chosen-side mismatch: MaPO's edge over DPO on toy-style not testable" in text
    assert f"page: {out / 'index.html'}" in text and f"plot: {out / 'severity_vs_effect.png'}" in text
    page = (out / "index.html").read_text()
    assert "is <strong>not testable</strong>" in page and page.count('class="failed">failed cell') == 8


def test_lower_reference_passes_a_model_that_does_not_move(tmp_path, monkeypatch):
    """Target content 0.97 above the base's 0.9 (a chosen style the instrument scores as more faithful):
    against the target, mapo lr 1e-5 (content 0.9, the base's) is 0.07 below it and fails, so the mapo cell
    fails although nothing lost content. With "lower" the reference is the base (0.9 < 0.97): lr 1e-5 passes
    (gap 0), lr 1e-4 (0.78, gap -0.12) still fails. With the original target (0.8 < 0.9) "lower" picks the
    target and selects as "target" does (lr 1e-4, gap -0.02)."""
    original = score

    def above(model, dataset, metric):
        return 0.97 if (model, metric) == ("target", "toy-content") else original(model, dataset, metric)

    module = sys.modules[__name__]  # write_scores reads score() from this module
    monkeypatch.setattr(module, "score", above)
    for name in ("t", "l", "o"):
        (tmp_path / name).mkdir()
    target_rule = json.loads((make_run(tmp_path / "t") / "selection.json").read_text())
    assert target_rule["cells"]["style-b"]["mapo"]["status"] == "failed"
    lower = {**SPEC, "eval": {**SPEC["eval"], "fidelity_reference": "lower"}}
    out = write_report(make_run(tmp_path / "l", lower))
    results = json.loads((out / "results.json").read_text())
    cell = results["selection"]["cells"]["style-b"]["mapo"]
    assert cell["status"] == "selected" and cell["grid"] == {"optim.lr": 1e-5} and cell["reference"] == "base"
    check = {(c["dataset"], c["method"]): c for c in results["selection_check"]}
    assert check[("style-b", "mapo")]["reference"] == "base" and check[("style-b", "mapo")]["passes_on_test"] is True
    assert "the lower of the target's" in (out / "table.md").read_text()
    monkeypatch.setattr(module, "score", original)
    again = json.loads((make_run(tmp_path / "o", lower) / "selection.json").read_text())
    assert again["cells"]["style-b"]["mapo"]["grid"] == {"optim.lr": 1e-4}
    assert again["cells"]["style-b"]["mapo"]["reference"] == "target"



def test_closeness_to_the_data_names_a_lead_that_overshoots_the_target(tmp_path, monkeypatch):
    """Target toy-style 0.58 and every dpo cell eligible (margin 0.5): mapo (lr 1e-4) scores 0.6 / 0.7 / 0.8 at
    style levels 1-3, dpo 0.5. Gaps to the target: mapo +0.02 / +0.12 / +0.22 (beyond), dpo -0.08 (short);
    closeness |dpo gap| - |mapo gap| = 0.06 / -0.04 / -0.14, exact (every image scores the same). MaPO leads by
    0.1 k everywhere, so its lead at style-b and style-c, where it lands farther from the data, is named an
    overshoot, and style-a's is not. Closeness against x = 0.01 / 0.02 / 0.03: slope (-0.14 - 0.06) / 0.02 = -10,
    "shrinks". Safety has no target: no closeness."""
    from rich.console import Console

    from mapo_bench.report_console import print_answer

    original = score

    def near(model, dataset, metric):
        return 0.58 if (model, metric) == ("target", "toy-style") else original(model, dataset, metric)

    monkeypatch.setattr(sys.modules[__name__], "score", near)
    out = write_report(make_run(tmp_path, {**SPEC, "eval": {**SPEC["eval"], "fidelity_margin": 0.5}}))
    results = json.loads((out / "results.json").read_text())
    rows = {r["dataset"]: r for r in results["rows"] if (r["split"], r["view"], r["comparison"], r["role"])
            == ("test", "tuned", "mapo vs dpo", "preference")}
    for name, expected in (("style-a", 0.06), ("style-b", -0.04), ("style-c", -0.14)):
        assert rows[name]["closeness"] == pytest.approx(expected)
        assert rows[name]["closeness_ci_low"] == pytest.approx(expected)
        assert (rows[name]["target_side_a"], rows[name]["target_side_b"]) == ("beyond the target", "short of the target")
    assert "closeness" not in rows["safety"]
    skipped = results["kid_to_target"]["skipped"]  # this synthetic run has scores but no images
    assert set(skipped) == {"style-a", "style-b", "style-c"} and "no test samples in" in skipped["style-a"]
    trend = results["trend"]["chosen"]["secondary"]["closeness to the data"]
    assert trend["slope"] == pytest.approx(-10.0) and trend["verdict"] == "shrinks"
    table = (out / "table.md").read_text()
    assert results["trend"]["chosen"]["primary"]["verdict"] == "grows"  # the advantage: 0.1 k against x = 0.01 k
    assert "closeness to the data: shrinks" in table  # named in the answer beside the primary verdict
    assert "**MaPO's lead at style-b is an overshoot; MaPO's lead at style-c is an overshoot**" in table
    assert "style-a is an overshoot" not in table
    assert "## Closeness to the data" in table and "| style-b | toy-style | 0.580 [0.580, 0.580] | +0.120" in table
    console = Console(record=True, width=200)
    print_answer(out, console)
    text = console.export_text()
    line = next(line for line in text.splitlines() if line.startswith("│ style-c "))
    assert "closer to data" in text and "-0.140 [-0.140, -0.140]" in line
    page = (out / "index.html").read_text()
    assert 'id="closeness"' in page and page.count("(beyond the target)") == 3


def test_the_closeness_plot_is_drawn_only_for_runs_whose_levels_have_a_target(tmp_path):
    """The synthetic run has targets on its style levels but no images: one panel (gaps to the target), 720 px
    wide at 6 in x 120 dpi; with a kid_to_target block a second panel (1440 px); a run without "vs target"
    rows gets no file."""
    from PIL import Image

    from mapo_bench.report_closeness import plot_target_gaps

    out = write_report(make_run(tmp_path, {**SPEC, "eval": {**SPEC["eval"], "fidelity_margin": 0.5}}))
    results = json.loads((out / "results.json").read_text())
    assert Image.open(out / "closeness_to_data.png").size[0] == 720
    results["kid_to_target"]["rows"] = [{"dataset": d, "model": m, "kid": 0.1, "ci_low": 0.05, "ci_high": 0.2}
                                        for d in LEVELS for m in ("base", "mapo", "dpo")]
    assert Image.open(plot_target_gaps(results, tmp_path / "two.png")).size[0] == 1440
    results["rows"] = [r for r in results["rows"] if not r["comparison"].endswith(" vs target")]
    assert plot_target_gaps(results, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
