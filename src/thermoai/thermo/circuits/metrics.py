"""Predictive metrics of a binary classifier from posterior samples: accuracy, NLL and expected calibration
error (ECE), for the logistic circuit's demo and benchmark.

``p_i = mean_s sigma(x_i^T theta_s)`` (the posterior predictive); accuracy thresholds p at 1/2; NLL is
``-mean_i [y_i ln p_i + (1 - y_i) ln(1 - p_i)]``; ECE bins the confidence ``max(p, 1 - p)`` into ``bins``
equal-width bins on [1/2, 1] and averages ``|accuracy_b - confidence_b|`` weighted by the bins' counts
(Guo et al., "On calibration of modern neural networks", ICML 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["predictive", "binary_metrics"]


def predictive(samples: Tensor, X: Tensor) -> Tensor:
    """P(y = 1 | x) for rows X (m, d) averaged over samples (S, d); returns (m,)."""
    return torch.sigmoid(samples @ X.mT).mean(0)


def binary_metrics(p: Tensor, y: Tensor, bins: int = 10) -> dict[str, float]:
    """``{"accuracy", "nll", "ece"}`` of predictive probabilities p (m,) for labels y (m,) in {0, 1}."""
    if p.shape != y.shape or p.dim() != 1:
        raise ValueError(f"p and y must be vectors of the same length; got {tuple(p.shape)} and {tuple(y.shape)}")
    p = p.to(torch.float64).clamp(1e-12, 1 - 1e-12)
    y = y.to(torch.float64)
    pred = (p > 0.5).to(torch.float64)
    correct = (pred == y).to(torch.float64)
    nll = float(-(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean())
    conf = torch.maximum(p, 1 - p)
    edges = torch.linspace(0.5, 1.0, bins + 1, dtype=torch.float64)
    idx = torch.clamp(torch.bucketize(conf, edges, right=True) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if bool(sel.any()):
            ece += float(sel.to(torch.float64).mean()) * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return {"accuracy": float(correct.mean()), "nll": nll, "ece": ece}
