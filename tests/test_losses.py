"""Losses against numbers derived by hand (REFERENCE.md section 2) and their invariants."""

from __future__ import annotations

import math

import pytest
import torch

from mapo_bench.losses import LOG2, dpo_loss, mapo_link, mapo_loss, per_sample_error, sft_loss
from mapo_bench.methods import DPO, MAPO, SFT


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_link_check_values_from_reference():
    """REFERENCE.md check values at s = 0.5: g(0.1)=0.97521, g(0.5)=0.88020, g(1)=0.77075, g(2)=0.58198."""
    got = mapo_link(t(0.1, 0.5, 1.0, 2.0))
    assert got.tolist() == pytest.approx([0.97521, 0.88020, 0.77075, 0.58198], abs=1e-5)


def test_link_series_branch_and_limits():
    """g(0) = 1 exactly; at m = 1e-3 (x = 5e-4) the series 1 - x/2 + x^2/12 = 0.99975002083;
    g is decreasing and tends to 0 (g(1e6) underflows to ~0 without inf/NaN)."""
    got = mapo_link(t(0.0, 1e-3, 1e6))
    assert got[0].item() == 1.0
    assert got[1].item() == pytest.approx(0.99975002083, abs=1e-7)
    assert 0.0 <= got[2].item() < 1e-15
    m = torch.linspace(0, 10, 50)
    assert torch.all(mapo_link(m)[1:] < mapo_link(m)[:-1])


def test_link_gradient_finite_at_zero_and_large():
    """dg/dm at m=0 is -s/2 = -0.25 (from the series); at huge m it is 0, never NaN."""
    m = t(0.0, 1e-6, 0.3, 1e6).requires_grad_()
    mapo_link(m).sum().backward()
    assert torch.isfinite(m.grad).all()
    assert m.grad[0].item() == pytest.approx(-0.25, abs=1e-6)


def test_mapo_loss_hand_derived():
    """m_w = 0.1, m_l = 0.2, s = 0.5, beta = 0.1, T = 10.
    g(0.1) = 0.05 / (e^0.05 - 1) = 0.975208; g(0.2) = 0.1 / (e^0.1 - 1) = 0.950833.
    z = 10 * (0.975208 - 0.950833) = 0.243751; log sigmoid(z) = -log(1 + e^-z) = -0.578680.
    loss = mean(m_w) - beta * (-0.578680) = 0.1 + 0.0578680 = 0.157868."""
    out = mapo_loss(t(0.1), t(0.2), beta=0.1, snr_value=0.5, num_train_timesteps=10)
    assert out.loss.item() == pytest.approx(0.157868, abs=1e-6)
    assert out.metrics["margin_term"] == pytest.approx(0.0578680, abs=1e-6)
    assert out.metrics["g_w"] == pytest.approx(0.975208, abs=1e-6)
    assert out.metrics["implicit_acc"] == 1.0


def test_mapo_equal_errors_margin_is_beta_log2():
    """m_w == m_l -> log sigmoid(0) = -log 2 -> margin term = beta * log 2; loss = m + beta log 2."""
    out = mapo_loss(t(0.3, 0.7), t(0.3, 0.7), beta=0.25)
    assert out.metrics["margin_term"] == pytest.approx(0.25 * math.log(2), abs=1e-7)
    assert out.loss.item() == pytest.approx(0.5 + 0.25 * math.log(2), abs=1e-6)
    assert out.metrics["implicit_acc"] == 0.5


def test_dpo_loss_hand_derived():
    """beta = 100: (m_w - m_l) - (r_w - r_l) = (0.10 - 0.12) - (0.11 - 0.12) = -0.01;
    inside = -0.5 * 100 * -0.01 = 0.5; loss = log(1 + e^-0.5) = log(1.606531) = 0.474077."""
    out = dpo_loss(t(0.10), t(0.12), t(0.11), t(0.12), beta=100.0)
    assert out.loss.item() == pytest.approx(0.474077, abs=1e-6)
    assert out.metrics["inside"] == pytest.approx(0.5, abs=1e-6)
    assert out.metrics["implicit_acc"] == 1.0


