"""Diagnostics: trace collection, ESS against AR(1) theory, split R-hat, Gaussian KL."""

import math

import pytest
import torch

from thermoai.bayes import diagnostics as D
from thermoai.bayes.sgmcmc import sgld


def ar1(phi, chains, draws, dim=3, seed=0):
    """Stationary AR(1) chains x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t (unit variance)."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(chains, draws, dim, dtype=torch.float64, generator=gen)
    x = torch.empty_like(e)
    x[:, 0] = e[:, 0]
    s = math.sqrt(1 - phi * phi)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + s * e[:, t]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9, -0.3])
def test_ess_matches_ar1_theory(phi):
    # For AR(1) the integrated autocorrelation time is (1 + phi) / (1 - phi). With 64 x 2000 draws the
    # estimator's relative error is a few percent (sd of the tau estimate ~ sqrt(2 (2M + 1) / N) tau with a
    # truncation lag M of a few tau, pooled over 64 chains): 10% is > 5 of its standard deviations.
    x = ar1(phi, 64, 2000)
    ess = D.effective_sample_size(x)
    expected = 64 * 2000 * (1 - phi) / (1 + phi)
    expected = min(expected, 64 * 2000 * math.log10(64 * 2000))  # Stan's cap for antithetic chains
    assert ess.shape == (3,)
    assert ((ess / expected - 1).abs() < 0.1).all(), (ess, expected)


def test_ess_sees_disagreeing_chains():
    x = ar1(0.0, 8, 500)
    x[:4] += 3.0  # two groups of chains in different places: far fewer effective draws than 4000
    assert (D.effective_sample_size(x) < 200).all()
    constant = torch.ones(4, 100, 2)
    assert torch.isnan(D.effective_sample_size(constant)).all()


def test_split_rhat():
    good = ar1(0.5, 8, 1000)
    assert (D.split_rhat(good) < 1.01).all()
    shifted = good.clone()
    shifted[0] += 2.0
    assert (D.split_rhat(shifted) > 1.1).all()
    # a drift within each chain is caught by splitting even though all chains agree with each other
    drifting = good + torch.linspace(0, 3, 1000, dtype=torch.float64)[None, :, None]
    assert (D.split_rhat(drifting) > 1.1).all()


def test_ess_rhat_trees_and_errors():
    tree = {"a": ar1(0.0, 4, 100, dim=2), "b": ar1(0.0, 4, 100, dim=1).reshape(4, 100, 1, 1)}
    ess = D.effective_sample_size(tree)
    assert ess["a"].shape == (2,) and ess["b"].shape == (1, 1)
    assert D.split_rhat(tree)["b"].shape == (1, 1)
    with pytest.raises(ValueError, match="chains, draws"):
        D.effective_sample_size(torch.zeros(10))
    with pytest.raises(ValueError, match="at least 4 draws"):
        D.split_rhat(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        D.effective_sample_size(torch.full((2, 10), float("nan")))


def test_trace_burn_in_thin_and_copies():
    trace = D.Trace(burn_in=3, thin=2, extract=lambda s: s)
    x = torch.zeros(2)
    kept = []
    for i in range(10):
        x.fill_(i)  # the same tensor mutated in place: the trace must have copied it
        kept.append(trace.record({"x": x}))
    assert kept == [False, False, False, True, False, True, False, True, False, True]
    assert len(trace) == 4
    assert trace.samples["x"][:, 0].tolist() == [3.0, 5.0, 7.0, 9.0]
    with pytest.raises(ValueError, match="thin"):
        D.Trace(thin=0)
    with pytest.raises(ValueError, match="burn_in"):
        D.Trace(burn_in=-1)
    with pytest.raises(ValueError, match="no samples"):
        D.Trace(burn_in=5).samples


def test_collect_with_batches_and_without():
    def lp(p, batch):
        return -0.5 * ((p - batch) ** 2).sum(), torch.tensor([])

    transform = sgld.build(lp, lr=0.5, temperature=0.0)
    batches = [torch.tensor([1.0]), torch.tensor([3.0])]
    state, samples = D.collect(transform, transform.init(torch.zeros(1)), batches, num_steps=5, thin=1)
    assert samples.shape == (5, 1) and int(state.step) == 5  # cycled over the two batches
    state, samples = D.collect(transform, transform.init(torch.zeros(1)), batches)
    assert samples.shape == (2, 1)
    flat = sgld.build(lambda p, b: (-(p**2).sum(), torch.tensor([])), lr=0.1)
    state, samples = D.collect(flat, flat.init(torch.ones(3)), num_steps=6, burn_in=2, inplace=True, progress=False)
    assert samples.shape == (4, 3) and int(state.step) == 6
    with pytest.raises(ValueError, match="num_steps"):
        D.collect(flat, flat.init(torch.ones(3)))


def test_gaussian_kl_against_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 4, dtype=torch.float64, generator=gen), torch.randn(4, 4, dtype=torch.float64, generator=gen)
    cov_p, cov_q = a @ a.T + 0.5 * torch.eye(4), b @ b.T + 0.5 * torch.eye(4)
    mp, mq = torch.randn(4, dtype=torch.float64, generator=gen), torch.randn(4, dtype=torch.float64, generator=gen)
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mp, cov_p), torch.distributions.MultivariateNormal(mq, cov_q)
    )
    torch.testing.assert_close(D.gaussian_kl(mp, cov_p, mq, cov_q), ref)
    assert float(D.gaussian_kl(mp, cov_p, mp, cov_p)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="cov_q is not positive definite"):
        D.gaussian_kl(mp, cov_p, mq, -cov_q)
    with pytest.raises(ValueError, match="mean_q"):
        D.gaussian_kl(mp, cov_p, mq[:3], cov_q)


def test_sample_gaussian_kl(gaussian_target):
    # exact draws: the KL of their moment-matched Gaussian from the target is O(d^2 / n)
    x = gaussian_target.sample(100_000, torch.Generator().manual_seed(0))
    kl = D.sample_gaussian_kl(x, gaussian_target.mean, gaussian_target.cov)
    assert 0 <= float(kl) < 5e-3
    tree = gaussian_target.unflatten(x.reshape(100, 1000, 10))  # (chains, draws) leading dims, a tree
    torch.testing.assert_close(D.sample_gaussian_kl(tree, gaussian_target.mean, gaussian_target.cov, sample_dims=2), kl)
    shifted = D.sample_gaussian_kl(x + 1.0, gaussian_target.mean, gaussian_target.cov)
    assert float(shifted) > 1.0
    mean, cov = D.sample_mean_cov(D.draws_to_chains(tree), sample_dims=2)
    assert mean.shape == (10,) and cov.shape == (10, 10)
