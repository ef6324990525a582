r"""Thermodynamic linear algebra on a simulated analog device.

Each function programs a matrix into a :class:`~thermoai.thermo.device.Device`, lets its overdamped
Ornstein-Uhlenbeck dynamics (simulated exactly in time by :class:`~thermoai.thermo.ou.OUProcess`: exact
Gaussian transitions at the device's sampling interval, so the only errors are the physical and
statistical ones) relax and fluctuate, reads snapshots through the ADC and averages them:

==========  =================================  ==============================================  ===========
function    device protocol                    read-out                                        error
==========  =================================  ==============================================  ===========
solve       ``dx = -G (x - G^-1 c) ds + ...``  time average of x -> ``A^-1 b``                  relative 2-norm
inv         ``dx = -G x ds + sqrt(2 s2) dW``   time average of ``x x^T`` = ``s2 G^-1``          relative Frobenius
lyapunov    ``dx = -G x ds + sqrt(C') dW``     time average of ``x x^T`` solves ``G S + S G^T = C'`` relative Frobenius
expm        ``D = G + G^T`` so ``S = I``       lag-l autocovariance ``E[x_{k+l} x_k^T] = e^{-G l dt}``  relative Frobenius
logdet      Jarzynski quench ladder            work ``W`` -> ``ln det = 2 ln <e^{-W}>``         absolute
==========  =================================  ==============================================  ===========

(``s`` is time in units of the device time constant ``tau``; ``G = A / scale`` with ``scale`` the largest
absolute row sum of ``A``, a Gershgorin bound, so every rate of ``G`` is at most ``1 / tau``.)

**Burn-in and averaging time.** Either give ``burn_in_s``/``averaging_s`` or a tolerance ``tol`` (split as
``tol/2`` burn-in bias and ``(sqrt 3 / 2) tol`` statistical error). With ``lambda_min`` the smallest real
part of an eigenvalue of the programmed ``G`` and ``kappa = 1 / lambda_min`` (the condition number
relative to the Gershgorin scale, >= the usual one), in units of ``tau``:

* mean (solve): ``t_burn = kappa ln(2 / tol)`` (the bias decays as ``e^{-lambda_min t}``, start at 0);
* second moments (inv, lyapunov, expm): ``t_burn = kappa ln(2 / tol) / 2`` (covariances relax twice as fast);
* solve: ``T_avg = kappa^2 d (2 sigma^2 kappa^2 + rho^2 dt) / (r^2 eps^2)`` from ``Cov(mean) ~ (1/T) (2 sigma^2
  G^-2 + rho^2 dt I)`` (``sigma^2`` the per-cell noise variance at unit rate, ``rho`` the readout noise,
  ``dt`` the sampling interval) and ``||x*|| >= r / kappa`` (``r``: the norm the right-hand side is scaled
  to give at most); a worst-case bound, so the estimated error of the run is usually well below ``tol``;
* inv, lyapunov: ``T_avg = (d + 1) kappa / eps^2`` (a sample covariance from ``N`` independent
  draws has relative Frobenius error ``<= sqrt((d + 1) / N)``, and the slowest mode decorrelates in
  ``kappa``); expm multiplies this by the squared amplification of
  the error relative to ``||e^{tA}||_F`` (``e^{alpha} sqrt(d) / ||e^{tA}||_F``, squared);
* logdet: burn-in at ``G`` for ``kappa ln(d / tol) / 2``, then the ladder below.

For non-normal drifts these are heuristics (transient growth is ignored). The report always carries the
estimated error of the run actually made: exact finite-length formulas for solve and inv, batch means for
lyapunov and expm, the delta method for logdet.

**logdet protocol (Jarzynski).** Equilibrate the cells at the programmed ``G_0 = G``, then quench the
couplings in ``K`` equal steps ``G_k = G + (k/K)(I - G)`` towards ``G_K = I`` (``ln det = 0``) through one
global interpolation knob (the matrix is programmed once), letting the cells relax for
``1/lambda_min(G_k)`` time constants after each quench. The work of a quench is
``W_k = x^T (G_k - G_{k-1}) x / (2 sigma^2)`` (energy in units of the noise temperature), measured from the
read-out state. Jarzynski's equality ``<e^{-W}> = Z_K / Z_0 = det(G)^{1/2}`` holds for any number of steps
and relaxation times, so ``ln det A = d ln(scale) + 2 ln <e^{-W}>``; slow quenches only reduce the variance
(``Var W ~ sum_i (1 - l_i)^2 / l_i / (2K)`` for relaxed steps). This direction is chosen because
``I - G`` is positive semi-definite (every rate of ``G`` is at most 1), so ``W >= 0`` and ``e^{-W}`` lies
in (0, 1]: the estimator has finite variance for any protocol, whereas the opposite ladder (from ``I`` to
``G``) averages ``e^{-W} >= 1`` with a heavy tail. Defaults: ``K = ceil(d (1 - 1/kappa)^2 kappa / 2)`` so
``Var W <= 1``, and ``ceil(4 (e - 1) / eps^2)`` trajectories.

**Error mitigation** (arXiv 2401.16231): ``roundings=K`` programs the matrix ``K`` times with unbiased
stochastic rounding (``rounding="stochastic"``) and averages the ``K`` answers (the averaging time is
shared among them), so the first-order quantisation error falls as ``1/sqrt(K)`` down to its ``O(q^2)``
bias. Programming is :meth:`Device.program`: the caller's ``generator`` drives the rounding, while the
chip's mismatch pattern (fixed by ``device.seed``) is the same at every programming and is not averaged
away. The dynamics, readout and cost come from the device too: :meth:`Device.stream` (snapshots streamed
into running sums) and :meth:`Device.operating_cost` (the logdet ladder).

**Quantisation model** (first order, reported as ``error_breakdown["quantisation"]``): with ``V_ij`` the
variance of the programming error of entry ``(i, j)`` (``q^2/12`` for nearest rounding, ``f(1-f) q^2/K``
for ``K`` stochastic roundings, plus ``(mismatch G_ij)^2``), ``dx = -G^-1 dG x + G^-1 dc`` and
``dG^-1 = -G^-1 dG G^-1``; for symmetric programming (one component per pair) the pairs are correlated.

Every function returns ``Result(value, report)``; ``report`` is a :class:`Report` with the device time (s),
energy (J), the estimated error and the settings used. Symmetric inputs are programmed symmetrically (one
physical coupling per cell pair). Reading adds the device's readout noise and ADC rounding; second
moments subtract their known bias (``readout_noise^2 + q_adc^2 / 12`` on the diagonal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.ou import OUProcess

__all__ = ["Report", "Result", "solve", "inv", "lyapunov", "expm", "logdet"]

_BATCHES = 16  # batch means for the error estimate of lyapunov/expm


@dataclass(frozen=True)
class Report:
    """What a device computation cost and how accurate it is estimated to be.

    ``estimated_error`` is relative (2-norm for solve, Frobenius otherwise) except for ``logdet``
    (absolute); it combines in quadrature the entries of ``error_breakdown`` (``statistical``,
    ``burn_in`` bias bound, ``quantisation`` model). Times in seconds, energy in joules.
    """

    device_time_s: float
    energy_j: float
    estimated_error: float
    error_breakdown: dict[str, float]
    burn_in_s: float
    averaging_s: float
    n_samples: int
    roundings: int
    kappa: float
    scale: float
    settings: dict[str, Any] = field(default_factory=dict)


class Result(NamedTuple):
    value: Tensor
    report: Report


# --------------------------------------------------------------------------------------------- input checks


def _real64(x: Any, name: str) -> Tensor:
    """``x`` as a detached float64 tensor; TypeError for non-numeric, complex or boolean input."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor or array-like of numbers; got {type(x).__name__}") from e
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued; got dtype {t.dtype}")
    return t.to(torch.float64)


