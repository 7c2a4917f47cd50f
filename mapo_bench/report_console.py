"""The answer printed at the end of ``mapo-bench run`` and ``mapo-bench report`` (issue 16): per level the
severity and the MaPO - Diffusion-DPO effect with its CI, the verdict of each mismatch side, and where the
page and the plot are. Rendered from results.json, like every other view of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapo_bench.report import HTML_FILE, PLOT_FILE, fmt_ci, headline_rows


def answer_table(results: dict[str, Any]) -> Any:
    """A rich Table: dataset, severity x [95% CI], the MaPO - DPO mean gap [95% CI] and its win rate."""
    from rich.table import Table

    comparisons, rows = headline_rows(results)
    table = Table(title=f"{results['pipeline']}: MaPO - Diffusion-DPO mean preference gap by severity\n"
                        "(test prompts, tuned settings, 95% CIs; metric per side below)")
    for column in ("dataset", "severity", "mapo - dpo", "wins"):
        table.add_column(column, justify="left" if column == "dataset" else "right", no_wrap=True)
    for name, sev, cells in rows:
        row = cells.get("mapo vs dpo")
        x = fmt_ci(sev["severity_x"], sev["severity_ci_low"], sev["severity_ci_high"], 4, signed=False)
        if row is None:
            table.add_row(name, x, "failed cell" if "mapo vs dpo" in comparisons else "-", "-")
            continue
        table.add_row(name, x, fmt_ci(row["advantage"], row["advantage_ci_low"], row["advantage_ci_high"]),
                      f"{row['win_rate']:.2f}")
    return table


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One line per mismatch side: the primary test's verdict and slope."""
    lines = []
    for block in results["trend"].values():
        p = block["primary"]
        slope = "" if p["slope"] is None else \
            f": slope {fmt_ci(p['slope'], p['slope_ci_low'], p['slope_ci_high'], 2)} per unit of {p['severity_measure']}"
        lines.append(f"{p['side']}-side mismatch: MaPO's edge over DPO on {p['metric']} {p['verdict']}{slope}")
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
