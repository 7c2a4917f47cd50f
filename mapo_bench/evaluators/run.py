"""``mapo-bench eval``: score sample folders with registry metrics -> ``scores.parquet`` + summary tables.

Outputs (written together, atomically, into ``cfg.out``):

- ``scores.parquet``: long format, one row per image and metric: image_id, prompt_id, prompt, seed,
  model, metric, metric_version, score, higher_is_better
- ``summary.csv`` / ``summary.md`` / ``summary.json``: mean, std, n per model and metric, plus
  ``reported`` (the mean, or max(mean, 0) for ``clip`` as torchmetrics reports it)
- ``manifest.json``: config, hash (of the config and the sample indexes), counts, timings

A folder whose manifest matches is returned as is. Images are scored batch by batch, every metric on
the same batch, so ``aesthetic``, ``clip`` and ``style`` reuse one ViT-L/14 embedding per image.
Under ``accelerate launch`` each process scores its share of the images and the main process merges.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench import faults
from mapo_bench.config import config_hash
from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.base import Evaluator, ScoreContext
from mapo_bench.evaluators.config import EvalConfig
from mapo_bench.io import (
    MANIFEST,
    Stopwatch,
    atomic_dir,
    make_manifest,
    manifest_matches,
    one_writer,
    write_json_atomic,
    write_text_atomic,
)
from mapo_bench.progress import quiet
from mapo_bench.threads import on_cpu

SCORE_COLUMNS = ("image_id", "prompt_id", "prompt", "seed", "model", "metric", "metric_version", "score",
                 "higher_is_better")
SUMMARY_COLUMNS = ("model", "metric", "metric_version", "mean", "std", "n", "reported", "higher_is_better")
SUMMARY_SCHEMA_VERSION = 1


def collect_images(folders: list[Path]) -> Any:
    """One table of every image of the sample folders, with an absolute ``path`` and an ``image_id``."""
    import pandas as pd

    from mapo_bench.sampling import read_index

    if not folders:
        raise MapoBenchError("eval: key 'images': give at least one sample folder (e.g. --images samples/base)")
    from mapo_bench.data.imagefolder import folder_index

    frames = []
    for folder in folders:
        # a folder of `mapo-bench sample` (index.parquet) or any imagefolder with captions (metadata.jsonl)
        if (Path(folder) / "index.parquet").is_file() or not (Path(folder) / "metadata.jsonl").is_file():
            frame = read_index(folder).copy()
        else:
            frame = folder_index(folder)
        frame["path"] = [str(Path(folder) / f) for f in frame["file"]]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table["image_id"] = table["model"].astype(str) + "/" + table["file"].map(lambda f: Path(f).stem)
    dup = table.duplicated(["model", "prompt_id", "seed"])
    if dup.any():
        row = table[dup].iloc[0]
        raise MapoBenchError(f"eval: model {row['model']!r} has two images for prompt_id {row['prompt_id']} seed "
                             f"{row['seed']} (folder {Path(row['path']).parent.parent}); give each model's samples once "
                             "or set model_name when sampling")
    return table


def inputs_hash(cfg: EvalConfig) -> str:
    """Config hash plus the bytes of every sample index (re-sampled images change the hash)."""
    digest = hashlib.sha256(config_hash(cfg, exclude={"out", "device", "batch_size", "overwrite"}).encode())
    for folder in cfg.images:
        index = Path(folder) / "index.parquet"
        if index.is_file():
            digest.update(index.read_bytes())
        else:  # an imagefolder: its metadata and every image's bytes
            from mapo_bench.integrity import file_records

            digest.update(json.dumps(file_records(Path(folder)), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def load_options(cfg: EvalConfig, name: str) -> dict[str, Any]:
    """Load options of metric ``name``: ``models[name]`` as ``model``, the subject's images for the metrics
    that read them, ``options[name]`` (which wins), hps version."""
    from mapo_bench.registry import EVALUATORS

    options: dict[str, Any] = {}
    if name == "hps":
        options["version"] = cfg.hps_version
    if name in cfg.models:
        options["model"] = cfg.models[name]
    if cfg.subject_images is not None and EVALUATORS.get(name).reads_subject:
        options["subject_images"] = str(cfg.subject_images)
    options.update(cfg.options.get(name, {}))
    return options


def load_evaluators(cfg: EvalConfig, device: str) -> dict[str, Evaluator]:
    from mapo_bench.registry import EVALUATORS

    return {name: EVALUATORS.get(name).load(device=device, dtype=cfg.dtype, **load_options(cfg, name))
            for name in cfg.metrics}


def score_table(table: Any, evaluators: dict[str, Evaluator], context: ScoreContext, batch_size: int,
                show: bool = True) -> Any:
    """Long-format scores of every image in ``table`` under every evaluator."""
    import pandas as pd
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns: dict[str, list[Any]] = {c: [] for c in SCORE_COLUMNS}
    with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not show) as progress:
        task = progress.add_task("eval", total=len(table))
        for start in range(0, len(table), batch_size):
            batch = table.iloc[start:start + batch_size]
            images = [_open(path) for path in batch["path"]]
            prompts = [str(p) for p in batch["prompt"]]
            for name, evaluator in evaluators.items():
                scores = np.asarray(evaluator.score(images, prompts, context), dtype=np.float64).reshape(-1)
                if len(scores) != len(batch) or not np.isfinite(scores).all():
                    raise MapoBenchError(f"metric {name!r} returned {len(scores)} scores (finite: "
                                         f"{bool(np.isfinite(scores).all())}) for {len(batch)} images")
                columns["image_id"] += list(batch["image_id"])
                columns["prompt_id"] += [int(v) for v in batch["prompt_id"]]
                columns["prompt"] += prompts
                columns["seed"] += [int(v) for v in batch["seed"]]
                columns["model"] += [str(v) for v in batch["model"]]
                columns["metric"] += [name] * len(batch)
                columns["metric_version"] += [str(evaluator.version)] * len(batch)
                columns["score"] += scores.tolist()
                columns["higher_is_better"] += [bool(evaluator.higher_is_better)] * len(batch)
            progress.advance(task, len(batch))
            faults.point("eval:after-batch")
    return pd.DataFrame(columns)


def _open(path: str) -> Any:
    from PIL import Image

    from mapo_bench.data.imagefolder import load_upright_rgb

    try:
        return load_upright_rgb(Path(path))[0]
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MapoBenchError(f"{path}: cannot read the image ({type(exc).__name__}); resample this folder") from None


def summarize(scores: Any, clamp: set[str] | None = None) -> Any:
    """Mean, std (ddof 1; NaN for one image), n per (model, metric); ``reported`` clamps ``clamp`` metrics at 0."""
    import pandas as pd

    clamp = clamp if clamp is not None else {"clip"}
    if scores.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    grouped = scores.groupby(["model", "metric"], sort=True)
    summary = grouped.agg(metric_version=("metric_version", "first"), mean=("score", "mean"),
                          std=("score", "std"), n=("score", "size"),
                          higher_is_better=("higher_is_better", "first")).reset_index()
    summary["reported"] = [max(m, 0.0) if metric in clamp else m for m, metric in zip(summary["mean"], summary["metric"], strict=True)]
    return summary[list(SUMMARY_COLUMNS)]


def markdown_table(frame: Any, digits: int = 4) -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "nan" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


@one_writer("eval", lambda cfg: cfg.out)
def evaluate(cfg: EvalConfig) -> Path:
    """Score ``cfg.images`` with ``cfg.metrics``; returns ``cfg.out``."""
    from accelerate import PartialState

    from mapo_bench.evaluators import backbones

    out = Path(cfg.out)
    for name in ("style", "toy-style"):
        if name in cfg.metrics and not (cfg.target_style and (cfg.base_style or name == "toy-style")):
            raise MapoBenchError(f"eval: metric {name!r} needs target_style and base_style (e.g. target_style="
                                 "'a Disney style animated image' base_style='a realistic photo'; toy: cartoon / photo)")
    table = collect_images(list(cfg.images))
    digest = inputs_hash(cfg)
    if not cfg.overwrite and manifest_matches(out, digest):
        return out
    state = PartialState(cpu=on_cpu(cfg.device))
    device = cfg.device or str(state.device)
    context = ScoreContext(task=cfg.task, target_style=cfg.target_style, base_style=cfg.base_style,
                           subject_images=str(cfg.subject_images) if cfg.subject_images else None)
    watch = Stopwatch()
    try:
        with watch.time("load"):
            evaluators = load_evaluators(cfg, device)
        with watch.time("score"):
            part = score_table(table.iloc[state.process_index::state.num_processes], evaluators, context,
                               cfg.batch_size, show=state.is_main_process and not quiet())
    finally:
        backbones.clear()
    scores = _gather(part, out, state)
    if state.is_main_process:
        order = {name: i for i, name in enumerate(cfg.metrics)}
        scores = scores.sort_values(["model", "prompt_id", "seed", "metric"],
                                    key=lambda col: col.map(order) if col.name == "metric" else col,
                                    kind="stable").reset_index(drop=True)
        _write_outputs(cfg, scores, out, digest, watch.timings, len(table))
    state.wait_for_everyone()
    return out


def _gather(part: Any, out: Path, state: Any) -> Any:
    """All processes' scores on the main process (through parquet files beside ``out``)."""
    import pandas as pd

    if state.num_processes == 1:
        return part
    staging = out.parent / f".{out.name}.parts"
    staging.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    part.to_parquet(buffer, index=False)
    from mapo_bench.io import write_bytes_atomic

    write_bytes_atomic(staging / f"part-{state.process_index:05d}.parquet", buffer.getvalue())
    state.wait_for_everyone()
    if not state.is_main_process:
        return part
    merged = pd.concat([pd.read_parquet(staging / f"part-{k:05d}.parquet") for k in range(state.num_processes)],
                       ignore_index=True)
    shutil.rmtree(staging, ignore_errors=True)
    return merged


def _write_outputs(cfg: EvalConfig, scores: Any, out: Path, digest: str, timings: dict[str, float],
                   images: int) -> None:
    summary = summarize(scores)
    with atomic_dir(out, overwrite=True, written_by="scores.parquet") as tmp:
        scores.to_parquet(tmp / "scores.parquet", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        write_text_atomic(tmp / "summary.md", markdown_table(summary))
        rows = json.loads(summary.to_json(orient="records"))
        write_json_atomic(tmp / "summary.json", {"schema_version": SUMMARY_SCHEMA_VERSION, "rows": rows,
                                                 "note": "clip: reported = max(mean, 0) (torchmetrics convention); "
                                                         "scores compare within a prompt only"})
        counts = {"images": images, "metrics": len(cfg.metrics), "rows": len(scores)}
        from mapo_bench.integrity import write_manifest

        write_manifest(tmp / MANIFEST, make_manifest(cfg, digest, counts, timings, context={
            "task": cfg.task, "target_style": cfg.target_style, "base_style": cfg.base_style}), tmp)
        faults.point("eval:before-rename", out / "scores.parquet")