def test_dpo_model_equals_reference_is_log2():
    m_w, m_l = t(0.2, 0.5, 0.9), t(0.3, 0.1, 0.9)
    out = dpo_loss(m_w, m_l, m_w.clone(), m_l.clone(), beta=5000.0)
    assert out.loss.item() == pytest.approx(LOG2, abs=1e-7)
    assert out.metrics["implicit_acc"] == 0.5


def test_sft_is_mean_chosen_error():
    """mean(0.2, 0.4) = 0.3."""
    assert sft_loss(t(0.2, 0.4)).loss.item() == pytest.approx(0.3, abs=1e-7)


@pytest.mark.parametrize("loss_fn", ["mapo", "dpo"])
def test_gradients_lower_chosen_and_raise_rejected_error(loss_fn):
    """d loss / d m_w > 0 (descent lowers m_w) and d loss / d m_l < 0 (descent raises m_l)."""
    m_w, m_l = t(0.3, 0.2).requires_grad_(), t(0.25, 0.4).requires_grad_()
    if loss_fn == "mapo":
        loss = mapo_loss(m_w, m_l).loss
    else:
        loss = dpo_loss(m_w, m_l, t(0.3, 0.2), t(0.25, 0.4), beta=50.0).loss
    loss.backward()
    assert torch.all(m_w.grad > 0) and torch.all(m_l.grad < 0)


def test_bfloat16_inputs_give_float32_result_of_rounded_inputs():
    """bf16 m_w = 0.100 and m_l = 0.101 round to 0.10009765625 and 0.10107421875; the loss must equal
    the float32 loss of those rounded values (in bf16 arithmetic the margin would round to 0)."""
    m_w16, m_l16 = t(0.100).bfloat16(), t(0.101).bfloat16()
    got = mapo_loss(m_w16, m_l16)
    want = mapo_loss(m_w16.float(), m_l16.float())
    assert got.loss.dtype == torch.float32
    assert got.loss.item() == want.loss.item()
    assert got.metrics["margin_term"] != pytest.approx(0.1 * math.log(2), abs=1e-4)


def test_per_sample_error_shapes_and_value():
    """pred - target = 1 on one of 4 elements of sample 0 -> 0.25; sample 1 all 0 -> 0."""
    pred = torch.zeros(2, 1, 2, 2, dtype=torch.bfloat16)
    pred[0, 0, 0, 0] = 1
    assert per_sample_error(pred, torch.zeros(2, 1, 2, 2)).tolist() == [0.25, 0.0]


def test_methods_dispatch_to_their_losses():
    """Each entry calls its loss with its own options (defaults: MaPO beta 0.1, s 0.5; DPO beta 5000)."""
    from mapo_bench.methods import Errors

    m_w, m_l = t(0.1), t(0.2)
    assert MAPO.loss(Errors(m_w, m_l, num_train_timesteps=10)).loss.item() == pytest.approx(0.157868, abs=1e-6)
    # beta 0.2 doubles the margin term: 0.1 + 2 * 0.0578680
    assert MAPO.loss(Errors(m_w, m_l, num_train_timesteps=10), {"beta": 0.2}).loss.item() == pytest.approx(
        0.215736, abs=1e-6)
    assert DPO.loss(Errors(m_w, m_l, m_w, m_l)).loss.item() == pytest.approx(LOG2, abs=1e-7)
    assert SFT.loss(Errors(m_w)).loss.item() == pytest.approx(0.1)
    assert DPO.needs_reference and not MAPO.needs_reference and not SFT.uses_rejected
    assert (MAPO.options().beta, MAPO.options().snr_value, DPO.options().beta) == (0.1, 0.5, 5000.0)