def _check_finite(t: Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        raise ValueError(f"{name} must have finite entries; got {bad}")


def _matrix(A: Any, name: str) -> Tensor:
    t = _real64(A, name)
    if t.dim() != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise ValueError(f"{name} must be a square (d, d) matrix with d >= 1; got shape {tuple(t.shape)}")
    _check_finite(t, name)
    return t


def _out_dtype(*xs: Any) -> torch.dtype:
    for x in xs:
        if isinstance(x, Tensor) and x.dtype in (torch.float32, torch.float64):
            return x.dtype
    return torch.get_default_dtype()


def _is_symmetric(M: Tensor) -> bool:
    return bool((M - M.mT).abs().max() <= 1e-12 * max(float(M.abs().max()), 1e-300))


def _check_spd(G: Tensor, name: str) -> None:
    if not _is_symmetric(G):
        raise ValueError(f"{name} must be symmetric positive definite; got max |{name} - {name}^T| = "
                         f"{float((G - G.mT).abs().max()):.3g}")
    w = torch.linalg.eigvalsh(G)
    if not float(w.min()) > 1e-13 * float(w.abs().max()):
        raise ValueError(f"{name} must be symmetric positive definite; got smallest eigenvalue {float(w.min()):.3g}")


def _min_real_eig(G: Tensor, name: str, what: str = "the matrix") -> float:
    ev = torch.linalg.eigvals(G)
    re = float(ev.real.min())
    if not re > 1e-13 * float(G.abs().max()):
        raise ValueError(f"{name} must have eigenvalues with positive real part (a stable drift); {what} has "
                         f"smallest real part {re:.3g}")
    return re


def _positive(value: Any, name: str, allow_none: bool = True, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TypeError(f"{name} must be a {'positive integer' if integer else 'number'}; got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and positive; got {value}")


def _common(tol: float, roundings: int, rounding: str, burn_in_s: Any, averaging_s: Any) -> None:
    _positive(tol, "tol", allow_none=False)
    if tol >= 1:
        raise ValueError(f"tol must be a relative error in (0, 1); got {tol}")
    _positive(roundings, "roundings", allow_none=False, integer=True)
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}")
    if burn_in_s is not None:
        if isinstance(burn_in_s, bool) or not isinstance(burn_in_s, (int, float)) or not (0 <= burn_in_s < math.inf):
            raise ValueError(f"burn_in_s must be a finite non-negative number of seconds; got {burn_in_s!r}")
    _positive(averaging_s, "averaging_s")


def _device_for(device: Device | None, d: int) -> Device:
    if device is None:
        return Device(n_cells=d)
    if not isinstance(device, Device):
        raise TypeError(f"device must be a thermoai.thermo.device.Device; got {type(device).__name__}")
    if d > device.n_cells:
        raise ValueError(f"the problem has d = {d} but the device has n_cells = {device.n_cells}; use "
                         f"dataclasses.replace(device, n_cells={d})")
    return device


# ------------------------------------------------------------------------------------- programming errors


def _mirror_upper(M: Tensor) -> Tensor:
    """The upper triangle of ``M`` mirrored: exactly symmetric, so :meth:`Device.program` uses one physical
    coupling per cell pair (``M`` is symmetric to 1e-12 when this is called)."""
    return torch.triu(M) + torch.triu(M, 1).mT


def _programming_variances(device: Device, M: Tensor, rounding: str) -> tuple[Tensor, Tensor]:
    """Per-entry variances of the error :meth:`Device.program` makes on ``M`` (the first-order model of the
    module docstring): rounding (``q^2/12`` nearest, ``f (1 - f) q^2`` stochastic, ``f`` the fractional part
    of ``M / q``) and mismatch (``(mismatch M_ij)^2``)."""
    full = float(M.abs().max())
    if full == 0:  # nothing to program: zeros stay zero
        return torch.zeros_like(M), torch.zeros_like(M)
    step = device.dac_step(full)
    if rounding == "nearest":
        var = torch.full_like(M, step**2 / 12.0)
    else:
        f = M / step - torch.floor(M / step)
        var = f * (1 - f) * step**2
    return var, (device.mismatch * M) ** 2


def _quant_var_solve(Ginv: Tensor, x: Tensor, varG: Tensor, varc: Tensor, symmetric: bool) -> float:
    """E||dx||^2 of the first-order change ``dx = -G^-1 dG x + G^-1 dc`` (module docstring)."""
    n = (Ginv**2).sum(0)  # ||g_i||^2, g_i the i-th column of G^-1
    total = float(n @ varG @ (x**2)) + float(n @ varc)
    if symmetric:
        H = Ginv.mT @ Ginv
        cross = varG * H * torch.outer(x, x)
        total += float(cross.sum() - cross.diagonal().sum())
    return max(total, 0.0)


def _quant_var_inv(Ginv: Tensor, varG: Tensor, symmetric: bool) -> float:
    """E||dG^-1||_F^2 of the first-order change ``-G^-1 dG G^-1``."""
    n_col = (Ginv**2).sum(0)
    n_row = (Ginv**2).sum(1)
    if not symmetric:
        return max(float(n_col @ varG @ n_row), 0.0)
    H = Ginv.mT @ Ginv
    total = (varG * (torch.outer(n_col, n_col) + H**2)).sum() - (varG.diagonal() * n_col**2).sum()
    return max(float(total), 0.0)


def _quant_var_logdet(Ginv: Tensor, varG: Tensor, symmetric: bool) -> float:
    """Var of the first-order change ``tr(G^-1 dG)`` of ``ln det G``."""
    g2 = varG * Ginv.mT**2
    if not symmetric:
        return float(g2.sum())
    return float(2 * (g2.sum() - g2.diagonal().sum()) + g2.diagonal().sum())


def _combine_quant(var_round: float, var_mismatch: float, rounding: str, roundings: int) -> float:
    """Variance after averaging: stochastic roundings are independent (divide by K); nearest rounding and
    the chip's mismatch repeat identically at every programming."""
    return var_round / (roundings if rounding == "stochastic" else 1) + var_mismatch


# ------------------------------------------------------------------------------------ streamed running sums


class _Moments:
    """Accumulates ``x_{k+lag} x_k^T`` over a stream of reads (n, S, d), in total and in ``B`` batches
    (for batch-means error estimates)."""

    def __init__(self, n: int, d: int, n_avg: int, lag: int = 0, batches: int = _BATCHES):
        self.lag, self.pairs = lag, n_avg - lag
        self.B = max(1, min(batches, self.pairs))
        self.sums = torch.zeros(n, self.B, d, d, dtype=torch.float64)
        self.counts = torch.zeros(self.B, dtype=torch.float64)
        self.pos = 0  # index of the next read
        self.prev: Tensor | None = None

    def __call__(self, reads: Tensor) -> None:
        lag, S = self.lag, reads.shape[1]
        # ``full`` holds the kept reads (the last min(lag, pos)) followed by the new ones
        full = reads if self.prev is None else torch.cat([self.prev, reads], 1)
        start = self.pos - (0 if self.prev is None else self.prev.shape[1])  # position of full[:, 0]
        first = max(self.pos, lag)  # first position that has a partner ``lag`` steps earlier
        last = self.pos + S  # one past the last position
        if lag:
            self.prev = full[:, -min(lag, full.shape[1]):]
        self.pos = last
        if first >= last:
            return
        late = full[:, first - start : last - start]
        early = full[:, first - lag - start : last - lag - start]
        # pair index p = position - lag; batch = p * B // pairs
        bid = (torch.arange(first - lag, last - lag) * self.B) // self.pairs
        for b in torch.unique(bid).tolist():
            m = bid == b
            self.sums[:, b] += torch.einsum("nsi,nsj->nij", late[:, m], early[:, m])
            self.counts[b] += int(m.sum())

    def mean(self) -> Tensor:
        return self.sums.sum(1) / self.counts.sum()

    def batch_means(self) -> Tensor:
        return self.sums / self.counts.clamp_min(1)[None, :, None, None]


def _batch_error(mom: _Moments) -> Tensor:
    """Squared standard error (per run) of ``mom.mean()`` from batch means, Frobenius norm."""
    if mom.B < 2:
        return torch.full(mom.sums.shape[:1], float("nan"), dtype=torch.float64)
    bm = mom.batch_means()  # (n, B, d, d)
    dev = bm - bm.mean(1, keepdim=True)
    return (dev**2).sum((-2, -1)).sum(1) / (mom.B * (mom.B - 1))


def _stream_moments(device: Device, Gq: Tensor, D: Tensor, n: int, t_burn: float, n_avg: int,
                    generator: torch.Generator | None, lag: int = 0) -> tuple[_Moments, Cost]:
    """``n`` runs of the programmed cells from reset (x = 0), zero fixed point: burn-in ``t_burn`` time
    constants, then ``n_avg`` snapshots streamed into the moments ``x_{k+lag} x_k^T``."""
    mom = _Moments(n, Gq.shape[0], n_avg, lag=lag)
    cost = device.stream(Gq, None, n_avg * device.sampling_interval, D, n=n, burn_in=t_burn * device.time_constant,
                         generator=generator, consume=mom)
    return mom, cost


def _read_bias(device: Device) -> float:
    """Known bias that readout adds to a second moment's diagonal: readout noise and ADC rounding."""
    return device.readout_noise**2 + device.adc_step**2 / 12.0


def _finish(value: Tensor, cost: Cost, errors: dict[str, float], t_burn: float, t_avg: float, n_samples: int,
            roundings: int, kappa: float, scale: float, device: Device, settings: dict[str, Any]) -> Result:
    total = math.sqrt(sum(e**2 for e in errors.values()))
    settings = {**settings, "device": {k: getattr(device, k) for k in device.__dataclass_fields__}}
    report = Report(device_time_s=cost.time, energy_j=cost.energy, estimated_error=total, error_breakdown=errors,
                    burn_in_s=t_burn * device.time_constant, averaging_s=t_avg * device.time_constant,
                    n_samples=n_samples, roundings=roundings, kappa=kappa, scale=scale, settings=settings)
    return Result(value, report)


def _times(device: Device, tol: float, kappa: float, burn_in_s: float | None, averaging_s: float | None,
           rate_factor: float, default_avg: float) -> tuple[float, float, float]:
    """(burn-in, averaging time) in time constants, and the burn-in bias bound ``e^{-f t / kappa}``."""
    t_burn = kappa * math.log(2.0 / tol) / rate_factor if burn_in_s is None else burn_in_s / device.time_constant
    t_avg = default_avg if averaging_s is None else averaging_s / device.time_constant
    return t_burn, t_avg, math.exp(-rate_factor * t_burn / kappa)


def _n_steps(device: Device, t_avg: float) -> int:
    return max(1, math.ceil(t_avg * device.time_constant / device.sampling_interval - 1e-9))


def _gershgorin_scaled(A64: Tensor) -> tuple[float, Tensor]:
    """``(scale, G = A / scale)`` with ``scale`` the largest absolute row sum of ``A`` (a Gershgorin bound):
    every rate of ``G`` is at most 1 (one over the time constant) and every entry fits the DAC."""
    scale = float(A64.abs().sum(1).max())
    return scale, A64 / scale


def _check_noise(device: Device, op: str, why: str = "the answer is read from the noise") -> None:
    if device.noise_scale == 0:
        raise ValueError(f"device.noise_scale must be positive for {op}: {why}")


def _runs(runs: int | None) -> int:
    _positive(runs, "runs", integer=True)
    return 1 if runs is None else runs


# ---------------------------------------------------------------------------------------------------- solve


def solve(A: Any, b: Any, *, tol: float = 1e-2, burn_in_s: float | None = None, averaging_s: float | None = None,
          device: Device | None = None, diffusion: float = 0.0, roundings: int = 1, rounding: str = "nearest",
          generator: torch.Generator | None = None) -> Result:
    r"""Solve ``A x = b`` as the time-averaged mean of ``dx = -G (x - x*) ds + sqrt(D) dW``.

    Args:
        A: (d, d) with eigenvalues of positive real part (SPD, or any stable drift).
        b: (d,) or (k, d): k right-hand sides, each run in turn on the programmed matrix (k independent
            estimates; also the way to get many seeds at once).
        tol: requested relative error; sets burn-in and averaging time unless they are given.
        burn_in_s, averaging_s: device seconds (the averaging time is shared among the roundings).
        device: a :class:`Device` (default ``Device(n_cells=d)``).
        diffusion: injected noise ``D = diffusion * I`` (state units^2 per time constant), on top of the
            device's thermal floor. The right-hand side is scaled so the solution has norm at most
            ``r = adc_range / 2`` state units (using the smallest singular value of G).
        roundings, rounding: error mitigation by averaging randomised roundings (module docstring).
        generator: for the noise, the readout and stochastic rounding.

    Returns ``Result(x, report)``, x of the shape of b.
    """
    A64 = _matrix(A, "A")
    d = A64.shape[0]
    b64 = _real64(b, "b")
    if b64.dim() not in (1, 2) or b64.shape[-1] != d:
        raise ValueError(f"b must have shape ({d},) or (k, {d}) to match A of shape {tuple(A64.shape)}; "
                         f"got {tuple(b64.shape)}")
    _check_finite(b64, "b")
    _common(tol, roundings, rounding, burn_in_s, averaging_s)
    if isinstance(diffusion, bool) or not isinstance(diffusion, (int, float)) or not (0 <= diffusion < math.inf):
        raise ValueError(f"diffusion must be a finite non-negative number; got {diffusion!r}")
    device = _device_for(device, d)
    _min_real_eig(A64, "A")
    B = b64.reshape(-1, d)
    k = B.shape[0]
    scale, G = _gershgorin_scaled(A64)
    symmetric = _is_symmetric(G)
    r = device.adc_range / 2
    sigma_min = float(torch.linalg.svdvals(G).min())
    b_norm = B.norm(dim=1, keepdim=True)
    c_scale = torch.where(b_norm > 0, r * sigma_min / b_norm.clamp_min(1e-300), torch.zeros_like(b_norm))
    C = B * c_scale
    eps_stat = tol * math.sqrt(3) / 2
    sigma2 = device.noise_scale**2 * diffusion / 2 + device.thermal_variance  # stationary var at unit rate
    kappa = 1.0 / _min_real_eig(G, "A")
    dt = device.sampling_interval / device.time_constant
    default_avg = kappa**2 * d * (2 * sigma2 * kappa**2 + device.readout_noise**2 * dt) / (r**2 * eps_stat**2)
    t_burn, t_avg, bias = _times(device, tol, kappa, burn_in_s, averaging_s, 1.0, default_avg)
    n_avg = _n_steps(device, t_avg / roundings)
    D = diffusion * torch.eye(d, dtype=torch.float64)

    G_prog = _mirror_upper(G) if symmetric else G
    vG, mG = _programming_variances(device, G_prog, rounding)
    vC = [_programming_variances(device, C[i], rounding) for i in range(k)]
    total = torch.zeros(k, d, dtype=torch.float64)
    cost = Cost()
    stat_var = torch.zeros(k, dtype=torch.float64)
    q_round = torch.zeros(k, dtype=torch.float64)
    q_mis = torch.zeros(k, dtype=torch.float64)
    for _ in range(roundings):
        Gq, cost_g = device.program(G_prog, generator, rounding)
        _min_real_eig(Gq, "A", "the programmed (quantised) matrix (use more dac_bits)")
        progs = [device.program(C[i], generator, rounding) for i in range(k)]
        Cq = torch.stack([p[0] for p in progs])
        cost = cost + cost_g + sum((p[1] for p in progs), Cost())
        x_star = torch.linalg.solve(Gq, Cq.mT).mT  # the programmed chip's fixed point (simulator side)
        acc = torch.zeros(k, d, dtype=torch.float64)
        # one run per right-hand side, each with its own fixed point, from reset cells (x = 0)
        cost = cost + device.stream(Gq, x_star, n_avg * device.sampling_interval, D, n=k,
                                    burn_in=t_burn * device.time_constant, generator=generator,
                                    consume=lambda reads: acc.add_(reads.sum(1)))
        total += acc / n_avg
        # statistical error of this average of N snapshots of the stationary chain y_{k+1} = F y_k + e_k:
        # Var = (1/N) [S + M S + S M^T], M = sum_{l<N} (1 - l/N) F^l = F (I-F)^-1 - F (I - F^N)(I-F)^-2 / N,
        # plus the white readout noise
        Sig = device.process(Gq, D).stationary_covariance().to(torch.float64)
        F = torch.linalg.matrix_exp(-Gq * dt)
        eye = torch.eye(d, dtype=torch.float64)
        IF = torch.linalg.inv(eye - F)
        Mn = F @ IF - F @ (eye - torch.linalg.matrix_power(F, n_avg)) @ IF @ IF / n_avg
        stat_var += (torch.trace(Sig + Mn @ Sig + Sig @ Mn.mT) + d * device.readout_noise**2) / n_avg
        Ginv = torch.linalg.inv(Gq)
        for i in range(k):
            q_round[i] += _quant_var_solve(Ginv, x_star[i], vG, vC[i][0], symmetric) / roundings
            q_mis[i] += _quant_var_solve(Ginv, x_star[i], mG, vC[i][1], symmetric) / roundings
    x_dev = total / roundings
    x_norm = torch.linalg.solve(G, C.mT).mT.norm(dim=1).clamp_min(1e-300)
    stat = ((stat_var / roundings**2).sqrt() / x_norm).pow(2).mean().sqrt()
    quant = torch.tensor([_combine_quant(float(q_round[i]), float(q_mis[i]), rounding, roundings) for i in range(k)])
    errors = {"statistical": float(stat), "burn_in": bias,
              "quantisation": float((quant.sqrt() / x_norm).pow(2).mean().sqrt())}
    x = torch.where(c_scale > 0, x_dev / (c_scale.clamp_min(1e-300) * scale), torch.zeros_like(x_dev))
    x = x.reshape(b64.shape).to(_out_dtype(A, b))
    return _finish(x, cost, errors, t_burn, t_avg, n_avg * roundings, roundings, kappa, scale, device,
                   {"op": "solve", "tol": tol, "rounding": rounding, "diffusion": diffusion,
                    "right_hand_sides": k, "symmetric_programming": symmetric})


# ------------------------------------------------------------------------------ inv and lyapunov (moments)


def _second_moment_errors(eigs: Tensor, v: float, dt: float, n_avg: int) -> float:
    """Relative Frobenius standard error of the time average of ``x x^T`` over ``N = n_avg`` snapshots of a
    stationary OU with symmetric drift eigenvalues ``eigs`` and covariance ``v G^-1``::

        E||S_hat - S||_F^2 = (1/N) [ sum_km v_k v_m g(r_k r_m) + sum_k v_k^2 g(r_k^2) ],
        g(r) = sum_{|l| < N} (1 - |l|/N) r^|l| = (1 + r)/(1 - r) - 2 r (1 - r^N) / (N (1 - r)^2),

    with ``v_k = v / l_k`` and ``r_k = exp(-l_k dt)``; relative to ``||S||_F``."""
    vk = v / eigs
    rk = torch.exp(-eigs * dt)

    def g(r: Tensor) -> Tensor:
        return (1 + r) / (1 - r) - 2 * r * (1 - r**n_avg) / (n_avg * (1 - r) ** 2)

    cross = (torch.outer(vk, vk) * g(torch.outer(rk, rk))).sum()
    diag = (vk**2 * g(rk**2)).sum()
    return math.sqrt(float(cross + diag) / n_avg / float((vk**2).sum()))


def inv(A: Any, *, tol: float = 5e-2, burn_in_s: float | None = None, averaging_s: float | None = None,
        device: Device | None = None, roundings: int = 1, rounding: str = "nearest", runs: int | None = None,
        generator: torch.Generator | None = None) -> Result:
    r"""Invert a symmetric positive-definite ``A`` as the stationary covariance of ``dx = -G x ds +
    sqrt(2 sigma^2) dW``: ``Cov = sigma^2 G^-1`` (``sigma^2`` set so every cell's variance is at most 1 state
    unit^2, a quarter of the ADC range), so ``A^-1 = S_hat / (sigma^2 scale)``.

    Args as :func:`solve`; ``runs`` repeats the whole protocol independently (value gets a leading axis
    of that size; device time and energy add up). Returns ``Result(A^-1 (d, d) or (runs, d, d), report)``.
    """
    A64 = _matrix(A, "A")
    d = A64.shape[0]
    _common(tol, roundings, rounding, burn_in_s, averaging_s)
    n = _runs(runs)
    device = _device_for(device, d)
    _check_spd(A64, "A")
    _check_noise(device, "inv")
    scale, G = _gershgorin_scaled(A64)
    lam = torch.linalg.eigvalsh(G)
    kappa = 1.0 / float(lam.min())
    eps_stat = tol * math.sqrt(3) / 2
    t_burn, t_avg, bias = _times(device, tol, kappa, burn_in_s, averaging_s, 2.0, (d + 1) * kappa / eps_stat**2)
    n_avg = _n_steps(device, t_avg / roundings)
    sigma2 = float(lam.min()) / device.noise_scale**2
    v = device.noise_scale**2 * sigma2 + device.thermal_variance
    D = 2 * sigma2 * torch.eye(d, dtype=torch.float64)
    dt = device.sampling_interval / device.time_constant
    total = torch.zeros(n, d, d, dtype=torch.float64)
    cost = Cost()
    stat2, q_round, q_mis = 0.0, 0.0, 0.0
    G_prog = _mirror_upper(G)
    vG, mG = _programming_variances(device, G_prog, rounding)
    for _ in range(roundings):
        Gq, c = device.program(G_prog, generator, rounding)
        try:
            _check_spd(Gq, "the programmed (quantised) A")
        except ValueError as e:
            raise ValueError(f"{e}; use more dac_bits") from None
        mom, c_run = _stream_moments(device, Gq, D, n, t_burn, n_avg, generator)
        cost = cost + c + c_run
        total += mom.mean() - _read_bias(device) * torch.eye(d, dtype=torch.float64)
        stat2 += _second_moment_errors(torch.linalg.eigvalsh(Gq), v, dt, n_avg) ** 2
        Ginv = torch.linalg.inv(Gq)
        norm2 = float((Ginv**2).sum())
        q_round += _quant_var_inv(Ginv, vG, True) / norm2 / roundings
        q_mis += _quant_var_inv(Ginv, mG, True) / norm2 / roundings
    value = total / roundings / (v * scale)
    errors = {"statistical": math.sqrt(stat2) / roundings, "burn_in": bias,
              "quantisation": math.sqrt(_combine_quant(q_round, q_mis, rounding, roundings))}
    value = value[0] if runs is None else value
    return _finish(value.to(_out_dtype(A)), cost, errors, t_burn, t_avg, n_avg * roundings, roundings, kappa,
                   scale, device, {"op": "inv", "tol": tol, "rounding": rounding, "runs": n, "noise_variance": v})


def lyapunov(A: Any, C: Any, *, tol: float = 5e-2, burn_in_s: float | None = None,
             averaging_s: float | None = None, device: Device | None = None, roundings: int = 1,
             rounding: str = "nearest", runs: int | None = None,
             generator: torch.Generator | None = None) -> Result:
    r"""Solve ``A X + X A^T = C`` (``A`` stable, ``C`` symmetric PSD) as the stationary covariance of
    ``dx = -G x ds + sqrt(s2 C / max|C|) dW`` (``G = A / scale``; the noise covariance is programmed
    too, and its amplitude ``s2`` is set so every cell's variance is at most 1 state unit^2). Then
    ``G S + S G^T = s2 C / max|C|`` gives ``X = S max|C| / (s2 scale)``.

    The statistical error is estimated from 16 batch means; the quantisation entry is the exact change
    of the answer caused by programming (computed by the simulator, which knows the ideal matrices).
    Returns ``Result(X (d, d) or (runs, d, d), report)``.
    """
    A64 = _matrix(A, "A")
    d = A64.shape[0]
    C64 = _matrix(C, "C")
    if C64.shape != A64.shape:
        raise ValueError(f"C must have the shape of A, {tuple(A64.shape)}; got {tuple(C64.shape)}")
    if not _is_symmetric(C64):
        raise ValueError(f"C must be symmetric; got max |C - C^T| = {float((C64 - C64.mT).abs().max()):.3g}")
    w = torch.linalg.eigvalsh(C64)
    if float(w.min()) < -1e-12 * max(float(w.abs().max()), 1e-300) or float(w.abs().max()) == 0:
        raise ValueError(f"C must be positive semi-definite and non-zero; got eigenvalues in "
                         f"[{float(w.min()):.3g}, {float(w.max()):.3g}]")
    _common(tol, roundings, rounding, burn_in_s, averaging_s)
    n = _runs(runs)
    device = _device_for(device, d)
    _check_noise(device, "lyapunov")
    _min_real_eig(A64, "A")
    scale, G = _gershgorin_scaled(A64)
    c_max = float(C64.abs().max())
    Cn = C64 / c_max
    symmetric = _is_symmetric(G)
    kappa = 1.0 / _min_real_eig(G, "A")
    eps_stat = tol * math.sqrt(3) / 2
    t_burn, t_avg, bias = _times(device, tol, kappa, burn_in_s, averaging_s, 2.0, (d + 1) * kappa / eps_stat**2)
    n_avg = _n_steps(device, t_avg / roundings)
    X_ideal = OUProcess(G, Cn).stationary_covariance().to(torch.float64)
    s2 = 1.0 / float(X_ideal.diagonal().max()) / device.noise_scale**2
    v = device.noise_scale**2 * s2
    total = torch.zeros(n, d, d, dtype=torch.float64)
    programmed = torch.zeros(d, d, dtype=torch.float64)
    cost = Cost()
    err2 = torch.zeros(n, dtype=torch.float64)
    G_prog = _mirror_upper(G) if symmetric else G
    C_prog = _mirror_upper(Cn)
    for _ in range(roundings):
        Gq, c1 = device.program(G_prog, generator, rounding)
        Cq, c2 = device.program(C_prog, generator, rounding)
        _min_real_eig(Gq, "A", "the programmed (quantised) matrix (use more dac_bits)")
        try:
            proc = device.process(Gq, s2 * Cq)
        except ValueError as e:
            raise ValueError(f"the programmed noise covariance C is not valid ({e}); use more dac_bits") from None
        programmed += proc.stationary_covariance().to(torch.float64) / v
        mom, c_run = _stream_moments(device, Gq, s2 * Cq, n, t_burn, n_avg, generator)
        cost = cost + c1 + c2 + c_run
        total += mom.mean() - _read_bias(device) * torch.eye(d, dtype=torch.float64)
        err2 += _batch_error(mom)
    X_dev = total / roundings / v
    norm = float(X_ideal.norm())
    errors = {"statistical": float((err2.sqrt() / roundings / v / norm).pow(2).mean().sqrt()), "burn_in": bias,
              "quantisation": float((programmed / roundings - X_ideal).norm()) / norm}
    value = X_dev * c_max / scale
    value = value[0] if runs is None else value
    return _finish(value.to(_out_dtype(A, C)), cost, errors, t_burn, t_avg, n_avg * roundings, roundings, kappa,
                   scale, device, {"op": "lyapunov", "tol": tol, "rounding": rounding, "runs": n,
                                   "noise_variance": v, "symmetric_programming": symmetric})


# ---------------------------------------------------------------------------------------------------- expm


def expm(A: Any, t: float = 1.0, *, shift: float | None = None, tol: float = 0.1, burn_in_s: float | None = None,
         averaging_s: float | None = None, device: Device | None = None, roundings: int = 1,
         rounding: str = "nearest", runs: int | None = None, generator: torch.Generator | None = None) -> Result:
    r"""The matrix exponential ``e^{t A}`` as an autocovariance (Duffield et al., PRR 7, 013147, 2025).

    With ``M = alpha I - t A`` (``alpha = shift``, by default ``max(0, lambda_max(sym(t A))) + 1`` so that
    ``sym(M)`` is positive definite), the device runs ``dx = -G x ds + sqrt(G + G^T) dW`` with
    ``G = M / (l dt)``, whose stationary covariance is ``I``, and ``E[x_{k+l} x_k^T] = e^{-G l dt} =
    e^{-M}``; hence ``e^{tA} = e^{alpha} E[x_{k+l} x_k^T]``. The lag ``l = ceil(||M||_inf / dt)`` keeps every
    rate at most ``1 / tau``. The noise covariance ``G + G^T`` is that of the programmed couplings
    (fluctuation-dissipation), so ``S = I`` holds for the programmed chip too. Errors are amplified by
    ``e^{alpha}``. Statistical error from batch means; quantisation error exact (simulator side).

    Returns ``Result(e^{tA} (d, d) or (runs, d, d), report)``.
    """
    A64 = _matrix(A, "A")
    d = A64.shape[0]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"t must be a finite number; got {t!r}")
    _common(tol, roundings, rounding, burn_in_s, averaging_s)
    n = _runs(runs)
    device = _device_for(device, d)
    _check_noise(device, "expm")
    Bm = -t * A64
    mu = float(torch.linalg.eigvalsh(0.5 * (Bm + Bm.mT)).min())
    if shift is None:
        alpha = max(0.0, -mu) + 1.0
    else:
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift):
            raise ValueError(f"shift must be a finite number; got {shift!r}")
        if not shift + mu > 0:
            raise ValueError(f"shift must exceed {-mu:.6g} (= -lambda_min of the symmetric part of -tA) so that "
                             f"the drift's symmetric part is positive definite; got {shift}")
        alpha = float(shift)
    M = Bm + alpha * torch.eye(d, dtype=torch.float64)
    dt = device.sampling_interval / device.time_constant
    lag = max(1, math.ceil(float(M.abs().sum(1).max()) / dt))
    G = M / (lag * dt)
    symmetric = _is_symmetric(G)
    kappa = 1.0 / float(torch.linalg.eigvalsh(0.5 * (G + G.mT)).min())
    eps_stat = tol * math.sqrt(3) / 2
    ideal = math.exp(alpha) * torch.linalg.matrix_exp(-G * lag * dt)
    # relative to ||e^{tA}||_F, the error of a unit-variance autocovariance (about sqrt(d (d + 1) / N_eff))
    # is amplified by e^{alpha} sqrt(d) / ||e^{tA}||_F (the simulator plans with the true norm; a device
    # would use the bound ||e^{tA}||_F >= sqrt(d) e^{-lambda_max(sym(-tA))})
    amp = math.exp(alpha) * math.sqrt(d) / max(float(ideal.norm()), 1e-300)
    t_burn, t_avg, bias = _times(device, tol / amp, kappa, burn_in_s, averaging_s, 2.0,
                                 amp**2 * (d + 1) * kappa / eps_stat**2 + lag * dt)
    n_avg = max(lag + 2 * _BATCHES, _n_steps(device, t_avg / roundings))
    total = torch.zeros(n, d, d, dtype=torch.float64)
    programmed = torch.zeros(d, d, dtype=torch.float64)
    cost = Cost()
    err2 = torch.zeros(n, dtype=torch.float64)
    v = device.noise_scale**2
    G_prog = _mirror_upper(G) if symmetric else G
    for _ in range(roundings):
        Gq, c1 = device.program(G_prog, generator, rounding)
        sym_min = float(torch.linalg.eigvalsh(Gq + Gq.mT).min())
        if not sym_min > 0:
            raise ValueError("the programmed (quantised) drift lost a positive-definite symmetric part (smallest "
                             f"eigenvalue of G + G^T: {sym_min:.3g}); use more dac_bits or a larger shift")
        programmed += torch.linalg.matrix_exp(-Gq * lag * dt)
        # noise G + G^T of the programmed couplings (fluctuation-dissipation): stationary covariance I
        mom, c_run = _stream_moments(device, Gq, Gq + Gq.mT, n, t_burn, n_avg, generator, lag=lag)
        cost = cost + c1 + c_run
        total += mom.mean()
        err2 += _batch_error(mom)
    value = math.exp(alpha) * total / roundings / v
    norm = float(ideal.norm())
    errors = {"statistical": float((math.exp(alpha) * err2.sqrt() / roundings / v / norm).pow(2).mean().sqrt()),
              "burn_in": bias * amp,
              "quantisation": float((math.exp(alpha) * programmed / roundings - ideal).norm()) / norm}
    value = value[0] if runs is None else value
    return _finish(value.to(_out_dtype(A)), cost, errors, t_burn, t_avg, n_avg * roundings, roundings, kappa,
                   lag * dt, device, {"op": "expm", "tol": tol, "t": t, "shift": alpha, "lag_steps": lag,
                                      "rounding": rounding, "runs": n, "symmetric_programming": symmetric})


