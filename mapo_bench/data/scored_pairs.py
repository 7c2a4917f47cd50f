"""The scored-pairs task (issue 14, general preference): Pick-a-Pic's setting with a metric as the rater.

Pick-a-Pic v2 pairs two generated images of one prompt and asks a person which is better; the mismatch is
mild because both images come from models like the reference. This task builds such pairs from the
reference itself (two samples of each prompt, different seeds) and labels each pair with a judge metric:
the higher score is chosen, a gap within ``judge_tie_margin`` is a tie (0.5 / 0.5, dropped or halved by the
trainer's tie policy). On the toy world the judge is ``toy-preference`` (a fixed rule standing in for a
person), so the general-preference path runs end to end on a CPU; on a real model any registered metric
(PickScore by default: AI feedback, not human votes; the card says so). Real Pick-a-Pic data is not built:
train on it by its hub id or a local copy (the reader takes the layout as it is).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mapo_bench.data.tasks import CardInfo, Task


@dataclass
class ScoredPairs(Task):
    """Two reference samples per prompt, labelled by ``judge``."""

    name: ClassVar[str] = "scored-pairs"
    extra_keys: ClassVar[tuple[str, ...]] = ("judge", "judge_tie_margin", "judge_options", "device")
    judge: str | None = None
    judge_tie_margin: float = 0.0
    judge_options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.judge = self.judge or ("toy-preference" if self.toy else "pickscore")

    def prefixes(self) -> tuple[str | None, str | None]:
        return None, None

    def side_seeds(self, seed: int) -> tuple[int, int]:
        from mapo_bench.data.from_images import two_seeds

        return two_seeds(seed)

    @functools.cached_property
    def evaluator(self) -> Any:
        from mapo_bench.registry import EVALUATORS

        return EVALUATORS.get(EVALUATORS.check(self.judge)).load(device=self.device, **self.judge_options)

    def label_pairs(self, captions: list[str], first: list[Any], second: list[Any]) -> list[tuple[float, float]]:
        a = self.evaluator.score(list(first), captions)
        b = self.evaluator.score(list(second), captions)
        return [judged(x, y, self.judge_tie_margin, self.evaluator.higher_is_better) for x, y in zip(a, b, strict=True)]

    def card(self) -> CardInfo:
        rater = ("the toy world's stand-in rater `toy-preference` (toy-content x toy-safety)" if self.judge == "toy-preference"
                 else f"the metric `{self.judge}` (AI feedback, not human votes)")
        return CardInfo(
            title=f"Scored pairs (judge {self.judge})",
            summary=("Both images of every pair are the reference model's own samples of the caption, with different "
                     f"seeds; the chosen one is the one {rater} scores higher (a gap within "
                     f"{self.judge_tie_margin:g} is a tie). General preference in Pick-a-Pic v2's setting: the "
                     "mismatch with the reference is mild by construction."),
            chosen_template="{prompt} (the higher-scored sample)", rejected_template="{prompt} (the other sample)",
            tags=("preference", "dpo", "mapo", "general-preference", self.judge))


def judged(first: float, second: float, tie_margin: float, higher_is_better: bool = True) -> tuple[float, float]:
    """(label of the first image, label of the second): 1 / 0 for the better one, 0.5 / 0.5 within the margin."""
    gap = (first - second) if higher_is_better else (second - first)
    if abs(gap) <= tie_margin:
        return 0.5, 0.5
    return (1.0, 0.0) if gap > 0 else (0.0, 1.0)
