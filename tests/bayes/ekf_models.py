"""Linear-Gaussian regression streams with closed-form posteriors, shared by the EKF tests.

Model: ``y_i = x_i^T theta + noise``, Gaussian likelihood with sd ``NOISE_SD``, prior ``N(0, I)``. Exact
posterior: ``P = I + X^T X / s^2``, ``mean = P^{-1} X^T y / s^2``.

The data's noise is ``+-NOISE_SD`` (random signs): the empirical Fisher at the current mean is then
``x x^T (s + x^T (theta_true - mu))^2 / s^4``, whose excess over the true Fisher ``x x^T / s^2`` shrinks
as the estimate converges, so a single pass of the EKF tends to the exact posterior. (With Gaussian noise
the empirical Fisher is only right on average, and the EKF mean differs from the exact one by about one
posterior sd.) Small first batches (:func:`batch_sizes`) keep the early transient short.
"""

from __future__ import annotations

import torch

F64 = torch.float64
NOISE_SD = 3.0


def stream(n: int, dim: int, diagonal_design: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, generator=g, dtype=F64)
    if diagonal_design:
        # each sample observes one coordinate: the exact posterior is diagonal
        which = torch.randint(0, dim, (n,), generator=g)
        x = torch.zeros(n, dim, dtype=F64)
        x[torch.arange(n), which] = 0.5 + torch.rand(n, generator=g, dtype=F64)
    else:
        x = torch.randn(n, dim, generator=g, dtype=F64)
    signs = 2.0 * torch.randint(0, 2, (n,), generator=g).to(F64) - 1.0
    y = x @ theta + NOISE_SD * signs
    return x, y


def batch_sizes(n: int, largest: int = 100) -> list[int]:
    """1, 2, 4, ... then ``largest`` until ``n``: small first batches keep the empirical Fisher's transient
    (residuals inflated while the mean is still prior-sized) short."""
    sizes, size = [], 1
    while sum(sizes) < n:
        sizes.append(min(size, largest, n - sum(sizes)))
        size *= 2
    return sizes


def exact_posterior(x, y):
    prec = torch.eye(x.shape[1], dtype=F64) + x.T @ x / NOISE_SD**2
    mean = torch.linalg.solve(prec, x.T @ y / NOISE_SD**2)
    return mean, prec


def log_likelihood(params, batch):
    """Summed Gaussian log likelihood (up to a constant) of a batch ``(x, y)``; params ``{"w": (d,)}``."""
    x, y = batch
    r = y - x @ params["w"]
    return (-0.5 * r * r / NOISE_SD**2).sum(), torch.tensor([])


def check_inplace_equals_functional(module, covariance, **build_kw):
    """``inplace=True`` and ``False`` agree bit for bit over four batches (``lr`` a schedule); float64 params
    give a float64 state, float32 params a float32 one; a fresh ``init`` starts at step 0. ``covariance``
    picks the state's covariance field (``sd_diag`` leaf or ``cov``)."""
    x, y = stream(40, 3, diagonal_design=False, seed=1)
    transform = module.build(log_likelihood, lr=lambda t: 2.0 / (1 + float(t)), **build_kw)
    s1 = transform.init({"w": torch.zeros(3, dtype=F64)})
    s2 = transform.init({"w": torch.zeros(3, dtype=F64)})
    for i in range(0, 40, 10):
        s1, _ = transform.update(s1, (x[i : i + 10], y[i : i + 10]))
        out, _ = transform.update(s2, (x[i : i + 10], y[i : i + 10]), inplace=True)
        assert out is s2
    assert torch.equal(covariance(s1), covariance(s2)) and torch.equal(s1.params["w"], s2.params["w"])
    assert covariance(s1).dtype == F64 and s1.params["w"].dtype == F64 and s1.log_likelihood.dtype == F64
    assert int(s1.step) == int(s2.step) == 4
    assert int(transform.init({"w": torch.zeros(3, dtype=F64)}).step) == 0
    assert covariance(transform.init({"w": torch.zeros(3)})).dtype == torch.float32
