"""build-dataset: preference pairs by prefix-prompting a model; batched, sharded, resumable, multi-process.

The plan is a pure function of the config: prompts (seeded sample, stable ids) -> pairs (pair k of
prompt p has pair_id p * pairs_per_prompt + k and draws its noise seed and its jpg_0 side from
SeedSequence((seed, p, k)), never from a running generator) -> shards of ``shard_size`` pairs -> batches
of ``batch_size`` pairs inside a shard. Every process and every restart computes the same batches with
the same composition, so the rows and bytes do not depend on process count or interruptions.

Work unit: shard k is done by process ``k % world_size``. Finished batches are kept in
``.partial/train-0000k/`` and reused on restart; a finished shard is renamed into ``data/`` and its
pieces are removed. The main process then writes ``manifest.json`` and the card ``README.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench import faults
from mapo_bench.data.config import HASH_EXCLUDE, BuildConfig
from mapo_bench.data.prompts import load_prompt_records
from mapo_bench.data.schema import DATA_SUBDIR, PARTIAL_SUBDIR, shard_name
from mapo_bench.data.tasks import Task, task_from_config
from mapo_bench.errors import MapoBenchError
from mapo_bench.io import MANIFEST, make_manifest, one_writer, read_json, write_json_atomic, write_text_atomic
from mapo_bench.progress import quiet

STATE_FILE = "build.json"
BACKEND_RECORD = "backend.json"
CARD = "README.md"
RENDERER_ID = "mapo-bench/toy-renderer"


@dataclass(frozen=True)
class PairSpec:
    """One planned pair: everything its row depends on except the images."""

    pair_id: int
    prompt_id: int
    k: int
    caption: str
    seed: int
    swap: bool  # True: the rejected image goes to jpg_0


def pair_draws(global_seed: int, prompt_id: int, k: int) -> tuple[int, bool]:
    """(noise seed, swap) of pair k of prompt ``prompt_id``: a pure function of the three numbers."""
    state = np.random.SeedSequence([global_seed, prompt_id, k]).generate_state(2, dtype=np.uint32)
    return int(state[0]), bool(state[1] & 1)


def plan_pairs(records: list[tuple[int, str]], pairs_per_prompt: int, global_seed: int) -> list[PairSpec]:
    pairs = []
    for prompt_id, caption in records:
        for k in range(pairs_per_prompt):
            seed, swap = pair_draws(global_seed, prompt_id, k)
            pairs.append(PairSpec(prompt_id * pairs_per_prompt + k, prompt_id, k, caption, seed, swap))
    return pairs


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def encode_image(image: Any, image_format: str) -> bytes:
    """PNG (lossless) or JPEG quality 95 without chroma subsampling (DESIGN.md section 7)."""
    buffer = io.BytesIO()
    image = image.convert("RGB")
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def pair_row(spec: PairSpec, prompts: tuple[str | None, str], images: tuple[Any, Any], image_format: str,
             model_id: str, task_label: str, sampler_json: str,
             labels: tuple[float, float] = (1.0, 0.0)) -> dict[str, Any]:
    """The Pick-a-Pic row of one pair; ``prompts`` / ``images`` / ``labels`` are (chosen, rejected)."""
    sides = [(prompts[0], images[0], labels[0]), (prompts[1], images[1], labels[1])]
    if spec.swap:
        sides.reverse()
    return {
        "caption": spec.caption,
        "jpg_0": encode_image(sides[0][1], image_format), "jpg_1": encode_image(sides[1][1], image_format),
        "label_0": sides[0][2], "label_1": sides[1][2],
        "prompt_0": sides[0][0], "prompt_1": sides[1][0],
        "seed": spec.seed, "model_id": model_id, "task": task_label, "pair_id": spec.pair_id, "sampler": sampler_json,
    }


# -- parquet -----------------------------------------------------------------------------------------
def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows -> one parquet file, written atomically (never a half-written file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mapo_bench.data.schema import arrow_schema
    from mapo_bench.io import write_bytes_atomic

    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), buffer, row_group_size=64)
    write_bytes_atomic(path, buffer.getvalue().to_pybytes())


def read_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def read_shard(path: Path, columns: list[str] | None = None) -> Any:
    """A shard or piece as an Arrow table; None if it cannot be read (then it is redone)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=columns)
        table.column("pair_id")  # KeyError: not one of our shards
        return table
    except Exception:  # noqa: BLE001 - a truncated or foreign file is simply not done
        return None


def pair_ids_of(table: Any) -> list[int] | None:
    return None if table is None else [int(x) for x in table.column("pair_id").to_pylist()]


def read_pair_ids(path: Path) -> list[int] | None:
    """The pair_id column of a shard or piece; None if the file cannot be read (then it is redone)."""
    return pair_ids_of(read_shard(path, ["pair_id"]))


