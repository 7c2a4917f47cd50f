"""Training checkpoints (exact resume) and the final exports (diffusers UNet folder or LoRA file).

A checkpoint folder ``checkpoints/step-00000010/`` holds the trainable weights (safetensors), the
optimizer and lr-scheduler state, every generator state and the data position, and the hash of the
settings that decide the result. Each is written to a temp folder and renamed, so a checkpoint that
exists is complete; only the last ``keep_last`` are kept. ``state.json`` (written last) records the size and
SHA-256 of the other files, so a checkpoint damaged afterwards (a flipped bit, a truncated copy) is found
before it is loaded, and ``--resume latest`` falls back to the newest intact one, saying so.
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


CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "generators.safetensors")


def checkpoint_problems(path: Path) -> list[str]:
    """One line per damage found in checkpoint ``path``: an unreadable state.json, or a file whose size or
    SHA-256 differs from what state.json recorded (checkpoints from before the record: only presence)."""
    from mapo_bench.integrity import file_problems

    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"{path / 'state.json'}: unreadable ({exc.__class__.__name__})"]
    files = state.get("files") or {name: None for name in CHECKPOINT_FILES}
    missing = [f"{path / name}: missing" for name, record in files.items() if record is None and not (path / name).is_file()]
    return missing + file_problems(path, {k: v for k, v in files.items() if v is not None}, path / "state.json")


def latest_intact_checkpoint(work: Path, say: Any = print) -> Path | None:
    """The newest checkpoint without damage; each damaged one skipped is reported through ``say``."""
    for path in reversed(list_checkpoints(work)):
        problems = checkpoint_problems(path)
        if not problems:
            return path
        say(f"checkpoint {path.name} is damaged ({problems[0]}); falling back to the one before it")
    return None


def save_checkpoint(work: Path, step: int, *, trainable: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
                    scheduler_state: dict[str, Any], generator_states: dict[str, torch.Tensor], state: dict[str, Any],
                    keep_last: int) -> Path:
    """Write ``checkpoints/step-N`` atomically, then delete all but the newest ``keep_last``. The tensors are
    whole (``training.gather``), so a checkpoint does not depend on how the run was sharded."""
    from safetensors.torch import save_file

    from mapo_bench.integrity import file_records

    final = Path(work) / CHECKPOINTS / checkpoint_name(step)
    with atomic_dir(final, overwrite=True) as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler_state}, tmp / "optimizer.pt")
        faults.point("train:inside-checkpoint", final)
        save_file({name: s.contiguous() for name, s in generator_states.items()}, str(tmp / "generators.safetensors"))
        files = file_records(tmp, [tmp / name for name in CHECKPOINT_FILES])
        (tmp / "state.json").write_text(json.dumps({"step": step, **state, "files": files}, indent=2))
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
