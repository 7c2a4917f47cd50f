"""Configs of the ``sample`` and ``eval`` stages (importable without torch).

``SampleConfig``: which model makes the evaluation images, on which prompts, seeds and sampler, so that
every model is sampled identically and images can be compared pairwise (REFERENCE.md section 5).
``EvalConfig``: which metrics score which sample folders, with per-metric model overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from mapo_bench.config import SamplerConfig, Seed, StrictModel

HPS_VERSIONS = ("v2.1", "v2.0")


class SampleConfig(StrictModel):
    """``mapo-bench sample``: images of ``num_prompts`` prompts x ``seeds`` from one model."""

    model: str | None = None  # hub id or local path; None = the backend's default model
    backend: str = "sdxl"  # a registered backend (checked against the registry)
    backend_options: dict[str, Any] = Field(default_factory=dict, description="options of the backend's load (e.g. sd3: {text_encoder_3: null}; flux: {guidance: 3.5}; flow families: weighting_scheme, loss_weighting)")
    unet: str | None = None  # fine-tuned denoiser (UNet or transformer) folder, or a hub id of a denoiser-only repository, swapped into the pipeline
    lora: Path | None = None  # LoRA folder loaded with pipe.load_lora_weights
    prompts: str = "builtin:test"  # a source for mapo_bench.data.prompts (builtin:test, toy:test, files, hf://)
    num_prompts: int | None = Field(default=None, ge=1)  # None = every prompt of the source
    prompt_seed: Seed = 0  # which num_prompts prompts are drawn (same for every model)
    seeds: list[Seed] = Field(default_factory=lambda: [0])
    prompt_prefix: str | None = None  # prompt the model with this prefix; the index keeps the plain prompt
    sampler: SamplerConfig | None = None  # None = the backend's default sampler
    batch_size: int = Field(default=4, ge=1)
    model_name: str | None = None  # label stored in the index; default derived from unet / lora / model
    out: Path = Path("samples/base")
    dtype: str = "float32"
    device: str | None = None  # None = cuda when available (per accelerate process), else cpu
    overwrite: bool = False  # replace a folder that holds samples of a different config

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        from mapo_bench.registry import BACKENDS

        return BACKENDS.check(value)

    @field_validator("unet", mode="before")
    @classmethod
    def _unet_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value  # a folder as a Path, or a hub id

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one seed, e.g. seeds: [0, 1]")
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {value}")
        return value

    def derived_model_name(self) -> str:
        """The index label: ``model_name``, else the fine-tune folder name, else the model's name."""
        if self.model_name:
            return self.model_name
        for folder in (self.unet, self.lora):
            if folder is not None:
                path = Path(folder)
                return path.parent.name if path.name in ("unet", "transformer", "lora", "") and path.parent.name \
                    else path.name
        if self.model:
            return Path(self.model.rstrip("/")).name
        return f"{self.backend}-base"


class EvalConfig(StrictModel):
    """``mapo-bench eval``: score the images of sample folders with registry metrics."""

    metrics: list[str] = Field(default_factory=lambda: ["pickscore"])
    images: list[Path] = Field(default_factory=list)  # sample folders written by `mapo-bench sample`
    out: Path = Path("scores/run")
    batch_size: int = Field(default=8, ge=1)
    device: str | None = None  # None = cuda when available, else cpu
    dtype: str = "float32"
    task: str | None = None  # recorded; style texts below
    target_style: str | None = None  # style / toy-style: the text (or toy style) the task aligns toward
    base_style: str | None = None  # ... and the one it aligns away from
    subject_images: Path | None = None  # clip-i / dino / toy-subject: the subject's images (imagefolder)
    hps_version: Literal["v2.1", "v2.0"] = "v2.1"
    models: dict[str, str] = Field(default_factory=dict)  # metric -> hub id / local path of its weights
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # metric -> extra load options
    overwrite: bool = False  # recompute even when a matching manifest exists

    @field_validator("metrics", mode="before")
    @classmethod
    def _split_metrics(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from mapo_bench.registry import EVALUATORS

        if not value:
            raise ValueError(f"give at least one metric; valid: {', '.join(EVALUATORS.names())}")
        for name in value:
            EVALUATORS.check(name)
        if len(set(value)) != len(value):
            raise ValueError(f"metrics repeat: {value}")
        return value

    @field_validator("models", "options")
    @classmethod
    def _known_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        from mapo_bench.registry import EVALUATORS

        for name in value:
            EVALUATORS.check(name)
        return value
