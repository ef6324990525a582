r"""Solver backends of K-FAC: from the factors ``A``, ``G`` and a gradient matrix ``M`` to the update ``U``.

Every backend computes, per layer, the preconditioned gradient

    factored (Tikhonov) damping:   U = (G + lambda_G I)^-1 M (A + lambda_A I)^-1
                                   vec U = [(A + lambda_A I) kron (G + lambda_G I)]^-1 vec M
    eigen-basis ("exact") damping: vec U = (A kron G + lambda I)^-1 vec M
                                   U = Q_G [ (Q_G^T M Q_A) / (g a^T + lambda) ] Q_A^T

(``A = Q_A diag(a) Q_A^T``, ``G = Q_G diag(g) Q_G^T``; ``vec`` stacks columns; shapes ``A`` (d_in, d_in),
``G`` (d_out, d_out), ``M`` and ``U`` (d_out, d_in)). Work is split in two calls: :meth:`Solver.prepare`
at inverse-update steps (returns a state of tensors, kept between steps and saved in checkpoints) and
:meth:`Solver.apply` at every step. A diagonal ``A`` (embeddings; given as a vector) is inverted
element-wise by every backend.

Digital backends:

* :class:`Eigh` (default): ``eigh`` of both factors; the only backend for the exact form. For factored
  damping it keeps the two damped inverses formed from the eigen-decompositions (two matmuls per step).
* :class:`Cholesky`: damped inverses from Cholesky factors (``cholesky_inverse``).
* :class:`Inverse`: damped inverses by ``torch.linalg.inv`` (LU), kfac-pytorch's INVERSE method.

:class:`Thermodynamic` runs the factor work on a simulated analog device through
:mod:`thermoai.thermo.linalg` (Donatella et al. 2025, arXiv 2502.08603; research/kfac-paper.md §2.3):

* ``method=1``: the device returns the damped inverses ``(A + lambda_A I)^-1`` and ``(G + lambda_G I)^-1``
  (``linalg.inv``, the stationary covariance of an OU process) at inverse-update steps; the host applies
  them with two matmuls every step.
* ``method=2``: the device solves the linear systems that give ``U`` directly, every step (``linalg.solve``,
  the time-averaged mean of an OU process); ``system="per_factor"`` (default) runs ``d_in`` solves of size
  ``d_out`` with the damped ``G`` (``Y = G~^-1 M``) and then ``d_out`` solves of size ``d_in`` with the damped
  ``A`` (``U^T = A~^-1 Y^T``): the "2n solves of size n" reading; ``system="kronecker"`` solves the one
  system ``(A~ kron G~) vec U = vec M`` of size ``d_in d_out`` on a device with that many cells.

The device is a :class:`thermoai.thermo.device.Device`; each factor runs on a copy with ``n_cells`` set to
the factor's size (the paper's one solver per layer), ``dataclasses.replace(device, n_cells=d)``.

**Quantisation** (research/kfac-paper.md §4.3), each a separate parameter and each with full-range
per-matrix scaling ``Q_b(X) = s round(X / s)``, ``s = max|X| / (2^(b-1) - 1)``:

* ``input_bits``: what the host sends is quantised to b bits *before* it is handed to the device: the
  undamped factors ``A``, ``G`` and, for method 2, the gradient ``M`` (and ``Y`` for the second sweep).
  Damping is added after quantisation (a separate analog diagonal term), together with a guard
  ``r = max_i sum_j |Q_b(A) - A|_ij`` (``guard=True``): by Weyl's inequality ``Q_b(A) + r I`` is positive
  semi-definite whenever ``A`` is, so the programmed drift stays stable at any b; the guard adds at most
  the quantisation error to the damping. This is *not* the device's ``dac_bits``, which still quantise
  the programmed (scaled) matrix inside ``linalg``: to study ``input_bits`` alone, give a device with
  fine converters (the study uses ``dac_bits = adc_bits = 24``, no mismatch, no readout noise).
* ``output_bits``: what the device returns is quantised to b bits: the inverses (method 1), ``Y`` and
  ``U`` (method 2, per factor) or ``U`` (Kronecker). It models a result read once through a b-bit ADC
  (an analog accumulator); the device's ``adc_bits`` quantise each snapshot of the time average and
  stay as set on the device.

**Simulation or error model.** ``mode="simulate"`` runs the exact OU dynamics of the device
(``linalg.inv``/``linalg.solve``: O(d^2) per snapshot and about ``(d + 1) kappa / tol^2`` snapshots for an
inverse, so only small factors are practical). ``mode="error_model"`` programs the same matrix through
the same device (``Device.program``: identical DAC rounding and mismatch) and *draws* the statistical
error that the simulated run would have: for a symmetric programmed ``G = Q diag(l) Q^T`` (rates ``l`` in
1/tau), snapshots every ``dt`` and ``N`` snapshots, the time average is Gaussian to leading order with,
in the eigen-basis,

    inv:   S_km ~ N(delta_km v/l_k + b_k,  [v_k v_m g(r_k r_m) + (v_k + v_m) w + w^2] (1 + delta_km) / N)
    solve: y_k  ~ N(x*_k + c_k,            [s2 / l_k g(r_k) + w] / N)

with ``v_k = v / l_k``, ``r_k = exp(-l_k dt)``, ``g(r) = (1 + r)/(1 - r) - 2 r (1 - r^N) / (N (1 - r)^2)``
(the variance factor of an average of an AR(1) chain), ``w = readout_noise^2 + q_adc^2 / 12`` the white
read-out noise, and the burn-in biases ``b_k``, ``c_k`` of a run started from reset cells. The run length,
scaling and noise level follow :mod:`thermoai.thermo.linalg`'s documented protocol (Gershgorin scaling,
``tol`` split into burn-in and statistics, unit cell variance), and device time and energy come from the
device's own :meth:`~thermoai.thermo.device.Device.program` and
:meth:`~thermoai.thermo.device.Device.operating_cost`. ``tests/optim/test_solvers.py`` holds the error
model to the simulator's error distribution on small factors. Its limits: it ignores ADC clipping
(``linalg`` warns when the cells' noise would reach ``adc_range``; clipping lowers the simulated spread) and
it assumes the ADC rounding is dithered by the fluctuations (true unless noise and readout noise are both
far below one ADC step).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from thermoai.thermo import linalg
from thermoai.thermo.device import Cost, Device, quantise
from thermoai.thermo.planning import Spectrum, plan_inv, plan_solve

__all__ = ["Damping", "DeviceUsage", "Solver", "Eigh", "Cholesky", "Inverse", "Thermodynamic", "make_solver",
           "quantise_matrix"]


@dataclass(frozen=True)
class Damping:
    """The damping of one layer at one inverse update: ``a`` and ``g`` added to the factors (factored form),
    or ``exact`` added to the Kronecker eigenvalues (eigen-basis form; then ``a = g = 0``)."""

    a: float
    g: float
    exact: float | None = None

    def as_tensor(self) -> Tensor:
        return torch.tensor([self.a, self.g, math.nan if self.exact is None else self.exact], dtype=torch.float64)

    @staticmethod
    def from_tensor(t: Tensor) -> "Damping":
        a, g, e = (float(x) for x in t)
        return Damping(a, g, None if math.isnan(e) else e)


@dataclass
class DeviceUsage:
    """Device work of one call: device time (s), energy (J), number of device runs (programmings of a
    matrix), and the largest relative error the device reported (``linalg``'s ``estimated_error``)."""

    time_s: float = 0.0
    energy_j: float = 0.0
    runs: int = 0
    estimated_error: float = 0.0

    def add(self, time_s: float, energy_j: float, error: float, runs: int = 1) -> None:
        self.time_s += time_s
        self.energy_j += energy_j
        self.runs += runs
        self.estimated_error = max(self.estimated_error, error)


def quantise_matrix(X: Tensor, bits: int) -> Tensor:
    """``Q_b(X) = s round(X / s)`` with ``s = max|X| / (2^(b-1) - 1)`` (full-range, per matrix)."""
    full = float(X.abs().max()) if X.numel() else 0.0
    if full == 0.0:
        return X.clone()
    return quantise(X, bits, full)


def _check_bits(bits: Any, name: str) -> None:
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name} must be an integer number of bits or None; got {type(bits).__name__}")
    if bits < 2:
        raise ValueError(f"{name} must be at least 2; got {bits}")


