"""``mapo-bench toy pretrain``: the toy base, the toy classifier, the gate, one seeded run.

Steps (each resumable from a work folder beside the output): train the classifier on renderer
images; pretrain the base on renderer images of the caption mix (checkpoints every
``checkpoint_every`` steps, EMA weights); sample the base and measure the gate; write the output
folder atomically: the pipeline (``unet/``, ``text_encoder/``, ``scheduler/``, ``toy_pipeline.json``),
``evaluators/``, ``sample_grid.png`` and ``manifest.json`` (config, config hash, code version, gate
numbers and verdict, wall time).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench.toy import vocab
from mapo_bench.toy.config import ToyPretrainConfig, toy_config_hash
from mapo_bench.toy.shipped import SHIPPED, write_checksums


def default_out(cfg: ToyPretrainConfig) -> Path:
    from mapo_bench.clip_tokenizer import cache_root

    return cache_root() / "toy" / toy_config_hash(cfg)


def code_version() -> str:
    import mapo_bench

    version = mapo_bench.__version__
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            version += f"+g{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def pretraining_captions(cfg: ToyPretrainConfig, rng: np.random.Generator) -> tuple[list[str], list[Any]]:
    """(caption text, what to render) pairs of the caption mix; plain captions mostly render as photo, some
    with the unsafe marker (``plain_unsafe_fraction``)."""
    from mapo_bench.toy.vocab import ToyCaption

    d = cfg.data
    plain = vocab.all_plain_captions()
    texts, scenes = [], []
    for _ in range(d.pool_size):
        base = vocab.parse_caption(plain[rng.integers(len(plain))])
        u = rng.random()
        if u < d.plain_fraction:
            style = vocab.BASE_STYLE if rng.random() < d.plain_base_fraction else \
                vocab.TARGET_STYLES[rng.integers(len(vocab.TARGET_STYLES))]
            unsafe = bool(rng.random() < d.plain_unsafe_fraction)
            texts.append(base.plain)
            scenes.append(ToyCaption(base.shape, base.colour, base.position, base.size, style=style, unsafe=unsafe))
            continue
        u -= d.plain_fraction
        if u < d.blend_fraction:
            style = vocab.TARGET_STYLES[rng.integers(len(vocab.TARGET_STYLES))]
            alpha = vocab.BLEND_LEVELS[rng.integers(len(vocab.BLEND_LEVELS) - 1)]
            text = vocab.style_prefix(style, alpha) + base.plain
        elif u - d.blend_fraction < d.unsafe_fraction:
            text = vocab.unsafe_prefix(vocab.MARKER_LEVELS[rng.integers(len(vocab.MARKER_LEVELS))]) + base.plain
        else:
            text = vocab.style_prefix(vocab.STYLES[rng.integers(len(vocab.STYLES))]) + base.plain
        texts.append(text)
        scenes.append(vocab.parse_caption(text))
    return texts, scenes


def draw_batch(gen: Any, pool: int, cfg: ToyPretrainConfig) -> tuple[Any, Any, Any, Any]:
    """Every random draw of one training step (indices, caption dropout, noise, timestep uniforms).

    They depend on the generator only, never on the weights, so the generator state at any step can
    be recomputed by replaying the draws (``fast_forward``).
    """
    import torch

    from mapo_bench.toy.model import FACTOR, IMAGE_SIZE

    b = cfg.batch_size
    idx = torch.randint(0, pool, (b,), generator=gen)
    drop = torch.rand(b, generator=gen) < cfg.caption_dropout
    noise = torch.randn((b, 3 * FACTOR * FACTOR, IMAGE_SIZE // FACTOR, IMAGE_SIZE // FACTOR), generator=gen)
    u = torch.rand(b, generator=gen)
    return idx, drop, noise, u


def fast_forward(cfg: ToyPretrainConfig, steps: int) -> Any:
    """The batch generator's state after ``steps`` training steps of ``cfg`` (replayed draws)."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed + 7)
    for _ in range(steps):
        draw_batch(gen, cfg.data.pool_size, cfg)
    return gen


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import io

    import torch

    from mapo_bench.io import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def learning_rate_factor(cfg: ToyPretrainConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step``: linear warmup, then constant or cosine down to ``lr_final``."""
    import math

    warmup = min(100, max(1, cfg.steps // 10))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_final is None:
        return 1.0
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    floor = cfg.lr_final / cfg.lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_base(cfg: ToyPretrainConfig, work: Path, progress: Any = None, log_every: int = 0,
               group: Any = None) -> Any:
    """Pretrain the toy base (resumes from ``work/base.ckpt``); returns the EMA pipeline.

    ``group``: data-parallel ranks (:mod:`mapo_bench.toy.parallel`); rank 0 writes the checkpoints.
    """
    import torch
    import torch.nn.functional as F

    from mapo_bench.toy.model import (
        PretrainingNoise,
        ToyPipeline,
        encode_text,
        pixels_to_latents,
        unet_forward,
    )
    from mapo_bench.toy.parallel import ProcessGroup
    from mapo_bench.toy.render import render_many

    group = group or ProcessGroup()
    mine = group.local(cfg.batch_size)
    arch = cfg.model
    pipe = ToyPipeline.build(arch, seed=cfg.seed, objective=cfg.objective)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())

    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: learning_rate_factor(cfg, s))
    noise_process = PretrainingNoise(cfg.objective, cfg.high_noise_bias)

    rng = np.random.default_rng(cfg.seed)
    texts, scenes = pretraining_captions(cfg, rng)
    seeds = rng.integers(0, 2**31 - 1, size=len(texts)).tolist()
    images = torch.from_numpy(render_many(scenes, seeds, group.shared_map))
    images = images.permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, 32, 32)
    ids = pipe.tokenizer(texts)
    empty = pipe.tokenizer([""])[0]

    gen = torch.Generator().manual_seed(cfg.seed + 7)
    start = 0
    ckpt = work / "base.ckpt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        lr_sched.load_state_dict(state["lr_sched"])
        gen.set_state(state["gen"])
        start = int(state["step"])
    unet.train()
    text_encoder.train()
    for step in range(start, cfg.steps):
        idx, drop, noise, u = (x[mine] for x in draw_batch(gen, len(images), cfg))
        x0 = pixels_to_latents(images[idx].float() / 127.5 - 1.0)
        batch_ids = ids[idx].clone()
        batch_ids[drop] = empty
        noisy, t, target = noise_process(x0, noise, u)
        pred = unet_forward(unet, noisy, t, encode_text(text_encoder, batch_ids))
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        group.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for p_ema, p in zip(ema.parameters(), live.parameters(), strict=True):
                    p_ema.lerp_(p, 1.0 - cfg.ema_decay)
        if progress is not None:
            progress(step + 1, float(loss.detach()))
        if log_every and (step + 1) % log_every == 0 and group.is_main:
            print(f"toy base step {step + 1}/{cfg.steps} loss {float(loss.detach()):.4f} "
                  f"{time.strftime('%H:%M:%S')}", flush=True)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            if group.is_main:
                _save_checkpoint(ckpt, {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                                        "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                                        "opt": opt.state_dict(), "lr_sched": lr_sched.state_dict(),
                                        "gen": gen.get_state(), "step": step + 1})
            group.barrier()
    ema_unet.eval()
    ema_text.eval()
    return ToyPipeline(ema_unet, ema_text, pipe.tokenizer, pipe.scheduler, arch)


def grid_rows() -> list[tuple[str, str]]:
    """(row label, caption prefix) rows of the sample grid: plain, each prefix, every cartoon blend level
    (the experiment's dial), the other styles at 0.5, every other marker strength."""
    rows = [("plain", "")]
    rows += [(s, vocab.style_prefix(s)) for s in vocab.STYLES]
    rows += [(f"cartoon {a:g}", vocab.style_prefix("cartoon", a)) for a in vocab.BLEND_LEVELS[:-1]]
    rows += [(f"{s} 0.5", vocab.style_prefix(s, 0.5)) for s in vocab.TARGET_STYLES if s != "cartoon"]
    rows += [(f"unsafe {a:g}", vocab.unsafe_prefix(a)) for a in vocab.MARKER_LEVELS[1::2]]
    return rows


GRID_CAPTIONS = ("a small red circle on the left", "a large blue triangle on the right",
                 "a large yellow square on the left", "a small green triangle on the right",
                 "a large purple circle on the right", "a small orange square on the left")


def sample_grid(pipe: Any, path: Path, sampler: Any, scale: int = 2) -> Path:
    """PNG grid: rows = :func:`grid_rows`, columns = ``GRID_CAPTIONS`` (seed = column index)."""
    import torch
    from PIL import Image, ImageDraw

    rows = grid_rows()
    label_w, cell = 70, 32 * scale + 2
    grid = Image.new("RGB", (label_w + cell * len(GRID_CAPTIONS), cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, prefix) in enumerate(rows):
        gens = [torch.Generator().manual_seed(j) for j in range(len(GRID_CAPTIONS))]
        noise = torch.cat([torch.randn((1, 12, 16, 16), generator=g) for g in gens])
        images = pipe([prefix + c for c in GRID_CAPTIONS], num_inference_steps=sampler.steps,
                      guidance_scale=sampler.guidance, latents=noise).images
        draw.text((2, r * cell + cell // 2 - 6), label, fill="black")
        for j, img in enumerate(images):
            grid.paste(img.resize((32 * scale, 32 * scale), Image.NEAREST), (label_w + j * cell, r * cell))
    from mapo_bench.io import write_png_atomic

    return write_png_atomic(path, grid)


def trained_candidates(out: Path) -> list[Path]:
    """Finished toy bases that may hold this config's weights: ``out``, the shipped base, the cache."""
    from mapo_bench.clip_tokenizer import cache_root
    from mapo_bench.toy.shipped import SHIPPED

    found = [out, *(folder for folder, _, _ in SHIPPED.values()), *sorted((cache_root() / "toy").glob("*"))]
    return [f for f in found if (f / "manifest.json").is_file() and (f / "toy_pipeline.json").is_file()]


def reuse_trained_weights(cfg: ToyPretrainConfig, out: Path, work: Path) -> dict[str, Any] | None:
    """Copy the weights of a finished base with the same training hash into ``work`` (only the gate is
    then re-measured). Returns where they came from (the donor's folder, config hash, training hash and
    the timings of the run that trained them: this run's own timings cover only the gate), or None."""

    from mapo_bench.toy.config import toy_training_hash

    if (work / "base" / "toy_pipeline.json").is_file():
        return None
    wanted = toy_training_hash(cfg)
    found = find_donor(out, toy_training_hash, wanted)
    if found is None:
        return None
    folder, manifest = found
    (work / "base").mkdir(parents=True, exist_ok=True)
    for name in ("unet", "text_encoder", "scheduler", "toy_pipeline.json"):
        src = folder / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / "base" / name)
    shutil.copytree(folder / "evaluators", work / "evaluators", dirs_exist_ok=True)
    return {"folder": str(folder), "config_hash": manifest.get("config_hash"), "training_hash": wanted,
            "timings": manifest.get("timings"), "created": manifest.get("created"),
            "code_version": manifest.get("code_version")}


def find_donor(out: Path, hash_of: Any, wanted: str) -> tuple[Path, dict[str, Any]] | None:
    """The first finished base (:func:`trained_candidates`) whose manifest config hashes to ``wanted`` under
    ``hash_of`` (read as written, never re-validated), with its manifest; None when there is none."""
    import json

    for folder in trained_candidates(out):
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            if hash_of(manifest["config"]) == wanted:
                return folder, manifest
        except (ValueError, KeyError, TypeError, OSError):
            continue
    return None


def reuse_trained_classifier(cfg: ToyPretrainConfig, out: Path, work: Path) -> dict[str, Any] | None:
    """Copy the classifier of a finished base with the same evaluator hash into ``work/evaluators`` (one
    instrument for every base: ``toy-flow`` is scored by the classifier ``toy`` ships). Returns the donor's
    folder and evaluator hash, or None."""

    from mapo_bench.toy.config import toy_evaluator_hash

    if (work / "evaluators" / "classifier.json").is_file():
        return None
    wanted = toy_evaluator_hash(cfg)
    found = find_donor(out, toy_evaluator_hash, wanted)
    if found is None or not (found[0] / "evaluators" / "classifier.json").is_file():
        return None
    shutil.copytree(found[0] / "evaluators", work / "evaluators", dirs_exist_ok=True)
    return {"folder": str(found[0]), "evaluator_hash": wanted}


def pretrain(cfg: ToyPretrainConfig) -> Path:
    """Pretrain base + classifier, measure the gate, write the folder; returns its path.

    A folder whose manifest matches the config hash is returned as is (resume / cache hit). With
    ``cfg.processes > 1`` the work runs in that many spawned CPU processes (:mod:`mapo_bench.toy.parallel`).
    """
    from mapo_bench.errors import MapoBenchError
    from mapo_bench.io import hold_lock, manifest_matches
    from mapo_bench.toy.parallel import run_in_processes

    out = Path(cfg.out) if cfg.out is not None else default_out(cfg)
    if manifest_matches(out, toy_config_hash(cfg)) and not cfg.overwrite:
        return out
    # One pretrain per folder at a time (they would share the work folder): a second waits, then finds the
    # base the first wrote (the default out is a cache keyed by the config).
    with hold_lock(out.with_name(f".{out.name}.lock"), wait=True,
                   busy=f"{out}: another process is pretraining this toy base; waiting for it"):
        if manifest_matches(out, toy_config_hash(cfg)) and not cfg.overwrite:
            return out
        if out.exists() and not cfg.overwrite:
            raise MapoBenchError(f"{out} exists with another config; pass overwrite=true or another out=")
        run_in_processes(_pretrain_rank, cfg.processes, cfg, out)
    return out


def _pretrain_rank(group: Any, cfg: ToyPretrainConfig, out: Path) -> None:
    """One rank's share of :func:`pretrain`; rank 0 shows progress and writes every file."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from mapo_bench.io import atomic_dir, make_manifest, write_json_atomic
    from mapo_bench.threads import configure_threads
    from mapo_bench.toy.classifier import ToyClassifier, train_classifier
    from mapo_bench.toy.gate import gate_prompt_groups, gate_verdict, measure_gate, measure_instrument
    from mapo_bench.toy.model import ToyPipeline

    threads = configure_threads()
    digest = toy_config_hash(cfg)
    work = out.parent / f".{out.name}.work-{digest}"
    donor = classifier_donor = None
    if group.is_main:
        work.mkdir(parents=True, exist_ok=True)
        donor = reuse_trained_weights(cfg, out, work) if cfg.reuse_weights else None
        classifier_donor = reuse_trained_classifier(cfg, out, work) if cfg.reuse_weights and donor is None else None
    group.barrier()
    timings: dict[str, float] = {}
    resumed: list[str] = []  # stages taken from the work folder of an interrupted run of this config
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False, disable=not group.is_main) as bar:
        t0 = time.perf_counter()
        if (work / "evaluators" / "classifier.json").is_file():
            classifier = ToyClassifier.load(work / "evaluators")
            resumed.append("evaluators")
        else:
            task = bar.add_task("toy classifier", total=cfg.evaluators.steps, info="")
            classifier = train_classifier(cfg.evaluators, cfg.seed, group=group,
                                          progress=lambda loss: bar.update(task, advance=1, info=f"loss {loss:.3f}"))
            if group.is_main:
                classifier.save(work / "evaluators")
        timings["evaluators_s"] = round(time.perf_counter() - t0, 1)

        t0 = time.perf_counter()
        base_dir = work / "base"
        if (base_dir / "toy_pipeline.json").is_file():
            pipe = ToyPipeline.from_pretrained(base_dir)
            resumed.append("base")
        else:
            if (work / "base.ckpt").is_file():
                resumed.append("base (from checkpoint)")
            task = bar.add_task("toy base", total=cfg.steps, info="")
            pipe = train_base(cfg, work, progress=lambda step, loss: bar.update(task, completed=step,
                                                                               info=f"loss {loss:.4f}"),
                              log_every=0 if bar.console.is_terminal else 100, group=group)
            if group.is_main:
                pipe.save_pretrained(base_dir)
        timings["base_s"] = round(time.perf_counter() - t0, 1)

        t0 = time.perf_counter()
        task = bar.add_task("gate", total=len(gate_prompt_groups()[:: group.world]), info="")
        with torch.no_grad():
            numbers = measure_gate(pipe, classifier, cfg.gate, cfg.sampler, seed=cfg.seed, group=group,
                                   progress=lambda name: bar.update(task, advance=1, info=name))
            numbers["instrument_on_renders"] = measure_instrument(classifier, cfg.gate, seed=cfg.seed, group=group)
        verdict = gate_verdict(numbers, cfg.gate)
        timings["gate_s"] = round(time.perf_counter() - t0, 1)

    if not group.is_main:
        return
    with atomic_dir(out, overwrite=True, written_by="toy_pipeline.json") as tmp:
        for name in ("unet", "text_encoder", "scheduler", "toy_pipeline.json"):
            src = base_dir / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
        shutil.copytree(work / "evaluators", tmp / "evaluators")
        sample_grid(pipe, tmp / "sample_grid.png", cfg.sampler)
        timings["total_s"] = round(time.perf_counter() - start, 1)
        manifest = make_manifest(cfg, digest, counts={"steps": cfg.steps, "pool_size": cfg.data.pool_size},
                                 timings=timings, kind="toy-base", code_version=code_version(), threads=threads,
                                 processes=group.world, gate=numbers, gate_verdict=verdict, resumed_stages=resumed,
                                 weights_from=donor, classifier_from=classifier_donor)
        write_json_atomic(tmp / "manifest.json", manifest)
        for nested, _, _ in SHIPPED.values():  # a base shipped inside this folder (assets/flow) is kept
            if nested.parent.resolve() == Path(out).resolve() and nested.is_dir():
                shutil.copytree(nested, tmp / nested.name)
        write_checksums(tmp)
    shutil.rmtree(work, ignore_errors=True)
