"""Shared fixtures for thermoai.bayes tests.

``GaussianTarget``: a 10-dimensional Gaussian with a known *dense* covariance, used as an exact answer by
every sampler and approximation test. Its covariance is ``Q diag(eigvals) Q^T`` with a fixed random
orthogonal ``Q`` and eigenvalues spaced evenly in [0.5, 2.0], so the condition number is 4: dense enough
that a method ignoring correlations fails, well-conditioned enough that chains mix in a few hundred steps.

Parameters can be given as a plain ``(10,)`` tensor (``log_prob``) or as a tree
``{"a": (4,), "b": (2, 3)}`` (``tree_log_prob``) so that tree handling is exercised too. Both return
``(log density, aux)`` with ``aux = torch.tensor([])`` and ignore ``batch``; leading batch dimensions of
the parameters are not supported (use ``torch.func.vmap``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

GAUSSIAN_DIM = 10
TREE_SHAPES = {"a": (4,), "b": (2, 3)}


@dataclass(frozen=True)
class GaussianTarget:
    mean: Tensor  # (d,)
    cov: Tensor  # (d, d), dense
    precision: Tensor  # (d, d), inverse of cov
    eigvals: Tensor  # (d,), eigenvalues of cov, ascending

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def log_prob(self, params: Tensor, batch=None) -> tuple[Tensor, Tensor]:
        """Unnormalised log density ``-0.5 (x - mean)^T P (x - mean)`` at a ``(d,)`` tensor."""
        diff = params - self.mean.to(params.dtype)
        # (diff @ P) * diff rather than P @ diff: under vmap this is one matrix product, not a batched matvec
        value = -0.5 * ((diff @ self.precision.to(params.dtype)) * diff).sum(-1)
        return value, torch.tensor([], dtype=params.dtype)

    def tree_log_prob(self, params: dict, batch=None) -> tuple[Tensor, Tensor]:
        """The same density on a tree ``{"a": (4,), "b": (2, 3)}`` (flattened in key order a, b)."""
        return self.log_prob(self.flatten(params), batch)

    def flatten(self, params: dict) -> Tensor:
        return torch.cat([params["a"].reshape(*params["a"].shape[:-1], -1),
                          params["b"].reshape(*params["b"].shape[:-2], -1)], dim=-1)

    def unflatten(self, flat: Tensor) -> dict:
        lead = flat.shape[:-1]
        return {"a": flat[..., :4].clone(), "b": flat[..., 4:].reshape(*lead, 2, 3).clone()}

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> Tensor:
        """``n`` exact draws, shape ``(n, d)``."""
        chol = torch.linalg.cholesky(self.cov)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return (self.mean + z @ chol.T).to(dtype)

    def to(self, dtype: torch.dtype) -> "GaussianTarget":
        return GaussianTarget(*(t.to(dtype) for t in (self.mean, self.cov, self.precision, self.eigvals)))


def make_gaussian_target(dim: int = GAUSSIAN_DIM, seed: int = 0, dtype: torch.dtype = torch.float64) -> GaussianTarget:
    """The fixed dense Gaussian target (deterministic in ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=gen))
    q = q * torch.sign(torch.diagonal(r))  # unique Haar-distributed orthogonal matrix
    eigvals = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
    cov = (q * eigvals) @ q.T
    cov = 0.5 * (cov + cov.T)
    precision = (q / eigvals) @ q.T
    precision = 0.5 * (precision + precision.T)
    mean = torch.randn(dim, dtype=torch.float64, generator=gen)
    return GaussianTarget(mean, cov, precision, eigvals).to(dtype)


@pytest.fixture(scope="session")
def gaussian_target() -> GaussianTarget:
    """10-D Gaussian with known dense covariance, float64 (``.to(torch.float32)`` for single precision)."""
    return make_gaussian_target()


# ------------------------------------------------------------------------ sampler checks on the target

@dataclass
class MomentCheck:
    """Outcome of :func:`check_sampler_moments`: sample moments, standard errors from the ESS, and the
    allowed deviations (k standard errors + the known discretisation bias)."""

    mean: Tensor
    cov: Tensor
    mean_se: Tensor
    cov_se: Tensor
    mean_err: Tensor
    cov_err: Tensor
    mean_tol: Tensor
    cov_tol: Tensor
    min_ess: float

    def assert_ok(self) -> None:
        bad_mean = (self.mean_err > self.mean_tol).nonzero().flatten().tolist()
        assert not bad_mean, (
            f"sample mean off target at coordinates {bad_mean}: err {self.mean_err[bad_mean]}, tol {self.mean_tol[bad_mean]}"
        )
        worst = (self.cov_err / self.cov_tol).max()
        assert worst <= 1.0, (
            f"sample covariance off target: worst |err|/tol = {float(worst):.2f}\n err {self.cov_err}\n tol {self.cov_tol}"
        )


