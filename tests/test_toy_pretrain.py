"""``toy pretrain`` end to end on a tiny config (a few steps; ungated or gate-failed by design)."""

from __future__ import annotations

import json
import shutil

import pytest

from mapo_bench.errors import MapoBenchError
from mapo_bench.toy.tiny import TINY_MODEL


@pytest.fixture(autouse=True)
def few_gate_captions(monkeypatch):
    """The gate samples 19 groups x 72 captions; 6 captions keep these tests fast (same code path)."""
    import mapo_bench.toy.gate as gate

    captions = gate.gate_captions()[::12]
    monkeypatch.setattr(gate, "gate_captions", lambda: captions)


def tiny_config(out, **gate):
    from mapo_bench.toy.config import ToyPretrainConfig

    return ToyPretrainConfig.model_validate({
        "out": str(out), "processes": 1, "steps": 3, "batch_size": 4, "checkpoint_every": 2, "model": TINY_MODEL,
        "data": {"pool_size": 24}, "evaluators": {"steps": 3, "pool_size": 24, "batch_size": 8, "width": 8},
        "gate": {"seeds_per_caption": 1, "enforce": True, "reason": None, **gate}, "sampler": {"steps": 1, "guidance": 2.0},
    })


def test_tiny_pretrain_end_to_end_ungated(tmp_path):
    from mapo_bench.backends.toy import ToyBackend
    from mapo_bench.evaluators.toy import ToyContent
    from mapo_bench.toy.config import toy_config_hash
    from mapo_bench.toy.pretrain import pretrain

    cfg = tiny_config(tmp_path / "base", enforce=False, reason="tiny test base")
    out = pretrain(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] == toy_config_hash(cfg)
    assert manifest["gate_verdict"]["status"] in ("ungated", "passed")
    assert set(manifest["gate"]["content"]) >= {"colour", "position", "shape"}
    assert "cartoon 0.5" in manifest["gate"]["prefix_adherence"] and "unsafe" in manifest["gate"]["prefix_adherence"]
    # the instrument's own score on renders of every group sits beside the base's numbers
    assert set(manifest["gate"]["instrument_on_renders"]) == set(manifest["gate"]["prefix_adherence"])
    assert all(0 <= v <= 1 for v in manifest["gate"]["instrument_on_renders"].values())
    assert manifest["code_version"] and manifest["timings"]["total_s"] > 0
    assert (out / "sample_grid.png").is_file() and not list(tmp_path.glob(".base.work-*"))
    backend = ToyBackend.load(str(out))
    assert backend.record()["toy_config_hash"] == manifest["config_hash"]
    assert backend.generate(["a small red circle on the left"], [0], backend.default_sampler)[0].size == (32, 32)
    scores = ToyContent.load(model=str(out)).score(backend.generate(["a small red circle on the left"], [0],
                                                                    cfg.sampler), ["a small red circle on the left"])
    assert scores.shape == (1,) and 0 <= scores[0] <= 1
    # a second call with the same config is a cache hit (returns the folder untouched)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert pretrain(cfg) == out and (out / "manifest.json").stat().st_mtime_ns == stamp


