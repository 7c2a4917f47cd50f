"""Trainer options: bf16, gradient checkpointing, Adafactor, optional extras, bad rows, SDXL time_ids."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from pairs_fixture import write_pairs
from train_helpers import read_log, tiny_config

from mapo_bench.errors import MapoBenchError
from mapo_bench.training.loop import Trainer, train


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs", n=6)


def test_bf16_checkpointing_adafactor_then_fp32_in_one_process(tmp_path, tiny_sd15, pairs):
    """bf16 autocast on the CPU with gradient checkpointing and Adafactor (LoRA DPO: adapters toggled
    for the reference) trains; a second run in the same process may use another precision."""
    out = train(tiny_config(tmp_path, tiny_sd15, "sd15", "dpo", True, dataset=pairs, out=tmp_path / "bf16",
                            max_steps=2, mixed_precision="bf16", gradient_checkpointing=True,
                            optim={"name": "adafactor", "lr_scheduler": "constant_with_warmup", "warmup_steps": 1}))
    log = read_log(out)
    assert all(math.isfinite(r["loss"]) for r in log)
    assert [r["lr"] for r in log] == [0.0, 1e-3]  # one warmup step: lr 0 at step 1, then the peak
    out32 = train(tiny_config(tmp_path, tiny_sd15, "sd15", "mapo", dataset=pairs, out=tmp_path / "fp32", max_steps=1))
    assert math.isfinite(read_log(out32)[0]["loss"])


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_adamw8bit_without_bitsandbytes_is_a_clear_error(tmp_path, tiny_sd15, pairs):
    with pytest.raises(MapoBenchError, match=r"mapo-bench\[bnb\]"):
        train(tiny_config(tmp_path, tiny_sd15, "sd15", "mapo", dataset=pairs, optim={"name": "adamw8bit"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_fp16_on_cpu_is_a_clear_error(tmp_path, tiny_sd15, pairs):
    with pytest.raises(MapoBenchError, match="fp16 needs a GPU"):
        train(tiny_config(tmp_path, tiny_sd15, "sd15", "mapo", dataset=pairs, mixed_precision="fp16"))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_extra_is_a_clear_error(tmp_path, tiny_sd15, pairs):
    with pytest.raises(MapoBenchError, match=r"mapo-bench\[tracking\]"):
        train(tiny_config(tmp_path, tiny_sd15, "sd15", "mapo", dataset=pairs,
                          log={"tensorboard": True, "progress": False}))


def test_bad_rows_stop_or_are_skipped(tmp_path, tiny_sd15):
    bad = write_pairs(tmp_path / "bad", n=6, bad={3: "jpg_0"})
    with pytest.raises(MapoBenchError, match=r"row 3 column 'jpg_0'.*skip_bad_rows"):
        train(tiny_config(tmp_path, tiny_sd15, "sd15", "sft", dataset=bad, out=tmp_path / "a", max_steps=1))
    out = train(tiny_config(tmp_path, tiny_sd15, "sd15", "sft", dataset=bad, out=tmp_path / "b", max_steps=1,
                            data={"skip_bad_rows": True}))
    import json

    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["bad_rows_skipped"] == 1 and counts["pairs"] == 5


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "fresh"])
def test_sdxl_time_ids_come_from_jpg0_and_the_crop(tmp_path, tiny_sdxl, cache):
    """jpg_0 is 40 x 48 (h x w), jpg_1 20 x 30 (resized to jpg_0 first). At 32 px the shorter side
    becomes 32 -> 32 x 38, center crop top 0, left round(6/2) = 3: time_ids = (40, 48, 0, 3, 32, 32)
    for every image, chosen and rejected alike."""
    from mapo_bench.training.data import make_batch

    data = write_pairs(tmp_path / "p", n=4, size=(40, 48), size_1=(20, 30))
    trainer = Trainer(tiny_config(tmp_path, tiny_sdxl, "sdxl", "mapo", dataset=data, cache={
        "enabled": cache, "dir": str(tmp_path / "cache")}))
    batch = make_batch(backend=trainer.backend, source=trainer.source, selection=trainer.selection,
                       indices=np.arange(2), generator=torch.Generator().manual_seed(0), resolution=32,
                       crop="center", flip=True, uses_rejected=True, cache=trainer.cache)
    assert batch.x0.shape == (4, 4, 16, 16)
    assert batch.conditioning["time_ids"].tolist() == [[40, 48, 0, 3, 32, 32]] * 4
    assert batch.conditioning["encoder_hidden_states"].shape[0] == 4
