"""Run under ``torch.distributed.run --nproc_per_node 2`` (gloo, CPU) by tests/test_gather.py: shard a small
model with FSDP (``FSDP_VERSION`` 1 or 2), take one AdamW step beside an unsharded replica on the same data,
and write what ``training.gather`` returns against the replica as JSON to ``RESULT`` (rank 0)."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from mapo_bench.training.gather import full_optimizer_state, full_trainable_state, load_optimizer_state


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 3))
    net[0].bias.requires_grad_(False)  # a frozen tensor inside a sharded unit, as LoRA's base weights are
    return net


def shard(net: torch.nn.Module) -> torch.nn.Module:
    if os.environ["FSDP_VERSION"] == "1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(net, use_orig_params=True, device_id=torch.device("cpu"))
    from torch.distributed.fsdp import fully_shard

    fully_shard(net)
    return net


def stepped(net: torch.nn.Module, x: torch.Tensor) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net(x).pow(2).sum().backward()
    optimizer.step()
    return optimizer


def main() -> None:
    dist.init_process_group("gloo")
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))  # the same batch on both processes
    replica, sharded = model(), shard(model())
    replica_optimizer, sharded_optimizer = stepped(replica, x), stepped(sharded, x)
    local_numel = {name: (p.to_local() if hasattr(p, "to_local") else p).numel()  # FSDP2: DTensor shards
                   for name, p in sharded.named_parameters()}
    trainable = {name for name, p in replica.named_parameters() if p.requires_grad}
    weights = full_trainable_state(sharded, trainable)
    moments = full_optimizer_state(sharded, sharded_optimizer)
    box = [moments]
    dist.broadcast_object_list(box, src=0)  # every process reads the whole checkpoint file
    fresh = shard(model())
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    load_optimizer_state(fresh, fresh_optimizer, box[0])
    reloaded = full_optimizer_state(fresh, fresh_optimizer)
    if dist.get_rank() == 0:
        params = dict(replica.named_parameters())
        state = replica_optimizer.state
        result = {
            "a_shard_is_partial": any(n < params[name.split("_fsdp_wrapped_module.")[-1]].numel()
                                      for name, n in local_numel.items()),
            "weight_names": sorted(weights),
            "weights_whole": all(torch.allclose(weights[n], params[n]) for n in trainable),
            "moments_whole": {key: all(torch.allclose(moments["state"][n][key], state[params[n]][key]) for n in trainable)
                              for key in ("exp_avg", "exp_avg_sq")},
            "reload_equal": all(torch.equal(reloaded["state"][n][key], moments["state"][n][key])
                                for n in trainable for key in ("exp_avg", "exp_avg_sq")),
        }
        with open(os.environ["RESULT"], "w") as handle:
            json.dump(result, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
