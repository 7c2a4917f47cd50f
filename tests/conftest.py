"""Test configuration: no hub, one torch thread, tiny models built in code (mapo_bench.testing)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MAPO_BENCH_THREADS", "1")
os.environ.pop("MAPO_BENCH_MODEL_ROOT", None)

import pytest  # noqa: E402


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
