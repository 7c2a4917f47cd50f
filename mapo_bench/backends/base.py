"""The Backend interface: everything the builder, the training loop and the sampler need from a model.

The training loop sees only ``encode_images``, ``encode_prompts``, ``predict``, ``noise_scheduler`` and
``target`` (DESIGN.md section 3). LoRA and full fine-tuning are options of the loop, not backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from mapo_bench.config import SamplerConfig

Conditioning = dict[str, torch.Tensor]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        from mapo_bench.errors import MapoBenchError

        raise MapoBenchError(f"unknown dtype {dtype!r}; valid: {', '.join(table)}")
    return table[dtype]


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained`` dtype keyword: diffusers >= 0.42 names it ``dtype`` (``torch_dtype`` is deprecated)."""
    from importlib.metadata import version

    from packaging.version import Version

    return {"dtype": dtype} if Version(version("diffusers")) >= Version("0.42") else {"torch_dtype": dtype}


class Backend(ABC):
    """A loaded model of one family, with the operations every stage uses."""

    name: ClassVar[str]
    default_model: ClassVar[str]
    default_resolution: ClassVar[int]
    default_sampler: ClassVar[SamplerConfig] = SamplerConfig()

    model_id: str
    pipeline: Any
    unet: torch.nn.Module
    noise_scheduler: Any  # a diffusers DDPMScheduler with the model's training config
    device: torch.device
    dtype: torch.dtype

    @classmethod
    @abstractmethod
    def load(cls, model: str, *, dtype: str = "float32", device: str = "cpu", **options: Any) -> Backend:
        """Resolve ``model`` (hub id or path) and load it; a missing model is a one-line error."""

    # -- generation -----------------------------------------------------------------------------
    @abstractmethod
    def generate(self, prompts: list[str], seeds: list[int], sampler: SamplerConfig) -> list[Any]:
        """One PIL image per prompt; image i starts from noise seeded by ``seeds[i]`` alone, so two
        prompts with the same seed share their initial noise."""

    # -- training -------------------------------------------------------------------------------
    @abstractmethod
    def latent_distribution(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` pixels in [-1, 1] -> (mean, std) of the unscaled latent distribution."""

    @abstractmethod
    def latents_from_distribution(self, mean: torch.Tensor, std: torch.Tensor,
                                  generator: torch.Generator | None) -> torch.Tensor:
        """Sample scaled latents from a (cached or fresh) distribution with ``generator``."""

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> scaled latents the UNet is trained on."""
        mean, std = self.latent_distribution(pixels)
        return self.latents_from_distribution(mean, std, generator)

    @abstractmethod
    def encode_prompts(self, captions: list[str]) -> Conditioning:
        """Captions -> the conditioning tensors ``predict`` takes (batch dimension first)."""

    def image_conditioning(self, original_sizes: list[tuple[int, int]], crops: list[tuple[int, int]],
                           target_size: tuple[int, int]) -> Conditioning:
        """Per-sample image conditioning (SDXL micro-conditioning); none for other families."""
        return {}

    @abstractmethod
    def predict(self, unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        """One UNet call: the model prediction (epsilon or v) for ``noisy`` at ``timesteps``."""

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What ``predict`` is trained to output: the noise (epsilon) or v = get_velocity(x0, noise, t)."""
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {kind!r}")

    # -- output ---------------------------------------------------------------------------------
    @abstractmethod
    def save_unet(self, unet: torch.nn.Module, folder: str) -> None:
        """Save a fully fine-tuned UNet so this family's pipeline loads it (diffusers layout)."""

    def save_lora(self, unet: torch.nn.Module, folder: str) -> Any:
        """Optional: save LoRA weights in this family's own format. None means "use the pipeline's
        ``save_lora_weights``" (diffusers families); the toy backend overrides it."""
        return None

    def lora_target_modules(self) -> list[str]:
        """Module names LoRA adapts by default (REFERENCE.md section 3)."""
        return ["to_k", "to_q", "to_v", "to_out.0"]


def repeat_conditioning(cond: Conditioning, times: int) -> Conditioning:
    """Stack conditioning ``times`` over the batch dim: the chosen and rejected halves share a caption."""
    return {k: torch.cat([v] * times, dim=0) for k, v in cond.items()}
