"""PickScore v1 (Kirstain et al., 2023): ``logit_scale.exp() * cos(image, caption)`` on a CLIP ViT-H/14.

REFERENCE.md section 4: weights ``yuvalkirstain/PickScore_v1`` (transformers CLIPModel), processor
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (shortest side 224 bicubic, center crop, CLIP mean/std; text
truncated to 77 tokens). About 20-23 for SDXL images; comparable within a prompt only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from mapo_bench.evaluators.backbones import ClipBackboneEvaluator, to_numpy64
from mapo_bench.evaluators.base import Evaluator, ScoreContext

PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def pick_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """``(N, D), (N, D), () -> (N,)``: ``logit_scale * cos`` of paired rows (``logit_scale`` already exp'd)."""
    cos = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return logit_scale.float() * cos


class PickScore(ClipBackboneEvaluator, Evaluator):
    name: ClassVar[str] = "pickscore"
    version = "v1"
    default_model = PICKSCORE
    default_processor = PICKSCORE_PROCESSOR  # PickScore's weights come without a processor


    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        image = self.backbone.image_embeds(images)
        text = self.backbone.text_embeds(list(prompts))
        return to_numpy64(pick_score(image, text, self.backbone.logit_scale))
