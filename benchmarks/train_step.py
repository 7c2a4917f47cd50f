"""MaPO vs Diffusion-DPO (and SFT) training-step cost: time, peak memory and where they go, on the same batch and model.

Each configuration (method x full/LoRA x cache on/off, and the cost levers with --levers) runs in a fresh
process, and all configurations run in ``rounds`` interleaved rounds, so a slow patch of a shared machine hits
every configuration alike (step times are pooled over rounds; memory is the median over rounds). The child
loads the model and the data (building the latent cache), records the baseline (RSS; on a GPU the allocated
memory), builds the rest of the trainer (LoRA or the reference copy, optimizer), resets the peak counter, runs
warm-up steps, then times ``repeats`` optimizer steps on one fixed batch, each split like a profiler would:
data, denoiser forward, reference forward, backward, optimizer (clip + step), other (noise, loss). Peak memory =
max RSS (CPU, /proc VmHWM) or the CUDA allocator's peak, minus the baseline; it is split into the reference
copy, gradients, optimizer states (counted from the tensors) and the rest (activations, allocator slack).
Printed: median step time with its min-max, the breakdown, memory, the MaPO/DPO ratios beside their analytic
floors, and the published ratios (SDXL: time 0.855, memory 0.825); SFT (the chosen image alone) beside them as
the floor of any paired method.

    python benchmarks/train_step.py                      # tiny SDXL on the CPU (built in a temp dir)
    python benchmarks/train_step.py --backend sd3        # tiny SD3 (or flux, sd15) on the CPU
    python benchmarks/train_step.py --size sd15          # the real SD1.5 UNet (random init), 256 px, CPU
    python benchmarks/train_step.py --size sdxl          # the real SDXL UNet, LoRA, 256 px, checkpointing
    python benchmarks/train_step.py --size sd15 --levers # + bf16 reference, checkpointing, fused AdamW rows
    python benchmarks/train_step.py --model PATH --resolution 1024 --batch-size 2 \\
        --mixed-precision bf16 --gradient-checkpointing   # a realistic size on a GPU
    python benchmarks/train_step.py --size sdxl --find-max-batch --modes full   # on a GPU: largest batch
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# -- memory probes -------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class MemoryProbe:
    """Baseline and peak: VmRSS / VmHWM on the CPU (peak reset through clear_refs), the allocator on CUDA."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.baseline = 0

    def current(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        return _status_kb("VmRSS") * 1024

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")

    def peak(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated()
        return _status_kb("VmHWM") * 1024


def _trim() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS reflects live memory."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


# -- the child: one configuration ----------------------------------------------------------------
PHASES = ("data", "denoiser forward", "reference forward", "backward", "optimizer", "other")


class PhaseClock:
    """Seconds per phase of the timed steps, by wrapping the calls that make each phase (synchronising the GPU
    around each, so a phase is charged its own kernels)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.on = False

    def wrap(self, phase, fn):
        import torch

        def timed(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            if self.cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if self.cuda:
                torch.cuda.synchronize()
            name = phase() if callable(phase) else phase
            self.seconds[name] += time.perf_counter() - start
            return out

        return timed

    def install(self, trainer) -> None:
        import torch

        import mapo_bench.training.data as data

        data.make_batch = self.wrap("data", data.make_batch)
        backend = trainer.backend
        backend.predict = self.wrap(lambda: "denoiser forward" if torch.is_grad_enabled() else "reference forward",
                                    backend.predict)
        trainer.accelerator.backward = self.wrap("backward", trainer.accelerator.backward)
        trainer.accelerator.clip_grad_norm_ = self.wrap("optimizer", trainer.accelerator.clip_grad_norm_)
        trainer.optimizer.step = self.wrap("optimizer", trainer.optimizer.step)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_parts(trainer) -> dict:
    """Bytes of what the trainer holds beyond the loaded model: the reference copy, gradients (one per trainable
    parameter, allocated by the first backward and kept, set_to_none aside) and the optimizer's states."""
    import torch

    trainable = [p for p in trainer.denoiser.parameters() if p.requires_grad]
    states = [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    reference = tensor_bytes(trainer.reference.parameters()) if trainer.reference is not None else 0
    return {"weights": tensor_bytes(trainer.denoiser.parameters()), "reference": reference,
            "gradients": tensor_bytes(trainable), "optimizer states": tensor_bytes(states),
            "trainable": sum(p.numel() for p in trainable)}


def run_child(spec: dict) -> dict:
    # Import everything the trainer will import before the baseline, so module code is not "peak".
    import accelerate  # noqa: F401
    import diffusers.optimization  # noqa: F401
    import numpy as np
    import peft  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    import transformers.optimization  # noqa: F401

    from mapo_bench.training.config import TrainConfig
    from mapo_bench.training.loop import Trainer

    if spec.get("memory_limit") and not torch.cuda.is_available():  # --find-max-batch on a CPU: fail, not swap
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (spec["memory_limit"], spec["memory_limit"]))
    probe = MemoryProbe(torch.cuda.is_available())
    clock = PhaseClock(probe.cuda)

    class MeasuredTrainer(Trainer):
        def _setup_model(self):  # called after the model is loaded and the data (and cache) prepared
            _trim()
            probe.baseline = probe.current()
            super()._setup_model()

    cfg = TrainConfig.model_validate(spec["config"])
    trainer = MeasuredTrainer(cfg)
    trainer.prepare()
    clock.install(trainer)
    if spec.get("search"):
        best, tried = search_batch(trainer, spec["search"])
        return {"max_batch": best, "tried": {str(k): v for k, v in tried.items()}}
    batch = [(np.arange(cfg.batch_size), None)] * cfg.grad_accum  # (pairs, prior-stream rows: none)
    for _ in range(spec["warmup"]):
        trainer.optimizer_step(batch)
    if probe.cuda:
        torch.cuda.synchronize()
    _trim()
    probe.reset_peak()
    times = []
    clock.on = True
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        trainer.optimizer_step(batch)
        if probe.cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    clock.on = False
    phases = {k: v / len(times) for k, v in clock.seconds.items()}
    phases["other"] = max(0.0, statistics.mean(times) - sum(phases.values()))
    return {"times": times, "peak_above_baseline": probe.peak() - probe.baseline, "baseline": probe.baseline,
            "device": "cuda" if probe.cuda else "cpu", "phases": phases, "parts": memory_parts(trainer),
            "gpu": torch.cuda.get_device_name() if probe.cuda else None}


# -- the parent ----------------------------------------------------------------------------------
def build_inputs(args: argparse.Namespace, folder: Path) -> tuple[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from pairs_fixture import write_pairs

    model = args.model
    if model is None and args.size != "tiny":
        from real_size import build_real_size

        model = str(build_real_size(folder / f"real-{args.size}", args.size))
    elif model is None:  # a tiny model of the chosen family, built here
        import mapo_bench.testing as kit

        builders = {"sdxl": kit.build_tiny_sdxl, "sd15": kit.build_tiny_sd15, "sd3": kit.build_tiny_sd3,
                    "flux": kit.build_tiny_flux}
        if args.backend not in builders:
            raise SystemExit(f"--backend {args.backend}: no tiny builder; pass --model")
        model = str(builders[args.backend](folder / f"tiny-{args.backend}"))
    size = (args.resolution, args.resolution)
    pairs = write_pairs(folder / "pairs", n=max(8, args.batch_size * args.grad_accum, args.max_batch if args.find_max_batch else 0), size=size)
    return model, pairs


# The cost levers (issue 17), each a row beside the plain configuration of the same method and mode.
LEVERS = {
    "bf16 reference": {"reference_dtype": "bfloat16"},
    "checkpointing": {"gradient_checkpointing": True},
    "fused adamw": {"optim": {"implementation": "fused"}},
    "foreach adamw": {"optim": {"implementation": "foreach"}},
    "compiled": {"compile_denoiser": True},
}


def lever_applies(lever: str, method: str, lora: bool) -> bool:
    return not (lever == "bf16 reference" and (lora or method != "dpo"))


PLAIN_METHODS = ("mapo", "dpo", "sft")  # SFT: the chosen image alone, the cost floor of any paired method


def configurations(args: argparse.Namespace) -> list[dict]:
    """(name, method, lora, cache, overrides) of every child, plain rows first."""
    rows = [{"lever": None, "method": method, "lora": mode == "lora", "cache": cache, "overrides": {}}
            for mode in args.modes for cache in args.cache for method in PLAIN_METHODS]
    for lever in args.levers or []:
        for mode in args.modes:
            for method in ("mapo", "dpo"):
                if lever_applies(lever, method, mode == "lora"):
                    rows.append({"lever": lever, "method": method, "lora": mode == "lora", "cache": args.cache[0],
                                 "overrides": LEVERS[lever]})
    return rows


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def child_config(args: argparse.Namespace, model: str, pairs: Path, folder: Path, method: str, lora: bool,
                 cache: bool, overrides: dict | None = None, batch_size: int | None = None) -> dict:
    config = {"method": method, "backend": args.backend, "model": model, "dataset": str(pairs),
              "out": str(folder / "unused"), "batch_size": batch_size or args.batch_size, "grad_accum": args.grad_accum,
              "max_steps": 1000, "mixed_precision": args.mixed_precision, "dtype": args.dtype,
              "gradient_checkpointing": args.gradient_checkpointing,
              "data": {"resolution": args.resolution, "flip": True},
              "lora": {"enabled": lora}, "optim": {"name": args.optimizer, "lr": 1e-6},
              "cache": {"enabled": cache, "dir": str(folder / "cache")}, "log": {"progress": False}}
    return merge(config, overrides or {})


def summarize(times: list[float]) -> tuple[float, float, float]:
    return statistics.median(times), min(times), max(times)


def run_one(spec: dict, env: dict) -> dict:
    """One child's result (exit with its error's tail on a failure)."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is not None and proc.returncode == 0:
        return json.loads(line[len("RESULT "):])
    sys.exit(f"{spec['config']['method']} failed:\n{proc.stderr[-3000:]}")


def find_max_batch(args, model, pairs, folder, env) -> dict[str, int]:
    """The largest batch (pairs per step) that fits, per method (full fine-tune unless --modes is lora only):
    one process per method doubles the batch, then bisects, up to ``--max-batch``, a step at each size, so
    the model loads once (GPU: the allocator's out-of-memory error; CPU: an address-space limit of
    ``--memory-limit-gb``, so the search fails cleanly instead of swapping)."""
    limit = int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else 0
    lora = "full" not in args.modes
    found = {}
    for method in ("mapo", "dpo"):
        spec = {"config": child_config(args, model, pairs, folder, method, lora, True, batch_size=1),
                "repeats": 0, "warmup": 0, "memory_limit": limit, "search": args.max_batch}
        result = run_one(spec, env)
        found[method] = result["max_batch"]
        print(f"  max batch: {method}: {result['tried']}", file=sys.stderr)
    return found


def search_batch(trainer, bound: int) -> tuple[int, dict[int, bool]]:
    """Doubling then bisection over one optimizer step per size; a size fits when its step completes."""
    import gc

    import numpy as np
    import torch

    tried: dict[int, bool] = {}

    def fits(batch: int) -> bool:
        try:
            trainer.optimizer_step([(np.arange(batch), None)])
            tried[batch] = True
        except (RuntimeError, MemoryError) as err:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not re.search(r"out of memory|can't allocate|Cannot allocate", str(err), re.I) \
                    and not isinstance(err, MemoryError):
                raise
            trainer.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            tried[batch] = False
        return tried[batch]

    low, batch = 0, 1
    while batch <= bound and fits(batch):
        low, batch = batch, batch * 2
    high = min(batch, bound + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low, tried


def floors(lora: bool, parts: dict, phases: dict) -> dict:
    """Analytic MaPO/DPO floors. Memory, full fine-tune with fp32 AdamW: weights + gradients + two moments =
    4 W against 5 W with DPO's frozen copy, 0.80 before activations (bf16 reference: 4 / 4.5 = 0.89); LoRA:
    the reference is the same weights with the adapters off, so 1.0. Time: a reference forward is about a
    quarter of a DPO step (forward 1 + backward 2 + reference 1), 0.75; and the floor from this run's own
    phases, (DPO step - its reference forward) / DPO step."""
    if lora:
        memory = 1.0
    else:
        w = parts["weights"]
        memory = 4 * w / (4 * w + parts["reference"]) if parts["reference"] else float("nan")
    step = sum(phases.values())
    return {"memory": memory, "time": 0.75, "time_from_phases": (step - phases["reference forward"]) / step}


def mb(n: float) -> str:
    return f"{n / 2**20:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or id (default: a model of --size / --backend built here)")
    parser.add_argument("--size", default="tiny", choices=["tiny", "sd15", "sdxl"],
                        help="tiny (a few hundred thousand parameters) or the released UNet architecture, random init")
    parser.add_argument("--backend", default=None, help="the model family (default: sdxl, or --size's)")
    parser.add_argument("--resolution", type=int, default=None, help="default 64 (tiny) or 256 (real size)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step; default 4 (tiny) or 1")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per process (default 5; real 3)")
    parser.add_argument("--rounds", type=int, default=None, help="fresh processes per configuration (3; real 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (2; real size 1)")
    parser.add_argument("--modes", default=None, help="full,lora (default; sdxl real size: lora, as a full "
                                                      "fine-tune does not fit 24 GiB)")
    parser.add_argument("--cache", default=None, help="on,off (default; real size: on)")
    parser.add_argument("--levers", default=None, help=f"comma-separated rows of {', '.join(LEVERS)}; 'all' = all "
                                                       "but compiled")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--find-max-batch", action="store_true", help="also search the largest batch per method")
    parser.add_argument("--max-batch", type=int, default=64, help="the search's upper bound")
    parser.add_argument("--memory-limit-gb", type=float, default=None, help="CPU: the address-space limit of "
                                                                            "--find-max-batch's children")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))))
        return
    real = args.size != "tiny"
    args.backend = args.backend or (args.size if real else "sdxl")
    args.resolution = args.resolution or (256 if real else 64)
    args.batch_size = args.batch_size or (1 if real else 4)
    args.repeats = args.repeats or (3 if real else 5)
    args.rounds = args.rounds or (2 if real else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if real else 2)
    args.modes = (args.modes or ("lora" if args.size == "sdxl" else "full,lora")).split(",")
    args.cache = [c == "on" for c in (args.cache or ("on" if real else "on,off")).split(",")]
    if args.size == "sdxl" and not args.gradient_checkpointing and args.resolution >= 256:
        args.gradient_checkpointing = True
    levers = [x for x in LEVERS if x != "compiled"] if args.levers == "all" else \
        [x.strip() for x in args.levers.split(",")] if args.levers else []
    unknown = [x for x in levers if x not in LEVERS]
    if unknown:
        raise SystemExit(f"--levers {unknown[0]!r}: one of {', '.join(LEVERS)}")
    args.levers = levers
    if args.size == "sdxl" and "full" in args.modes and not torch_cuda():
        print("note: a full fine-tune of the SDXL UNet (2.57 B parameters) needs 4 x 10.3 GB = 41 GB for MaPO "
              "(fp32 weights, gradients, AdamW's two moments) and 51 GB for DPO before activations: more than this "
              "machine's memory; --modes lora, or run it on a GPU", file=sys.stderr)

    runs: dict[int, list[dict]] = {}
    rows = configurations(args)
    with tempfile.TemporaryDirectory(prefix="mapo-bench-train-step-") as tmp:
        folder = Path(tmp)
        model, pairs = build_inputs(args, folder)
        env = {**os.environ, "MAPO_BENCH_THREADS": os.environ.get("MAPO_BENCH_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
        for round_index in range(args.rounds):
            for index, row in enumerate(rows):
                spec = {"config": child_config(args, model, pairs, folder, row["method"], row["lora"], row["cache"],
                                               row["overrides"]),
                        "repeats": args.repeats, "warmup": args.warmup}
                runs.setdefault(index, []).append(run_one(spec, env))
                print(f"  round {round_index + 1}/{args.rounds}: {row['method']:4s} {'lora' if row['lora'] else 'full'} "
                      f"cache={'on' if row['cache'] else 'off'}{' + ' + row['lever'] if row['lever'] else ''}",
                      file=sys.stderr)
        max_batch = find_max_batch(args, model, pairs, folder, env) if args.find_max_batch else None
    results = {}
    for index, items in runs.items():
        results[index] = {**rows[index], "times": [t for item in items for t in item["times"]],
                          "peak_above_baseline": statistics.median(i["peak_above_baseline"] for i in items),
                          "peaks": [i["peak_above_baseline"] for i in items], "device": items[0]["device"],
                          "gpu": items[0]["gpu"], "parts": items[0]["parts"],
                          "phases": {k: statistics.median(i["phases"][k] for i in items) for k in PHASES}}
    report(args, results, max_batch)


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def report(args: argparse.Namespace, results: dict, max_batch: dict | None) -> None:
    first = next(iter(results.values()))
    device = first["gpu"] or first["device"]
    what = {"tiny": "(tiny, built here)", "sd15": "(the released SD1.5 UNet, random init)",
            "sdxl": "(the released SDXL UNet, random init)"}[args.size] if args.model is None else args.model
    print(f"train step, {args.backend} {what}, {device}, {args.resolution} px, batch {args.batch_size} pairs x accum "
          f"{args.grad_accum}, {args.rounds} rounds x {args.repeats} timed steps after {args.warmup} warm-up, "
          f"threads {os.environ.get('MAPO_BENCH_THREADS', '1')}, mixed precision {args.mixed_precision}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    plain = {(r["method"], r["lora"], r["cache"]): r for r in results.values() if r["lever"] is None}
    header = (f"{'mode':5s} {'cache':5s} | {'MaPO s/step (min-max)':24s} | {'DPO s/step (min-max)':24s} | "
              f"{'time ratio':21s} | {'floor':11s} | {'MaPO MB':>8s} {'DPO MB':>8s} {'mem ratio':>9s} | {'floor':5s}")
    print(header)
    print("-" * len(header))
    table = []
    for lora in (False, True):
        for cache in (True, False):
            if ("mapo", lora, cache) not in plain:
                continue
            m, d = plain[("mapo", lora, cache)], plain[("dpo", lora, cache)]
            row = ratio_row(m, d, lora)
            table.append(row)
            print(f"{'lora' if lora else 'full':5s} {'on' if cache else 'off':5s} | {row['line']}")
    for lora in (False, True):
        for cache in (True, False):
            if ("sft", lora, cache) in plain:
                m, f = plain[("mapo", lora, cache)], plain[("sft", lora, cache)]
                fm, fl, fh = summarize(f["times"])
                print(f"{'lora' if lora else 'full':5s} {'on' if cache else 'off':5s} | SFT {fm:.4f} ({fl:.4f}-{fh:.4f}) s/step, "
                      f"{mb(training_memory(f))} MB; MaPO / SFT time {summarize(m['times'])[0] / fm:.3f}, memory "
                      f"{training_memory(m) / training_memory(f):.3f}")
    print("floors: time 0.75 (analytic) / from this run's DPO phases; memory of the training state "
          "(weights + reference + gradients + optimizer states + activations) analytic 0.80 full fp32 AdamW, 1.0 LoRA")
    print("published (SDXL, full UNet, 8 x H100, max batch): time ratio 0.855, memory ratio 0.825; issue 17's goal at "
          "SD1.5 size, full: time <= 0.80")
    print()
    print("where a step goes (seconds, median over rounds of the per-step mean) and what memory holds (MB)")
    print(f"{'configuration':34s} | " + " | ".join(f"{p[:12]:>12s}" for p in PHASES) + " || "
          + " | ".join(f"{x:>10s}" for x in ("weights", "reference", "gradients", "optim", "activ.+")))
    for r in results.values():
        name = f"{r['method']} {'lora' if r['lora'] else 'full'} cache={'on' if r['cache'] else 'off'}" \
               f"{' + ' + r['lever'] if r['lever'] else ''}"
        parts = r["parts"]
        rest = training_memory(r) - parts["weights"] - parts["reference"] - parts["gradients"] - parts["optimizer states"]
        print(f"{name:34s} | " + " | ".join(f"{r['phases'][p]:12.4f}" for p in PHASES) + " || "
              + " | ".join(f"{x / 2**20:10.1f}" for x in (parts["weights"], parts["reference"], parts["gradients"],
                                                           parts["optimizer states"], rest)))
    lever_rows = [r for r in results.values() if r["lever"] is not None]
    if lever_rows:
        print()
        print("cost levers: each beside the plain configuration of the same method and mode")
        for r in lever_rows:
            base = plain[(r["method"], r["lora"], r["cache"])]
            t, tb = statistics.median(r["times"]), statistics.median(base["times"])
            print(f"  {r['method']} {'lora' if r['lora'] else 'full'} + {r['lever']:15s}: step {t:.4f} s vs {tb:.4f} s "
                  f"(x{t / tb:.3f}), training memory {mb(training_memory(r))} vs {mb(training_memory(base))} MB "
                  f"(x{training_memory(r) / training_memory(base):.3f})")
    if max_batch:
        print()
        print(f"largest batch that fits (pairs per step, {'full' if 'full' in args.modes else 'lora'}, bounded by "
              f"{args.max_batch}): MaPO {max_batch['mapo']}, DPO {max_batch['dpo']}"
              + (f" (x{max_batch['mapo'] / max_batch['dpo']:.2f})" if max_batch["dpo"] else ""))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": table,
                                         "results": list(results.values()), "max_batch": max_batch}, indent=2))


def training_memory(r: dict) -> float:
    """The training state: the denoiser's weights (loaded before the baseline) plus the peak above it."""
    return r["parts"]["weights"] + r["peak_above_baseline"]


def ratio_row(m: dict, d: dict, lora: bool) -> dict:
    mm, ml, mh = summarize(m["times"])
    dm, dl, dh = summarize(d["times"])
    ratio, lo, hi = mm / dm, ml / dh, mh / dl  # spread: extreme pairings of the min and max step times
    mem_m, mem_d = training_memory(m), training_memory(d)
    floor = floors(lora, d["parts"], d["phases"])
    line = (f"{mm:.4f} ({ml:.4f}-{mh:.4f})    | {dm:.4f} ({dl:.4f}-{dh:.4f})    | "
            f"{ratio:.3f} ({lo:.3f}-{hi:.3f})   | {floor['time']:.2f} / {floor['time_from_phases']:.2f} | "
            f"{mem_m / 2**20:8.1f} {mem_d / 2**20:8.1f} {mem_m / mem_d:9.3f} | {floor['memory']:.2f}")
    return {"mode": "lora" if lora else "full", "cache": m["cache"], "time_ratio": ratio, "time_ratio_range": [lo, hi],
            "memory_ratio": mem_m / mem_d, "floors": floor, "line": line}


if __name__ == "__main__":
    main()
