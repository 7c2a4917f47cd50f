"""`mapo-bench report RUN_DIR`: results.json, then table.md / table.csv / PNG plots rendered from it.

Every number comes from files of the run (severity.json, scores.parquet, selection.json, state/);
nothing is typed by hand. Win rates pool the training seeds: images are paired with the base (or the
other method) by (training seed, prompt, sampling seed) and the bootstrap resamples prompts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mapo_bench.errors import MapoBenchError
from mapo_bench.io import package_versions, read_json, write_json_atomic, write_text_atomic
from mapo_bench.pipeline import point_name

SCHEMA_VERSION = 1
GRID_HEADER_PX = 14  # the strip above a sample grid naming its columns
UNADJUSTED_NOTE = ("95% intervals are paired bootstraps over prompts (sampling seeds nested in prompts), "
                   "not adjusted for multiple comparisons.")


def _pooled(run_dir: Path, d: str, method: str, point: str, seeds: list[int]) -> Any:
    import pandas as pd

    from mapo_bench.runner import load_scores

    frames = []
    for seed in seeds:
        frame = load_scores(run_dir / "scores" / d / method / f"{point}-s{seed}" / "test").copy()
        frame["train_seed"] = seed
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _base_for_seeds(run_dir: Path, d: str, seeds: list[int]) -> Any:
    import pandas as pd

    from mapo_bench.runner import load_scores

    base = load_scores(run_dir / "scores" / "base" / d / "test")
    return pd.concat([base.assign(train_seed=s) for s in seeds], ignore_index=True)


def paired(a: Any, b: Any, metric: str, resamples: int, seed: int) -> dict[str, Any]:
    """Win rate of A over B on ``metric``, paired by (train_seed, prompt_id, seed), prompts as groups."""
    import numpy as np

    from mapo_bench.stats import paired_win_rate

    keys = ["train_seed", "prompt_id", "seed"]
    sa = a[a["metric"] == metric].set_index(keys)["score"].to_frame("a")
    sb = b[b["metric"] == metric].set_index(keys)["score"].to_frame("b")
    joined = sa.join(sb, how="inner")
    if joined.empty:
        raise MapoBenchError(f"no paired images for metric {metric!r}")
    groups = np.asarray(joined.index.get_level_values("prompt_id"))
    return paired_win_rate(joined["a"].to_numpy(), joined["b"].to_numpy(), groups, resamples=resamples, seed=seed)


def build_results(run_dir: Path) -> dict[str, Any]:
    """Collect severity, selection, win rates and mean scores of a finished run into one dict."""
    spec = read_json(run_dir / "pipeline.json")
    selection = read_json(run_dir / "selection.json")
    ev = spec["eval"]
    seeds = spec["seeds"]
    rows, severity, means = [], {}, []
    for d in spec["datasets"]:
        name, task = d["name"], d["task"]
        sev = read_json(run_dir / "datasets" / name / "severity.json")
        measures = sev["measures"]
        side = sev.get("prefixed_side") or ("rejected" if task == "pick-safety" else "chosen")
        x = measures.get(f"prefix_excess_{side}", {}).get("value")
        severity[name] = {"task": task, "prefixed_side": side, "severity_x": x, "build": d.get("build", {}),
                          "measures": measures}
        base = _base_for_seeds(run_dir, name, seeds)
        models = {m: _pooled(run_dir, name, m, point_name(selection[name][m]["grid"]), seeds) for m in spec["methods"]}
        for label, frame in [("base", base), *models.items()]:
            for metric, group in frame.groupby("metric"):
                means.append({"dataset": name, "model": label, "metric": metric, "mean": float(group["score"].mean()),
                              "std": float(group["score"].std()), "n": int(len(group))})
        pairs = [(m, "base", models[m], base) for m in models]
        names = list(models)
        pairs += [(a, b, models[a], models[b]) for i, a in enumerate(names) for b in names[i + 1:]]
        for a_name, b_name, a, b in pairs:
            for metric in [m for m in ev["metrics"] if m in set(a["metric"]) and m in set(b["metric"])]:
                result = paired(a, b, metric, ev["resamples"], ev["bootstrap_seed"])
                rows.append({"dataset": name, "task": task, "prefixed_side": side, "severity_x": x,
                             "comparison": f"{a_name} vs {b_name}", "metric": metric,
                             "role": _role(metric, task, ev), **_clean(result)})
    timings = {}
    for marker in sorted((run_dir / "state").glob("*.json")):
        info = json.loads(marker.read_text())
        timings.setdefault(info["verb"], []).append(info["wall_s"])
    return {"schema_version": SCHEMA_VERSION, "pipeline": spec["name"], "config": spec, "versions": package_versions(),
            "base": _base_record(run_dir, spec),
            "bootstrap": {"resamples": ev["resamples"], "seed": ev["bootstrap_seed"], "unit": "prompt"},
            "note": UNADJUSTED_NOTE, "severity": severity, "selection": selection, "rows": rows, "mean_scores": means,
            "wall_s": {verb: {"jobs": len(v), "total": round(sum(v), 1)} for verb, v in timings.items()}}


def _base_record(run_dir: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The base model as the first dataset's build recorded it (id, toy gate verdict), or {}."""
    for d in spec["datasets"]:
        path = run_dir / "datasets" / d["name"] / "manifest.json"
        if path.is_file():
            return read_json(path).get("backend") or {}
    return {}


