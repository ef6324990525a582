r"""The digital sampler the circuits are compared with: preconditioned MALA (Metropolis-adjusted Langevin).

Roberts and Tweedie, "Exponential convergence of Langevin distributions and their discrete approximations",
Bernoulli 2 (1996). With a preconditioner ``M = L L^T`` and step ``h``::

    theta' = theta + h M grad ln p(theta) + sqrt(2 h) L z,    z ~ N(0, I),
    accept with probability min(1, p(theta') q(theta | theta') / (p(theta) q(theta' | theta))),
    q(b | a) = N(b; a + h M grad ln p(a), 2 h M).

Chains are vectorised (theta is (chains, d)). During warm-up the step is adapted towards an acceptance rate
of 0.574 (the optimal rate of Roberts and Rosenthal 1998) by a Robbins-Monro update of ``ln h``; it is then
frozen, so the kept draws are an exact MCMC chain.

:func:`logistic_log_prob` gives ``ln p`` and its gradient for Bayesian logistic regression with a Gaussian
prior, and :func:`laplace_preconditioner` the inverse Hessian at the MAP (Newton's method), the usual choice
of ``M`` for this posterior.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor

__all__ = ["mala", "logistic_log_prob", "laplace_preconditioner"]

LogProbGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


def logistic_log_prob(X: Tensor, y: Tensor, prior_mean: Tensor, prior_precision: Tensor,
                      temperature: float = 1.0) -> LogProbGrad:
    """``theta (chains, d) -> (ln p (chains,), grad (chains, d))`` for ``p(theta | y)^(1/T)`` with prior
    ``N(prior_mean, prior_precision^-1)`` and ``P(y_i = 1) = sigma(x_i^T theta)``; X (n, d), y (n,)."""

    def f(theta: Tensor) -> tuple[Tensor, Tensor]:
        dth = theta - prior_mean
        z = theta @ X.mT
        pd = dth @ prior_precision
        lp = -0.5 * (pd * dth).sum(-1) + (y * z - torch.nn.functional.softplus(z)).sum(-1)
        g = -pd + (y - torch.sigmoid(z)) @ X
        return lp / temperature, g / temperature

    return f


def laplace_preconditioner(X: Tensor, y: Tensor, prior_mean: Tensor, prior_precision: Tensor,
                           temperature: float = 1.0, iters: int = 50) -> tuple[Tensor, Tensor]:
    """MAP (d,) and Cholesky factor (d, d) of the inverse Hessian of ``-ln p^(1/T)`` there (Newton's method)."""
    th = prior_mean.clone()
    for _ in range(iters):
        z = X @ th
        s = torch.sigmoid(z)
        g = prior_precision @ (th - prior_mean) + X.mT @ (s - y)
        H = prior_precision + (X * (s * (1 - s))[:, None]).mT @ X
        step = torch.linalg.solve(H, g)
        th = th - step
        if float(step.abs().max()) < 1e-12:
            break
    z = X @ th
    s = torch.sigmoid(z)
    H = (prior_precision + (X * (s * (1 - s))[:, None]).mT @ X) / temperature
    cov = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return th, torch.linalg.cholesky(0.5 * (cov + cov.mT))


def mala(log_prob_grad: LogProbGrad, x0: Tensor, n_steps: int, *, warmup: int = 500, step: float = 0.5,
         precond_chol: Tensor | None = None, generator: torch.Generator | None = None,
         target_accept: float = 0.574, progress: Callable[[int], None] | None = None) -> dict:
    """Run MALA chains from ``x0`` (chains, d): ``warmup`` adapted steps, then ``n_steps`` kept.

    Returns a dict: ``samples`` (chains, n_steps, d), ``accept`` (mean acceptance of the kept steps),
    ``step`` (the frozen step), ``wall_s`` (wall-clock seconds of the whole run) and ``gradient_evals``.
    ``progress(k)`` is called after each step (for a progress bar).
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (chains, d); got {tuple(x0.shape)}")
    chains, d = x0.shape
    L = torch.eye(d, dtype=x0.dtype) if precond_chol is None else precond_chol
    M = L @ L.mT
    t0 = time.perf_counter()
    x = x0.clone()
    lp, g = log_prob_grad(x)
    log_h = math.log(step)
    out = torch.empty(chains, n_steps, d, dtype=x0.dtype)
    acc_sum = 0.0

    def log_q(b: Tensor, a: Tensor, ga: Tensor, h: float) -> Tensor:
        # ln N(b; a + h M g_a, 2 h M) up to a constant: -|L^-1 (b - a - h M g_a)|^2 / (4 h)
        r = b - a - h * (ga @ M.mT)
        u = torch.linalg.solve_triangular(L, r.mT, upper=False).mT
        return -(u * u).sum(-1) / (4 * h)

    for k in range(warmup + n_steps):
        h = math.exp(log_h)
        z = torch.randn(chains, d, dtype=x0.dtype, generator=generator)
        xn = x + h * (g @ M.mT) + math.sqrt(2 * h) * (z @ L.mT)
        lpn, gn = log_prob_grad(xn)
        log_a = lpn - lp + log_q(x, xn, gn, h) - log_q(xn, x, g, h)
        accept = torch.log(torch.rand(chains, dtype=x0.dtype, generator=generator)) < log_a
        x = torch.where(accept[:, None], xn, x)
        lp = torch.where(accept, lpn, lp)
        g = torch.where(accept[:, None], gn, g)
        rate = float(accept.double().mean())
        if k < warmup:
            log_h += (rate - target_accept) / math.sqrt(k + 1)
        else:
            out[:, k - warmup] = x
            acc_sum += rate
        if progress is not None:
            progress(k)
    return {"samples": out, "accept": acc_sum / n_steps, "step": math.exp(log_h),
            "wall_s": time.perf_counter() - t0, "gradient_evals": chains * (warmup + n_steps + 1)}
