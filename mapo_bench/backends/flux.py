"""FLUX.1 backend (FluxPipeline, FluxTransformer2DModel, rectified flow), LoRA recipes only on one GPU.

Text: CLIP-L pooled plus the T5 sequence (T5 is required). Latents are packed in 2x2 patches with image
ids for the rotary embedding; the transformer takes ``timestep = sigma`` (it multiplies by 1000 inside),
so ``predict`` divides the scheduler's timestep by 1000 (REFERENCE.md section 6). FLUX.1-dev is
guidance-distilled: the transformer gets ``guidance`` (diffusers' FLUX LoRA script trains with 3.5) in
training and the sampler's guidance when sampling; both are recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from mapo_bench.backends.base import Conditioning
from mapo_bench.backends.flow import FlowMatchingBackend
from mapo_bench.config import SamplerConfig
from mapo_bench.errors import MapoBenchError


class FluxBackend(FlowMatchingBackend):
    name: ClassVar[str] = "flux"
    default_model: ClassVar[str] = "black-forest-labs/FLUX.1-dev"
    default_resolution: ClassVar[int] = 1024
    # The FLUX.1-dev model card: 50 steps, guidance 3.5.
    default_sampler: ClassVar[SamplerConfig] = SamplerConfig(steps=50, guidance=3.5)
    pipeline_class_name: ClassVar[str] = "FluxPipeline"
    default_weighting_scheme: ClassVar[str] = "none"  # diffusers' FLUX DreamBooth LoRA script
    flow_options: ClassVar[tuple[str, ...]] = (*FlowMatchingBackend.flow_options, "guidance")
    default_training_guidance: ClassVar[float] = 3.5
    text_token_limits: ClassVar[dict[str, int]] = {"tokenizer_2": 512}  # encode_prompt's max_sequence_length (T5)

    def configure(self, guidance: float | None = None, **flow: Any) -> None:
        super().configure(**flow)
        self.training_guidance = self.default_training_guidance if guidance is None else float(guidance)

    @classmethod
    def check_model_folder(cls, folder: Path, model: str) -> dict[str, Any]:
        index = super().check_model_folder(folder, model)
        t5 = index.get("text_encoder_2")
        if not (isinstance(t5, list) and t5 and t5[0]) or not (folder / "text_encoder_2").is_dir():
            raise MapoBenchError(f"{model}: a FLUX model needs its T5 encoder (text_encoder_2) and this copy has "
                                 "none; download the full repository (T5 is not optional for FLUX)")
        return index

    def record(self) -> dict[str, Any]:
        info = {**super().record()}
        if self.denoiser.config.guidance_embeds:
            info["training_guidance"] = self.training_guidance
        return info

    @property
    def latent_scale(self) -> int:
        """Pixels per packed token side: the VAE's factor times the 2x2 patch."""
        return int(self.pipeline.vae_scale_factor) * 2

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: list[str], seeds: list[int], sampler: SamplerConfig) -> list[Any]:
        """Per-image packed noise from CPU generators (same seed, same noise in any batch); FLUX's own
        default size is fixed at 1024, so height and width are always passed."""
        from diffusers import FluxPipeline

        height = sampler.height or self.default_size()
        width = sampler.width or self.default_size()
        if height % self.latent_scale or width % self.latent_scale:
            raise MapoBenchError(f"flux: height and width must be multiples of {self.latent_scale}")
        channels = self.denoiser.config.in_channels // 4
        h, w = height // self.pipeline.vae_scale_factor, width // self.pipeline.vae_scale_factor
        noise = torch.cat([torch.randn((1, channels, h, w), generator=torch.Generator("cpu").manual_seed(int(s)))
                           for s in seeds])
        latents = FluxPipeline._pack_latents(noise, len(seeds), channels, h, w).to(self.device, self.dtype)
        out = self.pipeline(prompt=list(prompts), num_inference_steps=sampler.steps, guidance_scale=sampler.guidance,
                            height=height, width=width, latents=latents, output_type="pil")
        return list(out.images)

    # -- training -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> Conditioning:
        embeds, pooled, _ = self.pipeline.encode_prompt(prompt=list(captions), prompt_2=None, device=self.device,
                                                        num_images_per_prompt=1)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        """Pack, call with ``timestep = sigma`` (the scheduler's timestep / 1000), unpack."""
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        embeds = conditioning["encoder_hidden_states"]
        txt_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:  # the unwrapped module's config (a DDP wrapper has none)
            guidance = torch.full((b,), self.training_guidance, device=noisy.device, dtype=torch.float32)
        pred = denoiser(hidden_states=packed, timestep=timesteps / 1000.0, guidance=guidance,
                        pooled_projections=conditioning["pooled_projections"], encoder_hidden_states=embeds,
                        txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        scale = int(self.pipeline.vae_scale_factor)
        return FluxPipeline._unpack_latents(pred, h * scale, w * scale, scale)

    def lora_target_modules(self) -> list[str]:
        """diffusers' FLUX LoRA script: both streams' attention plus the feed-forwards."""
        return [*super().lora_target_modules(), "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
