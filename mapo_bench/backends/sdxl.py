"""Stable Diffusion XL backend: two text encoders, pooled embeddings and micro-conditioning time_ids."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mapo_bench.backends.base import Conditioning
from mapo_bench.backends.sd15 import SD15Backend
from mapo_bench.config import SamplerConfig

SDXL_VAE_FP16_FIX = "madebyollin/sdxl-vae-fp16-fix"


class SDXLBackend(SD15Backend):
    name: ClassVar[str] = "sdxl"
    default_model: ClassVar[str] = "stabilityai/stable-diffusion-xl-base-1.0"
    default_resolution: ClassVar[int] = 1024
    # The official MaPO code validates with 25 steps, guidance 5.0 (REFERENCE.md section 1.1).
    default_sampler: ClassVar[SamplerConfig] = SamplerConfig(steps=25, guidance=5.0)
    pipeline_class_name: ClassVar[str] = "StableDiffusionXLPipeline"

    @classmethod
    def pipeline_kwargs(cls) -> dict[str, Any]:
        return {"add_watermarker": False}

    def record(self) -> dict[str, Any]:
        info = super().record()
        info.pop("safety_checker")
        return info

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> Conditioning:
        # Concatenated penultimate hidden states of both encoders; pooled = text_encoder_2's projection.
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            list(captions), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}

    def image_conditioning(self, original_sizes: list[tuple[int, int]], crops: list[tuple[int, int]],
                           target_size: tuple[int, int]) -> Conditioning:
        """time_ids = (orig_h, orig_w, crop_top, crop_left, target_h, target_w) per sample."""
        rows = [list(orig) + list(crop) + list(target_size) for orig, crop in zip(original_sizes, crops, strict=True)]
        return {"time_ids": torch.tensor(rows, dtype=self.dtype, device=self.device)}

    def predict(self, unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        time_ids = conditioning.get("time_ids")
        if time_ids is None:  # no crop information: the plain square case
            size = noisy.shape[-1] * self.pipeline.vae_scale_factor
            time_ids = torch.tensor([[size, size, 0, 0, size, size]] * noisy.shape[0], dtype=noisy.dtype,
                                    device=noisy.device)
        added = {"text_embeds": conditioning["text_embeds"], "time_ids": time_ids}
        return unet(noisy, timesteps, encoder_hidden_states=conditioning["encoder_hidden_states"],
                    added_cond_kwargs=added).sample