# -- folder state ------------------------------------------------------------------------------------
def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted((set(old) | set(new)) - HASH_EXCLUDE)
    return [k for k in keys if old.get(k) != new.get(k)]


def _looks_like_build(out: Path) -> bool:
    return ((out / MANIFEST).is_file() or (out / PARTIAL_SUBDIR / STATE_FILE).is_file()
            or any((out / DATA_SUBDIR).glob("train-*.parquet")))


def _has_pairs(out: Path) -> bool:
    """Whether any finished shard or batch piece exists (work a config change would throw away)."""
    return any((out / DATA_SUBDIR).glob("*.parquet")) or any((out / PARTIAL_SUBDIR).glob("*/batch-*.parquet"))


def prepare_folder(out: Path, cfg: BuildConfig, chash: str, content_digest: str | None = None) -> str:
    """Main process: 'done' (complete build with this config), 'resume' or 'fresh'. Errors on mismatch."""
    if cfg.overwrite and out.exists():
        if any(out.iterdir()) and not _looks_like_build(out):
            raise MapoBenchError(f"{out} is not a dataset folder (no manifest.json, data/ or .partial/); "
                                 "refusing to delete it with --overwrite; choose another --out")
        shutil.rmtree(out)
    state_path = out / PARTIAL_SUBDIR / STATE_FILE
    new = cfg.model_dump(mode="json")
    if state_path.is_file() and not (out / MANIFEST).is_file() and not _has_pairs(out):
        # An unfinished build that never finished a batch (e.g. a wrong --model): nothing to keep.
        if read_json(state_path).get("config_hash") != chash:
            shutil.rmtree(out)
    for path, what in ((out / MANIFEST, "a dataset"), (state_path, "an unfinished build")):
        if path.is_file():
            stored = read_json(path)
            if stored.get("config_hash") == chash:
                return "done" if path.name == MANIFEST else "resume"
            diff = _config_diff(stored.get("config", {}), new)
            if stored.get("content_digest") != content_digest:
                diff.append("the content of the image folder")
            raise MapoBenchError(
                f"{out} holds {what} made with a different config (differs in: {', '.join(diff) or 'versions'}); "
                "rerun with the same arguments to resume, pass --overwrite to start over, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise MapoBenchError(f"{out} exists and is not an unfinished build of this config; "
                             "pass --overwrite to replace it or choose another --out")
    write_json_atomic(state_path, {"config": new, "config_hash": chash, "content_digest": content_digest})
    return "fresh"


# -- generation --------------------------------------------------------------------------------------
class ImageSource:
    """Images for (prompts, seeds): the loaded backend, or the toy renderer for rendered control pairs."""

    def __init__(self, cfg: BuildConfig, device: str) -> None:
        self.cfg = cfg
        self.device = device
        self.backend: Any = None

    def model_id(self) -> str:
        if self.cfg.pairs == "rendered":
            return RENDERER_ID
        from mapo_bench.registry import BACKENDS

        return self.cfg.model or BACKENDS.get(self.cfg.backend).default_model

    def sampler(self) -> Any:
        if self.cfg.sampler is not None:
            return self.cfg.sampler
        if self.cfg.pairs == "rendered":
            from mapo_bench.config import SamplerConfig

            return SamplerConfig(steps=0, guidance=0.0)
        from mapo_bench.registry import BACKENDS

        return BACKENDS.get(self.cfg.backend).default_sampler

    def record(self) -> dict[str, Any]:
        if self.cfg.pairs == "rendered":
            return {"backend": "toy", "model_id": RENDERER_ID, "pairs": "rendered"}
        self.load()
        return self.backend.record()

    def load(self) -> None:
        if self.backend is not None or self.cfg.pairs == "rendered":
            return
        from mapo_bench.backends import load_backend

        options: dict[str, Any] = {"dtype": self.cfg.dtype, "device": self.device}
        if self.cfg.vae:
            options["vae"] = self.cfg.vae
        self.backend = load_backend(self.cfg.backend, self.model_id(), **options, **self.cfg.backend_options)
        if hasattr(self.backend, "check_gate"):  # the toy base: refuse one that failed its gate (DESIGN.md 6)
            self.backend.check_gate()

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        if self.cfg.pairs == "rendered":
            from mapo_bench.toy.render import render_caption

            return [render_caption(p, s) for p, s in zip(prompts, seeds, strict=True)]
        self.load()
        return list(self.backend.generate(prompts, seeds, self.sampler()))


