"""The report renders results.json, tables and plots from a run folder's files (synthetic run here)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mapo_bench.pipeline import PipelineSpec
from mapo_bench.report import write_report

SPEC = {
    "name": "synthetic", "backend": "toy",
    "datasets": [{"name": "style", "task": "pick-style", "build": {"split": "cartoon"}},
                 {"name": "safety", "task": "pick-safety"}],
    "methods": {"mapo": {}, "dpo": {}},
    "seeds": [0, 1],
    "eval": {"validation_prompts": "toy:validation", "test_prompts": "toy:test", "seeds": [0, 1],
             "metrics": ["toy-style", "toy-content", "toy-safety"],
             "preference_metric": {"pick-style": "toy-style", "pick-safety": "toy-safety"},
             "fidelity_metric": "toy-content", "resamples": 200},
}


def _scores(folder, values):
    """values: metric -> list of 4 scores for (prompt 0, seed 0), (0, 1), (1, 0), (1, 1)."""
    rows = []
    for metric, scores in values.items():
        for k, score in enumerate(scores):
            rows.append({"image_id": f"{k}", "prompt_id": k // 2, "prompt": f"p{k // 2}", "seed": k % 2,
                         "model": folder.name, "metric": metric, "metric_version": "1", "score": float(score)})
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / "scores.parquet")


def _run_dir(tmp_path):
    run = tmp_path / "run"
    spec = PipelineSpec.model_validate(SPEC)
    (run).mkdir()
    (run / "pipeline.json").write_text(json.dumps(spec.model_dump(mode="json")))
    selection = {d: {m: {"selected": 0, "grid": {}, "note": "", "rows": [
        {"point": 0, "grid": {}, "fidelity_win_rate": 0.5, "preference_win_rate": 0.75, "preference_mean_gap": 0.1,
         "eligible": True}]} for m in ("mapo", "dpo")} for d in ("style", "safety")}
    (run / "selection.json").write_text(json.dumps(selection))
    for d, side, x in (("style", "chosen", 0.01), ("safety", "rejected", 0.02)):
        (run / "datasets" / d).mkdir(parents=True)
        measures = {"n_pairs": 10, "skipped": {}, f"prefix_excess_{side}": {"value": x, "ci_low": x / 2, "ci_high": 2 * x}}
        (run / "datasets" / d / "severity.json").write_text(json.dumps({"measures": measures, "prefixed_side": side}))
        base = {"toy-style": [0.5] * 4, "toy-content": [0.5] * 4, "toy-safety": [0.5] * 4}
        _scores(run / "scores" / "base" / d / "test", base)
        for seed in (0, 1):
            # mapo beats the base on 3 of 4 images per seed and ties on the fourth on every metric;
            # dpo loses on all 4.
            _scores(run / "scores" / d / "mapo" / f"default-s{seed}" / "test", {m: [0.9, 0.9, 0.9, 0.5] for m in base})
            _scores(run / "scores" / d / "dpo" / f"default-s{seed}" / "test", {m: [0.1] * 4 for m in base})
    (run / "state").mkdir()
    (run / "state" / "a.json").write_text(json.dumps({"verb": "train", "wall_s": 2.5}))
    return run


def test_report_numbers_come_from_the_scores(tmp_path):
    """mapo vs base: per training seed 3 wins + 1 tie of 4 -> (3 + 0.5) / 4 = 0.875, pooled over 2 seeds
    still 0.875 (n = 8); dpo vs base: 0/8 = 0; mapo vs dpo: 8 wins -> 1.0."""
    out = write_report(_run_dir(tmp_path))
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1 and "not adjusted for multiple comparisons" in results["note"]
    rows = {(r["dataset"], r["comparison"], r["metric"]): r for r in results["rows"]}
    mapo = rows[("style", "mapo vs base", "toy-style")]
    assert mapo["win_rate"] == pytest.approx(0.875) and mapo["n"] == 8 and mapo["role"] == "preference"
    assert rows[("style", "dpo vs base", "toy-style")]["win_rate"] == 0.0
    assert rows[("safety", "mapo vs dpo", "toy-safety")]["win_rate"] == 1.0
    assert rows[("safety", "mapo vs base", "toy-safety")]["severity_x"] == 0.02
    table = (out / "table.md").read_text()
    assert "0.875" in table and "| style | pick-style | chosen | 0.01" in table
    assert results["base"] == {} and "gate" not in table  # no dataset manifest: nothing said about a gate
    assert len(pd.read_csv(out / "table.csv")) == len(results["rows"])
    png = (out / "severity_vs_winrate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_says_when_the_toy_base_is_ungated(tmp_path):
    run = _run_dir(tmp_path)
    record = {"backend": "toy", "model_id": "my-base", "gate": "ungated", "gate_status": "ungated",
              "gate_failures": ["prefix adherence 'cartoon 0.5' 0.79 < 0.8"]}
    (run / "datasets" / "style" / "manifest.json").write_text(json.dumps({"backend": record}))
    out = write_report(run)
    line = "Toy base `my-base` is **ungated** (gate ungated: prefix adherence 'cartoon 0.5' 0.79 < 0.8)"
    assert line in (out / "table.md").read_text()
    assert json.loads((out / "results.json").read_text())["base"] == record
    record.update(gate="gated", gate_status="passed", gate_failures=[])
    (run / "datasets" / "style" / "manifest.json").write_text(json.dumps({"backend": record}))
    assert "Toy base `my-base`: gate passed" in (write_report(run) / "table.md").read_text()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    from mapo_bench.errors import MapoBenchError

    with pytest.raises(MapoBenchError, match="pipeline.json"):
        write_report(tmp_path)


def test_publish_rewrites_only_the_readme_results_section(tmp_path):
    from mapo_bench.report import publish

    run = _run_dir(tmp_path)
    write_report(run)
    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- results:start -->\nold\n<!-- results:end -->\ntail\n")
    publish(run, tmp_path / "docs" / "results", readme)
    text = readme.read_text()
    assert text.startswith("# title\n") and text.endswith("tail\n") and "old" not in text
    assert "![severity vs win rate](docs/results/severity_vs_winrate.png)" in text
    assert "| style | 0.0100 (chosen) | mapo vs base | 0.88 [" in text
    assert (tmp_path / "docs" / "results" / "pipeline.json").is_file()
