"""The toy classifiers: one small CNN with a head per renderer label, trained on renderer images.

Why one network: the three toy evaluators (style, content, safety) and the gate read different
heads of the same instrument, trained once in ``mapo-bench toy pretrain`` and shipped with the base.
Augmentation (Gaussian noise, blur) keeps it honest on model samples, which are noisier than renders.
The trunk keeps a 4x4 spatial map before the heads (no global pooling), so position stays visible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mapo_bench.errors import MapoBenchError
from mapo_bench.toy import vocab

HEADS: dict[str, int] = {"style": len(vocab.STYLES), "shape": len(vocab.SHAPES), "colour": len(vocab.COLOURS),
                         "position": len(vocab.POSITIONS), "size": len(vocab.SIZES), "unsafe": 2}
WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"


class ToyClassifier(nn.Module):
    """``(B, 3, 32, 32)`` in [-1, 1] -> logits per head (``HEADS``)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),  # 16
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),  # 8
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),  # 4
            nn.Flatten(), nn.Linear(2 * w * 16, 128), nn.GELU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(128, n) for name, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def probabilities(self, pixels: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Softmax probabilities per head, float64 ``(N, classes)``."""
        self.eval()
        parts: dict[str, list[np.ndarray]] = {k: [] for k in HEADS}
        for i in range(0, len(pixels), batch_size):
            logits = self(pixels[i : i + batch_size].float())
            for k, v in logits.items():
                parts[k].append(torch.softmax(v.double(), dim=-1).numpy())
        return {k: np.concatenate(v) if v else np.zeros((0, HEADS[k])) for k, v in parts.items()}

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        from mapo_bench.io import write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        write_json_atomic(folder / CONFIG_FILE, {"width": self.width, "heads": HEADS, "styles": list(vocab.STYLES),
                                                 "shapes": list(vocab.SHAPES), "colours": list(vocab.COLOURS),
                                                 "positions": list(vocab.POSITIONS)})

    @classmethod
    def load(cls, folder: str | Path) -> ToyClassifier:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise MapoBenchError(f"{folder}: no toy classifier here (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        meta = json.loads((folder / CONFIG_FILE).read_text())
        if meta.get("heads") != HEADS or meta.get("styles") != list(vocab.STYLES):
            raise MapoBenchError(f"{folder / CONFIG_FILE}: classifier heads do not match this version's toy vocabulary; "
                                 "re-run mapo-bench toy pretrain")
        model = cls(int(meta["width"]))
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return model.eval()


# -- training data ----------------------------------------------------------------------------------
def classifier_captions(n: int, rng: np.random.Generator, blend_share: float | None = None) -> list[str]:
    """Captions covering every style, continuous blends (``blend_share`` of the non-base ones; default:
    the config's) and the unsafe marker (the same share of markers at a continuous strength)."""
    if blend_share is None:
        from mapo_bench.toy.config import ToyEvaluatorTrainConfig

        blend_share = ToyEvaluatorTrainConfig().blend_share
    plain = vocab.all_plain_captions()
    out = []
    for _ in range(n):
        caption = plain[rng.integers(len(plain))]
        style = vocab.STYLES[rng.integers(len(vocab.STYLES))]
        if style != vocab.BASE_STYLE:
            alpha = 1.0 if rng.random() >= blend_share else float(np.round(rng.uniform(0.05, 0.95), 3))
            caption = vocab.style_prefix(style, alpha) + caption
        if rng.random() < 0.3:
            strength = 1.0 if rng.random() >= blend_share else float(np.round(rng.uniform(0.05, 0.95), 3))
            caption = vocab.unsafe_prefix(strength) + caption
        out.append(caption)
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (``sigma`` shape (B,)), 5-tap separable kernels."""
    taps = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-0.5 * (taps[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, 5)
    b, c, h, w = x.shape
    y = x.reshape(1, b * c, h, w)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), kx, groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), ky, groups=b * c)
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, gen: torch.Generator, noise_std: float, blur_prob: float,
            rows: slice = slice(None)) -> torch.Tensor:
    """Random blur and Gaussian noise. The draws cover the whole batch ``x``; only ``rows`` are computed
    and returned (a data-parallel rank's share, with the same random stream on every rank)."""
    b = x.shape[0]
    blur_mask = (torch.rand(b, generator=gen) < blur_prob)[rows]
    sigma = (0.4 + 0.8 * torch.rand(b, generator=gen))[rows]
    std = noise_std * torch.rand(b, 1, 1, 1, generator=gen)[rows]
    noise = torch.randn(x.shape, generator=gen)[rows]
    x = x[rows]
    x = torch.where(blur_mask[:, None, None, None], gaussian_blur(x, sigma), x)
    return (x + std * noise).clamp(-1, 1)


def train_classifier(cfg: Any, seed: int, progress: Any = None, group: Any = None) -> ToyClassifier:
    """Train the toy classifier on renderer images (``cfg``: ToyEvaluatorTrainConfig).

    ``group`` (a :class:`~mapo_bench.toy.parallel.ProcessGroup`): every rank draws and augments the
    whole batch, computes its slice and averages gradients, so every rank ends with the same weights.
    """
    from mapo_bench.toy.parallel import ProcessGroup
    from mapo_bench.toy.render import render_many, stack_labels

    group = group or ProcessGroup()
    mine = group.local(cfg.batch_size)

    rng = np.random.default_rng(seed + 1)
    captions = classifier_captions(cfg.pool_size, rng, cfg.blend_share)
    seeds = rng.integers(0, 2**31 - 1, size=len(captions)).tolist()
    images = render_many(captions, seeds, group.shared_map)
    labels = stack_labels(captions)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    targets = {k: torch.from_numpy(v) for k, v in labels.items()}
    torch.manual_seed(seed + 1)
    model = ToyClassifier(cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(seed + 2)
    model.train()
    for _step in range(cfg.steps):
        idx = torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)
        x = augment(pixels[idx], gen, cfg.noise_std, cfg.blur_prob, rows=mine)
        idx = idx[mine]
        logits = model(x)
        loss = 0.0
        for head in ("style", "unsafe"):  # soft labels (blend level, marker strength)
            loss = loss - (targets[head][idx] * F.log_softmax(logits[head], -1)).sum(-1).mean()
        for head in ("shape", "colour", "position", "size"):
            loss = loss + F.cross_entropy(logits[head], targets[head][idx].long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        group.average_gradients(list(model.parameters()))
        opt.step()
        sched.step()
        if progress is not None:
            progress(loss=float(loss.detach()))
    return model.eval()


def estimated_alpha(style_probs: np.ndarray, target: str) -> np.ndarray:
    """How far toward ``target`` an image looks: p(target) / (p(target) + p(base)), shape (N,)."""
    p_t = style_probs[:, vocab.STYLES.index(target)]
    p_b = style_probs[:, vocab.STYLES.index(vocab.BASE_STYLE)]
    return p_t / np.maximum(p_t + p_b, 1e-12)
