"""Shared CLIP backbones: each loaded once per (weights, device, dtype), embeddings cached per image.

``aesthetic``, ``clip`` and ``style`` all read the OpenAI ViT-L/14 image embedding
(REFERENCE.md section 4); they get the same :class:`ClipBackbone` object from :func:`clip_backbone`, whose
image-embedding cache is keyed by the image's pixels, so the vision tower runs once per image however
many of these metrics a run asks for. :func:`clear` drops models and caches (the eval stage calls it
when it ends).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mapo_bench.dtypes import resolve_dtype
from mapo_bench.models import resolve_model

VIT_L14 = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_BACKBONES: dict[tuple[str, ...], ClipBackbone] = {}


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> cuda when available, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def features(output: Any) -> torch.Tensor:
    """The embedding tensor of ``get_image_features`` / ``get_text_features``.

    transformers < 5 returns the projected embedding as a tensor; transformers >= 5 returns an output
    object whose ``pooler_output`` holds it.
    """
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP feature output {type(output).__name__}: no pooler_output")
    return pooled


def image_key(image: Any) -> bytes:
    """A digest of an image's mode, size and pixels: equal images share a cache entry."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.digest()


def rgb(images: list[Any]) -> list[Any]:
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


class ClipBackbone:
    """A transformers ``CLIPModel`` with its processor; embeddings in float32, cached per image/text.

    The cached values are the un-normalized projected embeddings (``get_image_features``), so every
    metric normalizes the same way on its own.
    """

    def __init__(self, model: Any, processor: Any, device: torch.device, dtype: torch.dtype, name: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.name = name
        self._images: dict[bytes, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}
        self.image_forwards = 0  # images sent through the vision tower (for tests and benchmarks)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()

    @torch.no_grad()
    def image_embeds(self, images: list[Any]) -> torch.Tensor:
        """``(N, D)`` float32 projected image embeddings (cached by pixels)."""
        keys = [image_key(im) for im in images]
        missing: dict[bytes, Any] = {}
        for key, image in zip(keys, images, strict=True):
            if key not in self._images and key not in missing:
                missing[key] = image
        if missing:
            batch = self.processor(images=rgb(list(missing.values())), return_tensors="pt")
            pixels = batch["pixel_values"].to(self.device, self.dtype)
            embeds = features(self.model.get_image_features(pixel_values=pixels)).float().cpu()
            self.image_forwards += len(missing)
            for key, row in zip(missing, embeds, strict=True):
                self._images[key] = row
        return torch.stack([self._images[key] for key in keys])

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """``(N, D)`` float32 projected text embeddings; text truncated to 77 tokens (cached by string)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
        if missing:
            tokenizer = getattr(self.processor, "tokenizer", self.processor)
            tokens = tokenizer(missing, padding=True, truncation=True, max_length=77, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            embeds = features(self.model.get_text_features(**tokens)).float().cpu()
            for text, row in zip(missing, embeds, strict=True):
                self._texts[text] = row
        return torch.stack([self._texts[t] for t in texts])

    def clear_cache(self) -> None:
        self._images.clear()
        self._texts.clear()


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CONFIG_FILES = ("config.json",)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "vocab.json", "merges.txt", "special_tokens_map.json")


def resolve_folder(model_id: str, required: tuple[str, ...], either: tuple[str, ...] = (),
                   optional: tuple[str, ...] = ()) -> Path:
    """The local folder of ``model_id``, fetching from the hub only the files named here.

    A local path or ``$MAPO_BENCH_MODEL_ROOT/<id>`` is used as is. Otherwise each file goes through
    :func:`resolve_model` one by one, so a hub repo that also ships TF / Flax / duplicate PyTorch
    weights costs one copy of the weights, not all of them. ``either``: at least one of these.
    """
    from mapo_bench.errors import ModelNotFoundError

    try:
        return resolve_model(model_id, allow_hub=False)
    except ModelNotFoundError:
        pass
    folder = None
    for name in required:
        folder = resolve_model(model_id, filename=name).parent
    found_either = not either
    for name in either:
        try:
            path = resolve_model(model_id, filename=name)
        except ModelNotFoundError:
            continue
        folder, found_either = path.parent, True
        if name.endswith(".index.json"):  # sharded weights: fetch every shard the index names
            import json

            for shard in sorted(set(json.loads(path.read_text()).get("weight_map", {}).values())):
                resolve_model(model_id, filename=shard)
        break
    if not found_either:
        raise ModelNotFoundError(f"model {model_id!r}: none of {', '.join(either)} could be fetched")
    for name in optional:
        try:
            resolve_model(model_id, filename=name)
        except ModelNotFoundError:
            continue
    assert folder is not None
    return folder


def _load_processor(model_path: Path, processor: str | None) -> Any:
    from transformers import CLIPProcessor

    source = resolve_folder(processor, (), either=PROCESSOR_FILES[:2], optional=PROCESSOR_FILES[2:]) \
        if processor else model_path
    return CLIPProcessor.from_pretrained(str(source))


def clip_backbone(model: str = VIT_L14, device: str | torch.device | None = None, dtype: str = "float32",
                  processor: str | None = None) -> ClipBackbone:
    """The shared backbone for ``model`` (hub id or local folder), loaded on first use.

    ``processor``: where the CLIP processor lives when the model folder has none (PickScore's
    weights come without one: its processor is LAION's ViT-H/14).
    """
    device = resolve_device(str(device) if device is not None else None)
    torch_type = resolve_dtype(dtype)
    optional = () if processor else PROCESSOR_FILES
    path = resolve_folder(model, CONFIG_FILES, either=WEIGHT_FILES, optional=optional)
    key = (str(path.resolve()), str(processor), str(device), str(torch_type))
    if key not in _BACKBONES:
        from transformers import CLIPModel

        clip = CLIPModel.from_pretrained(str(path), torch_dtype=torch_type)
        clip.to(device).eval()
        _BACKBONES[key] = ClipBackbone(clip, _load_processor(path, processor), device, torch_type, model)
    return _BACKBONES[key]


def clear() -> None:
    """Drop every loaded backbone and cached embedding."""
    _BACKBONES.clear()


def to_numpy64(scores: torch.Tensor) -> Any:
    return scores.detach().double().cpu().numpy().reshape(-1)


PROCESSOR_OF_MODEL = "<processor of the model>"


class ClipBackboneEvaluator:
    """Mixin for metrics computed on one shared CLIP backbone (clip, style, pickscore).

    ``default_model`` / ``default_processor`` name the weights; ``load`` resolves them once through
    :func:`clip_backbone`, so metrics on the same model share its forward passes.
    """

    default_model: str = VIT_L14
    default_processor: str | None = None

    def __init__(self, backbone: ClipBackbone) -> None:
        self.backbone = backbone

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str | None = None,
             processor: str | None = PROCESSOR_OF_MODEL, **options: Any) -> Any:
        """``processor``: default = the metric's own; None = the model folder's processor."""
        from mapo_bench.evaluators.base import no_options

        no_options(cls.name, options)  # type: ignore[attr-defined]
        processor = cls.default_processor if processor == PROCESSOR_OF_MODEL else processor
        return cls(clip_backbone(model or cls.default_model, device, dtype, processor))
