"""`mapo-bench report RUN_DIR`: results.json (:mod:`mapo_bench.results`), then table.md, table.csv and PNG
plots rendered from it, and the README's headline. Nothing here computes a statistic or is typed by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench import faults
from mapo_bench.errors import MapoBenchError
from mapo_bench.io import read_json, write_json_atomic, write_text_atomic
from mapo_bench.results import CLOSENESS_TREND, UNADJUSTED_NOTE, build_results
from mapo_bench.trend import standing_phrase, standing_text

CLOSENESS_COLUMN = "mapo vs dpo: closer to the data"
GRID_HEADER_PX = 14  # the strip above a sample grid naming its columns
VERDICT_TEXT = {"grows": "**grows**", "shrinks": "**shrinks**", "no evidence either way": "shows **no evidence either way**",
                "not testable": "is **not testable**"}


def fmt_ci(value: float | None, low: float | None, high: float | None, digits: int = 3, signed: bool = True) -> str:
    if value is None:
        return "-"
    head = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return f"{head} [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else head


def find_row(results: dict[str, Any], dataset: str, comparison: str, role: str = "preference", view: str = "tuned",
             split: str = "test") -> dict[str, Any] | None:
    return next((r for r in results["rows"] if (r["split"], r["view"], r["dataset"], r["comparison"], r["role"])
                 == (split, view, dataset, comparison, role)), None)


def answer_lines(results: dict[str, Any]) -> list[str]:
    """The verdict per mismatch side, with its numbers, generated from the trend block."""
    ev = results["config"]["eval"]
    lines = []
    for block in results["trend"].values():
        p = block["primary"]
        tasks = sorted({sev["task"] for sev in results["severity"].values() if sev["prefixed_side"] == p["side"]})
        kind = ", ".join(tasks) or {"chosen": "Pick-Style-like", "rejected": "Pick-Safety-like"}[p["side"]]
        head = (f"**{p['side'].capitalize()}-side mismatch** ({kind} datasets, {p['n_levels']} level(s), x = "
                f"`{p['severity_measure']}`): the MaPO - Diffusion-DPO advantage on `{p['metric']}` "
                f"{VERDICT_TEXT[p['verdict']]} with severity")
        if p["slope"] is None:
            lines.append(f"- {head} ({p['reason']}).")
            continue
        sec = block["secondary"]
        standing = standing_text(p)
        extra = ([standing] if standing else []) + [f"Spearman rho {p['spearman_rho']:+.2f} (exact p {p['spearman_p']:.3g})"]
        for key in ("mapo vs base", "dpo vs base"):
            if sec.get(key, {}).get("slope") is not None:
                extra.append(f"{key} slope {fmt_ci(sec[key]['slope'], sec[key]['slope_ci_low'], sec[key]['slope_ci_high'], 2)}"
                             f" ({sec[key]['verdict']})")
        for key in ("matched view", "second sampler", CLOSENESS_TREND):
            if sec.get(key, {}).get("slope") is not None:
                extra.append(f"{key}: {sec[key]['verdict']}")
        # Another severity measure that gives another verdict: the answer depends on the axis; say so up front.
        flips = [f"{key.removeprefix('x = ')}: {value['verdict']}" for key, value in sec.items()
                 if key.startswith("x = ") and value.get("slope") is not None and value["verdict"] != p["verdict"]]
        if flips:
            extra.insert(0, "**the verdict depends on the severity measure** (" + "; ".join(flips) + ")")
        lines.append(f"- {head}: slope {fmt_ci(p['slope'], p['slope_ci_low'], p['slope_ci_high'], 2)} metric units per "
                     f"unit of severity (95% bootstrap CI, severity estimates resampled too). Secondary: "
                     + "; ".join(extra) + ".")
    from mapo_bench.report_closeness import closeness_lines

    lines += closeness_lines(results)
    for name, sev in results["severity"].items():
        metric = ev["preference_metric"].get(sev["task"])
        flagged = [r for r in results["mean_scores"] if r["dataset"] == name and r["metric"] == metric
                   and r["view"] == "tuned" and "flagged_rate" in r and r["model"] != "target"]
        if sev["task"] == "pick-safety" and flagged:
            lines.append(f"- {name}: share of test images flagged by `{metric}` (the unsafe marker), 95% CI: "
                         + "; ".join(f"{r['model']} {fmt_ci(r['flagged_rate'], r['flagged_ci_low'], r['flagged_ci_high'], 3, signed=False)}"
                                     for r in flagged) + ".")
    prec = results["precision"]
    lines.append(f"- Precision: {prec['meeting']} of {prec['cells']} headline cells have a 95% half-width <= {prec['bar']:g}"
                 + (" (" + ", ".join(f"{c['dataset']} {c['comparison']} {c['half_width']:.3f}" for c in prec["not_meeting"])
                    + ")" if prec["not_meeting"] else "") + ".")
    failed = [f"{c['dataset']} {c['method']}" for c in results["selection_check"] if c["status"] == "failed"]
    if failed:
        lines.append(f"- Failed cells (no setting passed the fidelity gate on validation): {', '.join(failed)}.")
    matched = [(name, find_row(results, name, "mapo vs dpo", view="matched"),
                find_row(results, name, "mapo vs dpo", role="fidelity", view="matched")) for name in results["severity"]]
    if any(pref for _, pref, _ in matched):
        lines.append("- Matched view (each method at the pipeline's fixed settings, reported whatever the gate says), "
                     "MaPO - Diffusion-DPO on test prompts: " + "; ".join(
                         f"{name} {pref['metric']} {fmt_ci(pref['advantage'], pref['advantage_ci_low'], pref['advantage_ci_high'])}"
                         + (f", {fid['metric']} {fmt_ci(fid['advantage'], fid['advantage_ci_low'], fid['advantage_ci_high'])}"
                            if fid else "")
                         for name, pref, fid in matched if pref) + ".")
    edges = sorted({f"{c['method']} {c['setting']} ({'; '.join(c['edges'])})" for c in results["selection_check"]
                    if c["edges"]})
    if edges:
        lines.append(f"- Selected at a grid edge (a wider grid may select otherwise): {', '.join(edges)}.")
    carried = sorted({c["dataset"] for c in results["selection_check"] if c.get("carried_from")})
    if carried:
        lines.append(f"- Settings carried from another dataset's tuning, not tuned here: {', '.join(carried)}.")
    off = [f"{c['dataset']} {c['method']}" for c in results["selection_check"] if c["passes_on_test"] is False]
    if off:
        lines.append(f"- Selected settings failing the same fidelity gate on test prompts (margin {ev['fidelity_margin']:g}): "
                     f"{', '.join(off)}.")
    return lines


def headline_rows(results: dict[str, Any]) -> tuple[list[str], list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    """The headline's comparisons (MaPO vs DPO and vs each other method, then each method vs the base) and, per
    dataset, its severity
    record and the test-prompt, tuned-view preference row of each comparison (None: a failed cell)."""
    methods = list(results["config"]["methods"])
    others = [("mapo", m) for m in methods if m not in ("mapo", "dpo")]  # e.g. MaPO vs DreamBooth on a subject
    comparisons = [f"{a} vs {b}" for a, b in (("mapo", "dpo"), *others, *((m, "base") for m in methods))
                   if a in methods and (b in methods or b == "base")]
    return comparisons, [(name, sev, {c: find_row(results, name, c) for c in comparisons})
                         for name, sev in results["severity"].items()]


def published_table(results: dict[str, Any]) -> list[str]:
    """Our mean test scores (tuned view, 95% CI) beside the pipeline's published numbers, per dataset: read
    side by side, never compared statistically (other prompts, samplers and seeds)."""
    published = results["config"].get("published")
    if not published:
        return []
    lines = ["## Beside the published numbers", "",
             f"Published: {published['source']} (not measured here: other prompts, samplers and seeds). Ours: mean "
             "test score, tuned view, 95% CI.", "", "| dataset | model | metric | ours | published |", "|---|---|---|---|---|"]
    for name in results["severity"]:
        for model, scores in published["scores"].items():
            for metric, value in scores.items():
                row = next((r for r in results["mean_scores"] if (r["dataset"], r["view"], r["model"], r["metric"])
                            == (name, "tuned", model, metric)), None)
                ours = fmt_ci(row["mean"], row["ci_low"], row["ci_high"], 3, signed=False) if row else "not in this run"
                lines.append(f"| {name} | {model} | {metric} | {ours} | {value:g} (published) |")
    return [*lines, ""]


def headline_table(results: dict[str, Any]) -> list[str]:
    """Mean preference gaps with 95% CIs (win rates after them), per dataset, tuned view, test prompts."""
    from mapo_bench.report_closeness import closeness_rows

    comparisons, rows = headline_rows(results)
    closer = bool(closeness_rows(results))
    extra = [CLOSENESS_COLUMN] if closer else []
    head = "| dataset | severity x [95% CI] | metric | " + " | ".join([*comparisons, *extra]) + " |"
    lines = [head, "|" + "---|" * (3 + len(comparisons) + len(extra))]
    for name, sev, cells_by in rows:
        x = fmt_ci(sev["severity_x"], sev["severity_ci_low"], sev["severity_ci_high"], 4, signed=False)
        cells, metric = [], ""
        for comparison in comparisons:
            row = cells_by[comparison]
            if row is None:
                cells.append("failed cell")
                continue
            metric = row["metric"]
            cells.append(f"{fmt_ci(row['advantage'], row['advantage_ci_low'], row['advantage_ci_high'])} "
                         f"(wins {row['win_rate']:.2f})")
        if closer:
            row = cells_by.get("mapo vs dpo") or {}
            cells.append(fmt_ci(row["closeness"], row["closeness_ci_low"], row["closeness_ci_high"])
                         if "closeness" in row else "-")
        lines.append(f"| {name} | {x} | {metric} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """table.md: the answer, the headline effects, the fidelity gate on test, every comparison, the grid."""
    from mapo_bench.report_closeness import closeness_table

    ev = results["config"]["eval"]
    lines = [f"# {results['pipeline']}: does MaPO's edge over Diffusion-DPO grow with reference mismatch?", "",
             results["note"], "", *base_note(results), "## Answer", "", *answer_lines(results), "",
             "## Headline effects (test prompts, tuned settings)", "",
             "Advantage = mean score gap signed so that positive favours the first model (metric units), 95% CI; "
             "win rate after it (ties within the recorded margin count half).", "", *headline_table(results), "",
             *closeness_table(results), *published_table(results),
             "## Severity (measured against the reference)", "",
             "| dataset | prefixed side | " + " | ".join(SEVERITY_COLUMNS) + " |", "|---|---|" + "---|" * len(SEVERITY_COLUMNS)]
    for name, sev in results["severity"].items():
        m = sev["measures"]
        lines.append(f"| {name} | {sev['prefixed_side']} | "
                     + " | ".join(_measure(m.get(c.replace(' ', '_'))) for c in SEVERITY_COLUMNS) + " |")
    lines += ["", "## Fidelity gate on test prompts (the selection's rule, same quantity)", "",
              f"Eligible: {results['selection']['rule']['eligible']}.", "",
              "| dataset | method | status | setting | grid edge | fidelity vs reference, validation | test [95% CI] | passes on test |",
              "|---|---|---|---|---|---|---|---|"]
    for c in results["selection_check"]:
        status = c["status"] + (f" (carried from {c['carried_from']})" if c.get("carried_from") else "")
        val = "-" if c["validation_fidelity_advantage"] is None else (
            f"{c['validation_fidelity_advantage']:+.3f}" + (f" (vs {c['validation_reference']})"
                                                           if c.get("validation_reference") else ""))
        test = "-" if c["test_fidelity_advantage"] is None else (
            fmt_ci(c["test_fidelity_advantage"], *c["test_fidelity_ci"]) + f" (vs {c['reference']})")
        passes = {True: "yes", False: "**no**", None: "-"}[c["passes_on_test"]]
        lines.append(f"| {c['dataset']} | {c['method']} | {status} | {c['setting'] or c.get('reason') or '-'} | "
                     f"{'; '.join(c['edges']) or '-'} | {val} | {test} | {passes} |")
    lines += ["", "## Trend tests", "", "| side | effect | x | levels | slope [95% CI] | verdict | Spearman rho (exact p) |",
              "|---|---|---|---|---|---|---|"]
    for side, block in results["trend"].items():
        for label, t in [("primary: mapo vs dpo", block["primary"]), *block["secondary"].items()]:
            slope = "-" if t["slope"] is None else fmt_ci(t["slope"], t["slope_ci_low"], t["slope_ci_high"], 3)
            rho = "-" if t.get("spearman_rho") is None else f"{t['spearman_rho']:+.2f} ({t['spearman_p']:.3g})"
            lines.append(f"| {side} | {label} | {t.get('severity_measure', '')} | {t['n_levels']} | {slope} | {t['verdict']} | {rho} |")
    lines += ["", "## Every comparison", "",
              "| split | view | dataset | comparison | metric | role | advantage [95% CI] | seed t-interval | win rate [95% CI] "
              "| n | prompts won/lost (sign p) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"preference": 0, "fidelity": 1, "other": 2}
    for r in sorted(results["rows"], key=lambda r: (r["split"], r["view"], r["dataset"], order[r["role"]], r["metric"],
                                                    r["comparison"])):
        t = "-" if r.get("advantage_seed_t_low") is None else \
            f"[{r['advantage_seed_t_low']:+.3f}, {r['advantage_seed_t_high']:+.3f}]"
        lines.append(f"| {r['split']} | {r['view']} | {r['dataset']} | {r['comparison']} | {r['metric']} | {r['role']} "
                     f"| {fmt_ci(r['advantage'], r['advantage_ci_low'], r['advantage_ci_high'])} | {t} "
                     f"| {fmt_ci(r['win_rate'], r['ci_low'], r['ci_high'], 2, signed=False)} | {r['n']} "
                     f"| {r['prompts_won']}/{r['prompts_lost']} ({r['sign_p']:.3g}) |")
    margins = ev.get("tie_margins") or {}
    lines.append("")
    lines.append("Win-rate tie margins: " + (", ".join(f"{k} {v:g}" for k, v in margins.items()) or "none (exact ties)")
                 + ". Sign tests count prompts (a prompt's mean advantage), not images.")
    lines += ["", "## Mean scores (test prompts, 95% CI)", "",
              "Flagged: the share of images on the metric's bad side of its threshold (toy-safety < 0.5: the unsafe "
              "marker is drawn; nsfw > 0: the safety checker fires).", "",
              "| dataset | view | model | metric | mean [95% CI] | flagged [95% CI] | std | n |", "|---|---|---|---|---|---|---|---|"]
    for row in results["mean_scores"]:
        flagged = fmt_ci(row["flagged_rate"], row["flagged_ci_low"], row["flagged_ci_high"], 3, signed=False) \
            if "flagged_rate" in row else "-"
        lines.append(f"| {row['dataset']} | {row['view']} | {row['model']} | {row['metric']} "
                     f"| {fmt_ci(row['mean'], row['ci_low'], row['ci_high'], 4, signed=False)} | {flagged} "
                     f"| {row['std']:.3g} | {row['n']} |")
    lines += human_lines(results)
    lines += ["", "## Tuning grid (validation prompts)", "",
              f"Eligible: {results['selection']['rule']['eligible']}. Over several training seeds a row shows the "
              "worst seed's fidelity and the mean preference advantage.", "",
              "| dataset | method | setting | seeds | fidelity vs reference | fidelity win rate "
              "| preference advantage vs base | preference win rate | eligible | selected |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, cells in results["selection"]["cells"].items():
        for method, cell in cells.items():
            for row in cell["rows"]:
                seeds = ",".join(str(s) for s in row.get("seeds", [0]))
                lines.append(f"| {dataset} | {method} | {row['setting']} | {seeds} | {row['fidelity_advantage']:+.3f} "
                             f"| {row['fidelity_win_rate']:.2f} | {row['preference_advantage']:+.3f} "
                             f"| {row['preference_win_rate']:.2f} | {'yes' if row['eligible'] else 'no'} "
                             f"| {'**yes**' if row['setting'] == cell['setting'] else ''} |")
    lines += ["", "## Wall time per stage", "", "| stage | jobs run | seconds |", "|---|---|---|"]
    for verb, info in results["wall_s"].items():
        lines.append(f"| {verb} | {info['jobs']} | {info['total']} |")
    return "\n".join(lines) + "\n"


def human_lines(results: dict[str, Any]) -> list[str]:
    """table.md's human-vote section (none when nobody voted)."""
    human = results.get("human")
    if not human:
        return []
    raters = ", ".join(f"{r} {n}" for r, n in human["votes_per_rater"].items())
    kappa = human["agreement"]["light_kappa"]
    lines = ["", "## Human votes", "", f"{human['votes']} votes ({raters}); {human['note']}; agreement where raters "
             f"overlap: " + (f"Light's kappa {kappa:.2f}." if kappa is not None else
                             f"{human['agreement']['note'] or 'undefined (one label only)'}."), "",
             "| dataset | comparison | win rate [95% CI] | votes | raters | prompts won/lost (sign p) |",
             "|---|---|---|---|---|---|"]
    for row in human["rows"]:
        lines.append(f"| {row['dataset']} | {row['comparison']} | {fmt_ci(row['win_rate'], row['ci_low'], row['ci_high'], 2, signed=False)} "
                     f"| {row['n']} | {row['raters']} | {row['prompts_won']}/{row['prompts_lost']} ({row['sign_p']:.3g}) |")
    for dataset, models in human["bradley_terry"].items():
        lines.append("")
        lines.append(f"Bradley-Terry log-strength, {dataset}: " + "; ".join(
            f"{m} {fmt_ci(bt['theta'], bt['ci_low'], bt['ci_high'], 2)}" for m, bt in models.items()))
    return lines


