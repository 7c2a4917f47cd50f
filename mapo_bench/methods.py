"""Method registry entries: each method carries its options model and one loss over per-sample errors.

A method is known only here (and by its loss in :mod:`mapo_bench.losses`): the training loop computes
the per-sample errors of a micro-batch and calls ``method.loss(errors, options)`` without knowing which
method it runs. Configs write a method's options under a key named after it (``mapo: {beta: 0.1,
snr_value: 0.5}``, ``dpo: {beta: 5000}``; CLI ``mapo.beta=0.2``, pipeline grids ``dpo.beta``), validated
by ``method.options``. Importable without torch (the losses are imported when first called).

Adding a paired method: its loss in ``losses.py``, an entry here, its registry line, a recipe, a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mapo_bench.config import StrictModel

if TYPE_CHECKING:
    import torch

    from mapo_bench.losses import LossOutput


@dataclass(frozen=True)
class Errors:
    """Per-sample float32 denoising errors of one micro-batch, each ``(B,)`` (``losses.per_sample_error``):
    the trained model on the chosen (``m_w``) and rejected (``m_l``) images, the frozen reference on the
    same (``r_w``, ``r_l``; only for a method that ``needs_reference``), and the backend's number of
    training timesteps (MaPO's margin scale)."""

    m_w: torch.Tensor
    m_l: torch.Tensor | None = None
    r_w: torch.Tensor | None = None
    r_l: torch.Tensor | None = None
    num_train_timesteps: int = 1000
    m_prior: torch.Tensor | None = None  # errors on the prior stream's class images (a method that uses_prior)


class MapoOptions(StrictModel):
    """MaPO (Hong et al., 2024; REFERENCE.md 2): the official defaults."""

    beta: float = Field(0.1, gt=0, description="weight of the margin term")
    snr_value: float = Field(0.5, gt=0, description="the link constant s in g(m) = s*m / (exp(s*m) - 1)")


class DpoOptions(StrictModel):
    """Diffusion-DPO (Wallace et al., 2023; REFERENCE.md 3): the SDXL launcher's beta (0.5 * beta convention)."""

    beta: float = Field(5000.0, gt=0, description="KL weight; the loss uses 0.5 * beta inside the sigmoid")


class DreamBoothOptions(StrictModel):
    """DreamBooth (Ruiz et al., 2023; REFERENCE.md 7): prior preservation with weight 1 on class images."""

    prior_weight: float = Field(1.0, ge=0, description="lambda of the prior-preservation loss (0: none)")
    class_data: str | None = Field(None, description="dataset of class images (build-dataset class-images "
                                                     "--class dog); needed when prior_weight > 0")

    def prior_data(self) -> str | None:
        """The class-image dataset the loop reads as its second stream, or None (no prior term)."""
        if self.prior_weight == 0:
            return None
        if not self.class_data:
            from mapo_bench.errors import MapoBenchError

            raise MapoBenchError("dreambooth needs its class images: dreambooth.class_data=DIR (build them with "
                                 "`mapo-bench build-dataset class-images --class dog`), or dreambooth.prior_weight=0")
        return self.class_data


class NoOptions(StrictModel):
    """A method without options (SFT)."""


@dataclass(frozen=True)
class Method:
    """What the one training loop needs to know about a method."""

    name: str
    options: type[StrictModel]
    needs_reference: bool
    uses_rejected: bool
    _loss: Callable[[Errors, Any], LossOutput]
    uses_prior: bool = False  # reads a second stream of class images (options.prior_data())
    prior_option: str | None = None  # the option naming that stream's dataset (a pipeline fills it in)

    def loss(self, errors: Errors, options: StrictModel | dict[str, Any] | None = None) -> LossOutput:
        """The method's loss on ``errors``; ``options``: an instance or dict of ``self.options`` (None: defaults)."""
        if not isinstance(options, self.options):
            options = self.options.model_validate(options or {})
        return self._loss(errors, options)


def _mapo(e: Errors, o: MapoOptions) -> LossOutput:
    from mapo_bench.losses import mapo_loss

    return mapo_loss(e.m_w, e.m_l, beta=o.beta, snr_value=o.snr_value, num_train_timesteps=e.num_train_timesteps)


def _dpo(e: Errors, o: DpoOptions) -> LossOutput:
    from mapo_bench.losses import dpo_loss

    return dpo_loss(e.m_w, e.m_l, e.r_w, e.r_l, beta=o.beta)


def _sft(e: Errors, o: NoOptions) -> LossOutput:
    from mapo_bench.losses import sft_loss

    return sft_loss(e.m_w)


def _dreambooth(e: Errors, o: DreamBoothOptions) -> LossOutput:
    from mapo_bench.losses import dreambooth_loss

    return dreambooth_loss(e.m_w, e.m_prior, prior_weight=o.prior_weight)


MAPO = Method("mapo", MapoOptions, needs_reference=False, uses_rejected=True, _loss=_mapo)
DPO = Method("dpo", DpoOptions, needs_reference=True, uses_rejected=True, _loss=_dpo)
SFT = Method("sft", NoOptions, needs_reference=False, uses_rejected=False, _loss=_sft)
DREAMBOOTH = Method("dreambooth", DreamBoothOptions, needs_reference=False, uses_rejected=False, _loss=_dreambooth,
                    uses_prior=True, prior_option="class_data")
