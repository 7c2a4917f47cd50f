"""THE training loop: one loop for MaPO, Diffusion-DPO and SFT on any backend (DESIGN.md section 4).

Per micro-batch: latents of chosen and rejected (cached or fresh), one noise and one timestep per pair
shared by both images, the no-grad reference forward first when the method needs one (LoRA: the same
UNet with adapters disabled; full fine-tune: a frozen copy), then ONE policy UNet call on the 2B
batch (SFT: B chosen images), float32 per-sample errors and the method's loss. accelerate handles
mixed precision and DDP; gradient accumulation is explicit (``no_sync`` on all but the last
micro-batch). The run trains in ``<out>.partial/`` (checkpoints, log) and the final folder appears
in one rename when the export is complete.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mapo_bench import faults, losses
from mapo_bench.dtypes import resolve_dtype
from mapo_bench.errors import MapoBenchError
from mapo_bench.io import one_writer
from mapo_bench.methods import Errors
from mapo_bench.threads import flush_denormals
from mapo_bench.training.config import TrainConfig, result_hash

LOG_FILE = "train_log.jsonl"


@one_writer("train", lambda cfg: cfg.out)
def train(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says and return the output folder (skipped when a matching output exists)."""
    from mapo_bench.io import manifest_matches

    if cfg.dataset is None:
        raise MapoBenchError("train: no dataset; pass --dataset FOLDER_OR_HUB_ID (or dataset: in the config)")
    if cfg.out is None:
        raise MapoBenchError("train: no output folder; pass --out FOLDER (or out: in the config)")
    out = Path(cfg.out)
    if not cfg.overwrite and manifest_matches(out, result_hash(cfg)):
        _console_print(f"[yellow]{out} is complete for this config; skipping (overwrite=true to retrain)[/yellow]")
        return out
    if out.exists() and not cfg.overwrite:
        raise MapoBenchError(f"{out} already exists with another config; pass overwrite=true or choose another --out")
    return Trainer(cfg).run()


def work_dir(out: Path) -> Path:
    """Where an unfinished run lives (checkpoints, log): a sibling of the final folder."""
    return out.with_name(out.name + ".partial")


class AdapterSwitch:
    """Turns all LoRA layers of a model off and on, through a list of tuner layers collected once."""

    def __init__(self, model: torch.nn.Module) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        if not self.layers:
            raise MapoBenchError("LoRA reference: the UNet has no adapter layers; check lora.target_modules")

    @contextlib.contextmanager
    def disabled(self):
        for layer in self.layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.enable_adapters(True)


