"""MaPO vs Diffusion-DPO training-step cost: time and peak memory on the same batch and model.

Each configuration (method x full/LoRA x cache on/off) runs in a fresh process, and all
configurations run in ``rounds`` interleaved rounds, so a slow patch of a shared machine hits every
configuration alike (step times are pooled over rounds; memory is the median over rounds). The child loads the
model and the data (building the latent cache), records the baseline (RSS; on a GPU the allocated
memory), builds the rest of the trainer (LoRA or the reference copy, optimizer), resets the peak counter, runs warm-up
steps, then times ``repeats`` optimizer steps on one fixed batch. Peak memory = max RSS (CPU,
/proc VmHWM) or the CUDA allocator's peak, minus the baseline. Printed: median step time with its
min-max, peak memory, and the MaPO/DPO ratios (published at SDXL scale: time 0.855, memory 0.825).

    python benchmarks/train_step.py                      # tiny SDXL on the CPU (built in a temp dir)
    python benchmarks/train_step.py --backend sd3        # tiny SD3 (or flux, sd15) on the CPU
    python benchmarks/train_step.py --model PATH --resolution 1024 --batch-size 2 \\
        --mixed-precision fp16 --gradient-checkpointing   # a realistic size on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [(method, lora, cache) for lora in (False, True) for cache in (True, False) for method in ("mapo", "dpo")]


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

    probe = MemoryProbe(torch.cuda.is_available())

    class MeasuredTrainer(Trainer):
        def _setup_model(self):  # called after the model is loaded and the data (and cache) prepared
            _trim()
            probe.baseline = probe.current()
            super()._setup_model()

    cfg = TrainConfig.model_validate(spec["config"])
    trainer = MeasuredTrainer(cfg)
    trainer.prepare()
    batch = [(np.arange(cfg.batch_size), None)] * cfg.grad_accum  # (pairs, prior-stream rows: none)
    for _ in range(spec["warmup"]):
        trainer.optimizer_step(batch)
    if probe.cuda:
        torch.cuda.synchronize()
    _trim()
    probe.reset_peak()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        trainer.optimizer_step(batch)
        if probe.cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"times": times, "peak_above_baseline": probe.peak() - probe.baseline, "baseline": probe.baseline,
            "device": "cuda" if probe.cuda else "cpu"}


# -- the parent ----------------------------------------------------------------------------------
def build_inputs(args: argparse.Namespace, folder: Path) -> tuple[str, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from pairs_fixture import write_pairs

    model = args.model
    if model is None:  # a tiny model of the chosen family, built here
        import mapo_bench.testing as kit

        builders = {"sdxl": kit.build_tiny_sdxl, "sd15": kit.build_tiny_sd15, "sd3": kit.build_tiny_sd3,
                    "flux": kit.build_tiny_flux}
        if args.backend not in builders:
            raise SystemExit(f"--backend {args.backend}: no tiny builder; pass --model")
        model = str(builders[args.backend](folder / f"tiny-{args.backend}"))
    size = (args.resolution, args.resolution)
    pairs = write_pairs(folder / "pairs", n=max(8, args.batch_size * args.grad_accum), size=size)
    return model, pairs


def child_config(args: argparse.Namespace, model: str, pairs: Path, folder: Path, method: str, lora: bool,
                 cache: bool) -> dict:
    return {"method": method, "backend": args.backend, "model": model, "dataset": str(pairs),
            "out": str(folder / "unused"), "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "max_steps": 1000, "mixed_precision": args.mixed_precision, "dtype": args.dtype,
            "gradient_checkpointing": args.gradient_checkpointing,
            "data": {"resolution": args.resolution, "flip": True},
            "lora": {"enabled": lora}, "optim": {"name": args.optimizer, "lr": 1e-6},
            "cache": {"enabled": cache, "dir": str(folder / "cache")}, "log": {"progress": False}}


def summarize(times: list[float]) -> tuple[float, float, float]:
    return statistics.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or id (default: a tiny model of --backend built here)")
    parser.add_argument("--backend", default="sdxl")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per configuration, interleaved")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_child(json.loads(args.child))))
        return

    results: dict[tuple[str, bool, bool], dict] = {}
    runs: dict[tuple[str, bool, bool], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mapo-bench-train-step-") as tmp:
        folder = Path(tmp)
        model, pairs = build_inputs(args, folder)
        env = {**os.environ, "MAPO_BENCH_THREADS": os.environ.get("MAPO_BENCH_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
        for round_index in range(args.rounds):
            for method, lora, cache in CONFIGS:
                spec = {"config": child_config(args, model, pairs, folder, method, lora, cache),
                        "repeats": args.repeats, "warmup": args.warmup}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=REPO,
                                      capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    sys.exit(f"{method} lora={lora} cache={cache} failed:\n{proc.stderr[-3000:]}")
                runs.setdefault((method, lora, cache), []).append(json.loads(line[len("RESULT "):]))
                print(f"  round {round_index + 1}/{args.rounds}: {method:4s} {'lora' if lora else 'full'} "
                      f"cache={'on' if cache else 'off'}", file=sys.stderr)
        for key, items in runs.items():
            results[key] = {"times": [t for item in items for t in item["times"]],
                            "peak_above_baseline": statistics.median(i["peak_above_baseline"] for i in items),
                            "peaks": [i["peak_above_baseline"] for i in items], "device": items[0]["device"]}

    device = next(iter(results.values()))["device"]
    print(f"train step, {args.backend} {'(tiny, built here)' if args.model is None else args.model}, {device}, "
          f"{args.resolution} px, batch {args.batch_size} pairs x accum {args.grad_accum}, "
          f"{args.rounds} rounds x {args.repeats} timed steps after {args.warmup} warm-up, threads {os.environ.get('MAPO_BENCH_THREADS', '1')}")
    header = (f"{'mode':5s} {'cache':5s} | {'MaPO s/step (min-max)':24s} | {'DPO s/step (min-max)':24s} | "
              f"{'time ratio':21s} | {'min/min':7s} | {'MaPO MB':>8s} {'DPO MB':>8s} {'mem ratio':>9s}")
    print(header)
    print("-" * len(header))
    rows = []
    for lora in (False, True):
        for cache in (True, False):
            m, d = results[("mapo", lora, cache)], results[("dpo", lora, cache)]
            mm, ml, mh = summarize(m["times"])
            dm, dl, dh = summarize(d["times"])
            ratio = mm / dm
            # spread of the ratio: extreme pairings of the min and max step times
            lo, hi = ml / dh, mh / dl
            mem_m, mem_d = m["peak_above_baseline"] / 2**20, d["peak_above_baseline"] / 2**20
            mem_ratio = mem_m / mem_d if mem_d > 0 else float("nan")
            print(f"{'lora' if lora else 'full':5s} {'on' if cache else 'off':5s} | "
                  f"{mm:.4f} ({ml:.4f}-{mh:.4f})    | {dm:.4f} ({dl:.4f}-{dh:.4f})    | "
                  f"{ratio:.3f} ({lo:.3f}-{hi:.3f})   | {ml / dl:7.3f} | {mem_m:8.1f} {mem_d:8.1f} {mem_ratio:9.3f}")
            rows.append({"mode": "lora" if lora else "full", "cache": cache, "mapo": m, "dpo": d,
                         "time_ratio": ratio, "time_ratio_range": [lo, hi], "time_ratio_of_minima": ml / dl, "memory_ratio": mem_ratio})
    print("published (SDXL, full UNet, 8 x H100): time ratio 0.855, memory ratio 0.825; "
          "targets at realistic size: time <= 0.80, memory <= 0.82")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
