"""training.gather: checkpoints and exports take whole tensors whatever the sharding (issue 13, full FLUX
under FSDP). The single-process path is the one every training test runs; the FSDP cases run two gloo
processes on the CPU, where torch's FSDP1 and FSDP2 both work, so the sharded path is tested here too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mapo_bench.training.gather import (
    full_model_state,
    full_optimizer_state,
    full_trainable_state,
    load_optimizer_state,
)

REPO = Path(__file__).resolve().parents[1]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)
    return net


def _stepped(net: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net(torch.ones(2, 3)).sum().backward()
    optimizer.step()
    return optimizer


def test_one_process_gathers_the_trainable_weights_and_round_trips_the_optimizer():
    """Frozen weights stay out of the trainable state; the optimizer state keyed by name loads into a fresh
    optimizer with equal moments (d loss / d bias of the last layer is 2 per output, so exp_avg = 0.1 * 2)."""
    net = _net()
    optimizer = _stepped(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    weights = full_trainable_state(net, trainable)
    assert sorted(weights) == ["0.bias", "1.bias", "1.weight"]
    assert torch.equal(weights["1.bias"], net[1].bias.detach()) and not weights["1.bias"].requires_grad
    assert sorted(full_model_state(net)) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    state = full_optimizer_state(net, optimizer)
    assert torch.allclose(state["state"]["1.bias"]["exp_avg"], torch.full((2,), 0.2))
    fresh = _net()
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    load_optimizer_state(fresh, fresh_optimizer, state)
    assert torch.equal(fresh_optimizer.state[fresh[1].bias]["exp_avg"], optimizer.state[net[1].bias]["exp_avg"])
    assert fresh_optimizer.state[fresh[1].bias]["step"] == 1


def test_a_denoiser_export_is_written_from_the_given_state(tmp_path):
    """``save_diffusers_model`` with a state writes those tensors (not the module's own, which under FSDP
    are a shard) in the layout ``from_pretrained`` reads."""
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config

    from mapo_bench.backends.base import save_diffusers_model

    class Tiny(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(width, width)

    whole = {"proj.weight": torch.full((3, 3), 0.5), "proj.bias": torch.arange(3.0)}
    save_diffusers_model(Tiny(), str(tmp_path / "unet"), whole)
    loaded = Tiny.from_pretrained(str(tmp_path / "unet"))
    assert torch.equal(loaded.proj.weight, whole["proj.weight"]) and torch.equal(loaded.proj.bias, whole["proj.bias"])


@pytest.mark.slow  # aborted once (SIGABRT in rank 0, FSDP1) beside the full suite under xdist; passes alone
@pytest.mark.parametrize("version", ["1", "2"])
def test_fsdp_shards_are_gathered_whole(tmp_path, version):
    """Two processes shard a model (FSDP1 with flat parameters, FSDP2 with DTensors), each holding part of
    it; the gathered weights and AdamW moments equal an unsharded replica's after the same step, and the
    moments load back into a freshly sharded optimizer unchanged."""
    result = tmp_path / "result.json"
    env = {**os.environ, "FSDP_VERSION": version, "RESULT": str(result), "MAPO_BENCH_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "fsdp_gather_worker.py")]
    run = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(result.read_text())
    assert found["a_shard_is_partial"], "the processes each hold the whole model: nothing was sharded"
    assert found["weight_names"] == ["0.weight", "1.bias", "1.weight"]  # the frozen 0.bias is left out
    assert found["weights_whole"] and found["moments_whole"] == {"exp_avg": True, "exp_avg_sq": True}
    assert found["reload_equal"]
