"""Reference-mismatch severity of a preference dataset, measured against the reference model.

DESIGN.md section 5 and docs/severity.md define the measures. For the chosen and the rejected side:
- prefix excess: L_ref(image | plain caption) - L_ref(image | generating prompt), L = the reference's
  denoising error averaged over a fixed seeded grid of timesteps and noises (same grid for both captions);
  also relative to the image's own error under its generating prompt, and that error itself
  (``reference_error``), which tells easy-to-denoise images apart;
- feature distance: KID (primary) and Frechet distance between features of the reference's own
  plain-caption samples and of the side's images;
- the reference's pair accuracy: share of pairs whose chosen image it already denoises better.
A measure whose inputs the dataset lacks is skipped with the reason.
"""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mapo_bench import faults
from mapo_bench.config import SamplerConfig, Seed, StrictModel, config_hash
from mapo_bench.errors import MapoBenchError
from mapo_bench.registry import toy_world

SEVERITY_FILE = "severity.json"


class MismatchConfig(StrictModel):
    """`mapo-bench mismatch`: which dataset, which reference, how big a grid."""

    dataset: Path
    backend: str = "toy"
    reference: str | None = None  # None: the backend's default model (the base the pairs came from)
    dtype: str = "float32"
    device: str = "cpu"
    timesteps: int = Field(8, ge=1, description="grid of evenly spaced timesteps in (0, T)")
    noises: int = Field(2, ge=1, description="noise draws per timestep and image")
    seed: Seed = 0
    max_pairs: int | None = 256
    batch_size: int = 32
    resolution: int | None = None  # None: the images' own size
    reference_samples: int = 128  # plain-caption samples of the reference for the feature distance
    sampler: SamplerConfig | None = None
    features: Literal["auto", "clip", "pixels"] = "auto"  # auto: pixels for toy, CLIP ViT-L/14 otherwise
    feature_model: str = "openai/clip-vit-large-patch14"
    resamples: int = 1000
    out: Path | None = None  # None: <dataset>/severity.json
    backend_options: dict[str, Any] = Field(default_factory=dict, description="options of the backend's load (e.g. sd3: {text_encoder_3: null}; flux: {guidance: 3.5}; flow families: weighting_scheme, loss_weighting)")


def read_pairs(folder: Path, max_pairs: int | None) -> Any:
    """The dataset's non-tie rows as a DataFrame with a ``chosen`` index (0 or 1); first ``max_pairs``."""
    import pandas as pd
    import pyarrow.parquet as pq

    from mapo_bench.data.schema import PICKAPIC_COLUMNS
    from mapo_bench.data.validate import find_shards

    files = find_shards(folder)
    if not files:
        raise MapoBenchError(f"{folder}: no parquet shards found (expected {folder}/data/train-*.parquet)")
    available = set(pq.read_schema(files[0]).names)
    for column in PICKAPIC_COLUMNS:
        if column not in available:
            raise MapoBenchError(f"{files[0]}: column {column!r} missing; is this a Pick-a-Pic layout dataset?")
    columns = [*PICKAPIC_COLUMNS, *(c for c in ("prompt_0", "prompt_1") if c in available)]
    parts, kept = [], 0
    for file in files:  # shard by shard, stopping once max_pairs non-tie rows are in (Pick-a-Pic v2: ~1M rows)
        part = pd.read_parquet(file, columns=columns)
        part = part[part["label_0"].astype(float) != part["label_1"].astype(float)]
        parts.append(part)
        kept += len(part)
        if max_pairs and kept >= max_pairs:
            break
    frame = pd.concat(parts, ignore_index=True)
    frame["chosen"] = (frame["label_1"].astype(float) > frame["label_0"].astype(float)).astype(int)
    return frame.iloc[:max_pairs] if max_pairs else frame


def decode(png: bytes, resolution: int | None) -> Any:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if resolution and image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.BICUBIC)
    return image


