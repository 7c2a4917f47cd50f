"""``toy pretrain`` end to end on a tiny config (a few steps; ungated or gate-failed by design)."""

from __future__ import annotations

import json

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
        "out": str(out), "steps": 3, "batch_size": 4, "checkpoint_every": 2, "model": TINY_MODEL,
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


def test_restart_changes_weights_and_hash(tmp_path):
    """restart_at=None hashes like a config without the key; an EMA restart is part of the hash and of the run."""
    from mapo_bench.toy.config import toy_config_hash
    from mapo_bench.toy.pretrain import pretrain

    plain = tiny_config(tmp_path / "plain", enforce=False, reason="t")
    data = plain.model_dump(mode="json")
    data.pop("restart_at")
    from mapo_bench.config import config_hash

    assert toy_config_hash(plain) == config_hash(data, exclude={"out", "overwrite"})
    restarted = plain.model_copy(update={"restart_at": 2, "out": tmp_path / "restarted"})
    assert toy_config_hash(restarted) != toy_config_hash(plain)
    a, b = pretrain(plain), pretrain(restarted)
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (a / name).read_bytes() != (b / name).read_bytes()


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
    assert manifest["weights_from"] == str(a) and "base" in manifest["resumed_stages"]
    assert check_gate(b)["status"] == "ungated"
    for name in ("unet/diffusion_pytorch_model.safetensors", "evaluators/classifier.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
