"""Stable Diffusion 3 / 3.5 backend (StableDiffusion3Pipeline, MMDiT transformer, rectified flow).

Text: two CLIP encoders (pooled projections concatenated) plus an optional T5 (``text_encoder_3: null``
in ``backend_options`` loads without it; its embeddings are then zeros, as in the pipeline). The
transformer takes ``timestep = sigma * 1000`` (the scheduler's timesteps), as diffusers' SD3 script
passes it (REFERENCE.md section 6).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mapo_bench.backends.base import Conditioning
from mapo_bench.backends.flow import FlowMatchingBackend
from mapo_bench.config import SamplerConfig
from mapo_bench.errors import MapoBenchError


class SD3Backend(FlowMatchingBackend):
    name: ClassVar[str] = "sd3"
    default_model: ClassVar[str] = "stabilityai/stable-diffusion-3.5-medium"
    default_resolution: ClassVar[int] = 1024
    # The SD3.5-medium model card: 40 steps, guidance 4.5.
    default_sampler: ClassVar[SamplerConfig] = SamplerConfig(steps=40, guidance=4.5)
    pipeline_class_name: ClassVar[str] = "StableDiffusion3Pipeline"
    default_weighting_scheme: ClassVar[str] = "logit_normal"  # diffusers' SD3 DreamBooth LoRA script
    text_token_limits: ClassVar[dict[str, int]] = {"tokenizer_3": 256}  # encode_prompt's max_sequence_length
    @classmethod
    def pipeline_options(cls, model: str, options: dict[str, Any]) -> dict[str, Any]:
        if "text_encoder_3" in options:
            if options.pop("text_encoder_3") is not None:
                raise MapoBenchError("backend sd3: text_encoder_3 takes null (load without T5) or is left out")
            return {**super().pipeline_options(model, options), "text_encoder_3": None, "tokenizer_3": None}
        return super().pipeline_options(model, options)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "t5": self.pipeline.text_encoder_3 is not None}

    def default_size(self) -> int:
        return int(self.denoiser.config.sample_size) * int(self.pipeline.vae_scale_factor)

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> Conditioning:
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=list(captions), prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        """SD3's transformer takes the scheduler's timestep (sigma * 1000) as it is."""
        return denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=conditioning["encoder_hidden_states"],
                        pooled_projections=conditioning["pooled_projections"], return_dict=False)[0]
