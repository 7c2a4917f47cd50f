"""CLIP score (torchmetrics convention): 100 * cos(image, caption) on OpenAI CLIP ViT-L/14.

REFERENCE.md section 4. Per image the raw ``100 * cos`` is returned (win rates compare these); the
summary table reports ``max(mean, 0)`` as torchmetrics' ``CLIPScore`` does. Not comparable to Hessel et
al.'s ``2.5 * cos`` on ViT-B/32.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from mapo_bench.evaluators.backbones import ClipBackboneEvaluator, to_numpy64
from mapo_bench.evaluators.base import Evaluator, ScoreContext


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """``(N, D), (N, D) -> (N,)``: 100 * cosine similarity of paired rows."""
    return 100.0 * torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)


class ClipScore(ClipBackboneEvaluator, Evaluator):
    name: ClassVar[str] = "clip"
    version = "vit-l-14"


    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        return to_numpy64(clip_score(self.backbone.image_embeds(images), self.backbone.text_embeds(list(prompts))))

