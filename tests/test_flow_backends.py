"""The flow-matching backends (sd3, flux) on tiny random-init pipelines built in code: the noise process
by hand, each family's timestep convention, every stage's entry points, training full and LoRA with the
outputs loaded by plain diffusers, and the one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pairs_fixture import write_pairs
from train_helpers import read_log, tiny_config

from mapo_bench.backends import load_backend
from mapo_bench.config import SamplerConfig
from mapo_bench.errors import MapoBenchError

PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs", n=6, ties=(4,))


@pytest.fixture(scope="module")
def backends(tiny_sd3, tiny_flux):
    return {"sd3": load_backend("sd3", str(tiny_sd3)), "flux": load_backend("flux", str(tiny_flux))}


class _Recorder(torch.nn.Module):
    """Stands in for a transformer: records the timestep it is called with, returns zeros of the input."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.seen: list[torch.Tensor] = []

    def forward(self, hidden_states, timestep, **kwargs):
        self.seen.append(timestep.clone())
        return (torch.zeros_like(hidden_states),)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flow_noise_and_target_by_hand(backends, name):
    """x0 = 1, noise = 3 at timestep 250 of T = 1000 (sigma 0.25): x_t = 0.75 * 1 + 0.25 * 3 = 1.5, and the
    target is the velocity noise - x0 = 2 (REFERENCE.md section 6)."""
    backend = backends[name]
    x0, noise = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 3.0)
    t = torch.tensor([250.0])
    assert backend.num_train_timesteps == 1000
    torch.testing.assert_close(backend.add_noise(x0, noise, t), torch.full_like(x0, 1.5))
    torch.testing.assert_close(backend.target(x0, noise, t), torch.full_like(x0, 2.0))
    assert backend.loss_weights(t) is None  # "none" by default
    # the severity grid: sigmas (k + 0.5) / 4 as timesteps sigma * 1000
    assert backend.severity_timesteps(4) == [125.0, 375.0, 625.0, 875.0]


def test_each_family_passes_its_own_timestep_convention(backends):
    """The scheduler's timestep 250 (sigma 0.25): SD3's transformer gets 250, FLUX's gets 0.25 (it
    multiplies by 1000 inside)."""
    sd3, flux = backends["sd3"], backends["flux"]
    t = torch.tensor([250.0])
    rec = _Recorder(sd3.denoiser.config)
    cond = sd3.encode_prompts(["a red dog"])
    sd3.predict(rec, torch.zeros(1, 4, 16, 16), t, cond)
    assert rec.seen[0].tolist() == [250.0]
    rec = _Recorder(flux.denoiser.config)
    cond = flux.encode_prompts(["a red dog"])
    flux.predict(rec, torch.zeros(1, 4, 16, 16), t, cond)
    assert rec.seen[0].tolist() == [0.25]


def test_training_draws_share_sigma_and_noise_within_a_pair(backends):
    """SD3 draws logit-normal densities, FLUX uniform (diffusers' scripts); both map them through the
    scheduler's timestep table, and a pair's chosen and rejected halves share timestep and noise."""
    assert (backends["sd3"].weighting_scheme, backends["flux"].weighting_scheme) == ("logit_normal", "none")
    for backend in backends.values():
        x0 = torch.zeros(6, 4, 8, 8)
        noise, t = backend.training_noise(x0, 3, torch.Generator().manual_seed(0), shared=True)
        assert noise.shape == x0.shape and t.shape == (6,)
        torch.testing.assert_close(noise[:3], noise[3:])
        torch.testing.assert_close(t[:3], t[3:])
        table = backend.noise_scheduler.timesteps
        assert all(bool((table == v).any()) for v in t)
        again = backend.training_noise(x0, 3, torch.Generator().manual_seed(0), shared=True)
        torch.testing.assert_close(again[1], t)  # seeded


