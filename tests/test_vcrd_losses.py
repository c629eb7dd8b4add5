"""VCRD's pure pieces (losses.py): the alpha-beta divergence of ABKD against its formula in
float64 with plain Python sums, and its limits; the eq. (1) weights and their ablation rules;
the regime shares."""

from __future__ import annotations

import math

import pytest
import torch

from reasondistill import losses


def _probs(logits):
    return torch.softmax(logits.double(), -1).tolist()


def _ab_reference(p, q, a, b):
    """D_AB(p || q) for one distribution pair, straight from the formula (a, b, a+b nonzero)."""
    return -sum(pi ** a * qi ** b - a / (a + b) * pi ** (a + b) - b / (a + b) * qi ** (a + b)
                for pi, qi in zip(p, q)) / (a * b)


@pytest.mark.parametrize("a,b", [(0.5, 0.5), (0.2, 0.7), (1.5, -0.3), (2.0, 1.0), (-0.4, 1.2)])
def test_alpha_beta_matches_formula(a, b):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 7, generator=g, dtype=torch.float64), torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    got = losses.alpha_beta_divergence(s, t, a, b)
    for i in range(2):
        for j in range(3):
            ref = _ab_reference(_probs(t[i, j]), _probs(s[i, j]), a, b)
            assert got[i, j].item() == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert (got >= -1e-12).all()


def test_alpha_beta_limits_are_forward_and_reverse_kl():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64)
    fkl, rkl = losses.forward_kl(s, t), losses.reverse_kl(s, t)
    assert torch.allclose(losses.alpha_beta_divergence(s, t, 1.0, 0.0), fkl, atol=1e-12)
    assert torch.allclose(losses.alpha_beta_divergence(s, t, 0.0, 1.0), rkl, atol=1e-12)
    # the general formula approaches them continuously
    assert torch.allclose(losses.alpha_beta_divergence(s, t, 1.0, 1e-6), fkl, atol=1e-5)
    assert torch.allclose(losses.alpha_beta_divergence(s, t, 1e-6, 1.0), rkl, atol=1e-5)
    # alpha = -beta and alpha = beta = 0 limits
    assert torch.allclose(losses.alpha_beta_divergence(s, t, 0.7, -0.7),
                          losses.alpha_beta_divergence(s, t, 0.7, -0.7 + 1e-7), atol=1e-5)
    lp, lq = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    assert torch.allclose(losses.alpha_beta_divergence(s, t, 0.0, 0.0), 0.5 * ((lp - lq) ** 2).sum(-1), atol=1e-12)
    assert torch.allclose(losses.alpha_beta_divergence(s, s, 0.3, 0.6), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_alpha_beta_gradient_finite():
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    losses.alpha_beta_divergence(s, torch.randn(3, 5, dtype=torch.float64), 0.5, 0.5).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_vcrd_weights_rules():
    r_s = torch.tensor([0.9, 0.2, 0.5, 0.0], dtype=torch.float64)
    r_t = torch.tensor([0.3, 0.8, 0.5, 0.0], dtype=torch.float64)
    eps = 1e-8
    ratio = [0.9 / (0.3 + eps), 0.2 / (0.8 + eps), 0.5 / (0.5 + eps), 0.0]
    assert losses.vcrd_weights(r_s, r_t).tolist() == pytest.approx(ratio)
    assert losses.vcrd_weights(r_s, r_t, "student_only").tolist() == pytest.approx([0.9, 0.2, 0.5, 0.0])
    assert losses.vcrd_weights(r_s, r_t, "difference").tolist() == pytest.approx([0.6, -0.6, 0.0, 0.0])
    assert losses.vcrd_weights(r_s, r_t, amplification="cap").tolist() == pytest.approx([1.0, ratio[1], ratio[2], 0.0])
    assert losses.vcrd_weights(r_s, r_t, amplification="uniform").tolist() == [1.0] * 4
    assert losses.vcrd_weights(r_s, r_t, clip=2.0).tolist() == pytest.approx([2.0, ratio[1], ratio[2], 0.0])
    with pytest.raises(ValueError):
        losses.vcrd_weights(r_s, r_t, "log")


def test_regime_shares():
    w = torch.tensor([[0.5, 1.0, 1.02, 3.0], [1.5, 0.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    sh = losses.regime_shares(w, mask, band=0.05)
    assert sh == {"attenuation": (1.0, 5.0), "parity": (2.0, 5.0), "amplification": (2.0, 5.0)}
    assert math.isclose(sum(v[0] for v in sh.values()), 5.0)
