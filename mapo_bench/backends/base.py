"""The Backend interface: everything the builder, the training loop and the sampler need from a model.

A backend owns its family's knowledge: the denoiser it trains (``denoiser_name``: ``unet`` or
``transformer``) and its LoRA targets, the noise process (training timesteps, noising, the training
target, the severity grid), the denoiser call with its conditioning, and saving / loading fine-tunes in
the format the family's diffusers pipeline reads. The training loop and the measuring stages call only
these methods; nothing outside ``backends/`` imports a model class or calls a scheduler's noising method
(DESIGN.md section 3). LoRA and full fine-tuning are options of the loop, not backends.

The defaults here are the DDPM families' (SD1.5, SDXL, toy): integer timesteps, ``add_noise``, epsilon or
v targets, diffusers LoRA export with ``unet_lora_layers``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from mapo_bench.config import SamplerConfig

Conditioning = dict[str, torch.Tensor]


class Backend(ABC):
    """A loaded model of one family, with the operations every stage uses."""

    name: ClassVar[str]
    default_model: ClassVar[str]
    default_resolution: ClassVar[int]
    default_sampler: ClassVar[SamplerConfig] = SamplerConfig()

    denoiser_name: ClassVar[str] = "unet"  # the pipeline component that is fine-tuned
    lora_layers_argument: ClassVar[str] = "unet_lora_layers"  # its keyword in the pipeline's save_lora_weights

    model_id: str
    pipeline: Any
    noise_scheduler: Any  # a diffusers DDPMScheduler with the model's training config
    device: torch.device
    dtype: torch.dtype

    @property
    def denoiser(self) -> torch.nn.Module:
        """The module that is trained (the UNet of SD families, the transformer of flow families)."""
        return getattr(self.pipeline, self.denoiser_name)

    def set_denoiser(self, module: torch.nn.Module) -> None:
        """Put a fine-tuned denoiser into the pipeline (sampling a full fine-tune)."""
        setattr(self.pipeline, self.denoiser_name, module)

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
    def predict(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        """One denoiser call: the model prediction (epsilon, v or velocity) for ``noisy`` at ``timesteps``."""

    # -- the noise process --------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        """T of the training schedule (MaPO's margin scale, the severity grid's range)."""
        return int(self.noise_scheduler.config.num_train_timesteps)

    def training_noise(self, x0: torch.Tensor, pairs: int, generator: torch.Generator,
                       shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, timesteps) of one training micro-batch: one timestep and one noise per pair, shared by its
        chosen and rejected images when ``shared`` (REFERENCE.md 2). DDPM: integer t uniform in [0, T)."""
        t = torch.randint(0, self.num_train_timesteps, (pairs,), generator=generator)
        noise = torch.randn((pairs, *x0.shape[1:]), generator=generator, dtype=torch.float32)
        if shared:
            t, noise = t.repeat(2), noise.repeat(2, 1, 1, 1)
        return noise.to(x0.device), t.to(x0.device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noisy input at ``timesteps`` (DDPM: sqrt(abar) x0 + sqrt(1 - abar) noise)."""
        return self.noise_scheduler.add_noise(x0, noise, timesteps)

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Optional per-sample weights of the errors at ``timesteps``, applied before the method's loss;
        None: unweighted (the DDPM families; the flow families' weighting scheme, "none" by default)."""
        return None

    def severity_timesteps(self, count: int) -> list[int]:
        """The fixed grid of the severity measures: ``count`` timesteps evenly spaced in (0, T)."""
        return [int((k + 0.5) * self.num_train_timesteps / count) for k in range(count)]

    def timestep_tensor(self, value: Any, batch: int, device: Any) -> torch.Tensor:
        """A grid value of ``severity_timesteps`` as the batch's timestep tensor."""
        return torch.full((batch,), value, dtype=torch.long, device=device)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What ``predict`` is trained to output: the noise (epsilon) or v = get_velocity(x0, noise, t)."""
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {kind!r}")

    # Tokenizer component -> the token length the pipeline encodes at, where it is not the tokenizer's own
    # model_max_length (the T5 of SD3 and FLUX: encode_prompt's max_sequence_length default).
    text_token_limits: ClassVar[dict[str, int]] = {}

    def truncated_captions(self, captions: list[str]) -> int:
        """How many ``captions`` are longer than a text encoder reads (it then sees only their first tokens).

        Counted per tokenizer of the pipeline (``tokenizer``, ``tokenizer_2``, ``tokenizer_3``), special
        tokens included, against the length the pipeline encodes at; a caption counts once.
        """
        over: set[int] = set()
        for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            tokenizer = getattr(self.pipeline, name, None)
            if tokenizer is None or not captions:
                continue
            limit = self.text_token_limits.get(name, tokenizer.model_max_length)
            ids = tokenizer(list(captions), truncation=False, verbose=False)["input_ids"]
            over.update(i for i, row in enumerate(ids) if len(row) > limit)
        return len(over)

    def offload_text_encoders(self) -> list[str]:
        """Move the text encoders to the CPU once every caption's embeddings are cached: training then never
        calls them (SD3.5's T5-XXL is about 9.5 GB in bf16 that need not stay on the GPU). Returns the names
        moved; nothing moves on a CPU run or for a family whose encoders are not pipeline components."""
        moved = []
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(self.pipeline, name, None)
            if isinstance(module, torch.nn.Module):
                first = next(module.parameters(), None)
                if first is not None and first.device.type != "cpu":
                    module.to("cpu")
                    moved.append(name)
        if moved and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return moved

    # -- output ---------------------------------------------------------------------------------
    def save_denoiser(self, denoiser: torch.nn.Module, folder: str,
                      state: dict[str, torch.Tensor] | None = None) -> None:
        """Save a fully fine-tuned denoiser so this family's pipeline loads it (diffusers layout); ``state``:
        its whole weights when the module itself holds a shard (``training.gather``)."""
        save_diffusers_model(denoiser, folder, state)

    def load_denoiser(self, folder: str) -> torch.nn.Module:
        """A fine-tuned denoiser saved by ``save_denoiser`` (``folder`` or ``folder/<denoiser_name>``), or a
        hub id of a denoiser-only repository (MaPO's released UNets, ``mapo-t2i/mapo-beta``), resolved like
        every model id (a local copy, ``$MAPO_BENCH_MODEL_ROOT/<id>``, the hub; offline: one line)."""
        from pathlib import Path

        from mapo_bench.dtypes import dtype_kwargs
        from mapo_bench.errors import MapoBenchError
        from mapo_bench.models import HUB_ID, NON_PYTORCH_WEIGHTS, resolve_model

        path = Path(folder).expanduser()
        name = self.denoiser_name
        if not path.exists() and HUB_ID.fullmatch(folder):  # owner/name, not a folder here: a hub repository
            path = resolve_model(folder, ignore_patterns=NON_PYTORCH_WEIGHTS)
        if not path.is_dir():
            raise MapoBenchError(f"{name}: {path} is not a folder; pass the {name} folder written by `mapo-bench train` "
                                 "or a hub id")
        subfolder = name if (path / name / "config.json").is_file() else None
        if not (path / (subfolder or "") / "config.json").is_file():
            raise MapoBenchError(f"{name}: {path} holds no config.json (a diffusers {name} folder is expected)")
        module = type(self.denoiser).from_pretrained(str(path), subfolder=subfolder, **dtype_kwargs(self.dtype))
        return module.to(self.device)

    def save_lora(self, denoiser: torch.nn.Module, folder: str, state: dict[str, torch.Tensor] | None = None) -> Any:
        """Save the denoiser's peft LoRA as ``pytorch_lora_weights.safetensors`` in the layout the family's
        pipeline ``load_lora_weights`` reads (its ``save_lora_weights`` with ``lora_layers_argument``);
        ``state``: the whole LoRA tensors when the module itself holds a shard."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        from mapo_bench.errors import MapoBenchError

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser, state_dict=state))
        pipeline_cls = type(self.pipeline)
        if not hasattr(pipeline_cls, "save_lora_weights"):
            raise MapoBenchError(f"backend {self.name!r}: its pipeline {pipeline_cls.__name__} cannot save LoRA "
                                 "weights; train with lora.enabled=false")
        pipeline_cls.save_lora_weights(save_directory=str(folder), safe_serialization=True,
                                       **{self.lora_layers_argument: layers})
        return folder

    def lora_target_modules(self) -> list[str]:
        """Module names LoRA adapts by default (REFERENCE.md section 3)."""
        return ["to_k", "to_q", "to_v", "to_out.0"]


def concat_conditioning(first: Conditioning, second: Conditioning) -> Conditioning:
    """Two batches' conditioning joined over the batch dim (instance images, then a prior stream's)."""
    if set(first) != set(second):
        raise ValueError(f"conditioning keys differ: {sorted(first)} vs {sorted(second)}")
    return {k: torch.cat([first[k], second[k].to(first[k].device)], dim=0) for k in first}


def repeat_conditioning(cond: Conditioning, times: int) -> Conditioning:
    """Stack conditioning ``times`` over the batch dim: the chosen and rejected halves share a caption."""
    return {k: torch.cat([v] * times, dim=0) for k, v in cond.items()}


def save_diffusers_model(model: torch.nn.Module, folder: str, state: dict[str, torch.Tensor] | None = None) -> None:
    """What ``model.save_pretrained(folder)`` writes, its config and weights (``diffusion_pytorch_model
    .safetensors``, sharded above 10 GB with diffusers' index file), the weights taken from ``state`` when
    given (whole tensors of a sharded model), else from the model: one writer for both."""
    from huggingface_hub import save_torch_state_dict

    model.save_config(folder)
    save_torch_state_dict(model.state_dict() if state is None else state, folder,
                          filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size="10GB")
