"""Style adherence (the Pick-Style metric): CLIP zero-shot probability of the task's target style.

REFERENCE.md section 4: ``softmax([100 cos(e, t_target), 100 cos(e, t_base)])[0]`` with ``e`` the
ViT-L/14 image embedding (shared with ``aesthetic`` and ``clip``) and ``t_*`` the embeddings of the
style texts the task names (e.g. "a Disney style animated image" vs "a realistic photo"). In [0, 1].
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.backbones import ClipBackboneEvaluator, to_numpy64
from mapo_bench.evaluators.base import Evaluator, ScoreContext


def style_probability(image_embeds: torch.Tensor, target_embed: torch.Tensor, base_embed: torch.Tensor,
                      scale: float = 100.0) -> torch.Tensor:
    """``(N, D), (D,), (D,) -> (N,)``: softmax over {target, base} of ``scale * cos``, target's share."""
    image = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    texts = torch.nn.functional.normalize(torch.stack([target_embed, base_embed]).float(), dim=-1)
    return torch.softmax(scale * image @ texts.T, dim=-1)[:, 0]


class StyleAdherence(ClipBackboneEvaluator, Evaluator):
    name: ClassVar[str] = "style"
    version = "vit-l-14-zero-shot"


    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        if context is None or not context.target_style or not context.base_style:
            raise MapoBenchError("metric 'style' needs target_style and base_style (e.g. target_style='a Disney "
                                 "style animated image' base_style='a realistic photo')")
        texts = self.backbone.text_embeds([context.target_style, context.base_style])
        return to_numpy64(style_probability(self.backbone.image_embeds(images), texts[0], texts[1]))
