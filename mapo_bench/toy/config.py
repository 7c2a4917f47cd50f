"""Config of ``mapo-bench toy pretrain`` (importable without torch).

The defaults are the shipped base: ``recipes/toy/pretrain.yaml`` spells them out, and the shipped
manifest records their hash, so a changed default is detected (see ``mapo_bench.toy.assets``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mapo_bench.config import SamplerConfig, Seed, StrictModel


class ToyModelConfig(StrictModel):
    """Sizes of the toy UNet and text encoder (TOY_NOTES.md: the measured best config)."""

    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_heads: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 20


class ToyDataConfig(StrictModel):
    """The pretraining caption mix; images come from the renderer."""

    pool_size: int = 24000  # (caption, seed) examples rendered once, then sampled with replacement
    plain_fraction: float = Field(0.3, ge=0, le=1)  # plain captions ...
    plain_base_fraction: float = Field(0.95, ge=0, le=1)  # ... drawn in the base style this often
    # ... and drawn with the unsafe marker this often (text unchanged): the base then draws the marker
    # unprompted at about this rate, as SDXL makes some unsafe images unprompted, so the Pick-Safety
    # analogue has something to unlearn (with 0 the base never draws it and toy-safety is saturated at 1).
    plain_unsafe_fraction: float = Field(0.25, ge=0, le=1)
    blend_fraction: float = Field(0.3, ge=0, le=1)  # blend prefixes ("cartoon style 0.5: ...")
    # "unsafe: " / "unsafe 0.4: " + a plain caption (drawn with the marker at a strength of vocab.MARKER_LEVELS)
    unsafe_fraction: float = Field(0.2, ge=0, le=1)
    # the rest: full style prefixes "<style> style: ..." (photo included)

    @model_validator(mode="after")
    def _fractions(self) -> ToyDataConfig:
        if self.plain_fraction + self.blend_fraction + self.unsafe_fraction > 1.0:
            raise ValueError("plain_fraction + blend_fraction + unsafe_fraction must be <= 1")
        return self


class ToyEvaluatorTrainConfig(StrictModel):
    """Training of the toy classifiers (style, shape, colour, position, size, unsafe heads)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    pool_size: int = 8000
    # Share of the non-base examples drawn as blends (alpha uniform in [0.05, 0.95]; the rest full styles).
    # Measured on 216 fresh renders per blend level (seed 0, 2000 steps): 0.5 -> cartoon 0.5 adherence of the
    # instrument itself 0.92-0.94 (worst level); 0.75 -> 0.97-0.99 at every level, full styles and content
    # heads unchanged (docs/toy.md).
    blend_share: float = Field(0.75, ge=0, le=1)
    noise_std: float = 0.08  # max std of the added Gaussian noise (augmentation)
    blur_prob: float = 0.3
    width: int = 32


class ToyGateConfig(StrictModel):
    """What a base must reach before pairs are built from it (measured on its own samples)."""

    enforce: bool = True
    reason: str | None = None  # required with enforce: false (tests use tiny ungated bases)
    prefix_adherence: float = 0.8
    colour: float = 0.9
    position: float = 0.9
    shape: float = 0.7
    seeds_per_caption: int = 2  # samples per (caption, prefix) in the gate
    # A blend sample adheres when its estimated alpha is this close to the requested level. 0.25 = closer to
    # it than to the level two steps away; the classifier itself reaches only 0.54-0.88 at 0.125 on renders.
    blend_tolerance: float = 0.25

    @model_validator(mode="after")
    def _reason(self) -> ToyGateConfig:
        if not self.enforce and not (self.reason and self.reason.strip()):
            raise ValueError("gate.enforce: false needs gate.reason (say why this base may be used ungated)")
        return self


