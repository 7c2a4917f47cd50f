"""``mapo-bench sample``: evaluation images with the same prompts, seeds and sampler for every model.

Folder layout::

    OUT/images/p{prompt_id:05d}_s{seed}.png   one PNG per (prompt, seed), written atomically
    OUT/index.parquet                          prompt_id, prompt, seed, model, file
    OUT/manifest.json                          config, hash, model record, sampler, counts, timings
    OUT/.sample_key.json                       what the images depend on (resume guard)

Each image starts from noise seeded by (plain prompt, seed) through :func:`noise_seed`, the same for every
model, so images stay paired across models while different prompts get independent noises (with one
seed shared by every prompt, a whole evaluation held only as many noises as it had seeds). With
``prompt_prefix`` the model is prompted with the prefix (the base's own "target" images of a task) while
the index keeps the plain prompt, so those images pair with every other model's.

Resumable: an image file that exists is complete (atomic writes), so a rerun generates only the
missing ones; ``index.parquet`` and ``manifest.json`` are written last. Images depend only on (model,
fine-tune, sampler, dtype, prompt, seed), so adding seeds or prompts later reuses what is there; a
folder holding images of another model or sampler is refused unless ``overwrite``. Under
``accelerate launch`` every process generates its share of the items (item i goes to process
i mod N), and the main process writes the index.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

from mapo_bench import faults
from mapo_bench.config import config_hash
from mapo_bench.errors import MapoBenchError, NotYetImplementedError
from mapo_bench.evaluators.config import SampleConfig
from mapo_bench.io import (
    MANIFEST,
    Stopwatch,
    make_manifest,
    manifest_matches,
    one_writer,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
    write_png_atomic,
)
from mapo_bench.progress import quiet
from mapo_bench.threads import on_cpu

IMAGES = "images"
INDEX = "index.parquet"
KEY_FILE = ".sample_key.json"
INDEX_COLUMNS = ("prompt_id", "prompt", "seed", "model", "file")
NOISE_SCHEME = "sha256(plain prompt|seed), v1"  # part of the resume guard: images of another scheme are redone
# Keys that do not change any image: excluded from the resume guard.
RUN_ONLY_KEYS = {"batch_size", "device", "out", "overwrite", "num_prompts", "prompt_seed", "seeds", "model_name"}


def image_file(prompt_id: int, seed: int) -> str:
    return f"{IMAGES}/p{int(prompt_id):05d}_s{int(seed)}.png"


def noise_seed(prompt: str, seed: int) -> int:
    """The 31-bit generator seed of the initial noise of (plain prompt, sampling seed), stable across
    processes and models: the first 4 bytes of ``sha256(f"{prompt}|{seed}")`` read little-endian, shifted right
    by one."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{prompt}|{int(seed)}".encode()).digest()[:4], "little") >> 1


def plan(cfg: SampleConfig) -> list[tuple[int, str, int]]:
    """``[(prompt_id, prompt, seed), ...]``: every (plain) prompt with every seed, prompts in id order."""
    from mapo_bench.data.prompts import load_prompt_records

    records = load_prompt_records(cfg.prompts, cfg.num_prompts, cfg.prompt_seed)
    return [(int(pid), prompt, int(seed)) for pid, prompt in records for seed in cfg.seeds]


def image_key(cfg: SampleConfig) -> str:
    return config_hash({**cfg.model_dump(mode="json", exclude=RUN_ONLY_KEYS), "noise": NOISE_SCHEME})


def check_folder(cfg: SampleConfig) -> None:
    """Refuse an ``out`` this stage did not write, or one of another model and sampler (no overwrite)."""
    out = Path(cfg.out)
    key_path = out / KEY_FILE
    if out.exists() and any(out.iterdir()):
        held = read_json(key_path).get("image_key") if key_path.is_file() else None
        if held is None:  # never delete a folder this stage did not write
            raise MapoBenchError(f"{out} exists and is not a sample folder; choose another --out")
        if held != image_key(cfg) and not cfg.overwrite:
            raise MapoBenchError(f"{out} holds images of another model, fine-tune, sampler or prompt source; "
                                 "pass overwrite=true to replace them or choose another --out")


def prepare_folder(cfg: SampleConfig) -> None:
    """Create ``out`` (emptied first on overwrite) after :func:`check_folder`; record what its images depend on."""
    out = Path(cfg.out)
    key = image_key(cfg)
    key_path = out / KEY_FILE
    check_folder(cfg)
    if out.exists() and any(out.iterdir()) and cfg.overwrite:  # no old image is kept (it may have been changed)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / MANIFEST, out / INDEX):  # the folder reads as complete only once this run ends
        stale.unlink(missing_ok=True)
    write_json_atomic(key_path, {"image_key": key, "config": cfg.model_dump(mode="json", exclude=RUN_ONLY_KEYS)})


def load_model(cfg: SampleConfig, device: str) -> Any:
    """The backend with ``unet`` or ``lora`` applied."""
    from mapo_bench.backends import load_backend
    from mapo_bench.registry import toy_world

    if cfg.unet is not None and cfg.lora is not None:
        raise MapoBenchError("sample: give either unet or lora, not both")
    if toy_world(cfg.backend):  # the toy backends apply their own fine-tunes (their UNet/LoRA formats)
        extra = {k: str(v) for k, v in (("unet", cfg.unet), ("lora", cfg.lora)) if v is not None}
        for key, folder in extra.items():
            if not Path(folder).exists():
                raise MapoBenchError(f"{key}: {folder} not found; pass the folder written by `mapo-bench train`")
        return load_backend(cfg.backend, cfg.model, dtype=cfg.dtype, device=device, **cfg.backend_options, **extra)
    backend = load_backend(cfg.backend, cfg.model, dtype=cfg.dtype, device=device, **cfg.backend_options)
    if cfg.unet is not None:
        backend.set_denoiser(backend.load_denoiser(str(cfg.unet)))
    if cfg.lora is not None:
        load_lora(backend, Path(cfg.lora))
    return backend


