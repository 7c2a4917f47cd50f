"""``report/index.html`` (issue 16): rendered from results.json and the run's files, opened from the file
system in headless chromium: no console errors, the verdict and every table shown, sortable tables, sample
images that load and carry their prompt, seed, model and scores."""

from __future__ import annotations

import json

TABLES = ("headline", "trend", "severity", "gate-check", "selection", "rows", "means", "wall")


def test_inline_markdown_escapes_and_keeps_only_bold_and_code():
    from mapo_bench.report_html import inline_markdown

    assert str(inline_markdown("**grows** on `toy-style` <script>x</script> & more")) == \
        "<strong>grows</strong> on <code>toy-style</code> &lt;script&gt;x&lt;/script&gt; &amp; more"


def test_report_page_from_the_file_system(tiny_runs, page):
    _, (run, _) = tiny_runs
    index = run / "report" / "index.html"
    assert index.is_file()
    results = json.loads((run / "report" / "results.json").read_text())
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    assert page.errors == []
    answer = page.inner_text("#answer")
    for block in results["trend"].values():  # the verdict of every side, as results.json has it
        assert block["primary"]["verdict"] in answer
    for table in TABLES:
        assert page.locator(f"#{table} tbody tr").count() >= 1, table
    assert page.locator("#rows tbody tr").count() == len(results["rows"])
    from mapo_bench.report_closeness import closeness_rows

    assert closeness_rows(results), "the tiny run should have a level with a target and both mapo and dpo"
    assert page.locator("#closeness tbody tr").count() == len(closeness_rows(results))  # the levels with a target
    kid = results["kid_to_target"]  # KID of every selected model's samples to the target's, from the run's images
    assert kid["rows"] and not kid["skipped"] and {"base", "mapo"} <= {r["model"] for r in kid["rows"]}
    assert page.locator("#plot").evaluate("img => img.naturalWidth") > 0
    assert page.locator("#target-plot").evaluate("img => img.naturalWidth") > 0  # the tiny run's levels have targets
    # every gallery image loads and names its prompt, seed and model; a click pins them in the details panel
    images = page.locator(".gallery img")
    assert images.count() >= 2 * len(results["severity"])
    assert all(w > 0 for w in images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)"))
    first = images.first
    title = first.get_attribute("title")
    assert first.get_attribute("data-prompt") in title and "seed" in title and "toy-style" in title
    first.click()
    assert first.get_attribute("data-model") in page.inner_text("#details")
    # sorting: a click on the rows table's advantage header orders the rows by it, a second click reverses
    page.click("details:has(#rows) > summary")  # the long tables start folded
    header = page.locator("#rows thead th", has_text="advantage")
    for expected in (sorted, lambda v: sorted(v, reverse=True)):
        header.click()
        values = [float(v) for v in page.locator("#rows tbody td[data-sort]:nth-child(7)").evaluate_all(
            "cells => cells.map(c => c.dataset.sort)")]
        assert values == expected(values)
    # links to the run's files resolve
    for href in ("results.json", "table.csv", "table.md"):
        assert (run / "report" / href).is_file()
    assert page.errors == []


def test_the_printed_answer_shows_the_matched_view_beside_the_tuned_one(tiny_runs):
    """A run with a matched view prints its MaPO - DPO gap per dataset beside the tuned one, the numbers of
    results.json's matched rows; a tuned cell that failed names the method that missed the gate."""
    from rich.console import Console

    from mapo_bench.report import find_row, fmt_ci
    from mapo_bench.report_console import failed_methods, print_answer

    _, (run, _) = tiny_runs
    results = json.loads((run / "report" / "results.json").read_text())
    console = Console(record=True, width=200)
    print_answer(run / "report", console)
    lines = console.export_text().splitlines()
    assert any("matched" in line and "tuned" in line for line in lines)
    for dataset in results["severity"]:
        line = next(line for line in lines if line.startswith(f"│ {dataset} "))
        matched = find_row(results, dataset, "mapo vs dpo", view="matched")
        assert fmt_ci(matched["advantage"], matched["advantage_ci_low"], matched["advantage_ci_high"]) in line
        tuned = find_row(results, dataset, "mapo vs dpo")
        if tuned is None:
            assert f"failed: {', '.join(failed_methods(results, dataset))}" in line
        else:
            assert fmt_ci(tuned["advantage"], tuned["advantage_ci_low"], tuned["advantage_ci_high"]) in line
