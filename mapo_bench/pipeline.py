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
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from mapo_bench.config import Seed, StrictModel
from mapo_bench.registry import EVALUATORS, METHODS, TASKS

FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def folder_name(value: str) -> str:
    """A name that becomes one path component (run folder, dataset folder): letters, digits, ``.``, ``_``,
    ``-``; no ``/``, no leading dot, so a pipeline cannot place its folders outside the run."""
    if not FOLDER_NAME.match(value):
        raise ValueError(f"{value!r} is not a folder name: use letters, digits, '.', '_' and '-' (not first), "
                         "at most 100 characters")
    return value


FolderName = Annotated[str, AfterValidator(folder_name)]


class DatasetSpec(StrictModel):
    """One preference dataset of the experiment."""

    name: FolderName
    task: str
    build: dict[str, Any] = Field(default_factory=dict, description="extra build-dataset keys")
    tune_from: str | None = Field(None, description="use the settings selected on this dataset (no grid here)")
    path: str | None = Field(None, description="an existing pair dataset in the Pick-a-Pic v2 layout (a local folder "
                                               "or parquet file, or a hub id for training) used as it is, not built: "
                                               "Pick-a-Pic itself, or a released set of a built task (e.g. "
                                               "mapo-t2i/pick-style-cartoon with build: {split: cartoon}, whose "
                                               "build keys then only name the task's scoring context)")
    prompts: dict[Literal["validation", "test"], str] | None = Field(
        None, description="this dataset's own validation and test prompt sources (e.g. a subject's new contexts); "
                          "the base is then sampled on them for this dataset, instead of eval's prompts")
    class_images: dict[str, Any] | None = Field(
        None, description="build keys of a class-images dataset (DreamBooth's prior-preservation images), built "
                          "beside this dataset for the methods that read a prior stream")

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return TASKS.check(value)

    @field_validator("prompts")
    @classmethod
    def _both_splits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and set(value) != {"validation", "test"}:
            raise ValueError("prompts needs both validation and test sources, e.g. {validation: v.txt, test: t.txt}")
        return value

    @model_validator(mode="after")
    def _built_or_given(self) -> DatasetSpec:
        given = TASKS.get(self.task).given
        if given and self.path is None:
            raise ValueError(f"dataset {self.name!r}: task {self.task} is not built; give its path (a local copy "
                             "or a hub id)")
        if given and self.build:
            raise ValueError(f"dataset {self.name!r}: task {self.task} is used as it is: no build keys")
        return self

    def prompt_source(self, split: str, default: str) -> str:
        """This dataset's prompt source for ``split`` (the test prompts for the second sampler), else ``default``."""
        if self.prompts is None:
            return default
        return self.prompts["validation" if split == "validation" else "test"]

    @property
    def base_label(self) -> str:
        """The run label of the base's samples this dataset is scored on: shared unless it has its own prompts."""
        return "base" if self.prompts is None else f"{self.name}/base"


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
    """A grid point's folder and job name from its values (``dpo.beta1000_optim.lr3e-05``; ``default`` without a
    grid). Named by value, not by position, so a value added to a grid list keeps every finished job."""
    if not values:
        return "default"

    def text(value: Any) -> str:
        raw = f"{value:g}" if isinstance(value, float) else str(value)
        return re.sub(r"[^A-Za-z0-9.+-]", "-", raw)

    return "_".join(f"{key}{text(values[key])}" for key in sorted(values))


