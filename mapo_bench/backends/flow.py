"""Flow-matching families (SD3 / SD3.5, FLUX.1): the rectified-flow noise process of diffusers' training
scripts, shared by ``sd3`` and ``flux`` (REFERENCE.md section 6).

- Training sigmas: ``diffusers.training_utils.compute_density_for_timestep_sampling`` (the family's
  ``weighting_scheme``: SD3 "logit_normal", FLUX "none" = uniform, as in diffusers' DreamBooth LoRA
  scripts), mapped through the scheduler's timestep table (``FlowMatchEulerDiscreteScheduler``: its
  ``timesteps`` are ``sigmas * T``, with the model's shift). A timestep here is always sigma * T, as in
  the scheduler; each family's ``predict`` converts it to what its transformer takes.
- Noising ``x_t = (1 - sigma) x0 + sigma noise`` (the scheduler's ``scale_noise``), target ``noise - x0``.
- Optional per-sample loss weights: ``compute_loss_weighting_for_sd3`` with ``loss_weighting``
  ("none" by default: the preference losses then see plain velocity errors).
- Severity grid: sigmas evenly spaced in (0, 1).

``FlowNoiseProcess`` holds these, so a family that is not a diffusers SD-style pipeline (the ``toy-flow``
backend) takes the same noise process.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mapo_bench.backends.sd15 import SD15Backend
from mapo_bench.errors import MapoBenchError

WEIGHTING_SCHEMES = ("logit_normal", "mode", "none", "uniform")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")


class FlowNoiseProcess:
    """The rectified-flow noise process, mixed into a backend before its family class (``sd3``, ``flux``,
    ``toy-flow``): training sigmas, noising, the velocity target, optional loss weights, the severity grid.
    The host sets ``noise_scheduler`` (a ``FlowMatchEulerDiscreteScheduler``) and calls ``configure``."""

    default_weighting_scheme: ClassVar[str] = "logit_normal"
    # The options a recipe may set (``backend_options``), beside those of the family's own loading.
    flow_options: ClassVar[tuple[str, ...]] = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale",
                                               "loss_weighting")
    noise_scheduler: Any
    num_train_timesteps: int

    @classmethod
    def split_flow_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Remove and return the flow options among a backend's load options."""
        return {k: options.pop(k) for k in cls.flow_options if k in options}

    def configure(self, weighting_scheme: str | None = None, logit_mean: float = 0.0, logit_std: float = 1.0,
                  mode_scale: float = 1.29, loss_weighting: str = "none") -> None:
        scheme = weighting_scheme or self.default_weighting_scheme
        if scheme not in WEIGHTING_SCHEMES:
            raise MapoBenchError(f"weighting_scheme {scheme!r}; valid: {', '.join(WEIGHTING_SCHEMES)}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise MapoBenchError(f"loss_weighting {loss_weighting!r}; valid: {', '.join(LOSS_WEIGHTINGS)}")
        self.weighting_scheme, self.loss_weighting = scheme, loss_weighting
        self.logit_mean, self.logit_std, self.mode_scale = float(logit_mean), float(logit_std), float(mode_scale)

    def flow_record(self) -> dict[str, Any]:
        return {"weighting_scheme": self.weighting_scheme, "loss_weighting": self.loss_weighting,
                "shift": "dynamic (none in training)" if self.noise_scheduler.config.get("use_dynamic_shifting")
                else float(self.noise_scheduler.config.get("shift", 1.0))}

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """sigma = timestep / T (the scheduler's table is ``timesteps = sigmas * T``)."""
        return timesteps.float() / self.num_train_timesteps

    def training_noise(self, x0: torch.Tensor, pairs: int, generator: torch.Generator,
                       shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = "none" if self.weighting_scheme == "uniform" else self.weighting_scheme
        u = compute_density_for_timestep_sampling(scheme, pairs, logit_mean=self.logit_mean, logit_std=self.logit_std,
                                                  mode_scale=self.mode_scale, generator=generator)
        table = self.noise_scheduler.timesteps
        indices = (u * len(table)).long().clamp(0, len(table) - 1)
        t = table[indices].float()
        noise = torch.randn((pairs, *x0.shape[1:]), generator=generator, dtype=torch.float32)
        if shared:
            t, noise = t.repeat(2), noise.repeat(2, 1, 1, 1)
        return noise.to(x0.device), t.to(x0.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas(timesteps).to(x0.device).view(-1, *([1] * (x0.ndim - 1)))
        return ((1.0 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The flow velocity ``noise - x0``."""
        return noise.float() - x0.float()

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        if self.loss_weighting == "none":
            return None
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.loss_weighting, self.sigmas(timesteps)).float()

    def severity_timesteps(self, count: int) -> list[float]:
        """sigma_k = (k + 0.5) / count, as timesteps sigma * T."""
        return [(k + 0.5) / count * self.num_train_timesteps for k in range(count)]

    def timestep_tensor(self, value: Any, batch: int, device: Any) -> torch.Tensor:
        return torch.full((batch,), float(value), dtype=torch.float32, device=device)


class FlowMatchingBackend(FlowNoiseProcess, SD15Backend):
    """A diffusers flow-matching pipeline: VAE latents as in SD (with the VAE's shift), rectified flow."""

    denoiser_name: ClassVar[str] = "transformer"
    lora_layers_argument: ClassVar[str] = "transformer_lora_layers"

    def __init__(self, pipeline: Any, model_id: str, device: str, dtype: torch.dtype) -> None:
        super().__init__(pipeline, model_id, device, dtype)
        self.configure()  # the family's defaults; load() passes the recipe's options

    @staticmethod
    def training_scheduler(config: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(config)

    @classmethod
    def pipeline_kwargs(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def load(cls, model: str, *, dtype: str = "float32", device: str = "cpu", vae: str | None = None,
             vae_dtype: str | None = None, **options: Any) -> FlowMatchingBackend:
        flow = cls.split_flow_options(options)
        backend = super().load(model, dtype=dtype, device=device, vae=vae, vae_dtype=vae_dtype,
                               **cls.pipeline_options(model, options))
        backend.configure(**flow)
        return backend

    @classmethod
    def pipeline_options(cls, model: str, options: dict[str, Any]) -> dict[str, Any]:
        """Backend options -> ``from_pretrained`` keywords (a family checks its own here)."""
        if options:
            raise MapoBenchError(f"backend {cls.name}: unknown option(s) {', '.join(sorted(options))}; valid: "
                                 f"{', '.join(cls.flow_options)}")
        return {}

    def record(self) -> dict[str, Any]:
        return {"backend": self.name, "model_id": self.model_id, "dtype": str(self.dtype).replace("torch.", ""),
                **self.flow_record()}

    # -- generation -----------------------------------------------------------------------------
    def default_size(self) -> int:
        return self.default_resolution

    def lora_target_modules(self) -> list[str]:
        """diffusers' SD3 / FLUX LoRA scripts: the joint attention's projections of both streams."""
        return ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
                "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out"]
