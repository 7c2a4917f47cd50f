"""Closeness to the data in the report (closeness.py computes it): per level, where each method lands against
the target (the base prompted with the chosen prefix: what the data asks for) on the preference metric and in
KID, as answer lines, a table and a plot. Rendered from results.json only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench.report import find_row, fmt_ci

DISPLAY = {"mapo": "MaPO", "dpo": "DPO", "sft": "SFT"}
TARGET_PLOT_FILE = "closeness_to_data.png"


def closeness_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The tuned-view, test-prompt "mapo vs dpo" preference rows that carry closeness (levels with a target)."""
    return [r for r in (find_row(results, name, "mapo vs dpo") for name in results["severity"]) if r and "closeness" in r]


def kid_cells(results: dict[str, Any], dataset: str) -> dict[str, str]:
    """The KID-to-target cells of a dataset (kid_to_target block): model -> "KID [CI]", and "mapo vs dpo" -> MaPO's
    KID closeness over DPO's; empty where the run has no such block or the dataset no target."""
    block = results.get("kid_to_target") or {}
    cells = {r["model"]: fmt_ci(r["kid"], r["ci_low"], r["ci_high"], 4, signed=False)
             for r in block.get("rows", []) if r["dataset"] == dataset}
    cells.update({p["comparison"]: fmt_ci(p["kid_closeness"], p["ci_low"], p["ci_high"], 4)
                  for p in block.get("pairs", []) if p["dataset"] == dataset})
    return cells


def closeness_lines(results: dict[str, Any]) -> list[str]:
    """MaPO's closeness to the data over DPO's per level (closeness.py), and the levels where a clear lead on
    the preference metric comes with landing clearly farther from the data: an overshoot, named up front."""
    from mapo_bench.closeness import overshoots

    rows = closeness_rows(results)
    if not rows:
        return []
    short = {"beyond the target": "beyond", "short of the target": "short", "level with the target": "level"}
    cells = [f"{r['dataset']} {fmt_ci(r['closeness'], r['closeness_ci_low'], r['closeness_ci_high'])} "
             f"(MaPO {short[r['target_side_a']]}, DPO {short[r['target_side_b']]})" for r in rows]
    over = [(r["dataset"], overshoots(r)) for r in rows if overshoots(r)]
    warning = ("**" + "; ".join(f"{DISPLAY.get(m, m)}'s lead at {name} is an overshoot" for name, m in over)
               + "** (ahead on the metric, but farther from the data than the other, beyond the target). ") if over else ""
    lines = [f"- Closeness to the data on `{rows[0]['metric']}` (|DPO - target| - |MaPO - target|, positive: MaPO's "
             f"mean lands nearer the target's, the base prompted with the chosen prefix, i.e. what the data asks for; "
             f"test prompts, tuned settings, 95% CI): {warning}" + "; ".join(cells) + "."]
    kid = [(r["dataset"], kid_cells(results, r["dataset"])) for r in rows]
    if any("mapo vs dpo" in c for _, c in kid):
        lines.append(f"- Closeness of the image distribution (KID of samples to the target's samples, features "
                     f"`{results['kid_to_target']['features']}`; MaPO nearer by KID_DPO - KID_MaPO, 95% CI): "
                     + "; ".join(f"{name} {c['mapo vs dpo']} (MaPO {c.get('mapo', '-')}, DPO {c.get('dpo', '-')}, "
                                 f"base {c.get('base', '-')})" for name, c in kid if "mapo vs dpo" in c) + ".")
    return lines


