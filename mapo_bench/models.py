"""One resolver for every model id: a local path, ``$MAPO_BENCH_MODEL_ROOT/<hub id>``, or the hub.

Offline (no network here, ``HF_HUB_OFFLINE=1`` in tests) or missing, it fails within seconds with
one line that names the id and both ways to supply it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mapo_bench.errors import ModelNotFoundError

MODEL_ROOT_VAR = "MAPO_BENCH_MODEL_ROOT"
HUB_TIMEOUT_S = "5"
# Hub repos of SD models also carry Flax, TF, ONNX, OpenVINO and single-file checkpoints: skip them.
NON_PYTORCH_WEIGHTS = ["*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb", "*openvino*", "*.ckpt",
                       "*.fp16.safetensors", "*.fp16.bin"]


def _missing(model_id: str, reason: str) -> ModelNotFoundError:
    root = os.environ.get(MODEL_ROOT_VAR)
    where = f"{root}/{model_id}" if root else f"${MODEL_ROOT_VAR}/{model_id}"
    return ModelNotFoundError(
        f"model {model_id!r} is not available ({reason}): pass a local folder as the model "
        f"(e.g. --model /path/to/{Path(model_id).name}) or put a copy at {where}"
    )


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name


def looks_like_path(model_id: str) -> bool:
    return model_id.startswith((".", "/", "~")) or os.sep in model_id and Path(model_id).exists()


def resolve_model(model_id: str, allow_hub: bool = True, filename: str | None = None,
                  allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None) -> Path:
    """The local folder (or file, with ``filename``) holding ``model_id``.

    Order: an existing local path; ``$MAPO_BENCH_MODEL_ROOT/<id>``; the hub cache or hub download
    (short timeouts). Raises :class:`ModelNotFoundError` with one line otherwise. ``allow_patterns`` /
    ``ignore_patterns`` limit a whole-repo download (e.g. skip TF / Flax / ONNX copies of the weights).
    """
    path = Path(model_id).expanduser()
    if path.exists():
        return path / filename if filename and path.is_dir() else path
    if model_id.startswith((".", "/", "~")):
        raise _missing(model_id, "no such local path")
    root = os.environ.get(MODEL_ROOT_VAR)
    if root:
        candidate = Path(root).expanduser() / model_id
        if candidate.exists():
            return candidate / filename if filename else candidate
    if not allow_hub:
        raise _missing(model_id, "hub lookups are disabled")
    return _from_hub(model_id, filename, allow_patterns, ignore_patterns)


def _from_hub(model_id: str, filename: str | None, allow_patterns: list[str] | None = None,
              ignore_patterns: list[str] | None = None) -> Path:
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", HUB_TIMEOUT_S)
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", HUB_TIMEOUT_S)
    try:
        import huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers/transformers
        raise _missing(model_id, "huggingface_hub is not installed") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        if filename:
            return Path(huggingface_hub.hf_hub_download(model_id, filename, local_files_only=offline))
        return Path(huggingface_hub.snapshot_download(model_id, local_files_only=offline, allow_patterns=allow_patterns,
                                                      ignore_patterns=ignore_patterns))
    except (HfHubHTTPError, OSError, ValueError) as exc:
        reason = "offline and not in the local cache" if offline else f"hub: {type(exc).__name__}"
        raise _missing(model_id, reason) from None
    except Exception as exc:  # noqa: BLE001 - network stacks raise many types; the user needs one line
        raise _missing(model_id, f"hub: {type(exc).__name__}") from None


def resolve_pipeline(model_id: str, ignore_patterns: list[str] | None = None,
                     skip_components: tuple[str, ...] = ()) -> Path:
    """A diffusers pipeline folder. Local folders (and ``$MAPO_BENCH_MODEL_ROOT`` copies) as they are; from
    the hub, ``model_index.json`` first, then only the folders of the components it names (less
    ``skip_components``, e.g. a T5 encoder the recipe drops): SD3.5 and FLUX repositories also hold
    root-level single-file checkpoints (``flux1-dev.safetensors``, 24 GB) that the diffusers layout never
    reads."""
    import json

    path = Path(model_id).expanduser()
    root = os.environ.get(MODEL_ROOT_VAR)
    if path.exists() or model_id.startswith((".", "/", "~")) or (root and (Path(root).expanduser() / model_id).exists()):
        return resolve_model(model_id)
    index_file = resolve_model(model_id, filename="model_index.json")
    try:
        index = json.loads(Path(index_file).read_text())
    except (OSError, ValueError):
        raise _missing(model_id, "its model_index.json is unreadable") from None
    components = sorted(name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
                        and value and value[0] is not None and name not in skip_components)
    return resolve_model(model_id, allow_patterns=["model_index.json", *(f"{c}/*" for c in components)],
                         ignore_patterns=ignore_patterns)
