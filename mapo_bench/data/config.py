"""BuildConfig: what `mapo-bench build-dataset` builds. Importable without torch.

CLI flags are sugar for these keys (``--split cartoon`` == ``split=cartoon``). Defaults that depend on
the backend (prompt set, split) are filled in before validation so the manifest records what was used;
the sampler and model default to the backend's own (recorded in the manifest after loading).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mapo_bench.config import SamplerConfig, Seed, StrictModel
from mapo_bench.registry import toy_world

REAL_STYLE_SPLITS = ("cartoon", "pixel-art")
# Toy target styles, plus the real split names mapped onto the toy's nearest style.
TOY_SPLIT_ALIASES = {"cartoon": "cartoon", "pixel-art": "pixel", "pixel": "pixel", "soft": "soft", "neon": "neon"}
REJECTED_VARIANTS = ("realistic-8k", "plain")
# Keys that do not change a single row or byte of the dataset: left out of the config hash.
HASH_EXCLUDE = {"out", "overwrite"}
FROM_IMAGES_KEYS = ("images", "token", "subject_class", "caption_templates", "image_source", "image_license",
                    "min_images")


class BuildConfig(StrictModel):
    """A preference-pair dataset built by prefix-prompting a text-to-image model."""

    task: str = "pick-style"
    backend: str = "sdxl"
    split: str | None = Field(None, description="pick-style: cartoon | pixel-art (toy: soft | pixel | cartoon | neon)")
    rejected_variant: Literal["realistic-8k", "plain"] = "realistic-8k"
    chosen_prefix: str | None = Field(None, description="custom task: prefix of the chosen prompt")
    rejected_prefix: str | None = Field(None, description="custom task: prefix of the rejected prompt")
    model: str | None = Field(None, description="hub id or local path (None: the backend's default)")
    vae: str | None = Field(None, description="VAE override (hub id or local path)")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="options of the backend's load (e.g. sd3: {text_encoder_3: null}; flux: {guidance: 3.5}; flow families: weighting_scheme, loss_weighting)")
    dtype: str = "float32"
    device: str = "cpu"
    prompts: str | None = Field(None, description="prompt source (None: builtin:train, or toy:train for toy)")
    num_prompts: int | None = Field(None, ge=1)
    seed: Seed = 0
    pairs_per_prompt: int = Field(1, ge=1)
    sampler: SamplerConfig | None = None
    batch_size: int = Field(4, ge=1, description="pairs per generate call (2 x images)")
    image_format: Literal["png", "jpeg"] = "png"
    severity: float = Field(1.0, gt=0.0, le=1.0, description="toy dial: blend level alpha of the chosen style (pick-style) or strength of the "
                                       "rejected images' unsafe marker (pick-safety)")
    pairs: Literal["generated", "rendered"] = "generated"
    images: Path | None = Field(None, description="from-images: the folder of chosen images (imagefolder convention)")
    token: str | None = Field(None, description="from-images: the rare token naming the subject (e.g. sks)")
    subject_class: str | None = Field(None, description="from-images: the subject's class (e.g. dog)")
    caption_templates: list[str] | None = Field(None, description="from-images / class-images: caption templates with "
                                                "{token} {class} {caption} (None: the task's default)")
    image_source: str | None = Field(None, description="from-images: where the images came from (for the card)")
    image_license: str | None = Field(None, description="from-images: their licence as given by the user")
    min_images: int = Field(3, ge=1, description="from-images: fewer usable images is an error")
    judge: str | None = Field(None, description="scored-pairs: the metric that labels each pair (None: toy-preference "
                                                "on the toy world, else pickscore)")
    judge_tie_margin: float = Field(0.0, ge=0.0, description="scored-pairs: score gaps up to this are ties (0.5 / 0.5)")
    judge_options: dict[str, Any] = Field(default_factory=dict, description="scored-pairs: load options of the "
                                          "judge (e.g. model: a local weights folder)")
    shard_size: int = Field(100, ge=1, description="pairs per parquet shard")
    out: Path | None = None
    overwrite: bool = False

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        backend = data.get("backend", "sdxl")
        if data.get("task") in ("from-images", "class-images"):  # captions come from images / templates
            return data
        if data.get("prompts") is None:
            data["prompts"] = "toy:train" if toy_world(backend) else "builtin:train"
        if data.get("task", "pick-style") == "pick-style" and data.get("split") is None:
            data["split"] = "cartoon"
        return data

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        from mapo_bench.registry import TASKS

        return TASKS.check(value)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        from mapo_bench.registry import BACKENDS

        return BACKENDS.check(value)

    @field_validator("split")
    @classmethod
    def _split(cls, value: str | None, info: ValidationInfo) -> str | None:
        task, backend = info.data.get("task"), info.data.get("backend")
        if task != "pick-style":
            if value is not None:
                raise ValueError(f"split applies to pick-style only, not {task!r}; remove it")
            return value
        valid = tuple(TOY_SPLIT_ALIASES) if toy_world(backend) else REAL_STYLE_SPLITS
        if value not in valid:
            raise ValueError(f"pick-style split must be one of {', '.join(valid)}"
                             + ("" if toy_world(backend) else " (soft | pixel | neon need --backend toy)"))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BuildConfig:
        toy = toy_world(self.backend)
        if self.task == "custom":
            if not (self.chosen_prefix or self.rejected_prefix) or self.chosen_prefix == self.rejected_prefix:
                raise ValueError("custom task needs --chosen-prefix and/or --rejected-prefix, and they must differ")
        elif self.chosen_prefix is not None or self.rejected_prefix is not None:
            raise ValueError(f"chosen_prefix / rejected_prefix apply to the custom task only, not {self.task!r}")
        given = [k for k in FROM_IMAGES_KEYS if k in self.model_fields_set]
        if self.task == "class-images":
            extra = [k for k in given if k not in ("subject_class", "caption_templates")]
            if extra or not self.subject_class:
                raise ValueError("class-images needs --class (and optionally caption_templates) only"
                                 + (f"; remove {', '.join(extra)}" if extra else ""))
            if self.prompts is not None or self.num_prompts is not None or self.pairs == "rendered":
                raise ValueError("class-images makes its captions from --class and caption_templates; remove "
                                 "prompts / num_prompts / pairs")
        elif self.task == "from-images":
            if self.prompts is not None or self.num_prompts is not None:
                raise ValueError("from-images takes its captions from the images and caption_templates; "
                                 "remove prompts / num_prompts")
            if self.pairs == "rendered" or self.caption_templates == []:
                raise ValueError("from-images needs pairs=generated and at least one caption template")
        elif given:
            raise ValueError(f"{', '.join(given)} apply to the from-images task only, not {self.task!r}")
        if self.task != "pick-style" and self.rejected_variant != "realistic-8k":
            raise ValueError("rejected_variant applies to pick-style only; remove it")
        if self.severity != 1.0 and not (toy and self.task in ("pick-style", "pick-safety")):
            raise ValueError("severity (blend level or marker strength) applies to pick-style and pick-safety "
                             "with --backend toy only")
        if self.pairs == "rendered" and not toy:
            raise ValueError("pairs=rendered (renderer-made control pairs) needs --backend toy")
        if self.pairs == "rendered" and (self.sampler is not None or self.model is not None):
            raise ValueError("pairs=rendered draws with the toy renderer; remove sampler / model")
        if toy and self.image_format != "png":
            raise ValueError("the toy backend writes png only (32 px images; jpeg would blur the styles)")
        if toy and self.vae is not None:
            raise ValueError("vae applies to sdxl / sd15 only")
        return self

    def config_hash(self) -> str:
        """The hash of everything that decides rows and bytes (not out / overwrite)."""
        from mapo_bench.config import config_hash

        return config_hash(self, exclude=HASH_EXCLUDE)

    def default_out(self) -> Path:
        """``datasets/<task>[-<split>]-<backend>`` when no ``out`` is given."""
        name = "-".join(part for part in (self.task, self.split, self.token, self.subject_class, self.backend) if part)
        return Path("datasets") / name
