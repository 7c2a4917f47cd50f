"""The training loop on tiny SDXL and SD1.5: every method, full and LoRA, 3 steps; outputs load in diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pairs_fixture import write_pairs
from train_helpers import read_log, tiny_config

from mapo_bench.training.loop import train

PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd15": "StableDiffusionPipeline"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs", n=6, ties=(4,))


def _generate(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    return np.asarray(images)


@pytest.mark.parametrize("backend", ["sdxl", "sd15"])
@pytest.mark.parametrize("method", ["mapo", "dpo", "sft"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_three_steps_train_and_load_in_diffusers(tmp_path, request, pairs, backend, method, lora):
    """Loss finite every step, the trained weights differ from the base, and a plain diffusers
    pipeline loads the output (UNet folder or LoRA file) and generates finite images."""
    import diffusers
    from safetensors.torch import load_file

    base = request.getfixturevalue(f"tiny_{backend}")
    out = train(tiny_config(tmp_path, base, backend, method, lora, dataset=pairs))
    log = read_log(out)
    assert [row["step"] for row in log] == [1, 2, 3]
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) for row in log)
    assert {"loss", "m_w", "lr", "grad_norm", "step_time", "samples_per_s"} <= set(log[0])
    if method != "sft":
        assert {"m_l", "margin", "implicit_acc"} <= set(log[0])
    manifest = (out / "manifest.json").read_text()
    assert '"config_hash"' in manifest and '"steps": 3' in manifest
    pipeline_cls = getattr(diffusers, PIPELINES[backend])
    if lora:
        weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
        lora_b = [v for k, v in weights.items() if "lora_B" in k or "lora.up" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # gaussian init starts B at zero
        pipe = pipeline_cls.from_pretrained(str(base))
        before = _generate(pipe)
        pipe.load_lora_weights(str(out))
        assert not np.allclose(before, _generate(pipe))  # the adapter is applied
    else:
        trained = diffusers.UNet2DConditionModel.from_pretrained(str(out / "unet"))
        reference = diffusers.UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
        changed = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(),
                                                          reference.state_dict().values(), strict=True)]
        assert any(changed)
        pipe = pipeline_cls.from_pretrained(str(base), unet=trained)
    images = _generate(pipe)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_starts_at_log2(tmp_path, tiny_sd15, pairs, lora):
    """Model == reference at step 1 (a frozen copy, or LoRA with B = 0 and adapters off), so
    inside = -0.5 * beta * ((m_w - m_l) - (r_w - r_l)) = 0 and loss = -log sigmoid(0) = log 2."""
    out = train(tiny_config(tmp_path, tiny_sd15, "sd15", "dpo", lora, dataset=pairs, max_steps=2))
    first = read_log(out)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["m_w"] == first["r_w"] and first["m_l"] == first["r_l"]
    assert read_log(out)[1]["loss"] != pytest.approx(math.log(2), abs=1e-6)
