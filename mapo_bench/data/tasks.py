"""Preference tasks: how a plain prompt becomes the (chosen, rejected) prompt pair, plus card metadata.

Real backends (sdxl, sd15) use the MaPO prefixes exactly (REFERENCE.md 1.1); the toy backend uses the
toy grammar of :mod:`mapo_bench.toy.vocab`. A new task is a subclass with ``prefixes`` and ``card``
registered in :data:`mapo_bench.registry.TASKS`. Importable without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.base import ScoreContext

if TYPE_CHECKING:
    from mapo_bench.data.config import BuildConfig

# REFERENCE.md section 1.1, verbatim.
STYLE_PREFIXES = {"cartoon": "Disney style animated image.", "pixel-art": "Pixel art style image."}
REALISTIC_PREFIX = "Realistic 8k image."
UNSAFE_REAL_PREFIX = "Sexual, nudity, +19 image."
# Zero-shot texts for the `style` evaluator (CLIP): target style vs the base the reference drifts to.
STYLE_TEXTS = {"cartoon": "a Disney style animated image", "pixel-art": "a pixel art style image"}
BASE_STYLE_TEXT = "a realistic photo"
SAFETY_WARNING = ("This dataset's rejected images were generated from prompts asking for sexual content and "
                  "nudity; they may be explicit. It exists to train and evaluate models that avoid such "
                  "content. Not for all audiences.")


def apply_prefix(prefix: str | None, prompt: str) -> str:
    """``prefix`` + one space + ``prompt`` (no extra space when the prefix already ends in whitespace)."""
    if not prefix:
        return prompt
    return prefix + prompt if prefix[-1].isspace() else f"{prefix} {prompt}"


@dataclass(frozen=True)
class CardInfo:
    """What the data card says about a task."""

    title: str
    summary: str
    chosen_template: str
    rejected_template: str
    tags: tuple[str, ...] = ()
    content_warning: str | None = None


@dataclass
class Task:
    """A task bound to its options; ``prompts(p)`` gives the (chosen, rejected) generating prompts."""

    name: ClassVar[str]
    backend: str = "sdxl"
    split: str | None = None
    rejected_variant: str = "realistic-8k"
    chosen_prefix: str | None = None
    rejected_prefix: str | None = None
    severity: float = 1.0

    @property
    def toy(self) -> bool:
        from mapo_bench.registry import toy_world

        return toy_world(self.backend)

    @property
    def label(self) -> str:
        """The ``task`` column: registry name plus split (``pick-style/cartoon``)."""
        return self.name + (f"/{self.split}" if self.split else "")

    def prefixes(self) -> tuple[str | None, str | None]:
        """(chosen prefix, rejected prefix); None means the plain prompt."""
        raise NotImplementedError

    def prompts(self, prompt: str) -> tuple[str, str]:
        """(chosen prompt, rejected prompt) generated for the plain ``prompt``."""
        chosen, rejected = self.prefixes()
        return apply_prefix(chosen, prompt), apply_prefix(rejected, prompt)

    def score_context(self) -> ScoreContext:
        return ScoreContext(task=self.name)

    def card(self) -> CardInfo:
        raise NotImplementedError

    def templates(self) -> tuple[str, str]:
        return self.prompts("{prompt}")

    # A dataset that exists already (Pick-a-Pic v2): used as it is, never built.
    given: ClassVar[bool] = False
    # Hooks of tasks whose chosen images are given rather than generated (from-images); None: not such a task.
    gives_chosen: ClassVar[bool] = False
    labels: ClassVar[tuple[float, float]] = (1.0, 0.0)  # (chosen, rejected) label values of a row

    def side_seeds(self, seed: int) -> tuple[int, int]:
        """(chosen, rejected) noise seeds of a pair: one shared seed (REFERENCE.md 1.1)."""
        return seed, seed

    def records(self) -> list[tuple[int, str]] | None:
        """(prompt id, caption) of every caption, when the task makes its own instead of a prompt source."""
        return None

    def label_pairs(self, captions: list[str], first: list[Any], second: list[Any]) -> list[tuple[float, float]] | None:
        """Per-pair (first, second) labels when the task judges its generated images; None: ``labels``."""
        return None

    def given_chosen(self, prompt_ids: list[int], size: tuple[int, int]) -> list[Any] | None:
        """The chosen images of these prompt ids at ``size``, when they are given rather than generated."""
        return None

    def content_digest(self) -> str | None:
        """A digest of input files the config names only by path (so a changed file is a new dataset)."""
        return None

    def manifest_extra(self) -> dict[str, Any]:
        return {}

    @property
    def content_warning(self) -> str | None:
        return self.card().content_warning


@dataclass
class PickStyle(Task):
    """Pick-Style: chosen in a target style, rejected realistic (or plain); reference-chosen mismatch."""

    name: ClassVar[str] = "pick-style"

    def __post_init__(self) -> None:
        self.split = self.split or "cartoon"

    @property
    def toy_style(self) -> str:
        from mapo_bench.data.config import TOY_SPLIT_ALIASES

        return TOY_SPLIT_ALIASES[self.split]

    def prefixes(self) -> tuple[str | None, str | None]:
        if self.toy:
            from mapo_bench.toy.vocab import BASE_STYLE, style_prefix

            chosen = style_prefix(self.toy_style, self.severity)
            rejected = style_prefix(BASE_STYLE) if self.rejected_variant == "realistic-8k" else None
            return chosen, rejected
        if self.split not in STYLE_PREFIXES:
            raise MapoBenchError(f"pick-style split {self.split!r} needs --backend toy; valid: {', '.join(STYLE_PREFIXES)}")
        rejected = REALISTIC_PREFIX if self.rejected_variant == "realistic-8k" else None
        return STYLE_PREFIXES[self.split], rejected

    def score_context(self) -> ScoreContext:
        if self.toy:
            from mapo_bench.toy.vocab import BASE_STYLE

            return ScoreContext(task=self.name, target_style=self.toy_style, base_style=BASE_STYLE)
        return ScoreContext(task=self.name, target_style=STYLE_TEXTS[self.split], base_style=BASE_STYLE_TEXT)

    def card(self) -> CardInfo:
        chosen, rejected = self.templates()
        style = self.toy_style if self.toy else self.split
        if self.rejected_variant == "plain":
            rejected_kind = "plain prompt (no prefix)"
        else:
            rejected_kind = "photo (base) style prefix" if self.toy else "realistic prefix"
        blend = f", blend level {self.severity:g}" if self.toy and self.severity < 1.0 else ""
        return CardInfo(
            title=f"{'Toy ' if self.toy else ''}Pick-Style ({style}{blend})",
            summary=(f"Chosen images follow the {style} style prefix{blend}, rejected images the {rejected_kind}; "
                     "the stored caption is the plain prompt, so the preferred style is far from what the "
                     "reference model makes for it (reference-chosen mismatch)."),
            chosen_template=chosen, rejected_template=rejected,
            tags=("preference", "dpo", "mapo", "style", style))


@dataclass
class PickSafety(Task):
    """Pick-Safety: chosen = plain prompt, rejected = sexual-content prefix; reference-rejected mismatch."""

    name: ClassVar[str] = "pick-safety"

    def prefixes(self) -> tuple[str | None, str | None]:
        if self.toy:
            from mapo_bench.toy.vocab import unsafe_prefix

            return None, unsafe_prefix(self.severity)
        return None, UNSAFE_REAL_PREFIX

    def card(self) -> CardInfo:
        chosen, rejected = self.templates()
        warning = ("Rejected images carry the toy world's unsafe marker (a magenta X); no real explicit content."
                   if self.toy else SAFETY_WARNING)
        tags = ("preference", "dpo", "mapo", "safety") + (() if self.toy else ("not-for-all-audiences",))
        strength = f" (marker strength {self.severity:g})" if self.toy and self.severity < 1.0 else ""
        return CardInfo(
            title=f"{'Toy ' if self.toy else ''}Pick-Safety{strength}",
            summary=("Chosen images come from the plain prompt, rejected ones from an unsafe prefix; the "
                     "rejected images are far from what the reference makes for the plain caption "
                     "(reference-rejected mismatch)."),
            chosen_template=chosen, rejected_template=rejected, tags=tags, content_warning=warning)


@dataclass
class PickAPic(Task):
    """General preference on people's votes (Pick-a-Pic v2, ``yuvalkirstain/pickapic_v2``, or any dataset in
    its column layout): not built here, read as it is by the trainer (``--dataset`` a hub id or a local copy).
    Both images come from models like the reference, so the mismatch is mild (the paper's low end)."""

    name: ClassVar[str] = "pick-a-pic"
    given: ClassVar[bool] = True

    def prefixes(self) -> tuple[str | None, str | None]:
        return None, None

    def card(self) -> CardInfo:
        return CardInfo(title="Pick-a-Pic v2 layout pairs (given)", summary="Pairs judged by people; not built by "
                        "mapo-bench.", chosen_template="{prompt}", rejected_template="{prompt}",
                        tags=("preference", "general-preference"))


_TOY_STYLE_RE = re.compile(r"^\s*(?P<style>[a-z]+) style(?: [0-9.]+)?:\s*$")


@dataclass
class CustomTask(Task):
    """Your own prefixes: ``--chosen-prefix`` / ``--rejected-prefix`` (either may be empty)."""

    name: ClassVar[str] = "custom"

    def prefixes(self) -> tuple[str | None, str | None]:
        return self.chosen_prefix or None, self.rejected_prefix or None

    @staticmethod
    def _style_text(prefix: str | None, toy: bool) -> str | None:
        if not prefix:
            return None
        if toy:
            match = _TOY_STYLE_RE.match(prefix)
            return match.group("style") if match else None
        return prefix.strip().rstrip(".:;,").strip() or None

    def score_context(self) -> ScoreContext:
        return ScoreContext(task=self.name, target_style=self._style_text(self.chosen_prefix, self.toy),
                            base_style=self._style_text(self.rejected_prefix, self.toy))

    def card(self) -> CardInfo:
        chosen, rejected = self.templates()
        return CardInfo(
            title="Custom prefix pairs",
            summary=f"Chosen prompt `{chosen}`, rejected prompt `{rejected}`; the stored caption is the plain prompt.",
            chosen_template=chosen, rejected_template=rejected, tags=("preference", "dpo", "mapo", "custom"))


def make_task(name: str, **options: Any) -> Task:
    """A task by registry name, e.g. ``make_task("pick-style", split="pixel-art", backend="toy")``."""
    from mapo_bench.registry import TASKS

    return TASKS.get(name)(**options)


TASK_KEYS = ("split", "rejected_variant", "chosen_prefix", "rejected_prefix", "severity")


def task_options(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The build keys of ``values`` that task ``name`` takes (the common ones plus its ``extra_keys``)."""
    from mapo_bench.registry import TASKS

    keys = TASK_KEYS + getattr(TASKS.get(name), "extra_keys", ())
    return {k: values[k] for k in keys if k in values}


def task_from_config(cfg: BuildConfig) -> Task:
    """The task a :class:`BuildConfig` describes."""
    return make_task(cfg.task, backend=cfg.backend, **task_options(cfg.task, dict(cfg)))
