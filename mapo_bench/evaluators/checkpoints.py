"""Pickled evaluator checkpoints (HPS, ImageReward): read with ``weights_only=True``, loaded strictly into the
model they belong to, every failure one line naming the file."""

from __future__ import annotations

from pathlib import Path

import torch

from mapo_bench.dtypes import resolve_dtype
from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.backbones import resolve_device


def load_checkpoint(path: Path, what: str = "HPS") -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a pickled checkpoint (``weights_only=True``; a ``module.`` prefix is stripped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a corrupt or unsafe pickle: one line
        raise MapoBenchError(f"{path}: cannot load the {what} checkpoint ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MapoBenchError(f"{path}: a {what} checkpoint holds a dict of tensors (or one under key 'state_dict')")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, device: str | None,
              dtype: str) -> tuple[torch.device, torch.dtype]:
    """``state`` loaded strictly into ``model`` (a mismatch is one line naming ``path``), then the model moved to
    ``device`` and ``dtype`` in eval mode; returns the two."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MapoBenchError(f"{path}: does not fit {what} ({str(exc).splitlines()[0][:160]})") from None
    torch_type = resolve_dtype(dtype)
    target = resolve_device(device)
    model.to(target, torch_type).eval()
    return target, torch_type
