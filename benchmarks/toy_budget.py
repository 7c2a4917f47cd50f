"""Benchmark the toy world's budget (issue 6): pretrain, building 300 pairs, sampling + scoring 144 images.

Usage:
    MAPO_BENCH_THREADS=1 python benchmarks/toy_budget.py [--model toy] [--pretrain] [--pretrain-out DIR]
        [--step-time 20]

Budget (2 CPU cores): toy pretrain <= 15 min; 300 pairs <= 60 s; sample + score 144 images <= 15 s.
Numbers are printed, not asserted: the machine may be shared.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path


def time_pretrain(out: Path | None) -> float:
    from mapo_bench.toy.config import ToyPretrainConfig
    from mapo_bench.toy.pretrain import pretrain

    out = out or Path(tempfile.mkdtemp(prefix="toy-budget-")) / "base"
    start = time.perf_counter()
    pretrain(ToyPretrainConfig(out=out, overwrite=True, reuse_weights=False))  # train, never borrow weights
    return time.perf_counter() - start


def time_steps(steps: int) -> float:
    """Seconds per pretraining step of the default model (batch 32), after one warm-up step."""
    import torch
    import torch.nn.functional as F

    from mapo_bench.toy.config import ToyPretrainConfig
    from mapo_bench.toy.model import ToyPipeline, encode_text, unet_forward

    cfg = ToyPretrainConfig()
    arch = cfg.model
    pipe = ToyPipeline.build(arch)
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    ids = pipe.tokenizer(["cartoon style: a small red circle on the left"] * cfg.batch_size)
    x = torch.randn(cfg.batch_size, 12, 16, 16)
    start = 0.0
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        pred = unet_forward(pipe.unet, x, torch.randint(0, 1000, (cfg.batch_size,)), encode_text(pipe.text_encoder, ids))
        loss = F.mse_loss(pred, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / max(steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--pretrain", action="store_true", help="also time mapo-bench toy pretrain (minutes)")
    parser.add_argument("--pretrain-out", type=Path, default=None)
    parser.add_argument("--step-time", type=int, default=0, help="time this many pretraining steps")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--images", type=int, default=144)
    args = parser.parse_args()

    from mapo_bench.threads import configure_threads

    threads = configure_threads()
    rows: list[tuple[str, float, str]] = []
    if args.pretrain:
        rows.append(("toy pretrain (base + evaluators + gate)", time_pretrain(args.pretrain_out), "<= 900 s"))
    if args.step_time:
        rows.append((f"pretrain s/step (batch 32, {args.step_time} steps)", time_steps(args.step_time), ""))

    from mapo_bench.backends.toy import ToyBackend
    from mapo_bench.evaluators.base import ScoreContext
    from mapo_bench.evaluators.toy import ToyContent, ToySafety, ToyStyle
    from mapo_bench.toy import vocab

    backend = ToyBackend.load(args.model)
    sampler = backend.default_sampler
    plain = vocab.all_plain_captions()

    # 300 pairs as the toy pick-style builder makes them: chosen "cartoon style: X", rejected
    # "photo style: X", same seed; PNG-encoded as the dataset stores them.
    start = time.perf_counter()
    batch = 32
    for i in range(0, args.pairs, batch):
        n = min(batch, args.pairs - i)
        captions = [plain[(i + j) % len(plain)] for j in range(n)]
        seeds = [i + j for j in range(n)]
        images = backend.generate([vocab.style_prefix("cartoon") + c for c in captions] +
                                  [vocab.style_prefix("photo") + c for c in captions], seeds + seeds, sampler)
        for img in images:
            img.save(io.BytesIO(), format="PNG")
    rows.append((f"build {args.pairs} pairs (generate + PNG)", time.perf_counter() - start, "<= 60 s"))

    # sample + score: 144 images (every plain caption x 2 seeds), three toy metrics.
    style, content, safety = ToyStyle.load(), ToyContent.load(), ToySafety.load()
    start = time.perf_counter()
    captions = [plain[i % len(plain)] for i in range(args.images)]
    images = []
    for i in range(0, len(captions), 48):
        images += backend.generate(captions[i : i + 48], list(range(i, min(i + 48, len(captions)))), sampler)
    ctx = ScoreContext(task="pick-style", target_style="cartoon", base_style="photo")
    scores = {m.name: m.score(images, captions, ctx) for m in (style, content, safety)}
    rows.append((f"sample + score {args.images} images (3 toy metrics)", time.perf_counter() - start, "<= 15 s"))

    print(f"threads per process: {threads}; model: {args.model}; sampler: {sampler.steps} steps, guidance {sampler.guidance}")
    for name, seconds, budget in rows:
        print(f"{name:48s} {seconds:8.2f} s  {budget}")
    print("mean scores of the base on plain captions: " +
          ", ".join(f"{k} {v.mean():.3f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