def _eye_like(M: Tensor) -> Tensor:
    return torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def _damped(M: Tensor, lam: float) -> Tensor:
    return M + lam * _eye_like(M)


def _right(Y: Tensor, inv_a: Tensor) -> Tensor:
    """``Y A^-1`` for a dense inverse (d_in, d_in) or a diagonal one given as a vector."""
    return Y * inv_a if inv_a.dim() == 1 else Y @ inv_a


_PAD_FROM, _PAD_TO = 512, 16


def _pad(d: int) -> int:
    return d if d % _PAD_TO == 0 else d + _PAD_TO - d % _PAD_TO


def _sandwich(inv_g: Tensor, M: Tensor, inv_a: Tensor) -> Tensor:
    """``U = G~^-1 M A~^-1`` (d_out, d_in). The bias column makes ``d_in`` odd (1025 for a 1024-wide layer),
    and the BLAS matmul kernels of an odd size run about 1.4x slower than those of a multiple of 16 on one CPU
    thread; from ``_PAD_FROM`` on, both products run on zero-padded copies, (G~^-1 (M 0)) (A~^-1 0; 0 0) =
    (U 0), exact up to the summation order. Smaller layers, and a diagonal ``A~^-1``, are left unpadded."""
    d_out, d_in = M.shape
    if inv_a.dim() == 1 or min(d_out, d_in) < _PAD_FROM or (_pad(d_out), _pad(d_in)) == (d_out, d_in):
        return _right(inv_g @ M, inv_a)
    q, p = _pad(d_out), _pad(d_in)
    Mp = M.new_zeros(q, p)
    Mp[:d_out, :d_in] = M
    Ap = inv_a.new_zeros(p, p)
    Ap[:d_in, :d_in] = inv_a
    if q != d_out:
        Gp = inv_g.new_zeros(q, q)
        Gp[:d_out, :d_out] = inv_g
    else:
        Gp = inv_g
    return ((Gp @ Mp) @ Ap)[:d_out, :d_in]


