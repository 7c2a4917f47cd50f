"""On-disk cache of VAE latent distributions and text embeddings, reused across methods and seeds.

Keyed by dataset fingerprint, split, backend, model (ids and frozen-weight fingerprint), dtype,
resolution and transform (center crop). Per raw dataset row it stores the latent mean and std of
jpg_0 and jpg_1, unflipped and flipped, the text conditioning of the caption, and SDXL's original size
and crop. Shards are append-only safetensors files, so a later run that needs more rows adds a shard.
Latents are sampled from the stored distribution with the training step's generator, exactly as a
run without the cache samples from a fresh one, so both give the same losses on the same batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from mapo_bench.io import write_bytes_atomic, write_json_atomic

CACHE_VERSION = 1
SHARD_ROWS = 256


def default_cache_dir() -> Path:
    from mapo_bench.clip_tokenizer import cache_root

    return cache_root() / "train-cache"


FROZEN_NAMES = ("vae", "text_encoder", "text_encoder_2", "image_encoder")


def frozen_modules(backend: Any) -> dict[str, torch.nn.Module]:
    """The pipeline's torch modules other than the denoiser (VAE, text encoders): never trained here."""
    pipeline = backend.pipeline
    components = getattr(pipeline, "components", None)
    if not isinstance(components, dict):
        components = {name: getattr(pipeline, name, None) for name in FROZEN_NAMES}
    return {name: module for name, module in components.items()
            if name != backend.denoiser_name and isinstance(module, torch.nn.Module)}


def frozen_fingerprint(backend: Any) -> str:
    """A cheap fingerprint of the frozen components (VAE, text encoders): config plus per-tensor sums."""
    digest = hashlib.sha256()
    modules = frozen_modules(backend)
    for name in sorted(modules):
        module = modules[name]
        digest.update(name.encode())
        config = getattr(module, "config", None)
        if config is not None:
            digest.update(json.dumps(dict(config) if not hasattr(config, "to_dict") else config.to_dict(),
                                     sort_keys=True, default=str).encode())
        with torch.no_grad():
            for key, tensor in module.state_dict().items():
                digest.update(f"{key}:{float(tensor.double().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


def cache_key(*, backend: Any, model: str, vae: str | None, dtype: str, resolution: int, crop: str,
              dataset_fingerprint: str, split: str) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "backend": backend.name, "model": model, "vae": vae, "dtype": dtype,
            "frozen": frozen_fingerprint(backend), "resolution": resolution, "crop": crop,
            "dataset": dataset_fingerprint, "split": split}


def key_folder(root: Path, key: dict[str, Any]) -> Path:
    """The cache folder of ``key``: the project's one config hash of it."""
    from mapo_bench.config import config_hash

    return Path(root) / config_hash(key)


class LatentCache:
    """Read access to one cache folder; ``build_missing`` adds the rows a run needs."""

    def __init__(self, folder: Path, key: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.key = key
        self.index: dict[int, tuple[int, int]] = {}
        self._handles: list[Any] = []
        self._files: list[Path] = []
        self.refresh()

    def refresh(self) -> None:
        from safetensors import safe_open

        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "key.json"
        if not key_file.exists():
            write_json_atomic(key_file, self.key)
        for path in sorted(self.folder.glob("shard-*.safetensors")):
            if path in self._files:
                continue
            handle = safe_open(str(path), framework="pt")
            shard = len(self._handles)
            self._handles.append(handle)
            self._files.append(path)
            for offset, row in enumerate(handle.get_tensor("rows").tolist()):
                self.index.setdefault(int(row), (shard, offset))

    def missing(self, rows: list[int]) -> list[int]:
        return sorted({int(r) for r in rows} - set(self.index))

    def _get(self, name: str, row: int) -> torch.Tensor:
        shard, offset = self.index[int(row)]
        return self._handles[shard].get_slice(name)[offset:offset + 1]

    def distribution(self, rows: list[int], images: list[int], flips: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (mean, std) of image ``images[i]`` (0 = jpg_0) of ``rows[i]``, flipped when ``flips[i]``."""
        means, stds = [], []
        for row, image, flip in zip(rows, images, flips, strict=True):
            means.append(self._get("mean", row)[0, int(image), int(flip)])
            stds.append(self._get("std", row)[0, int(image), int(flip)])
        return torch.stack(means), torch.stack(stds)

    def conditioning(self, rows: list[int]) -> dict[str, torch.Tensor]:
        names = [n[len("cond."):] for n in self._handles[0].keys() if n.startswith("cond.")] if self._handles else []
        return {name: torch.cat([self._get(f"cond.{name}", r) for r in rows]) for name in names}

    def sizes(self, rows: list[int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        orig = [tuple(self._get("orig", r)[0].tolist()) for r in rows]
        crop = [tuple(self._get("crop", r)[0].tolist()) for r in rows]
        return orig, crop

    def build_missing(self, backend: Any, source: Any, rows: list[int], resolution: int, batch_size: int,
                      progress: bool = True) -> int:
        """Encode the rows not cached yet (both images, both flips, caption); returns how many were added."""
        from mapo_bench.data.reader import load_pair

        todo = self.missing(rows)
        if not todo:
            return 0
        bar = _progress(progress)
        task = bar.add_task("caching latents", total=len(todo)) if bar else None
        if bar:
            bar.start()
        try:
            for start in range(0, len(todo), SHARD_ROWS):
                chunk = todo[start:start + SHARD_ROWS]
                parts: dict[str, list[torch.Tensor]] = {}
                for sub in range(0, len(chunk), batch_size):
                    part_rows = chunk[sub:sub + batch_size]
                    pairs = [load_pair(source, r, resolution, "center", False) for r in part_rows]
                    pix = torch.stack([p.pixels[i] for p in pairs for i in (0, 1)])  # (2n, 3, R, R)
                    with torch.no_grad():
                        plain = backend.latent_distribution(pix)
                        flipped = backend.latent_distribution(torch.flip(pix, dims=[3]))
                        cond = backend.encode_prompts([source.captions[r] for r in part_rows])
                    n = len(part_rows)
                    mean = torch.stack([plain[0], flipped[0]], 1).reshape(n, 2, 2, *plain[0].shape[1:])
                    std = torch.stack([plain[1], flipped[1]], 1).reshape(n, 2, 2, *plain[1].shape[1:])
                    item = {"mean": mean.float().cpu(), "std": std.float().cpu(),
                            "orig": torch.tensor([p.original_size for p in pairs], dtype=torch.int64),
                            "crop": torch.tensor([p.crop_top_left for p in pairs], dtype=torch.int64),
                            "rows": torch.tensor(part_rows, dtype=torch.int64)}
                    item.update({f"cond.{k}": v.detach().cpu().contiguous() for k, v in cond.items()})
                    for name, value in item.items():
                        parts.setdefault(name, []).append(value)
                    if bar:
                        bar.advance(task, n)
                self._write_shard({k: torch.cat(v).contiguous() for k, v in parts.items()})
        finally:
            if bar:
                bar.stop()
        self.refresh()
        return len(todo)

    def _write_shard(self, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save

        name = f"shard-{time.time_ns():020d}-{os.getpid()}.safetensors"
        return write_bytes_atomic(self.folder / name, save(tensors, metadata={"version": str(CACHE_VERSION)}),
                                  fault="train:inside-cache-shard")


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True)