def base_note(results: dict[str, Any]) -> list[str]:
    """The report's line on the base model's gate (none for models without one), then a blank line."""
    from mapo_bench.toy.gate import gate_line

    line = gate_line(results.get("base") or {})
    return [line[0].upper() + line[1:], ""] if line else []


def _role(metric: str, task: str, ev: dict[str, Any]) -> str:
    if metric == ev["preference_metric"].get(task):
        return "preference"
    return "fidelity" if metric == ev["fidelity_metric"] else "other"


def _clean(result: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (bool, int)) else v) for k, v in result.items()}


def render_markdown(results: dict[str, Any]) -> str:
    """table.md: severity per dataset, win rates (preference and fidelity first), mean scores, grid results."""
    lines = [f"# {results['pipeline']}: reference mismatch vs win rate", "", results["note"], "", *base_note(results),
             "## Severity (measured against the reference)", "",
             "| dataset | task | prefixed side | prefix excess (prefixed) | prefix excess chosen | prefix excess rejected "
             "| KID chosen | KID rejected | ref. pair accuracy |", "|---|---|---|---|---|---|---|---|---|"]

    def fmt(measure: dict[str, Any] | None) -> str:
        if not measure:
            return "skipped"
        ci = f" [{measure['ci_low']:.4g}, {measure['ci_high']:.4g}]" if "ci_low" in measure else ""
        return f"{measure['value']:.4g}{ci}"

    for name, sev in results["severity"].items():
        m = sev["measures"]
        x = "skipped" if sev["severity_x"] is None else f"{sev['severity_x']:.4g}"
        lines.append(f"| {name} | {sev['task']} | {sev['prefixed_side']} | {x} "
                     f"| {fmt(m.get('prefix_excess_chosen'))} | {fmt(m.get('prefix_excess_rejected'))} "
                     f"| {fmt(m.get('kid_chosen'))} | {fmt(m.get('kid_rejected'))} | {fmt(m.get('reference_pair_accuracy'))} |")
    lines += ["", "## Win rates on test prompts (pooled over training seeds)", "",
              "| dataset | comparison | metric | role | win rate | 95% CI | n | mean gap | sign-test p |",
              "|---|---|---|---|---|---|---|---|---|"]
    order = {"preference": 0, "fidelity": 1, "other": 2}
    for row in sorted(results["rows"], key=lambda r: (r["dataset"], order[r["role"]], r["metric"], r["comparison"])):
        lines.append(f"| {row['dataset']} | {row['comparison']} | {row['metric']} | {row['role']} | {row['win_rate']:.3f} "
                     f"| [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {row['n']} | {row['mean_gap']:+.4g} | {row['sign_p']:.3g} |")
    lines += ["", "## Mean scores (test prompts)", "", "| dataset | model | metric | mean | std | n |", "|---|---|---|---|---|---|"]
    for row in results["mean_scores"]:
        lines.append(f"| {row['dataset']} | {row['model']} | {row['metric']} | {row['mean']:.4g} | {row['std']:.3g} | {row['n']} |")
    ev = results["config"]["eval"]
    margin = ev.get("fidelity_tie_margin", 0.0)
    lines += ["", "## Tuning grid (validation prompts, first seed)", "",
              f"Eligible: fidelity win rate vs the base >= {ev['fidelity_threshold']}"
              + (f" (scores within {margin:g} of the base's count as ties)" if margin else "")
              + "; selected: the best preference win rate among the eligible (DESIGN 5b).", "",
              "| dataset | method | setting | fidelity win rate | preference win rate | eligible | selected |",
              "|---|---|---|---|---|---|---|"]
    for dataset, methods in results["selection"].items():
        for method, info in methods.items():
            for row in info["rows"]:
                grid = ", ".join(f"{k}={v}" for k, v in row["grid"].items()) or "(fixed)"
                lines.append(f"| {dataset} | {method} | {grid} | {row['fidelity_win_rate']:.3f} | {row['preference_win_rate']:.3f} "
                             f"| {'yes' if row['eligible'] else 'no'} | {'**yes**' if row['point'] == info['selected'] else ''} |")
            if info.get("note"):
                lines.append(f"| {dataset} | {method} | note: {info['note']} | | | | |")
    lines += ["", "## Wall time per stage", "", "| stage | jobs run | seconds |", "|---|---|---|"]
    for verb, info in results["wall_s"].items():
        lines.append(f"| {verb} | {info['jobs']} | {info['total']} |")
    return "\n".join(lines) + "\n"