def test_optional_loss_weighting_follows_diffusers(tiny_sd3):
    """loss_weighting=cosmap: w = 2 / (pi * (1 - 2 sigma + 2 sigma^2)); at sigma 0.5, 2 / (pi * 0.5) = 1.2732."""
    backend = load_backend("sd3", str(tiny_sd3), loss_weighting="cosmap")
    assert backend.loss_weights(torch.tensor([500.0])).item() == pytest.approx(4 / math.pi, abs=1e-6)
    with pytest.raises(MapoBenchError, match="loss_weighting 'bogus'"):
        load_backend("sd3", str(tiny_sd3), loss_weighting="bogus")


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_generate_is_seeded_per_image(backends, name):
    """Image i starts from noise seeded by seeds[i] alone: the same (prompt, seed) gives the same image in
    any batch."""
    backend = backends[name]
    sampler = SamplerConfig(steps=2, guidance=2.0, height=64, width=64)
    both = backend.generate(["a red dog", "a cat"], [3, 4], sampler)
    alone = backend.generate(["a cat"], [4], sampler)
    assert both[0].size == (64, 64)
    np.testing.assert_allclose(np.asarray(both[1], dtype=float), np.asarray(alone[0], dtype=float), atol=2)


def test_sd3_without_t5(tmp_path):
    """T5 is optional for SD3: ``text_encoder_3: null`` loads a copy saved without it."""
    from mapo_bench.testing import build_tiny_sd3

    folder = build_tiny_sd3(tmp_path / "sd3-no-t5", t5=False)
    backend = load_backend("sd3", str(folder), text_encoder_3=None)
    assert backend.record()["t5"] is False
    cond = backend.encode_prompts(["a dog"])
    assert cond["pooled_projections"].shape == (1, 32)


@pytest.mark.parametrize("backend,method,lora", [("sd3", "mapo", False), ("sd3", "dpo", True),
                                                 ("flux", "mapo", True), ("flux", "sft", False)])
def test_train_and_load_in_plain_diffusers(tmp_path, request, pairs, backend, method, lora):
    """Three steps; the transformer folder or the LoRA file loads into the family's diffusers pipeline
    (``from_pretrained`` / ``load_lora_weights``) and changes what it generates."""
    _train_and_reload(tmp_path, request, pairs, backend, method, lora)


@pytest.mark.slow
@pytest.mark.parametrize("backend,method,lora", [(b, m, lo) for b in ("sd3", "flux") for m in ("mapo", "dpo", "sft")
                                                 for lo in (False, True)
                                                 if (b, m, lo) not in {("sd3", "mapo", False), ("sd3", "dpo", True),
                                                                        ("flux", "mapo", True), ("flux", "sft", False)}])
def test_train_and_load_in_plain_diffusers_every_method(tmp_path, request, pairs, backend, method, lora):
    _train_and_reload(tmp_path, request, pairs, backend, method, lora)


def _train_and_reload(tmp_path, request, pairs, backend, method, lora):
    import diffusers
    from safetensors.torch import load_file

    from mapo_bench.training.loop import train

    base = request.getfixturevalue(f"tiny_{backend}")
    out = train(tiny_config(tmp_path, base, backend, method, lora, dataset=pairs))
    log = read_log(out)
    assert [row["step"] for row in log] == [1, 2, 3]
    assert all(math.isfinite(row["loss"]) for row in log)
    if method == "dpo":
        assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the model starts as its reference
    pipeline_cls = getattr(diffusers, PIPELINES[backend])

    def generate(pipe):
        pipe.set_progress_bar_config(disable=True)
        return np.asarray(pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                               generator=torch.Generator().manual_seed(0)).images)

    pipe = pipeline_cls.from_pretrained(str(base))
    before = generate(pipe)
    if lora:
        weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
        assert any(k.startswith("transformer.") for k in weights)
        pipe.load_lora_weights(str(out))
    else:
        trained = type(pipe.transformer).from_pretrained(str(out / "transformer"))
        pipe = pipeline_cls.from_pretrained(str(base), transformer=trained)
    after = generate(pipe)
    assert np.isfinite(after).all() and not np.allclose(before, after)


