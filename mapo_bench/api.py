"""The stage functions. The CLI and the experiment runner only call these.

Each takes a config file path (or None) and ``key.path=value`` overrides, validates once, and
returns the path(s) it wrote. Heavy modules are imported inside each function.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from mapo_bench.config import load_config
from mapo_bench.errors import MapoBenchError, NotYetImplementedError

# stage -> (config class target, issue that builds it)
STAGE_CONFIGS: dict[str, tuple[str, int]] = {
    "build": ("mapo_bench.data.config:BuildConfig", 3),
    "train": ("mapo_bench.training.config:TrainConfig", 4),
    "sample": ("mapo_bench.evaluators.config:SampleConfig", 5),
    "eval": ("mapo_bench.evaluators.config:EvalConfig", 5),
    "mismatch": ("mapo_bench.mismatch:MismatchConfig", 7),
    "pipeline": ("mapo_bench.pipeline:PipelineSpec", 7),
    "toy": ("mapo_bench.toy.config:ToyPretrainConfig", 6),
}
STAGE_ALIASES = {"recipes/build": "build", "recipes/train": "train", "recipes/eval": "eval",
                 "recipes/sample": "sample", "recipes/mismatch": "mismatch", "pipelines": "pipeline",
                 "recipes/toy": "toy"}


def _import_target(target: str, what: str, issue: int) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("mapo_bench"):
            raise NotYetImplementedError(f"{what} is not implemented yet (tracked in issue {issue})") from None
        raise
    if not hasattr(module, attr):
        raise NotYetImplementedError(f"{what} is not implemented yet (tracked in issue {issue})")
    return getattr(module, attr)


def stage_config_class(stage: str) -> type:
    if stage not in STAGE_CONFIGS:
        from mapo_bench.registry import suggest

        raise MapoBenchError(f"unknown stage {stage!r}{suggest(stage, list(STAGE_CONFIGS))}; valid: {', '.join(STAGE_CONFIGS)}")
    target, issue = STAGE_CONFIGS[stage]
    return _import_target(target, f"the {stage} stage", issue)


def infer_stage(path: str | Path) -> str:
    """The stage a config file belongs to, from its folder (recipes/train/... -> train)."""
    resolved = Path(path).resolve().as_posix()
    for folder, stage in STAGE_ALIASES.items():
        if f"/{folder}/" in resolved:
            return stage
    raise MapoBenchError(f"{path}: cannot tell the stage from the path; pass --stage ({', '.join(STAGE_CONFIGS)})")


def load_stage_config(stage: str, config: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    return load_config(stage_config_class(stage), config, overrides)


def _call(target: str, what: str, issue: int, *args: Any, **kwargs: Any) -> Any:
    from mapo_bench.threads import configure_threads

    configure_threads()
    quiet_libraries()
    return _import_target(target, what, issue)(*args, **kwargs)


def quiet_libraries() -> None:
    """Our rich progress bars are the only ones: silence diffusers' and transformers' per-load bars."""
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            importlib.import_module(module).disable_progress_bar()
        except (ImportError, AttributeError):
            pass


def build_dataset(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    cfg = load_stage_config("build", config, overrides)
    return _call("mapo_bench.data.builder:build_dataset", "build-dataset", 3, cfg)


def validate_dataset(path: str | Path) -> dict[str, Any]:
    return _call("mapo_bench.data.validate:validate_dataset", "validate-dataset", 3, Path(path))


def train(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    cfg = load_stage_config("train", config, overrides)
    return _call("mapo_bench.training.loop:train", "train", 4, cfg)


def sample(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    cfg = load_stage_config("sample", config, overrides)
    return _call("mapo_bench.sampling:sample", "sample", 5, cfg)


def evaluate(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    cfg = load_stage_config("eval", config, overrides)
    return _call("mapo_bench.evaluators.run:evaluate", "eval", 5, cfg)


def compare(scores_a: str | Path, scores_b: str | Path | None = None, model_a: str | None = None,
            model_b: str | None = None, resamples: int = 1000, seed: int = 0,
            tie_margins: dict[str, float] | None = None) -> Any:
    return _call("mapo_bench.stats:compare_scores", "compare", 5, scores_a, scores_b, model_a=model_a,
                 model_b=model_b, resamples=resamples, seed=seed, tie_margins=tie_margins)


def measure_mismatch(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    cfg = load_stage_config("mismatch", config, overrides)
    return _call("mapo_bench.mismatch:measure_mismatch", "mismatch", 7, cfg)


def toy_pretrain(config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    cfg = load_stage_config("toy", config, overrides)
    return _call("mapo_bench.toy.pretrain:pretrain", "toy pretrain", 6, cfg)


def run(pipeline: str | Path, overrides: list[str] | tuple[str, ...] = (), **options: Any) -> Any:
    cfg = load_stage_config("pipeline", pipeline, overrides)
    return _call("mapo_bench.runner:run_pipeline", "run", 7, cfg, pipeline_path=Path(pipeline), **options)


def report(run_dir: str | Path) -> Path:
    return _call("mapo_bench.report:write_report", "report", 7, Path(run_dir))
