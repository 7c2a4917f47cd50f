"""The train stage's config (``mapo-bench train``). Importable without torch.

Top-level keys mirror the CLI flags (--method, --dataset, --model, --backend, --out, --resume); the rest
are nested groups (data, lora, optim, cache, log). Defaults follow the official MaPO SDXL recipe where
one exists (REFERENCE.md section 3); recipes in recipes/train/ set the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mapo_bench.config import StrictModel
from mapo_bench.registry import BACKENDS, METHODS, suggest

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


class DataConfig(StrictModel):
    """Which pairs are read and how their images become training pixels."""

    split: str = "train"
    tie_policy: Literal["drop", "half", "random"] = "drop"
    """drop: remove ties; half: each time a tie is drawn its orientation is a fair coin (expected
    label 0.5); random: one orientation per tie, fixed from the seed."""
    label_noise: float = Field(0.0, ge=0.0, le=0.5)
    """Fraction of pairs whose preference is swapped (chosen from the seed once, like a noisy dataset)."""
    max_samples: int | None = Field(None, ge=1)
    resolution: int | None = Field(None, ge=8)
    """None = the backend's default (SDXL 1024, SD1.5 512, toy 32)."""
    crop: Literal["center", "random"] = "center"
    flip: bool = True
    """One horizontal flip with p = 0.5 shared by both images of a pair."""
    skip_bad_rows: bool = False
    """False: an undecodable image stops the run naming row and column; True: skip such rows and count them."""


class LoraSettings(StrictModel):
    """LoRA on the UNet (peft). Defaults: REFERENCE.md section 3 (rank 8, alpha = rank, gaussian init)."""

    enabled: bool = False
    rank: int = Field(8, ge=1)
    alpha: float | None = None
    """None = rank."""
    init: Literal["gaussian", "default"] = "gaussian"
    target_modules: list[str] | None = None
    """None = the backend's default (to_k, to_q, to_v, to_out.0)."""


class OptimConfig(StrictModel):
    name: Literal["adamw", "adafactor", "adamw8bit"] = "adamw"
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    """None = no clipping (the grad norm is still logged)."""
    lr_scheduler: str = "constant"
    warmup_steps: int = Field(0, ge=0)

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        if value not in LR_SCHEDULERS:
            raise ValueError(f"unknown lr_scheduler{suggest(value, list(LR_SCHEDULERS))}; valid: {', '.join(LR_SCHEDULERS)}")
        return value

    @model_validator(mode="after")
    def _warmup(self) -> OptimConfig:
        if self.lr_scheduler == "constant" and self.warmup_steps:
            raise ValueError("lr_scheduler 'constant' ignores warmup_steps; use 'constant_with_warmup'")
        return self


class CacheConfig(StrictModel):
    """Precomputed VAE latent distributions and text embeddings, reused across methods and seeds."""

    enabled: bool = True
    dir: Path | None = None
    """None = $MAPO_BENCH_CACHE/train-cache (default ~/.cache/mapo_bench/train-cache)."""


class LogConfig(StrictModel):
    every: int = Field(1, ge=1)
    """Write a train_log.jsonl row every this many optimizer steps."""
    tensorboard: bool = False
    wandb: bool = False
    progress: bool = True


class TrainConfig(StrictModel):
    """One fine-tuning run: method, model, data, optimizer, schedule, outputs."""

    method: str = "mapo"
    beta: float | None = Field(None, gt=0)
    """None = the method's default (MaPO 0.1, Diffusion-DPO 5000; SFT has none)."""
    snr_value: float = Field(0.5, gt=0)
    """MaPO's link constant s in g(m) = s*m / (exp(s*m) - 1)."""
    backend: str = "sdxl"
    model: str | None = None
    """Hub id or local path; None = the backend's default model."""
    vae: str | None = None
    """Optional VAE override (SDXL recipes: madebyollin/sdxl-vae-fp16-fix); always kept in float32."""
    dataset: str | None = None
    """Folder in the Pick-a-Pic layout (data/*.parquet), a parquet file, or a Hub dataset id."""
    out: Path | None = None
    resume: str | None = "latest"
    """'latest' (default) = continue from the newest checkpoint in <out>.partial if there is one, else
    start; a checkpoint folder path; or none/null = start over, discarding <out>.partial."""
    overwrite: bool = False

    data: DataConfig = DataConfig()
    lora: LoraSettings = LoraSettings()
    optim: OptimConfig = OptimConfig()
    cache: CacheConfig = CacheConfig()
    log: LogConfig = LogConfig()

    max_steps: int = Field(2000, ge=1)
    batch_size: int = Field(8, ge=1)
    """Pairs per process per micro-batch (the UNet sees 2 x batch_size images; SFT batch_size)."""
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights of the frozen parts (text encoders; UNet base under LoRA). A fully fine-tuned UNet trains in float32."""

    @field_validator("resume", mode="before")
    @classmethod
    def _resume(cls, value: object) -> object:
        return None if value is False or (isinstance(value, str) and value.lower() in ("none", "no", "")) else value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: object) -> object:
        return "no" if value is False else value  # YAML 1.1 reads a bare `no` as false

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        return METHODS.check(value)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return BACKENDS.check(value)

    @model_validator(mode="after")
    def _method_options(self) -> TrainConfig:
        if self.method == "sft" and self.beta is not None:
            raise ValueError("method 'sft' has no beta; remove it")
        return self

    def effective_resolution(self, default: int) -> int:
        return self.data.resolution or default


# Keys that do not change the trained weights: excluded from the hash that checkpoints and manifests record.
NON_RESULT_KEYS = {"out", "resume", "overwrite", "log", "checkpoint_every", "keep_last", "cache"}


def result_hash(cfg: TrainConfig) -> str:
    """Hash of everything that decides the trained weights (a resumed run must match it)."""
    from mapo_bench.config import config_hash

    return config_hash(cfg, exclude=NON_RESULT_KEYS)
