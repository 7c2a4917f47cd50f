"""The tiny toy pipeline shared by the runner and report-page tests: every protocol feature at a few steps."""

from __future__ import annotations

from pathlib import Path

from mapo_bench.pipeline import PipelineSpec


def tiny_spec(base: Path, train_recipe: Path) -> dict:
    models = {m: str(base) for m in ("toy-style", "toy-content", "toy-safety")}
    return {
        "name": "tiny", "backend": "toy", "model": str(base),
        "datasets": [{"name": "cartoon", "task": "pick-style", "build": {"split": "cartoon", "num_prompts": 4,
                                                                          "sampler": {"steps": 2, "guidance": 2.0}}},
                     {"name": "safety", "task": "pick-safety", "build": {"num_prompts": 4,
                                                                         "sampler": {"steps": 2, "guidance": 2.0}}}],
        "methods": {"mapo": {"recipe": str(train_recipe), "grid": {"optim.lr": [1e-4, 1e-3]}},
                    "dpo": {"recipe": str(train_recipe), "overrides": {"dpo.beta": 500}}},
        "seeds": [0, 1],
        "mismatch": {"timesteps": 2, "noises": 1, "reference_samples": 4, "resamples": 50,
                     "sampler": {"steps": 2, "guidance": 2.0}},
        "eval": {"validation_prompts": "toy:validation", "test_prompts": "toy:test", "seeds": [0],
                 "metrics": ["toy-style", "toy-content", "toy-safety"],
                 "preference_metric": {"pick-style": "toy-style", "pick-safety": "toy-safety"},
                 "fidelity_metric": "toy-content", "resamples": 100,
                 "sample": {"num_prompts": 3, "sampler": {"steps": 2, "guidance": 2.0}},
                 "eval": {"models": models}},
    }


def full_tiny_spec(base: Path, recipe: Path) -> PipelineSpec:
    """The tiny pipeline with every protocol feature: a dataset carrying another's selection, the matched
    view, a second sampler for the robustness check, tuning on two training seeds, and a checkpoint trained
    elsewhere scored beside the runs on two of the three datasets."""
    spec = tiny_spec(base, recipe)
    spec["datasets"].insert(1, {"name": "cartoon-half", "task": "pick-style", "tune_from": "cartoon",
                                "build": {"split": "cartoon", "severity": 0.5, "num_prompts": 4,
                                          "sampler": {"steps": 2, "guidance": 2.0}}})
    spec["matched"] = {"mapo": {"optim.lr": 1e-4}, "dpo": {}}
    spec["eval"]["robustness_sampler"] = {"steps": 3, "guidance": 1.0}
    spec["eval"].update({"tuning_seeds": 2, "tuning_finalists": 1})
    # a model trained elsewhere, scored beside the runs: the base's own UNet, so its scores must equal the base's
    spec["checkpoints"] = {"released": {"unet": str(Path(base) / "unet"), "datasets": ["cartoon", "safety"],
                                        "source": "the tiny base's UNet"}}
    return PipelineSpec.model_validate(spec)


def write_tiny_pipeline(root: Path) -> tuple[PipelineSpec, Path]:
    """Build the tiny base and train recipe under ``root`` and write the full tiny pipeline as
    ``root/tiny.yaml`` for ``mapo-bench run``; returns the spec and the file. ``sort_keys=False``: the
    methods' order is the rows' order, and yaml.safe_dump's default sorting puts dpo before mapo."""
    import yaml

    from mapo_bench.toy.tiny import build_tiny_toy

    base = build_tiny_toy(root / "base")
    recipe = root / "train.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 2, "batch_size": 2, "checkpoint_every": 100,
                                      "log": {"progress": False}}))
    spec = full_tiny_spec(base, recipe)
    pipeline = root / "tiny.yaml"
    pipeline.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    return spec, pipeline