SEVERITY_COLUMNS = ("prefix excess_chosen", "prefix excess_rejected", "prefix excess relative_chosen",
                    "prefix excess relative_rejected", "kid_chosen", "kid_rejected", "reference error_chosen",
                    "reference error_rejected", "reference pair_accuracy")


def _measure(measure: dict[str, Any] | None) -> str:
    if not measure:
        return "-"
    ci = f" [{measure['ci_low']:.4g}, {measure['ci_high']:.4g}]" if "ci_low" in measure else ""
    return f"{measure['value']:.4g}{ci}"


def base_note(results: dict[str, Any]) -> list[str]:
    """The report's line on the base model's gate (none for models without one), then a blank line."""
    from mapo_bench.toy.gate import gate_line

    line = gate_line(results.get("base") or {})
    return [line[0].upper() + line[1:], ""] if line else []


def render_csv(results: dict[str, Any]) -> str:
    import pandas as pd

    return pd.DataFrame(results["rows"]).to_csv(index=False)


PLOTTED = ("mapo vs dpo", "mapo vs base", "dpo vs base", "sft vs base", "mapo vs dreambooth", "dreambooth vs base")


def plot_severity(results: dict[str, Any], path: Path) -> Path:
    """severity_vs_effect.png: x = the primary severity measure of the prefixed side (95% CI as x error
    bars, each point labelled with its dataset), y = mean preference advantage with 95% CI; one panel per
    side the run has: chosen-side mismatch (Pick-Style-like), rejected-side (Pick-Safety-like)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def plotted_rows(side: str) -> list[dict[str, Any]]:
        return [r for r in results["rows"] if r["prefixed_side"] == side and r["role"] == "preference"
                and r["severity_x"] is not None and r["split"] == "test" and r["view"] == "tuned"]

    panels = [(side, title) for side, title in (("chosen", "chosen-side mismatch (Pick-Style-like)"),
                                                 ("rejected", "rejected-side mismatch (Pick-Safety-like)"))
              if plotted_rows(side)]
    panels = panels or [("chosen", "chosen-side mismatch (Pick-Style-like)")]  # one panel says why it is empty
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for ax, (side, title) in zip(axes[0], panels, strict=True):
        rows = plotted_rows(side)
        plotted = [c for c in PLOTTED if any(r["comparison"] == c for r in rows)]
        for comparison in plotted:
            points = sorted((r for r in rows if r["comparison"] == comparison), key=lambda r: r["severity_x"])
            sev = [results["severity"][r["dataset"]] for r in points]
            xs = np.array([r["severity_x"] for r in points])
            ys = np.array([r["advantage"] for r in points])
            xerr = np.array([[max(0.0, x - (s["severity_ci_low"] if s["severity_ci_low"] is not None else x)),
                              max(0.0, (s["severity_ci_high"] if s["severity_ci_high"] is not None else x) - x)]
                             for x, s in zip(xs, sev, strict=True)]).T
            yerr = np.array([[max(0.0, y - r["advantage_ci_low"]), max(0.0, r["advantage_ci_high"] - y)]
                             for y, r in zip(ys, points, strict=True)]).T
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, lw=1.6 if comparison == "mapo vs dpo" else 1,
                        label=comparison)
            if comparison == plotted[0]:  # the levels are labelled once, on the main comparison present
                for x, y, r in zip(xs, ys, points, strict=True):
                    ax.annotate(r["dataset"], (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(5))  # severity values are small: long tick labels must not collide
        # the verdict with where MaPO stands, so a "grows" from behind is not read as a lead
        verdicts = []
        for block in results["trend"].values():
            if block["primary"]["side"] == side:
                phrase = standing_phrase(block["primary"])
                verdicts.append(block["primary"]["verdict"] + (f"\n({phrase})" if phrase else ""))
        ax.set_title(title + (f" - trend: {', '.join(verdicts)}" if verdicts else ""), fontsize=10)
        measure = results["severity"][rows[0]["dataset"]]["severity_measure"] if rows else "severity"
        ax.set_xlabel(f"{measure} of the {side} side (95% CI)")
        ax.set_ylabel("mean preference advantage (metric units, 95% CI)")
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
    """A PNG grid: rows = test prompts (sampling seed of the first image), columns = the base, the target
    (the base prompted with the chosen prefix: what the data asks for) and each method at its selected
    setting (first training seed), named in a header strip (and, with the prompts, in the ``.json`` beside it)."""
    from PIL import Image, ImageDraw

    from mapo_bench.report_html import gallery

    found = gallery(run_dir, results, dataset, max_prompts=max_prompts, scores=False)
    if found is None or not found["complete"]:
        return None
    columns = found["columns"]
    tiles = [[Image.open(c["file"]).convert("RGB") if c else None for c in row["cells"]] for row in found["rows"]]
    size = next(t for r in tiles for t in r if t is not None).size
    w, h = size[0] * scale, size[1] * scale
    grid = Image.new("RGB", (w * len(columns), GRID_HEADER_PX + h * len(tiles)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(columns):
        draw.text((j * w + 2, 2), name, fill="black")
    for i, tile_row in enumerate(tiles):
        for j, tile in enumerate(tile_row):
            if tile is not None:
                grid.paste(tile.resize((w, h), Image.NEAREST), (j * w, GRID_HEADER_PX + i * h))
    from mapo_bench.io import write_png_atomic

    legend = {"columns": columns, "rows": [row["prompt"] for row in found["rows"]], "sampling_seed": "first per prompt"}
    write_json_atomic(path.with_suffix(".json"), legend)
    return write_png_atomic(path, grid)


def write_report(run_dir: Path) -> Path:
    """Write report/{results.json, table.md, table.csv, severity_vs_effect.png, grid_<dataset>.png, index.html}."""
    run_dir = Path(run_dir)
    if not (run_dir / "pipeline.json").is_file():
        raise MapoBenchError(f"{run_dir}: not a run folder of `mapo-bench run` (pipeline.json missing)")
    out = run_dir / "report"
    results = build_results(run_dir)
    from mapo_bench.integrity import file_records, sealed
    from mapo_bench.io import atomic_dir
    from mapo_bench.report_closeness import TARGET_PLOT_FILE, plot_target_gaps
    from mapo_bench.report_html import render_html

    # Written beside report/ and renamed over it at the end, so a failed write (a full disk) leaves the
    # previous report, or none, never a part of one; the temp folder sits in the run folder, so the page's
    # relative image links are the same there.
    with atomic_dir(out, overwrite=True, written_by="results.json") as tmp:
        write_json_atomic(tmp / "results.json", results)
        results = read_json(tmp / "results.json")  # render from what is on disk
        write_text_atomic(tmp / "table.md", render_markdown(results))
        write_text_atomic(tmp / "table.csv", render_csv(results))
        plot_severity(results, tmp / PLOT_FILE)
        plot_target_gaps(results, tmp / TARGET_PLOT_FILE)
        for d in results["severity"]:
            sample_grid(run_dir, results, d, tmp / f"grid_{d}.png")
        write_text_atomic(tmp / HTML_FILE, render_html(run_dir, results, written=tmp))
        faults.point("report:before-rename", out / "results.json")
        files = {f"{out.name}/{k}": v for k, v in file_records(tmp).items()}
        files.update(file_records(run_dir, [p for p in (run_dir / "pipeline.json", run_dir / "selection.json")
                                             if p.is_file()]))
        write_json_atomic(tmp / "manifest.json", sealed({"stage": "report", "files_root": "..", "files": files}))
    return out


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_markers(pipeline: str, text: str) -> tuple[str, str]:
    """The README section a run is published into: ``<!-- results:NAME:start -->`` ... ``:end -->`` when the
    README has that pipeline's markers, else the headline experiment's ``<!-- results:start -->`` pair."""
    named = (f"<!-- results:{pipeline}:start -->", f"<!-- results:{pipeline}:end -->")
    return named if named[0] in text and named[1] in text else (README_START, README_END)
PLOT_FILE = "severity_vs_effect.png"
HTML_FILE = "index.html"


def has_trend(results: dict[str, Any]) -> bool:
    """Whether some mismatch side has the levels a trend needs (else the severity plot shows nothing to read)."""
    from collections import Counter

    from mapo_bench.trend import MIN_LEVELS

    sides = Counter(sev["prefixed_side"] for sev in results["severity"].values())
    return any(n >= MIN_LEVELS for n in sides.values())


def headline_markdown(results: dict[str, Any], figure: str, closeness_figure: str | None = None) -> str:
    """The README's headline: the verdict with its numbers, the plots, then the headline effects, rendered from
    results. ``closeness_figure``: the closeness-to-data plot's path, where the run drew one."""
    folder = Path(figure).parent.as_posix()
    lines = [f"Measured by `mapo-bench run pipelines/{results['pipeline']}.yaml` (versions and config in "
             f"[results.json]({folder}/results.json); every table in [table.md]({folder}/table.md)). {results['note']}",
             "", *base_note(results), *answer_lines(results), "",
             *([f"![severity vs effect]({figure})", ""] if has_trend(results) else []),
             *([f"![where each model lands against the data]({closeness_figure})", ""] if closeness_figure else []),
             "Advantage = mean preference-score gap (metric units; positive favours the first model) with its 95% CI; "
             "the win rate follows in brackets.", "", *headline_table(results),
             *(["", *published_table(results)] if results["config"].get("published") else [])]
    return "\n".join(lines)


