"""Simulation-based calibration: exact ranks and chi-square, a correct sampler passes and a mis-scaled one
(noise doubled) fails, exact and deliberately wrong posteriors, vmapped methods, and clear errors.

The runs are seeded, so each assertion on a p-value is deterministic; thresholds are chosen so that a
correct method fails them with probability 1 % (p > 0.01) and a wrong one passes with a probability far
below that (p < 1e-4 where the distortion is large).
"""

from __future__ import annotations

import pytest
import scipy.stats
import torch

from thermoai.bayes import sbc
from thermoai.bayes.ekf import dense_ggn as ekf_dense_ggn
from thermoai.bayes.laplace import diag_ggn as laplace_diag_ggn
from thermoai.bayes.sgmcmc import sgld

F64 = torch.float64
N, D = 10, 2


def prior_sample(n, g):
    return {"w": torch.randn(n, D, generator=g, dtype=F64)}


def log_prior(theta):
    return -0.5 * (theta["w"] ** 2).sum()


def simulate(theta, g, rho=0.0):
    z = torch.randn(N, D, generator=g, dtype=F64)
    x = torch.stack([z[:, 0], rho * z[:, 0] + (1 - rho**2) ** 0.5 * z[:, 1]], dim=1)  # correlation rho
    return x, x @ theta["w"] + torch.randn(N, generator=g, dtype=F64)


def log_likelihood(theta, data):
    x, y = data
    return -0.5 * ((y - x @ theta["w"]) ** 2).sum()


MODEL = sbc.Model(prior_sample, log_prior, simulate, log_likelihood, params_like={"w": torch.zeros(D, dtype=F64)})
CORRELATED = sbc.Model(prior_sample, log_prior, lambda t, g: simulate(t, g, rho=0.9), log_likelihood)


def exact_posterior(x, y):
    """Conjugate posterior of every replication: precision ``I + X^T X``, mean ``P^{-1} X^T y``."""
    prec = torch.eye(D, dtype=F64) + x.mT @ x
    return torch.linalg.solve(prec, (x.mT @ y[..., None]))[..., 0], torch.linalg.inv(prec)


def exact_method(scale=1.0, shift=0.0):
    def method(data, g):
        mean, cov = exact_posterior(*data)
        eps = torch.randn(mean.shape[0], 19, D, generator=g, dtype=F64)
        return {"w": mean[:, None] + shift + scale * eps @ torch.linalg.cholesky(cov).mT}

    return method


def test_ranks_and_chi_square_by_hand():
    thetas = {"a": torch.tensor([[0.5], [2.0]]), "b": torch.tensor([0.0, -1.0])}
    draws = {"a": torch.tensor([[[0.1], [0.6], [0.4]], [[3.0], [2.5], [1.0]]]), "b": torch.tensor([[1.0, -1.0, 2.0], [0.0, 1.0, -2.0]])}
    assert sbc.ranks(thetas, draws, 3).tolist() == [[2, 1], [1, 1]]
    r = torch.tensor([[0], [1], [2], [3], [4], [4], [4], [5], [5], [5]])  # ranks of 10 replications, L = 5
    edges, counts, expected, chi2, p = sbc.uniformity_test(r, 5, 3)  # bins {0,1} {2,3} {4,5}
    assert edges.tolist() == [0, 2, 4, 6] and counts.tolist() == [[2, 2, 6]]
    ref = scipy.stats.chisquare([2, 2, 6], [10 / 3] * 3)
    assert float(chi2[0]) == pytest.approx(ref.statistic) and float(p[0]) == pytest.approx(ref.pvalue)
    edges, counts, expected, _, _ = sbc.uniformity_test(r, 5, 4)  # 6 values in 4 bins of 2, 1, 1, 2 values
    assert edges.tolist() == [0, 2, 3, 4, 6] and counts.tolist() == [[2, 1, 1, 6]]
    assert expected.tolist() == pytest.approx([10 * 2 / 6, 10 / 6, 10 / 6, 10 * 2 / 6])
    assert sbc.parameter_names({"b": torch.zeros(2), "a": torch.zeros(())}) == ["a", "b[0]", "b[1]"]


def test_exact_posterior_passes_and_wrong_ones_fail():
    good = sbc.run(MODEL, exact_method(), 200, 19, seed=1, n_bins=10)
    assert good.calibrated(0.01) and good.counts.sum(1).tolist() == [200, 200]
    narrow = sbc.run(MODEL, exact_method(scale=0.5), 200, 19, seed=1, n_bins=10)  # too confident: U shape
    wide = sbc.run(MODEL, exact_method(scale=2.0), 200, 19, seed=1, n_bins=10)  # too uncertain: hump
    biased = sbc.run(MODEL, exact_method(shift=0.3), 200, 19, seed=1, n_bins=10)
    for bad in (narrow, wide, biased):
        assert bad.p_values.max() < 1e-4, bad.p_values
    assert (narrow.counts[:, [0, -1]].sum(1) > 2 * 2 * 20).all()  # far more than 2 x 20 expected in the end bins
    assert (wide.counts[:, [0, -1]].sum(1) < 20).all()
    # the same seed gives the same result
    assert torch.equal(sbc.run(MODEL, exact_method(), 200, 19, seed=1, n_bins=10).ranks, good.ranks)


