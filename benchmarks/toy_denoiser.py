"""Which denoiser can the toy-flow base afford? The toy UNet against a tiny SD3 DiT on the toy's batch.

Issue 13 asks for the toy world on a flow model: a small DiT (``SD3Transformer2DModel``) if it passes the
gate on 2 cores within 15 minutes of pretraining, else the toy UNet with the flow objective. This times
one pretraining step (forward + backward + AdamW, batch 32, 16x16x12 latents, one thread) of each, in
interleaved rounds in one process, and prints step times, parameter counts and the ratio DiT / UNet, with
the step budget that 15 minutes leaves each. The DiT is sized like the UNet's widest stage (64 wide) with
patch size 1 (256 tokens; patch 2 would quarter the tokens but halve the resolution the toy's 2-pixel
outlines live at).

    python benchmarks/toy_denoiser.py [--rounds 5] [--steps 3] [--dit-layers 4]
"""

from __future__ import annotations

import argparse
import statistics
import time


def unet_step_fn(batch: int):
    import torch

    from mapo_bench.toy.model import ToyArch, build_unet, unet_forward

    arch = ToyArch()
    unet = build_unet(arch)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, 12, 16, 16)
    cond = {"encoder_hidden_states": torch.randn(batch, arch.max_length, arch.text_width),
            "class_labels": torch.randn(batch, 2 * arch.text_width)}
    t = torch.rand(batch) * 1000

    def step() -> None:
        loss = unet_forward(unet, x, t, cond).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in unet.parameters())


def dit_step_fn(batch: int, layers: int, width: int = 64, heads: int = 4):
    import torch
    from diffusers import SD3Transformer2DModel

    from mapo_bench.toy.model import ToyArch

    arch = ToyArch()
    dit = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=12, out_channels=12, num_layers=layers,
                                attention_head_dim=width // heads, num_attention_heads=heads,
                                joint_attention_dim=arch.text_width, caption_projection_dim=width,
                                pooled_projection_dim=2 * arch.text_width, pos_embed_max_size=16)
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    x = torch.randn(batch, 12, 16, 16)
    text = torch.randn(batch, arch.max_length, arch.text_width)
    pooled = torch.randn(batch, 2 * arch.text_width)
    t = torch.rand(batch) * 1000

    def step() -> None:
        out = dit(hidden_states=x, timestep=t, encoder_hidden_states=text, pooled_projections=pooled,
                  return_dict=False)[0]
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in dit.parameters())


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dit-layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    models = {"toy UNet": unet_step_fn(args.batch), f"SD3 DiT ({args.dit_layers} layers)": dit_step_fn(args.batch, args.dit_layers)}
    for step, _ in models.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (step, _) in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"batch {args.batch}, 16x16x12 latents, 1 thread, {args.rounds} interleaved rounds x {args.steps} steps")
    medians = {}
    for name, (_, params) in models.items():
        med = medians[name] = statistics.median(times[name])
        print(f"  {name:<22} {params / 1e6:5.2f} M params  {med:.3f} s/step (min {min(times[name]):.3f}, "
              f"max {max(times[name]):.3f})  15 min ~ {int(900 / med)} steps on one process")
    unet, dit = medians.values()
    print(f"  DiT / UNet step time: {dit / unet:.2f}")


if __name__ == "__main__":
    main()
