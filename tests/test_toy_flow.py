"""The toy world on a rectified-flow model (``toy-flow``, issue 13): the pretraining noise process by hand,
the backend's flow noise process, the one-line errors between the two objectives, training through the
one loop, and a tiny flow pretrain that borrows the shipped classifier."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pairs_fixture import write_pairs
from train_helpers import read_log, tiny_config

from mapo_bench.backends import load_backend
from mapo_bench.config import SamplerConfig
from mapo_bench.errors import MapoBenchError


@pytest.fixture(scope="module")
def flow_base(tmp_path_factory):
    from mapo_bench.toy.tiny import build_tiny_toy

    return build_tiny_toy(tmp_path_factory.mktemp("toyflow") / "base", objective="flow")


@pytest.fixture(scope="module")
def v_base(tmp_path_factory):
    from mapo_bench.toy.tiny import build_tiny_toy

    return build_tiny_toy(tmp_path_factory.mktemp("toyv") / "base")


def test_pretraining_noise_by_hand():
    """bias 1, u = 0.25 -> sigma 0.25; x0 = 1, noise = 3: x_t = 0.75 + 0.75 = 1.5, timestep 250, target 2.
    bias 2, u = 0.5 -> level 1 - 0.5^2 = 0.75 (favours high noise)."""
    from mapo_bench.toy.model import PretrainingNoise

    x0, noise = torch.ones(2, 12, 2, 2), torch.full((2, 12, 2, 2), 3.0)
    noisy, t, target = PretrainingNoise("flow", 1.0)(x0, noise, torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(noisy[0], torch.full_like(x0[0], 1.5))
    torch.testing.assert_close(noisy[1], x0[1])  # sigma 0: the clean image
    torch.testing.assert_close(t, torch.tensor([250.0, 0.0]))
    torch.testing.assert_close(target, torch.full_like(x0, 2.0))
    _, t2, _ = PretrainingNoise("flow", 2.0)(x0[:1], noise[:1], torch.tensor([0.5]))
    torch.testing.assert_close(t2, torch.tensor([750.0]))


def test_pretraining_noise_v_is_the_ddpm_velocity():
    """The v objective: integer t = floor(level * T) and diffusers' own add_noise / get_velocity."""
    from diffusers import DDPMScheduler

    from mapo_bench.toy.model import PretrainingNoise, scheduler_config

    x0, noise = torch.randn(3, 12, 2, 2), torch.randn(3, 12, 2, 2)
    noisy, t, target = PretrainingNoise("v", 1.3)(x0, noise, torch.tensor([0.0, 0.5, 0.999]))
    expected_t = ((1 - (1 - torch.tensor([0.0, 0.5, 0.999])) ** 1.3) * 1000).long().clamp(0, 999)
    assert torch.equal(t, expected_t)
    ddpm = DDPMScheduler(**{k: v for k, v in scheduler_config("v").items() if k != "timestep_spacing"})
    torch.testing.assert_close(noisy, ddpm.add_noise(x0, noise, t))
    torch.testing.assert_close(target, ddpm.get_velocity(x0, noise, t))


