"""DreamBooth (issue 14): its loss by hand, the class-images task, and the method in the one training loop
(full and LoRA, exact resume, the prior stream really used) on tiny SD1.5 with from-images pairs."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from train_helpers import read_log, tiny_config

from mapo_bench.config import validate
from mapo_bench.data.builder import build_dataset
from mapo_bench.data.config import BuildConfig
from mapo_bench.errors import MapoBenchError
from mapo_bench.training.loop import train, work_dir

SAMPLER = {"steps": 2, "guidance": 5.0, "height": 32, "width": 32}


def test_dreambooth_loss_by_hand():
    """Instance errors (0.1, 0.3) -> 0.2, prior errors (0.5, 0.7, 0.9) -> 0.7; lambda 0.5: 0.2 + 0.35 = 0.55."""
    from mapo_bench.losses import dreambooth_loss

    out = dreambooth_loss(torch.tensor([0.1, 0.3]), torch.tensor([0.5, 0.7, 0.9]), prior_weight=0.5)
    assert out.loss.item() == pytest.approx(0.55, abs=1e-7)
    assert out.metrics["m_w"] == pytest.approx(0.2) and out.metrics["m_prior"] == pytest.approx(0.7)
    plain = dreambooth_loss(torch.tensor([0.1, 0.3]), None, prior_weight=0.0)
    assert plain.loss.item() == pytest.approx(0.2) and math.isnan(plain.metrics["m_prior"])


@pytest.fixture(scope="module")
def subject_data(tmp_path_factory, tiny_sd15):
    """3 subject images as from-images pairs, and 4 rows (8 images) of class images, both from tiny SD1.5."""
    root = tmp_path_factory.mktemp("dreambooth")
    images = root / "subject"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    common = {"backend": "sd15", "model": str(tiny_sd15), "sampler": SAMPLER, "batch_size": 4}
    pairs = build_dataset(validate(BuildConfig, {**common, "task": "from-images", "images": str(images),
                                                 "token": "sks", "subject_class": "dog", "out": str(root / "pairs")}))
    classes = build_dataset(validate(BuildConfig, {**common, "task": "class-images", "subject_class": "dog",
                                                   "pairs_per_prompt": 4, "out": str(root / "class")}))
    return pairs, classes


def test_class_images_are_two_different_samples_of_the_class_caption(subject_data):
    _, classes = subject_data
    rows = pq.read_table(next((classes / "data").glob("*.parquet"))).to_pylist()
    assert len(rows) == 4 and {r["caption"] for r in rows} == {"a photo of dog"}
    assert all(r["label_0"] == 0.5 and r["label_1"] == 0.5 for r in rows)
    assert all(r["jpg_0"] != r["jpg_1"] for r in rows)
    assert "prior-preservation" in (classes / "README.md").read_text()


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dreambooth_trains_with_its_prior_stream_and_resumes_exactly(tmp_path, tiny_sd15, subject_data, monkeypatch,
                                                                      lora):
    """4 steps uninterrupted == 2 steps, a crash after the checkpoint, and a resume (weights bit for bit, the
    prior stream's position restored); the prior term is logged; without it (prior_weight 0) the weights
    differ, so the class images did enter the loss."""
    import mapo_bench.training.checkpoint as checkpoint

    pairs, classes = subject_data
    common = dict(dataset=pairs, max_steps=4, checkpoint_every=2, dreambooth={"class_data": str(classes)})
    full = train(tiny_config(tmp_path, tiny_sd15, "sd15", "dreambooth", lora, out=tmp_path / "a", **common))
    log = read_log(full)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["m_prior"]) for r in log)
    assert all(r["loss"] == pytest.approx(r["m_w"] + r["m_prior"], rel=1e-5) for r in log)

    real_save = checkpoint.save_checkpoint

    def crash_after_save(*args, **kwargs):
        real_save(*args, **kwargs)
        raise RuntimeError("simulated crash")

    cfg = tiny_config(tmp_path, tiny_sd15, "sd15", "dreambooth", lora, out=tmp_path / "b", **common)
    monkeypatch.setattr(checkpoint, "save_checkpoint", crash_after_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    monkeypatch.undo()
    assert (work_dir(tmp_path / "b") / "checkpoints" / "step-00000002").is_dir()
    resumed = train(cfg)
    from test_train_state import _weights

    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    no_prior = train(tiny_config(tmp_path, tiny_sd15, "sd15", "dreambooth", lora, out=tmp_path / "c",
                                 dataset=pairs, max_steps=4, dreambooth={"prior_weight": 0}))
    c = _weights(no_prior)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_dreambooth_without_class_images_is_one_line(tmp_path, tiny_sd15, subject_data):
    pairs, _ = subject_data
    with pytest.raises(MapoBenchError, match="dreambooth.class_data=DIR"):
        train(tiny_config(tmp_path, tiny_sd15, "sd15", "dreambooth", dataset=pairs))


def test_class_images_refused_by_a_preference_method(tmp_path, tiny_sd15, subject_data):
    _, classes = subject_data
    with pytest.raises(MapoBenchError, match="no pairs left after tie policy 'drop'"):
        train(tiny_config(tmp_path, tiny_sd15, "sd15", "mapo", dataset=classes))
