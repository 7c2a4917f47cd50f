"""Preference losses as pure functions of per-sample denoising errors.

Shapes: every error tensor is ``(B,)``, one value per pair (B pairs), computed as
``mean over C,H,W of (model_pred - target)^2`` by :func:`per_sample_error`. Every function upcasts
to float32 first: in bfloat16 the MaPO margin ``T * (g(0.100) - g(0.101))`` rounds to 0 where
float32 gives 0.246 (REFERENCE.md section 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

SERIES_CUTOFF = 1e-3  # below |x| = 1e-3 the series 1 - x/2 + x^2/12 is exact to float32
EXP_CAP = 50.0  # g(50) ~ 1e-20: capping keeps exp finite so gradients never become NaN


@dataclass
class LossOutput:
    """The scalar loss (with grad) and detached per-batch metrics for logging."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def per_sample_error(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` predictions and targets -> ``(N,)`` float32 mean squared error per sample."""
    diff = model_pred.float() - target.float()
    return diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)


def mapo_link(m: torch.Tensor, snr_value: float = 0.5) -> torch.Tensor:
    """MaPO's bounded link g(m) = x / (exp(x) - 1), x = snr_value * m (official MaPO code).

    Decreasing, g(0) = 1, g(inf) = 0. Near 0 the series ``1 - x/2 + x^2/12`` is used (a ``where``
    over x/expm1(x) alone gives NaN gradients at 0); x is capped at 50 so exp stays finite.
    Check values (s = 0.5): g(0.1) = 0.97521, g(1) = 0.77075, g(2) = 0.58198.
    """
    x = (m.float() * snr_value).clamp(max=EXP_CAP)
    small = x.abs() < SERIES_CUTOFF
    x_safe = torch.where(small, torch.ones_like(x), x)
    exact = x_safe / torch.expm1(x_safe)
    series = 1.0 - x / 2.0 + x * x / 12.0
    return torch.where(small, series, exact)


def mapo_loss(
    m_w: torch.Tensor,
    m_l: torch.Tensor,
    beta: float = 0.1,
    snr_value: float = 0.5,
    num_train_timesteps: int = 1000,
) -> LossOutput:
    """MaPO (Hong et al., arXiv 2406.06424; official code), reference-free.

    loss = mean(m_w) - beta * mean(log sigmoid(T * (g(m_w) - g(m_l)))), T = num_train_timesteps.
    ``m_w``, ``m_l``: ``(B,)`` errors of the trained model on chosen / rejected images.
    beta weights the margin term outside the log sigmoid.
    """
    m_w, m_l = m_w.float(), m_l.float()
    g_w, g_l = mapo_link(m_w, snr_value), mapo_link(m_l, snr_value)
    margin = F.logsigmoid(num_train_timesteps * (g_w - g_l))
    margin_term = -beta * margin.mean()
    loss = m_w.mean() + margin_term
    return LossOutput(loss, {
        "m_w": m_w.mean().item(),
        "m_l": m_l.mean().item(),
        "g_w": g_w.mean().item(),
        "g_l": g_l.mean().item(),
        "margin_term": margin_term.item(),
        "implicit_acc": (m_w < m_l).float().mean().item() + 0.5 * (m_w == m_l).float().mean().item(),
    })


def dpo_loss(
    m_w: torch.Tensor,
    m_l: torch.Tensor,
    r_w: torch.Tensor,
    r_l: torch.Tensor,
    beta: float = 5000.0,
) -> LossOutput:
    """Diffusion-DPO (Wallace et al., 2023), the SDXL launcher convention with the 0.5 inside.

    inside = -0.5 * beta * ((m_w - m_l) - (r_w - r_l)); loss = -mean(log sigmoid(inside)).
    ``m_*``: ``(B,)`` errors of the trained model; ``r_*``: ``(B,)`` errors of the frozen reference.
    Scripts that write ``beta * (...)`` without the 0.5 use half this beta for the same loss.
    Implicit accuracy = mean(inside > 0) + 0.5 * mean(inside == 0); model == reference gives log 2.
    """
    m_w, m_l, r_w, r_l = (t.float() for t in (m_w, m_l, r_w, r_l))
    inside = -0.5 * beta * ((m_w - m_l) - (r_w - r_l))
    loss = -F.logsigmoid(inside).mean()
    return LossOutput(loss, {
        "m_w": m_w.mean().item(),
        "m_l": m_l.mean().item(),
        "r_w": r_w.mean().item(),
        "r_l": r_l.mean().item(),
        "inside": inside.mean().item(),
        "implicit_acc": (inside > 0).float().mean().item() + 0.5 * (inside == 0).float().mean().item(),
    })


def sft_loss(m_w: torch.Tensor) -> LossOutput:
    """Supervised fine-tuning on chosen images: loss = mean(m_w); ``m_w`` is ``(B,)``."""
    m_w = m_w.float()
    loss = m_w.mean()
    return LossOutput(loss, {"m_w": loss.item()})


def dreambooth_loss(m_instance: torch.Tensor, m_prior: torch.Tensor | None, prior_weight: float = 1.0) -> LossOutput:
    """DreamBooth (Ruiz et al., CVPR 2023, eq. 2; REFERENCE.md 7): the instance images' denoising error plus
    ``prior_weight`` times the class images' (prior preservation), each a batch mean.

    ``m_instance``: ``(B,)`` errors on the subject images; ``m_prior``: ``(B',)`` errors on class images the
    frozen reference generated for the class prompt (None when ``prior_weight`` is 0).
    """
    m_instance = m_instance.float()
    instance = m_instance.mean()
    if m_prior is None or prior_weight == 0:
        return LossOutput(instance, {"m_w": instance.item(), "m_prior": float("nan")})
    prior = m_prior.float().mean()
    return LossOutput(instance + prior_weight * prior, {"m_w": instance.item(), "m_prior": prior.item()})


LOG2 = math.log(2.0)