class Solver:
    """A K-FAC solver backend (see the module docstring). ``prepare`` and ``apply`` return their result and
    a :class:`DeviceUsage` (None for digital backends)."""

    name = "solver"
    supports_exact = False
    device_every_step = False  # method 2: the device works at every apply

    def prepare(self, layer: str, A: Tensor, G: Tensor, damping: Damping) -> tuple[dict[str, Tensor], DeviceUsage | None]:
        raise NotImplementedError

    def apply(self, layer: str, state: dict[str, Tensor], M: Tensor) -> tuple[Tensor, DeviceUsage | None]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        return None

    def _check_exact(self, damping: Damping) -> None:
        if damping.exact is not None and not self.supports_exact:
            raise ValueError(f"damping_form='exact' (eigen-basis damping) needs the 'eigh' solver; the "
                             f"'{self.name}' solver only takes factored damping")


class _DigitalInverse(Solver):
    """Keeps the two damped inverses; ``apply`` is ``G~^-1 M A~^-1``."""

    def __init__(self, dtype: torch.dtype | None = None):
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32, torch.float64 or None; got {dtype}")
        self.dtype = dtype

    def _inverse(self, layer: str, which: str, M: Tensor) -> Tensor:
        raise NotImplementedError

    def prepare(self, layer, A, G, damping):
        self._check_exact(damping)
        dt = self.dtype or A.dtype
        if A.dim() == 1:
            inv_a = 1.0 / (A.to(dt) + damping.a)
        else:
            inv_a = self._inverse(layer, "A", _damped(A.to(dt), damping.a))
        inv_g = self._inverse(layer, "G", _damped(G.to(dt), damping.g))
        return {"inv_a": inv_a.to(A.dtype), "inv_g": inv_g.to(G.dtype)}, None

    def apply(self, layer, state, M):
        return _sandwich(state["inv_g"], M, state["inv_a"]), None


