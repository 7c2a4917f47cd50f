"""The trained state as whole tensors, however the model is distributed.

Under FSDP (a full FLUX fine-tune, ``recipes/accelerate/fsdp_flux.yaml``) each process holds a shard of
every parameter and of its optimizer moments, so reading ``named_parameters()`` of the unwrapped module
saves one shard. ``torch.distributed.checkpoint.state_dict`` gathers full tensors (offloaded to the CPU) for
FSDP1, FSDP2 and DDP and returns the plain state for one process, so one code path serves all of them and
the single-process path, the one the tests run, is the same code. Every function here is a collective
under FSDP: call it on every process, write its result on the main one.
"""

from __future__ import annotations

from typing import Any

import torch


def _full(model: torch.nn.Module, **extra: Any) -> Any:
    """Whole tensors, offloaded to the CPU (rank 0 only) when the model is on an accelerator. On the CPU the
    offload is no copy, and FSDP1 then gathers every optimizer state of a parameter into one reused buffer
    (exp_avg came back equal to exp_avg_sq; torch 2.14, tests/test_gather.py), so there it is not asked for."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    on_accelerator = next(model.parameters()).device.type != "cpu"
    return StateDictOptions(full_state_dict=True, cpu_offload=on_accelerator, **extra)


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (itself when not wrapped)."""
    return getattr(optimizer, "optimizer", optimizer)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` (prepared or not) by its unwrapped name, as whole tensors."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full(model))


def full_trainable_state(model: torch.nn.Module, trainable: set[str]) -> dict[str, torch.Tensor]:
    """The parameters that train (all of them for a full fine-tune, the LoRA matrices otherwise), on the CPU;
    frozen weights are skipped before they are gathered (a LoRA run never copies its base model)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    # FSDP1's flat parameters mix frozen and trainable tensors, and ignore_frozen_params then raises KeyError
    skip_frozen = not _fsdp1(model)
    state = get_model_state_dict(model, options=_full(model, ignore_frozen_params=skip_frozen))
    return {name: t.detach().cpu().contiguous() for name, t in state.items() if name in trainable}


def _fsdp1(model: torch.nn.Module) -> bool:
    """Whether ``model`` is (or holds) a torch FSDP1 wrapper; FSDP2 shards in place and has none."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(module, FullyShardedDataParallel) for module in model.modules())


def full_optimizer_state(model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name, whole tensors (``get_optimizer_state_dict``)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _inner(optimizer), options=_full(model))


def load_optimizer_state(model: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Load a state written by ``full_optimizer_state`` into the optimizer of the prepared ``model``
    (every process loads the whole state and keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, _inner(optimizer), state, options=StateDictOptions(full_state_dict=True))
