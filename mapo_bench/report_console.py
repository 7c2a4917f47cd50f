"""The answer printed at the end of ``mapo-bench run`` and ``mapo-bench report`` (issue 16): per level the
severity and the MaPO - Diffusion-DPO effect with its CI, the verdict of each mismatch side, and where the
page and the plot are. Rendered from results.json, like every other view of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapo_bench.report import HTML_FILE, PLOT_FILE, find_row, fmt_ci, headline_rows
from mapo_bench.report_closeness import closeness_rows
from mapo_bench.trend import standing_text


def failed_methods(results: dict[str, Any], dataset: str) -> list[str]:
    """The methods of ``dataset`` whose every setting missed the fidelity gate on validation."""
    return [c["method"] for c in results["selection_check"] if c["dataset"] == dataset and c["status"] == "failed"]


def answer_table(results: dict[str, Any]) -> Any:
    """A rich Table: dataset, severity x [95% CI], the MaPO - DPO mean gap [95% CI] and its win rate; a failed
    cell names the methods that missed the gate, and a run with a matched view (every method at fixed settings,
    whatever the gate says) gets that view's gap beside it, so a failed tuned cell still shows what happened. Where
    the levels have a target, MaPO's closeness to the data over DPO's follows the win rate (closeness.py)."""
    from rich.table import Table

    comparisons, rows = headline_rows(results)
    matched = any(r["view"] == "matched" for r in results["rows"])
    table = Table(title=f"{results['pipeline']}: MaPO - Diffusion-DPO mean preference gap by severity\n"
                        "(test prompts, 95% CIs; tuned: each method's selected setting"
                        + ("; matched: the fixed settings, whatever the gate says" if matched else "") + ")")
    closer = bool(closeness_rows(results))
    columns = (["dataset", "severity", "tuned", "wins"] + (["closer to data"] if closer else [])
               + (["matched", "wins"] if matched else []))
    for column in columns:  # intervals may wrap at their space on a narrow terminal; names and win rates do not
        table.add_column(column, justify="left" if column == "dataset" else "right",
                         no_wrap=column in ("dataset", "wins"))
    for name, sev, cells in rows:
        x = fmt_ci(sev["severity_x"], sev["severity_ci_low"], sev["severity_ci_high"], 4, signed=False)
        tuned = cells.get("mapo vs dpo")
        if tuned is not None or "mapo vs dpo" not in comparisons:
            shown = _gap_cells(tuned)
        else:
            shown = [f"failed: {', '.join(m for m in failed_methods(results, name) if m in ('mapo', 'dpo'))} (gate)", "-"]
        if closer:
            shown.append(fmt_ci(tuned["closeness"], tuned["closeness_ci_low"], tuned["closeness_ci_high"])
                         if tuned and "closeness" in tuned else "-")
        if matched:
            shown += _gap_cells(find_row(results, name, "mapo vs dpo", view="matched"))
        table.add_row(name, x, *shown)
    return table


def _gap_cells(row: dict[str, Any] | None) -> list[str]:
    if row is None:
        return ["-", "-"]
    return [fmt_ci(row["advantage"], row["advantage_ci_low"], row["advantage_ci_high"]), f"{row['win_rate']:.2f}"]


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One line per mismatch side: the primary test's verdict and slope."""
    lines = []
    for block in results["trend"].values():
        p = block["primary"]
        slope = "" if p["slope"] is None else \
            f": slope {fmt_ci(p['slope'], p['slope_ci_low'], p['slope_ci_high'], 2)} per unit of {p['severity_measure']}"
        standing = standing_text(p)
        lines.append(f"{p['side']}-side mismatch: MaPO's edge over DPO on {p['metric']} {p['verdict']}{slope}"
                     + (f" ({standing})" if standing else ""))
    return lines


def print_answer(report_dir: Path, console: Any = None) -> None:
    """Print the answer table, the verdicts and the paths of index.html and the plot."""
    from rich.console import Console

    from mapo_bench.io import read_json

    console = console or Console()
    results = read_json(Path(report_dir) / "results.json")
    console.print(answer_table(results))
    for line in verdict_lines(results):
        console.print(line, highlight=False)
    for label, name in (("page", HTML_FILE), ("plot", PLOT_FILE)):
        if (Path(report_dir) / name).is_file():
            console.print(f"{label}: {Path(report_dir) / name}", highlight=False, soft_wrap=True)