def closeness_table(results: dict[str, Any]) -> list[str]:
    """Per level: the target's mean, each method's gap to it (where it lands) and MaPO's closeness over DPO."""
    rows = closeness_rows(results)
    if not rows:
        return []
    lines = ["## Closeness to the data (test prompts, tuned settings)", "",
             "Gap to the target = the method's mean minus the target's (the base prompted with the chosen prefix: what "
             "the data asks for) on the preference metric, signed so that positive is beyond it; closeness = "
             "|DPO gap| - |MaPO gap|, positive: MaPO lands nearer the data. 95% CIs from the same resamples.", "",
             "KID to target: the kernel distance of the model's test samples to the target's (features as in the "
             "severity measure; 0: the same distribution); MaPO nearer by (KID) = KID_DPO - KID_MaPO.", "",
             "| dataset | metric | target mean | MaPO gap to target | DPO gap to target | MaPO closer by "
             "| KID to target: base | MaPO | DPO | MaPO nearer by (KID) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gaps = [f"{fmt_ci(r[f'target_gap_{s}'], *r[f'target_gap_{s}_ci'])} ({r[f'target_side_{s}']})" for s in "ab"]
        target = next((m for m in results["mean_scores"] if (m["dataset"], m["view"], m["model"], m["metric"])
                       == (r["dataset"], "tuned", "target", r["metric"])), None)
        mean = fmt_ci(target["mean"], target["ci_low"], target["ci_high"], 3, signed=False) if target else "-"
        kid = kid_cells(results, r["dataset"])
        lines.append(f"| {r['dataset']} | {r['metric']} | {mean} | {gaps[0]} | {gaps[1]} "
                     f"| {fmt_ci(r['closeness'], r['closeness_ci_low'], r['closeness_ci_high'])} | "
                     + " | ".join(kid.get(k, "-") for k in ("base", "mapo", "dpo", "mapo vs dpo")) + " |")
    return [*lines, ""]




def plot_target_gaps(results: dict[str, Any], path: Path) -> Path | None:
    """closeness_to_data.png, for runs whose levels have a target: left, each trained method's mean gap to the
    target on the preference metric (95% CI) against severity, the target at 0, so going beyond the data is
    seen as such; right, each model's KID to the target's samples (0: the same distribution). None (and no
    file) when no level has a target."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mapo_bench.io import write_bytes_atomic

    methods = list(results["config"]["methods"])
    gaps = {m: sorted((r for r in results["rows"] if (r["split"], r["view"], r["role"], r["comparison"])
                       == ("test", "tuned", "preference", f"{m} vs target") and r["severity_x"] is not None),
                      key=lambda r: r["severity_x"]) for m in methods}
    gaps = {m: rows for m, rows in gaps.items() if rows}
    if not gaps:
        return None
    kid = (results.get("kid_to_target") or {}).get("rows", [])
    colour = {m: f"C{i}" for i, m in enumerate(methods)} | {"base": "grey"}  # one colour per model in both panels
    fig, axes = plt.subplots(1, 2 if kid else 1, figsize=(12 if kid else 6, 4.6), squeeze=False)
    ax = axes[0][0]
    for method, rows in gaps.items():
        xs, ys = np.array([r["severity_x"] for r in rows]), np.array([r["advantage"] for r in rows])
        yerr = np.array([[y - r["advantage_ci_low"], r["advantage_ci_high"] - y] for y, r in zip(ys, rows, strict=True)]).T
        ax.errorbar(xs, ys, yerr=np.clip(yerr, 0, None), marker="o", capsize=3, color=colour[method],
                    label=DISPLAY.get(method, method))
    ax.axhline(0.0, color="black", lw=0.9, ls="--", label="target (what the data asks for)")
    metric = next(iter(gaps.values()))[0]["metric"]
    measure = results["severity"][next(iter(gaps.values()))[0]["dataset"]]["severity_measure"]
    ax.set_title(f"mean gap to the target on {metric}: above 0 = beyond the data", fontsize=10, pad=34)
    ax.set_xlabel(f"{measure} of the chosen side")
    ax.set_ylabel(f"model - target, {metric} (95% CI)")
    ax.legend(fontsize=8)
    if kid:
        ax = axes[0][1]
        x_of = {name: sev["severity_x"] for name, sev in results["severity"].items()}
        for model in ["base", *methods]:
            points = sorted(((x_of[r["dataset"]], r) for r in kid if r["model"] == model and x_of.get(r["dataset"]) is not None),
                            key=lambda p: p[0])
            if not points:
                continue
            xs, ys = np.array([x for x, _ in points]), np.array([r["kid"] for _, r in points])
            yerr = np.array([[y - r["ci_low"], r["ci_high"] - y] for y, (_, r) in zip(ys, points, strict=True)]).T
            ax.errorbar(xs, ys, yerr=np.clip(yerr, 0, None), marker="o", capsize=3, color=colour[model],
                        ls=":" if model == "base" else "-", label=DISPLAY.get(model, model))
        ax.axhline(0.0, color="black", lw=0.9, ls="--")
        ax.set_yscale("symlog", linthresh=1e-3)  # KIDs near 0 (the data's) and far from it, both readable
        ax.set_ylim(bottom=min(-1e-3, min(r["ci_low"] for r in kid)))  # unbiased KID can dip below 0 a little
        ax.set_title(f"KID of the samples to the target's ({results['kid_to_target']['features']} features)",
                     fontsize=10, pad=34)
        ax.set_xlabel(f"{measure} of the chosen side")
        ax.set_ylabel("KID to the target (95% CI, symlog; 0 = the data)")
        ax.legend(fontsize=8)
    levels = next(iter(gaps.values()))
    for ax in axes[0]:  # each level named once on a top axis, above its severity
        top = ax.secondary_xaxis("top")
        top.set_xticks([r["severity_x"] for r in levels], [r["dataset"] for r in levels], rotation=90, fontsize=6)
    fig.suptitle(f"{results['pipeline']}: where each model lands against the data (test prompts, tuned settings)",
                 fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())
