"""LAION aesthetic predictor v2 ("improved-aesthetic-predictor"): an MLP on normalized CLIP ViT-L/14 embeddings.

REFERENCE.md section 4: ``score = MLP(e / |e|)`` with ``e`` the OpenAI ViT-L/14 image embedding (shared
with ``clip`` and ``style``) and MLP = Linear 768-1024, Dropout, 1024-128, Dropout, 128-64, Dropout,
64-16, 16-1 with **no activations** (state-dict keys ``layers.0/2/4/6/7``). Weights
``sac+logos+ava1-l14-linearMSE.pth`` from github.com/christophschuhmann/improved-aesthetic-predictor;
the real file is checked against its sha256. Scale 1-10 (SDXL about 6).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mapo_bench.errors import MapoBenchError, ModelNotFoundError
from mapo_bench.evaluators.backbones import VIT_L14, ClipBackbone, clip_backbone, resolve_device, to_numpy64
from mapo_bench.evaluators.base import Evaluator, ScoreContext, no_options
from mapo_bench.models import resolve_model

AESTHETIC_REPO = "christophschuhmann/improved-aesthetic-predictor"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
AESTHETIC_URL = f"https://github.com/{AESTHETIC_REPO}/raw/main/{AESTHETIC_FILE}"
LINEAR_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")
DROPOUTS = (0.2, 0.2, 0.1)


class AestheticMLP(torch.nn.Module):
    """The predictor's head, laid out so its state dict loads unchanged (Linear, Dropout, ..., Linear, Linear)."""

    def __init__(self, sizes: tuple[int, ...] = (768, 1024, 128, 64, 16, 1)) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(DROPOUTS):
                layers.append(torch.nn.Dropout(DROPOUTS[i]))
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def aesthetic_score(image_embeds: torch.Tensor, mlp: torch.nn.Module) -> torch.Tensor:
    """``(N, D) -> (N,)``: the MLP on L2-normalized embeddings (float32)."""
    normed = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    return mlp(normed).reshape(-1)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_mlp(path: Path) -> AestheticMLP:
    """Load the head from ``path`` (``weights_only=True``); the real file must match its sha256."""
    if path.name == AESTHETIC_FILE and sha256_file(path) != AESTHETIC_SHA256:
        raise MapoBenchError(f"{path}: sha256 differs from the LAION aesthetic predictor's "
                             f"({AESTHETIC_SHA256[:12]}...); download it again from {AESTHETIC_URL}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or non-tensor pickles: one line
        raise MapoBenchError(f"{path}: cannot load the aesthetic MLP ({type(exc).__name__}); "
                             f"expected a state dict with keys {', '.join(k + '.weight' for k in LINEAR_KEYS)}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing = [k for k in LINEAR_KEYS if f"{k}.weight" not in state]
    if missing:
        raise MapoBenchError(f"{path}: not an aesthetic MLP state dict (missing {', '.join(missing)})")
    sizes = tuple([int(state["layers.0.weight"].shape[1])] + [int(state[f"{k}.weight"].shape[0]) for k in LINEAR_KEYS])
    mlp = AestheticMLP(sizes)
    mlp.load_state_dict({k: v.float() for k, v in state.items()})
    return mlp.eval()


def resolve_weights(model: str) -> Path:
    """A file path, a folder holding the file, or a repo id under $MAPO_BENCH_MODEL_ROOT / the hub."""
    try:
        path = resolve_model(model, filename=AESTHETIC_FILE)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} (the file {AESTHETIC_FILE} is at {AESTHETIC_URL})") from None
    if not path.is_file():
        raise ModelNotFoundError(f"aesthetic weights: {path} not found; put {AESTHETIC_FILE} there "
                                 f"(from {AESTHETIC_URL}) or pass models.aesthetic=/path/to/{AESTHETIC_FILE}")
    return path


class Aesthetic(Evaluator):
    name: ClassVar[str] = "aesthetic"
    version = "laion-v2-vit-l-14"

    def __init__(self, backbone: ClipBackbone, mlp: AestheticMLP) -> None:
        self.backbone = backbone
        self.mlp = mlp

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str = AESTHETIC_REPO,
             clip_model: str = VIT_L14, processor: str | None = None, **options: Any) -> Aesthetic:
        """``model``: the MLP weights (file, folder or repo id); ``clip_model``: the ViT-L/14 it reads."""
        no_options(cls.name, options)
        mlp = load_mlp(resolve_weights(model)).to(resolve_device(device))
        return cls(clip_backbone(clip_model, device, dtype, processor), mlp)

    @torch.no_grad()
    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        embeds = self.backbone.image_embeds(images).to(next(self.mlp.parameters()).device)
        return to_numpy64(aesthetic_score(embeds, self.mlp))
