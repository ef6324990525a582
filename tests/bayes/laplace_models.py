"""A small classifier with a 2-D weight leaf and brute-force curvature, shared by the Laplace tests."""

from __future__ import annotations

import torch
from torch.func import grad, hessian, jacrev

from thermoai import tree as T

F64 = torch.float64
B, D_IN, HIDDEN, C = 12, 4, 3, 3


def make_problem(dtype=F64):
    g = torch.Generator().manual_seed(0)
    params = {
        "w1": 0.7 * torch.randn(HIDDEN, D_IN, generator=g, dtype=dtype),
        "b1": 0.1 * torch.randn(HIDDEN, generator=g, dtype=dtype),
        "w2": 0.7 * torch.randn(C, HIDDEN, generator=g, dtype=dtype),
    }
    x = torch.randn(B, D_IN, generator=g, dtype=dtype)
    y = torch.randint(0, C, (B,), generator=g)
    return params, (x, y)


def forward(params, batch):
    x, _ = batch
    return torch.tanh(x @ params["w1"].T + params["b1"]) @ params["w2"].T, torch.tensor([])


def outer_sum(z, batch):
    return -torch.nn.functional.cross_entropy(z, batch[1], reduction="sum")


def outer_mean(z, batch):
    return -torch.nn.functional.cross_entropy(z, batch[1], reduction="mean")


def log_posterior(params, batch):
    """Summed log likelihood plus a N(0, 1) prior scaled per sample (so per-sample terms carry it too)."""
    z, _ = forward(params, batch)
    prior = sum(-0.5 * (v * v).sum() for v in params.values()) / B
    return outer_sum(z, batch) + batch[0].shape[0] * prior, z.detach()


def per_sample_log_posterior(params, batch):
    z, _ = forward(params, batch)
    prior = sum(-0.5 * (v * v).sum() for v in params.values()) / B
    return -torch.nn.functional.cross_entropy(z, batch[1], reduction="none") + prior, z.detach()


def brute_per_sample_grads(params, batch):
    """``(B, d)`` per-sample gradients of :func:`log_posterior`, one sample at a time."""
    flat, unravel = T.ravel(params)
    x, y = batch
    rows = [grad(lambda f: log_posterior(unravel(f), (x[i : i + 1], y[i : i + 1]))[0])(flat) for i in range(x.shape[0])]
    return torch.stack(rows)


def brute_ggn(params, batch, outer):
    """``J^T H J`` from the full ``(B C) x d`` Jacobian and the full ``(B C) x (B C)`` output Hessian."""
    flat, unravel = T.ravel(params)
    z = forward(params, batch)[0]
    J = jacrev(lambda f: forward(unravel(f), batch)[0].reshape(-1))(flat)
    H = hessian(lambda zz: -outer(zz.reshape(z.shape), batch))(z.reshape(-1))
    return J.T @ H @ J


def brute_hessian(params, batch):
    flat, unravel = T.ravel(params)
    return hessian(lambda f: -log_posterior(unravel(f), batch)[0])(flat)


def split(batch, sizes):
    x, y = batch
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out
