"""Batches for the training loop: data order, per-pair random draws, latents and conditioning.

Randomness: the epoch order is a permutation seeded by (seed, epoch), so a resume needs only the
(epoch, position) pair; every other draw (orientation of half-ties, flip, random crop, latent sample,
timestep, noise) comes from the step generator, whose state every checkpoint saves. The draws are
made in the same order with and without the cache, so both paths see the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mapo_bench.backends.base import repeat_conditioning


class EpochOrder:
    """Global batches of indices into the selection; epochs reshuffle; an incomplete tail is dropped."""

    def __init__(self, size: int, global_batch: int, seed: int, epoch: int = 0, position: int = 0) -> None:
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.epoch, self.position = epoch, position
        self._perm = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g).numpy()

    def next(self) -> np.ndarray:
        if self.position + self.global_batch > self.size:
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        batch = self._perm[self.position:self.position + self.global_batch]
        self.position += self.global_batch
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


@dataclass
class Batch:
    """What one UNet call needs: clean latents (chosen first, then rejected) and the conditioning."""

    x0: torch.Tensor  # (2B, C, h, w) or (B, ...) when the method uses chosen images only
    conditioning: dict[str, torch.Tensor]
    pairs: int


def make_batch(*, backend: Any, source: Any, selection: Any, indices: np.ndarray, generator: torch.Generator,
               resolution: int, crop: str, flip: bool, uses_rejected: bool, cache: Any | None) -> Batch:
    """Draw orientation, flip and crop per pair, then latents from the (cached or fresh) distribution."""
    from mapo_bench.data.reader import load_pair

    b = len(indices)
    rows = [int(selection.rows[i]) for i in indices]
    p0 = torch.as_tensor(selection.p0[indices], dtype=torch.float64)
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    flips = (torch.rand(b, generator=generator) < 0.5) & flip
    crop_u = torch.rand(b, 2, generator=generator)
    chosen = [0 if u[i] < p0[i] else 1 for i in range(b)]  # which image (jpg_0 / jpg_1) is chosen
    images = chosen + [1 - c for c in chosen] if uses_rejected else chosen
    pair_rows = rows * 2 if uses_rejected else rows
    pair_flips = flips.tolist() * (2 if uses_rejected else 1)
    if cache is not None:
        mean, std = cache.distribution(pair_rows, images, pair_flips)
        cond = cache.conditioning(rows)
        sizes, crops = cache.sizes(rows)
        mean, std = mean.to(backend.device), std.to(backend.device)
        cond = {k: v.to(backend.device) for k, v in cond.items()}
    else:
        pairs = [load_pair(source, r, resolution, crop, bool(flips[i]), tuple(crop_u[i].tolist()))
                 for i, r in enumerate(rows)]
        pixels = torch.stack([pairs[k % b].pixels[img] for k, img in enumerate(images)])
        with torch.no_grad():
            mean, std = backend.latent_distribution(pixels)
            cond = backend.encode_prompts([source.captions[r] for r in rows])
        sizes = [p.original_size for p in pairs]
        crops = [p.crop_top_left for p in pairs]
    x0 = backend.latents_from_distribution(mean, std, generator)
    cond = dict(cond)
    cond.update(backend.image_conditioning(sizes, crops, (resolution, resolution)))
    if uses_rejected:
        cond = repeat_conditioning(cond, 2)
    return Batch(x0=x0, conditioning=cond, pairs=b)