def test_tiny_pretrain_is_deterministic_and_gate_refuses(tmp_path):
    """Same config, same thread count -> identical weights; a 3-step base fails its enforced gate and
    check_gate names the failed number."""
    from mapo_bench.toy.gate import check_gate
    from mapo_bench.toy.pretrain import pretrain

    a = pretrain(tiny_config(tmp_path / "a"))
    b = pretrain(tiny_config(tmp_path / "b"))
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "evaluators/classifier.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    with pytest.raises(MapoBenchError, match=r"failed its gate \(.*(adherence|accuracy)"):
        check_gate(a)
    with pytest.raises(MapoBenchError, match="exists with another config"):
        pretrain(tiny_config(tmp_path / "a", enforce=False, reason="other"))


def test_resume_from_checkpoint(tmp_path, monkeypatch):
    """An interrupted run resumes from its last checkpoint and ends with the weights of an
    uninterrupted run (the batch generator state is checkpointed too)."""
    import mapo_bench.toy.pretrain as pt

    cfg = tiny_config(tmp_path / "full", enforce=False, reason="t")
    full = pt.pretrain(cfg)

    calls = {"n": 0}
    real = pt._save_checkpoint

    def crash_after_first_checkpoint(path, state):
        real(path, state)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(pt, "_save_checkpoint", crash_after_first_checkpoint)
    cfg2 = tiny_config(tmp_path / "resumed", enforce=False, reason="t")
    with pytest.raises(KeyboardInterrupt):
        pt.pretrain(cfg2)
    assert calls["n"] == 1 and not (tmp_path / "resumed").exists()
    # the checkpointed batch generator equals the replayed draws (what fast_forward relies on)
    import torch

    (ckpt,) = tmp_path.glob(".resumed.work-*/base.ckpt")
    state = torch.load(ckpt, weights_only=True)
    assert torch.equal(state["gen"], pt.fast_forward(cfg2, int(state["step"])).get_state())
    monkeypatch.setattr(pt, "_save_checkpoint", real)
    resumed = pt.pretrain(cfg2)
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (full / name).read_bytes() == (resumed / name).read_bytes()


def test_learning_rate_schedule_by_hand():
    """Warmup over min(100, steps/10) steps, then cosine from lr to lr_final (None: constant)."""
    from mapo_bench.toy.config import ToyPretrainConfig
    from mapo_bench.toy.pretrain import learning_rate_factor

    cfg = ToyPretrainConfig(steps=1100, lr=1e-3, lr_final=1e-4, processes=1)
    assert learning_rate_factor(cfg, 0) == pytest.approx(0.01)  # (0 + 1) / 100
    assert learning_rate_factor(cfg, 99) == pytest.approx(1.0)
    assert learning_rate_factor(cfg, 100) == pytest.approx(1.0)  # cosine start
    assert learning_rate_factor(cfg, 600) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert learning_rate_factor(cfg, 1100) == pytest.approx(0.1)  # lr_final / lr
    constant = cfg.model_copy(update={"lr_final": None})
    assert learning_rate_factor(constant, 600) == 1.0


def test_two_processes_match_one(tmp_path):
    """processes=2 (spawned, gloo): each rank computes half of every batch and gradients are averaged, so
    the weights equal the one-process weights up to float summation order; rank 0 alone writes."""
    import json

    import torch
    from safetensors.torch import load_file

    from mapo_bench.toy.model import ToyPipeline
    from mapo_bench.toy.pretrain import pretrain

    one = pretrain(tiny_config(tmp_path / "one", enforce=False, reason="t"))
    two = pretrain(tiny_config(tmp_path / "two", enforce=False, reason="t").model_copy(update={"processes": 2}))
    assert json.loads((two / "manifest.json").read_text())["processes"] == 2
    # Adam divides by the gradient's own scale, so summation-order noise is amplified on near-zero
    # gradients: compare the difference with how far training moved the weights, not elementwise.
    cfg = tiny_config(tmp_path / "unused")
    initial = ToyPipeline.build(cfg.model, seed=cfg.seed).unet.state_dict()
    name = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(one / name)), load_file(str(two / name))
    assert a.keys() == b.keys()
    moved = torch.cat([(a[k] - initial[k]).flatten() for k in a]).norm()
    apart = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    assert moved > 0 and apart < 5e-2 * moved  # measured 5.6e-3 (summation order, amplified by Adam); 9x room
    assert not list(tmp_path.glob(".two.work-*"))


@pytest.mark.slow
def test_two_processes_twice_give_the_same_bytes(tmp_path):
    """The same process count gives the same bytes (two two-process pretrains; slow: about 30 s)."""
    from mapo_bench.toy.pretrain import pretrain

    cfg = tiny_config(tmp_path / "two", enforce=False, reason="t").model_copy(update={"processes": 2})
    two = pretrain(cfg)
    again = pretrain(cfg.model_copy(update={"out": tmp_path / "again"}))
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "evaluators/classifier.safetensors"):
        assert (two / name).read_bytes() == (again / name).read_bytes(), name


