"""The cost levers of issue 17 on tiny SD1.5: a bfloat16 reference for full-fine-tune DPO, AdamW's kernels,
torch.compile of the denoiser; each changes cost, none may change what is trained beyond rounding."""

from __future__ import annotations

import math

import pytest
import torch
from pairs_fixture import write_pairs
from train_helpers import read_log, tiny_config

from mapo_bench.errors import MapoBenchError
from mapo_bench.training.loop import Trainer, train

# The DPO loss at initialisation with a bfloat16 reference: model and reference differ only by the rounding of
# the reference's weights and inputs (relative 2^-9), so r - m is a rounding error of the per-sample error and
# inside = -beta / 2 * ((m_w - m_l) - (r_w - r_l)) is not exactly 0; the loss moves by about |inside| / 2.
# Measured on tiny SD1.5 at beta 500: +0.008 (r_w - m_w = -1.9e-4 on m_w = 1.05). It grows with beta (about ten
# times that at beta 5000), so the bound is stated at beta 500: 0.05. float32 gives exactly log 2.
BF16_BETA, BF16_LOSS_TOLERANCE = 500, 0.05


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs", n=4)


def test_dpo_with_a_bfloat16_reference_starts_near_log2_and_keeps_float32_errors(tmp_path, tiny_sd15, pairs):
    cfg = tiny_config(tmp_path, tiny_sd15, "sd15", "dpo", dataset=pairs, max_steps=1, reference_dtype="bfloat16",
                      dpo={"beta": BF16_BETA})
    trainer = Trainer(cfg)
    assert {p.dtype for p in trainer.reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.denoiser.parameters()} == {torch.float32}  # the trained copy stays float32
    first = read_log(train(cfg))[0]
    assert abs(first["loss"] - math.log(2)) < BF16_LOSS_TOLERANCE
    assert first["r_w"] != first["m_w"]  # the reference really ran in bfloat16 (float32 gives equal errors)
    # the reference's error differs from the model's by its weights' rounding carried through the UNet (bf16:
    # 8 significant bits, 2^-9 relative per weight); the bound, 2^-7 of m_w, is a chosen margin of four such
    # roundings, not derived (measured: 1.8e-4 of m_w)
    assert abs(first["r_w"] - first["m_w"]) < 2**-7 * first["m_w"]


def test_reference_dtype_without_a_frozen_copy_is_refused(tmp_path, tiny_sd15, pairs):
    for method, lora in (("dpo", True), ("mapo", False)):
        cfg = tiny_config(tmp_path, tiny_sd15, "sd15", method, lora, dataset=pairs, reference_dtype="bfloat16")
        with pytest.raises(MapoBenchError, match="reference_dtype applies to a full fine-tune"):
            Trainer(cfg)


@pytest.mark.parametrize("kernel", ["foreach", "fused"])
def test_adamw_kernels_give_the_for_loop_update(tmp_path, tiny_sd15, pairs, kernel):
    """Two MaPO steps with each kernel: the same losses and weights as the for-loop AdamW up to float32
    rounding (the kernels reorder the same arithmetic)."""
    runs = {}
    for name in ("for-loop", kernel):
        cfg = tiny_config(tmp_path / name, tiny_sd15, "sd15", "mapo", dataset=pairs, max_steps=2,
                          optim={"implementation": name})
        trainer = Trainer(cfg)
        trainer.run()
        runs[name] = ([row["loss"] for row in read_log(cfg.out)],
                      torch.cat([p.detach().flatten() for p in trainer.denoiser.parameters()]))
    assert runs[kernel][0] == pytest.approx(runs["for-loop"][0], rel=1e-5)
    assert torch.allclose(runs[kernel][1], runs["for-loop"][1], atol=1e-6)


def test_adamw_kernel_with_another_optimizer_is_refused(tmp_path, tiny_sd15, pairs):
    cfg = tiny_config(tmp_path, tiny_sd15, "sd15", "mapo", dataset=pairs,
                      optim={"name": "adafactor", "implementation": "fused"})
    with pytest.raises(MapoBenchError, match="optim.implementation=fused applies to optim.name=adamw only"):
        Trainer(cfg)


def test_levers_at_their_defaults_keep_old_config_hashes():
    """Configs written before the levers existed hash as before: the keys at their defaults are dropped."""
    from mapo_bench.config import config_hash

    old = {"method": "mapo", "optim": {"lr": 1e-5}}
    new = {"method": "mapo", "optim": {"lr": 1e-5, "implementation": "auto"}, "reference_dtype": "auto",
           "compile_denoiser": False}
    assert config_hash(new) == config_hash(old)
    assert config_hash({**new, "reference_dtype": "bfloat16"}) != config_hash(old)
    assert new["optim"] == {"lr": 1e-5, "implementation": "auto"}  # the caller's dict is left alone


@pytest.mark.slow
def test_compiled_denoiser_trains_the_same_steps(tmp_path, tiny_sd15, pairs):
    """torch.compile (inductor on the CPU): two MaPO steps with the losses of the eager run up to rounding,
    and the saved UNet loads with the usual keys."""
    import diffusers

    losses = {}
    for compiled in (False, True):
        cfg = tiny_config(tmp_path / str(compiled), tiny_sd15, "sd15", "mapo", dataset=pairs, max_steps=2,
                          compile_denoiser=compiled)
        out = train(cfg)
        losses[compiled] = [row["loss"] for row in read_log(out)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "True" / "out" / "unet"))
