"""The toy weights shipped inside the package (``mapo_bench/toy/assets/``) and other toy bases.

``toy`` as a model id means the shipped v-prediction base (``assets/``), ``toy-flow`` the shipped
rectified-flow base (``assets/flow/``); any other id is a folder written by ``mapo-bench toy pretrain``
(or a fine-tuned ``unet/`` / LoRA folder over a shipped base). When a shipped manifest's config hash
differs from the current default config of its objective, toy commands warn once with the command that
re-pretrains.
"""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

from mapo_bench.errors import MapoBenchError

ASSETS = Path(__file__).parent / "assets"
ASSETS_FLOW = ASSETS / "flow"  # inside the shipped folder: the one place generated weights live in git
SHIPPED_ID = "toy"
SHIPPED = {"toy": (ASSETS, "v", "recipes/toy/pretrain.yaml"), "toy-flow": (ASSETS_FLOW, "flow", "recipes/toy/pretrain-flow.yaml")}
REPRETRAIN = "mapo-bench toy pretrain --config recipes/toy/pretrain.yaml"


class ToyAssetsWarning(UserWarning):
    """The shipped toy weights were made with another config than the current default."""


def repretrain_command(shipped_id: str = SHIPPED_ID) -> str:
    return f"mapo-bench toy pretrain --config {SHIPPED[shipped_id][2]}"


def shipped_dir(shipped_id: str = SHIPPED_ID) -> Path:
    folder = SHIPPED[shipped_id][0]
    if not (folder / "toy_pipeline.json").is_file():
        raise MapoBenchError(f"{folder}: the shipped {shipped_id} weights are missing; run "
                             f"{repretrain_command(shipped_id)} and pass its output folder as --model")
    check_shipped(shipped_id)
    return folder


CHECKSUMS = "checksums.json"


def base_files(folder: Path) -> list[Path]:
    """The files of a toy base folder that its checksums cover (not a base nested inside it, e.g. flow/)."""
    folder = Path(folder)
    nested = [d for d in folder.iterdir() if d.is_dir() and (d / "toy_pipeline.json").is_file()]
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS
            and not any(d in p.parents for d in nested)]


def write_checksums(folder: Path) -> Path:
    """``folder/checksums.json``: size and SHA-256 of every file of the base (checked when it is loaded)."""
    from mapo_bench.integrity import file_records
    from mapo_bench.io import write_json_atomic

    return write_json_atomic(Path(folder) / CHECKSUMS, {"files": file_records(folder, base_files(folder))})


@cache
def check_shipped(shipped_id: str = SHIPPED_ID) -> None:
    """Once per process: the shipped weights are byte for byte what was published (checksums.json)."""
    from mapo_bench.integrity import file_problems

    folder = SHIPPED[shipped_id][0]
    path = folder / CHECKSUMS
    if not path.is_file():
        raise MapoBenchError(f"{path}: missing; the shipped {shipped_id} weights cannot be checked (reinstall mapo-bench)")
    problems = file_problems(folder, json.loads(path.read_text())["files"], path)
    if problems:
        raise MapoBenchError(f"the shipped {shipped_id} weights are damaged or changed: {problems[0]}; reinstall "
                             f"mapo-bench or run {repretrain_command(shipped_id)}")


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise MapoBenchError(f"{path}: not valid JSON; re-run {REPRETRAIN}") from None


def stale_message(manifest: dict | None, shipped_id: str = SHIPPED_ID) -> str | None:
    """Why the shipped weights no longer match the default toy config, or None when they do."""
    from mapo_bench.toy.config import default_config, toy_config_hash

    current = toy_config_hash(default_config(SHIPPED[shipped_id][1]))
    recorded = (manifest or {}).get("config_hash")
    if recorded == current:
        return None
    return (f"the shipped {shipped_id} weights were pretrained with config {recorded} but the current default "
            f"config is {current}; re-pretrain with: {repretrain_command(shipped_id)} "
            "(then pass --model <its output folder>)")


@cache
def warn_if_stale(shipped_id: str = SHIPPED_ID) -> str | None:
    """Warn once per process when a shipped manifest does not match the current default config."""
    message = stale_message(read_manifest(shipped_dir(shipped_id)), shipped_id)
    if message:
        warnings.warn(message, ToyAssetsWarning, stacklevel=3)
    return message


def resolve_toy_model(model: str | Path) -> Path:
    """``toy`` / ``toy-flow`` -> the shipped folder (with the staleness check); anything else -> a local folder."""
    if str(model) in SHIPPED:
        folder = shipped_dir(str(model))
        warn_if_stale(str(model))
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
