"""Test configuration: no hub, one torch thread, tiny models built in code (mapo_bench.testing)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MAPO_BENCH_THREADS", "1")
os.environ.pop("MAPO_BENCH_MODEL_ROOT", None)

import pytest  # noqa: E402

SHARED_RUNS = "tiny_runs"  # the session fixture that runs the tiny pipeline twice (about a minute)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist's ``--dist loadgroup``: the tests that read the tiny pipeline runs share one
    process (the runs are made once), every other test stays with its module (module fixtures are built
    once). Without xdist the marks do nothing. ``tryfirst``: xdist's worker reads the marks in its own
    collection hook, which otherwise runs first (measured: without it both workers built the tiny runs)."""
    for item in items:
        group = SHARED_RUNS if SHARED_RUNS in item.fixturenames else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    from mapo_bench.threads import configure_threads

    configure_threads()
    try:
        from diffusers.utils import logging as dlogging

        dlogging.disable_progress_bar()
        from transformers.utils import logging as tlogging

        tlogging.disable_progress_bar()
    except ImportError:
        pass
    yield torch


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory):
    """A tiny SDXL pipeline saved in hub layout (built once per session)."""
    from mapo_bench.testing import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    """A tiny SD1.5 pipeline saved in hub layout (built once per session)."""
    from mapo_bench.testing import build_tiny_sd15

    return build_tiny_sd15(tmp_path_factory.mktemp("tiny") / "sd15")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory):
    """A tiny SD3 pipeline (MMDiT, two CLIPs, T5) saved in hub layout (built once per session)."""
    from mapo_bench.testing import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny") / "sd3")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """A tiny FLUX pipeline (CLIP + T5, guidance-distilled) saved in hub layout (built once per session)."""
    from mapo_bench.testing import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny") / "flux")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny transformers CLIPModel + processor saved in hub layout."""
    from mapo_bench.testing import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny") / "clip")


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory):
    """A tiny random toy base (with its classifier) in hub layout, shared by the tests of one session."""
    from mapo_bench.toy.tiny import build_tiny_toy

    return build_tiny_toy(tmp_path_factory.mktemp("toy") / "base")


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """The full tiny toy pipeline (``tests/tiny_pipeline.py``) run twice, each in an empty folder: once in
    this process, once by ``mapo-bench run`` on the spec written as YAML (so the reproducibility test also
    covers the entry point); the report-page browser tests read these runs."""
    import subprocess
    import sys

    from tiny_pipeline import write_tiny_pipeline

    from mapo_bench.runner import run_pipeline

    root = tmp_path_factory.mktemp("runs")
    spec, pipeline = write_tiny_pipeline(root)
    first = run_pipeline(spec, out=root / "run1").parent
    second = root / "run2"
    done = subprocess.run([sys.executable, "-m", "mapo_bench", "run", str(pipeline), "--out", str(second)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return spec, [first, second]


CHROMIUM = os.environ.get("MAPO_BENCH_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by Playwright (no browser download). A missing browser fails the
    test, never skips it: CI installs it (`.ci/run`: apt-get install chromium)."""
    from pathlib import Path

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) "
                    "or point MAPO_BENCH_CHROMIUM at a chromium binary")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors and uncaught exceptions in ``page.errors``."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    yield page
    context.close()
