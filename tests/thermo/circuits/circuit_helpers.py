"""Shared helpers of the circuit tests: random problems and the exact sampling law of a fitted Gaussian's KL."""

from __future__ import annotations

import math

import torch
from scipy.special import digamma

F64 = torch.float64


def random_cov(d: int, g: torch.Generator, lo: float = 0.5, hi: float = 2.0) -> torch.Tensor:
    """Haar-rotated covariance with eigenvalues uniform on [lo, hi] (the brief's ensemble)."""
    Q, R = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))
    Q = Q * torch.sign(torch.diagonal(R))[None, :]
    e = lo + (hi - lo) * torch.rand(d, dtype=F64, generator=g)
    S = Q @ torch.diag(e) @ Q.T
    return 0.5 * (S + S.T)


def fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and unbiased sample covariance of samples (N, d)."""
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def expected_fit_kl(d: int, N: int) -> tuple[float, float]:
    """Mean and standard deviation of KL(N(xbar, S) || N(m, Sigma)) for N iid draws of N(m, Sigma).

    Exact mean: E tr(Sigma^-1 S) = d, E (xbar - m)^T Sigma^-1 (xbar - m) = d / N and, since (N - 1) S is
    Wishart(Sigma, N - 1), E ln det(Sigma^-1 S) = sum_{i=1}^d psi((N - i) / 2) + d ln 2 - d ln(N - 1); so
    E KL = (d / N - that) / 2. Standard deviation from the large-N law 2 N KL ~ chi^2 with
    k = d + d (d + 1) / 2 degrees of freedom: sqrt(k / 2) / N.
    """
    c = float(sum(digamma((N - i) / 2) for i in range(1, d + 1))) + d * math.log(2) - d * math.log(N - 1)
    k = d + d * (d + 1) / 2
    return 0.5 * (d / N - c), math.sqrt(k / 2) / N