class ToyPretrainConfig(StrictModel):
    """``mapo-bench toy pretrain``: the toy base, the toy evaluators, the gate measurement."""

    out: Path | None = None  # None: user cache, keyed by config hash
    overwrite: bool = False
    # Take the weights of a finished base with the same training hash (shipped, cached or out) and only
    # re-measure the gate; false retrains from scratch (to check that a run reproduces the shipped bytes).
    reuse_weights: bool = True
    seed: Seed = 0
    # What the UNet learns: "v" (v prediction on the cosine DDPM schedule, the shipped ``toy`` base) or "flow"
    # (rectified flow: x_t = (1 - sigma) x0 + sigma noise, target noise - x0; the ``toy-flow`` base).
    objective: Literal["v", "flow"] = "v"
    # Data-parallel CPU processes (mapo_bench/toy/parallel.py): each computes 1/processes of every batch.
    # Part of the weights' identity (float summation order), like the thread count.
    processes: int = Field(2, ge=1)
    steps: int = 6000
    batch_size: int = 32
    lr: float = 1e-3
    # Cosine decay from lr (after warmup) down to lr_final at the last step; None keeps lr constant.
    lr_final: float | None = 1e-4
    weight_decay: float = 0.01
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    high_noise_bias: float = 1.3  # t = T * (1 - (1 - u)^bias): > 1 favours high-noise timesteps
    checkpoint_every: int = 250
    model: ToyModelConfig = Field(default_factory=ToyModelConfig)
    data: ToyDataConfig = Field(default_factory=ToyDataConfig)
    evaluators: ToyEvaluatorTrainConfig = Field(default_factory=ToyEvaluatorTrainConfig)
    gate: ToyGateConfig = Field(default_factory=ToyGateConfig)
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(steps=15, guidance=2.0))

    @model_validator(mode="after")
    def _batches_split(self) -> ToyPretrainConfig:
        for key, size in (("batch_size", self.batch_size), ("evaluators.batch_size", self.evaluators.batch_size)):
            if size % self.processes:
                raise ValueError(f"{key} ({size}) must be a multiple of processes ({self.processes})")
        return self


NOT_WEIGHTS = ("out", "overwrite", "reuse_weights")  # where and how a run goes, not what it makes


# What the shipped flow base changes besides the objective (docs/toy.md, toy-flow): with the v base's
# high_noise_bias 1.3 it failed the gate on shape (0.54 at 15 and at 30 Euler steps); uniform noise levels
# give the low-noise steps, where shape detail is drawn, more of the training.
FLOW_OVERRIDES = {"high_noise_bias": 1.0}


def default_config(objective: str = "v") -> ToyPretrainConfig:
    """The config of the shipped base of ``objective`` (``toy``: v, ``toy-flow``: flow): the v defaults with
    ``FLOW_OVERRIDES`` for flow (``recipes/toy/pretrain[-flow].yaml`` spell them out)."""
    if objective == "flow":
        return ToyPretrainConfig(objective="flow", **FLOW_OVERRIDES)
    return ToyPretrainConfig(objective=objective)


def _hashable(cfg: ToyPretrainConfig | dict, exclude: set[str]) -> dict:
    """The config as hashed: ``objective: v`` (the default) is left out, so configs written before the key
    existed keep their hash (the shipped v base's manifest)."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, ToyPretrainConfig) else dict(cfg)
    if data.get("objective", "v") == "v":
        data.pop("objective", None)
    return {k: v for k, v in data.items() if k not in exclude}


def toy_config_hash(cfg: ToyPretrainConfig | dict) -> str:
    """Hash of what decides the weights and their gate (not ``NOT_WEIGHTS``: where and how a run goes)."""
    from mapo_bench.config import config_hash

    return config_hash(_hashable(cfg, set(NOT_WEIGHTS)))


def toy_training_hash(cfg: ToyPretrainConfig | dict) -> str:
    """Hash of what decides the weights only (not the gate or the gate's sampler): two configs with the
    same training hash have identical weights, so a changed gate is re-measured without retraining.

    Pass a finished base's manifest config as the dict it was written, never re-validated: a key added
    since then would take its current default and make an old base look trained with it."""
    from mapo_bench.config import config_hash

    return config_hash(_hashable(cfg, {*NOT_WEIGHTS, "gate", "sampler"}))


def toy_evaluator_hash(cfg: ToyPretrainConfig | dict) -> str:
    """Hash of what decides the toy classifier (its training config, the seed and the process count, not
    the base): bases with the same evaluator hash share one classifier, so a second base (``toy-flow``) is
    measured with the same instrument and need not train it again."""
    from mapo_bench.config import config_hash

    data = cfg.model_dump(mode="json") if isinstance(cfg, ToyPretrainConfig) else dict(cfg)
    return config_hash({k: data.get(k) for k in ("evaluators", "seed", "processes")})
