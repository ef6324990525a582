"""Shared pieces of the posterior circuits: input checks, Gaussian KL, passive-network tests.

Everything here works in float64: element values, posteriors and KL divergences are computed once per
circuit (O(d^3)), and the simulated dynamics run in float64 too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from thermoai.thermo.device import Device

F64 = torch.float64

__all__ = [
    "as_vector",
    "as_matrix",
    "as_covariance",
    "check_device",
    "gaussian_kl",
    "passive_realisation",
]


def _tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, bool):
        raise TypeError(f"{name} must be a number or an array of numbers; got bool")
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(x, dtype=F64) if not hasattr(x, "dtype") else torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a number or an array of numbers; got {type(x).__name__}") from e
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued; got dtype {t.dtype}")
    t = t.to(dtype=F64, device="cpu")
    if not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        raise ValueError(f"{name} must have finite entries; got {bad}")
    return t


def as_vector(x: Any, name: str, d: int | None = None) -> Tensor:
    """``x`` as a finite float64 vector (d,); a scalar is broadcast when ``d`` is given."""
    t = _tensor(x, name)
    if t.dim() == 0 and d is not None:
        return t.expand(d).clone()
    if t.dim() != 1 or (d is not None and t.shape[0] != d) or t.shape[0] == 0:
        want = f"({d},)" if d is not None else "(d,) with d >= 1"
        raise ValueError(f"{name} must have shape {want}; got {tuple(t.shape)}")
    return t.clone()


def as_matrix(x: Any, name: str, shape: tuple[int | None, int | None]) -> Tensor:
    """``x`` as a finite float64 matrix of the given shape (None: any size >= 1)."""
    t = _tensor(x, name)
    ok = t.dim() == 2 and all(s is None or t.shape[i] == s for i, s in enumerate(shape)) and t.numel() > 0
    if not ok:
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}; got {tuple(t.shape)}")
    return t.clone()


def as_covariance(x: Any, name: str, d: int) -> Tensor:
    """A (d, d) symmetric positive-definite covariance from a scalar (``x I``), a (d,) vector (``diag(x)``)
    or a (d, d) matrix. ValueError naming ``name`` when it is not symmetric or not positive definite."""
    t = _tensor(x, name)
    if t.dim() == 0:
        if not float(t) > 0:
            raise ValueError(f"{name} as a scalar must be positive (a variance); got {float(t)}")
        return float(t) * torch.eye(d, dtype=F64)
    if t.dim() == 1:
        if t.shape[0] != d:
            raise ValueError(f"{name} as a vector (a diagonal) must have shape ({d},); got {tuple(t.shape)}")
        if not bool((t > 0).all()):
            raise ValueError(f"{name} as a diagonal must be positive; got minimum {float(t.min())}")
        return torch.diag(t)
    if t.shape != (d, d):
        raise ValueError(f"{name} must be a scalar, a ({d},) diagonal or a ({d}, {d}) matrix; got {tuple(t.shape)}")
    scale = float(t.abs().max())
    asym = float((t - t.mT).abs().max())
    if asym > 1e-10 * max(scale, 1e-300):
        raise ValueError(f"{name} must be symmetric; got max |S - S^T| = {asym:.3g} (max |S| = {scale:.3g})")
    t = 0.5 * (t + t.mT)
    _, info = torch.linalg.cholesky_ex(t)
    if int(info) != 0:
        w = float(torch.linalg.eigvalsh(t).min())
        raise ValueError(f"{name} must be positive definite; got smallest eigenvalue {w:.3g}")
    return t


def check_device(device: Any, d: int, what: str = "cells") -> Device:
    """``device`` as a :class:`Device` with at least ``d`` cells (None: the PCB prototype with ``d`` cells)."""
    if device is None:
        maker = getattr(Device, "pcb_prototype", None)
        return maker(n_cells=d) if maker is not None else Device(n_cells=d)
    if not isinstance(device, Device):
        raise TypeError(f"device must be a thermoai.thermo.device.Device or None; got {type(device).__name__}")
    if device.n_cells < d:
        raise ValueError(
            f"device has n_cells = {device.n_cells}, fewer than the d = {d} {what} this circuit needs; use "
            f"dataclasses.replace(device, n_cells={d}) or Device.projected_chip(n_cells={d})"
        )
    return device


def gaussian_kl(m0: Tensor, S0: Tensor, m1: Tensor, P1: Tensor, logdet_P1: float | None = None) -> float:
    """``KL(N(m0, S0) || N(m1, P1^-1))`` in nats, with the second law given by its precision ``P1``::

        KL = 1/2 [tr(P1 S0) - d - ln det(P1 S0) + (m0 - m1)^T P1 (m0 - m1)].

    Shapes (d,), (d, d), (d,), (d, d). ``S0`` may be singular only in the limit (then KL is +inf).
    """
    d = m0.shape[0]
    L0, info = torch.linalg.cholesky_ex(S0)
    if int(info) != 0:
        return math.inf
    if logdet_P1 is None:
        logdet_P1 = float(2 * torch.log(torch.diagonal(torch.linalg.cholesky(P1))).sum())
    logdet_S0 = float(2 * torch.log(torch.diagonal(L0)).sum())
    dm = m0 - m1
    tr = float((P1 * S0).sum())
    quad = float(dm @ P1 @ dm)
    return 0.5 * (tr - d - logdet_P1 - logdet_S0 + quad)


def passive_realisation(M: Tensor, rtol: float = 1e-12) -> dict[str, Any]:
    """Whether a symmetric matrix is the Maxwell (or nodal conductance) matrix of a passive network.

    A network of non-negative two-terminal elements between d nodes and ground has ``M_ij = -c_ij <= 0``
    off the diagonal (the element between nodes i and j) and row sums ``sum_j M_ij = c_i0 >= 0`` (the
    element from node i to ground): an M-matrix that is weakly diagonally dominant. Returns counts of the
    violations, each of which needs an active element (a negative-impedance converter) instead:

    * ``positive_off_diagonal``: pairs i < j with ``M_ij > 0`` (a negative branch element);
    * ``negative_ground``: nodes whose row sum is negative (a negative element to ground);
    * ``passive``: neither occurs; ``active_elements``: their total.
    """
    tol = rtol * float(M.abs().max())
    off = torch.triu(M, 1)
    pos = int((off > tol).sum())
    neg_ground = int((M.sum(1) < -tol).sum())
    return {"passive": pos == 0 and neg_ground == 0, "positive_off_diagonal": pos, "negative_ground": neg_ground,
            "active_elements": pos + neg_ground}
