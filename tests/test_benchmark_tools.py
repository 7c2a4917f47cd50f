"""The step benchmark's own logic (benchmarks/train_step.py, real_size.py), without running a benchmark: the
real-size UNet configs give the released models' parameter counts, the analytic floors by hand, the max-batch
search against a fake trainer, and the lever rows."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import real_size  # noqa: E402
import train_step  # noqa: E402


@pytest.mark.parametrize("size", ["sd15", "sdxl"])
def test_real_size_unets_have_the_released_parameter_counts(size):
    """Built on the meta device (no memory): 859,520,964 (SD1.5) and 2,567,463,684 (SDXL) parameters, the
    counts of the released unet/ folders."""
    with torch.device("meta"):
        unet = real_size.unet(size)
    assert sum(p.numel() for p in unet.parameters()) == real_size.PUBLISHED_PARAMETERS[size]


def test_floors_by_hand():
    """Full, fp32 AdamW: 4 W / (4 W + W) = 0.8; a bf16 reference (W / 2): 4 / 4.5 = 0.889; LoRA: 1.0. Time from
    phases: DPO step 4 s with a 1 s reference forward -> (4 - 1) / 4 = 0.75."""
    phases = dict.fromkeys(train_step.PHASES, 0.0) | {"denoiser forward": 1.0, "reference forward": 1.0,
                                                       "backward": 2.0}
    assert train_step.floors(False, {"weights": 100, "reference": 100}, phases)["memory"] == pytest.approx(0.8)
    assert train_step.floors(False, {"weights": 100, "reference": 50}, phases)["memory"] == pytest.approx(4 / 4.5)
    assert train_step.floors(True, {"weights": 100, "reference": 0}, phases)["memory"] == 1.0
    assert train_step.floors(False, {"weights": 100, "reference": 100}, phases)["time_from_phases"] == 0.75


class FakeTrainer:
    """A step of more than ``fits`` pairs raises the allocator's error, as torch does."""

    def __init__(self, fits: int) -> None:
        self.fits, self.steps = fits, []
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    def optimizer_step(self, micro_batches):
        pairs = len(micro_batches[0][0])
        self.steps.append(pairs)
        if pairs > self.fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("fits,bound,expected", [(5, 64, 5), (1, 64, 1), (0, 64, 0), (64, 64, 64), (100, 16, 16)])
def test_max_batch_search_doubles_then_bisects(fits, bound, expected):
    """5 fitting pairs: 1, 2, 4 fit, 8 does not; bisection tries 6 (no), 5 (yes) -> 5."""
    trainer = FakeTrainer(fits)
    best, tried = train_step.search_batch(trainer, bound)
    assert best == expected
    if (fits, bound) == (5, 64):
        assert trainer.steps == [1, 2, 4, 8, 6, 5]
    assert all(ok == (batch <= fits) for batch, ok in tried.items())


def test_other_errors_are_not_taken_for_out_of_memory():
    class Broken(FakeTrainer):
        def optimizer_step(self, micro_batches):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        train_step.search_batch(Broken(4), 8)


def test_lever_rows_beside_the_plain_ones():
    """--levers all on full + LoRA: the bf16 reference only for full DPO; every other lever for both methods
    and modes; plain rows first (MaPO, DPO and SFT in each mode)."""
    args = argparse.Namespace(modes=["full", "lora"], cache=[True], levers=["bf16 reference", "fused adamw"])
    rows = train_step.configurations(args)
    assert [(r["lever"], r["method"], r["lora"]) for r in rows[:6]] == [
        (None, "mapo", False), (None, "dpo", False), (None, "sft", False), (None, "mapo", True), (None, "dpo", True),
        (None, "sft", True)]
    levered = [(r["lever"], r["method"], r["lora"]) for r in rows[6:]]
    assert levered == [("bf16 reference", "dpo", False), ("fused adamw", "mapo", False), ("fused adamw", "dpo", False),
                       ("fused adamw", "mapo", True), ("fused adamw", "dpo", True)]
    merged = train_step.merge({"optim": {"name": "adamw", "lr": 1e-6}}, train_step.LEVERS["fused adamw"])
    assert merged == {"optim": {"name": "adamw", "lr": 1e-6, "implementation": "fused"}}


def test_the_gpu_check_refuses_in_one_line_where_torch_sees_no_gpu(tmp_path):
    """benchmarks/gpu_check.sh with CUDA hidden (CUDA_VISIBLE_DEVICES empty, so also on a GPU machine): exit 2,
    one gpu_check line naming the missing CUDA device, and no results file that could pass for a measurement."""
    import os
    import subprocess

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("gpu_check: torch sees no CUDA device here")
    assert not (tmp_path / "out" / "gpu_check.json").exists()
