"""Shared helpers for the trainer tests: a small TrainConfig and readers of a run's outputs."""

from __future__ import annotations

import json
from pathlib import Path

from mapo_bench.training.config import TrainConfig


def tiny_config(tmp_path: Path, model: Path, backend: str, method: str = "mapo", lora: bool = False,
                dataset: Path | None = None, **overrides) -> TrainConfig:
    """3 steps, batch 2 pairs, 32 px (16 latent px), lr 1e-3 so 3 steps visibly move the weights."""
    data = {"resolution": 32, **overrides.pop("data", {})}
    optim = {"lr": 1e-3, **overrides.pop("optim", {})}
    fields = dict(method=method, backend=backend, model=str(model), dataset=str(dataset or tmp_path / "pairs"),
                  out=tmp_path / "out", max_steps=3, batch_size=2, data=data, optim=optim,
                  lora={"enabled": lora}, cache={"dir": str(tmp_path / "cache")},
                  log={"progress": False})
    fields.update(overrides)
    return TrainConfig(**fields)


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / "train_log.jsonl").read_text().splitlines() if line]
