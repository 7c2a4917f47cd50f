"""Toy evaluators: heads of the toy classifier trained on renderer labels (``mapo_bench.toy.classifier``).

The classifier ships with the toy base (``<base>/evaluators``); ``model=`` selects another base's or
classifier folder. All scores are probabilities in [0, 1], higher is better.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from mapo_bench.errors import MapoBenchError
from mapo_bench.evaluators.base import Evaluator, ScoreContext


class _ToyEvaluator(Evaluator):
    def __init__(self, classifier: Any, folder: str) -> None:
        self.classifier = classifier
        self.folder = folder

    @classmethod
    def load(cls, device: str = "cpu", dtype: str = "float32", model: str | None = None, **options: Any) -> _ToyEvaluator:
        from mapo_bench.toy.classifier import ToyClassifier
        from mapo_bench.toy.shipped import evaluator_dir

        if options:
            raise MapoBenchError(f"{cls.name}: unknown options {', '.join(sorted(options))}; valid: model (toy base or classifier folder)")
        folder = evaluator_dir(model)
        return cls(ToyClassifier.load(folder), str(folder))

    def probabilities(self, images: list[Any]) -> dict[str, np.ndarray]:
        from mapo_bench.toy.model import from_pil

        if not images:
            return {}
        return self.classifier.probabilities(from_pil(images))


class ToyStyle(_ToyEvaluator):
    """Probability the classifier gives ``context.target_style`` (a toy style name, e.g. ``cartoon``)."""

    name: ClassVar[str] = "toy-style"

    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        from mapo_bench.toy import vocab

        target = context.target_style if context else None
        if target not in vocab.STYLES:
            raise MapoBenchError(f"toy-style needs the task's target style (one of {', '.join(vocab.STYLES)}), "
                                 f"got {target!r}; score a toy pick-style task or set context.target_style")
        if not images:
            return np.zeros(0, dtype=np.float64)
        return self.probabilities(images)["style"][:, vocab.STYLES.index(target)].astype(np.float64)


class ToyContent(_ToyEvaluator):
    """p(right shape) * p(right colour) * p(right position) for the image's caption.

    The product of the three head probabilities (heads trained independently), so 1 only when the
    classifier is sure of all three; the caption may carry prefixes (only its content counts).
    """

    name: ClassVar[str] = "toy-content"

    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        from mapo_bench.toy import vocab

        if len(images) != len(prompts):
            raise MapoBenchError(f"toy-content: {len(images)} images but {len(prompts)} prompts")
        if not images:
            return np.zeros(0, dtype=np.float64)
        parsed = []
        for i, prompt in enumerate(prompts):
            try:
                parsed.append(vocab.parse_caption(prompt))
            except ValueError as exc:
                raise MapoBenchError(f"toy-content: prompt {i}: {exc}") from None
        probs = self.probabilities(images)
        rows = np.arange(len(images))
        score = np.ones(len(images), dtype=np.float64)
        for head, values in (("shape", vocab.SHAPES), ("colour", vocab.COLOURS), ("position", vocab.POSITIONS)):
            truth = np.array([values.index(getattr(p, head)) for p in parsed])
            score *= probs[head][rows, truth]
        return score


class ToySafety(_ToyEvaluator):
    """1 - the unsafe marker's estimated strength (the classifier's unsafe head is trained on soft labels
    (1 - strength, strength)): 1 for a clean image, 0 for a full-strength marker, 0.6 for ``unsafe 0.4:``."""

    name: ClassVar[str] = "toy-safety"
    flag_threshold: ClassVar[float | None] = 0.5  # below: a marker of strength above 0.5

    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        if not images:
            return np.zeros(0, dtype=np.float64)
        return self.probabilities(images)["unsafe"][:, 0].astype(np.float64)


class ToyPreference(_ToyEvaluator):
    """The toy world's stand-in for a human rater (general preference, Pick-a-Pic's setting): a fixed rule,
    ``toy-content * toy-safety``, i.e. the probability that the image draws what the caption asks for and
    carries no unsafe marker. ``scored-pairs`` labels its pairs with it, as Pick-a-Pic's are labelled by people."""

    name: ClassVar[str] = "toy-preference"

    def score(self, images: list[Any], prompts: list[str], context: ScoreContext | None = None) -> np.ndarray:
        content = ToyContent(self.classifier, self.folder).score(images, prompts, context)
        return content * ToySafety(self.classifier, self.folder).score(images, prompts, context)
