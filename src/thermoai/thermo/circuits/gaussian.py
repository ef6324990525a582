r"""A circuit that samples the posterior of a Gaussian-Gaussian model (and of Bayesian linear regression).

Model (Aifer et al., "Thermodynamic Bayesian Inference", arXiv 2410.01793; notation mu_pi, Sigma_pi,
Sigma_l, H from there; H = I is the Gaussian-Gaussian case, a general H Bayesian linear regression)::

    theta ~ N(mu_pi, Sigma_pi),     y | theta ~ N(H theta, Sigma_l),
    posterior N(m, P^-1),  P = Sigma_pi^-1 + H^T Sigma_l^-1 H,  m = P^-1 (Sigma_pi^-1 mu_pi + H^T Sigma_l^-1 y).

The paper's own circuit was not readable (research brief tbi-paper.md, section 0); the two designs below
are the brief's reconstructions (its section 2), with the element values worked out here. Node voltages
hold ``v = V0 (theta - mu_pi)`` (the prior mean is a fixed offset the host adds back). Both give an
Ornstein-Uhlenbeck process whose stationary law is the posterior:

**design "rc"** (passive parallel-RC network, the brief's design (a)). Node capacitance (Maxwell) matrix
``C = c0 P``, nodal conductance matrix ``G = C / tau``, source currents ``i = (c0 V0 / tau) H^T Sigma_l^-1
(y - H mu_pi)`` (the prior and likelihood branches returned to their source voltages), and noise currents
of covariance ``2 k T_n G`` per unit time: the conductances' own Johnson noise at an effective noise
temperature ``T_n = c0 V0^2 / k_B`` (amplified Johnson noise, one gain for the whole network)::

    C dv = -(G v - i) dt + dxi   =>   dv = -(v - V0 (m - mu_pi)) dt / tau + sqrt(2 k T_n / tau) C^{-1/2} dW,

stationary ``N(V0 (m - mu_pi), k T_n C^-1 = V0^2 P^-1)``: the posterior. The fluctuation-dissipation
theorem makes the covariance ``k T_n C^-1`` whatever ``G`` is, and every mode relaxes at ``1 / tau``
(the mobility ``C^-1`` is a natural preconditioner). The mean comes from the DC resistive paths, not from a
"capacitive divider" (capacitors carry no DC current; the brief's correction of thermo.md section 3.3).

**design "active"** (SPU style, the brief's design (b)). Identical node capacitors ``C0``, couplings
``G = g0 P`` with ``g0 = C0 / (rho tau)`` so that every rate ``lambda_i(P) / (rho tau)`` is at most ``1 / tau``:
``rho`` is the largest absolute row sum of ``P`` (``rate_bound="gershgorin"``, a bound the host gets in
O(d^2) without any eigenvalue, as in :mod:`thermoai.thermo.linalg`) or ``lambda_max(P)`` itself
(``rate_bound="spectral"``: the fastest mode exactly at ``1 / tau``; Gershgorin's bound grows like sqrt(d)
for a dense random precision, and the slowest mode with it). Injected currents ``g0 V0 H^T
Sigma_l^-1 (y - H mu_pi)``, and independent injected noise at each node of programmed intensity::

    dv = -(P / (rho tau)) (v - V0 (m - mu_pi)) dt + sigma dW,   sigma^2 = 2 V0^2 / (rho tau),

stationary covariance ``(sigma^2 rho tau / 2) P^-1 = V0^2 P^-1``. Relaxation rates are those of ``P``, so
the slowest mode takes ``rho / lambda_min(P)`` time constants.

**The fluctuation-dissipation trap** (``noise="johnson"``): if the only noise is the Johnson noise of the
active design's own conductances (covariance ``2 k T G``), its stationary covariance is ``k T / C0 I``
whatever ``P`` is (``A S + S A = 2 k T G / C0^2`` is solved by ``S = k T / C0 I``): it samples a fixed
isotropic Gaussian, not the posterior. The rc design with only Johnson noise keeps the posterior's shape
but at the physical temperature: ``k T C^-1 = (T / T_n) V0^2 P^-1``.

**Passive limits.** A passive network's Maxwell and conductance matrices have non-positive off-diagonal
entries and non-negative row sums (an M-matrix that is diagonally dominant; see
:func:`~thermoai.thermo.circuits._common.passive_realisation`). A general SPD precision is not of that
form: each positive off-diagonal entry needs a negative branch capacitor and conductor, each negative row
sum a negative element to ground. The rc design then realises those elements actively (negative-impedance
converters); its equations are unchanged but the active elements make no fluctuation-dissipation noise of
their own, so ``noise="johnson"`` is refused for it and ``allow_active=False`` refuses it altogether.
:attr:`GaussianPosteriorCircuit.realisation` says which case applies. (A differential encoding, two nodes
per variable, would realise sign-indefinite but still diagonally dominant precisions passively; the
general case needs active elements in any case.)

**Non-idealities** come from the :class:`~thermoai.thermo.device.Device`: every programmed array (the
capacitances, the conductances, the source currents, the noise amplitudes) goes through the DAC
(``dac_bits``, rounding) and carries the chip's mismatch, each array with its own pattern; reads go
through the ADC with readout noise; ``noise_scale`` miscalibrates the injected noise. The stationary law
of the chip as programmed is exact (:meth:`GaussianPosteriorCircuit.stationary_law`), so the error it
makes is predicted, not estimated. Dynamics are simulated with exact OU transitions
(:class:`~thermoai.thermo.ou.OUProcess`): no discretisation error.

**Costs** (:meth:`GaussianPosteriorCircuit.sample`): programming every array through
``Device.program`` (one value per entry), then ``Device.operating_cost`` for the burn-in and readout
window (cells and couplings on, one ADC conversion per cell per read). The host work of forming
``Sigma_pi^-1`` and ``H^T Sigma_l^-1 H`` (the element values) is not charged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from thermoai.thermo.circuits._common import (
    F64,
    as_covariance,
    as_matrix,
    as_vector,
    check_device,
    gaussian_kl,
    passive_realisation,
)
from thermoai.thermo.device import BOLTZMANN, Cost, Device
from thermoai.thermo.ou import OUProcess

__all__ = ["GaussianPosteriorCircuit"]

DESIGNS = ("rc", "active")
NOISES = ("injected", "johnson")
_SAMPLE_CHUNK = 4_000_000  # states (chains * reads * d) simulated at once


def _check_options(design: str, noise: str, rounding: str, rate_bound: str) -> None:
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}; got {design!r}")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}; got {noise!r}")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}")
    if rate_bound not in ("gershgorin", "spectral"):
        raise ValueError(f"rate_bound must be 'gershgorin' or 'spectral'; got {rate_bound!r}")


class GaussianPosteriorCircuit:
    r"""Posterior sampler for ``theta ~ N(mu_pi, Sigma_pi)``, ``y | theta ~ N(H theta, Sigma_l)`` on a device.

    Args:
        prior_mean: (d,) ``mu_pi``.
        prior_cov: ``Sigma_pi``: a positive scalar (``s I``), a (d,) positive diagonal or a (d, d) SPD matrix.
        y: (m,) observations (m = d when H is None).
        likelihood_cov: ``Sigma_l``: scalar, (m,) or (m, m) as above.
        H: (m, d) design matrix; None means the identity (the Gaussian-Gaussian model).
        design: ``"rc"`` (passive parallel-RC network) or ``"active"`` (SPU-style); see the module docstring.
        device: the :class:`~thermoai.thermo.device.Device` (at least d cells); None: the PCB prototype
            with d cells.
        noise: ``"injected"`` (the calibrated noise of the design) or ``"johnson"`` (only the physical
            Johnson noise of the conductances at the device temperature: the fluctuation-dissipation trap).
        scale: posterior units per state unit (``theta - mu_pi = scale x``, one state unit =
            ``full_scale_voltage`` volts, so ``V0 = full_scale_voltage / scale`` volts per unit); default
            ``4.5 max_i sqrt(Sigma_pi,ii) / adc_range`` (and at least ``max |y - mu_pi| / adc_range`` when
            H is None) so that the prior's 4.5-sigma box fits the ADC.
        allow_active: design "rc" only; False raises ValueError when the precision needs active elements.
        rate_bound: design "active" only: how the couplings are scaled so that no mode is faster than the
            cells, ``"gershgorin"`` (largest absolute row sum of P) or ``"spectral"`` (``lambda_max(P)``).
        rounding: DAC rounding, ``"nearest"`` or ``"stochastic"``.

    Attributes (exact, for reference): ``posterior_mean`` (d,), ``posterior_cov`` (d, d),
    ``posterior_precision`` (d, d); ``elements`` (element values in SI units); ``realisation``;
    ``time_constant`` (s), ``slowest_relaxation_time`` (s), ``temperature`` (K), ``noise_temperature`` (K).

    Raises ValueError for non-PD covariances, NaN/Inf, mismatched shapes or a device with fewer than d
    cells, TypeError for non-numeric input, each naming the argument.
    """

    def __init__(self, prior_mean, prior_cov, y, likelihood_cov, H=None, design: str = "rc",
                 device: Device | None = None, *, noise: str = "injected", scale: float | None = None,
                 allow_active: bool = True, rate_bound: str = "gershgorin", rounding: str = "nearest"):
        _check_options(design, noise, rounding, rate_bound)
        mu = as_vector(prior_mean, "prior_mean")
        d = mu.shape[0]
        yv = as_vector(y, "y")
        m = yv.shape[0]
        if H is None:
            if m != d:
                raise ValueError(f"y must have shape ({d},) like prior_mean when H is None; got {tuple(yv.shape)}")
            Hm = None
        else:
            Hm = as_matrix(H, "H", (m, d))
        device = check_device(device, d)
        Sp = as_covariance(prior_cov, "prior_cov", d)
        Sl = as_covariance(likelihood_cov, "likelihood_cov", m)

        self.m = m
        self.prior_cov = Sp
        self.y, self.likelihood_cov, self.H = yv, Sl, Hm

        Pp = torch.cholesky_inverse(torch.linalg.cholesky(Sp))
        Pl = torch.cholesky_inverse(torch.linalg.cholesky(Sl))
        resid = yv - (mu if Hm is None else Hm @ mu)
        if Hm is None:
            P = Pp + Pl
            rhs = Pl @ resid  # = b - P mu_pi: what the sources hold once mu_pi is the offset
        else:
            P = Pp + Hm.mT @ Pl @ Hm
            rhs = Hm.mT @ (Pl @ resid)
        P = 0.5 * (P + P.mT)
        self._Pp = 0.5 * (Pp + Pp.mT)
        LP = torch.linalg.cholesky(P)
        post_mean = mu + torch.cholesky_solve(rhs[:, None], LP)[:, 0]
        if scale is None:
            extent = 4.5 * float(torch.diagonal(Sp).max().sqrt())
            if Hm is None:
                extent = max(extent, float(resid.abs().max()))
            scale = extent / device.adc_range
        self._setup(mu, P, LP, rhs, post_mean, design, device, noise, scale, allow_active, rate_bound, rounding,
                    "prior_cov/likelihood_cov give a posterior precision")

    @classmethod
    def from_precision(cls, mean, precision, design: str = "rc", device: Device | None = None, *,
                       noise: str = "injected", scale: float | None = None, allow_active: bool = True,
                       rate_bound: str = "gershgorin", rounding: str = "nearest") -> "GaussianPosteriorCircuit":
        r"""A circuit that samples any Gaussian ``N(mean, precision^-1)`` given by its mean (d,) and its
        precision (d, d) SPD: a Laplace, VI or EKF posterior, say.

        The designs are programmed with the precision itself (rc: ``C = c0 P``, ``G = C / tau``; active:
        couplings ``g0 P``), never its inverse; the mean is the offset the host adds back to the reads, so the
        source currents hold zero. Everything else (DAC rounding and mismatch of every array, noise gain,
        ADC, costs, :meth:`stationary_law`, :meth:`kl`) is that of the model circuit. There is no prior: the
        default start is ``"mean"`` (cells reset to zero, i.e. the mean, then relaxed for
        :meth:`default_burn_in`), and :meth:`thermodynamics` is refused.

        ``scale`` (posterior units per state unit) defaults to ``4.5 max_i sqrt((P^-1)_ii) / adc_range``, the
        4.5-sigma box of the widest marginal filling the ADC; the marginal variances come from the Cholesky
        factor of ``P`` on the host (pass ``scale`` to fix the readout range yourself). Other keywords as in
        the constructor. ValueError naming ``mean``/``precision`` for bad shapes, NaN/Inf, an asymmetric or
        not positive-definite precision, or a device with fewer than d cells.
        """
        _check_options(design, noise, rounding, rate_bound)
        mu = as_vector(mean, "mean")
        d = mu.shape[0]
        P = as_covariance(as_matrix(precision, "precision", (d, d)), "precision", d)  # symmetric PD, checked
        LP = torch.linalg.cholesky(P)
        device = check_device(device, d)
        if scale is None:
            Linv = torch.linalg.solve_triangular(LP, torch.eye(d, dtype=F64), upper=False)
            marginal_var = (Linv * Linv).sum(0)  # diag(P^-1) = column norms of L^-1 squared
            scale = 4.5 * float(marginal_var.max().sqrt()) / device.adc_range
        self = cls.__new__(cls)
        self.m, self.prior_cov, self.y, self.likelihood_cov, self.H, self._Pp = 0, None, None, None, None, None
        self._setup(mu, P, LP, torch.zeros(d, dtype=F64), mu.clone(), design, device, noise, scale, allow_active,
                    rate_bound, rounding, "precision is one")
        return self

    def _setup(self, offset: Tensor, P: Tensor, LP: Tensor, rhs: Tensor, post_mean: Tensor, design: str,
               device: Device, noise: str, scale, allow_active: bool, rate_bound: str, rounding: str,
               what: str) -> None:
        """The state both constructors share: ``offset`` (d,) the host-side offset (prior mean, or the mean),
        ``P`` (d, d) the precision and ``LP`` its Cholesky factor, ``rhs`` (d,) what the sources hold
        (``P (m - offset)``), ``post_mean`` (d,) ``m``."""
        d = offset.shape[0]
        self.device, self.design, self.noise, self.rounding = device, design, noise, rounding
        self.d = d
        self.prior_mean = offset
        self.posterior_precision = P
        self._LP = LP
        self._rhs = rhs
        self.posterior_mean = post_mean
        self._logdet_P = float(2 * torch.log(torch.diagonal(LP)).sum())
        self._cov: Tensor | None = None
        self._eigh: tuple[Tensor, Tensor] | None = None
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
            raise ValueError(f"scale must be a positive finite number (posterior units per state unit); got {scale!r}")
        self.scale = float(scale)

        self.realisation = passive_realisation(P)
        if design == "rc" and not self.realisation["passive"]:
            if not allow_active:
                raise ValueError(
                    f"{what} that no passive RC network realises "
                    f"({self.realisation['positive_off_diagonal']} positive off-diagonal entries, "
                    f"{self.realisation['negative_ground']} negative row sums); allow_active=True realises those "
                    "elements with negative-impedance converters"
                )
            if noise == "johnson":
                raise ValueError("noise='johnson' needs a passive network (active elements make no "
                                 "fluctuation-dissipation noise); this precision needs active elements")
        self._pmax = float(torch.diagonal(P).max())
        self.rate_bound = rate_bound
        self._rho = float(P.abs().sum(1).max()) if rate_bound == "gershgorin" else float(self._eig()[0].max())
        self._built: dict[str, Any] | None = None

    @property
    def has_prior(self) -> bool:
        """False for a circuit made by :meth:`from_precision` (no prior, no likelihood)."""
        return self.prior_cov is not None

    # --- reference quantities ---------------------------------------------------------------------

    @property
    def posterior_cov(self) -> Tensor:
        """(d, d) ``P^-1``, the exact posterior covariance."""
        if self._cov is None:
            C = torch.cholesky_inverse(self._LP)
            self._cov = 0.5 * (C + C.mT)
        return self._cov

    def _eig(self) -> tuple[Tensor, Tensor]:
        if self._eigh is None:
            self._eigh = torch.linalg.eigh(self.posterior_precision)
        return self._eigh

    @property
    def time_constant(self) -> float:
        """The device time constant ``tau`` (s): the rc design's relaxation time of every mode, the active
        design's fastest."""
        return float(self.device.time_constant)

    @property
    def slowest_relaxation_time(self) -> float:
        """Time (s) over which the slowest mode's mean decays by e: ``tau`` (rc),
        ``rho tau / lambda_min(P)`` (active)."""
        if self.design == "rc":
            return self.time_constant
        lam = float(self._eig()[0].min())
        return self._rho * self.time_constant / lam

    @property
    def temperature(self) -> float:
        """Physical temperature of the device (K)."""
        return float(self.device.temperature)

    @property
    def volts_per_unit(self) -> float:
        """``V0`` (V per posterior unit): ``full_scale_voltage / scale``."""
        return float(self.device.full_scale_voltage) / self.scale

    @property
    def noise_temperature(self) -> float:
        """Noise temperature (K) the design needs for the posterior: ``c0 V0^2 / k_B`` (rc, ``c0 =
        capacitance / max_i P_ii``) or ``C0 V0^2 / k_B`` (active; a node noise current of intensity
        ``2 k T_n g0``, i.e. the Johnson noise of ``g0`` at ``T_n``)."""
        c = float(self.device.capacitance) / (self._pmax if self.design == "rc" else 1.0)
        return c * self.volts_per_unit**2 / BOLTZMANN

    @property
    def elements(self) -> dict[str, Any]:
        """Element values of the ideal design in SI units (before DAC rounding and mismatch).

        rc: ``capacitance_matrix_F`` (d, d) ``C = c0 P``; ``ground_capacitance_F`` (d,) its row sums and
        ``branch_capacitance_F`` (d, d) ``-C_ij`` off the diagonal (a negative value is an active element);
        the same for the conductances ``G = C / tau`` (``*_conductance_S``); ``source_current_A`` (d,);
        ``unit_capacitance_F`` ``c0``.
        active: ``node_capacitance_F`` ``C0``; ``coupling_conductance_matrix_S`` (d, d) ``g0 P``;
        ``source_current_A`` (d,); ``noise_current_intensity_A2s`` ``2 k T_n g0`` (A^2 s, per node).
        Both: ``time_constant_s``, ``volts_per_unit``, ``temperature_K``, ``noise_temperature_K``.
        """
        dev, P, V0 = self.device, self.posterior_precision, self.volts_per_unit
        tau = float(dev.time_constant)
        out: dict[str, Any] = {"time_constant_s": tau, "volts_per_unit": V0, "temperature_K": self.temperature,
                               "noise_temperature_K": self.noise_temperature}
        if self.design == "rc":
            c0 = float(dev.capacitance) / self._pmax
            C = c0 * P
            G = C / tau
            off = ~torch.eye(self.d, dtype=torch.bool)
            out.update(unit_capacitance_F=c0, capacitance_matrix_F=C, ground_capacitance_F=C.sum(1),
                       branch_capacitance_F=torch.where(off, -C, torch.zeros_like(C)),
                       conductance_matrix_S=G, ground_conductance_S=G.sum(1),
                       branch_conductance_S=torch.where(off, -G, torch.zeros_like(G)),
                       source_current_A=(c0 * V0 / tau) * self._rhs)
        else:
            C0 = float(dev.capacitance)
            g0 = C0 / (self._rho * tau)
            out.update(node_capacitance_F=C0, coupling_conductance_matrix_S=g0 * P,
                       source_current_A=g0 * V0 * self._rhs,
                       noise_current_intensity_A2s=2 * BOLTZMANN * self.noise_temperature * g0)
        return out

    # --- the chip as programmed -------------------------------------------------------------------

    def _build(self) -> dict[str, Any]:
        """Program the arrays once (the mismatch is the chip's fixed pattern) and form the OU process of the
        programmed chip in state units and device time (time constants)."""
        if self._built is not None:
            return self._built
        dev, P, s = self.device, self.posterior_precision, self.scale
        rnd = self.rounding
        sig_th2 = float(dev.thermal_variance)
        costs: list[Cost] = []
        if self.design == "rc":
            Cn, Gn, i_n = P / self._pmax, P / self._pmax, self._rhs / (s * self._pmax)
            Cq, c = dev.program(Cn, rounding=rnd, array="couplings")
            costs.append(c)
            Gq, c = dev.program(Gn, rounding=rnd, array="conductances")
            costs.append(c)
            iq, c = dev.program(i_n, rounding=rnd, array="sources")
            costs.append(c)
            gain, c = dev.program(torch.ones(1, dtype=F64), rounding=rnd, array="noise")
            costs.append(c)
            LC, info = torch.linalg.cholesky_ex(Cq)
            if int(info) != 0:
                raise ValueError("the programmed capacitance matrix is not positive definite: the DAC step or "
                                 "mismatch of this device is too coarse for this precision")
            A = torch.cholesky_solve(Gq, LC)
            # the conductances' Johnson noise at the device temperature is the process's thermal part
            # (2 k T C^-1 G C^-1); the injected (amplified) part brings the total to T_n, scaled by the
            # programmed gain (and by noise_scale, in Device.process)
            Cinv = torch.cholesky_inverse(LC)
            t_ratio = sig_th2 * self._pmax * s * s  # T / T_n
            injected = float(gain[0]) ** 2 * (1 - t_ratio) if self.noise == "injected" else 0.0
            D_req = (2 * injected / (self._pmax * s * s)) * (Cinv @ Gq @ Cinv)
            capacitance = Cq
        else:
            Gn, i_n = P / self._rho, self._rhs / (s * self._rho)
            Gq, c = dev.program(Gn, rounding=rnd, array="couplings")
            costs.append(c)
            iq, c = dev.program(i_n, rounding=rnd, array="sources")
            costs.append(c)
            A, capacitance = Gq, None  # identical capacitors C0: the couplings' Johnson noise is 2 k T G / C0^2
            D_req = torch.zeros(self.d, self.d, dtype=F64)
            if self.noise == "injected":
                amp, c = dev.program(torch.full((self.d,), math.sqrt(2 / (self._rho * s * s)), dtype=F64),
                                     rounding=rnd, array="noise")
                costs.append(c)
                D_req = torch.diag(amp * amp)
        try:
            b = torch.linalg.solve(Gq, iq)
            proc = dev.process(A, 0.5 * (D_req + D_req.mT), b, thermal="couplings", capacitance=capacitance)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"the programmed circuit is not a stable sampler on this device ({e}); use more "
                             "dac_bits or less mismatch") from e
        D = proc.D
        self._built = {"A": A, "D": D, "b": b, "process": proc, "programming": sum(costs, Cost())}
        return self._built

    @property
    def programming_cost(self) -> Cost:
        """Time (s) and energy (J) of programming every array once (``Device.program``)."""
        return self._build()["programming"]

    def readout_variance(self) -> float:
        """Variance (posterior units^2) each read adds: ``scale^2 (readout_noise^2 + q_adc^2 / 12)``, the ADC
        rounding taken as uniform (valid when the posterior spans many ADC steps)."""
        dev = self.device
        return self.scale**2 * (dev.readout_noise**2 + dev.adc_step**2 / 12)

    def stationary_law(self, programmed: bool = True, readout: bool = True) -> tuple[Tensor, Tensor]:
        """Mean (d,) and covariance (d, d) of what the chip samples at equilibrium, in posterior units.

        ``programmed=False`` gives the ideal design (the posterior itself, or ``k T / C0 I`` for the
        fluctuation-dissipation trap); ``programmed=True`` the chip with its DAC rounding, mismatch and
        noise miscalibration (exact: the stationary law of the programmed OU process); ``readout=True`` adds
        :meth:`readout_variance` to the diagonal (the law of the reads' first two moments)."""
        if programmed:
            proc = self._build()["process"]
            mean = self.prior_mean + self.scale * proc.b
            cov = self.scale**2 * proc.stationary_covariance()
        else:
            mean = self.posterior_mean.clone()
            if self.noise == "johnson":
                if self.design == "active":
                    cov = self.scale**2 * float(self.device.thermal_variance) * torch.eye(self.d, dtype=F64)
                else:
                    cov = (self.temperature / self.noise_temperature) * self.posterior_cov
            else:
                cov = self.posterior_cov.clone()
        if readout:
            cov = cov + self.readout_variance() * torch.eye(self.d, dtype=F64)
        return mean, 0.5 * (cov + cov.mT)

    # --- relaxation (exact laws) ------------------------------------------------------------------

    def _resolve_start(self, start):
        """``start`` as ``"prior"`` or a (d,) point: None is ``"prior"`` for a model circuit and ``"mean"``
        for one made :meth:`from_precision`; ``"mean"`` is the point ``posterior_mean``."""
        if start is None:
            start = "prior" if self.has_prior else "mean"
        if isinstance(start, str):
            if start == "mean":
                return self.posterior_mean.clone()
            if start != "prior":
                raise ValueError(f"start must be 'prior' or a (d,) point, 'mean' or None; got {start!r}")
            if not self.has_prior:
                raise ValueError("start='prior' needs a prior; this circuit was made from_precision (use "
                                 "start='mean' or a (d,) point)")
            return start
        return as_vector(start, "start", self.d)

    def _start(self, start) -> tuple[Tensor, Tensor]:
        start = self._resolve_start(start)
        if isinstance(start, str):
            return self.prior_mean, self.prior_cov
        return start, torch.zeros(self.d, self.d, dtype=F64)

    def kl(self, times, start=None, programmed: bool = False) -> Tensor:
        """``KL(p_t || posterior)`` (nats) of the device state at ``times`` (s, after the likelihood branch is
        switched on) from ``start`` (``"prior"``: the prior's equilibrium; ``"mean"`` or a (d,) point; None:
        the circuit's default, ``"prior"``, or ``"mean"`` for one made :meth:`from_precision`), exactly.

        ``programmed=False`` uses the ideal design (fast: one eigendecomposition, then O(d) per time for rc,
        one Cholesky per time for active); ``programmed=True`` the chip as programmed (one matrix exponential
        per time). Returns (K,) float64."""
        t = as_vector(torch.as_tensor(times, dtype=F64).reshape(-1), "times")
        if bool((t < 0).any()):
            raise ValueError("times must be non-negative")
        f = self._kl_function(start, programmed)
        return torch.tensor([f(float(tk)) for tk in t.tolist()], dtype=F64)

    def _kl_function(self, start, programmed: bool):
        """A function of t (s) giving KL(p_t || posterior), with the work that does not depend on t done once."""
        m0, S0 = self._start(start)
        tau = self.time_constant
        m, P, d = self.posterior_mean, self.posterior_precision, self.d
        eye = torch.eye(d, dtype=F64)
        if not programmed and self.noise == "injected" and self.design == "rc":
            # P S_t = I + e^{-2t/tau} (P S0 - I): the eigenvalues of L^T S0 L (P = L L^T), once
            mu = torch.linalg.eigvalsh(self._LP.mT @ S0 @ self._LP)
            dm = m0 - m
            q = float(dm @ P @ dm)

            def rc(tk: float) -> float:
                e2 = math.exp(-2 * tk / tau)
                lam = 1 + e2 * (mu - 1)
                if bool((lam <= 0).any()):
                    return math.inf
                return 0.5 * float((lam - 1 - torch.log(lam)).sum()) + 0.5 * e2 * q

            return rc
        if not programmed and self.noise == "injected":
            # active: in the eigenbasis of P, Lambda^1/2 S_t Lambda^1/2 = I + e^{-rt} E0 e^{-rt}
            lam, U = self._eig()
            rate = lam / (self._rho * tau)
            dm = U.mT @ (m0 - m)
            R = lam.sqrt()
            E0 = R[:, None] * (U.mT @ S0 @ U) * R[None, :] - eye

            def active(tk: float) -> float:
                e = torch.exp(-rate * tk)
                W = eye + e[:, None] * E0 * e[None, :]
                Lw, info = torch.linalg.cholesky_ex(W)
                if int(info) != 0:
                    return math.inf
                logdet = float(2 * torch.log(torch.diagonal(Lw)).sum())
                return 0.5 * (float(torch.diagonal(W).sum()) - d - logdet + float((lam * (e * dm) ** 2).sum()))

            return active
        proc = self._build()["process"] if programmed else self._ideal_process()
        x0 = (m0 - self.prior_mean) / self.scale
        Sx0 = S0 / self.scale**2

        def general(tk: float) -> float:
            s = tk / tau
            Phi, Sig = proc.transition(s)
            mean = self.prior_mean + self.scale * proc.mean(x0, s)
            cov = self.scale**2 * (Phi @ Sx0 @ Phi.mT + Sig)
            return gaussian_kl(mean, 0.5 * (cov + cov.mT), m, P, self._logdet_P)

        return general

    def _ideal_process(self) -> OUProcess:
        P, s = self.posterior_precision, self.scale
        b = (self.posterior_mean - self.prior_mean) / s
        sig_th2 = float(self.device.thermal_variance)
        if self.design == "active":
            A = P / self._rho
            D = 2 * sig_th2 * A
            if self.noise == "injected":
                D = D + (2 / (self._rho * s * s)) * torch.eye(self.d, dtype=F64)
            return OUProcess(A, D, b)
        ratio = sig_th2 * self._pmax * s * s if self.noise == "johnson" else 1.0
        return OUProcess(torch.eye(self.d, dtype=F64), (2 * ratio / (s * s)) * self.posterior_cov, b)

    def time_to_kl(self, eps: float = 0.01, start=None, per_dimension: bool = False,
                   programmed: bool = False) -> float:
        """Smallest device time (s) after which ``KL(p_t || posterior) <= eps`` (``<= eps d`` with
        ``per_dimension=True``, i.e. KL per dimension at most eps), from ``start``; KL decreases
        monotonically along the relaxation, so bisection finds it to 1e-4 relative. ``inf`` if the
        stationary law itself is farther than eps (a programmed chip with large errors)."""
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0):
            raise ValueError(f"eps must be a positive number; got {eps!r}")
        target = eps * self.d if per_dimension else eps
        if programmed or self.noise == "johnson":
            mean, cov = self.stationary_law(programmed=programmed, readout=False)
            if gaussian_kl(mean, cov, self.posterior_mean, self.posterior_precision, self._logdet_P) >= target:
                return math.inf

        f = self._kl_function(start, programmed)

        if f(0.0) <= target:
            return 0.0
        hi = self.slowest_relaxation_time
        for _ in range(200):
            if f(hi) <= target:
                break
            hi *= 2
        else:  # pragma: no cover - excluded by the stationary check above
            return math.inf
        lo = 0.0
        while hi - lo > 1e-4 * hi:
            mid = 0.5 * (lo + hi)
            if f(mid) <= target:
                hi = mid
            else:
                lo = mid
        return hi

    def default_burn_in(self, start=None, eps: float = 1e-3) -> float:
        """Burn-in (s) from the contraction bound ``KL(t) <= e^{-2 t / T_slow} KL(t0)`` (Bakry-Emery: the
        posterior is 1-strongly log-concave in the metric of the design's mobility; ``T_slow`` =
        :attr:`slowest_relaxation_time`): ``t = t0 + (T_slow / 2) ln(KL(t0) / eps)``, with ``t0 = 0`` from the
        prior and ``t0 = T_slow`` from a point (whose KL at 0 is infinite). Uses the ideal design's law."""
        start = self._resolve_start(start)
        t_slow = self.slowest_relaxation_time
        t0 = 0.0 if isinstance(start, str) else t_slow
        kl0 = float(self.kl([t0], start)[0])
        return t0 + (0.5 * t_slow * math.log(kl0 / eps) if kl0 > eps else 0.0)

    # --- thermodynamics -------------------------------------------------------------------------

    def thermodynamics(self) -> dict[str, float]:
        """The switch from the prior's equilibrium to the posterior's (the likelihood energy switched on), in
        units of k T (brief section 5):

        * ``entropy_kT`` = ``-T dS / kT = 1/2 ln det(Sigma_pi P)``: the entropy the device must shed as heat;
        * ``energy_kT`` = ``dU / kT = 1/2 r^T (H Sigma_pi H^T + Sigma_l)^-1 r`` with ``r = y - H mu_pi``;
        * ``free_energy_kT`` = their sum ``dF / kT`` (``= -ln p(y)`` up to a y-independent constant);
        * ``quench_dissipation_kT`` = ``W_diss / kT = KL(prior || posterior)`` for an instantaneous switch;
        * ``kT_J``: k T at the device temperature (J), to convert.

        Refused (ValueError) for a circuit made :meth:`from_precision`, which has no prior.
        """
        if not self.has_prior:
            raise ValueError("thermodynamics() needs the prior and likelihood; this circuit was made from_precision")
        entropy = 0.5 * (float(torch.logdet(self.prior_cov)) + self._logdet_P)
        r = self.y - (self.prior_mean if self.H is None else self.H @ self.prior_mean)
        Hm = self.H
        K = self.prior_cov + self.likelihood_cov if Hm is None else Hm @ self.prior_cov @ Hm.mT + self.likelihood_cov
        energy = 0.5 * float(r @ torch.linalg.solve(0.5 * (K + K.mT), r))
        quench = gaussian_kl(self.prior_mean, self.prior_cov, self.posterior_mean, self.posterior_precision,
                             self._logdet_P)
        return {"entropy_kT": entropy, "energy_kT": energy, "free_energy_kT": entropy + energy,
                "quench_dissipation_kT": quench, "kT_J": BOLTZMANN * self.temperature}

    # --- sampling -------------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None, *, start=None,
               burn_in: float | None = None, interval: float | None = None, chains: int = 1,
               info: bool = False):
        """Draw ``n`` posterior samples from the simulated chip.

        Protocol, per chain (chains run one after another): the cells start at ``start`` (``"prior"``: a
        draw from the prior, the equilibrium of the circuit before its likelihood branch is switched on;
        ``"mean"``: the cells reset to zero, i.e. ``posterior_mean``; or a (d,) point in posterior units;
        None: ``"prior"``, or ``"mean"`` for a circuit made :meth:`from_precision`), relax for ``burn_in`` seconds (default :meth:`default_burn_in`),
        then are read ``ceil(n / chains)`` times, ``interval`` seconds apart (default the device's
        ``sampling_interval``; consecutive reads of a mode relaxing at rate ``r`` correlate as
        ``exp(-r interval)``). Dynamics are exact OU transitions of the programmed chip; reads carry the
        readout noise and ADC rounding.

        Returns ``(samples, cost)``: samples (n, d) float64 in posterior units; cost = programming +
        ``Device.operating_cost(chains, d, burn_in + reads * interval, chains * reads * d)``. With
        ``info=True`` a third element: a dict with ``burn_in_s``, ``interval_s``, ``chains``,
        ``reads_per_chain``, ``programming`` and ``dynamics`` (Costs) and ``clipped_fraction`` (reads at the
        ADC's full scale).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        if isinstance(chains, bool) or not isinstance(chains, int) or not 1 <= chains <= n:
            raise ValueError(f"chains must be an integer in [1, n = {n}]; got {chains!r}")
        dev = self.device
        if interval is None:
            interval = float(dev.sampling_interval)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
            raise ValueError(f"interval must be a finite number of seconds; got {interval!r}")
        if interval < dev.sampling_interval * (1 - 1e-9):
            raise ValueError(f"interval must be at least the ADC's sampling_interval ({dev.sampling_interval} s); "
                             f"got {interval}")
        asked, start = start, self._resolve_start(start)
        start_name = "prior" if isinstance(start, str) else ("mean" if asked is None or isinstance(asked, str)
                                                             else "point")
        if burn_in is None:
            burn_in = self.default_burn_in(start)
        if isinstance(burn_in, bool) or not isinstance(burn_in, (int, float)) or not 0 <= burn_in < math.inf:
            raise ValueError(f"burn_in must be a non-negative number of seconds; got {burn_in!r}")
        built = self._build()
        proc: OUProcess = built["process"]
        tau = float(dev.time_constant)
        d, s = self.d, self.scale
        m0, S0 = self._start(start)
        if isinstance(start, str):
            z = torch.randn(chains, d, dtype=F64, generator=generator)
            theta0 = m0 + z @ torch.linalg.cholesky(S0).mT
        else:
            theta0 = m0.expand(chains, d)
        x = (theta0 - self.prior_mean) / s
        if burn_in > 0:
            x = proc.sample(x, torch.tensor([0.0, burn_in / tau], dtype=F64), generator=generator)[:, -1]
        k = -(-n // chains)
        step = interval / tau
        reads = []
        done = 0
        per = max(1, _SAMPLE_CHUNK // (chains * d))
        clipped = 0
        while done < k:
            S = min(per, k - done)
            path = proc.sample(x, step * torch.arange(S + 1, dtype=F64), generator=generator)[:, 1:]
            x = path[:, -1]
            r, _ = dev.read(path, generator=generator)
            clipped += int((r.abs() >= dev.adc_range * (1 - 1e-12)).sum())
            reads.append(r)
            done += S
        r = torch.cat(reads, dim=1).reshape(chains * k, d)[:n]
        samples = self.prior_mean + s * r
        dynamics = dev.operating_cost(chains, d, burn_in + k * interval, chains * k * d)
        cost = built["programming"] + dynamics
        if not info:
            return samples, cost
        return samples, cost, {"burn_in_s": float(burn_in), "interval_s": float(interval), "chains": chains,
                               "reads_per_chain": k, "programming": built["programming"], "dynamics": dynamics,
                               "clipped_fraction": clipped / (chains * k * d),
                               "start": start_name}

    def __repr__(self) -> str:
        return (f"GaussianPosteriorCircuit(d={self.d}, m={self.m}, design={self.design!r}, noise={self.noise!r}, "
                f"passive={self.realisation['passive']}, device_cells={self.device.n_cells})")