def load_lora(backend: Any, folder: Path) -> None:
    """Load LoRA weights (diffusers format, as `mapo-bench train` saves them) into the pipeline."""
    if not folder.exists():
        raise MapoBenchError(f"lora: {folder} not found; pass the LoRA folder written by `mapo-bench train`")
    loader = getattr(backend.pipeline, "load_lora_weights", None)
    if not callable(loader):
        raise NotYetImplementedError(f"lora: the {backend.name} backend's pipeline cannot load LoRA weights")
    loader(str(folder))


def _complete(out: Path, items: list[tuple[int, str, int]]) -> bool:
    return all((out / image_file(pid, seed)).is_file() for pid, _, seed in items)


@one_writer("sample", lambda cfg: cfg.out)
def sample(cfg: SampleConfig) -> Path:
    """Generate the missing images of ``cfg`` and write the index and manifest; returns ``cfg.out``."""
    from accelerate import PartialState

    out = Path(cfg.out)
    items = plan(cfg)
    full_hash = config_hash({**cfg.model_dump(mode="json", exclude={"batch_size", "device", "out", "overwrite"}),
                             "noise": NOISE_SCHEME})
    if not cfg.overwrite and manifest_matches(out, full_hash) and (out / INDEX).is_file() and _complete(out, items):
        return out
    state = PartialState(cpu=on_cpu(cfg.device))
    watch = Stopwatch()
    backend = None
    if state.is_main_process:  # a folder or a model that is refused is refused before the folder is touched
        check_folder(cfg)
        with watch.time("load"):
            backend = load_model(cfg, cfg.device or str(state.device))
        prepare_folder(cfg)
    state.wait_for_everyone()
    mine = items[state.process_index::state.num_processes]
    todo = [item for item in mine if not (out / image_file(item[0], item[2])).is_file()]
    if todo and backend is None:
        with watch.time("load"):
            backend = load_model(cfg, cfg.device or str(state.device))
    sampler = (cfg.sampler or backend.default_sampler) if backend is not None else None
    with watch.time("generate"):
        _generate(backend, sampler, todo, out, cfg.batch_size, cfg.prompt_prefix, show=state.is_main_process and not quiet())
    state.wait_for_everyone()
    if state.is_main_process:
        faults.point("sample:before-index")
        _write_index(cfg, items, out)
        counts = {"prompts": len({pid for pid, _, _ in items}), "seeds": len(cfg.seeds), "images": len(items),
                  "generated_by_main": len(todo), "processes": state.num_processes}
        manifest = make_manifest(cfg, full_hash, counts, watch.timings, model=backend.record() if backend else {},
                                 model_name=cfg.derived_model_name(),
                                 sampler=sampler.model_dump(mode="json") if sampler else None, noise=NOISE_SCHEME)
        from mapo_bench.integrity import write_manifest

        write_manifest(out / MANIFEST, manifest, out)
    state.wait_for_everyone()
    return out


def _generate(backend: Any, sampler: Any, todo: list[tuple[int, str, int]], out: Path, batch_size: int,
              prefix: str | None, show: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mapo_bench.data.tasks import apply_prefix

    if not todo:
        return
    with Progress(TextColumn("sample"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  disable=not show) as progress:
        task = progress.add_task("sample", total=len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = backend.generate([apply_prefix(prefix, p) for _, p, _ in batch],
                                      [noise_seed(p, s) for _, p, s in batch], sampler)
            if len(images) != len(batch):
                raise MapoBenchError(f"backend {backend.name} returned {len(images)} images for {len(batch)} prompts")
            for (pid, _, seed), image in zip(batch, images, strict=True):
                write_png_atomic(out / image_file(pid, seed), image, fault="sample:inside-image")
            progress.advance(task, len(batch))
            faults.point("sample:after-batch", out / image_file(*batch[-1][::2]))


def _write_index(cfg: SampleConfig, items: list[tuple[int, str, int]], out: Path) -> None:
    import pandas as pd

    missing = [image_file(pid, seed) for pid, _, seed in items if not (out / image_file(pid, seed)).is_file()]
    if missing:
        raise MapoBenchError(f"{out}: {len(missing)} images missing after sampling (first: {missing[0]}); rerun to resume")
    model = cfg.derived_model_name()
    frame = pd.DataFrame([(pid, prompt, seed, model, image_file(pid, seed)) for pid, prompt, seed in items],
                         columns=list(INDEX_COLUMNS))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(out / INDEX, buffer.getvalue())


def read_index(folder: str | Path) -> Any:
    """The index of a finished sample folder; a folder without one is a one-line error."""
    import pandas as pd

    folder = Path(folder)
    path = folder / INDEX
    if not path.is_file():
        raise MapoBenchError(f"{folder}: no {INDEX}; pass a folder written by `mapo-bench sample` (an interrupted "
                             "one: rerun the sample command to finish it) or an image folder with captions in "
                             "metadata.jsonl")
    frame = pd.read_parquet(path)
    missing = [c for c in INDEX_COLUMNS if c not in frame.columns]
    if missing:
        raise MapoBenchError(f"{path}: missing columns {', '.join(missing)}")
    root = folder.resolve()
    for row, name in enumerate(frame["file"]):  # a received run folder must not point a reader elsewhere
        target = (folder / str(name)).resolve()
        if Path(str(name)).is_absolute() or not target.is_relative_to(root):
            raise MapoBenchError(f"{path}: row {row}: file {str(name)!r} is outside the sample folder")
    return frame
