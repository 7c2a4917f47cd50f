"""Tasks turn a plain prompt into (chosen, rejected) prompts; BuildConfig validates the combinations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mapo_bench.config import load_config, validate
from mapo_bench.data.config import BuildConfig
from mapo_bench.data.tasks import CustomTask, PickSafety, PickStyle, make_task, task_from_config
from mapo_bench.errors import MapoBenchError
from mapo_bench.registry import TASKS

ROOT = Path(__file__).resolve().parent.parent


def cfg(**kw) -> BuildConfig:
    return validate(BuildConfig, kw)


@pytest.mark.parametrize("kw, chosen, rejected", [
    # REFERENCE.md 1.1, verbatim
    ({"split": "cartoon"}, "Disney style animated image. a cat", "Realistic 8k image. a cat"),
    ({"split": "pixel-art"}, "Pixel art style image. a cat", "Realistic 8k image. a cat"),
    ({"split": "cartoon", "rejected_variant": "plain"}, "Disney style animated image. a cat", "a cat"),
    ({"task": "pick-safety"}, "a cat", "Sexual, nudity, +19 image. a cat"),
    ({"task": "custom", "chosen_prefix": "Watercolor painting.", "rejected_prefix": "Blurry photo."},
     "Watercolor painting. a cat", "Blurry photo. a cat"),
    ({"task": "custom", "chosen_prefix": "Oil painting of "}, "Oil painting of a cat", "a cat"),
])
def test_real_backend_prompts(kw, chosen, rejected):
    task = task_from_config(cfg(**kw))
    assert task.prompts("a cat") == (chosen, rejected)


def test_toy_prompts_follow_the_toy_grammar():
    from mapo_bench.toy.vocab import parse_caption

    plain = "a small red circle on the left"
    style = task_from_config(cfg(backend="toy", split="pixel-art", severity=0.5))
    chosen, rejected = style.prompts(plain)
    assert (chosen, rejected) == ("pixel style 0.5: " + plain, "photo style: " + plain)
    assert parse_caption(chosen).style == "pixel" and parse_caption(chosen).alpha == 0.5
    assert parse_caption(rejected).style == "photo"
    assert task_from_config(cfg(backend="toy", split="neon", rejected_variant="plain")).prompts(plain) == (
        "neon style: " + plain, plain)
    safety = task_from_config(cfg(backend="toy", task="pick-safety"))
    chosen, rejected = safety.prompts(plain)
    assert chosen == plain and parse_caption(rejected).unsafe and not parse_caption(chosen).unsafe


def test_score_context_and_cards():
    ctx = task_from_config(cfg(split="cartoon")).score_context()
    assert (ctx.task, ctx.target_style, ctx.base_style) == ("pick-style", "a Disney style animated image", "a realistic photo")
    ctx = task_from_config(cfg(backend="toy", split="pixel-art")).score_context()
    assert (ctx.target_style, ctx.base_style) == ("pixel", "photo")
    safety = task_from_config(cfg(task="pick-safety"))
    assert safety.content_warning and "not-for-all-audiences" in safety.card().tags
    assert task_from_config(cfg(split="cartoon")).content_warning is None
    assert make_task("custom", chosen_prefix="neon style:", backend="toy").score_context().target_style == "neon"
    assert task_from_config(cfg(split="pixel-art")).label == "pick-style/pixel-art"


def test_registry_targets_are_the_classes():
    assert TASKS.get("pick-style") is PickStyle
    assert TASKS.get("pick-safety") is PickSafety
    assert TASKS.get("custom") is CustomTask


@pytest.mark.parametrize("kw, key, needle", [
    ({"task": "pick-styl"}, "task", "did you mean 'pick-style'"),
    ({"backend": "sdxl2"}, "backend", "unknown backend"),
    ({"split": "neon"}, "split", "need --backend toy"),
    ({"task": "pick-safety", "split": "cartoon"}, "split", "pick-style only"),
    ({"task": "custom"}, "<root>", "custom task needs"),
    ({"task": "custom", "chosen_prefix": "x", "rejected_prefix": "x"}, "<root>", "must differ"),
    ({"chosen_prefix": "x"}, "<root>", "custom task only"),
    ({"task": "pick-safety", "rejected_variant": "plain"}, "<root>", "pick-style only"),
    ({"severity": 0.5}, "<root>", "backend toy only"),
    ({"pairs": "rendered"}, "<root>", "needs --backend toy"),
    ({"pairs": "rendered", "backend": "toy", "sampler": {"steps": 3}}, "<root>", "remove sampler"),
    ({"backend": "toy", "image_format": "jpeg"}, "<root>", "png only"),
    ({"severity": 0.0, "backend": "toy"}, "severity", "greater than 0"),
    ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
    ({"shard_sizee": 3}, "shard_sizee", "did you mean 'shard_size'"),
])
def test_invalid_configs_name_the_key(kw, key, needle):
    with pytest.raises(MapoBenchError) as info:
        cfg(**kw)
    message = str(info.value)
    assert f"key {key!r}" in message and needle in message and "\n" not in message


def test_backend_dependent_defaults_and_hash():
    assert cfg().prompts == "builtin:train" and cfg().split == "cartoon"
    assert cfg(backend="toy").prompts == "toy:train"
    assert cfg(task="pick-safety").split is None
    assert cfg(out="a").config_hash() == cfg(out="b", overwrite=True).config_hash()
    assert cfg(seed=1).config_hash() != cfg(seed=2).config_hash()


def test_build_recipes_validate():
    recipes = sorted((ROOT / "recipes" / "build").glob("*.yaml"))
    assert recipes
    backends = set()
    for recipe in recipes:
        backends.add(load_config(BuildConfig, recipe).backend)
        assert recipe.read_text().startswith("#"), f"{recipe.name}: needs a comment header"
    assert backends == {"sdxl", "sd15", "sd3", "toy"}


def test_config_and_tasks_import_without_torch():
    code = ("import sys; import mapo_bench.data.config, mapo_bench.data.tasks, mapo_bench.data.prompts; "
            "from mapo_bench.data.config import BuildConfig; BuildConfig(task='pick-safety'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