def test_flux_without_t5_is_one_line(tmp_path, tiny_flux):
    import shutil

    folder = tmp_path / "flux-no-t5"
    shutil.copytree(tiny_flux, folder)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(MapoBenchError, match="T5 encoder"):
        load_backend("flux", str(folder))


def test_an_sd3_model_given_to_sdxl_is_one_line(tiny_sd3):
    with pytest.raises(MapoBenchError, match="sd3"):
        load_backend("sdxl", str(tiny_sd3))


def test_a_lora_target_matching_no_module_is_one_line(tmp_path, tiny_sd3, pairs):
    from mapo_bench.training.loop import train

    cfg = tiny_config(tmp_path, tiny_sd3, "sd3", "mapo", True, dataset=pairs)
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"target_modules": ["attn.no_such_proj"]})})
    with pytest.raises(MapoBenchError, match="no_such_proj"):
        train(cfg)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_every_stage_runs_on_the_flow_backend(tmp_path, request, name):
    """build-dataset (4 Pick-Style pairs) -> mismatch (prefix excess on the flow error, a fixed sigma grid)
    -> train 2 steps (LoRA) -> sample the fine-tune; each stage writes what it writes on SDXL."""
    import json

    import pandas as pd

    from mapo_bench.config import validate
    from mapo_bench.data.builder import build_dataset
    from mapo_bench.data.config import BuildConfig
    from mapo_bench.evaluators.config import SampleConfig
    from mapo_bench.mismatch import MismatchConfig, measure_mismatch
    from mapo_bench.sampling import INDEX, sample
    from mapo_bench.training.loop import train

    base = request.getfixturevalue(f"tiny_{name}")
    sampler = {"steps": 2, "guidance": 2.0, "height": 64, "width": 64}
    data = build_dataset(validate(BuildConfig, {"backend": name, "model": str(base), "task": "pick-style",
                                                "split": "cartoon", "sampler": sampler, "num_prompts": 4,
                                                "batch_size": 4, "shard_size": 4, "out": str(tmp_path / "pairs")}))
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"]["pairs"] == 4 and manifest["backend"]["backend"] == name
    severity = measure_mismatch(MismatchConfig(dataset=data, backend=name, reference=str(base), timesteps=2, noises=1,
                                               reference_samples=4, features="pixels", resamples=20, sampler=sampler))
    measures = json.loads(severity.read_text())["measures"]
    assert np.isfinite(measures["prefix_excess_chosen"]["value"])
    model = train(tiny_config(tmp_path / "train", base, name, "mapo", True, dataset=data, max_steps=2))
    out = sample(SampleConfig(model=str(base), backend=name, lora=model, prompts="builtin:test", num_prompts=2,
                              seeds=[0], sampler=sampler, out=tmp_path / "samples", device="cpu"))
    assert len(pd.read_parquet(out / INDEX)) == 2


def test_text_encoders_leave_the_accelerator_once_captions_are_cached():
    """offload_text_encoders moves every text encoder that is not on the CPU there (and names it); encoders
    already on the CPU, and components that are not modules, stay as they are."""
    from types import SimpleNamespace

    from mapo_bench.backends.base import Backend

    class OnAccelerator(torch.nn.Module):
        def __init__(self, device):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(1, device=device))
            self.moved_to = None

        def to(self, device):
            self.moved_to = device
            return self

    t5, clip = OnAccelerator("meta"), OnAccelerator("cpu")
    fake = SimpleNamespace(pipeline=SimpleNamespace(text_encoder=clip, text_encoder_2=None, text_encoder_3=t5))
    assert Backend.offload_text_encoders(fake) == ["text_encoder_3"]
    assert t5.moved_to == "cpu" and clip.moved_to is None
