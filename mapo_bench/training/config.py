"""The train stage's config (``mapo-bench train``). Importable without torch.

Top-level keys mirror the CLI flags (--method, --dataset, --model, --backend, --out, --resume); the rest
are nested groups (data, lora, optim, cache, log) and the method's own options under the method's name
(``mapo: {beta: 0.1}``; their model lives with the method, in ``mapo_bench/methods.py``). Defaults follow the official MaPO SDXL recipe where
one exists (REFERENCE.md section 3); recipes in recipes/train/ set the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from mapo_bench.config import Seed, StrictModel
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
    implementation: Literal["auto", "for-loop", "foreach", "fused"] = "auto"
    """AdamW's kernel (torch.optim.AdamW foreach / fused): "auto" = torch's choice; "fused" one kernel per
    step over all parameters (a cost lever; the same update up to rounding). adamw only."""

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
    options: dict[str, Any] = Field(default_factory=dict)
    """The method's options, written under the method's name (``dpo: {beta: 5000}``) and validated by the
    method's own options model; unset keys take its defaults (MaPO beta 0.1, snr_value 0.5; DPO beta 5000)."""
    backend: str = "sdxl"
    model: str | None = None
    """Hub id or local path; None = the backend's default model."""
    vae: str | None = None
    """Optional VAE override (SDXL recipes: madebyollin/sdxl-vae-fp16-fix); always kept in float32."""
    backend_options: dict[str, Any] = Field(default_factory=dict, description="options of the backend's load (e.g. sd3: {text_encoder_3: null}; flux: {guidance: 3.5}; flow families: weighting_scheme, loss_weighting)")
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
    seed: Seed = 0
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights of the frozen parts (text encoders; UNet base under LoRA). A fully fine-tuned UNet trains in float32."""
    reference_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The frozen reference copy of a full-fine-tune DPO (a cost lever: bfloat16 halves its memory). "auto" =
    the mixed-precision dtype (float32 without). Its per-sample errors are still computed in float32; the
    rounding of its weights moves the DPO loss at initialisation away from log 2 (docs/performance.md)."""
    compile_denoiser: bool = False
    """torch.compile the trained denoiser (a cost lever for GPUs; slow to start on a CPU)."""

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

    @model_validator(mode="before")
    @classmethod
    def _options_under_the_method_name(cls, data: Any) -> Any:
        """Move ``<method>: {...}`` into ``options``, validated by the method's own options model (also runs
        on assignment, where ``options`` is already the validated dict)."""
        from pydantic import ValidationError

        if not isinstance(data, dict):
            return data
        data = dict(data)
        method = data.get("method", "mapo")
        for old in RENAMED_OPTIONS:
            if old in data:
                raise ValueError(f"top-level {old!r} is no longer read: write it under the method's name, "
                                 f"{method}.{old} (e.g. `{method}: {{{old}: {data[old]}}}`)")
        if not isinstance(method, str) or method not in METHODS.names():
            return data  # the method field's own validator names the problem
        others = sorted(name for name in METHODS.names() if name != method and name in data)
        if others:
            raise ValueError(f"options for method {others[0]!r} given, but method is {method!r}")
        given = data.pop(method, None) or {}
        if "options" in data and given:
            raise ValueError(f"write the method's options under its name ({method}: {{...}}) only")
        entry = METHODS.get(method)
        try:
            data["options"] = entry.options.model_validate(data.get("options") or given).model_dump()
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in (method, *first["loc"]))
            raise ValueError(f"{where}: {first['msg']} (valid keys: "
                             f"{', '.join(entry.options.model_fields) or 'none'})") from None
        return data

    @model_serializer(mode="wrap")
    def _options_dumped_under_the_method_name(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if "options" in data:
            data[self.method] = data.pop("options")
        return data

    def method_options(self) -> Any:
        """The method's options as its own model (``METHODS.get(method).options``)."""
        return METHODS.get(self.method).options.model_validate(self.options)

    def effective_resolution(self, default: int) -> int:
        return self.data.resolution or default


RENAMED_OPTIONS = ("beta", "snr_value")  # were top-level keys; now under the method's name

# Keys that do not change the trained weights: excluded from the hash that checkpoints and manifests record.
NON_RESULT_KEYS = {"out", "resume", "overwrite", "log", "checkpoint_every", "keep_last", "cache"}


def result_hash(cfg: TrainConfig) -> str:
    """Hash of everything that decides the trained weights (a resumed run must match it)."""
    from mapo_bench.config import config_hash

    return config_hash(cfg, exclude=NON_RESULT_KEYS)