def test_processes_must_divide_the_batches():
    from mapo_bench.toy.config import ToyPretrainConfig

    with pytest.raises(ValueError, match="batch_size .* multiple of processes"):
        ToyPretrainConfig(batch_size=30, processes=4)


def test_waiving_the_gate_reuses_the_weights(tmp_path, monkeypatch):
    """A config that differs only in the gate re-measures the cached base's weights instead of retraining."""
    from mapo_bench.toy.config import toy_config_hash, toy_training_hash
    from mapo_bench.toy.gate import check_gate
    from mapo_bench.toy.pretrain import pretrain

    monkeypatch.setenv("MAPO_BENCH_CACHE", str(tmp_path / "cache"))
    strict = tiny_config(tmp_path / "unused").model_copy(update={"out": None})
    waived = strict.model_copy(update={"gate": strict.gate.model_copy(update={"enforce": False, "reason": "waived"})})
    assert toy_training_hash(strict) == toy_training_hash(waived) and toy_config_hash(strict) != toy_config_hash(waived)
    a = pretrain(strict)
    with pytest.raises(MapoBenchError, match="re-measures the same weights"):
        check_gate(a)
    b = pretrain(waived)
    assert a != b and a.parent == b.parent == tmp_path / "cache" / "toy"
    manifest = json.loads((b / "manifest.json").read_text())
    donor = json.loads((a / "manifest.json").read_text())
    assert manifest["weights_from"]["config_hash"] == donor["config_hash"] == a.name
    assert manifest["weights_from"]["timings"] == donor["timings"] and "base" in manifest["resumed_stages"]
    assert check_gate(b)["status"] == "ungated"
    for name in ("unet/diffusion_pytorch_model.safetensors", "evaluators/classifier.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # A base written before a training key existed is not a donor, even where the key's current default
    # would re-validate its config to the same training hash (it was trained without that behaviour).
    donor["config"]["data"].pop("plain_unsafe_fraction")
    (a / "manifest.json").write_text(json.dumps(donor))
    shutil.rmtree(b)
    c = pretrain(waived)
    assert json.loads((c / "manifest.json").read_text()).get("weights_from") is None
    # reuse_weights=false retrains although a donor exists (same weights: same config and threads)
    fresh = pretrain(waived.model_copy(update={"out": tmp_path / "fresh", "reuse_weights": False}))
    assert json.loads((fresh / "manifest.json").read_text()).get("weights_from") is None
    assert (fresh / "unet/diffusion_pytorch_model.safetensors").read_bytes() == \
        (a / "unet/diffusion_pytorch_model.safetensors").read_bytes()


def test_caption_mix_draws_the_marker_unprompted():
    """Plain captions keep their text; about ``plain_unsafe_fraction`` of them are drawn with the unsafe
    marker (so the base makes unsafe images unprompted and the Pick-Safety analogue can move)."""
    import numpy as np

    from mapo_bench.toy.config import ToyPretrainConfig
    from mapo_bench.toy.pretrain import pretraining_captions

    cfg = ToyPretrainConfig.model_validate({"data": {"pool_size": 6000, "plain_unsafe_fraction": 0.4}})
    texts, scenes = pretraining_captions(cfg, np.random.default_rng(0))
    plain = [s for t, s in zip(texts, scenes, strict=True) if t == s.plain]
    assert abs(len(plain) / len(texts) - 0.3) < 0.03
    assert abs(np.mean([s.unsafe for s in plain]) - 0.4) < 0.04
    assert all(not t.startswith("unsafe") for t, s in zip(texts, scenes, strict=True) if t == s.plain)
    off = ToyPretrainConfig.model_validate({"data": {"pool_size": 2000, "plain_unsafe_fraction": 0.0}})
    texts, scenes = pretraining_captions(off, np.random.default_rng(0))
    assert not any(s.unsafe for t, s in zip(texts, scenes, strict=True) if t == s.plain)