def run_chains(transform, target: GaussianTarget, n_chains: int, burn_in: int, n_draws: int, thin: int = 1,
               seed: int = 0, spread: float = 2.0):
    """Run ``n_chains`` chains of ``transform`` at once (``thermoai.bayes.ensemble`` = vmap over states) on
    ``target.tree_log_prob``-style params, started at ``mean + spread * N(0, I)``; returns the kept draws
    flattened, shape ``(n_chains, n_draws, d)``, and the final (stacked) state."""
    from thermoai.bayes import diagnostics, ensemble

    torch.manual_seed(seed)
    chains = ensemble.build(transform, n_chains)
    x0 = target.mean + spread * torch.randn(n_chains, target.dim, dtype=target.mean.dtype)
    state = chains.init(target.unflatten(x0), stacked=True)
    state, samples = diagnostics.collect(
        chains, state, num_steps=burn_in + n_draws * thin, burn_in=burn_in + thin - 1, thin=thin, inplace=True
    )
    return target.flatten(diagnostics.draws_to_chains(samples)), state


def check_sampler_moments(x: Tensor, target: GaussianTarget, k: float = 5.0, expected_mean: Tensor | None = None,
                          expected_cov: Tensor | None = None) -> MomentCheck:
    """Compare the moments of draws ``x`` ``(chains, draws, d)`` with the target.

    The standard error of each statistic comes from its own effective sample size (thermoai's multi-chain
    ESS): for the mean of coordinate i, ``sd_i / sqrt(ESS(x_i))``; for covariance entry (i, j), the
    standard deviation of the product ``(x_i - m_i)(x_j - m_j)`` over ``sqrt(ESS)`` of that product's
    trace. The tolerance is ``k`` standard errors plus ``|expected - target|``, where ``expected_*`` are
    the exact stationary moments of the discretised chain (its known bias; zero when not given).
    """
    from thermoai.bayes import diagnostics

    n_chains, n_draws, d = x.shape
    x = x.to(torch.float64)
    mean = x.mean(dim=(0, 1))
    centred = x - mean
    cov = torch.einsum("cti,ctj->ij", centred, centred) / (n_chains * n_draws - 1)
    ess_x = diagnostics.effective_sample_size(x)
    mean_se = torch.sqrt(torch.diagonal(cov) / ess_x)
    cov_se = torch.empty(d, d, dtype=torch.float64)
    min_ess = float(ess_x.min())
    for i in range(d):
        prod = centred[..., i : i + 1] * centred  # (chains, draws, d): products with coordinate i
        ess_p = diagnostics.effective_sample_size(prod)
        min_ess = min(min_ess, float(ess_p.min()))
        cov_se[i] = prod.reshape(-1, d).std(dim=0) / torch.sqrt(ess_p)
    mean_bias = torch.zeros(d, dtype=torch.float64) if expected_mean is None else (expected_mean - target.mean).abs()
    cov_bias = torch.zeros(d, d, dtype=torch.float64) if expected_cov is None else (expected_cov - target.cov).abs()
    return MomentCheck(
        mean=mean, cov=cov, mean_se=mean_se, cov_se=cov_se,
        mean_err=(mean - target.mean).abs(), cov_err=(cov - target.cov).abs(),
        mean_tol=k * mean_se + mean_bias, cov_tol=k * cov_se + cov_bias, min_ess=min_ess,
    )


def stationary_cov(transition: Tensor, noise_cov: Tensor) -> Tensor:
    """Stationary covariance ``C = A C A^T + Q`` of the linear chain ``z' = A z + N(0, Q)`` (exact)."""
    import scipy.linalg

    c = scipy.linalg.solve_discrete_lyapunov(transition.numpy(), noise_cov.numpy())
    return torch.as_tensor(0.5 * (c + c.T), dtype=torch.float64)


# --------------------------------------------------------------------- contract checks for transforms

def _quadratic(params, batch=None):
    """A tree log density with a gradient that depends on the params (so steps differ)."""
    return -0.5 * sum((v * v).sum() for v in params.values()), torch.tensor([])


def _tree_params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(3, 2, dtype=dtype, generator=gen), "b": torch.randn(2, dtype=dtype, generator=gen)}


def _leaves(state):
    import optree

    return optree.tree_leaves(state)


