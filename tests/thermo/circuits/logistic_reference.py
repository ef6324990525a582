"""Reference posterior of Bayesian logistic regression for the circuit tests: Hamiltonian Monte Carlo written
for the tests (independent of thermoai), on scikit-learn's bundled breast-cancer data.

HMC with the mass matrix set to the Hessian of the potential at the MAP (Newton's method), so that the
leapfrog sees a nearly isotropic target; jittered path lengths (Neal 2011, section 5.4.2) avoid periodic
orbits. Targets ``p(theta | y)^(1/T)`` for a temperature T (T = 1: the posterior).
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def potential_and_grad(theta, X, y, prior_var, T):
    """U(theta) / T and its gradient for theta (chains, d): prior N(0, prior_var I)."""
    z = theta @ X.T
    nll = (torch.nn.functional.softplus(z) - y * z).sum(-1)
    U = 0.5 * (theta * theta).sum(-1) / prior_var + nll
    g = theta / prior_var + (torch.sigmoid(z) - y) @ X
    return U / T, g / T


def map_and_hessian(X, y, prior_var, T=1.0):
    d = X.shape[1]
    th = torch.zeros(d, dtype=F64)
    for _ in range(50):
        z = X @ th
        s = torch.sigmoid(z)
        g = th / prior_var + X.T @ (s - y)
        H = torch.eye(d, dtype=F64) / prior_var + (X * (s * (1 - s))[:, None]).T @ X
        step = torch.linalg.solve(H, g)
        th = th - step
        if float(step.abs().max()) < 1e-12:
            break
    return th, H / T


def hmc(X, y, prior_var=1.0, T=1.0, chains=64, warmup=200, iters=1500, eps=0.3, seed=0):
    """Samples (chains, iters, d) and the mean acceptance rate."""
    g = torch.Generator().manual_seed(seed)
    d = X.shape[1]
    th_map, H = map_and_hessian(X, y, prior_var, T)
    LH = torch.linalg.cholesky(H)  # momentum p ~ N(0, H); velocity H^-1 p
    Hinv = torch.cholesky_inverse(LH)
    x = th_map + torch.linalg.solve_triangular(LH.T, torch.randn(d, chains, dtype=F64, generator=g),
                                               upper=True).T
    U, grad = potential_and_grad(x, X, y, prior_var, T)
    out = torch.empty(chains, iters, d, dtype=F64)
    accepted = 0.0
    for it in range(warmup + iters):
        p = torch.randn(chains, d, dtype=F64, generator=g) @ LH.T
        n_leap = int(torch.randint(6, 12, (1,), generator=g))
        e = eps * (0.8 + 0.4 * float(torch.rand(1, dtype=F64, generator=g)))
        K0 = 0.5 * ((p @ Hinv) * p).sum(-1)
        xn, gn = x, grad
        pn = p - 0.5 * e * gn
        for j in range(n_leap):
            xn = xn + e * (pn @ Hinv)
            Un, gn = potential_and_grad(xn, X, y, prior_var, T)
            if j < n_leap - 1:
                pn = pn - e * gn
        pn = pn - 0.5 * e * gn
        K1 = 0.5 * ((pn @ Hinv) * pn).sum(-1)
        log_a = (U + K0) - (Un + K1)
        acc = torch.log(torch.rand(chains, dtype=F64, generator=g)) < log_a
        x = torch.where(acc[:, None], xn, x)
        U = torch.where(acc, Un, U)
        grad = torch.where(acc[:, None], gn, grad)
        if it >= warmup:
            out[:, it - warmup] = x
            accepted += float(acc.double().mean())
    return out, accepted / iters


def chain_summary(samples):
    """Marginal means and sds of samples (chains, k, d), with standard errors from the spread of the
    per-chain estimates (chains are independent; each chain's estimate averages its own correlated draws)."""
    c = samples.shape[0]
    flat = samples.reshape(-1, samples.shape[-1])
    mean = flat.mean(0)
    var = ((flat - mean) ** 2).mean(0)
    chain_means = samples.mean(1)
    chain_vars = ((samples - mean) ** 2).mean(1)
    se_mean = chain_means.std(0) / math.sqrt(c)
    se_var = chain_vars.std(0) / math.sqrt(c)
    sd = var.sqrt()
    return mean, se_mean, sd, se_var / (2 * sd)


def predictive(samples, X):
    """Posterior predictive P(y = 1 | x) for rows X (m, d) from samples (chains, k, d), with a standard error
    per row from the spread of the per-chain averages."""
    prob = torch.sigmoid(samples @ X.T)  # (chains, k, m)
    per_chain = prob.mean(1)
    return prob.reshape(-1, X.shape[0]).mean(0), per_chain.std(0) / math.sqrt(samples.shape[0])


def metrics(p, y, bins=10):
    """Accuracy, mean negative log-likelihood and expected calibration error (equal-width bins of the
    confidence max(p, 1 - p))."""
    eps = 1e-12
    acc = float(((p > 0.5).double() == y).double().mean())
    nll = float(-(y * torch.log(p.clamp_min(eps)) + (1 - y) * torch.log((1 - p).clamp_min(eps))).mean())
    conf = torch.maximum(p, 1 - p)
    correct = ((p > 0.5).double() == y).double()
    edges = torch.linspace(0.5, 1.0, bins + 1, dtype=F64)
    idx = torch.clamp(torch.bucketize(conf, edges, right=True) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if bool(sel.any()):
            ece += float(sel.double().mean()) * abs(float(correct[sel].mean()) - float(conf[sel].mean()))
    return {"accuracy": acc, "nll": nll, "ece": ece}