class Eigh(_DigitalInverse):
    """``torch.linalg.eigh`` of each factor (eigenvalues clamped at 0). Factored damping: the damped
    inverses ``Q diag(1 / (e + lambda)) Q^T``; exact damping: the eigen-bases and eigenvalues."""

    name = "eigh"
    supports_exact = True

    def prepare(self, layer, A, G, damping):
        dt = self.dtype or A.dtype
        if damping.exact is None:
            return super().prepare(layer, A, G, damping)
        if A.dim() == 1:
            qa, ea = None, A.to(dt).clamp_min(0)
        else:
            ea, qa = torch.linalg.eigh(A.to(dt))
            ea = ea.clamp_min(0)
        eg, qg = torch.linalg.eigh(G.to(dt))
        eg = eg.clamp_min(0)
        state = {"qg": qg.to(G.dtype), "scale": (1.0 / (torch.outer(eg, ea) + damping.exact)).to(G.dtype)}
        if qa is not None:
            state["qa"] = qa.to(A.dtype)
        return state, None

    def _inverse(self, layer, which, M):
        e, q = torch.linalg.eigh(M)
        return (q / e.clamp_min(torch.finfo(e.dtype).tiny)) @ q.mT

    def apply(self, layer, state, M):
        if "scale" not in state:
            return super().apply(layer, state, M)
        qg, qa = state["qg"], state.get("qa")
        V = qg.mT @ M
        if qa is not None:
            V = V @ qa
        V = V * state["scale"]
        V = qg @ V
        return (V @ qa.mT if qa is not None else V), None


class Cholesky(_DigitalInverse):
    """Damped inverses from Cholesky factors (``torch.cholesky_inverse``)."""

    name = "cholesky"

    def _inverse(self, layer, which, M):
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) != 0:
            raise ValueError(f"KFAC: the damped factor {which} of layer '{layer}' is not positive definite "
                             f"(Cholesky failed at column {int(info)}); raise the damping")
        return torch.cholesky_inverse(L)


class Inverse(_DigitalInverse):
    """Damped inverses by ``torch.linalg.inv`` (LU with pivoting)."""

    name = "inverse"

    def _inverse(self, layer, which, M):
        X, info = torch.linalg.inv_ex(M)
        if int(info) != 0:
            raise ValueError(f"KFAC: the damped factor {which} of layer '{layer}' is singular; raise the damping")
        return X


# ------------------------------------------------------------------------------------------ thermodynamic


def _ar1_gain(r: Tensor, n: int) -> Tensor:
    """``g(r) = sum_{|l| < N} (1 - |l|/N) r^|l|``: the variance factor of the mean of N snapshots of an AR(1)
    chain with coefficient r (1 for independent snapshots)."""
    one = 1 - r
    return (1 + r) / one - 2 * r * (1 - r**n) / (n * one * one)


def _mean_decay(r: Tensor, n: int) -> Tensor:
    """``(1/N) sum_{j=1..N} r^j``: the average over the snapshots of a decay ``r^j``."""
    return r * (1 - r**n) / (n * (1 - r))


def _readout_white(device: Device) -> float:
    """Variance of the white noise reading adds to each snapshot: readout noise and ADC rounding."""
    return device.readout_noise**2 + device.adc_step**2 / 12.0