def test_sgld_passes_and_doubled_noise_is_detected():
    """SGLD at lr 0.005 on the conjugate model (posterior precision ~ 1 + 10 x^2, discretisation bias on
    the variance ~ lr * lambda / 2 < 5 %), thinned every 100 steps (autocorrelation time ~ 1 / (lr
    lambda_min) ~ 30 steps). Temperature 4 is the same chain with the noise sd doubled."""
    def method(temperature):
        return sbc.chain_method(lambda lp: sgld.build(lp, lr=0.005, temperature=temperature), MODEL, burn_in=300,
                                thin=100, n_draws=19)

    correct = sbc.run(MODEL, method(1.0), 100, 19, seed=0, n_bins=5)
    doubled = sbc.run(MODEL, method(4.0), 100, 19, seed=0, n_bins=5)
    assert correct.calibrated(0.01), correct.p_values
    assert doubled.p_values.max() < 1e-4, doubled.p_values
    assert correct.info["ess"] > 0.7 * 19  # the thinning leaves near-independent draws


def test_gaussian_approximations_vmapped():
    """The dense GGN EKF is the exact posterior here (a Kalman filter, one pass in batches of 5); the
    diagonal GGN Laplace at the exact mode keeps 1 / P_jj, smaller than the marginal variance when the
    features are correlated (rho = 0.9): too narrow, detected."""
    steps = lambda data: [tuple(x[:, i : i + 5] for x in data) for i in range(0, N, 5)]  # noqa: E731
    zeros = lambda data, g: {"w": torch.zeros(data[0].shape[0], D, dtype=F64)}  # noqa: E731

    def forward(p, batch):
        return (batch[0] @ p["w"])[:, None], torch.tensor([])

    def outer(z, batch):
        return -0.5 * ((batch[1] - z[:, 0]) ** 2).sum()

    ekf = sbc.approximation_method(ekf_dense_ggn.build(forward, outer), ekf_dense_ggn.sample, 19, zeros, steps)
    ekf_result = sbc.run(CORRELATED, ekf, 200, 19, seed=2, n_bins=10)
    assert ekf_result.calibrated(0.01), ekf_result.p_values

    def mode(data, g):
        return {"w": exact_posterior(*data)[0]}

    laplace = sbc.approximation_method(
        laplace_diag_ggn.build(forward, outer, prior_precision=1.0), laplace_diag_ggn.sample, 19, mode,
        lambda data: [data],
    )
    lap = sbc.run(CORRELATED, laplace, 200, 19, seed=2, n_bins=10)
    assert lap.p_values.max() < 1e-4, lap.p_values
    assert (lap.counts[:, [0, -1]].sum(1) > 2 * 20).all()  # U-shaped: the truth too often outside
    # the loop fallback gives the same method (other random draws, same calibration verdict)
    looped = sbc.approximation_method(ekf_dense_ggn.build(forward, outer), ekf_dense_ggn.sample, 19, zeros, steps,
                                      vectorised=False)
    assert sbc.run(CORRELATED, looped, 50, 19, seed=2, n_bins=5).calibrated(0.01)


def test_plot_writes_a_figure(tmp_path):
    result = sbc.run(MODEL, exact_method(), 60, 19, seed=0, n_bins=5)
    sbc.plot(result, tmp_path / "ranks.png", title="exact posterior")
    assert (tmp_path / "ranks.png").stat().st_size > 5_000
    assert set(result.to_dict()) >= {"p_values", "counts", "names", "p_min_bonferroni"}


def test_clear_errors():
    wrong_shape = sbc.Model(lambda n, g: {"w": torch.randn(n, 3, generator=g, dtype=F64)}, log_prior, simulate,
                            log_likelihood, params_like={"w": torch.zeros(D, dtype=F64)})
    with pytest.raises(ValueError, match="prior_sample's draws do not match"):
        sbc.run(wrong_shape, exact_method(), 50, 19, n_bins=5)
    mean = torch.zeros(D, dtype=F64)
    no_like = sbc.Model(lambda n, g: {"w": torch.randn(n, 3, generator=g, dtype=F64)},
                        lambda t: -0.5 * ((t["w"] - mean) ** 2).sum(), simulate, log_likelihood)
    with pytest.raises(ValueError, match="log_prior cannot be evaluated at a draw of prior_sample"):
        sbc.run(no_like, exact_method(), 50, 19, n_bins=5)
    vector_prior = sbc.Model(prior_sample, lambda t: -0.5 * t["w"] ** 2, simulate, log_likelihood)
    with pytest.raises(ValueError, match="log_prior must return a scalar"):
        sbc.run(vector_prior, exact_method(), 50, 19, n_bins=5)
    unbatched = sbc.Model(lambda n, g: {"w": torch.randn(D, generator=g, dtype=F64)}, log_prior, simulate, log_likelihood)
    with pytest.raises(ValueError, match="leading dimension n"):
        sbc.run(unbatched, exact_method(), 50, 19, n_bins=5)
    with pytest.raises(ValueError, match="n_draws=3 gives 4 possible ranks, fewer than n_bins=10"):
        sbc.run(MODEL, exact_method(), 200, 3, n_bins=10)
    with pytest.raises(ValueError, match="n_replications=20"):
        sbc.run(MODEL, exact_method(), 20, 19, n_bins=10)
    with pytest.raises(ValueError, match="n_draws"):
        sbc.run(MODEL, exact_method(), 50, 0)
    with pytest.raises(ValueError, match=r"shape \(n_replications, n_draws, \*param\)"):
        sbc.run(MODEL, exact_method(), 50, 9, n_bins=5)  # the method returns 19 draws, not 9
    with pytest.raises(ValueError, match="thin"):
        sbc.chain_method(lambda lp: sgld.build(lp, lr=0.1), MODEL, burn_in=10, thin=0, n_draws=5)