def check_inplace_equivalence(build, n_steps: int = 4) -> None:
    """``inplace=True`` and ``False`` give bit-identical states for the same generator seed; the
    out-of-place update leaves its input untouched; the in-place one returns the same tensors."""
    transform = build(_quadratic)
    torch.manual_seed(3)  # init may draw momenta from the global RNG: the same draw for both runs
    base = transform.init(_tree_params())
    before = [x.clone() for x in _leaves(base)]
    g1 = torch.Generator().manual_seed(7)
    s_out = base
    for _ in range(n_steps):
        s_out, _ = transform.update(s_out, None, inplace=False, generator=g1)
    for x, y in zip(_leaves(base), before):
        assert torch.equal(x, y) or (torch.isnan(x).all() and torch.isnan(y).all()), "out-of-place update changed its input"
    torch.manual_seed(3)
    s_in = transform.init(_tree_params())
    held = _leaves(s_in)
    g2 = torch.Generator().manual_seed(7)
    for _ in range(n_steps):
        returned, _ = transform.update(s_in, None, inplace=True, generator=g2)
        assert returned is s_in
    for a, b in zip(_leaves(s_out), _leaves(s_in)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert all(a is b for a, b in zip(held, _leaves(s_in))), "in-place update must write into the state's tensors"
    assert int(s_in.step) == n_steps


def check_dtype_device(build, dtype=torch.float64) -> None:
    """Every floating tensor of the state (fresh and updated) has the params' dtype; all on its device;
    ``step`` is int64."""
    transform = build(_quadratic)
    params = _tree_params(dtype)
    for state in (transform.init(params), transform.update(transform.init(params), None)[0]):
        for leaf in _leaves(state):
            assert leaf.device == params["w"].device
            if leaf.is_floating_point():
                assert leaf.dtype == dtype, f"state leaf has {leaf.dtype}, params {dtype}"
        assert state.step.dtype == torch.int64 and state.step.dim() == 0
        assert state.log_posterior.dtype == dtype


def check_fresh_init(build) -> None:
    """A new ``init`` after in-place updates of another state starts at step 0 with NaN log posterior and
    shares no tensor with it (posteriors 0.1.3 defect 4: shared class-level defaults)."""
    transform = build(_quadratic)
    first = transform.init(_tree_params())
    for _ in range(3):
        transform.update(first, None, inplace=True)
    assert int(first.step) == 3
    fresh = transform.init(_tree_params(seed=1))
    assert int(fresh.step) == 0
    assert torch.isnan(fresh.log_posterior)
    ids = {id(x) for x in _leaves(first)}
    assert not any(id(x) in ids for x in _leaves(fresh))
    # a schedule sees the fresh state's own step
    seen = []
    sched = build(_quadratic, lr=lambda step: seen.append(int(step)) or 0.01)
    sched.update(sched.init(_tree_params()), None)
    assert seen == [0]


def check_bad_inputs(build) -> None:
    """Clear errors for the usual mistakes (each message names the problem)."""
    params = _tree_params()
    bad = {
        "must return a pair": lambda p, b: -(p["b"] ** 2).sum(),
        "scalar": lambda p, b: (-(p["b"] ** 2), torch.tensor([])),
        "NaN or Inf": lambda p, b: (torch.sqrt(p["b"] - p["b"]).sum(), torch.tensor([])),  # finite value, NaN grad
        "non-finite value": lambda p, b: (p["b"].sum() * float("nan"), torch.tensor([])),
    }
    for message, fn in bad.items():
        transform = build(fn)
        state = transform.init(params)
        with pytest.raises(ValueError, match=message):
            transform.update(state, None)
    for name in ("lr", "temperature"):
        with pytest.raises(ValueError, match=name):
            build(_quadratic, **{name: -0.1})
        transform = build(_quadratic, **{name: lambda step: -1.0})
        with pytest.raises(ValueError, match=name):
            transform.update(transform.init(params), None)
    with pytest.raises(TypeError, match="floating"):
        build(_quadratic).init({"w": torch.ones(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="tensor leaf"):
        build(_quadratic).init({})


@pytest.fixture
def contract():
    """The shared contract checks, as a namespace: ``contract.inplace(build)`` etc., where ``build`` is
    ``lambda log_posterior, **overrides: method.build(log_posterior, **defaults | overrides)``."""
    from types import SimpleNamespace

    return SimpleNamespace(
        inplace=check_inplace_equivalence, dtype=check_dtype_device, fresh_init=check_fresh_init,
        bad_inputs=check_bad_inputs, tree_params=_tree_params, quadratic=_quadratic,
    )


def _blocks(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    return torch.cat([torch.cat([a, b], 1), torch.cat([c, d], 1)], 0)


def sghmc_stationary(target: GaussianTarget, lr: float, alpha: float, friction: float | None = None,
                     grad_scale: float = 1.0, temperature: float = 1.0) -> Tensor:
    """Exact stationary covariance ``(2d, 2d)`` of (position, momentum) of the SGHMC step (sigma = 1,
    beta = 0) on the log density ``grad_scale * log target`` at ``temperature``:
    ``m' = (1 - h f) m - h c P x + sqrt(2 alpha h T) xi``, ``x' = x + h m'``, with friction ``f = alpha``
    unless given (SGNHT's thermostat settles at another ``f``)."""
    f = alpha if friction is None else friction
    d, h, p = target.dim, lr, grad_scale * target.precision
    eye = torch.eye(d, dtype=torch.float64)
    transition = _blocks(eye - h * h * p, h * (1 - h * f) * eye, -h * p, (1 - h * f) * eye)
    noise = 2 * alpha * h * temperature * _blocks(h * h * eye, h * eye, h * eye, eye)
    return stationary_cov(transition, noise)


@pytest.fixture
def sampler_check():
    """``run_chains``, ``check_sampler_moments``, ``stationary_cov``, ``sghmc_stationary``, ``blocks``."""
    from types import SimpleNamespace

    return SimpleNamespace(run=run_chains, moments=check_sampler_moments, stationary_cov=stationary_cov,
                           sghmc_stationary=sghmc_stationary, blocks=_blocks)