# -------------------------------------------------------------------------------------------------- logdet


def logdet(A: Any, *, tol: float = 0.1, stages: int | None = None, trajectories: int | None = None,
           relax_s: float | None = None, device: Device | None = None, rounding: str = "nearest",
           runs: int | None = None, generator: torch.Generator | None = None) -> Result:
    r"""``ln det A`` of a symmetric positive-definite ``A`` by the Jarzynski quench ladder of the module
    docstring (absolute error ``tol``).

    Args:
        stages: number of quenches K (default ``ceil(d (1 - 1/kappa)^2 kappa / 2)``, so ``Var W <= 1``).
        trajectories: independent ladders averaged (default ``ceil(4 (e - 1) / eps^2)``).
        relax_s: relaxation after each quench in seconds (default ``1 / lambda_min(G_k)`` time constants).
        runs: independent repetitions of the whole estimate (value gets a leading axis).

    The statistical error is the delta-method standard error ``2 sd(e^{-W}) / (sqrt(n) mean(e^{-W}))``;
    the quantisation entry is the first-order model ``Var tr(G^-1 dG)``.
    Returns ``Result(ln det A (0-d) or (runs,), report)``.
    """
    A64 = _matrix(A, "A")
    d = A64.shape[0]
    _positive(tol, "tol", allow_none=False)
    _positive(stages, "stages", integer=True)
    _positive(trajectories, "trajectories", integer=True)
    _positive(relax_s, "relax_s")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}")
    n_runs = _runs(runs)
    device = _device_for(device, d)
    _check_noise(device, "logdet", "the work is measured against the noise")
    _check_spd(A64, "A")
    scale, G = _gershgorin_scaled(A64)
    kappa = 1.0 / float(torch.linalg.eigvalsh(G).min())
    K = stages if stages is not None else max(1, math.ceil(d * (1 - 1 / kappa) ** 2 * kappa / 2))
    eps_stat = tol * math.sqrt(3) / 2
    n_traj = trajectories if trajectories is not None else math.ceil(4 * (math.e - 1) / eps_stat**2)
    G_prog = _mirror_upper(G)
    vG, mG = _programming_variances(device, G_prog, rounding)
    Gq, cost = device.program(G_prog, generator, rounding)
    try:
        _check_spd(Gq, "the programmed (quantised) A")
    except ValueError as e:
        raise ValueError(f"{e}; use more dac_bits") from None
    lam_q = torch.linalg.eigvalsh(Gq)
    sigma2 = min(1.0, float(lam_q.min())) / device.noise_scale**2  # every cell's variance <= 1 state unit^2
    v = device.noise_scale**2 * sigma2 + device.thermal_variance  # noise temperature
    eye = torch.eye(d, dtype=torch.float64)
    D = 2 * sigma2 * eye
    n = n_runs * n_traj
    # covariances relax at 2 lambda_min at G_0 = G; the start's ln det bias d e^{-2t/kappa} / 2 <= tol / 2
    kappa_q = 1.0 / float(lam_q.min())
    t_burn = 0.5 * kappa_q * math.log(max(d / tol, 1.0))

    def relax(M: Tensor, x: Tensor, t: float) -> Tensor:
        """The cells' states after ``t`` time constants at couplings ``M`` (exact, not read)."""
        return device.process(M, D).sample(x, torch.tensor([0.0, t], dtype=torch.float64), generator=generator)[:, -1]

    x = relax(Gq, torch.zeros(n, d, dtype=torch.float64), t_burn)
    W = torch.zeros(n, dtype=torch.float64)
    dG = (eye - Gq) / K  # positive semi-definite: W >= 0
    t_total = t_burn
    for k in range(1, K + 1):
        xr = device.read(x, generator=generator)[0]
        W += 0.5 * torch.einsum("ni,ij,nj->n", xr, dG, xr) / v
        if k == K:
            break
        Gk = Gq + k * dG
        t_relax = 1.0 / float(torch.linalg.eigvalsh(Gk).min()) if relax_s is None else relax_s / device.time_constant
        x = relax(Gk, x, t_relax)
        t_total += t_relax
    Wr = W.reshape(n_runs, n_traj)
    log_mean = torch.logsumexp(-Wr, dim=1) - math.log(n_traj)
    value = d * math.log(scale) + 2 * log_mean
    w = torch.exp(-Wr - (-Wr).max(dim=1, keepdim=True).values)
    se = 2 * w.std(dim=1) / (w.mean(dim=1) * math.sqrt(n_traj)) if n_traj > 1 else torch.full((n_runs,), math.nan)
    Ginv = torch.linalg.inv(Gq)
    quant = math.sqrt(_combine_quant(_quant_var_logdet(Ginv, vG, True), _quant_var_logdet(Ginv, mG, True),
                                     rounding, 1))
    # the thermal floor raises the noise temperature a little; its bias on W is first order in it
    errors = {"statistical": float(se.pow(2).mean().sqrt()), "burn_in": d * math.exp(-2 * t_burn / kappa_q) / 2,
              "quantisation": quant}
    # each trajectory keeps the d cells on for the whole ladder and reads them once per stage
    cost = cost + device.operating_cost(n, d, t_total * device.time_constant, n * K * d)
    value = value[0] if runs is None else value
    return _finish(value.to(_out_dtype(A)), cost, errors, t_burn, t_total - t_burn, n * K, 1, kappa, scale, device,
                   {"op": "logdet", "tol": tol, "stages": K, "trajectories": n_traj, "runs": n_runs,
                    "rounding": rounding, "protocol": "Jarzynski quench ladder from G to I"})
