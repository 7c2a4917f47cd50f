"""ToyBackend on a tiny untrained toy base: generation, training ops, save/load, LoRA, the gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mapo_bench.config import SamplerConfig
from mapo_bench.errors import MapoBenchError

PROMPTS = ["a small red circle on the left", "cartoon style: a small red circle on the left"]
FAST = SamplerConfig(steps=2, guidance=2.0)


@pytest.fixture(scope="module")
def backend(tiny_toy):
    from mapo_bench.backends.toy import ToyBackend

    return ToyBackend.load(str(tiny_toy))


def _pixels(images):
    return [np.asarray(i) for i in images]


def test_generate_is_seeded_per_image(backend):
    """Image i depends on (prompt i, seed i) only: the same pair gives the same bytes in any batch."""
    a = _pixels(backend.generate(PROMPTS, [3, 3], FAST))
    b = _pixels(backend.generate([PROMPTS[1], PROMPTS[0], PROMPTS[0]], [3, 4, 3], FAST))
    assert a[0].shape == (32, 32, 3)
    np.testing.assert_array_equal(a[0], b[2])
    np.testing.assert_array_equal(a[1], b[0])
    assert not np.array_equal(b[1], b[2])  # another seed, other noise
    assert backend.default_sampler.steps == 15 and backend.default_sampler.guidance == 2.0
    assert backend.pipeline.scheduler.config.timestep_spacing == "trailing"


def test_encode_is_lossless_and_shapes(backend):
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = backend.latent_distribution(pixels)
    assert mean.shape == (2, 12, 16, 16) and torch.count_nonzero(std) == 0
    latents = backend.encode_images(pixels, torch.Generator().manual_seed(0))
    torch.testing.assert_close(backend.decode_latents(latents), pixels, rtol=0, atol=0)
    cond = backend.encode_prompts(PROMPTS)
    width = backend.text_encoder.config.hidden_size
    assert cond["encoder_hidden_states"].shape == (2, backend.pipeline.arch.max_length, width)
    assert cond["class_labels"].shape == (2, 2 * width)
    t = torch.tensor([10, 900])
    pred = backend.predict(backend.denoiser, latents, t, cond)
    assert pred.shape == latents.shape
    noise = torch.randn_like(latents)
    assert backend.noise_scheduler.config.prediction_type == "v_prediction"
    torch.testing.assert_close(backend.target(latents, noise, t), backend.noise_scheduler.get_velocity(latents, noise, t))


def test_record_marks_ungated(backend):
    rec = backend.record()
    assert rec["backend"] == "toy" and rec["gate"] == "ungated" and rec["gate_status"] == "ungated"
    assert backend.check_gate()["status"] == "ungated"  # enforce false + reason: allowed, marked


def _perturb(unet, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def test_full_unet_round_trip(backend, tiny_toy, tmp_path):
    from mapo_bench.backends.toy import ToyBackend
    from mapo_bench.toy.model import ToyPipeline

    tuned = ToyBackend.load(str(tiny_toy))
    _perturb(tuned.denoiser)
    tuned.save_denoiser(tuned.denoiser, str(tmp_path / "unet"))
    expect = _pixels(tuned.generate(PROMPTS, [1, 2], FAST))
    for loaded in (ToyBackend.load(str(tiny_toy), unet=str(tmp_path / "unet")),
                   ToyBackend(ToyPipeline.from_pretrained(tiny_toy, unet=tmp_path / "unet"), "x", "cpu", torch.float32,
                              None, tiny_toy, {})):
        for e, g in zip(expect, _pixels(loaded.generate(PROMPTS, [1, 2], FAST)), strict=True):
            np.testing.assert_array_equal(e, g)
    base = _pixels(backend.generate(PROMPTS, [1, 2], FAST))
    assert not np.array_equal(base[0], expect[0])


def test_lora_round_trip(tiny_toy, tmp_path):
    from peft import LoraConfig

    from mapo_bench.backends.toy import ToyBackend

    tuned = ToyBackend.load(str(tiny_toy))
    tuned.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=tuned.lora_target_modules(),
                                      init_lora_weights="gaussian"))
    lora_params = [p for n, p in tuned.denoiser.named_parameters() if "lora_B" in n]
    assert lora_params
    with torch.no_grad():  # lora_B starts at zero: make the adapter do something
        for i, p in enumerate(lora_params):
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    latents = torch.randn(2, 12, 16, 16)
    cond = tuned.encode_prompts(PROMPTS)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        expect = tuned.predict(tuned.denoiser, latents, t, cond)
    tuned.save_lora(tuned.denoiser, str(tmp_path / "lora"))
    loaded = ToyBackend.load(str(tiny_toy), lora=str(tmp_path / "lora"))
    plain = ToyBackend.load(str(tiny_toy))
    with torch.no_grad():
        got = loaded.predict(loaded.denoiser, latents, t, cond)
        base = plain.predict(plain.denoiser, latents, t, cond)
    torch.testing.assert_close(got, expect)
    assert (got - base).abs().max() > 1e-4
    assert loaded.record()["lora"].endswith("lora")


def test_gate_refusal_names_the_number():
    from mapo_bench.toy.config import ToyGateConfig
    from mapo_bench.toy.gate import check_gate, gate_verdict

    numbers = {"prefix_adherence": {"plain": 0.95, "cartoon": 0.55}, "content": {"colour": 0.97, "position": 0.6,
                                                                                  "shape": 0.9}}
    verdict = gate_verdict(numbers, ToyGateConfig(enforce=True, reason=None))
    assert verdict["status"] == "failed"
    with pytest.raises(MapoBenchError, match=r"prefix adherence 'cartoon' 0.55 < 0.8.*position accuracy 0.6 < 0.9"):
        check_gate({"gate_verdict": verdict})
    ungated = gate_verdict(numbers, ToyGateConfig(enforce=False, reason="a test"))
    assert check_gate({"gate_verdict": ungated})["status"] == "ungated"
    with pytest.raises(ValueError, match="gate.reason"):
        ToyGateConfig(enforce=False, reason=" ")


def test_shipped_base_passed_its_enforced_gate():
    """Issue 6's bar: the shipped base passes every gate threshold with the gate enforced (no waiver), and
    each blend number can be read against the instrument's own score on renders of that group."""
    from mapo_bench.toy.config import ToyGateConfig
    from mapo_bench.toy.gate import check_gate, gate_failures
    from mapo_bench.toy.shipped import read_manifest, shipped_dir

    manifest = read_manifest(shipped_dir())
    verdict = check_gate(manifest)
    assert verdict["status"] == "passed" and verdict["enforce"] and not verdict["failures"]
    thresholds = ToyGateConfig()
    assert gate_failures(manifest["gate"], thresholds) == []  # recomputed from the numbers, not the stored verdict
    adherence = manifest["gate"]["prefix_adherence"]
    assert min(adherence.values()) >= thresholds.prefix_adherence
    assert set(manifest["gate"]["instrument_on_renders"]) == set(adherence)
    assert min(manifest["gate"]["instrument_on_renders"].values()) >= 0.95
    # the base draws the unsafe marker unprompted at about the pretraining rate (Pick-Safety analogue)
    assert 0.5 < manifest["gate"]["content"]["no_unsafe_marker"] < 0.95


