"""The gate: does a toy base follow prefixes and content well enough to build pairs from?

Measured on the base's own samples with the toy classifier (``measure_gate``) and stored in the
base's manifest; ``check_gate`` refuses a base below its thresholds unless the config said
``gate.enforce: false`` with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mapo_bench.errors import MapoBenchError
from mapo_bench.toy import vocab


def gate_prompt_groups() -> list[tuple[str, str | None, float, float]]:
    """(group name, style or None, alpha, marker strength or 0) for every group the gate measures: plain,
    every full style, every blend level of every target style, every marker strength."""
    groups: list[tuple[str, str | None, float, float]] = [("plain", None, 1.0, 0.0)]
    groups += [(s, s, 1.0, 0.0) for s in vocab.STYLES]
    groups += [(f"{s} {a:g}", s, a, 0.0) for s in vocab.TARGET_STYLES for a in vocab.BLEND_LEVELS[:-1]]
    groups += [("unsafe" if m >= 1.0 else f"unsafe {m:g}", None, 1.0, m) for m in vocab.MARKER_LEVELS]
    return groups


def gate_captions() -> list[str]:
    """The plain captions every gate group is sampled on (all 72)."""
    return vocab.all_plain_captions()


def group_caption(plain: str, style: str | None, alpha: float, unsafe: float) -> str:
    prefix = vocab.style_prefix(style, alpha) if style else ""
    return (vocab.unsafe_prefix(unsafe) if unsafe else "") + prefix + plain


def adherence_share(probs: dict[str, np.ndarray], style: str | None, alpha: float, unsafe: float,
                    blend_tolerance: float) -> float:
    """Share of images (classifier ``probs``) that show what a gate group asked for: the marker at an
    estimated strength (the unsafe head's probability) within ``blend_tolerance`` of the requested one;
    the argmax style for plain captions (the base style) and full prefixes; for a blend, an estimated
    alpha within ``blend_tolerance`` of the requested level."""
    from mapo_bench.toy.classifier import estimated_alpha

    if unsafe:
        return float((np.abs(probs["unsafe"][:, 1] - unsafe) <= blend_tolerance).mean())
    if style is None or alpha >= 1.0:
        wanted = vocab.STYLES.index(style or vocab.BASE_STYLE)
        return float((probs["style"].argmax(1) == wanted).mean())
    est = estimated_alpha(probs["style"], style)
    return float((np.abs(est - alpha) <= blend_tolerance).mean())


def measure_instrument(classifier: Any, gate_cfg: Any, seed: int = 0, group: Any = None) -> dict[str, float]:
    """The gate's rule applied to *renders* of every group (2 seeds per caption; a plain caption renders in
    the base style): how well the instrument itself scores ground truth, so a base's gate number can be
    read against its ceiling. Every rank renders its share and returns all numbers."""
    import torch

    from mapo_bench.toy.parallel import ProcessGroup
    from mapo_bench.toy.render import render_many

    group = group or ProcessGroup()
    out: dict[str, float] = {}
    for name, style, alpha, unsafe in gate_prompt_groups():
        captions = [group_caption(c, style, alpha, unsafe) for c in gate_captions() for _ in range(2)]
        seeds = [10**6 + seed * 100003 + i for i in range(len(captions))]
        pixels = torch.from_numpy(render_many(captions, seeds, group.shared_map)).permute(0, 3, 1, 2).float() / 127.5 - 1
        out[name] = adherence_share(classifier.probabilities(pixels), style, alpha, unsafe, gate_cfg.blend_tolerance)
    return out


def content_on_renders(folder: Any = None, seeds_per_caption: int = 2, seed: int = 0) -> dict[str, dict[str, float]]:
    """``toy-content`` (the fidelity instrument) on renders of every caption in every gate group, the same
    caption and seed in each group: whether the instrument scores a correct object equally in every style.
    Returns ``{group: {"mean": ..., "min": ..., "n": ...}}``; ``folder``: a toy base or classifier folder."""
    from mapo_bench.evaluators.toy import ToyContent
    from mapo_bench.toy.render import render_many

    evaluator = ToyContent.load(model=None if folder is None else str(folder))
    captions = [c for c in gate_captions() for _ in range(seeds_per_caption)]
    seeds = [2 * 10**6 + seed * 100003 + i for i in range(len(captions))]
    out: dict[str, dict[str, float]] = {}
    for name, style, alpha, unsafe in gate_prompt_groups():
        if unsafe:
            continue
        from PIL import Image

        pixels = render_many([group_caption(c, style, alpha, False) for c in captions], seeds)
        scores = evaluator.score([Image.fromarray(p) for p in pixels], captions)
        out[name] = {"mean": float(scores.mean()), "min": float(scores.min()), "n": int(len(scores))}
    return out


def measure_gate(pipe: Any, classifier: Any, gate_cfg: Any, sampler: Any, seed: int = 0,
                 progress: Any = None, group: Any = None) -> dict[str, Any]:
    """Sample every gate group and score it; returns the manifest's ``gate`` numbers (no verdict).

    ``group`` (a :class:`~mapo_bench.toy.parallel.ProcessGroup`): ranks share the groups round-robin
    and every rank returns all numbers (each group's samples depend on its seeds only).
    """
    import torch

    from mapo_bench.toy.parallel import ProcessGroup

    group = group or ProcessGroup()
    plain = gate_captions()
    adherence: dict[str, float] = {}
    content: dict[str, float] = {}
    groups = gate_prompt_groups()
    for name, style, alpha, unsafe in groups[group.rank :: group.world]:
        reps = gate_cfg.seeds_per_caption if name == "plain" else 1
        captions = [group_caption(c, style, alpha, unsafe) for c in plain for _ in range(reps)]
        seeds = [seed * 100003 + i for i in range(len(captions))]
        pixels = []
        for i in range(0, len(captions), 96):
            gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + 96]]
            noise = torch.cat([torch.randn((1, 12, 16, 16), generator=g) for g in gens])
            out = pipe(captions[i : i + 96], num_inference_steps=sampler.steps, guidance_scale=sampler.guidance,
                       latents=noise, output_type="pt")
            pixels.append(out.images)
        probs = classifier.probabilities(torch.cat(pixels))
        adherence[name] = adherence_share(probs, style, alpha, unsafe, gate_cfg.blend_tolerance)
        if name == "plain":
            parsed = [vocab.parse_caption(c) for c in captions]
            for head, values in (("shape", vocab.SHAPES), ("colour", vocab.COLOURS),
                                 ("position", vocab.POSITIONS), ("size", vocab.SIZES)):
                truth = np.array([values.index(getattr(p, head)) for p in parsed])
                content[head] = float((probs[head].argmax(1) == truth).mean())
            content["no_unsafe_marker"] = float((probs["unsafe"][:, 1] <= 0.5).mean())
        if progress is not None:
            progress(name)
    parts = group.gather((adherence, content))
    measured = {k: v for part, _ in parts for k, v in part.items()}
    adherence = {name: measured[name] for name, *_ in groups}
    content = {k: v for _, part in parts for k, v in part.items()}
    return {"prefix_adherence": adherence, "content": content,
            "samples_per_group": len(plain), "plain_samples": len(plain) * gate_cfg.seeds_per_caption,
            "sampler": {"steps": sampler.steps, "guidance": sampler.guidance}}


def gate_line(record: dict[str, Any], bullet: str = "") -> str:
    """A toy base's gate verdict from its backend record ("" for models without a gate): whether the base
    passed, or that it is **ungated** and which numbers failed (DESIGN 6; issue 6)."""
    if "gate" not in record:
        return ""
    model = record.get("model_id", "toy")
    if record["gate"] == "gated":
        return f"{bullet}toy base `{model}`: gate passed (its manifest holds the numbers)"
    failures = "; ".join(record.get("gate_failures") or []) or "not measured"
    return (f"{bullet}toy base `{model}` is **ungated** (gate {record.get('gate_status', 'unmeasured')}: {failures}); "
            "numbers from it are not backed by a base that follows its prompts")


def gate_failures(numbers: dict[str, Any], gate_cfg: Any) -> list[str]:
    """Every number below its threshold, as ``name value < threshold`` strings."""
    failures = []
    for name, value in numbers.get("prefix_adherence", {}).items():
        if value < gate_cfg.prefix_adherence:
            failures.append(f"prefix adherence '{name}' {value:.2f} < {gate_cfg.prefix_adherence}")
    for head in ("colour", "position", "shape"):
        value = numbers.get("content", {}).get(head)
        threshold = getattr(gate_cfg, head)
        if value is None or value < threshold:
            failures.append(f"{head} accuracy {value if value is None else round(value, 2)} < {threshold}")
    return failures


def gate_verdict(numbers: dict[str, Any], gate_cfg: Any) -> dict[str, Any]:
    failures = gate_failures(numbers, gate_cfg)
    status = "passed" if not failures else ("failed" if gate_cfg.enforce else "ungated")
    return {"status": status, "failures": failures, "enforce": gate_cfg.enforce, "reason": gate_cfg.reason,
            "thresholds": {"prefix_adherence": gate_cfg.prefix_adherence, "colour": gate_cfg.colour,
                           "position": gate_cfg.position, "shape": gate_cfg.shape}}


def load_manifest(obj: Any) -> tuple[dict[str, Any], str]:
    """A toy manifest from a backend (``.toy_manifest``), a folder, a manifest path or a dict."""
    if isinstance(obj, dict):
        return obj, "<manifest>"
    manifest = getattr(obj, "toy_manifest", None)
    if manifest is not None:
        return manifest, str(getattr(obj, "model_id", "toy"))
    path = Path(obj)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise MapoBenchError(f"{path}: no toy manifest; pretrain the base with mapo-bench toy pretrain")
    return json.loads(path.read_text()), str(path)


def check_gate(backend_or_manifest: Any) -> dict[str, Any]:
    """Refuse a toy base that failed its gate (MapoBenchError naming the failed numbers).

    Passes when the gate passed, or when the base's config set ``gate.enforce: false`` with a reason
    (the base is then marked ungated). Returns the manifest's gate verdict.
    """
    manifest, where = load_manifest(backend_or_manifest)
    verdict = manifest.get("gate_verdict")
    if verdict is None:
        raise MapoBenchError(f"{where}: the toy base has no gate measurement; re-run mapo-bench toy pretrain")
    if verdict["status"] == "failed":
        fail = "; ".join(verdict["failures"])
        raise MapoBenchError(f"{where}: toy base failed its gate ({fail}); pretrain a better base "
                             "(mapo-bench toy pretrain steps=...) or waive the gate: mapo-bench toy pretrain gate.enforce=false "
                             "gate.reason='...' re-measures the same weights without retraining; then use its output "
                             "folder as --model")
    return verdict
