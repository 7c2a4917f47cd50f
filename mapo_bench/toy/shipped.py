"""The toy weights shipped inside the package (``mapo_bench/toy/assets/``) and other toy bases.

``toy`` as a model id means the shipped base; any other id is a folder written by
``mapo-bench toy pretrain`` (or a fine-tuned ``unet/`` / LoRA folder over the shipped base). When the
shipped manifest's config hash differs from the current default config, toy commands warn once with
the command that re-pretrains.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

from mapo_bench.errors import MapoBenchError

ASSETS = Path(__file__).parent / "assets"
SHIPPED_ID = "toy"
REPRETRAIN = "mapo-bench toy pretrain --config recipes/toy/pretrain.yaml"


class ToyAssetsWarning(UserWarning):
    """The shipped toy weights were made with another config than the current default."""


def shipped_dir() -> Path:
    if not (ASSETS / "toy_pipeline.json").is_file():
        raise MapoBenchError(f"{ASSETS}: the shipped toy weights are missing; run {REPRETRAIN} "
                             "and pass its output folder as --model")
    return ASSETS


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise MapoBenchError(f"{path}: not valid JSON; re-run {REPRETRAIN}") from None


def stale_message(manifest: dict | None) -> str | None:
    """Why the shipped weights no longer match the default toy config, or None when they do."""
    from mapo_bench.toy.config import ToyPretrainConfig, toy_config_hash

    current = toy_config_hash(ToyPretrainConfig())
    recorded = (manifest or {}).get("config_hash")
    if recorded == current:
        return None
    return (f"the shipped toy weights were pretrained with config {recorded} but the current default toy config is "
            f"{current}; re-pretrain with: {REPRETRAIN} (then pass --model <its output folder>)")


@lru_cache(maxsize=1)
def warn_if_stale() -> str | None:
    """Warn once per process when the shipped manifest does not match the current default config."""
    message = stale_message(read_manifest(shipped_dir()))
    if message:
        warnings.warn(message, ToyAssetsWarning, stacklevel=3)
    return message


def resolve_toy_model(model: str | Path) -> Path:
    """``toy`` -> the shipped folder (with the staleness check); anything else -> a local folder."""
    if str(model) == SHIPPED_ID:
        folder = shipped_dir()
        warn_if_stale()
        return folder
    from mapo_bench.models import resolve_model

    return resolve_model(str(model), allow_hub=False)


def evaluator_dir(model: str | Path | None = None) -> Path:
    """The classifier folder of a toy base (``<base>/evaluators``) or a classifier folder itself."""
    folder = resolve_toy_model(model or SHIPPED_ID)
    if (folder / "classifier.json").is_file():
        return folder
    if (folder / "evaluators" / "classifier.json").is_file():
        return folder / "evaluators"
    raise MapoBenchError(f"{folder}: no toy classifier (expected evaluators/classifier.json); run {REPRETRAIN}")