def test_stale_manifest_message():
    from mapo_bench.toy.shipped import stale_message

    message = stale_message({"config_hash": "0000000000000000"})
    assert message and "mapo-bench toy pretrain" in message
    from mapo_bench.toy.config import ToyPretrainConfig, toy_config_hash

    assert stale_message({"config_hash": toy_config_hash(ToyPretrainConfig())}) is None


def test_not_a_toy_folder(tmp_path):
    from mapo_bench.backends.toy import ToyBackend

    (tmp_path / "empty").mkdir()
    with pytest.raises(MapoBenchError, match="not a toy model"):
        ToyBackend.load(str(tmp_path / "empty"))


def test_manifest_is_json(tiny_toy):
    manifest = json.loads((tiny_toy / "manifest.json").read_text())
    assert manifest["gate_verdict"]["status"] == "ungated"


@pytest.mark.skipif(not (__import__("mapo_bench.toy.shipped", fromlist=["ASSETS"]).ASSETS / "toy_pipeline.json").is_file(),
                    reason="shipped toy weights not built")
def test_shipped_base_matches_default_config_and_records_its_gate():
    """The shipped weights were made by the current default config (else toy commands warn), and the
    backend records the gate verdict of their manifest."""
    from mapo_bench.backends.toy import ToyBackend
    from mapo_bench.toy.shipped import read_manifest, shipped_dir, stale_message

    manifest = read_manifest(shipped_dir())
    assert stale_message(manifest) is None, stale_message(manifest)
    backend = ToyBackend.load("toy")
    rec = backend.record()
    assert rec["gate_status"] == manifest["gate_verdict"]["status"]
    assert rec["gate"] == ("gated" if manifest["gate_verdict"]["status"] == "passed" else "ungated")
    assert set(manifest["gate"]["prefix_adherence"]) >= {"plain", "cartoon", "cartoon 0.5", "unsafe"}
    image = backend.generate(["cartoon style: a large blue square on the right"], [0], backend.default_sampler)[0]
    assert image.size == (32, 32)


def test_the_shipped_weights_are_checked_against_their_checksums(tmp_path, monkeypatch):
    """A copy of the shipped folder passes; one changed byte in its UNet weights is one line naming the file."""
    import shutil

    from mapo_bench.errors import MapoBenchError
    from mapo_bench.toy import shipped

    copy = tmp_path / "assets"
    shutil.copytree(shipped.ASSETS, copy, ignore=shutil.ignore_patterns("flow"))
    monkeypatch.setitem(shipped.SHIPPED, "toy-copy", (copy, "v", "recipes/toy/pretrain.yaml"))
    shipped.check_shipped.cache_clear()
    shipped.check_shipped("toy-copy")
    weights = next((copy / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    weights.write_bytes(bytes(data))
    shipped.check_shipped.cache_clear()
    with pytest.raises(MapoBenchError, match="damaged or changed") as info:
        shipped.check_shipped("toy-copy")
    assert weights.name in str(info.value) and "\n" not in str(info.value)
    shipped.check_shipped.cache_clear()