def publish(run_dir: Path, dest: Path, readme: Path | None = None) -> Path:
    """Copy a run's report (results.json, table.md/csv, PNGs, pipeline.json) to ``dest`` and, with ``readme``,
    replace the section between the results markers with the headline rendered from results.json."""
    import shutil

    report = Path(run_dir) / "report"
    if not (report / "results.json").is_file():
        raise MapoBenchError(f"{report}: no results.json; run `mapo-bench report {run_dir}` first")
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("*.png"):  # a published folder holds one run's files only
        stale.unlink()
    for path in [*(p for p in report.glob("*.json") if p.name != "manifest.json"), *report.glob("*.md"),
                 *report.glob("*.csv"), *report.glob("*.png"), Path(run_dir) / "pipeline.json"]:
        shutil.copy2(path, dest / path.name)
    if readme is not None:
        text = readme.read_text()
        results = read_json(dest / "results.json")
        start, end = readme_markers(results["pipeline"], text)
        if start not in text or end not in text:
            raise MapoBenchError(f"{readme}: add the markers {start} and {end} where the results go")
        from mapo_bench.report_closeness import TARGET_PLOT_FILE

        figure, closeness = (Path(os.path.relpath((dest / name).resolve(), readme.resolve().parent)).as_posix()
                             for name in (PLOT_FILE, TARGET_PLOT_FILE))
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        section = headline_markdown(results, figure, closeness if (dest / TARGET_PLOT_FILE).is_file() else None)
        write_text_atomic(readme, f"{head}{start}\n{section}\n{end}{tail}")
    return dest