def to_pixels(images: list[Any]) -> Any:
    """PIL images -> (N, 3, H, W) float tensor in [-1, 1]."""
    import numpy as np
    import torch

    array = np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def grid_errors(backend: Any, images: list[Any], captions: list[str], cfg: MismatchConfig,
                pair_ids: list[int]) -> Any:
    """(N,) reference denoising error of each image under its caption, averaged over the fixed grid.

    The grid (timesteps evenly spaced in (0, T); noise k of pair i seeded by (seed, i, k)) depends only
    on the pair, so both images of a pair, under every caption, see the same noises (paired comparisons).
    """
    import torch

    from mapo_bench.losses import per_sample_error

    pixels = to_pixels(images)
    with torch.no_grad():
        mean, std = backend.latent_distribution(pixels)
        latents = backend.latents_from_distribution(mean, torch.zeros_like(std), None)
        cond = backend.encode_prompts(captions)
        size = images[0].size
        cond.update(backend.image_conditioning([(size[1], size[0])] * len(images), [(0, 0)] * len(images),
                                               (size[1], size[0])))
        steps = backend.severity_timesteps(cfg.timesteps)
        total = torch.zeros(len(images))
        for k_t, t in enumerate(steps):
            for k_n in range(cfg.noises):
                noise = torch.stack([
                    torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(
                        hash_seed(cfg.seed, pair_id, k_t * cfg.noises + k_n)))
                    for pair_id in pair_ids]).to(latents.device, latents.dtype)
                timesteps = backend.timestep_tensor(t, len(images), latents.device)
                noisy = backend.add_noise(latents, noise, timesteps)
                pred = backend.predict(backend.denoiser, noisy, timesteps, cond)
                total += per_sample_error(pred, backend.target(latents, noise, timesteps)).cpu()
    return (total / (cfg.timesteps * cfg.noises)).numpy()


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes (no Python hash randomization)."""
    import hashlib

    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def feature_kind(features: str, backend: str) -> str:
    """The feature space of the feature distance: ``features`` as given, "auto" = pixels on the toy, else CLIP."""
    return features if features != "auto" else ("pixels" if toy_world(backend) else "clip")


@functools.cache
def _clip(model_id: str) -> tuple[Any, Any]:
    """The CLIP model and image processor, loaded once per process (a report reads many sample folders)."""
    from transformers import CLIPImageProcessor, CLIPModel

    from mapo_bench.models import resolve_model

    path = str(resolve_model(model_id))
    return CLIPModel.from_pretrained(path).eval(), CLIPImageProcessor.from_pretrained(path)


def image_features(images: list[Any], kind: str, model_id: str, batch_size: int = 64) -> Any:
    """Fixed features for the feature distance: 8x8 area-pooled pixels (toy) or CLIP image embeddings,
    ``batch_size`` images per CLIP forward."""
    import numpy as np

    if kind == "pixels":
        pooled = [np.asarray(im.resize((8, 8), resample=4), dtype=np.float64).ravel() / 255.0 for im in images]
        return np.stack(pooled)
    import torch

    model, processor = _clip(model_id)
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out = model.get_image_features(**processor(images=images[start:start + batch_size], return_tensors="pt"))
            parts.append(getattr(out, "pooler_output", out))
    return torch.nn.functional.normalize(torch.cat(parts).float(), dim=-1).numpy().astype(np.float64)


def measure_mismatch(cfg: MismatchConfig) -> Path:
    """Measure every severity measure of ``cfg.dataset`` and write ``severity.json`` (+ ``severity.md``)."""
    import numpy as np

    from mapo_bench.backends import load_backend
    from mapo_bench.io import Stopwatch, make_manifest, write_text_atomic
    from mapo_bench.launch import distributed_rank, wait_for_everyone
    from mapo_bench.severity_math import bootstrap_interval, frechet_distance, kid, kid_interval

    out = cfg.out or cfg.dataset / SEVERITY_FILE
    if distributed_rank()[0] != 0:  # under a launcher rank 0 measures (one small seeded pass); the rest wait
        wait_for_everyone()
        return Path(out)
    watch = Stopwatch()
    frame = read_pairs(cfg.dataset, cfg.max_pairs)
    if len(frame) < 2:
        raise MapoBenchError(f"{cfg.dataset}: {len(frame)} non-tie pairs; severity needs at least 2")
    with watch.time("load"):
        backend = load_backend(cfg.backend, cfg.reference, dtype=cfg.dtype, device=cfg.device, **cfg.backend_options)
    images = {side: [decode(frame.iloc[i][f"jpg_{side}"], cfg.resolution) for i in range(len(frame))] for side in (0, 1)}
    has_prompts = {"prompt_0", "prompt_1"} <= set(frame.columns)
    errors: dict[str, np.ndarray] = {}
    with watch.time("denoising_errors"):
        for side in (0, 1):
            for which in ("plain", "prompt") if has_prompts else ("plain",):
                captions = list(frame["caption"] if which == "plain" else frame[f"prompt_{side}"].fillna(frame["caption"]))
                parts = []
                for start in range(0, len(frame), cfg.batch_size):
                    stop = start + cfg.batch_size
                    parts.append(grid_errors(backend, images[side][start:stop], captions[start:stop], cfg,
                                             pair_ids=list(range(start, min(stop, len(frame))))))
                errors[f"{which}_{side}"] = np.concatenate(parts)
    chosen = frame["chosen"].to_numpy()
    rows = np.arange(len(frame))

    def by_role(name: str, role: str) -> np.ndarray:
        pick = chosen if role == "chosen" else 1 - chosen
        return np.stack([errors[f"{name}_0"], errors[f"{name}_1"]], axis=1)[rows, pick]

    measures: dict[str, Any] = {"n_pairs": int(len(frame)), "skipped": {}}
    if has_prompts:  # a given image (from-images) has a null generating prompt
        errors["given_0"], errors["given_1"] = (frame[f"prompt_{side}"].isna().to_numpy() for side in (0, 1))
    for role in ("chosen", "rejected"):
        if has_prompts and by_role("given", role).any():
            measures["skipped"][f"prefix_excess_{role}"] = (
                "some images of this side were given, not generated (from-images: null prompt_0/prompt_1), "
                "so they have no generating prompt to measure the excess against")
        elif has_prompts:
            prompted = by_role("prompt", role)
            excess = by_role("plain", role) - prompted
            lo, hi = bootstrap_interval(excess, resamples=cfg.resamples, seed=cfg.seed)
            measures[f"prefix_excess_{role}"] = {"value": float(excess.mean()), "ci_low": lo, "ci_high": hi}
            # Divided by the image's own error under its generating prompt: flat, easy-to-denoise images
            # (full cartoon) have small errors under any caption, which shrinks the raw excess.
            relative = excess / np.maximum(prompted, 1e-12)
            lo, hi = bootstrap_interval(relative, resamples=cfg.resamples, seed=cfg.seed)
            measures[f"prefix_excess_relative_{role}"] = {"value": float(relative.mean()), "ci_low": lo, "ci_high": hi}
            lo, hi = bootstrap_interval(prompted, resamples=cfg.resamples, seed=cfg.seed)
            measures[f"reference_error_{role}"] = {"value": float(prompted.mean()), "ci_low": lo, "ci_high": hi}
        else:
            measures["skipped"][f"prefix_excess_{role}"] = "the dataset has no prompt_0/prompt_1 columns"
    correct = (by_role("plain", "chosen") < by_role("plain", "rejected")).astype(float)
    lo, hi = bootstrap_interval(correct, resamples=cfg.resamples, seed=cfg.seed)
    measures["reference_pair_accuracy"] = {"value": float(correct.mean()), "ci_low": lo, "ci_high": hi}
    with watch.time("feature_distance"):
        kind = feature_kind(cfg.features, cfg.backend)
        captions = list(frame["caption"])
        n_ref = min(cfg.reference_samples, max(len(frame), 2))
        ref_captions = [captions[i % len(captions)] for i in range(n_ref)]
        ref_images = []
        sampler = cfg.sampler or backend.default_sampler
        for start in range(0, n_ref, cfg.batch_size):
            batch = ref_captions[start:start + cfg.batch_size]
            ref_images += backend.generate(batch, [hash_seed(cfg.seed, 7, start + i) % 2**31 for i in range(len(batch))],
                                           sampler)
        faults.point("mismatch:after-reference")
        size = images[0][0].size
        ref_images = [im.resize(size) if im.size != size else im for im in ref_images]
        ref_features = image_features(ref_images, kind, cfg.feature_model)
        for role in ("chosen", "rejected"):
            side_images = [images[int(c if role == "chosen" else 1 - c)][i] for i, c in enumerate(chosen)]
            feats = image_features(side_images, kind, cfg.feature_model)
            lo, hi = kid_interval(ref_features, feats, resamples=min(cfg.resamples, 200), seed=cfg.seed)
            measures[f"kid_{role}"] = {"value": kid(ref_features, feats), "ci_low": lo, "ci_high": hi}
            measures[f"frechet_{role}"] = {"value": frechet_distance(ref_features, feats)}
        measures["feature_extractor"] = kind if kind == "pixels" else f"clip:{cfg.feature_model}"
    dataset_manifest = _dataset_manifest(cfg.dataset)
    record = make_manifest(cfg, config_hash(cfg), counts={"pairs": int(len(frame)), "reference_samples": n_ref},
                           timings=watch.timings, measures=measures, reference=backend_record(backend),
                           task=dataset_manifest.get("task"), prefixed_side=prefixed_side(dataset_manifest))
    from mapo_bench.integrity import write_manifest

    faults.point("mismatch:before-write")
    summary = write_text_atomic(Path(out).with_suffix(".md"), severity_markdown(measures, cfg.dataset))
    write_manifest(Path(out), record, summary.parent, [summary])
    wait_for_everyone()
    return Path(out)


def backend_record(backend: Any) -> dict[str, Any]:
    return backend.record() if hasattr(backend, "record") else {"backend": getattr(backend, "name", "?")}


def _dataset_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text())
    config = manifest.get("config", {})
    return {"task": config.get("task"), "split": config.get("split"), **manifest}


def prefixed_side(dataset_manifest: dict[str, Any]) -> str | None:
    """Which side carries the prefix: chosen for Pick-Style-like data, rejected for Pick-Safety-like data."""
    task = dataset_manifest.get("task")
    return {"pick-style": "chosen", "pick-safety": "rejected"}.get(task or "", None)


def severity_markdown(measures: dict[str, Any], dataset: Path) -> str:
    lines = [f"# Mismatch severity of `{dataset}`", "", f"n pairs: {measures['n_pairs']}", "",
             "| measure | value | 95% CI |", "|---|---|---|"]
    for name, value in measures.items():
        if isinstance(value, dict) and "value" in value:
            ci = f"[{value['ci_low']:.5g}, {value['ci_high']:.5g}]" if "ci_low" in value else "-"
            lines.append(f"| {name} | {value['value']:.5g} | {ci} |")
    for name, reason in measures.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {reason} | - |")
    return "\n".join(lines) + "\n"
