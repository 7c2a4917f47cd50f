"""Human Preference Score v2 (Wu et al., 2023): ``100 * cos(image, caption)`` on an open_clip ViT-H/14 fine-tune.

REFERENCE.md section 4: open_clip ``ViT-H-14`` built with ``pretrained=None`` (the hpsv2 package first
downloads the LAION weights only to overwrite them), then the ``state_dict`` of ``xswu/HPSv2``
``HPS_v2.1_compressed.pt`` (v2.1, default) or ``HPS_v2_compressed.pt`` (v2.0), loaded with
``weights_only=True``. Images: longest side to 224 bicubic, zero-padded to a centred square, CLIP
mean/std; captions: open_clip tokenizer, 77 tokens. Reported x100 (the hpsv2 package returns the raw
cosine); SDXL scores about 28-31 on v2.1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.backbones import CLIP_MEAN, CLIP_STD, rgb, to_numpy64
from mapo_bench.evaluators.base import Evaluator, ScoreContext, no_options
from mapo_bench.evaluators.checkpoints import load_checkpoint, load_into
from mapo_bench.evaluators.clip_score import clip_score
from mapo_bench.models import resolve_model

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}
HPS_ARCH = "ViT-H-14"


# HPS is 100 * cos of paired rows, the CLIP-score formula on HPS's own open_clip ViT-H/14.
hps_score = clip_score


def build_open_clip(arch: str | dict[str, Any]) -> Any:
    """An open_clip model with random weights: a registered name (``ViT-H-14``), a config dict or a JSON file."""
    import open_clip

    if isinstance(arch, str) and arch.endswith(".json"):
        arch = json.loads(Path(arch).read_text())
    if isinstance(arch, dict):
        return open_clip.CLIP(**arch)
    if arch not in open_clip.list_models():
        raise MapoBenchError(f"hps: unknown open_clip architecture {arch!r}; use {HPS_ARCH!r} or a config dict")
    return open_clip.create_model(arch, pretrained=None)


class HPS(Evaluator):
    name: ClassVar[str] = "hps"

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, device: torch.device,
                 dtype: torch.dtype, version: str) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.version = version

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str = HPS_REPO, version: str = "v2.1",
             arch: str | dict[str, Any] = HPS_ARCH, **options: Any) -> HPS:
        """``model``: a checkpoint file, a folder holding it, or a repo id; ``arch``: the open_clip model."""
        import open_clip

        no_options(cls.name, options)
        if version not in HPS_FILES:
            raise MapoBenchError(f"hps: unknown version {version!r}; valid: {', '.join(HPS_FILES)}")
        path = resolve_model(model, filename=HPS_FILES[version])
        if not path.is_file():
            raise MapoBenchError(f"hps: {path} not found; the {version} weights are {HPS_FILES[version]} of {HPS_REPO}")
        clip = build_open_clip(arch)
        target, torch_type = load_into(clip, load_checkpoint(path), path,
                                       f"open_clip {arch if isinstance(arch, str) else 'config'}", device, dtype)
        size = clip.visual.image_size
        preprocess = open_clip.image_transform(size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD,
                                               resize_mode="longest", interpolation="bicubic", fill_color=0)
        tokenizer = open_clip.SimpleTokenizer(context_length=clip.context_length)
        return cls(clip, preprocess, tokenizer, target, torch_type, version)

    @torch.no_grad()
    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        pixels = torch.stack([self.preprocess(im) for im in rgb(images)]).to(self.device, self.dtype)
        tokens = self.tokenizer(list(prompts)).to(self.device)
        image = self.model.encode_image(pixels)
        text = self.model.encode_text(tokens)
        return to_numpy64(hps_score(image, text))
