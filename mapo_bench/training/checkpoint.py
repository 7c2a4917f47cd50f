"""Training checkpoints (exact resume) and the final exports (diffusers UNet folder or LoRA file).

A checkpoint folder ``checkpoints/step-00000010/`` holds the trainable weights (safetensors), the
optimizer and lr-scheduler state, every generator state and the data position, and the hash of the
settings that decide the result. Each is written to a temp folder and renamed, so a checkpoint that
exists is complete; only the last ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from mapo_bench import faults
from mapo_bench.errors import MapoBenchError
from mapo_bench.io import atomic_dir

CHECKPOINTS = "checkpoints"
LORA_FILE = "pytorch_lora_weights.safetensors"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(work: Path) -> list[Path]:
    folder = Path(work) / CHECKPOINTS
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file()) if folder.is_dir() else []


def latest_checkpoint(work: Path) -> Path | None:
    found = list_checkpoints(work)
    return found[-1] if found else None


def trainable_state(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (all of them for a full fine-tune, the LoRA matrices otherwise)."""
    return {name: p.detach().cpu().contiguous() for name, p in denoiser.named_parameters() if p.requires_grad}


def save_checkpoint(work: Path, step: int, *, denoiser: torch.nn.Module, optimizer: Any, scheduler: Any,
                    generator_states: dict[str, torch.Tensor], state: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/step-N`` atomically, then delete all but the newest ``keep_last``."""
    from safetensors.torch import save_file

    final = Path(work) / CHECKPOINTS / checkpoint_name(step)
    with atomic_dir(final, overwrite=True) as tmp:
        save_file(trainable_state(denoiser), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        faults.point("train:inside-checkpoint")
        save_file({name: s.contiguous() for name, s in generator_states.items()}, str(tmp / "generators.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    for old in list_checkpoints(work)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Everything a resume needs; a missing or partial checkpoint is a one-line error."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        raise MapoBenchError(f"{path}: not a checkpoint (no state.json); pass --resume latest or a checkpoints/step-N folder")
    state = json.loads((path / "state.json").read_text())
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    return {"state": state, "trainable": load_file(str(path / "trainable.safetensors")),
            "generators": load_file(str(path / "generators.safetensors")), **optim}


def restore_trainable(denoiser: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    params = dict(denoiser.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        extra = sorted(set(tensors) ^ expected)[:1]
        raise MapoBenchError(f"{where}: checkpoint weights do not match this model (first differing key {extra}); "
                             "resume with the same model and LoRA settings")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))