def test_toy_flow_backend_noise_process(flow_base):
    """The fine-tuning noise process is the flow families' (same numbers as sd3 / flux): sigma 0.25 ->
    x_t 1.5, target 2; the severity grid is in sigmas; uniform training sigmas by default."""
    backend = load_backend("toy-flow", str(flow_base))
    assert type(backend.noise_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    x0, noise, t = torch.ones(1, 12, 2, 2), torch.full((1, 12, 2, 2), 3.0), torch.tensor([250.0])
    torch.testing.assert_close(backend.add_noise(x0, noise, t), torch.full_like(x0, 1.5))
    torch.testing.assert_close(backend.target(x0, noise, t), torch.full_like(x0, 2.0))
    assert backend.severity_timesteps(4) == [125.0, 375.0, 625.0, 875.0]
    record = backend.record()
    assert record["backend"] == "toy-flow" and record["weighting_scheme"] == "none" and record["gate"] == "ungated"
    noise_draw, timesteps = backend.training_noise(torch.zeros(4, 12, 2, 2), 2, torch.Generator().manual_seed(0), True)
    assert torch.equal(timesteps[:2], timesteps[2:]) and torch.equal(noise_draw[:2], noise_draw[2:])
    assert timesteps.dtype == torch.float32 and ((timesteps > 0) & (timesteps <= 1000)).all()


def test_toy_flow_generates_seeded_images(flow_base):
    """An image is a function of its (prompt, seed), not of its batch: drawn beside another prompt and alone
    it agrees up to rounding (batched kernels may round one grey level differently on some CPUs: seen on an
    AMD EPYC, 1 value of 3,072), and another seed gives another image (its mean difference, 105 grey levels
    measured, is far beyond what rounding can move: at most 1)."""
    import numpy as np

    backend = load_backend("toy-flow", str(flow_base))
    sampler = SamplerConfig(steps=3, guidance=2.0)
    a = backend.generate(["a red circle", "a blue square"], [5, 6], sampler)
    alone, other_seed = (np.asarray(backend.generate(["a blue square"], [seed], sampler)[0], dtype=int)
                         for seed in (6, 7))
    beside = np.asarray(a[1], dtype=int)
    assert a[0].size == (32, 32)
    assert np.abs(beside - alone).max() <= 1 and (beside == alone).mean() > 0.99
    assert np.abs(other_seed - alone).mean() > 5


def test_a_base_given_to_the_other_toy_backend_is_one_line(flow_base, v_base):
    with pytest.raises(MapoBenchError, match="flow.*--backend toy-flow"):
        load_backend("toy", str(flow_base))
    with pytest.raises(MapoBenchError, match="'v'.*--backend toy"):
        load_backend("toy-flow", str(v_base))
    with pytest.raises(MapoBenchError, match="weighting_scheme"):
        load_backend("toy-flow", str(flow_base), weighting_scheme="cubic")


@pytest.mark.parametrize(("method", "lora"), [("mapo", False), ("dpo", True)])
def test_toy_flow_trains_through_the_one_loop(tmp_path, flow_base, method, lora):
    pairs = write_pairs(tmp_path / "pairs", n=4)
    out_dir = tmp_path / "run"
    from mapo_bench.training.loop import train

    out = train(tiny_config(out_dir, flow_base, "toy-flow", method, lora, dataset=pairs))
    log = read_log(out)
    assert log and all(math.isfinite(r["loss"]) for r in log)
    if method == "dpo":  # at the first step the policy is the reference: the DPO loss is log 2
        assert abs(log[0]["loss"] - math.log(2)) < 1e-4
    kwargs = {"lora": str(out)} if lora else {"unet": str(out / "unet")}
    backend = load_backend("toy-flow", str(flow_base), **kwargs)
    assert backend.generate(["a red circle"], [0], SamplerConfig(steps=2, guidance=1.0))[0].size == (32, 32)


def test_tiny_flow_pretrain_borrows_the_classifier(tmp_path, monkeypatch):
    """A flow pretrain whose evaluator config, seed and process count match a finished base's copies that
    base's classifier (one instrument for both objectives) instead of training its own."""
    import mapo_bench.toy.gate as gate
    from mapo_bench.toy.config import ToyPretrainConfig, toy_evaluator_hash
    from mapo_bench.toy.pretrain import pretrain
    from mapo_bench.toy.tiny import TINY_MODEL

    captions = gate.gate_captions()[::24]
    monkeypatch.setattr(gate, "gate_captions", lambda: captions)

    def config(out, objective):
        return ToyPretrainConfig.model_validate({
            "out": str(out), "objective": objective, "processes": 1, "steps": 2, "batch_size": 4,
            "checkpoint_every": 2, "model": TINY_MODEL, "data": {"pool_size": 16},
            "evaluators": {"steps": 2, "pool_size": 16, "batch_size": 8, "width": 8},
            "gate": {"seeds_per_caption": 1, "enforce": False, "reason": "tiny test base"},
            "sampler": {"steps": 1, "guidance": 2.0}})

    v_cfg, flow_cfg = config(tmp_path / "v", "v"), config(tmp_path / "flow", "flow")
    assert toy_evaluator_hash(v_cfg) == toy_evaluator_hash(flow_cfg)
    v_out = pretrain(v_cfg)
    monkeypatch.setattr("mapo_bench.toy.pretrain.trained_candidates", lambda out: [v_out])
    flow_out = pretrain(flow_cfg)
    manifest = json.loads((flow_out / "manifest.json").read_text())
    assert manifest["classifier_from"]["folder"] == str(v_out)
    assert (flow_out / "evaluators" / "classifier.safetensors").read_bytes() == \
        (v_out / "evaluators" / "classifier.safetensors").read_bytes()
    assert json.loads((flow_out / "toy_pipeline.json").read_text())["objective"] == "flow"
    backend = load_backend("toy-flow", str(flow_out))
    assert backend.generate(["a red circle"], [0], SamplerConfig(steps=2, guidance=2.0))[0].size == (32, 32)


@pytest.mark.parametrize(("recipe", "objective"), [("pretrain.yaml", "v"), ("pretrain-flow.yaml", "flow")])
def test_pretrain_recipes_spell_out_the_shipped_defaults(recipe, objective):
    from pathlib import Path

    import yaml

    from mapo_bench.toy.config import ToyPretrainConfig, default_config, toy_config_hash

    path = Path(__file__).resolve().parent.parent / "recipes" / "toy" / recipe
    cfg = ToyPretrainConfig.model_validate(yaml.safe_load(path.read_text()))
    assert toy_config_hash(cfg) == toy_config_hash(default_config(objective))


def test_shipped_flow_base_matches_its_config_and_passed_its_gate():
    """The shipped toy-flow weights come from default_config("flow"), passed the enforced gate, use the v
    base's classifier (same bytes: one instrument), and sample."""
    from mapo_bench.toy.shipped import ASSETS, read_manifest, shipped_dir, stale_message

    folder = shipped_dir("toy-flow")
    manifest = read_manifest(folder)
    assert stale_message(manifest, "toy-flow") is None, stale_message(manifest, "toy-flow")
    assert manifest["gate_verdict"]["status"] == "passed" and manifest["gate_verdict"]["enforce"] is True
    assert (folder / "evaluators" / "classifier.safetensors").read_bytes() == \
        (ASSETS / "evaluators" / "classifier.safetensors").read_bytes()
    backend = load_backend("toy-flow")
    assert backend.record()["gate"] == "gated"
    assert backend.generate(["cartoon style: a large blue square on the right"], [0], backend.default_sampler)[0].size == (32, 32)