class EvalSpec(StrictModel):
    """How models are compared: the fair protocol of DESIGN.md section 5b, and the answer of 5c."""

    validation_prompts: str
    test_prompts: str
    prompts_help: str | None = Field(None, description="where to get prompt files the pipeline names (said when one "
                                                       "is missing, before anything runs)")
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2])
    metrics: list[str]
    preference_metric: dict[str, str] = Field(default_factory=dict, description="task -> metric")
    fidelity_metric: str
    # The fidelity gate, one quantity on validation (selection) and test (the report's check): a setting is
    # eligible when its mean fidelity is at most ``fidelity_margin`` (metric units) below the reference's
    # on the same prompts and seeds. Reference "target": the base prompted with the task's chosen prefix,
    # i.e. images like the chosen ones the data asks for (the base itself where the chosen side is the
    # plain prompt); "base": the base on plain prompts; "lower": whichever of the two has the lower mean
    # fidelity on those prompts, so that both a model that learns the chosen images faithfully and one that
    # does not move at all pass, and only a loss of content below both fails (docs/toy.md).
    fidelity_reference: Literal["target", "base", "lower"] = "target"
    fidelity_margin: float = Field(0.05, ge=0.0)
    # Win rates count |a - b| <= margin as a tie, per metric (0: exact ties only, as REFERENCE 5); recorded.
    tie_margins: dict[str, float] = Field(default_factory=dict)
    severity_measure: str = Field("prefix_excess", description="the trend's x axis: a severity.json measure "
                                  "family, read on the dataset's prefixed side")
    precision: float = Field(0.05, gt=0.0, description="target 95% CI half-width of headline mean gaps")
    kid_to_target: bool = Field(True, description="report the KID of each model's test samples to the target's "
                                "(closeness of the image distribution to the data; off: skip its feature pass, which "
                                "for a real backend runs CLIP on every test image once)")
    robustness_sampler: dict[str, Any] | None = Field(None, description="a second sampler setting on which the "
                                                      "trend is re-checked (test prompts, selected settings)")
    robustness_seeds: list[Seed] | None = Field(None, description="sampling seeds of the second sampler (default: "
                                                "eval.seeds); a re-check of the trend needs fewer than the headline")
    # Tuning sees the first ``tuning_seeds`` training seeds. Every grid setting is trained on the first; the
    # ``tuning_finalists`` best settings eligible there (per dataset and method) are trained on the others too,
    # and a setting is selected only if it passes the gate on every one of them (the worst seed), by its mean
    # preference advantage over them: a setting whose first seed happens to keep content while its others
    # collapse is not selected (issue 12: DPO at lr 1e-4 did exactly that).
    tuning_seeds: int = Field(1, ge=1, description="training seeds the selection sees (the first N of seeds)")
    tuning_finalists: int = Field(3, ge=1, description="settings per cell re-checked on the other tuning seeds")
    sample: dict[str, Any] = Field(default_factory=dict, description="extra sample keys")
    eval: dict[str, Any] = Field(default_factory=dict, description="extra eval keys")
    resamples: int = 1000
    bootstrap_seed: Seed = 0

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        return [EVALUATORS.check(v) for v in value]

    @model_validator(mode="after")
    def _metrics_cover_protocol(self) -> EvalSpec:
        needed = [self.fidelity_metric, *self.preference_metric.values(), *self.tie_margins]
        for metric in needed:
            EVALUATORS.check(metric)
            if metric not in self.metrics:
                raise ValueError(f"metric {metric!r} is used by the protocol but not listed in eval.metrics")
        return self


class PublishedSpec(StrictModel):
    """Published numbers to print beside the run's own (labelled as published, never mixed into statistics)."""

    source: str = Field(description="where the numbers come from, e.g. 'MaPO paper, Pick-a-Pic v2 averages'")
    scores: dict[str, dict[str, float]] = Field(description="model (base or a method) -> metric -> published mean")


class RatingSpec(StrictModel):
    """What ``mapo-bench serve`` asks raters by default (its ``--pairs`` / ``--per-rater`` override it)."""

    pairs: list[str] = Field(default_factory=lambda: ["mapo:dpo"], description="gallery column pairs, e.g. mapo:dpo")
    per_rater: int = Field(20, ge=1, description="votes asked of each rater")


class CheckpointSpec(StrictModel):
    """A model trained elsewhere (a released MaPO UNet such as ``mapo-t2i/mapo-beta``, a colleague's LoRA, another
    run's fine-tune), sampled and scored on the test prompts beside the pipeline's own runs. It is one fixed
    model, so its intervals carry prompts and sampling seeds only; it takes no part in tuning or selection."""

    unet: str | None = Field(None, description="a denoiser (UNet or transformer) folder or hub id swapped into the "
                                                "pipeline's model, e.g. a UNet-only repository as MaPO's releases are")
    lora: str | None = Field(None, description="a LoRA folder loaded into the pipeline's model")
    model: str | None = Field(None, description="a whole pipeline (hub id or folder) in place of the pipeline's model")
    datasets: list[str] | None = Field(None, description="the datasets it is scored against (default: every one)")
    source: str = Field("", description="where it comes from (a model card, a paper), for the reader")

    @model_validator(mode="after")
    def _one_model(self) -> CheckpointSpec:
        if self.unet is None and self.lora is None and self.model is None:
            raise ValueError("a checkpoint names its weights: unet (folder or hub id), lora (folder) or model")
        if self.unet is not None and self.lora is not None:
            raise ValueError("a checkpoint gives either unet or lora, not both")
        return self

    def scores(self, dataset: str) -> bool:
        """Whether it is scored against ``dataset`` (every dataset unless ``datasets`` names some)."""
        return self.datasets is None or dataset in self.datasets

    def sample_keys(self) -> dict[str, str]:
        """The sample-stage keys that load it (``model`` replaces the pipeline's model)."""
        return {key: value for key, value in (("model", self.model), ("unet", self.unet), ("lora", self.lora))
                if value is not None}


