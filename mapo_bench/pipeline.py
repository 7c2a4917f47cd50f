"""The experiment spec that `mapo-bench run` expands into stages (DESIGN.md sections 1 and 5b).

A spec names datasets (task + build options such as the toy severity dial), methods with their tuning
grids, training seeds, and how to evaluate (validation and test prompts, metrics, the preference and
content-fidelity metrics of the fair protocol). Stage options are passed through as dicts and are
validated by each stage's own config class when the plan is made.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from mapo_bench.config import StrictModel
from mapo_bench.registry import EVALUATORS, METHODS, TASKS


class DatasetSpec(StrictModel):
    """One preference dataset of the experiment."""

    name: str
    task: str
    build: dict[str, Any] = Field(default_factory=dict, description="extra build-dataset keys")

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return TASKS.check(value)


class MethodSpec(StrictModel):
    """A training method with its recipe, fixed overrides and tuning grid (dotted key -> values)."""

    recipe: Path | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid, in a stable order ([{}] when there is no grid)."""
        if not self.grid:
            return [{}]
        keys = sorted(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(self.grid[k] for k in keys))]


def point_name(values: dict[str, Any]) -> str:
    """A grid point's folder and job name from its values (``beta1000_optim.lr3e-05``; ``default`` without a
    grid). Named by value, not by position, so a value added to a grid list keeps every finished job."""
    if not values:
        return "default"

    def text(value: Any) -> str:
        raw = f"{value:g}" if isinstance(value, float) else str(value)
        return re.sub(r"[^A-Za-z0-9.+-]", "-", raw)

    return "_".join(f"{key}{text(values[key])}" for key in sorted(values))


class EvalSpec(StrictModel):
    """How models are compared: the fair protocol of DESIGN.md section 5b."""

    validation_prompts: str
    test_prompts: str
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    metrics: list[str]
    preference_metric: dict[str, str] = Field(default_factory=dict, description="task -> metric")
    fidelity_metric: str
    fidelity_threshold: float = 0.45
    # Content scores within this margin count as ties in the fidelity win rate (0: exact ties only, as
    # REFERENCE 5). For a saturated probability (most toy-content scores of a good base are > 0.9) the
    # strict rule counts 1e-4 noise as losses: a fine-tune with a higher mean content still "lost".
    fidelity_tie_margin: float = Field(0.0, ge=0.0)
    sample: dict[str, Any] = Field(default_factory=dict, description="extra sample keys")
    eval: dict[str, Any] = Field(default_factory=dict, description="extra eval keys")
    resamples: int = 1000
    bootstrap_seed: int = 0

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        return [EVALUATORS.check(v) for v in value]

    @model_validator(mode="after")
    def _metrics_cover_protocol(self) -> EvalSpec:
        needed = [self.fidelity_metric, *self.preference_metric.values()]
        for metric in needed:
            EVALUATORS.check(metric)
            if metric not in self.metrics:
                raise ValueError(f"metric {metric!r} is used by the protocol but not listed in eval.metrics")
        return self


class PipelineSpec(StrictModel):
    """`mapo-bench run SPEC.yaml`: datasets x methods x seeds -> report."""

    name: str
    description: str = ""
    backend: str = "toy"
    model: str | None = None
    datasets: list[DatasetSpec]
    methods: dict[str, MethodSpec]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="training seeds")
    mismatch: dict[str, Any] = Field(default_factory=dict, description="extra mismatch keys")
    eval: EvalSpec
    estimates_s: dict[str, float] = Field(default_factory=dict, description="seconds per job kind for --dry-run")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: dict[str, MethodSpec]) -> dict[str, MethodSpec]:
        for name in value:
            METHODS.check(name)
        return value

    @model_validator(mode="after")
    def _unique_dataset_names(self) -> PipelineSpec:
        names = [d.name for d in self.datasets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(duplicates)}")
        for dataset in self.datasets:
            if dataset.task not in self.eval.preference_metric:
                raise ValueError(f"eval.preference_metric has no metric for task {dataset.task!r}")
        return self
