"""The toy backend: the embedded 32 px model (``mapo_bench.toy``), the default on a CPU.

Same contract as the SD backends; differences: the "VAE" is the fixed lossless
``pixel_unshuffle(2)`` (deterministic, std 0), the conditioning also carries ``class_labels`` (pooled
text + bag of words on the UNet's global path), and the model predicts v. Only the UNet is
fine-tuned; the jointly pretrained text encoder is part of the frozen conditioning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from mapo_bench.backends.base import Backend, Conditioning
from mapo_bench.config import SamplerConfig
from mapo_bench.dtypes import resolve_dtype
from mapo_bench.errors import MapoBenchError


class ToyBackend(Backend):
    name: ClassVar[str] = "toy"
    default_model: ClassVar[str] = "toy"
    default_resolution: ClassVar[int] = 32
    # TOY_NOTES.md: DDIM 15 steps with trailing spacing (set in the scheduler config), guidance 2.
    default_sampler: ClassVar[SamplerConfig] = SamplerConfig(steps=15, guidance=2.0)
    objective: ClassVar[str] = "v"  # what the base's UNet predicts (toy/model.py OBJECTIVES)

    def __init__(self, pipeline: Any, model_id: str, device: str, dtype: torch.dtype,
                 manifest: dict[str, Any] | None, base_folder: Path, extras: dict[str, str]) -> None:
        self.pipeline = pipeline
        self.model_id = model_id
        self.device = torch.device(device)
        self.dtype = dtype
        self.text_encoder = pipeline.text_encoder.requires_grad_(False)
        self.noise_scheduler = self.training_scheduler(pipeline.scheduler.config)
        self.toy_manifest = manifest
        self.base_folder = base_folder
        self.extras = extras

    @staticmethod
    def training_scheduler(config: Any) -> Any:
        """The DDPM scheduler of the base's training schedule (the saved one is DDIM, for sampling)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config({k: v for k, v in config.items() if k != "timestep_spacing"})

    @classmethod
    def load(cls, model: str | None = None, *, dtype: str = "float32", device: str = "cpu", unet: str | None = None,
             lora: str | None = None, **options: Any) -> ToyBackend:
        """``model``: ``toy`` (shipped), a toy pipeline folder, or a folder holding only a fine-tuned
        ``unet/`` or LoRA weights (applied over the shipped base). ``unet`` / ``lora``: explicit overrides."""
        from mapo_bench.toy.model import LORA_FILES, PIPELINE_FILE, ToyPipeline
        from mapo_bench.toy.shipped import read_manifest, resolve_toy_model

        if options:
            raise MapoBenchError(f"{cls.name} backend: unknown load options {', '.join(sorted(options))}; "
                                 "valid: dtype, device, unet, lora")
        model = model or cls.default_model
        folder = resolve_toy_model(model)
        if not (folder / PIPELINE_FILE).is_file():
            if (folder / "model_index.json").is_file():
                from mapo_bench.backends import backend_hint
                from mapo_bench.io import read_json

                found = read_json(folder / "model_index.json").get("_class_name")
                raise MapoBenchError(f"{folder}: a {found or 'diffusers pipeline'}, not a toy model; {backend_hint(found)}")
            if unet is None and ((folder / "config.json").is_file() or (folder / "unet" / "config.json").is_file()):
                unet = str(folder)
            elif lora is None and (folder.is_file() or any((folder / n).is_file() for n in LORA_FILES)):
                lora = str(folder)
            else:
                raise MapoBenchError(f"{folder}: not a toy model (no {PIPELINE_FILE}, unet/ or LoRA weights); "
                                     "use --model toy or a folder written by mapo-bench toy pretrain")
            folder = resolve_toy_model(cls.default_model)
        torch_dtype = resolve_dtype(dtype)
        pipe = ToyPipeline.from_pretrained(folder, unet=unet, lora=lora, torch_dtype=torch_dtype, device=device)
        if pipe.objective != cls.objective:
            raise MapoBenchError(f"{folder}: a toy base trained with the {pipe.objective!r} objective; "
                                 f"use --backend {'toy-flow' if pipe.objective == 'flow' else 'toy'} for it")
        extras = {k: str(v) for k, v in (("unet", unet), ("lora", lora)) if v is not None}
        return cls(pipe, str(model), device, torch_dtype, read_manifest(folder), folder, extras)

    def record(self) -> dict[str, Any]:
        """What a dataset or sample manifest records about this model (incl. the gate status)."""
        manifest = self.toy_manifest or {}
        verdict = manifest.get("gate_verdict") or {}
        return {"backend": self.name, "model_id": self.model_id, "dtype": str(self.dtype).replace("torch.", ""),
                "toy_config_hash": manifest.get("config_hash"),
                "gate": "gated" if verdict.get("status") == "passed" else "ungated",
                "gate_status": verdict.get("status", "unmeasured"), "gate_failures": verdict.get("failures", []),
                **self.extras}

    def check_gate(self) -> dict[str, Any]:
        """Raise MapoBenchError when this base failed its gate (see ``mapo_bench.toy.gate.check_gate``)."""
        from mapo_bench.toy.gate import check_gate

        return check_gate(self)

    # -- generation -----------------------------------------------------------------------------
    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """Per-image noise from CPU generators: the same seed gives the same noise in any batch."""
        from mapo_bench.toy.model import FACTOR, IMAGE_SIZE

        shape = (1, 3 * FACTOR * FACTOR, IMAGE_SIZE // FACTOR, IMAGE_SIZE // FACTOR)
        return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])

    def generate(self, prompts: list[str], seeds: list[int], sampler: SamplerConfig) -> list[Any]:
        if len(prompts) != len(seeds):
            raise MapoBenchError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        if not prompts:
            return []
        out = self.pipeline(list(prompts), negative_prompt=sampler.negative_prompt, num_inference_steps=sampler.steps,
                            guidance_scale=sampler.guidance, height=sampler.height, width=sampler.width,
                            latents=self.initial_noise(seeds))
        return list(out.images)

    # -- training -------------------------------------------------------------------------------
    def latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The toy "VAE" is the fixed lossless pixel_unshuffle(2): mean = the latent, std = 0."""
        from mapo_bench.toy.model import pixels_to_latents

        mean = pixels_to_latents(pixels.to(self.device, torch.float32))
        return mean, torch.zeros_like(mean)

    def latents_from_distribution(self, mean: torch.Tensor, std: torch.Tensor,
                                  generator: torch.Generator | None) -> torch.Tensor:
        # std is 0: the latent is the mean (no draw, so ``generator`` is left untouched).
        return mean.to(self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1, 1] (exact inverse of ``encode_images``)."""
        from mapo_bench.toy.model import latents_to_pixels

        return latents_to_pixels(latents)

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> Conditioning:
        return self.pipeline.encode_prompt(list(captions))

    def truncated_captions(self, captions: list[str]) -> int:
        """Captions longer than the toy text encoder's ``max_length`` tokens."""
        tokenizer = self.pipeline.tokenizer
        return sum(count > tokenizer.max_length for count in tokenizer.token_counts(list(captions)))

    def predict(self, unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        from mapo_bench.toy.model import unet_forward

        return unet_forward(unet, noisy, timesteps, conditioning)

    # -- output ---------------------------------------------------------------------------------
    def save_lora(self, denoiser: torch.nn.Module, folder: str, state: dict[str, torch.Tensor] | None = None) -> Path:
        """peft LoRA weights as ``pytorch_lora_weights.safetensors``; load back with ``lora=``."""
        from mapo_bench.toy.model import save_lora

        return save_lora(denoiser, folder, state)
