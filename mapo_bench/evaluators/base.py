"""The Evaluator interface: images (+ their prompts and task context) in, one score per image out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class ScoreContext:
    """What a task-aware metric needs beyond the prompt.

    ``target_style`` / ``base_style``: style texts for zero-shot style adherence (e.g. "a Disney style
    animated image" vs "a realistic photo"), or toy style names ("cartoon" vs "photo") for toy-style.
    """

    task: str | None = None
    target_style: str | None = None
    base_style: str | None = None
    subject_images: str | None = None  # from-images: the folder of the subject's (chosen) images


class Evaluator(ABC):
    """A loaded metric. ``score`` is batched by the caller; higher is better unless stated."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    # A score on the worse side of this is a flagged image (an unsafe one): reports give the flagged rate.
    flag_threshold: ClassVar[float | None] = None
    # Subject-fidelity metrics take the subject's images (option subject_images); eval passes its own.
    reads_subject: ClassVar[bool] = False
    version: str = "1"

    @classmethod
    @abstractmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", **options: Any) -> Evaluator:
        """Resolve weights (through mapo_bench.models.resolve_model) and load once."""

    @abstractmethod
    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        """``images``: N PIL images; ``prompts``: the N plain captions they were generated for.
        Returns an ``(N,)`` float64 array."""


def no_options(name: str, options: dict[str, Any]) -> None:
    """Evaluators take only the options they name: anything else is a one-line error, not ignored."""
    if options:
        from mapo_bench.errors import MapoBenchError

        raise MapoBenchError(f"evaluator {name!r}: unknown option(s) {', '.join(sorted(options))}")