def generate_batch(generate: ImageSource, task: Task, batch: list[PairSpec], image_format: str, model_id: str,
                   sampler_json: str) -> list[dict[str, Any]]:
    """Chosen and rejected images of a batch in one call; both images of a pair share the pair's seed."""
    pairs = [task.prompts(spec.caption) for spec in batch]
    seeds = [spec.seed for spec in batch]
    n = len(batch)
    if task.gives_chosen:  # chosen images are given (from-images): generate the rejected side only
        rejected = generate([r for _, r in pairs], seeds)
        chosen = task.given_chosen([spec.prompt_id for spec in batch], rejected[0].size)
        images = list(chosen) + list(rejected)
        pairs = [(None, r) for _, r in pairs]  # a given image has no generating prompt (null in prompt_0/1)
    else:
        images = generate([c for c, _ in pairs] + [r for _, r in pairs],
                          seeds + [task.side_seeds(seed)[1] for seed in seeds])
    if len(images) != 2 * n:
        raise RuntimeError(f"generator returned {len(images)} images for {2 * n} prompts")
    labels = task.label_pairs([spec.caption for spec in batch], images[:n], images[n:]) or [task.labels] * n
    return [pair_row(spec, pairs[i], (images[i], images[n + i]), image_format, model_id, task.label, sampler_json,
                     labels[i]) for i, spec in enumerate(batch)]


def build_shard(out: Path, index: int, shard: list[PairSpec], cfg: BuildConfig, generate: ImageSource, task: Task,
                model_id: str, sampler_json: str, advance: Any) -> None:
    """Generate (or reuse finished batches of) shard ``index``, then move it into ``data/`` in one rename."""
    pieces_dir = out / PARTIAL_SUBDIR / Path(shard_name(index)).stem
    rows: list[dict[str, Any]] = []
    for b, batch in enumerate(chunks(shard, cfg.batch_size)):
        piece = pieces_dir / f"batch-{b:05d}.parquet"
        expected = [spec.pair_id for spec in batch]
        if piece.is_file() and read_pair_ids(piece) == expected:
            batch_rows = read_rows(piece)
        else:
            batch_rows = generate_batch(generate, task, batch, cfg.image_format, model_id, sampler_json)
            write_rows(piece, batch_rows)
            faults.point("build:after-batch")
        rows.extend(batch_rows)
        advance(len(batch))
    write_rows(out / PARTIAL_SUBDIR / shard_name(index), rows)
    faults.point("build:before-shard-rename", out / DATA_SUBDIR / shard_name(index))
    os.replace(out / PARTIAL_SUBDIR / shard_name(index), out / DATA_SUBDIR / shard_name(index))
    shutil.rmtree(pieces_dir, ignore_errors=True)


def shard_done(out: Path, index: int, shard: list[PairSpec]) -> bool:
    path = out / DATA_SUBDIR / shard_name(index)
    if not path.is_file():
        return False
    ids = read_pair_ids(path)
    if ids != [spec.pair_id for spec in shard]:
        raise MapoBenchError(f"{path} does not hold the pairs this config plans (pair ids differ); "
                             "pass --overwrite to start over")
    return True


# -- progress ----------------------------------------------------------------------------------------
def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("left"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled or quiet())


def _rate_text(progress: Any, task_id: Any) -> str:
    """Pairs per second since the bar started (rich's own speed estimate is empty for a few updates)."""
    task = progress.tasks[task_id]
    elapsed = task.elapsed or 0.0
    return f"{task.completed / elapsed:.2f} pairs/s" if elapsed > 0 and task.completed else "- pairs/s"


