"""Evaluator throughput: images/s per metric, and the cost of ``aesthetic,clip,style`` together vs ``aesthetic`` alone.

All numbers come from one run on random-init backbones saved in hub layout (no downloads): tiny ones
always, and real-sized ones (ViT-L/14, ViT-H/14, open_clip ViT-H-14, the safety checker's ViT-L/14)
with ``--realistic`` (default when a GPU is present). Each timing starts from empty embedding caches
and includes preprocessing; the first batch of each metric is a warm-up and is not timed.

    python benchmarks/eval.py                      # tiny, CPU
    python benchmarks/eval.py --realistic --images 64 --batch-size 16 --dtype float16   # GPU

Target (issue 5): aesthetic+clip+style <= 1.15 x aesthetic alone, since the three share one ViT-L/14
image embedding and only add text embeddings and small heads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ("pickscore", "hps", "aesthetic", "clip", "style", "nsfw")
STYLE = ("a Disney style animated image", "a realistic photo")
PROMPTS = ["a photo of an astronaut riding a horse on the moon", "a red fox in a snowy forest, golden hour",
           "a bowl of ramen on a wooden table", "a watercolor painting of a lighthouse at dusk"]


def build_real_sized(root: Path, metrics: tuple[str, ...]) -> dict:
    """Random-init models with the real architectures (only those ``metrics`` need), saved as the evaluators load them."""
    import open_clip
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from mapo_bench.clip_tokenizer import load_clip_tokenizer
    from mapo_bench.evaluators.tiny import build_tiny_aesthetic

    def clip_config(v_width, v_layers, v_heads, t_width, t_layers, t_heads, proj, act):
        text = CLIPTextConfig(hidden_size=t_width, intermediate_size=4 * t_width, num_attention_heads=t_heads,
                              num_hidden_layers=t_layers, hidden_act=act)
        vision = CLIPVisionConfig(hidden_size=v_width, intermediate_size=4 * v_width, num_attention_heads=v_heads,
                                  num_hidden_layers=v_layers, image_size=224, patch_size=14, hidden_act=act)
        return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=proj)

    vit_l = clip_config(1024, 24, 16, 768, 12, 12, 768, "quick_gelu")  # openai/clip-vit-large-patch14
    vit_h = clip_config(1280, 32, 16, 1024, 24, 16, 1024, "gelu")  # PickScore_v1 (LAION ViT-H/14)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=load_clip_tokenizer())
    w: dict = {"hps_arch": "ViT-H-14"}
    if {"aesthetic", "clip", "style"} & set(metrics):
        CLIPModel(vit_l).save_pretrained(root / "vit-l-14")
        processor.save_pretrained(root / "vit-l-14")
        w["clip"] = root / "vit-l-14"
        w["aesthetic"] = build_tiny_aesthetic(root / "aesthetic.pth", input_dim=768)
    if "pickscore" in metrics:
        CLIPModel(vit_h).save_pretrained(root / "vit-h-14")
        processor.save_pretrained(root / "vit-h-14")
        w["pickscore"] = w["pickscore_processor"] = root / "vit-h-14"
    if "hps" in metrics:
        (root / "hps").mkdir()
        torch.save({"state_dict": open_clip.create_model("ViT-H-14", pretrained=None).state_dict()},
                   root / "hps" / "HPS_v2.1_compressed.pt")
        w["hps"] = root / "hps"
    if "nsfw" in metrics:
        # a fresh config: one a CLIPModel was built from carries attn "sdpa", which the checker refuses
        checker_config = clip_config(1024, 24, 16, 768, 12, 12, 768, "quick_gelu")
        StableDiffusionSafetyChecker(checker_config).save_pretrained(root / "checker")
        CLIPImageProcessor().save_pretrained(root / "checker")
        w["nsfw"] = root / "checker"
    return w


def build_tiny(root: Path) -> dict:
    from mapo_bench.evaluators.tiny import build_tiny_aesthetic, build_tiny_hps, build_tiny_safety_checker
    from mapo_bench.testing import build_tiny_clip, tiny_open_clip_config

    clip = build_tiny_clip(root / "clip")
    return {"clip": clip, "pickscore": clip, "pickscore_processor": clip, "hps": build_tiny_hps(root / "hps"), "hps_arch": tiny_open_clip_config(),
            "nsfw": build_tiny_safety_checker(root / "nsfw"), "aesthetic": build_tiny_aesthetic(root / "aes.pth")}


def load(metric: str, w: dict, device: str, dtype: str):
    from mapo_bench.registry import EVALUATORS

    options = {"model": str(w["clip"] if metric in ("clip", "style") else w[metric])}
    if metric == "pickscore":
        options["processor"] = str(w["pickscore_processor"])
    if metric == "aesthetic":
        options["clip_model"] = str(w["clip"])
    if metric == "hps":
        options["arch"] = w["hps_arch"]
    return EVALUATORS.get(metric).load(device=device, dtype=dtype, **options)


def timed(evaluators: dict, images: list, prompts: list, batch_size: int, device: str) -> float:
    """Seconds to score ``images`` with every evaluator, batch by batch, from empty caches (first batch untimed)."""
    import torch

    from mapo_bench.evaluators import base
    from mapo_bench.evaluators.backbones import ClipBackbone

    ctx = base.ScoreContext(target_style=STYLE[0], base_style=STYLE[1])
    for ev in evaluators.values():
        if isinstance(getattr(ev, "backbone", None), ClipBackbone):
            ev.backbone.clear_cache()
    warm = images[:batch_size]
    for ev in evaluators.values():
        ev.score(warm, prompts[:batch_size], ctx)
    for ev in evaluators.values():
        if isinstance(getattr(ev, "backbone", None), ClipBackbone):
            ev.backbone.clear_cache()
            ev.backbone.image_forwards = 0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        for ev in evaluators.values():
            ev.score(images[i:i + batch_size], prompts[i:i + batch_size], ctx)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(kind: str, w: dict, n: int, size: int, batch_size: int, device: str, dtype: str, repeats: int,
        metrics: tuple[str, ...] = METRICS) -> None:
    import numpy as np
    from PIL import Image

    from mapo_bench.evaluators import backbones

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    prompts = [PROMPTS[i % len(PROMPTS)] + f" #{i}" for i in range(n)]
    print(f"\n== {kind} backbones: {n} images of {size} px, batch {batch_size}, {device} {dtype} ==")
    print(f"{'metric':<12}{'images/s':>12}")
    for metric in metrics:
        backbones.clear()
        ev = {metric: load(metric, w, device, dtype)}
        best = min(timed(ev, images, prompts, batch_size, device) for _ in range(repeats))
        print(f"{metric:<12}{n / best:>12.3g}")
    backbones.clear()
    alone = {"aesthetic": load("aesthetic", w, device, dtype)}
    together = {m: load(m, w, device, dtype) for m in ("aesthetic", "clip", "style")}
    t_alone, t_together = [], []
    for _ in range(repeats):  # interleaved, so drifting machine load hits both alike
        t_alone.append(timed(alone, images, prompts, batch_size, device))
        t_together.append(timed(together, images, prompts, batch_size, device))
    ratio = min(t_together) / min(t_alone)
    print(f"aesthetic alone          {n / min(t_alone):10.3g} images/s")
    print(f"aesthetic+clip+style     {n / min(t_together):10.3g} images/s")
    print(f"cost ratio together/alone = {ratio:.3f} (target <= 1.15); "
          f"ViT-L/14 image forwards in the last timed run: {together['aesthetic'].backbone.image_forwards} for {n} images x 3 metrics")
    backbones.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 64 tiny, 1024 realistic)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--realistic", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--metrics", default=",".join(METRICS), help="metrics timed one by one (the ratio is always measured)")
    args = parser.parse_args(argv)

    import torch

    from mapo_bench.threads import configure_threads

    configure_threads()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    metrics = tuple(m for m in args.metrics.split(",") if m)
    realistic = args.realistic if args.realistic is not None else device.startswith("cuda")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        run("tiny", build_tiny(Path(tmp) / "tiny"), args.images, args.size or 64, args.batch_size, device,
            args.dtype, args.repeats, metrics)
        if realistic:
            t0 = time.perf_counter()
            weights = build_real_sized(Path(tmp) / "real", tuple(set(metrics) | {"aesthetic"}))
            print(f"(built real-sized random backbones in {time.perf_counter() - t0:.0f} s)")
            run("real-sized", weights, args.images, args.size or 1024, args.batch_size, device, args.dtype,
                args.repeats, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