def render_csv(results: dict[str, Any]) -> str:
    import pandas as pd

    return pd.DataFrame(results["rows"]).to_csv(index=False)


def plot_severity(results: dict[str, Any], path: Path) -> Path:
    """severity_vs_winrate.png: x = prefix excess of the prefixed side, y = preference win rate, CI bands;
    one panel for chosen-side mismatch (Pick-Style-like), one for rejected-side (Pick-Safety-like)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, side, title in ((axes[0], "chosen", "chosen-side mismatch (Pick-Style-like)"),
                            (axes[1], "rejected", "rejected-side mismatch (Pick-Safety-like)")):
        rows = [r for r in results["rows"] if r["prefixed_side"] == side and r["role"] == "preference"
                and r["severity_x"] is not None]
        for comparison in sorted({r["comparison"] for r in rows}):
            points = sorted((r for r in rows if r["comparison"] == comparison), key=lambda r: r["severity_x"])
            xs = [r["severity_x"] for r in points]
            ax.plot(xs, [r["win_rate"] for r in points], marker="o", label=comparison)
            ax.fill_between(xs, [r["ci_low"] for r in points], [r["ci_high"] for r in points], alpha=0.15)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"prefix excess of the {side} side (reference denoising error)")
        ax.set_ylabel("win rate on the task's preference metric")
        ax.set_ylim(0, 1)
        if rows:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no dataset of this kind in the run", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{results['pipeline']}: {UNADJUSTED_NOTE}", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    from mapo_bench.io import write_bytes_atomic

    return write_bytes_atomic(path, buffer.getvalue())


def sample_grid(run_dir: Path, results: dict[str, Any], dataset: str, path: Path, max_prompts: int = 8,
                scale: int = 3) -> Path | None:
    """A PNG grid: rows = test prompts (sampling seed of the first image), columns = base then each method,
    named in a header strip (and, with the prompts, in the ``.json`` beside it)."""
    import pandas as pd
    from PIL import Image, ImageDraw

    spec = results["config"]
    seed = spec["seeds"][0]
    columns = [("base", run_dir / "samples" / "base" / "test")]
    for method, info in results["selection"][dataset].items():
        columns.append((method, run_dir / "samples" / dataset / method / f"{point_name(info['grid'])}-s{seed}" / "test"))
    indexes = []
    for _, folder in columns:
        index_path = folder / "index.parquet"
        if not index_path.is_file():
            return None
        indexes.append(pd.read_parquet(index_path))
    first = indexes[0].sort_values(["prompt_id", "seed"]).drop_duplicates("prompt_id").head(max_prompts)
    tiles = []
    for _, row in first.iterrows():
        tile_row = []
        for (_, folder), index in zip(columns, indexes, strict=True):
            match = index[(index["prompt_id"] == row["prompt_id"]) & (index["seed"] == row["seed"])]
            tile_row.append(Image.open(folder / match.iloc[0]["file"]).convert("RGB") if len(match) else None)
        tiles.append(tile_row)
    size = next(t for r in tiles for t in r if t is not None).size
    w, h = size[0] * scale, size[1] * scale
    grid = Image.new("RGB", (w * len(columns), GRID_HEADER_PX + h * len(tiles)), "white")
    draw = ImageDraw.Draw(grid)
    for j, (name, _) in enumerate(columns):
        draw.text((j * w + 2, 2), name, fill="black")
    for i, tile_row in enumerate(tiles):
        for j, tile in enumerate(tile_row):
            if tile is not None:
                grid.paste(tile.resize((w, h), Image.NEAREST), (j * w, GRID_HEADER_PX + i * h))
    from mapo_bench.io import write_png_atomic

    legend = {"columns": [c for c, _ in columns], "rows": list(first["prompt"]), "sampling_seed": "first per prompt"}
    write_json_atomic(path.with_suffix(".json"), legend)
    return write_png_atomic(path, grid)


def write_report(run_dir: Path) -> Path:
    """Write report/{results.json, table.md, table.csv, severity_vs_winrate.png, grid_<dataset>.png}."""
    run_dir = Path(run_dir)
    if not (run_dir / "pipeline.json").is_file():
        raise MapoBenchError(f"{run_dir}: not a run folder of `mapo-bench run` (pipeline.json missing)")
    out = run_dir / "report"
    results = build_results(run_dir)
    write_json_atomic(out / "results.json", results)
    results = read_json(out / "results.json")  # render from what is on disk
    write_text_atomic(out / "table.md", render_markdown(results))
    write_text_atomic(out / "table.csv", render_csv(results))
    plot_severity(results, out / "severity_vs_winrate.png")
    for d in results["severity"]:
        sample_grid(run_dir, results, d, out / f"grid_{d}.png")
    return out


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def headline_markdown(results: dict[str, Any], figure: str) -> str:
    """The README's headline: preference and fidelity win rates vs the base per dataset, rendered from results."""
    lines = [f"Measured by `mapo-bench run pipelines/{results['pipeline']}.yaml` "
             f"(versions and config in [results.json]({Path(figure).parent.as_posix()}/results.json); "
             f"all tables in [table.md]({Path(figure).parent.as_posix()}/table.md)). {results['note']}", "",
             *base_note(results),
             f"![severity vs win rate]({figure})", "",
             "| dataset | prefix excess (prefixed side) | comparison | preference win rate [95% CI] | fidelity win rate [95% CI] |",
             "|---|---|---|---|---|"]
    rows = results["rows"]
    for name, sev in results["severity"].items():
        x = "skipped" if sev["severity_x"] is None else f"{sev['severity_x']:.4f} ({sev['prefixed_side']})"
        for comparison in sorted({r["comparison"] for r in rows if r["dataset"] == name}):
            cells = {}
            for role in ("preference", "fidelity"):
                match = [r for r in rows if r["dataset"] == name and r["comparison"] == comparison and r["role"] == role]
                cells[role] = (f"{match[0]['win_rate']:.2f} [{match[0]['ci_low']:.2f}, {match[0]['ci_high']:.2f}]"
                               if match else "-")
            lines.append(f"| {name} | {x} | {comparison} | {cells['preference']} | {cells['fidelity']} |")
    return "\n".join(lines)


def publish(run_dir: Path, dest: Path, readme: Path | None = None) -> Path:
    """Copy a run's report (results.json, table.md/csv, PNGs, pipeline.json) to ``dest`` and, with ``readme``,
    replace the section between the results markers with the headline rendered from results.json."""
    import shutil

    report = Path(run_dir) / "report"
    if not (report / "results.json").is_file():
        raise MapoBenchError(f"{report}: no results.json; run `mapo-bench report {run_dir}` first")
    dest.mkdir(parents=True, exist_ok=True)
    for path in [*report.glob("*.json"), *report.glob("*.md"), *report.glob("*.csv"), *report.glob("*.png"),
                 Path(run_dir) / "pipeline.json"]:
        shutil.copy2(path, dest / path.name)
    if readme is not None:
        text = readme.read_text()
        if README_START not in text or README_END not in text:
            raise MapoBenchError(f"{readme}: add the markers {README_START} and {README_END} where the results go")
        results = read_json(dest / "results.json")
        figure = Path(os.path.relpath((dest / "severity_vs_winrate.png").resolve(), readme.resolve().parent)).as_posix()
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        write_text_atomic(readme, f"{head}{README_START}\n{headline_markdown(results, figure)}\n{README_END}{tail}")
    return dest