# -- entry point -------------------------------------------------------------------------------------
@one_writer("build-dataset", lambda cfg: cfg.out or cfg.default_out())
def build_dataset(cfg: BuildConfig) -> Path:
    """Build (or resume, or skip when complete) the dataset of ``cfg``; returns the folder."""
    from accelerate import PartialState
    from rich.console import Console

    # cpu=True is what makes accelerate join the processes over gloo under torchrun / accelerate launch on
    # a CPU; without it each CPU process would believe it is alone.
    state = PartialState(cpu=cfg.device == "cpu")
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    out = Path(cfg.out or cfg.default_out())
    task = task_from_config(cfg)
    if task.given:
        raise MapoBenchError(f"task {task.name} is not built: train on the dataset as it is (--dataset "
                             "yuvalkirstain/pickapic_v2, or a local copy), or give a pipeline dataset its path")
    chash = cfg.config_hash()
    content = task.content_digest()  # files named only by path: their content is part of the identity
    if content is not None:
        chash = hashlib.sha256(f"{chash}:{content}".encode()).hexdigest()[:len(chash)]
    console = Console(stderr=True, quiet=quiet())
    started = time.perf_counter()

    if main and task.content_warning:
        console.print(f"[bold red]content warning[/bold red]: {task.content_warning}")
    # Prompts first: a bad source fails before anything is written.
    records = task.records()
    if records is None:
        records = load_prompt_records(cfg.prompts, cfg.num_prompts, cfg.seed)
    status = prepare_folder(out, cfg, chash, content) if main else None
    state.wait_for_everyone()
    if not main:
        status = "done" if (out / MANIFEST).is_file() else "resume"
    if status == "done":
        if main and not (out / CARD).is_file():
            _write_card(out, task, read_json(out / MANIFEST))
        state.wait_for_everyone()
        if main:
            console.print(f"{out}: complete (config hash {chash}); nothing to do")
        return out

    shards = chunks(plan_pairs(records, cfg.pairs_per_prompt, cfg.seed), cfg.shard_size)
    mine = [i for i in range(len(shards)) if i % world == rank]
    todo = [i for i in mine if not shard_done(out, i, shards[i])]
    (out / DATA_SUBDIR).mkdir(parents=True, exist_ok=True)

    device = cfg.device
    if world > 1 and device.startswith("cuda") and ":" not in device:
        device = str(state.device)
    generate = ImageSource(cfg, device)
    model_id = generate.model_id()
    sampler = generate.sampler()
    sampler_json = json.dumps(sampler.model_dump(mode="json"), sort_keys=True)
    gen_seconds = 0.0
    if todo:
        load_start = time.perf_counter()
        generate.load()
        load_seconds = time.perf_counter() - load_start
        write_json_atomic(out / PARTIAL_SUBDIR / BACKEND_RECORD, generate.record())
        total = sum(len(shards[i]) for i in todo)
        with _progress(main) as progress:
            share = f" (process 0's share of {world})" if world > 1 else ""
            bar = progress.add_task(f"{task.label} pairs{share}", total=total, rate="- pairs/s")

            def advance(n: int) -> None:
                progress.update(bar, advance=n, rate=_rate_text(progress, bar))

            gen_start = time.perf_counter()
            for index in todo:
                build_shard(out, index, shards[index], cfg, generate, task, model_id, sampler_json, advance)
            gen_seconds = time.perf_counter() - gen_start
    else:
        load_seconds = 0.0
    state.wait_for_everyone()

    if main:
        _finish(out, cfg, chash, task, generate, records, shards, sampler, model_id, world,
                {"load_model_s": round(load_seconds, 3), "generate_s": round(gen_seconds, 3),
                 "total_s": round(time.perf_counter() - started, 3)})
        console.print(f"{out}: {sum(len(s) for s in shards)} pairs in {len(shards)} shard(s)")
    state.wait_for_everyone()
    return out


def _finish(out: Path, cfg: BuildConfig, chash: str, task: Task, generate: ImageSource, records: list,
            shards: list[list[PairSpec]], sampler: Any, model_id: str, world: int, timings: dict[str, float]) -> None:
    """Main process after every shard exists: check them, write manifest.json, then README.md."""
    from PIL import Image

    num_rows = num_bytes = file_bytes = 0
    resolution = None
    for index, shard in enumerate(shards):
        path = out / DATA_SUBDIR / shard_name(index)
        table = read_shard(path)
        if pair_ids_of(table) != [spec.pair_id for spec in shard]:
            raise MapoBenchError(f"{path} is missing or incomplete after the build; rerun the same command to resume")
        num_rows += table.num_rows
        num_bytes += table.nbytes  # what `datasets` records as the split's num_bytes (Arrow size)
        file_bytes += path.stat().st_size
        if resolution is None:
            resolution = list(Image.open(io.BytesIO(table.column("jpg_0")[0].as_py())).size)
    record_path = out / PARTIAL_SUBDIR / BACKEND_RECORD
    record = read_json(record_path) if record_path.is_file() else generate.record()
    chosen_first = sum(not spec.swap for shard in shards for spec in shard)
    manifest = make_manifest(
        cfg, chash,
        counts={"pairs": num_rows, "prompts": len(records), "shards": len(shards), "chosen_in_jpg_0": chosen_first,
                "bytes": num_bytes, "file_bytes": file_bytes, "processes": world},
        timings=timings,
        stage="build-dataset", task=task.label, score_context=dataclasses.asdict(task.score_context()),
        templates={"chosen": task.templates()[0], "rejected": task.templates()[1]},
        backend=record, model_id=model_id, sampler=sampler.model_dump(mode="json"), resolution=resolution,
        content_warning=task.content_warning, **task.manifest_extra(),
    )
    _write_card(out, task, manifest)
    from mapo_bench.integrity import write_manifest

    faults.point("build:before-manifest")
    write_manifest(out / MANIFEST, manifest, out, [out / DATA_SUBDIR / shard_name(i) for i in range(len(shards))] + [out / CARD])
    shutil.rmtree(out / PARTIAL_SUBDIR, ignore_errors=True)


def _write_card(out: Path, task: Task, manifest: dict[str, Any]) -> None:
    from mapo_bench.data.cards import render_card

    write_text_atomic(out / CARD, render_card(task, manifest))