class Thermodynamic(Solver):
    """K-FAC's factor work on a simulated thermodynamic device (module docstring).

    Args:
        method: 1 (the device returns the damped inverses) or 2 (the device solves for ``U``).
        system: for method 2, ``"per_factor"`` (2 sweeps of solves, sizes ``d_out`` and ``d_in``) or
            ``"kronecker"`` (one system of size ``d_in d_out``).
        device: the :class:`~thermoai.thermo.device.Device` (default ``Device()``); ``n_cells`` is set to
            each factor's size.
        tol: relative error requested from ``linalg`` (sets burn-in and averaging time unless given).
        burn_in_s, averaging_s: device seconds per run (override ``tol``'s choice).
        input_bits, output_bits: quantisation of what goes to and comes from the device (None: none).
        guard: add the input quantisation's row-sum bound to the damping (keeps the drift stable).
        mode: ``"simulate"`` (exact OU dynamics through ``linalg``) or ``"error_model"`` (the same
            programming, the statistical error drawn from its predicted distribution).
        diffusion: injected noise of the method-2 solves (``linalg.solve``'s ``diffusion``).
        roundings, rounding: ``linalg``'s error mitigation by averaged stochastic roundings.
        seed: seeds the solver's own generator (device noise and the error model's draws).
    """

    name = "thermodynamic"

    def __init__(self, method: int = 1, *, system: str = "per_factor", device: Device | None = None,
                 tol: float = 5e-2, burn_in_s: float | None = None, averaging_s: float | None = None,
                 input_bits: int | None = None, output_bits: int | None = None, guard: bool = True,
                 mode: str = "simulate", diffusion: float = 0.0, roundings: int = 1, rounding: str = "nearest",
                 seed: int = 0):
        if method not in (1, 2) or isinstance(method, bool):
            raise ValueError(f"method must be 1 (device inverses) or 2 (device linear solves); got {method!r}")
        if system not in ("per_factor", "kronecker"):
            raise ValueError(f"system must be 'per_factor' or 'kronecker'; got {system!r}")
        if device is not None and not isinstance(device, Device):
            raise TypeError(f"device must be a thermoai.thermo.device.Device; got {type(device).__name__}")
        if mode not in ("simulate", "error_model"):
            raise ValueError(f"mode must be 'simulate' or 'error_model'; got {mode!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ValueError(f"tol must be a relative error in (0, 1); got {tol!r}")
        for name, v in (("burn_in_s", burn_in_s), ("averaging_s", averaging_s)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf
                                  or (name == "averaging_s" and v == 0)):
                raise ValueError(f"{name} must be a finite {'positive' if name == 'averaging_s' else 'non-negative'} "
                                 f"number of seconds or None; got {v!r}")
        _check_bits(input_bits, "input_bits")
        _check_bits(output_bits, "output_bits")
        if not isinstance(guard, bool):
            raise TypeError(f"guard must be True or False; got {type(guard).__name__}")
        if isinstance(roundings, bool) or not isinstance(roundings, int) or roundings < 1:
            raise ValueError(f"roundings must be a positive integer; got {roundings!r}")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}")
        if isinstance(diffusion, bool) or not isinstance(diffusion, (int, float)) or not 0 <= diffusion < math.inf:
            raise ValueError(f"diffusion must be a finite non-negative number; got {diffusion!r}")
        self.method, self.system, self.device = method, system, device or Device()
        self.tol, self.burn_in_s, self.averaging_s = float(tol), burn_in_s, averaging_s
        self.input_bits, self.output_bits, self.guard = input_bits, output_bits, guard
        self.mode, self.diffusion, self.roundings, self.rounding = mode, float(diffusion), roundings, rounding
        self.device_every_step = method == 2
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].clone())

    # --- helpers ------------------------------------------------------------------------------------

    def _device(self, d: int) -> Device:
        return self.device if self.device.n_cells >= d else dataclasses.replace(self.device, n_cells=d)

    def _damp_input(self, M: Tensor, lam: float) -> Tensor:
        """Input quantisation of an undamped factor (float64), then damping (plus the guard)."""
        if self.input_bits is None:
            return _damped(M, lam)
        Q = quantise_matrix(M, self.input_bits)
        shift = float((Q - M).abs().sum(1).max()) if self.guard else 0.0
        return _damped(Q, lam + shift)

    def _in(self, X: Tensor) -> Tensor:
        return X if self.input_bits is None else quantise_matrix(X, self.input_bits)

    def _out(self, X: Tensor) -> Tensor:
        return X if self.output_bits is None else quantise_matrix(X, self.output_bits)

    def _inv(self, M: Tensor, usage: DeviceUsage) -> Tensor:
        dev = self._device(M.shape[0])
        if self.mode == "simulate":
            res = linalg.inv(M, tol=self.tol, burn_in_s=self.burn_in_s, averaging_s=self.averaging_s, device=dev,
                             roundings=self.roundings, rounding=self.rounding, generator=self.generator)
            X, rep = res.value, res.report
            usage.add(rep.device_time_s, rep.energy_j, rep.estimated_error)
        else:
            X, cost, err = self._inv_model(M, dev)
            usage.add(cost.time, cost.energy, err)
        return self._out(0.5 * (X + X.mT))

    def _solve(self, M: Tensor, B: Tensor, usage: DeviceUsage, programmed: dict[str, Tensor] | None = None) -> Tensor:
        """``M^-1 b`` for each row b of B (k, d); ``programmed``: the error model's cached programming of M."""
        dev = self._device(M.shape[0])
        if self.mode == "simulate":
            res = linalg.solve(M, B, tol=self.tol, burn_in_s=self.burn_in_s, averaging_s=self.averaging_s,
                               device=dev, diffusion=self.diffusion, roundings=self.roundings,
                               rounding=self.rounding, generator=self.generator)
            X, rep = res.value, res.report
            usage.add(rep.device_time_s, rep.energy_j, rep.estimated_error)
        else:
            X, cost, err = self._solve_model(programmed or self._program_for_solve(M, dev), B, dev)
            usage.add(cost.time, cost.energy, err)
        return X

    # --- the error model (module docstring) --------------------------------------------------------------

    @staticmethod
    def _scaled(M: Tensor) -> tuple[float, Tensor, Tensor]:
        """``(scale, G, rates)``: the Gershgorin scale, ``G = M / scale`` mirrored exactly symmetric (as
        ``linalg`` programs it) and the eigenvalues of G, which must be positive."""
        scale = float(M.abs().sum(1).max())
        G = M / scale
        G = torch.triu(G) + torch.triu(G, 1).mT
        rates = torch.linalg.eigvalsh(G)
        if not float(rates.min()) > 0:
            raise ValueError(f"the matrix sent to the device must be positive definite; got smallest eigenvalue "
                             f"{float(rates.min()) * scale:.3g}")
        return scale, G, rates.clamp(max=1.0)

    @staticmethod
    def _programmed_eigh(dev: Device, G: Tensor, generator: torch.Generator, rounding: str) -> tuple[Tensor, Tensor]:
        Gq, _ = dev.program(G, generator, rounding)
        l, Q = torch.linalg.eigh(Gq)
        if not float(l.min()) > 0:
            raise ValueError("the programmed (quantised) factor is not positive definite; use more dac_bits")
        return l, Q

    def _inv_model(self, M: Tensor, dev: Device) -> tuple[Tensor, Cost, float]:
        d = M.shape[0]
        scale, G, rates = self._scaled(M)
        spec = Spectrum.given(rates.numpy())
        plan = plan_inv(dev, spec, self.tol, roundings=self.roundings, burn_in_s=self.burn_in_s,
                        averaging_s=self.averaging_s)
        n_avg, t_burn = plan.n_samples, plan.burn_in_s / dev.time_constant
        sigma2 = float(rates.min()) / dev.noise_scale**2
        v = dev.noise_scale**2 * sigma2 + dev.thermal_variance
        dt = dev.sampling_interval / dev.time_constant
        w = _readout_white(dev)
        total = torch.zeros(d, d, dtype=torch.float64)
        for _ in range(self.roundings):
            l, Q = self._programmed_eigh(dev, G, self.generator, self.rounding)
            vk = v / l
            r = torch.exp(-l * dt)
            var = (torch.outer(vk, vk) * _ar1_gain(torch.outer(r, r), n_avg) + (vk[:, None] + vk[None, :]) * w
                   + w * w) / n_avg
            var = var + torch.diag(torch.diagonal(var))  # diagonal entries: twice the variance
            Z = torch.randn(d, d, dtype=torch.float64, generator=self.generator) * var.sqrt()
            Z = torch.triu(Z) + torch.triu(Z, 1).mT
            bias = -vk * torch.exp(-2 * l * t_burn) * _mean_decay(r * r, n_avg)  # cells start at reset (x = 0)
            total += Q @ (torch.diag(vk + bias) + Z) @ Q.mT
        return total / self.roundings / (v * scale), plan.cost, plan.total_error

    def _program_for_solve(self, M: Tensor, dev: Device) -> dict[str, Tensor]:
        """The error model's programming of a matrix for solves: scale, ideal rates, and the eigen-pairs of the
        programmed matrix (one per rounding). Programming with nearest rounding is deterministic, so it is
        kept between inverse updates (the device time still charges a programming per solve, as ``linalg``
        reprograms at every call)."""
        scale, G, rates = self._scaled(M)
        ls, Qs = zip(*(self._programmed_eigh(dev, G, self.generator, self.rounding) for _ in range(self.roundings)))
        ones = torch.ones(M.shape[0], dtype=torch.float64)
        # the chip's mismatch pattern for vectors, read off by programming ones (which round exactly)
        pattern = dev.program(ones)[0]
        return {"scale": torch.tensor(scale, dtype=torch.float64), "rates": rates, "l": torch.stack(ls),
                "Q": torch.stack(Qs), "pattern": pattern}

    def _solve_model(self, prog: dict[str, Tensor], B: Tensor, dev: Device) -> tuple[Tensor, Cost, float]:
        k, d = B.shape
        scale, rates = float(prog["scale"]), prog["rates"]
        spec = Spectrum.given(rates.numpy())
        plan = plan_solve(dev, spec, self.tol, rhs=k, roundings=self.roundings, diffusion=self.diffusion,
                          burn_in_s=self.burn_in_s, averaging_s=self.averaging_s)
        n_avg, t_burn = plan.n_samples, plan.burn_in_s / dev.time_constant
        b_norm = B.norm(dim=1, keepdim=True)
        c_scale = torch.where(b_norm > 0, dev.adc_range / 2 * float(rates.min()) / b_norm.clamp_min(1e-300),
                              torch.zeros_like(b_norm))
        C = B * c_scale
        s2 = dev.noise_scale**2 * self.diffusion / 2 + dev.thermal_variance
        dt = dev.sampling_interval / dev.time_constant
        w = _readout_white(dev)
        full = C.abs().amax(1, keepdim=True)
        total = torch.zeros(k, d, dtype=torch.float64)
        for j in range(self.roundings):
            # each right-hand side programmed as Device.program programs a vector: its own full scale, then
            # the chip's vector mismatch
            Cq = torch.where(full > 0, quantise(C, dev.dac_bits, full.clamp_min(1e-300), self.rounding,
                                                self.generator), torch.zeros_like(C)) * prog["pattern"]
            l, Q = prog["l"][j], prog["Q"][j]
            xs = (Cq @ Q) / l  # the programmed chip's fixed points in its eigen-basis, (k, d)
            r = torch.exp(-l * dt)
            var = (s2 / l * _ar1_gain(r, n_avg) + w) / n_avg
            bias = -xs * torch.exp(-l * t_burn) * _mean_decay(r, n_avg)  # cells start at reset (x = 0)
            Y = xs + bias + torch.randn(k, d, dtype=torch.float64, generator=self.generator) * var.sqrt()
            total += Y @ Q.mT
        x = total / self.roundings
        x = torch.where(c_scale > 0, x / (c_scale.clamp_min(1e-300) * scale), torch.zeros_like(x))
        return x, plan.cost, plan.total_error

    # --- the K-FAC interface ------------------------------------------------------------------------

    def prepare(self, layer, A, G, damping):
        self._check_exact(damping)
        usage = DeviceUsage()
        A64, G64 = A.detach().to("cpu", torch.float64), G.detach().to("cpu", torch.float64)
        if A.dim() == 1:  # diagonal A (embedding): nothing for a device to do
            At = 1.0 / (self._in(A64) + damping.a) if self.method == 1 else self._in(A64) + damping.a
        else:
            At = self._damp_input(A64, damping.a)
        Gt = self._damp_input(G64, damping.g)
        for which, M in (("A", At), ("G", Gt)):
            if M.dim() == 2 and int(torch.linalg.cholesky_ex(M)[1]) != 0:
                why = (f" (input_bits={self.input_bits} without the guard can make it indefinite)"
                       if self.input_bits is not None and not self.guard else "")
                raise ValueError(f"KFAC: the damped factor {which} of layer '{layer}' sent to the device is not "
                                 f"positive definite{why}; a device cannot relax to it. Raise the damping"
                                 + (", or use guard=True" if why else ""))
        if self.method == 1:
            inv_a = At if A.dim() == 1 else self._inv(At, usage)
            inv_g = self._inv(Gt, usage)
            return {"inv_a": inv_a.to(A.device, A.dtype), "inv_g": inv_g.to(G.device, G.dtype)}, usage
        state = {"damped_a": At, "damped_g": Gt}
        if self.mode == "error_model" and self.rounding == "nearest":
            if self.system == "kronecker" and At.dim() == 2:
                K = torch.kron(At, Gt)
                mats = {"k": (K, self._device(K.shape[0]))}
            else:
                mats = {"g": (Gt, self._device(Gt.shape[0]))}
                if At.dim() == 2:
                    mats["a"] = (At, self._device(At.shape[0]))
            for key, (Mx, dev) in mats.items():
                for name, t in self._program_for_solve(Mx, dev).items():
                    state[f"prog_{key}.{name}"] = t
        return state, usage

    @staticmethod
    def _cached(state: dict[str, Tensor], key: str) -> dict[str, Tensor] | None:
        pre = f"prog_{key}."
        got = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
        return got or None

    def apply(self, layer, state, M):
        if self.method == 1:
            return _sandwich(state["inv_g"], M, state["inv_a"]), None
        usage = DeviceUsage()
        At, Gt = state["damped_a"], state["damped_g"]
        M64 = self._in(M.detach().to("cpu", torch.float64))
        if At.dim() == 1:
            U = self._out(self._solve(Gt, M64.mT, usage, self._cached(state, "g")).mT) / At
        elif self.system == "per_factor":
            # Y = G~^-1 M, one solve per column of M; then the rows of U = A~^-1 (rows of Y)
            Y = self._out(self._solve(Gt, M64.mT, usage, self._cached(state, "g")).mT)
            U = self._out(self._solve(At, self._in(Y), usage, self._cached(state, "a")))
        else:
            # (A~ kron G~) vec U = vec M, vec stacking columns
            x = self._solve(torch.kron(At, Gt), M64.mT.reshape(1, -1), usage, self._cached(state, "k"))
            U = self._out(x.reshape(At.shape[0], Gt.shape[0]).mT)
        return U.to(M.device, M.dtype), usage


def make_solver(solver: str | Solver) -> Solver:
    """A solver from its name (``"eigh"``, ``"cholesky"``, ``"inverse"``, ``"thermodynamic"``) or itself."""
    if isinstance(solver, Solver):
        return solver
    names = {"eigh": Eigh, "cholesky": Cholesky, "inverse": Inverse, "thermodynamic": Thermodynamic}
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a thermoai.optim.solvers.Solver; got {type(solver).__name__}")
    if solver not in names:
        raise ValueError(f"solver must be one of {sorted(names)} or a Solver instance; got {solver!r}")
    return names[solver]()