class Trainer:
    """Everything one run holds: accelerator, backend, data, UNet (+ reference), optimizer, generators."""

    def __init__(self, cfg: TrainConfig, *, use_cache: bool | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from mapo_bench.backends import load_backend
        from mapo_bench.registry import METHODS
        from mapo_bench.threads import configure_threads

        configure_threads()
        self.cfg = cfg
        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise MapoBenchError("mixed_precision=fp16 needs a GPU; use bf16 or no on the CPU")
        trackers = self._trackers()
        _fresh_accelerate_state()
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(),
                                       log_with=trackers or None,
                                       project_dir=str(work_dir(Path(cfg.out))) if cfg.out else None)
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        set_seed(cfg.seed)
        self.method = METHODS.get(cfg.method)
        self.method_options = cfg.method_options()
        options: dict[str, Any] = {"dtype": cfg.dtype, "device": str(self.accelerator.device)}
        if cfg.vae:
            options.update(vae=cfg.vae, vae_dtype="float32")
        self.backend = load_backend(cfg.backend, cfg.model, **options, **cfg.backend_options)
        self.model_id = cfg.model or self.backend.model_id
        self.resolution = cfg.effective_resolution(self.backend.default_resolution)
        self.num_train_timesteps = self.backend.num_train_timesteps
        self._setup_data(use_cache)
        self._setup_model()
        self._setup_optimizer()
        seed = int(np.random.SeedSequence([cfg.seed, self.rank, 0x5EED]).generate_state(1)[0])
        self.generator = torch.Generator().manual_seed(seed)
        from mapo_bench.training.data import EpochOrder

        self.order = EpochOrder(len(self.selection), cfg.batch_size * self.world, cfg.seed)
        self.step = 0

    # -- setup --------------------------------------------------------------------------------------
    def _trackers(self) -> list[str]:
        import importlib.util

        names = []
        for flag, name, module in (("tensorboard", "tensorboard", "tensorboard"), ("wandb", "wandb", "wandb")):
            if getattr(self.cfg.log, flag):
                if importlib.util.find_spec(module) is None:
                    raise MapoBenchError(f"log.{flag}=true needs {module}: pip install 'mapo-bench[tracking]'")
                names.append(name)
        return names

    def _setup_data(self, use_cache: bool | None) -> None:
        from mapo_bench.data.reader import find_bad_rows, open_pairs, select_pairs

        cfg, acc = self.cfg, self.accelerator
        self.source = open_pairs(cfg.dataset, cfg.data.split)
        bad: dict[int, str] = {}
        if cfg.data.skip_bad_rows:  # each process decodes every world-th row; all get the union
            mine = find_bad_rows(self.source, rows=list(range(acc.process_index, len(self.source), acc.num_processes)),
                                 progress=self._show_progress())
            if acc.num_processes > 1:
                from accelerate.utils import gather_object

                bad = {row: why for part in gather_object([mine]) for row, why in part.items()}
            else:
                bad = mine
        self.selection = select_pairs(self.source, cfg.data.tie_policy, cfg.data.label_noise, cfg.data.max_samples,
                                      cfg.seed, bad)
        captions = sorted({self.source.captions[int(row)] for row in self.selection.rows})
        self.captions_truncated = self.backend.truncated_captions(captions)
        if self.captions_truncated:
            _console_print(f"[yellow]{self.captions_truncated} of {len(captions)} captions are longer than the text "
                           "encoder reads; it sees their first tokens (counted in manifest.json)[/yellow]", acc)
        if len(self.selection) < cfg.batch_size * self.world:
            raise MapoBenchError(f"{cfg.dataset}: {len(self.selection)} pairs, fewer than one global batch "
                                 f"({cfg.batch_size} x {self.world} processes); lower batch_size")
        # A method with a prior (DreamBooth) reads a second stream: the class images of another dataset,
        # both images of each row (tie policy "half" draws one side per use), in its own seeded order.
        self.prior_source = self.prior_selection = self.prior_order = self.prior_cache = None
        prior_data = self.method_options.prior_data() if self.method.uses_prior else None
        if prior_data is not None:
            from mapo_bench.training.data import EpochOrder

            if self.method.uses_rejected:
                raise MapoBenchError(f"method {cfg.method}: a prior stream with paired images is not supported")
            self.prior_source = open_pairs(prior_data, cfg.data.split)
            self.prior_selection = select_pairs(self.prior_source, "half", seed=cfg.seed)
            if len(self.prior_selection) < cfg.batch_size * self.world:
                raise MapoBenchError(f"{prior_data}: {len(self.prior_selection)} rows of class images, fewer than one "
                                     f"global batch ({cfg.batch_size} x {self.world} processes); build more or lower batch_size")
            self.prior_order = EpochOrder(len(self.prior_selection), cfg.batch_size * self.world, cfg.seed + 1)
        enabled = cfg.cache.enabled if use_cache is None else use_cache
        if enabled and cfg.data.crop == "random":
            import warnings

            warnings.warn("data.crop=random: the latent cache is off (each step draws its own crop)", stacklevel=2)
            enabled = False
        self.cache = None
        self.offloaded: list[str] = []
        if enabled:
            self.cache = self._latent_cache(self.source, self.selection)
            if self.prior_source is not None:
                self.prior_cache = self._latent_cache(self.prior_source, self.prior_selection)
            self.offloaded = self.backend.offload_text_encoders()  # every caption is cached: encoders idle

    def _latent_cache(self, source: Any, selection: Any) -> Any:
        """The latent / caption cache of ``source``'s selected rows, filled by the main process."""
        from mapo_bench.training.cache import LatentCache, cache_key, default_cache_dir, key_folder

        cfg, acc = self.cfg, self.accelerator
        key = cache_key(backend=self.backend, model=self.model_id, vae=cfg.vae, dtype=cfg.dtype,
                        resolution=self.resolution, crop="center", dataset_fingerprint=source.fingerprint,
                        split=cfg.data.split)
        folder = key_folder(cfg.cache.dir or default_cache_dir(), key)
        rows = [int(r) for r in np.unique(selection.rows)]
        if acc.is_main_process:
            LatentCache(folder, key).build_missing(self.backend, source, rows, self.resolution,
                                                   cfg.batch_size, progress=self._show_progress())
            faults.point("train:after-cache")
        acc.wait_for_everyone()
        return LatentCache(folder, key)

    def _setup_model(self) -> None:
        from mapo_bench.training.cache import frozen_modules

        cfg = self.cfg
        for module in frozen_modules(self.backend).values():
            module.requires_grad_(False)
        denoiser = self.backend.denoiser
        if cfg.reference_dtype != "auto" and (cfg.lora.enabled or not self.method.needs_reference):
            raise MapoBenchError(f"reference_dtype applies to a full fine-tune of a method with a frozen reference "
                                 f"copy (dpo); {cfg.method}{' with LoRA' if cfg.lora.enabled else ''} has none")
        self.reference = None
        self.adapters = None
        if cfg.lora.enabled:
            from peft import LoraConfig

            denoiser.requires_grad_(False)
            targets = cfg.lora.target_modules or self.backend.lora_target_modules()
            try:
                denoiser.add_adapter(LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha or cfg.lora.rank,
                                                init_lora_weights="gaussian" if cfg.lora.init == "gaussian" else True,
                                                target_modules=targets))
            except ValueError as err:
                if "not found" not in str(err) and "Target modules" not in str(err):
                    raise
                raise MapoBenchError(f"lora.target_modules {list(targets)}: none of them names a module of the "
                                     f"{self.backend.denoiser_name} ({self.backend.name}); the backend's defaults "
                                     f"are {self.backend.lora_target_modules()}") from None
            for p in denoiser.parameters():  # LoRA matrices train in float32 whatever the base dtype
                if p.requires_grad:
                    p.data = p.data.float()
            if self.method.needs_reference:
                self.adapters = AdapterSwitch(denoiser)
        else:
            if next(denoiser.parameters()).dtype != torch.float32:  # a full fine-tune trains float32 weights
                denoiser.to(torch.float32)
            denoiser.requires_grad_(True)
            if self.method.needs_reference:
                self.reference = copy.deepcopy(denoiser).requires_grad_(False).eval()
                reference_dtype = cfg.reference_dtype if cfg.reference_dtype != "auto" else cfg.mixed_precision
                if reference_dtype not in ("no", "float32"):
                    self.reference.to(resolve_dtype(reference_dtype))
        if cfg.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if cfg.compile_denoiser:
            denoiser.compile()  # in place: the state dict keeps its keys, so checkpoints load as without it
        denoiser.train()
        self.trainable = {name for name, p in denoiser.named_parameters() if p.requires_grad}
        self.model_dtype = next(p for p in denoiser.parameters() if not p.requires_grad or not cfg.lora.enabled).dtype
        self.denoiser = denoiser

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        opt = self.cfg.optim
        self.params = [p for p in self.denoiser.parameters() if p.requires_grad]
        if opt.implementation != "auto" and opt.name != "adamw":
            raise MapoBenchError(f"optim.implementation={opt.implementation} applies to optim.name=adamw only")
        if opt.name == "adamw":
            kernel = {"auto": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True},
                      "fused": {"fused": True}}[opt.implementation]
            self.optimizer = torch.optim.AdamW(self.params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay,
                                               eps=opt.eps, **kernel)
        elif opt.name == "adafactor":
            from transformers.optimization import Adafactor

            self.optimizer = Adafactor(self.params, lr=opt.lr, weight_decay=opt.weight_decay, relative_step=False,
                                       scale_parameter=False, warmup_init=False)
        else:
            try:
                import bitsandbytes as bnb
            except ImportError:
                raise MapoBenchError("optim.name=adamw8bit needs bitsandbytes: pip install 'mapo-bench[bnb]' "
                                     "(a CUDA GPU is required), or use optim.name=adamw") from None
            self.optimizer = bnb.optim.AdamW8bit(self.params, lr=opt.lr, betas=opt.betas,
                                                 weight_decay=opt.weight_decay, eps=opt.eps)
        self.scheduler = get_scheduler(opt.lr_scheduler, self.optimizer, num_warmup_steps=opt.warmup_steps,
                                       num_training_steps=self.cfg.max_steps)

    def prepare(self) -> None:
        """Hand UNet and optimizer to accelerate (DDP, mixed precision). The scheduler steps once per update."""
        self.model, self.optimizer = self.accelerator.prepare(self.denoiser, self.optimizer)

    # -- one step -----------------------------------------------------------------------------------
    def _cast(self, cond: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        dtype = dtype or self.model_dtype
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}

    def _reference_predict(self, noisy: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen reference copy's prediction, its inputs cast to its own dtype (``reference_dtype``)."""
        dtype = next(self.reference.parameters()).dtype
        if dtype != self.model_dtype:
            noisy, cond = noisy.to(dtype), self._cast(cond, dtype)
        return self.backend.predict(self.reference, noisy, t, cond)

    def compute_loss(self, indices: np.ndarray, prior_indices: np.ndarray | None = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on one micro-batch of pairs (indices into the selection); ``prior_indices``:
        rows of the prior stream (class images) appended to the same denoiser call, each image with its own
        noise and timestep."""
        from mapo_bench.backends.base import concat_conditioning
        from mapo_bench.training.data import make_batch

        cfg, backend, method = self.cfg, self.backend, self.method
        batch = make_batch(backend=backend, source=self.source, selection=self.selection, indices=indices,
                           generator=self.generator, resolution=self.resolution, crop=cfg.data.crop,
                           flip=cfg.data.flip, uses_rejected=method.uses_rejected, cache=self.cache)
        x0, conditioning, paired = batch.x0.float(), batch.conditioning, method.uses_rejected
        if prior_indices is not None:
            prior = make_batch(backend=backend, source=self.prior_source, selection=self.prior_selection,
                               indices=prior_indices, generator=self.generator, resolution=self.resolution,
                               crop=cfg.data.crop, flip=cfg.data.flip, uses_rejected=False, cache=self.prior_cache)
            x0 = torch.cat([x0, prior.x0.float()])
            conditioning = concat_conditioning(conditioning, prior.conditioning)
        noise, t = backend.training_noise(x0, batch.pairs if prior_indices is None else len(x0), self.generator, paired)
        noisy = backend.add_noise(x0, noise, t).to(self.model_dtype)
        target = backend.target(x0, noise, t)
        cond = self._cast(conditioning)
        r_w = r_l = None
        if method.needs_reference:
            with torch.no_grad():
                if self.adapters is not None:
                    with self.adapters.disabled():
                        ref_pred = backend.predict(self.accelerator.unwrap_model(self.model), noisy, t, cond)
                else:
                    ref_pred = self._reference_predict(noisy, t, cond)
                r_w, r_l = losses.per_sample_error(ref_pred, target).chunk(2)
        pred = backend.predict(self.model, noisy, t, cond)
        m = losses.per_sample_error(pred, target)
        weights = backend.loss_weights(t)  # the flow families' optional weighting scheme; None: unweighted
        if weights is not None:
            m = m * weights
            r_w, r_l = (None, None) if r_w is None else (r_w * weights[: len(r_w)], r_l * weights[len(r_w):])
        m_prior = None
        if prior_indices is not None:
            m, m_prior = m[: len(batch.x0)], m[len(batch.x0):]
        m_w, m_l = m.chunk(2) if method.uses_rejected else (m, None)
        out = method.loss(Errors(m_w, m_l, r_w, r_l, self.num_train_timesteps, m_prior), self.method_options)
        metrics = {"loss": out.loss.item(), **out.metrics}
        if m_l is not None:
            metrics["margin"] = (m_l - m_w).mean().item()
        return out.loss, metrics

    def optimizer_step(self, micro_batches: list[np.ndarray]) -> dict[str, float]:
        """One optimizer update over ``grad_accum`` micro-batches; returns the averaged metrics."""
        acc, n = self.accelerator, len(micro_batches)
        start = time.perf_counter()
        sums: dict[str, float] = {}
        for i, (indices, prior_indices) in enumerate(micro_batches):
            sync = i == n - 1 or self.world == 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                with acc.autocast():
                    loss, metrics = self.compute_loss(indices, prior_indices)
                self._guard(loss)
                acc.backward(loss / n)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value / n
        max_norm = self.cfg.optim.max_grad_norm or math.inf
        grad_norm = acc.clip_grad_norm_(self.params, max_norm)
        lr = self.scheduler.get_last_lr()[0]  # the lr this update uses
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.world > 1:
            keys = sorted(sums)
            reduced = acc.reduce(torch.tensor([sums[k] for k in keys], device=acc.device), "mean")
            sums = dict(zip(keys, reduced.tolist(), strict=True))
        elapsed = time.perf_counter() - start
        sums.update(step=self.step, lr=lr,
                    grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                    step_time=elapsed, samples_per_s=n * len(micro_batches[0][0]) * self.world / elapsed,
                    epoch=self.order.epoch)
        return sums

    def _guard(self, loss: torch.Tensor) -> None:
        bad = torch.tensor(0.0 if torch.isfinite(loss.detach()).all() else 1.0, device=self.accelerator.device)
        if self.world > 1:
            bad = self.accelerator.reduce(bad, "sum")
        if bad.item() > 0:
            from mapo_bench.training.checkpoint import latest_checkpoint

            last = latest_checkpoint(work_dir(Path(self.cfg.out))) if self.cfg.out else None
            raise MapoBenchError(
                f"train: the {self.cfg.method} loss is {loss.item()} at step {self.step + 1}; stopped. "
                f"Last good checkpoint: {last or 'none yet'}. Lower optim.lr (now {self.cfg.optim.lr:g}) or check the data")

    def next_micro_batches(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per micro-batch: this process's indices into the selection and into the prior stream (or None)."""
        b = self.cfg.batch_size
        mine = slice(self.rank * b, (self.rank + 1) * b)
        return [(self.order.next()[mine], None if self.prior_order is None else self.prior_order.next()[mine])
                for _ in range(self.cfg.grad_accum)]

    # -- checkpoints --------------------------------------------------------------------------------
    def save(self, work: Path) -> Path | None:
        from accelerate.utils import gather_object

        from mapo_bench.training.checkpoint import save_checkpoint
        from mapo_bench.training.gather import full_optimizer_state, full_trainable_state

        states = gather_object([self.generator.get_state()]) if self.world > 1 else [self.generator.get_state()]
        trainable = full_trainable_state(self.model, self.trainable)  # collectives under FSDP: every process
        optimizer_state = full_optimizer_state(self.model, self.optimizer)
        path = None
        if self.accelerator.is_main_process:
            path = save_checkpoint(
                work, self.step, trainable=trainable, optimizer_state=optimizer_state,
                scheduler_state=self.scheduler.state_dict(),
                generator_states={f"step.rank{r}": s for r, s in enumerate(states)},
                state={**self.order.state(), "world": self.world, "result_hash": result_hash(self.cfg),
                       **({"prior": self.prior_order.state()} if self.prior_order is not None else {})},
                keep_last=self.cfg.keep_last)
        self.accelerator.wait_for_everyone()
        return path

    def restore(self, path: Path) -> dict[str, Any]:
        """Load weights, generators and data position (before ``prepare``); returns the optimizer and
        scheduler states, which ``restore_optimizer`` loads after ``prepare`` (FSDP shards them there)."""
        from mapo_bench.training.checkpoint import load_checkpoint, restore_trainable
        from mapo_bench.training.data import EpochOrder

        ckpt = load_checkpoint(path)
        state = ckpt["state"]
        if state.get("result_hash") != result_hash(self.cfg):
            raise MapoBenchError(f"{path}: checkpoint was made with other settings (result hash "
                                 f"{state.get('result_hash')} vs {result_hash(self.cfg)}); resume with the same config, "
                                 "or pass --resume none (or overwrite=true) to start over")
        if state.get("world") != self.world:
            raise MapoBenchError(f"{path}: checkpoint was made with {state.get('world')} processes, now {self.world}; "
                                 "resume with the same number of processes")
        restore_trainable(self.denoiser, ckpt["trainable"], path)
        self.generator.set_state(ckpt["generators"][f"step.rank{self.rank}"])
        self.order = EpochOrder(len(self.selection), self.cfg.batch_size * self.world, self.cfg.seed,
                                state["epoch"], state["position"])
        if self.prior_order is not None:
            self.prior_order = EpochOrder(len(self.prior_selection), self.cfg.batch_size * self.world,
                                          self.cfg.seed + 1, state["prior"]["epoch"], state["prior"]["position"])
        self.step = int(state["step"])
        return {"optimizer": ckpt["optimizer"], "scheduler": ckpt["scheduler"]}

    def restore_optimizer(self, states: dict[str, Any]) -> None:
        from mapo_bench.training.gather import load_optimizer_state

        load_optimizer_state(self.model, self.optimizer, states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])

    def _resume_point(self, work: Path) -> Path | None:
        from mapo_bench.training.checkpoint import (
            checkpoint_problems,
            latest_intact_checkpoint,
            list_checkpoints,
        )

        resume = self.cfg.resume
        if resume is None or self.cfg.overwrite:
            if list_checkpoints(work):
                _console_print(f"[yellow]starting over: discarding the checkpoints in {work}[/yellow]", self.accelerator)
            return None
        if resume == "latest":
            found = latest_intact_checkpoint(work, lambda line: _console_print(f"[yellow]{line}[/yellow]", self.accelerator))
            if found is None and list_checkpoints(work):
                _console_print("[yellow]no intact checkpoint left: starting over[/yellow]", self.accelerator)
            return found
        problems = checkpoint_problems(Path(resume))
        if problems and (Path(resume) / "state.json").is_file():
            raise MapoBenchError(f"{resume}: damaged checkpoint ({problems[0]}); pass --resume latest to fall back "
                                 "to the newest intact one")
        return Path(resume)

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> Path:
        from mapo_bench.io import Stopwatch, atomic_dir, make_manifest

        cfg, acc = self.cfg, self.accelerator
        out = Path(cfg.out)
        work = work_dir(out)
        watch = Stopwatch()
        resume_from = self._resume_point(work)
        if acc.is_main_process:
            if resume_from is None and work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        optimizer_states = self.restore(resume_from) if resume_from is not None else None
        self.prepare()
        if optimizer_states is not None:
            self.restore_optimizer(optimizer_states)
            _console_print(f"resuming from {resume_from} (step {self.step})", acc)
        log_path = work / LOG_FILE
        if acc.is_main_process:
            _truncate_log(log_path, self.step)
            if self.accelerator.log_with:
                acc.init_trackers("mapo-bench", config=_flat(cfg.model_dump(mode="json")))
        last: dict[str, float] = {}
        with watch.time("train"), flush_denormals(), _Progress(acc.is_main_process and self._show_progress(), cfg.max_steps,
                                            self.step) as bar:
            while self.step < cfg.max_steps:
                last = self.optimizer_step(self.next_micro_batches())
                faults.point("train:after-step")
                if acc.is_main_process:
                    if self.step % cfg.log.every == 0 or self.step == cfg.max_steps:
                        with open(log_path, "a") as handle:
                            handle.write(json.dumps(last) + "\n")
                        if acc.log_with:
                            acc.log({k: v for k, v in last.items() if k != "step"}, step=self.step)
                    bar.update(self.step, last)
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                    self.save(work)
                    faults.point("train:after-checkpoint")
        if acc.log_with:
            acc.end_training()
        exported = self.exported_state()  # a collective under FSDP: every process
        if acc.is_main_process:
            with watch.time("export"), atomic_dir(out, overwrite=True, written_by="manifest.json") as tmp:
                self.export(tmp, exported)
                shutil.copy2(log_path, tmp / LOG_FILE)
                from mapo_bench.config import dump_yaml

                (tmp / "config.yaml").write_text(dump_yaml(cfg))
                from mapo_bench.integrity import write_manifest

                write_manifest(tmp / "manifest.json", make_manifest(
                    cfg, result_hash(cfg), counts={**self.selection.counts, "captions_truncated": self.captions_truncated, "steps": self.step,
                                                   "processes": self.world},
                    timings=watch.timings, method=cfg.method, backend=self.backend.record(),
                    output="lora" if cfg.lora.enabled else self.backend.denoiser_name, final_metrics=last,
                    dataset_fingerprint=self.source.fingerprint, resumed_from=str(resume_from) if resume_from else None,
                    text_encoders_offloaded=self.offloaded), tmp)
                faults.point("train:before-export-rename")
            shutil.rmtree(work, ignore_errors=True)
        acc.wait_for_everyone()
        return out

    def exported_state(self) -> dict[str, torch.Tensor]:
        """Whole tensors to export: the trainable LoRA matrices, or every weight and buffer of a full fine-tune."""
        from mapo_bench.training.gather import full_model_state, full_trainable_state

        return full_trainable_state(self.model, self.trainable) if self.cfg.lora.enabled else full_model_state(self.model)

    def export(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        """The LoRA (the family's ``load_lora_weights`` layout) or the full denoiser (``<folder>/unet`` or
        ``<folder>/transformer``), written from ``state`` (``exported_state``), not from the module's own
        parameters, which under FSDP are this process's shard."""
        denoiser = self.accelerator.unwrap_model(self.model)
        if self.cfg.lora.enabled:
            self.backend.save_lora(denoiser, str(folder), state)
        else:
            self.backend.save_denoiser(denoiser, str(folder / self.backend.denoiser_name), state)

    def _show_progress(self) -> bool:
        from mapo_bench.progress import quiet

        return self.cfg.log.progress and self.accelerator.is_main_process and not quiet()


def _fresh_accelerate_state() -> None:
    """Let one process train several models with different mixed precision (``mapo-bench run``).

    accelerate keeps one process-wide AcceleratorState that refuses a second, different setting; the
    distributed (Partial) state is kept, only the per-run state is cleared.
    """
    from accelerate.state import AcceleratorState, GradientState

    with contextlib.suppress(AttributeError):
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()


def _truncate_log(path: Path, step: int) -> None:
    """Keep only log rows up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _console_print(message: str, accelerator: Any = None) -> None:
    if accelerator is not None and not accelerator.is_main_process:
        return
    from rich.console import Console

    Console(stderr=True).print(message)


class _Progress:
    """A rich progress bar over optimizer steps showing loss and implicit accuracy (a no-op when off)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"), transient=True)
            self.task = self.bar.add_task("train", total=self.total, completed=self.done, info="")
            self.bar.start()
        return self

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            info = f"loss {metrics.get('loss', float('nan')):.4f}"
            if "implicit_acc" in metrics:
                info += f" acc {metrics['implicit_acc']:.2f}"
            self.bar.update(self.task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
