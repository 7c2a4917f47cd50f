"""The offline tiny-model kit: real diffusers classes, hub layout, save/load round trip, generation."""

from __future__ import annotations

import torch

from mapo_bench.backends import load_backend
from mapo_bench.config import SamplerConfig


def test_tiny_sdxl_round_trips_and_generates_64px(tiny_sdxl):
    assert (tiny_sdxl / "model_index.json").is_file() and (tiny_sdxl / "text_encoder_2").is_dir()
    backend = load_backend("sdxl", str(tiny_sdxl))
    images = backend.generate(["a cat", "Disney style animated image. a cat"], [7, 7],
                              SamplerConfig(steps=2, guidance=5.0))
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    again = backend.generate(["a cat"], [7], SamplerConfig(steps=2, guidance=5.0))
    assert list(images[0].getdata()) == list(again[0].getdata())


def test_tiny_sdxl_conditioning_sizes_agree(tiny_sdxl):
    backend = load_backend("sdxl", str(tiny_sdxl))
    cond = backend.encode_prompts(["a cat", "a dog"])
    assert cond["encoder_hidden_states"].shape == (2, 77, backend.denoiser.config.cross_attention_dim)
    cond.update(backend.image_conditioning([(64, 64), (80, 64)], [(0, 0), (8, 0)], (64, 64)))
    assert cond["time_ids"].tolist()[1] == [80, 64, 8, 0, 64, 64]
    latents = backend.encode_images(torch.rand(2, 3, 64, 64) * 2 - 1, torch.Generator().manual_seed(0))
    pred = backend.predict(backend.denoiser, latents, torch.tensor([10, 900]), cond)
    assert pred.shape == latents.shape == (2, 4, 32, 32)


def test_tiny_sd15_generates_with_safety_checker_disabled(tiny_sd15):
    backend = load_backend("sd15", str(tiny_sd15))
    assert backend.pipeline.safety_checker is None and backend.record()["safety_checker"] == "disabled"
    images = backend.generate(["a cat"], [0], SamplerConfig(steps=2, guidance=7.5))
    assert images[0].size == (64, 64)


def test_hub_id_fails_loudly_offline():
    import pytest

    from mapo_bench.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="stable-diffusion-xl-base-1.0"):
        load_backend("sdxl")
