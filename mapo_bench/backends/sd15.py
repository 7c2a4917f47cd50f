"""Stable Diffusion 1.5 backend (StableDiffusionPipeline, one text encoder); SDXL extends it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from mapo_bench.backends.base import Backend, Conditioning
from mapo_bench.config import SamplerConfig
from mapo_bench.dtypes import dtype_kwargs, resolve_dtype
from mapo_bench.errors import MapoBenchError
from mapo_bench.models import NON_PYTORCH_WEIGHTS, resolve_model, resolve_pipeline


class SD15Backend(Backend):
    name: ClassVar[str] = "sd15"
    default_model: ClassVar[str] = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    default_resolution: ClassVar[int] = 512
    default_sampler: ClassVar[SamplerConfig] = SamplerConfig(steps=25, guidance=7.5)
    pipeline_class_name: ClassVar[str] = "StableDiffusionPipeline"

    def __init__(self, pipeline: Any, model_id: str, device: str, dtype: torch.dtype) -> None:
        self.pipeline = pipeline
        self.model_id = model_id
        self.device = torch.device(device)
        self.dtype = dtype
        # A copy for training: sampling calls set_timesteps on the pipeline's own scheduler.
        self.noise_scheduler = self.training_scheduler(pipeline.scheduler.config)
        self.pipeline.set_progress_bar_config(disable=True)

    @staticmethod
    def training_scheduler(config: Any) -> Any:
        """The scheduler of the training noise process, from the pipeline's scheduler config (DDPM here)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(config)

    @classmethod
    def pipeline_kwargs(cls) -> dict[str, Any]:
        # The safety checker would black out Pick-Safety's rejected images; disabled and recorded.
        return {"safety_checker": None, "requires_safety_checker": False, "feature_extractor": None}

    @classmethod
    def load(cls, model: str, *, dtype: str = "float32", device: str = "cpu", vae: str | None = None,
             vae_dtype: str | None = None, **options: Any) -> SD15Backend:
        import diffusers

        cls.check_load_options(options)
        torch_dtype = resolve_dtype(dtype)
        skip = tuple(k for k, v in options.items() if v is None)  # components loaded as None (sd3: no T5)
        local = resolve_pipeline(model, ignore_patterns=NON_PYTORCH_WEIGHTS, skip_components=skip)
        cls.check_model_folder(Path(local), model)
        kwargs = cls.pipeline_kwargs()
        if vae:
            kwargs["vae"] = diffusers.AutoencoderKL.from_pretrained(
                str(resolve_model(vae)), **dtype_kwargs(resolve_dtype(vae_dtype or dtype)))
        pipeline_cls = getattr(diffusers, cls.pipeline_class_name)
        pipe = pipeline_cls.from_pretrained(str(local), **dtype_kwargs(torch_dtype), **kwargs, **options)
        pipe.to(device)
        return cls(pipe, model, device, torch_dtype)

    # ``from_pretrained`` keywords a recipe may pass (``backend_options``), besides a component set to null
    # (not loaded). Anything else is refused: ``custom_pipeline`` and the remote-code switch would import and
    # run Python files named by a config (docs/security.md).
    load_options: ClassVar[tuple[str, ...]] = ("variant",)

    @classmethod
    def check_load_options(cls, options: dict[str, Any]) -> None:
        unknown = sorted(k for k, v in options.items() if v is not None and k not in cls.load_options)
        if unknown:
            raise MapoBenchError(f"backend {cls.name}: backend_options {', '.join(unknown)} not accepted; valid: "
                                 f"{', '.join(cls.load_options)}, or a component set to null to skip loading it")

    @classmethod
    def check_model_folder(cls, folder: Path, model: str) -> dict[str, Any]:
        """One line, before any weight is read, when ``folder`` holds another family's pipeline (a toy
        model included) or no pipeline at all; returns its ``model_index.json``."""
        from mapo_bench.toy.model import PIPELINE_FILE

        index_file = folder / "model_index.json"
        if not index_file.is_file():
            hint = ("a toy model: pass --backend toy (or toy-flow)" if (folder / PIPELINE_FILE).is_file()
                    else f"pass the folder of a whole {cls.pipeline_class_name} (hub layout) or its hub id")
            raise MapoBenchError(f"{model}: not a diffusers pipeline folder (no model_index.json); {hint}")
        try:
            index = json.loads(index_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MapoBenchError(f"{index_file}: not valid JSON; restore the model folder") from None
        found = index.get("_class_name")
        if found and found != cls.pipeline_class_name:
            from mapo_bench.backends import backend_hint

            raise MapoBenchError(f"{model}: a {found}, not the {cls.pipeline_class_name} backend {cls.name!r} "
                                 f"loads; {backend_hint(found)}")
        return index

    def record(self) -> dict[str, Any]:
        """What a dataset or sample manifest records about this model."""
        return {"backend": self.name, "model_id": self.model_id, "dtype": str(self.dtype).replace("torch.", ""),
                "safety_checker": "disabled"}

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompts: list[str], seeds: list[int], sampler: SamplerConfig) -> list[Any]:
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        # Latents drawn on the CPU from per-image generators: the same seed gives the same noise
        # whatever the batch composition or device.
        height = sampler.height or self.default_size()
        width = sampler.width or self.default_size()
        latents = self._initial_latents(generators, height, width)
        out = self.pipeline(
            prompt=list(prompts), negative_prompt=[sampler.negative_prompt] * len(prompts) if sampler.negative_prompt else None,
            num_inference_steps=sampler.steps, guidance_scale=sampler.guidance, height=height, width=width,
            latents=latents, output_type="pil", **self.extra_call_kwargs(),
        )
        return list(out.images)

    def extra_call_kwargs(self) -> dict[str, Any]:
        return {}

    def default_size(self) -> int:
        return int(self.denoiser.config.sample_size) * int(self.pipeline.vae_scale_factor)

    def _initial_latents(self, generators: list[torch.Generator], height: int, width: int) -> torch.Tensor:
        channels = self.denoiser.config.in_channels
        scale = self.pipeline.vae_scale_factor
        shape = (1, channels, height // scale, width // scale)
        noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
        return noise.to(self.device, self.dtype)

    # -- training -------------------------------------------------------------------------------
    @property
    def vae(self) -> Any:
        return self.pipeline.vae

    def latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def latents_from_distribution(self, mean: torch.Tensor, std: torch.Tensor,
                                  generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device="cpu").to(mean.device)
        latents = mean.float() + std.float() * noise
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).to(self.dtype)

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> Conditioning:
        embeds, _ = self.pipeline.encode_prompt(list(captions), self.device, 1, False)
        return {"encoder_hidden_states": embeds}

    def predict(self, unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        return unet(noisy, timesteps, encoder_hidden_states=conditioning["encoder_hidden_states"]).sample
