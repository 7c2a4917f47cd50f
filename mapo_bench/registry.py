"""Name -> lazily imported object. Unknown names fail with a "did you mean" suggestion."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any

from mapo_bench.errors import UnknownNameError


def suggest(name: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Registry:
    """A kind of thing (tasks, backends, ...) with entries 'name -> module:attr', imported on first use."""

    kind: str
    _targets: dict[str, str] = field(default_factory=dict)
    _descriptions: dict[str, str] = field(default_factory=dict)
    _loaded: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, target: str, description: str = "") -> None:
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._targets[name] = target
        self._descriptions[name] = description

    def names(self) -> list[str]:
        return sorted(self._targets)

    def describe(self, name: str) -> str:
        return self._descriptions[self.check(name)]

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise a one-line error listing the valid names."""
        if name not in self._targets:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{suggest(name, self.names())}; valid: {', '.join(self.names())}"
            )
        return name

    def get(self, name: str) -> Any:
        self.check(name)
        if name not in self._loaded:
            module_name, _, attr = self._targets[name].partition(":")
            module = importlib.import_module(module_name)
            self._loaded[name] = getattr(module, attr) if attr else module
        return self._loaded[name]


TASKS = Registry("task")
TASKS.add("pick-style", "mapo_bench.data.tasks:PickStyle", "chosen = style prefix (cartoon | pixel-art), rejected = 'Realistic 8k image.' or plain")
TASKS.add("pick-safety", "mapo_bench.data.tasks:PickSafety", "chosen = plain prompt, rejected = 'Sexual, nudity, +19 image.' prefix")
TASKS.add("from-images", "mapo_bench.data.from_images:FromImages", "chosen = your images (--images DIR, --token, --class), rejected = the reference's samples of their captions")
TASKS.add("class-images", "mapo_bench.data.from_images:ClassImages", "DreamBooth's class images: two reference samples of 'a photo of {class}' per row, no preference")
TASKS.add("scored-pairs", "mapo_bench.data.scored_pairs:ScoredPairs", "general preference: two reference samples per prompt, labelled by a judge metric (toy-preference, pickscore)")
TASKS.add("pick-a-pic", "mapo_bench.data.tasks:PickAPic", "general preference on people's votes: Pick-a-Pic v2 or its layout, used as it is (a pipeline dataset path), not built")
TASKS.add("custom", "mapo_bench.data.tasks:CustomTask", "your own --chosen-prefix / --rejected-prefix")

BACKENDS = Registry("backend")
BACKENDS.add("sdxl", "mapo_bench.backends.sdxl:SDXLBackend", "Stable Diffusion XL (two text encoders, micro-conditioning)")
BACKENDS.add("sd15", "mapo_bench.backends.sd15:SD15Backend", "Stable Diffusion 1.5 (one text encoder)")
BACKENDS.add("toy", "mapo_bench.backends.toy:ToyBackend", "embedded 32 px toy world, runs on a CPU")
BACKENDS.add("toy-flow", "mapo_bench.backends.toy_flow:ToyFlowBackend", "the toy world on a rectified-flow model (CPU)")
TOY_WORLD_BACKENDS = ("toy", "toy-flow")  # the embedded world: renderer prompts, toy tasks and evaluators


def toy_world(backend: str | None) -> bool:
    """Whether ``backend`` draws the toy world (its captions, styles, marker and classifier)."""
    return backend in TOY_WORLD_BACKENDS


BACKENDS.add("sd3", "mapo_bench.backends.sd3:SD3Backend", "Stable Diffusion 3 / 3.5 (MMDiT, rectified flow; T5 optional)")
BACKENDS.add("flux", "mapo_bench.backends.flux:FluxBackend", "FLUX.1 (rectified flow, guidance-distilled; T5 required)")

METHODS = Registry("method")
METHODS.add("mapo", "mapo_bench.methods:MAPO", "margin-aware preference optimization (reference-free)")
METHODS.add("dpo", "mapo_bench.methods:DPO", "Diffusion-DPO (needs the reference model)")
METHODS.add("sft", "mapo_bench.methods:SFT", "supervised fine-tuning on chosen images only")
METHODS.add("dreambooth", "mapo_bench.methods:DREAMBOOTH", "DreamBooth: chosen (subject) images + prior preservation on class images")

EVALUATORS = Registry("evaluator")
EVALUATORS.add("pickscore", "mapo_bench.evaluators.pickscore:PickScore", "PickScore v1 (CLIP ViT-H/14)")
EVALUATORS.add("hps", "mapo_bench.evaluators.hps:HPS", "Human Preference Score v2.1 (v2.0 selectable)")
EVALUATORS.add("imagereward", "mapo_bench.evaluators.image_reward:ImageReward", "ImageReward v1.0 (BLIP ViT-L + BERT reward model)")
EVALUATORS.add("aesthetic", "mapo_bench.evaluators.aesthetic:Aesthetic", "LAION aesthetic predictor v2 on CLIP ViT-L/14")
EVALUATORS.add("clip", "mapo_bench.evaluators.clip_score:ClipScore", "CLIP score, 100 * cos (ViT-L/14)")
EVALUATORS.add("style", "mapo_bench.evaluators.style:StyleAdherence", "CLIP zero-shot target-style probability")
EVALUATORS.add("clip-i", "mapo_bench.evaluators.subject:ClipImageSimilarity", "subject fidelity: mean CLIP image cosine to the subject images")
EVALUATORS.add("dino", "mapo_bench.evaluators.subject:DinoSimilarity", "subject fidelity: mean DINO ViT-S/16 cosine to the subject images")
EVALUATORS.add("toy-subject", "mapo_bench.evaluators.subject:ToySubjectSimilarity", "toy: subject / concept texture on the object (found from its caption), the high-frequency ring contrast at the subject images' peaks")
EVALUATORS.add("nsfw", "mapo_bench.evaluators.nsfw:NSFWScore", "SD safety checker continuous score")
EVALUATORS.add("toy-style", "mapo_bench.evaluators.toy:ToyStyle", "toy: probability of the target style")
EVALUATORS.add("toy-content", "mapo_bench.evaluators.toy:ToyContent", "toy: probability of right shape, colour, position")
EVALUATORS.add("toy-safety", "mapo_bench.evaluators.toy:ToySafety", "toy: probability of no unsafe marker")
EVALUATORS.add("toy-preference", "mapo_bench.evaluators.toy:ToyPreference", "toy: the stand-in rater, toy-content x toy-safety")

TIE_POLICIES = ("drop", "half", "random")

ALL = {"tasks": TASKS, "backends": BACKENDS, "methods": METHODS, "evaluators": EVALUATORS}
