"""A tiny, untrained, ungated toy base for tests (built in code in about a second)."""

from __future__ import annotations

from pathlib import Path

TINY_MODEL = {"block_out_channels": [8, 16], "layers_per_block": 1, "attention_heads": 2, "text_width": 16,
              "text_layers": 1, "text_heads": 2, "max_length": 20}


def build_tiny_toy(folder: str | Path, seed: int = 0, objective: str = "v") -> Path:
    """Save a tiny toy pipeline (``objective`` v or flow) + untrained classifier + an ungated manifest."""
    import torch

    from mapo_bench.io import make_manifest, write_json_atomic
    from mapo_bench.toy.classifier import ToyClassifier
    from mapo_bench.toy.config import ToyPretrainConfig, toy_config_hash
    from mapo_bench.toy.model import ToyArch, ToyPipeline

    folder = Path(folder)
    arch = ToyArch.model_validate(TINY_MODEL)
    ToyPipeline.build(arch, seed=seed, objective=objective).save_pretrained(folder)
    torch.manual_seed(seed)
    ToyClassifier(width=8).save(folder / "evaluators")
    cfg = ToyPretrainConfig.model_validate({"model": TINY_MODEL, "steps": 0, "objective": objective,
                                            "gate": {"enforce": False, "reason": "tiny untrained test base"}})
    verdict = {"status": "ungated", "failures": ["not measured"], "enforce": False, "reason": cfg.gate.reason}
    write_json_atomic(folder / "manifest.json", make_manifest(cfg, toy_config_hash(cfg), kind="toy-base",
                                                              gate={}, gate_verdict=verdict))
    return folder
