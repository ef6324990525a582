"""Posterior-predictive helpers: entropy decomposition, linearised predictive, sample forwards."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev

from thermoai import tree as T
from thermoai.bayes import predictive

F64 = torch.float64


def test_entropy_decomposition_limits_and_identity():
    # identical members: no epistemic uncertainty, aleatoric = entropy of the member
    logits = torch.tensor([[0.0, 1.0, 2.0]], dtype=F64).expand(5, 1, 3)
    out = predictive.classification_uncertainty(logits)
    p = torch.softmax(logits[0, 0], -1)
    entropy = -(p * p.log()).sum()
    torch.testing.assert_close(out.total[0], entropy)
    torch.testing.assert_close(out.aleatoric[0], entropy)
    assert float(out.epistemic[0]) < 1e-12
    # two confident members that disagree: all uncertainty is epistemic, log 2 nats
    logits = torch.tensor([[[40.0, 0.0]], [[0.0, 40.0]]], dtype=F64)
    out = predictive.classification_uncertainty(logits)
    torch.testing.assert_close(out.total[0], torch.tensor(math.log(2), dtype=F64))
    assert float(out.aleatoric[0]) < 1e-12
    torch.testing.assert_close(out.epistemic[0], torch.tensor(math.log(2), dtype=F64), rtol=1e-12, atol=1e-12)


def test_entropy_decomposition_matches_direct_formula():
    logits = torch.randn(7, 4, 5, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    out = predictive.classification_uncertainty(logits)
    probs = torch.softmax(logits, -1)
    mean = probs.mean(0)
    total = -(mean * mean.log()).sum(-1)
    aleatoric = -(probs * probs.log()).sum(-1).mean(0)
    torch.testing.assert_close(out.mean_probs, mean)
    torch.testing.assert_close(out.total, total)
    torch.testing.assert_close(out.aleatoric, aleatoric)
    torch.testing.assert_close(out.epistemic, total - aleatoric)
    assert (out.epistemic >= 0).all()
    torch.testing.assert_close(predictive.log_predictive_probs(logits), mean.log())
    # sample dimension elsewhere
    moved = predictive.classification_uncertainty(logits.transpose(0, 1), dim=1)
    torch.testing.assert_close(moved.total, total)


def mlp_forward(params, batch):
    return torch.tanh(batch @ params["w1"].T) @ params["w2"].T + params["b"], torch.tensor([])


def mlp():
    g = torch.Generator().manual_seed(1)
    params = {
        "w1": torch.randn(5, 3, generator=g, dtype=F64),
        "w2": torch.randn(2, 5, generator=g, dtype=F64),
        "b": torch.randn(2, generator=g, dtype=F64),
    }
    x = torch.randn(6, 3, generator=g, dtype=F64)
    return params, x


def brute_output_cov(params, x, cov):
    flat, unravel = T.ravel(params)
    covs = []
    for i in range(x.shape[0]):
        J = jacrev(lambda f: mlp_forward(unravel(f), x[i : i + 1])[0].reshape(-1))(flat)
        covs.append(J @ cov @ J.T)
    return torch.stack(covs)


def test_linearized_forward_diag_and_dense_equal_brute_force():
    params, x = mlp()
    d = T.tree_size(params)
    sd = {k: 0.1 + 0.05 * torch.arange(v.numel(), dtype=F64).reshape(v.shape) for k, v in params.items()}
    expected = brute_output_cov(params, x, torch.diag(T.tree_ravel(sd) ** 2))
    out = predictive.linearized_forward_diag(mlp_forward, params, x, sd)
    torch.testing.assert_close(out.mean, mlp_forward(params, x)[0])
    torch.testing.assert_close(out.chol @ out.chol.mT, expected, rtol=1e-10, atol=1e-12)
    A = torch.randn(d, d, generator=torch.Generator().manual_seed(2), dtype=F64)
    cov = 0.01 * A @ A.T + 1e-3 * torch.eye(d, dtype=F64)
    dense = predictive.linearized_forward_dense(mlp_forward, params, x, cov, chunk_size=2)
    torch.testing.assert_close(dense.chol @ dense.chol.mT, brute_output_cov(params, x, cov), rtol=1e-10, atol=1e-12)
    mean, chol, aux = dense  # unpacks like posteriors' (forward, chol, aux)
    assert aux.numel() == 0


def test_linearized_predictive_is_exact_for_a_linear_model():
    """For f linear in theta the linearised predictive is the exact push-forward: check by Monte Carlo."""
    g = torch.Generator().manual_seed(3)
    params = {"w": torch.randn(2, 3, generator=g, dtype=F64)}
    x = torch.randn(4, 3, generator=g, dtype=F64)

    def forward(p, batch):
        return batch @ p["w"].T, torch.tensor([])

    sd = {"w": torch.full((2, 3), 0.3, dtype=F64)}
    out = predictive.linearized_forward_diag(forward, params, x, sd)
    n = 40000
    draws = {"w": params["w"] + sd["w"] * torch.randn(n, 2, 3, generator=g, dtype=F64)}
    outputs = predictive.sample_forward(forward, draws, x)[0]  # (n, 4, 2)
    cov = out.chol @ out.chol.mT
    emp = torch.einsum("sbc,sbd->bcd", outputs - out.mean, outputs - out.mean) / n
    se = ((cov.diagonal(dim1=-2, dim2=-1)[..., :, None] * cov.diagonal(dim1=-2, dim2=-1)[..., None, :] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se).all()  # 5 standard errors of a covariance entry
    lin = predictive.sample_linearized(out.mean, out.chol, n, generator=g)
    assert lin.shape == (n, 4, 2)
    emp_lin = torch.einsum("sbc,sbd->bcd", lin - out.mean, lin - out.mean) / n
    assert ((emp_lin - cov).abs() < 5 * se).all()


def test_errors():
    params, x = mlp()
    with pytest.raises(ValueError, match="NaN"):
        predictive.classification_uncertainty(torch.tensor([[[float("nan"), 0.0]]]))
    with pytest.raises(ValueError, match="shape"):
        predictive.classification_uncertainty(torch.zeros(3))
    with pytest.raises(ValueError, match="class"):
        predictive.classification_uncertainty(torch.zeros(3, 4), dim=1)
    with pytest.raises(ValueError, match="cov"):
        predictive.linearized_forward_dense(mlp_forward, params, x, torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="structure|shape"):
        predictive.linearized_forward_diag(mlp_forward, params, x, {"w1": torch.ones(5, 3)})
    zero_sd = {k: torch.zeros_like(v) for k, v in params.items()}
    with pytest.raises(ValueError, match="jitter"):
        predictive.linearized_forward_diag(mlp_forward, params, x, zero_sd)
    out = predictive.linearized_forward_diag(mlp_forward, params, x, zero_sd, jitter=1e-6)
    torch.testing.assert_close(out.chol @ out.chol.mT, 1e-6 * torch.eye(2, dtype=F64).expand(6, 2, 2))
    with pytest.raises(ValueError, match="pair"):
        predictive.linearized_forward_diag(lambda p, b: mlp_forward(p, b)[0], params, x, zero_sd)
    with pytest.raises(ValueError, match="leading"):
        predictive.sample_forward(mlp_forward, {"w1": torch.zeros(2, 5, 3), "w2": torch.zeros(3, 2, 5), "b": torch.zeros(2, 2)}, x)
