"""``report/index.html``: one self-contained page of a run (issue 16), rendered from results.json and the
run's own files only: the verdict and trend numbers first, the severity plot, every table (sortable, with
CIs), the selection grid with eligibility, the base's gate, and per-dataset sample galleries whose images
carry their prompt, seed, model and scores (hover, or click for the details panel).

No network at view time: styles and script are inline; images are the run's files, linked relative to
``report/``, so the page opens from the file system (``file://``) and from ``mapo-bench serve``.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from mapo_bench.results import selected_models

TEMPLATE = "report.html"
GALLERY_PROMPTS = 6  # prompts per dataset in the gallery: the page stays small for runs with many images


def inline_markdown(text: str) -> Any:
    """The report's markdown lines as safe HTML (``Markup``): escaped, then ``**bold**`` and ```code``` only."""
    from markupsafe import Markup

    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", out))


def _image_scores(run_dir: Path, label: str, dataset: str, split: str) -> dict[tuple[int, int], dict[str, float]]:
    import pandas as pd

    from mapo_bench.runner import scores_label

    path = run_dir / "scores" / scores_label(label, dataset) / split / "scores.parquet"
    if not path.is_file():
        return {}
    frame = pd.read_parquet(path, columns=["prompt_id", "seed", "metric", "score"])
    table: dict[tuple[int, int], dict[str, float]] = {}
    for row in frame.itertuples(index=False):
        table.setdefault((int(row.prompt_id), int(row.seed)), {})[row.metric] = float(row.score)
    return table


def gallery(run_dir: Path, results: dict[str, Any], dataset: str, split: str = "test",
            max_prompts: int = GALLERY_PROMPTS, scores: bool = True) -> dict[str, Any] | None:
    """A dataset's gallery: column names and rows of images (file, src relative to ``report/``, prompt, seed,
    model, scores), the first ``max_prompts`` prompts at their first sampling seed. ``complete``: every
    model has its samples (the target is optional: only tasks with a chosen prefix have one)."""
    import pandas as pd

    report = run_dir / "report"
    columns, indexes, complete = [], [], True
    for name, label in selected_models(results, dataset):
        folder = run_dir / "samples" / label / split
        if (folder / "index.parquet").is_file():
            columns.append((name, label, folder))
            indexes.append(pd.read_parquet(folder / "index.parquet"))
        elif name != "target":
            complete = False
    if not columns:
        return None
    first = indexes[0].sort_values(["prompt_id", "seed"]).drop_duplicates("prompt_id").head(max_prompts)
    tables = [_image_scores(run_dir, label, dataset, split) if scores else {} for _, label, _ in columns]
    rows = []
    for item in first.itertuples(index=False):
        key = (int(item.prompt_id), int(item.seed))
        cells = []
        for (name, label, folder), index, table in zip(columns, indexes, tables, strict=True):
            match = index[(index["prompt_id"] == key[0]) & (index["seed"] == key[1])]
            if not len(match):
                cells.append(None)
                continue
            file = folder / match.iloc[0]["file"]
            cells.append({"file": file, "src": Path(os.path.relpath(file, report)).as_posix(),
                          "prompt": match.iloc[0]["prompt"], "seed": key[1], "model": label, "column": name,
                          "scores": table.get(key, {})})
        rows.append({"prompt": item.prompt, "cells": cells})
    return {"dataset": dataset, "columns": [name for name, _, _ in columns], "rows": rows, "complete": complete}


def data_cards(run_dir: Path, results: dict[str, Any]) -> dict[str, str]:
    """dataset -> the relative link of its data card (README.md of the built dataset), where it exists."""
    cards = {}
    for name in results["severity"]:
        card = run_dir / "datasets" / name / "README.md"
        if card.is_file():
            cards[name] = Path(os.path.relpath(card, run_dir / "report")).as_posix()
    return cards


def render_html(run_dir: Path, results: dict[str, Any], written: Path | None = None) -> str:
    """The page's HTML (every number from ``results``; the tables share the markdown report's formatting).
    ``written``: the folder the report files are being written to (default ``report/``)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from mapo_bench.report import PLOT_FILE, answer_lines, base_note, fmt_ci, headline_rows
    from mapo_bench.report_closeness import TARGET_PLOT_FILE, closeness_rows, kid_cells

    env = Environment(loader=PackageLoader("mapo_bench", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["ci"] = lambda v, lo=None, hi=None, digits=3, signed=True: fmt_ci(v, lo, hi, digits, signed)
    env.filters["md"] = inline_markdown
    run_dir = Path(run_dir)
    galleries = [g for g in (gallery(run_dir, results, d) for d in results["severity"]) if g]
    comparisons, headline = headline_rows(results)
    return env.get_template(TEMPLATE).render(
        r=results, answer=answer_lines(results), base_note=base_note(results), plot=PLOT_FILE,
        plot_exists=((written or run_dir / "report") / PLOT_FILE).is_file(), comparisons=comparisons, headline=headline,
        galleries=galleries, cards=data_cards(run_dir, results), closeness=[(row, kid_cells(results, row["dataset"])) for row in closeness_rows(results)],
        target_plot=TARGET_PLOT_FILE if ((written or run_dir / "report") / TARGET_PLOT_FILE).is_file() else None,
        trend_rows=[(side, label, t) for side, block in results["trend"].items()
                    for label, t in [("primary: mapo vs dpo", block["primary"]), *block["secondary"].items()]])