CHECKPOINTS_DIR = "checkpoints"


def checkpoint_label(name: str, dataset: DatasetSpec) -> str:
    """The run label of checkpoint ``name``'s samples for ``dataset``: one folder on the shared prompts (scored
    once per dataset, ``runner.scores_label``), or its own on a dataset with its own prompts."""
    return f"{CHECKPOINTS_DIR}/{name}" if dataset.prompts is None else f"{CHECKPOINTS_DIR}/{name}/{dataset.name}"


class PipelineSpec(StrictModel):
    """`mapo-bench run SPEC.yaml`: datasets x methods x seeds -> report."""

    name: FolderName
    description: str = ""
    backend: str = "toy"
    model: str | None = None
    backend_options: dict[str, Any] = Field(default_factory=dict, description="options of the backend's load, "
                                            "for every stage (e.g. sd3: {text_encoder_3: null})")
    datasets: list[DatasetSpec]
    methods: dict[str, MethodSpec]
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], description="training seeds")
    matched: dict[str, dict[str, Any]] = Field(default_factory=dict, description="method -> fixed values of the "
                                               "matched view (every seed, test prompts, beside the tuned view)")
    mismatch: dict[str, Any] = Field(default_factory=dict, description="extra mismatch keys")
    eval: EvalSpec
    estimates_s: dict[str, float] = Field(default_factory=dict, description="seconds per job kind for --dry-run")
    resources: dict[str, Any] = Field(default_factory=dict, description="what a job asks of --executor ray / slurm: "
                                      "gpus, cpus, mem_gb, time_min, partition, account, constraint; a block per "
                                      "job kind (train: {gpus: 4}) overrides the defaults")
    rating: RatingSpec = Field(default_factory=RatingSpec, description="defaults of the rating page")
    published: PublishedSpec | None = None
    checkpoints: dict[FolderName, CheckpointSpec] = Field(
        default_factory=dict, description="name -> a model trained elsewhere, scored beside the runs on test prompts")

    def checkpoints_for(self, dataset: str) -> list[str]:
        """The checkpoints scored against ``dataset``, in pipeline order."""
        return [name for name, c in self.checkpoints.items() if c.scores(dataset)]

    def prompt_files(self) -> list[tuple[str, str]]:
        """(where named, source) of every prompt source that is a file path (not builtin:, toy:, hf://)."""
        named = [("eval.validation_prompts", self.eval.validation_prompts), ("eval.test_prompts", self.eval.test_prompts)]
        named += [(f"datasets.{d.name}.prompts.{split}", source) for d in self.datasets
                  for split, source in (d.prompts or {}).items()]
        return [(where, source) for where, source in named if not re.match(r"^(builtin|toy):|^hf://", source)]

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
            if dataset.tune_from is not None:
                source = next((d for d in self.datasets if d.name == dataset.tune_from), None)
                if source is None or source.tune_from is not None:
                    raise ValueError(f"dataset {dataset.name!r}: tune_from {dataset.tune_from!r} must name a dataset "
                                     "of this pipeline that is tuned itself")
                if source.task != dataset.task:
                    raise ValueError(f"dataset {dataset.name!r}: tune_from {dataset.tune_from!r} has another task")
        if self.eval.tuning_seeds > len(self.seeds):
            raise ValueError(f"eval.tuning_seeds {self.eval.tuning_seeds} exceeds the {len(self.seeds)} training seeds")
        unknown = sorted(set(self.matched) - set(self.methods))
        if unknown:
            raise ValueError(f"matched names methods the pipeline does not train: {', '.join(unknown)}")
        for name, checkpoint in self.checkpoints.items():
            if name in self.methods or name in ("base", "target"):
                raise ValueError(f"checkpoint {name!r}: the name is taken by a method or the base / target; rename it")
            missing = sorted(set(checkpoint.datasets or []) - set(names))
            if missing:
                raise ValueError(f"checkpoint {name!r}: datasets {', '.join(missing)} are not datasets of this pipeline")
        return self
