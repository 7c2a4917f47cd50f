"""Method registry entries: each names its loss, its config and whether it needs a reference model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mapo_bench import losses


@dataclass(frozen=True)
class Method:
    """What the one training loop needs to know about a preference method."""

    name: str
    default_beta: float | None
    needs_reference: bool
    uses_rejected: bool
    _loss: Callable[..., losses.LossOutput]

    def loss(
        self,
        m_w: torch.Tensor,
        m_l: torch.Tensor | None = None,
        r_w: torch.Tensor | None = None,
        r_l: torch.Tensor | None = None,
        beta: float | None = None,
        **options: float,
    ) -> losses.LossOutput:
        beta = self.default_beta if beta is None else beta
        if self.name == "mapo":
            return self._loss(m_w, m_l, beta=beta, **options)
        if self.name == "dpo":
            return self._loss(m_w, m_l, r_w, r_l, beta=beta)
        return self._loss(m_w)


MAPO = Method("mapo", 0.1, needs_reference=False, uses_rejected=True, _loss=losses.mapo_loss)
DPO = Method("dpo", 5000.0, needs_reference=True, uses_rejected=True, _loss=losses.dpo_loss)
SFT = Method("sft", None, needs_reference=False, uses_rejected=False, _loss=losses.sft_loss)
