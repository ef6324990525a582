r"""A circuit that samples the posterior of Bayesian logistic regression.

Model (Aifer et al., "Thermodynamic Bayesian Inference", arXiv 2410.01793: a circuit is given there, but
it was not readable; this realisation is the research brief's, tbi-paper.md section 3)::

    theta ~ N(mu_pi, Sigma_pi),   P(y_i = 1 | theta) = sigma(x_i^T theta),   X (n, d), y in {0, 1}^n,
    grad ln p(theta | y) = -Sigma_pi^-1 (theta - mu_pi) + X^T (y - sigma(X theta)).

**Circuit.** Node voltages ``v = V0 theta`` (``V0 = full_scale_voltage / scale``) on a prior network built as
the Gaussian circuit's design "rc": capacitance matrix ``C = c0 Sigma_pi^-1``, conductances ``G = C / tau_pi``
returned to sources holding ``mu_pi``, and the conductances' amplified Johnson noise at the noise
temperature ``T_n = c0 V0^2 / k_B``. The likelihood is two resistive crossbars and a sigmoid per datum:

* crossbar 1 (entries ``X``) with transimpedance amplifiers gives ``Delta V_i = V_T x_i^T theta`` (the
  thermal voltage ``V_T = k T / q``, 25.85 mV at 300 K);
* a BJT differential pair per datum: the collector current of one side is exactly
  ``I_tail sigma(Delta V_i / V_T)``; non-idealities ``sigma_hw(z) = sigma((1 + g) clip(z, +-z_sat) + o)``
  with gain error ``g`` (a V_T drift of 0.33 %/K at 300 K is g = -0.0033 per kelvin of warming), input
  offset ``o`` (in units of V_T: 1 mV of pair offset is o = 0.039) and the crossbar drivers' saturation
  ``z_sat`` (their rails, in units of V_T);
* label current sources ``y_i I_tail`` minus the pair outputs form the residuals, and crossbar 2 (entries
  ``X^T``) sums them into the node currents, ``(c0 V0 / tau_pi) X^T (y - sigma_hw)``.

In device time ``s = t / tau`` (``tau`` the device time constant) the node dynamics are the Langevin
equation with mobility ``Sigma_pi / L``::

    d theta = (1 / L) Sigma_pi grad ln p_hw(theta) ds + sqrt(2 T Sigma_pi / L) dW_s,      tau_pi = L tau,

with ``L = 1 + lambda_max(Sigma_pi^1/2 X^T X Sigma_pi^1/2) / 4`` the largest curvature the posterior can
have (``sigma' <= 1/4``) in the mobility's metric: element values are chosen so that no mode is faster than
the cells (rate ``1 / tau``). The stationary law is ``p_hw^(1 / T)``: the posterior when the sigmoid is ideal
and the noise calibrated (``T = 1``); ``T = noise_scale^2 gain^2`` otherwise (for ``dtheta = a grad ln p dt +
b dW`` the stationary law is ``p^(2a / b^2)``), a tempered posterior. ``p_hw`` is exactly known
(:meth:`LogisticPosteriorCircuit.hardware_log_prob`): the non-ideal sigmoid is still the derivative of a
per-datum potential. Crossbar mismatch (the two crossbars hold different errors) makes the drift
non-conservative, and the stationary law is then known only by simulation.

**Minibatches.** A crossbar of ``array_rows < n`` rows holds one batch at a time: the batches (consecutive
rows) are programmed in turn (``batch_order="cyclic"``) or at random, each for ``switch_interval`` seconds of
dynamics, with the residual currents scaled by ``n / |B|``; the cells hold their state while the array is
rewritten (programming time is added, not overlapped). The drift is then an unbiased but noisy estimate of
the full one, which inflates the sampled spread (an SGLD-type bias, growing with the switch interval; measured
in the tests and the report, not corrected).

**Simulation.** Euler-Maruyama (:func:`thermoai.thermo.ou.euler_maruyama`) or the exponential integrator with
the prior branch as its exact linear part (:func:`thermoai.thermo.ou.exponential_integrator`), at a step of
``step_fraction / r_max`` time constants, ``r_max <= 1 + max(g, 0)`` the drift's largest rate (its stiffness
after the scaling above). Discretisation bias of Euler-Maruyama, first order in the step ``h`` (in time
constants) for a Gaussian target with precision ``H`` and mobility ``M``: the stationary covariance is
``H^-1 + (h / 2) M`` (solve ``(I - hMH) S (I - hMH)^T + 2 h M = S``), i.e. every marginal variance is too
large by ``h T Sigma_pi,jj / (2 L)`` (:meth:`LogisticPosteriorCircuit.discretisation_bias`).

**Costs.** Programming: the prior network (``2 d^2`` values), its sources (``d``) and noise gain (1), both
crossbars (``2 rows d``) and the label sources (``rows``), through ``Device.program``; once, or at every
switch for minibatches. Running: ``Device.operating_cost`` with ``cells = d + rows`` (the node cells and one
sigmoid cell per row) and ``couplings = d^2 + 2 rows d`` (the prior network and the two crossbars) at the
device's own figures, plus one ADC conversion per node per read.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from thermoai.thermo.circuits._common import (
    F64,
    as_covariance,
    as_matrix,
    as_vector,
    check_device,
)
from thermoai.thermo.device import BOLTZMANN, Cost, Device
from thermoai.thermo.ou import OUProcess, euler_maruyama, exponential_integrator

__all__ = ["LogisticPosteriorCircuit"]

ELEMENTARY_CHARGE = 1.602176634e-19  # C (exact, SI 2019)
INTEGRATORS = ("euler", "exponential")
_CHUNK_STATES = 2_000_000  # states (chains * steps * d) per integrator call, which keeps its whole path


def _check_labels(y: Tensor, n: int) -> Tensor:
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match X; got {tuple(y.shape)}")
    bad = ~((y == 0) | (y == 1))
    if bool(bad.any()):
        vals = sorted({float(v) for v in y[bad][:5].tolist()})
        raise ValueError(f"y must contain only the labels 0 and 1; got {vals}")
    return y


def _per_row(x: Any, name: str, n: int) -> Tensor:
    """A scalar or (n,) per-datum parameter as an (n,) vector (as_vector checks finiteness and shape)."""
    return as_vector(x, name, n)


class LogisticPosteriorCircuit:
    r"""Posterior sampler for Bayesian logistic regression on a simulated device.

    Args:
        X: (n, d) features (standardise them: the sigmoid inputs are ``x_i^T theta`` in units of V_T).
        y: (n,) labels in {0, 1}.
        prior_mean: (d,) ``mu_pi``; None means zeros.
        prior_cov: ``Sigma_pi``: positive scalar, (d,) diagonal or (d, d) SPD (default 1: ``N(0, I)``).
        device: :class:`~thermoai.thermo.device.Device` with at least d cells (the nodes; the crossbar rows
            and sigmoid cells are separate arrays); None: the PCB prototype with d cells.
        sigmoid_gain_error, sigmoid_offset: ``g`` and ``o`` of ``sigma((1 + g) z + o)``, scalars or (n,)
            per-datum values (pair-to-pair mismatch). Units: relative, and V_T.
        sigmoid_saturation: ``z_sat`` (units of V_T, > 0): the crossbar outputs clip at ``+-z_sat``; inf: none.
        array_rows: rows of the crossbar; None: n (full batch). Fewer rows: time-multiplexed minibatches.
        switch_interval: seconds of dynamics per minibatch (default 10 time constants).
        batch_order: ``"cyclic"`` or ``"random"`` (a fresh batch at each switch, drawn with the sampling
            generator).
        integrator: ``"euler"`` (Euler-Maruyama) or ``"exponential"`` (prior branch exact).
        step_fraction: integrator step over the fastest time scale of the drift, in (0, 1.5]; default 0.5.
        scale: posterior units per state unit (``theta = scale x``); default ``4.5 max_i sqrt(Sigma_pi,ii
            + mu_pi,i^2) / adc_range``.
        rounding: DAC rounding, ``"nearest"`` or ``"stochastic"``.

    Raises ValueError for labels outside {0, 1}, NaN/Inf, mismatched shapes, a non-PD prior covariance or a
    device with fewer than d cells; TypeError for non-numeric input; each names the argument.
    """

    def __init__(self, X, y, prior_mean=None, prior_cov=1.0, device: Device | None = None, *,
                 sigmoid_gain_error=0.0, sigmoid_offset=0.0, sigmoid_saturation: float = math.inf,
                 array_rows: int | None = None, switch_interval: float | None = None, batch_order: str = "cyclic",
                 integrator: str = "euler", step_fraction: float = 0.5, scale: float | None = None,
                 rounding: str = "nearest"):
        Xm = as_matrix(X, "X", (None, None))
        n, d = Xm.shape
        yv = _check_labels(as_vector(y, "y"), n)
        mu = torch.zeros(d, dtype=F64) if prior_mean is None else as_vector(prior_mean, "prior_mean", d)
        Sp = as_covariance(prior_cov, "prior_cov", d)
        self.device = check_device(device, d, "nodes")
        dev = self.device
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}; got {integrator!r}")
        if batch_order not in ("cyclic", "random"):
            raise ValueError(f"batch_order must be 'cyclic' or 'random'; got {batch_order!r}")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}")
        if isinstance(step_fraction, bool) or not isinstance(step_fraction, (int, float)) or not 0 < step_fraction <= 1.5:
            raise ValueError(f"step_fraction must be a number in (0, 1.5]; got {step_fraction!r}")
        g = _per_row(sigmoid_gain_error, "sigmoid_gain_error", n)
        if bool((g <= -1).any()):
            raise ValueError("sigmoid_gain_error must be > -1 (the gain 1 + g must stay positive)")
        o = _per_row(sigmoid_offset, "sigmoid_offset", n)
        if isinstance(sigmoid_saturation, bool) or not isinstance(sigmoid_saturation, (int, float)) or \
                math.isnan(sigmoid_saturation) or sigmoid_saturation <= 0:
            raise ValueError(f"sigmoid_saturation must be a positive number of thermal voltages (inf: none); "
                             f"got {sigmoid_saturation!r}")
        rows = n if array_rows is None else array_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= n:
            raise ValueError(f"array_rows must be an integer in [1, n = {n}] or None; got {array_rows!r}")
        tau = float(dev.time_constant)
        if switch_interval is None:
            switch_interval = 10 * tau
        if isinstance(switch_interval, bool) or not isinstance(switch_interval, (int, float)) or \
                not 0 < switch_interval < math.inf:
            raise ValueError(f"switch_interval must be a positive number of seconds; got {switch_interval!r}")

        self.X, self.y, self.n, self.d = Xm, yv, n, d
        self.prior_mean, self.prior_cov = mu, Sp
        self.gain_error, self.offset, self.saturation = g, o, float(sigmoid_saturation)
        self._ideal_pairs = not bool(g.any()) and not bool(o.any())
        self.array_rows, self.switch_interval, self.batch_order = rows, float(switch_interval), batch_order
        self.integrator, self.step_fraction, self.rounding = integrator, float(step_fraction), rounding
        self._Pp = torch.cholesky_inverse(torch.linalg.cholesky(Sp))
        self._Pp = 0.5 * (self._Pp + self._Pp.mT)
        Ls = torch.linalg.cholesky(Sp)
        self.stiffness = 1.0 + float(torch.linalg.eigvalsh(Ls.mT @ Xm.mT @ Xm @ Ls).max()) / 4
        if scale is None:
            scale = 4.5 * float(torch.sqrt(torch.diagonal(Sp) + mu * mu).max()) / dev.adc_range
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ValueError(f"scale must be a positive finite number; got {scale!r}")
        self.scale = float(scale)
        self.batches = [torch.arange(i, min(i + rows, n)) for i in range(0, n, rows)]
        self._built: dict[str, Any] | None = None

    # --- physics --------------------------------------------------------------------------------

    @property
    def minibatched(self) -> bool:
        return self.array_rows < self.n

    @property
    def time_constant(self) -> float:
        """Device time constant ``tau`` (s): the fastest mode's time scale."""
        return float(self.device.time_constant)

    @property
    def prior_time_constant(self) -> float:
        """``tau_pi = L tau`` (s): the prior branch's RC time, the slowest mode's time scale at most."""
        return self.stiffness * self.time_constant

    @property
    def thermal_voltage(self) -> float:
        """``V_T = k T / q`` (V) at the device temperature."""
        return BOLTZMANN * float(self.device.temperature) / ELEMENTARY_CHARGE

    @property
    def volts_per_unit(self) -> float:
        return float(self.device.full_scale_voltage) / self.scale

    @property
    def noise_temperature(self) -> float:
        """``T_n = c0 V0^2 / k_B`` (K), ``c0 = capacitance / max_i (Sigma_pi^-1)_ii``."""
        c0 = float(self.device.capacitance) / float(torch.diagonal(self._Pp).max())
        return c0 * self.volts_per_unit**2 / BOLTZMANN

    @property
    def elements(self) -> dict[str, Any]:
        """Element values of the ideal circuit (SI units; gains dimensionless).

        ``capacitance_matrix_F`` (d, d) ``c0 Sigma_pi^-1`` and ``conductance_matrix_S`` its ``1/tau_pi``
        multiple (the prior network), ``prior_time_constant_s``, ``noise_temperature_K``,
        ``thermal_voltage_V``, ``volts_per_unit``; ``crossbar_in_gain`` (n, d) ``(V_T / V0) X``: volts at the
        pair inputs per volt at the nodes; ``crossbar_out_A`` (n, d) ``(c0 V0 / tau_pi) X``: node current per
        unit residual (the residual current ``I_tail (y_i - sigma)`` is scaled by the current gain
        ``crossbar_out_A / I_tail``, for any tail current).
        """
        c0 = float(self.device.capacitance) / float(torch.diagonal(self._Pp).max())
        tau_pi = self.prior_time_constant
        V0 = self.volts_per_unit
        return {"capacitance_matrix_F": c0 * self._Pp, "conductance_matrix_S": c0 * self._Pp / tau_pi,
                "prior_source_V": V0 * self.prior_mean, "prior_time_constant_s": tau_pi,
                "time_constant_s": self.time_constant, "noise_temperature_K": self.noise_temperature,
                "thermal_voltage_V": self.thermal_voltage, "volts_per_unit": V0,
                "crossbar_in_gain": (self.thermal_voltage / V0) * self.X, "crossbar_out_A": (c0 * V0 / tau_pi) * self.X}

    def sigmoid(self, z: Tensor, rows: Tensor | None = None) -> Tensor:
        """The hardware sigmoid ``sigma((1 + g) clip(z, +-z_sat) + o)`` of pre-activations z (..., k) for the
        data rows ``rows`` (k,) (all n when None)."""
        zc = z.clamp(-self.saturation, self.saturation) if math.isfinite(self.saturation) else z
        if self._ideal_pairs:
            return torch.sigmoid(zc)
        g = self.gain_error if rows is None else self.gain_error[rows]
        o = self.offset if rows is None else self.offset[rows]
        return torch.sigmoid((1 + g.to(z.dtype)) * zc + o.to(z.dtype))

    def _psi(self, z: Tensor) -> Tensor:
        """Per-datum potential with derivative the hardware sigmoid: softplus((1+g) z + o) / (1 + g) inside
        the saturation, continued linearly outside."""
        a, o, zs = 1 + self.gain_error, self.offset, self.saturation
        if not math.isfinite(zs):
            return torch.nn.functional.softplus(a * z + o) / a
        zc = z.clamp(-zs, zs)
        inside = torch.nn.functional.softplus(a * zc + o) / a
        return inside + torch.sigmoid(a * zc + o) * (z - zc)

    def log_prob(self, theta: Tensor) -> Tensor:
        """Unnormalised log posterior ``ln N(theta; mu_pi, Sigma_pi) + sum_i ln p(y_i | theta)`` for theta (..., d)."""
        dth = theta - self.prior_mean
        z = theta @ self.X.mT
        loglik = (self.y * z - torch.nn.functional.softplus(z)).sum(-1)
        return -0.5 * ((dth @ self._Pp) * dth).sum(-1) + loglik

    def hardware_log_prob(self, theta: Tensor) -> Tensor:
        """Unnormalised log density ``ln p_hw`` whose gradient the circuit's drift follows (ideal crossbars):
        the prior plus ``sum_i [y_i z_i - psi_i(z_i)]`` with ``psi_i' = sigma_hw``. Equals :meth:`log_prob` for
        an ideal sigmoid. The chip samples ``p_hw^(1/T)`` (:attr:`temperature_factor`)."""
        dth = theta - self.prior_mean
        z = theta @ self.X.mT
        return -0.5 * ((dth @ self._Pp) * dth).sum(-1) + (self.y * z - self._psi(z)).sum(-1)

    # --- the chip as programmed -----------------------------------------------------------------

    def _build(self) -> dict[str, Any]:
        if self._built is not None:
            return self._built
        dev, rnd, d = self.device, self.rounding, self.d
        pmax = float(torch.diagonal(self._Pp).max())
        Cq, c1 = dev.program(self._Pp / pmax, rounding=rnd, array="couplings")
        Gq, c2 = dev.program(self._Pp / pmax, rounding=rnd, array="conductances")
        src, c3 = dev.program(self._Pp @ self.prior_mean / pmax, rounding=rnd, array="sources")
        gain, c4 = dev.program(torch.ones(1, dtype=F64), rounding=rnd, array="noise")
        LC, info = torch.linalg.cholesky_ex(Cq)
        if int(info) != 0:
            raise ValueError("the programmed prior network is not positive definite: the DAC step or mismatch "
                             "of this device is too coarse for this prior covariance")
        M = torch.cholesky_inverse(LC) / pmax  # the mobility C^-1, in units where the ideal one is Sigma_pi
        Gp, bp = Gq * pmax, src * pmax  # ideal: Sigma_pi^-1 and Sigma_pi^-1 mu_pi
        T = (float(gain[0]) * dev.noise_scale) ** 2
        L = self.stiffness
        D = (2 * T / L) * (M @ Gp @ M)
        D = 0.5 * (D + D.mT)
        # crossbars and label sources: one physical array of array_rows rows; each batch is written into the
        # same rows, so it meets the same mismatch pattern (full batch: one batch of n rows)
        cells = max(dev.n_cells, self.array_rows, d)
        X_in, X_out, y_q = [], [], []
        for rows in self.batches:
            X_in.append(dev.program(self.X[rows], rounding=rnd, array="crossbar_in", array_cells=cells)[0])
            X_out.append(dev.program(self.X[rows], rounding=rnd, array="crossbar_out", array_cells=cells)[0])
            yb = self.y[rows]
            y_q.append(dev.program(yb, rounding=rnd, array="labels", array_cells=cells)[0] if bool((yb != 0).any()) else yb)
        setup = c1 + c2 + c3 + c4
        per_batch = self._program_cost(2 * self.array_rows * d + self.array_rows)
        self._built = {"M": M, "Gp": Gp, "bp": bp, "D": D, "T": T, "X_in": torch.cat(X_in),
                       "X_out": torch.cat(X_out), "y": torch.cat(y_q), "setup": setup, "per_batch": per_batch,
                       "full": setup + self._program_cost(2 * self.n * d + self.n)}
        return self._built

    def _program_cost(self, n_values: int) -> Cost:
        return self.device.program_cost(n_values)

    @property
    def temperature_factor(self) -> float:
        """``T``: the chip samples ``p_hw^(1/T)``; 1 when the injected noise is calibrated
        (``noise_scale^2`` times the squared programmed noise gain)."""
        return float(self._build()["T"])

    @property
    def max_rate(self) -> float:
        """Largest relaxation rate of the drift (1 / time constant): at most 1 for an ideal sigmoid, up to
        ``1 + max(g)`` with a gain error."""
        return (1 + (self.stiffness - 1) * (1 + max(float(self.gain_error.max()), 0.0))) / self.stiffness

    @property
    def step(self) -> float:
        """Integrator step in time constants: ``step_fraction / max_rate``."""
        return self.step_fraction / self.max_rate

    def discretisation_bias(self) -> Tensor:
        """First-order excess of each marginal variance (posterior units^2) that the Euler-Maruyama
        simulation adds at this step: ``h T Sigma_pi,jj / (2 L)`` (exact for a Gaussian target; module
        docstring). Zeros for the exponential integrator's linear part are not claimed: it is O(h) too."""
        return self.step * self.temperature_factor * torch.diagonal(self.prior_cov) / (2 * self.stiffness)

    def drift(self, theta: Tensor, rows: Tensor | None = None) -> Tensor:
        """The programmed chip's drift (posterior units per time constant) at theta (n_chains, d), with the
        crossbar holding data rows ``rows`` (all rows when None; the residuals are scaled by n / |rows|)."""
        b = self._build()
        return self._prior_force(theta, b) + self._data_force(theta, b, rows)

    def _prior_force(self, theta: Tensor, b: dict) -> Tensor:
        return -(theta @ b["Gp"].mT - b["bp"]) @ b["M"].mT / self.stiffness

    def _data_force(self, theta: Tensor, b: dict, rows: Tensor | None) -> Tensor:
        if rows is None:
            z = theta @ b["X_in"].mT
            r = b["y"] - self.sigmoid(z)
            g = r @ b["X_out"]
        else:
            z = theta @ b["X_in"][rows].mT
            r = b["y"][rows] - self.sigmoid(z, rows)
            g = (self.n / rows.shape[0]) * (r @ b["X_out"][rows])
        return g @ b["M"].mT / self.stiffness

    # --- sampling -------------------------------------------------------------------------------

    def prior_kl_bound(self, n_draws: int = 256, generator: torch.Generator | None = None) -> float:
        """Upper bound on ``KL(prior || posterior)``: ``E_prior[-sum_i ln p(y_i | theta)]`` (since
        ``ln p(y) <= 0`` for discrete labels), by Monte Carlo over ``n_draws`` prior draws (nats)."""
        g = torch.Generator().manual_seed(0) if generator is None else generator
        th = self.prior_mean + torch.randn(n_draws, self.d, dtype=F64, generator=g) @ torch.linalg.cholesky(
            self.prior_cov).mT
        z = th @ self.X.mT
        nll = (torch.nn.functional.softplus(z) - self.y * z).sum(-1)
        return float(nll.mean())

    def default_burn_in(self, eps: float = 1e-3) -> float:
        """Burn-in (s) from a prior start by the contraction bound: the posterior is 1-strongly log-concave
        relative to ``Sigma_pi^-1`` (the likelihood is log-concave), so with mobility ``Sigma_pi / L``,
        ``KL(t) <= e^{-2 t / (L tau)} KL(0)`` (Bakry-Emery) and ``t = (L tau / 2) ln(KL_0 / eps)`` with
        ``KL_0`` from :meth:`prior_kl_bound`. A bound: the real relaxation is faster along the directions the
        data constrain."""
        kl0 = self.prior_kl_bound()
        return 0.5 * self.prior_time_constant * max(math.log(kl0 / eps), 0.0)

    def _batch_schedule(self, n_switches: int, generator: torch.Generator | None) -> list[int]:
        K = len(self.batches)
        if self.batch_order == "cyclic":
            return [k % K for k in range(n_switches)]
        return torch.randint(K, (n_switches,), generator=generator).tolist()

    def sample(self, n: int, generator: torch.Generator | None = None, *, start="prior",
               burn_in: float | None = None, interval: float | None = None, chains: int = 1, info: bool = False,
               dtype: torch.dtype = torch.float64, progress: Callable[[int, int], None] | None = None):
        """Draw ``n`` samples (n, d) from the simulated chip; same protocol and return value as
        :meth:`thermoai.thermo.circuits.GaussianPosteriorCircuit.sample`: each of ``chains`` runs starts at
        ``start`` (``"prior"``: a prior draw; or a (d,) point), relaxes ``burn_in`` seconds (default
        :meth:`default_burn_in`), then is read ``ceil(n / chains)`` times ``interval`` seconds apart (default
        the prior time constant ``L tau``, about the slowest correlation time, rounded to a whole number of
        integrator steps).

        Returns ``(samples, cost)`` (``(samples, cost, info)`` with ``info=True``: ``burn_in_s``,
        ``interval_s``, ``chains``, ``reads_per_chain``, ``steps``, ``switches``, ``programming``,
        ``dynamics`` and ``clipped_fraction``). Costs: see the module docstring. ``dtype``: the simulation's
        arithmetic (float32 halves its time; samples are returned in float64 either way). ``progress(done, total)``
        is called after each block of integrator steps (for a progress bar).
        """
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        if isinstance(chains, bool) or not isinstance(chains, int) or not 1 <= chains <= n:
            raise ValueError(f"chains must be an integer in [1, n = {n}]; got {chains!r}")
        dev = self.device
        tau = self.time_constant
        if interval is None:
            interval = self.prior_time_constant
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
            raise ValueError(f"interval must be a finite number of seconds; got {interval!r}")
        if interval < dev.sampling_interval * (1 - 1e-9):
            raise ValueError(f"interval must be at least the ADC's sampling_interval ({dev.sampling_interval} s); "
                             f"got {interval}")
        if burn_in is None:
            burn_in = self.default_burn_in()
        if isinstance(burn_in, bool) or not isinstance(burn_in, (int, float)) or not 0 <= burn_in < math.inf:
            raise ValueError(f"burn_in must be a non-negative number of seconds; got {burn_in!r}")
        if isinstance(start, str):
            if start != "prior":
                raise ValueError(f"start must be 'prior' or a (d,) point; got {start!r}")
            z = torch.randn(chains, self.d, dtype=F64, generator=generator)
            theta = self.prior_mean + z @ torch.linalg.cholesky(self.prior_cov).mT
        else:
            theta = as_vector(start, "start", self.d).expand(chains, self.d).clone()
        b = {key: (v.to(dtype) if isinstance(v, Tensor) else v) for key, v in self._build().items()}
        theta = theta.to(dtype)
        k = -(-n // chains)
        h_max = self.step
        # time grid in time constants: burn-in in equal steps, then k intervals of whole steps each
        n_burn = math.ceil(burn_in / tau / h_max) if burn_in > 0 else 0
        per_read = max(1, math.ceil(interval / tau / h_max))
        grid_burn = torch.linspace(0.0, burn_in / tau, n_burn + 1, dtype=F64) if n_burn else torch.zeros(1, dtype=F64)
        t0 = float(grid_burn[-1])
        grid_read = t0 + (interval / tau / per_read) * torch.arange(1, k * per_read + 1, dtype=F64)
        grid = torch.cat([grid_burn, grid_read])  # (n_burn + 1 + k per_read,) time constants
        read_idx = n_burn + per_read * torch.arange(1, k + 1)

        switch = self.switch_interval / tau
        if self.minibatched:
            n_switches = math.ceil(float(grid[-1]) / switch) + 1
            schedule = self._batch_schedule(n_switches, generator)
        else:
            n_switches, schedule = 0, []

        def force(t: Tensor, x: Tensor) -> Tensor:
            rows = None
            if self.minibatched:
                rows = self.batches[schedule[min(int(float(t) / switch), n_switches - 1)]]
            f = self._data_force(x, b, rows)
            return f if self.integrator == "exponential" else f + self._prior_force(x, b)

        if self.integrator == "exponential":
            A = b["M"] @ b["Gp"] / self.stiffness
            mean = torch.linalg.solve(b["Gp"], b["bp"])
            proc = OUProcess(A, b["D"], mean)  # in the simulation dtype (that of A)

        reads = []
        x = theta
        want = set(read_idx.tolist())
        pos = 0
        total = grid.shape[0] - 1
        while pos < total:
            end = min(pos + max(4, _CHUNK_STATES // (chains * self.d)), total)
            times = grid[pos:end + 1]
            if self.integrator == "euler":
                path = euler_maruyama(force, b["D"], x, times, generator=generator)
            else:
                path = exponential_integrator(proc, force, None, x, times, generator=generator)
            for j in range(pos + 1, end + 1):
                if j in want:
                    reads.append(path[:, j - pos].clone())
            x = path[:, -1]
            if not bool(torch.isfinite(x).all()):  # pragma: no cover - excluded by the step choice
                raise FloatingPointError("the simulation diverged; lower step_fraction")
            pos = end
            if progress is not None:
                progress(pos, total)
        states = torch.stack(reads, dim=1).to(F64)  # (chains, k, d) in posterior units
        r, _ = dev.read(states / self.scale, generator=generator)
        clipped = int((r.abs() >= dev.adc_range * (1 - 1e-12)).sum())
        samples = (self.scale * r).reshape(chains * k, self.d)[:n]

        run_s = float(grid[-1]) * tau
        switches = math.ceil(float(grid[-1]) / switch) if self.minibatched else 0
        if self.minibatched:
            # each switch pauses the cells while the array is rewritten: its time is part of the run, its
            # energy part of the programming
            prog = Cost(b["setup"].time, b["setup"].energy + switches * chains * b["per_batch"].energy)
            on_s = run_s + switches * b["per_batch"].time
        else:
            prog, on_s = b["full"], run_s
        # the node cells and their couplings, plus the sigmoid cells and the two crossbars' couplings
        rows = self.array_rows
        dynamics = dev.operating_cost(chains, self.d, on_s, chains * k * self.d, cells=self.d + rows,
                                      couplings=self.d * self.d + 2 * rows * self.d)
        cost = prog + dynamics
        if not info:
            return samples, cost
        return samples, cost, {"burn_in_s": t0 * tau, "interval_s": float(interval), "chains": chains,
                               "reads_per_chain": k, "steps": total, "step": h_max, "switches": switches,
                               "programming": prog, "dynamics": dynamics,
                               "clipped_fraction": clipped / (chains * k * self.d)}

    def __repr__(self) -> str:
        return (f"LogisticPosteriorCircuit(n={self.n}, d={self.d}, array_rows={self.array_rows}, "
                f"stiffness={self.stiffness:.4g}, integrator={self.integrator!r})")
