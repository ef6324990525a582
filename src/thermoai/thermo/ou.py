r"""Exact Ornstein-Uhlenbeck (OU) processes, and integrators for nonlinear drifts.

Convention (the same as thermox)::

    dx = -A (x - b) dt + sqrt(D) dW,

with ``A`` (d, d) a drift matrix whose eigenvalues all have positive real part (any such matrix, symmetric
or not), ``b`` (d,) the stationary mean and ``D`` (d, d) the symmetric positive semi-definite *diffusion
matrix*: the noise added in a time ``dt`` has covariance ``D dt``. The stationary covariance ``S`` solves
the Lyapunov equation ``A S + S A^T = D`` (so ``D = 2 I`` gives ``S = A^{-1}`` for symmetric ``A``).

Exact transition over a time step ``t`` (Gaussian)::

    x(s + t) | x(s)  ~  N(b + Phi(t) (x(s) - b), Sigma(t)),
    Phi(t)   = expm(-A t),
    Sigma(t) = int_0^t expm(-A u) D expm(-A^T u) du   ( = S - Phi S Phi^T ).

``Sigma(t)`` is computed exactly for any ``A`` (normal or not) by Van Loan's block exponential at a small
time ``t / 2^k`` followed by ``k`` doublings ``Sigma(2t) = Sigma(t) + Phi(t) Sigma(t) Phi(t)^T``. Each
doubling adds two positive semi-definite terms, so there is no cancellation at large ``t`` (where the
block exponential overflows) nor at small ``t`` (where ``S - Phi S Phi^T`` loses digits). The stationary
covariance is the same doubling run until ``Phi`` has decayed below machine precision (the "squared
Smith" iteration for the Lyapunov equation). Everything is plain torch, hence differentiable in A, b, D.

thermox instead uses the eigendecomposition of the symmetric part of the (whitened) drift, which is exact
only when that drift is normal; see docs/thermo.md.

Factorisations are done in float64 whatever the working dtype (they cost O(d^3) once per distinct step
length); sampling runs in the dtype of ``A`` (float32 or float64).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["OUProcess", "euler_maruyama", "exponential_integrator", "as_real_tensor", "check_finite"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
# Transition matrices kept per process (bytes); enough for a few thousand distinct steps at d = 20.
_CACHE_BYTES = 64 * 2**20
# Memory allowed for per-step matrices inside one sampling chunk (bytes).
_CHUNK_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------


def as_real_tensor(x, name: str, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """``x`` as a real tensor (Python floats keep double precision), cast to ``dtype``/``device`` if given;
    TypeError naming ``name`` for non-numeric, complex or boolean input. Shared by thermo's input checks."""
    if isinstance(x, Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(x)
            if t.is_floating_point() and t.dtype != torch.float64 and not hasattr(x, "dtype"):
                # Python floats: keep their double precision (torch would round them to float32)
                t = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor or array-like of numbers; got {type(x).__name__}") from e
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be real-valued; got dtype {t.dtype}")
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype if dtype is not None else t.dtype, device=device)
    return t


def check_finite(t: Tensor, name: str) -> None:
    """ValueError naming ``name`` (and whether NaN or Inf) unless every entry of ``t`` is finite."""
    if not bool(torch.isfinite(t.detach()).all()):
        bad = "NaN" if bool(torch.isnan(t.detach()).any()) else "Inf"
        raise ValueError(f"{name} must have finite entries; got {bad}")


def _resolve_dtype(A) -> torch.dtype:
    if hasattr(A, "dtype") and not isinstance(A, Tensor):  # numpy arrays keep their precision
        try:
            A = torch.as_tensor(A)
        except (TypeError, ValueError, RuntimeError):
            return torch.get_default_dtype()
    if isinstance(A, Tensor) and A.is_floating_point():
        if A.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"A must be float32 or float64; got {A.dtype}")
        return A.dtype
    return torch.get_default_dtype()


def _check_times(times, device, name: str = "times") -> Tensor:
    """A 1-D strictly increasing float64 tensor of at least one time."""
    t = as_real_tensor(times, name)
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name} must be a 1-D tensor of at least one time; got shape {tuple(t.shape)}")
    t = t.detach().to(dtype=torch.float64, device=device)
    check_finite(t, name)
    if t.numel() > 1:
        dt = t[1:] - t[:-1]
        if not bool((dt > 0).all()):
            k = int(torch.nonzero(dt <= 0)[0])
            raise ValueError(
                f"{name} must be strictly increasing; got {name}[{k}] = {float(t[k])} followed by "
                f"{name}[{k + 1}] = {float(t[k + 1])}"
            )
    return t


def _time_dtype(times) -> torch.dtype:
    """The dtype a time grid came in (Python numbers: float64); it sets the grid's own rounding."""
    return times.dtype if isinstance(times, Tensor) else torch.float64


def _group_steps(times: Tensor, times_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Distinct step lengths of a grid and, for each step, the index of its distinct length.

    Two steps are treated as equal when they differ by less than the grid's own rounding
    (8 ulp of the largest |time| in the dtype the times came in): a uniform ``arange`` grid then has a
    single step length, as it should, and no step moves by more than the grid already does.
    """
    dts = times[1:] - times[:-1]
    if dts.numel() == 0:
        return dts, torch.zeros(0, dtype=torch.long, device=times.device)
    eps = torch.finfo(times_dtype if times_dtype in _FLOAT_DTYPES else torch.float64).eps
    tol = 8 * eps * float(times.abs().max())
    srt, order = torch.sort(dts)
    new = torch.ones_like(srt, dtype=torch.bool)
    new[1:] = (srt[1:] - srt[:-1]) > tol
    group = torch.cumsum(new.long(), 0) - 1
    # the representative of a group is its mean: exact for a uniform grid up to rounding
    reps = torch.zeros(int(group[-1]) + 1, dtype=dts.dtype, device=dts.device).index_add_(0, group, srt)
    counts = torch.zeros_like(reps).index_add_(0, group, torch.ones_like(srt))
    idx = torch.empty_like(group)
    idx[order] = group
    return reps / counts, idx


# ----------------------------------------------------------------------------------------------------
# Exact transitions (float64)
# ----------------------------------------------------------------------------------------------------


def _van_loan_doubling(A: Tensor, D: Tensor, dts: Tensor) -> tuple[Tensor, Tensor]:
    """``(Phi, Sigma)`` of shapes (K, d, d) for step lengths ``dts`` (K,), all float64.

    Van Loan: expm([[-A t0, D / |D|], [0, A^T t0]]) has top-right block G with
    Sigma(t0) = t0 |D| G expm(-A^T t0). Each step uses its own t0 = t / 2^k with |A t0|_1 in (1/4, 1/2]
    (or k = 0 for short steps), which keeps the block exponential well scaled; normalising D keeps a
    small Sigma accurate to relative precision. k doublings then give Sigma(t). Phi(t) itself comes from
    torch's matrix_exp at t (squaring a near-identity Phi(t0) many times would lose digits).
    """
    d = A.shape[-1]
    K = dts.shape[0]
    norm_a = float(torch.linalg.matrix_norm(A.detach(), ord=1))
    Phi = torch.linalg.matrix_exp(-A * dts[:, None, None])
    norm_d = torch.linalg.matrix_norm(D, ord=1)
    if K == 0 or float(norm_d.detach()) == 0.0:
        return Phi, torch.zeros_like(Phi)
    ks = torch.clamp(torch.ceil(torch.log2(dts.detach() * max(norm_a, 1e-300) / 0.5)), min=0).to(torch.long)
    sigmas = []
    order = []
    for k in torch.unique(ks).tolist():
        sel = torch.nonzero(ks == k)[:, 0]
        t0 = dts[sel] / 2.0**k
        n_sel = sel.shape[0]
        top = torch.cat([-A * t0[:, None, None], (D / norm_d).expand(n_sel, d, d)], dim=-1)
        bottom = torch.cat(
            [torch.zeros(n_sel, d, d, dtype=A.dtype, device=A.device), A.mT * t0[:, None, None]], dim=-1
        )
        E = torch.linalg.matrix_exp(torch.cat([top, bottom], dim=-2))
        P = E[:, :d, :d]
        Sigma = (E[:, :d, d:] @ P.mT) * (t0 * norm_d)[:, None, None]
        for _ in range(k):
            Sigma = Sigma + P @ Sigma @ P.mT
            P = P @ P
        sigmas.append(Sigma)
        order.append(sel)
    Sigma = torch.cat(sigmas)[torch.argsort(torch.cat(order))]
    return Phi, 0.5 * (Sigma + Sigma.mT)


def _stationary_covariance(A: Tensor, D: Tensor) -> Tensor:
    """Solve A S + S A^T = D by doubling Sigma(t) until Phi(t) has decayed below machine precision."""
    norm_a = float(torch.linalg.matrix_norm(A.detach(), ord=1))
    t0 = 0.5 / max(norm_a, 1e-300)
    Phi, Sigma = _van_loan_doubling(A, D, torch.tensor([t0], dtype=A.dtype, device=A.device))
    Phi, Sigma = Phi[0], Sigma[0]
    eps = torch.finfo(A.dtype).eps
    for _ in range(2000):
        # the remaining tail Phi S Phi^T is below eps^2 * |S| once |Phi|^2 < eps^2: stop there
        if float(torch.linalg.matrix_norm(Phi.detach(), ord=2)) < eps:
            break
        Sigma = Sigma + Phi @ Sigma @ Phi.mT
        Phi = Phi @ Phi
    else:  # pragma: no cover - excluded by the stability check in OUProcess
        raise ValueError("stationary covariance did not converge: the drift A is not stable")
    return 0.5 * (Sigma + Sigma.mT)


def _psd_factor(Sigma: Tensor) -> Tensor:
    """A square root L with L L^T = Sigma for a batch of PSD matrices (Cholesky, or eigh if singular)."""
    L, info = torch.linalg.cholesky_ex(Sigma)
    bad = info != 0
    if bool(bad.any()):
        w, U = torch.linalg.eigh(Sigma[bad])
        L = L.clone()
        L[bad] = U * w.clamp_min(0).sqrt()[..., None, :]
    return L


# ----------------------------------------------------------------------------------------------------
# Blocked linear recurrence y_{k+1} = Phi_k y_k + w_k
# ----------------------------------------------------------------------------------------------------


def _run_recurrence(
    y0: Tensor,
    w: Tensor,
    apply_phi: Callable[[Tensor, Tensor], Tensor],
    block_phi: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """All states of the linear recurrence ``y_{k+1} = Phi_k y_k + w_k`` for k < S (row vectors).

    y0 (n, d); w (S, n, d) the noise of each step; ``apply_phi(y, ks)`` maps y (B, n, d) to
    ``Phi_{ks[i]} y[i]`` for step indices ks (B,); ``block_phi(s0, s1)`` gives (B, d, d) transitions over
    steps ``s0[i] <= k < s1[i]``. Returns (S, n, d).

    Steps are cut into B blocks of m ~ sqrt(S): a first pass advances all blocks at once from zero, a short
    sequential pass carries the block starts, and a second pass advances all blocks from their true
    starts. About 3 sqrt(S) batched matmuls instead of S small ones, with exactly the arithmetic of a
    plain loop up to rounding.
    """
    S, n, d = w.shape
    if S <= 32:
        out = torch.empty_like(w)
        y = y0[None]
        for k in range(S):
            y = apply_phi(y, torch.full((1,), k, dtype=torch.long, device=w.device)) + w[k]
            out[k] = y[0]
        return out
    m = math.isqrt(S - 1) + 1
    B = -(-S // m)
    pad = B * m - S
    wp = torch.cat([w, w.new_zeros(pad, n, d)]) if pad else w
    wp = wp.reshape(B, m, n, d)
    block_start = torch.arange(B, device=w.device) * m
    # padded steps (k >= S) only follow the last real state and are discarded
    steps = torch.clamp(block_start[:, None] + torch.arange(m, device=w.device)[None], max=S - 1)
    s = w.new_zeros(B, n, d)
    for j in range(m):
        s = apply_phi(s, steps[:, j]) + wp[:, j]
    starts = [y0]
    if B > 1:
        blockT = block_phi(block_start[:-1], block_start[1:]).mT  # (B-1, d, d)
        for bi in range(B - 1):
            starts.append(starts[-1] @ blockT[bi] + s[bi])
    y = torch.stack(starts)  # (B, n, d)
    out = torch.empty_like(wp)
    for j in range(m):
        y = apply_phi(y, steps[:, j]) + wp[:, j]
        out[:, j] = y
    return out.reshape(B * m, n, d)[:S]


def _dyadic_split(dts: Tensor, unit: float) -> tuple[Tensor, Tensor, float]:
    """Write each step as a sum of dyadic pieces ``unit * 2^j``: returns bits (S, J) bool, the exact
    piece lengths (J,) and the unit actually used. Steps are rounded to the unit (at most the grid's
    own rounding)."""
    dt_max = float(dts.max())
    unit = max(unit, dt_max * 2.0**-60)
    counts = torch.clamp(torch.round(dts / unit), min=1).to(torch.long)
    J = int(counts.max()).bit_length()
    powers = torch.arange(J, device=dts.device)
    bits = ((counts[:, None] >> powers[None]) & 1).bool()
    return bits, unit * torch.pow(2.0, powers.to(torch.float64)), unit


# ----------------------------------------------------------------------------------------------------
# The process
# ----------------------------------------------------------------------------------------------------


class _TransitionCache:
    """Factorisations of one process, keyed by what they depend on besides the process (a step length, a
    tag), within a byte budget: entries that would exceed it are not kept (they are recomputed when asked
    again). The process owns copies of its inputs, so an entry cannot go stale."""

    def __init__(self, budget_bytes: int = _CACHE_BYTES):
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self._entries: dict = {}

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __getitem__(self, key):
        return self._entries[key]

    def put(self, key, value, n_bytes: int) -> bool:
        """Keep ``value`` under ``key`` if it fits the budget; returns whether it was kept."""
        if key in self._entries:
            return True
        if self.bytes + n_bytes > self.budget_bytes:
            return False
        self._entries[key] = value
        self.bytes += n_bytes
        return True


class OUProcess:
    r"""The OU process ``dx = -A (x - b) dt + sqrt(D) dW`` with exact Gaussian transitions.

    Args:
        A: (d, d) drift matrix; every eigenvalue must have positive real part. Symmetric or not.
        D: diffusion matrix, (d, d) symmetric positive semi-definite; a scalar means ``D * I`` and a
            (d,) vector means ``diag(D)``. Noise covariance per unit time.
        b: (d,) stationary mean; zeros if None.

    The working dtype is that of ``A`` (float32 or float64; the default dtype for non-tensors); the
    device is that of ``A``. Inputs may require grad: ``log_prob``, ``mean``, ``covariance``,
    ``transition`` and ``stationary_covariance`` are differentiable in A, b and D. The process keeps its
    own copies of A, D and b (changing the caller's arrays afterwards changes nothing; ``.A``, ``.D``,
    ``.b`` return copies too). Transition factors are computed once per distinct step length and cached
    (when nothing requires grad) within a byte budget, so repeated sampling on the same grid costs only
    the matmuls.

    Raises ValueError for an unstable drift (an eigenvalue with non-positive real part), a non-symmetric
    or indefinite D, NaN/Inf entries and mismatched shapes; TypeError for non-numeric input.
    """

    def __init__(self, A, D, b=None):
        dtype = _resolve_dtype(A)
        A = as_real_tensor(A, "A", dtype=dtype)
        device = A.device
        if A.dim() != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
            raise ValueError(f"A must be a square (d, d) matrix with d >= 1; got shape {tuple(A.shape)}")
        d = A.shape[0]
        check_finite(A, "A")
        D = as_real_tensor(D, "D", dtype=dtype, device=device)
        if D.dim() == 0:
            D = D * torch.eye(d, dtype=dtype, device=device)
        elif D.dim() == 1:
            if D.shape[0] != d:
                raise ValueError(f"D as a vector must have shape ({d},) to match A; got {tuple(D.shape)}")
            D = torch.diag(D)
        if D.shape != (d, d):
            raise ValueError(f"D must have shape ({d}, {d}) to match A; got {tuple(D.shape)}")
        check_finite(D, "D")
        if b is None:
            b = torch.zeros(d, dtype=dtype, device=device)
        b = as_real_tensor(b, "b", dtype=dtype, device=device)
        if b.shape != (d,):
            raise ValueError(f"b must have shape ({d},) to match A; got {tuple(b.shape)}")
        check_finite(b, "b")

        A64 = A.to(torch.float64)
        D64 = D.to(torch.float64)
        eps = torch.finfo(dtype).eps
        Dd = D64.detach()
        scale_d = float(Dd.abs().max())
        asym = float((Dd - Dd.mT).abs().max())
        if asym > 100 * eps * max(scale_d, 1e-300):
            raise ValueError(f"D must be symmetric; got max |D - D^T| = {asym:.3g} (max |D| = {scale_d:.3g})")
        D64 = 0.5 * (D64 + D64.mT)
        if scale_d > 0:
            w_min = float(torch.linalg.eigvalsh(0.5 * (Dd + Dd.mT)).min())
            if w_min < -10 * d * eps * scale_d:
                raise ValueError(f"D must be positive semi-definite; got smallest eigenvalue {w_min:.3g}")
        ev = torch.linalg.eigvals(A64.detach())
        re_min = float(ev.real.min())
        norm_a = float(A64.detach().abs().max())
        # the float64 copy is exact, so "numerically zero" is judged at float64 precision whatever the dtype
        if not re_min > 100 * torch.finfo(torch.float64).eps * d * norm_a:
            raise ValueError(
                "A must have eigenvalues with positive real part (a stable OU process); got smallest real "
                f"part {re_min:.3g} (eigenvalue {complex(ev[int(torch.argmin(ev.real))]):.3g})"
            )

        # copies (clone keeps gradients): the caller's arrays may change afterwards without effect here
        self._A, self._D, self._b = A.clone(), D.clone(), b.clone()
        self._A64, self._D64, self._b64 = A64.clone(), D64.clone(), b.to(torch.float64).clone()
        self.dim, self.dtype, self.device = d, dtype, device
        self.min_decay_rate = re_min
        self._requires_grad = any(t.requires_grad for t in (A, D, b))
        self._cache = _TransitionCache()
        self._S64: Tensor | None = None

    @property
    def A(self) -> Tensor:
        """The (d, d) drift (a copy)."""
        return self._A.clone()

    @property
    def D(self) -> Tensor:
        """The (d, d) diffusion matrix (a copy)."""
        return self._D.clone()

    @property
    def b(self) -> Tensor:
        """The (d,) stationary mean (a copy)."""
        return self._b.clone()

    def __repr__(self) -> str:
        return f"OUProcess(dim={self.dim}, dtype={self.dtype}, device={self.device})"

    # --- closed forms ----------------------------------------------------------------------------

    def _transitions64(self, dts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(Phi, Sigma, L) in float64 for distinct step lengths dts (K,), using the cache."""
        use_cache = not (self._requires_grad and torch.is_grad_enabled())
        if not use_cache:
            Phi, Sigma = _van_loan_doubling(self._A64, self._D64, dts)
            return Phi, Sigma, _psd_factor(Sigma)
        keys = [float(t) for t in dts.tolist()]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            Phi, Sigma = _van_loan_doubling(self._A64, self._D64, dts[missing])
            L = _psd_factor(Sigma)
            entry_bytes = 3 * self.dim * self.dim * 8
            for j, i in enumerate(missing):
                if not self._cache.put(keys[i], (Phi[j], Sigma[j], L[j]), entry_bytes):
                    break
            fresh = {i: (Phi[j], Sigma[j], L[j]) for j, i in enumerate(missing)}
        else:
            fresh = {}
        rows = [fresh[i] if i in fresh else self._cache[key] for i, key in enumerate(keys)]
        return tuple(torch.stack([r[c] for r in rows]) for c in range(3))  # type: ignore[return-value]

    def _whitened_eigh(self) -> tuple[Tensor, Tensor] | None:
        """``(lam, W)`` (float64) when the whitened drift ``L^-1 A L`` (``L L^T = D``) is symmetric, e.g. a
        symmetric A with D = c I: then ``x - b = W v`` with independent scalar OU coordinates
        ``dv_i = -lam_i v_i dt + dW_i``, ``W = L U`` and ``L^-1 A L = U diag(lam) U^T``. None otherwise."""
        if "whitened" not in self._cache:
            result = None
            A64, D64 = self._A64.detach(), self._D64.detach()
            L, info = torch.linalg.cholesky_ex(D64)
            if int(info) == 0:
                Ay = torch.linalg.solve_triangular(L, A64 @ L, upper=False)
                scale = float(Ay.abs().max())
                if float((Ay - Ay.mT).abs().max()) <= 1e-13 * scale:
                    lam, U = torch.linalg.eigh(0.5 * (Ay + Ay.mT))
                    result = (lam, L @ U)
            self._cache.put("whitened", result, 0 if result is None else 8 * self.dim * (self.dim + 1))
        return self._cache["whitened"] if "whitened" in self._cache else result

    def _dyadic_transitions(self, pieces: Tensor) -> tuple[Tensor, Tensor]:
        """(Phi^T, L^T) in the working dtype for pieces u 2^j (J,): Van Loan at u only, then
        Sigma(2h) = Sigma(h) + Phi(h) Sigma(h) Phi(h)^T with each Phi(h) from matrix_exp (cheap at the
        small norms of most pieces; squaring Phi instead would lose digits)."""
        key = ("dyadic", float(pieces[0]), pieces.shape[0])
        if key in self._cache:
            return self._cache[key]  # type: ignore[return-value]
        A64, D64 = self._A64.detach(), self._D64.detach()
        Phi = torch.linalg.matrix_exp(-A64 * pieces[:, None, None])
        Sigmas = [_van_loan_doubling(A64, D64, pieces[:1])[1][0]]
        for j in range(pieces.shape[0] - 1):
            Q = Sigmas[-1]
            Sigmas.append(Q + Phi[j] @ Q @ Phi[j].mT)
        L = _psd_factor(torch.stack(Sigmas))
        out = (Phi.to(self.dtype).mT, L.to(self.dtype).mT)
        self._cache.put(key, out, 2 * pieces.shape[0] * self.dim * self.dim * 8)
        return out

    def _times_tensor(self, t) -> tuple[Tensor, bool]:
        tt = as_real_tensor(t, "t").to(dtype=torch.float64, device=self.device)
        if tt.dim() > 1:
            raise ValueError(f"t must be a scalar or a 1-D tensor of times; got shape {tuple(tt.shape)}")
        check_finite(tt, "t")
        if bool((tt < 0).any()):
            raise ValueError(f"t must be non-negative; got min {float(tt.min())}")
        return tt.reshape(-1), tt.dim() == 0

    def transition(self, dt) -> tuple[Tensor, Tensor]:
        """Exact transition ``(Phi, Sigma)`` over a time ``dt``: ``x' = b + Phi (x - b) + N(0, Sigma)``.

        ``dt`` a scalar gives (d, d) matrices; a 1-D tensor of K times gives (K, d, d).
        """
        tt, scalar = self._times_tensor(dt)
        Phi, Sigma = _van_loan_doubling(self._A64, self._D64, tt)
        Phi, Sigma = Phi.to(self.dtype), Sigma.to(self.dtype)
        return (Phi[0], Sigma[0]) if scalar else (Phi, Sigma)

    def covariance(self, t) -> Tensor:
        """Covariance of x(t) given a fixed x(0): ``int_0^t e^{-Au} D e^{-A^T u} du``; (d, d) or (K, d, d)."""
        return self.transition(t)[1]

    def mean(self, x0, t) -> Tensor:
        """Mean of x(t) given x(0) = x0: ``b + expm(-A t) (x0 - b)``.

        x0 (..., d); t a scalar gives (..., d), a 1-D tensor of K times gives (..., K, d).
        """
        x0 = self._check_state(x0, "x0")
        tt, scalar = self._times_tensor(t)
        Phi = torch.linalg.matrix_exp(-self._A64 * tt[:, None, None])  # (K, d, d)
        dev = (x0.to(torch.float64) - self._b64)[..., None, :, None]  # (..., 1, d, 1)
        m = (self._b64[:, None] + Phi @ dev)[..., 0].to(self.dtype)  # (..., K, d)
        return m[..., 0, :] if scalar else m

    def stationary_mean(self) -> Tensor:
        return self.b

    def stationary_covariance(self) -> Tensor:
        """The (d, d) solution S of the Lyapunov equation ``A S + S A^T = D``."""
        if self._requires_grad and torch.is_grad_enabled():
            return _stationary_covariance(self._A64, self._D64).to(self.dtype)
        if self._S64 is None:
            self._S64 = _stationary_covariance(self._A64, self._D64)
        return self._S64.to(self.dtype)

    # --- sampling ---------------------------------------------------------------------------------

    def _check_state(self, x, name: str) -> Tensor:
        x = as_real_tensor(x, name, device=self.device)
        if not x.is_floating_point():
            x = x.to(self.dtype)
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have last dimension d = {self.dim}; got shape {tuple(x.shape)}")
        check_finite(x, name)
        return x

    def sample_stationary(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n independent draws (n, d) from the stationary distribution N(b, S)."""
        n = _check_count(n, "n")
        L = _psd_factor(self.stationary_covariance().to(torch.float64)[None])[0].to(self.dtype)
        z = torch.randn(n, self.dim, dtype=self.dtype, device=self.device, generator=generator)
        return self._b.detach() + z @ L.mT

    @torch.no_grad()
    def sample(
        self,
        x0,
        times,
        n: int | None = None,
        generator: torch.Generator | None = None,
        method: str = "auto",
    ) -> Tensor:
        """Exact sample paths on an arbitrary increasing time grid.

        Args:
            x0: start at ``times[0]``: (d,) shared by all paths, (n, d) one per path, or None to start
                from the stationary distribution (then ``n`` is required).
            times: (T,) strictly increasing times; they may be unevenly spaced.
            n: number of independent paths (default: ``x0.shape[0]`` for a 2-D x0, else 1).
            generator: torch.Generator for reproducible noise.
            method: how per-step transitions are formed. ``"factor"``: one exact factorisation
                ``(Phi, chol Sigma)`` per distinct step length (cached; a uniform grid has one).
                ``"dyadic"``: every step is written as a sum of J dyadic pieces ``u 2^j`` (u at the grid's
                own rounding, J ~ 40) and composed from J exact factorisations, so an irregular grid costs
                O(J T n d^2) instead of O(T d^3). ``"diagonal"``: when ``L^-1 A L`` is symmetric
                (``L L^T = D``; e.g. symmetric A and D = c I) the process is d independent scalar OU
                processes in the basis ``W = L U`` of its eigenvectors: O(T n d) per grid plus one final
                change of basis. ``"auto"``: factor for a uniform grid, else diagonal when it applies,
                else the cheaper of factor and dyadic by a flop count. All are exact.

        Returns:
            (n, T, d) in the process dtype; ``[:, 0]`` is x0. Not differentiable (use ``log_prob``).

        The recurrence runs in ~3 sqrt(T) batched matmuls (see ``_run_recurrence``).
        """
        times_in = times
        t = _check_times(times, self.device)
        d = self.dim
        if x0 is None:
            if n is None:
                raise ValueError("n is required when x0 is None (stationary start)")
            x = self.sample_stationary(n, generator)
        else:
            x = _prepare_start(self._check_state(x0, "x0").to(self.dtype), n, self.dtype, self.device)
            n = x.shape[0]
        T = t.shape[0]
        out = _path_buffer(x, T)
        if T == 1:
            return out
        tdtype = _time_dtype(times_in)
        reps, idx = _group_steps(t, tdtype)
        S, K = T - 1, reps.shape[0]
        b = self._b.detach()
        y0 = (x - b).contiguous()
        A64 = self._A64.detach()
        z = torch.randn(S, n, d, dtype=self.dtype, device=self.device, generator=generator)
        # Per-step matrices: one exact factorisation per distinct step (~60 d^3 flops each), or, when
        # nearly every step is distinct, dyadic sub-steps (J ~ 40 matvec pairs per step, exact at the
        # grid's own rounding) whichever costs fewer flops.
        if method not in ("auto", "factor", "dyadic", "diagonal"):
            raise ValueError(f"method must be 'auto', 'factor', 'dyadic' or 'diagonal'; got {method!r}")
        if method == "diagonal" and self._whitened_eigh() is None:
            raise ValueError("method='diagonal' needs a positive-definite D with L^-1 A L symmetric (L L^T = D)")
        if method == "auto":
            fits = K * 2 * d * d * 8 <= _CHUNK_BYTES * 4
            if K == 1:
                method = "factor"
            elif self._whitened_eigh() is not None:
                method = "diagonal"
            else:
                method = "factor" if fits and K * 60 * d <= S * 40 * 2 * n else "dyadic"
        if method == "diagonal":
            lam, W = self._whitened_eigh()  # x - b = W v, v has independent coordinates with rates lam
            lam_t = lam.to(self.dtype)
            dts = (t[1:] - t[:-1]).to(self.dtype)
            decay = torch.exp(-lam_t[None] * dts[:, None])  # (S, d)
            spread = torch.sqrt(-torch.expm1(-2 * lam_t[None] * dts[:, None]) / (2 * lam_t[None]))
            w = z * spread[:, None, :]
            cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=self.device), torch.cumsum(t[1:] - t[:-1], 0)])
            Wt = W.to(self.dtype)
            y0 = torch.linalg.solve(Wt, y0.mT).mT  # eigen-coordinates of the start

            def apply_phi(y: Tensor, ks: Tensor) -> Tensor:
                return y * decay[ks][:, None, :]

            def block_phi(s0: Tensor, s1: Tensor) -> Tensor:
                span = (cum[s1] - cum[s0]).to(torch.float64)
                return torch.diag_embed(torch.exp(-lam[None] * span[:, None])).to(self.dtype)

            ys = _run_recurrence(y0, w, apply_phi, block_phi) @ Wt.mT
            out[:, 1:] = (ys + b).transpose(0, 1)
            return out
        if method == "factor":
            if K == 1:
                Phi64, _, L64 = self._transitions64(reps)
                PhiT, LT = Phi64[0].to(self.dtype).mT, L64[0].to(self.dtype).mT
                w = z @ LT
                power = torch.linalg.matrix_power

                def apply_phi(y: Tensor, ks: Tensor) -> Tensor:
                    return (y.reshape(-1, d) @ PhiT).reshape(y.shape)  # one GEMM, not B small ones

                def block_phi(s0: Tensor, s1: Tensor) -> Tensor:
                    return power(PhiT.mT, int(s1[0] - s0[0])).expand(s0.shape[0], d, d)

            else:
                Phi64, _, L64 = self._transitions64(reps)
                Phi, L = Phi64.to(self.dtype), L64.to(self.dtype)
                cum = torch.cat([reps.new_zeros(1), torch.cumsum(reps[idx], 0)])
                w = torch.empty_like(z)
                chunk = max(1, _CHUNK_BYTES // (d * d * 8))
                for c0 in range(0, S, chunk):
                    c1 = min(S, c0 + chunk)
                    w[c0:c1] = torch.bmm(z[c0:c1], L[idx[c0:c1]].mT)

                def apply_phi(y: Tensor, ks: Tensor) -> Tensor:
                    return torch.bmm(y, Phi[idx[ks]].mT)

                def block_phi(s0: Tensor, s1: Tensor) -> Tensor:
                    span = cum[s1] - cum[s0]
                    return torch.linalg.matrix_exp(-A64 * span[:, None, None]).to(self.dtype)

        else:
            tol = 8 * torch.finfo(tdtype if tdtype in _FLOAT_DTYPES else torch.float64).eps * float(t.abs().max())
            bits, pieces, unit = _dyadic_split(t[1:] - t[:-1], 2.0 ** math.floor(math.log2(tol)))
            J = pieces.shape[0]
            PhiT, LT = self._dyadic_transitions(pieces)
            # noise of step k: compose the sub-steps of its set bits, xi <- Phi_j xi + L_j z_j
            w = torch.zeros(S * n, d, dtype=self.dtype, device=self.device)
            first = True
            for j in range(J):
                rows = torch.nonzero(bits[:, j])[:, 0]
                if rows.numel() == 0:
                    continue
                if first:  # the first piece of each step starts from zero noise
                    zj = z[rows]
                    first = False
                else:
                    zj = torch.randn(rows.numel(), n, d, dtype=self.dtype, device=self.device, generator=generator)
                wr = w.view(S, n, d)[rows].reshape(-1, d)
                w.view(S, n, d)[rows] = (wr @ PhiT[j] + zj.reshape(-1, d) @ LT[j]).view(-1, n, d)
            w = w.view(S, n, d)
            cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=self.device),
                             torch.cumsum(bits.to(torch.float64) @ pieces, 0)])
            active = [j for j in range(J) if bool(bits[:, j].any())]

            def apply_phi(y: Tensor, ks: Tensor) -> Tensor:
                bk = bits[ks]
                shape = y.shape
                y = y.reshape(-1, d)
                for j in active:
                    mask = bk[:, j].repeat_interleave(shape[1])[:, None]
                    y = torch.where(mask, y @ PhiT[j], y)  # one GEMM over all blocks
                return y.reshape(shape)

            def block_phi(s0: Tensor, s1: Tensor) -> Tensor:
                span = cum[s1] - cum[s0]
                return torch.linalg.matrix_exp(-A64 * span[:, None, None]).to(self.dtype)

        ys = _run_recurrence(y0, w, apply_phi, block_phi)  # (S, n, d)
        out[:, 1:] = (ys + b).transpose(0, 1)
        return out

    # --- likelihood -------------------------------------------------------------------------------

    def log_prob(self, path, times) -> Tensor:
        """Log-density of a path under the exact transitions, conditioned on its first state.

        ``sum_k log N(x_{k+1}; b + Phi(dt_k)(x_k - b), Sigma(dt_k))`` with ``path[..., 0, :]`` taken as
        given (as in thermox). path (..., T, d), times (T,); returns shape ``path.shape[:-2]``.
        Differentiable in A, b, D (and the path). Computed in float64, returned in the path's dtype.
        Raises ValueError when a transition covariance is singular (D not positive definite enough for a
        density to exist).
        """
        path = self._check_state(path, "path")
        if path.dim() < 2:
            raise ValueError(f"path must have shape (..., T, d); got {tuple(path.shape)}")
        t = _check_times(times, self.device)
        T = t.shape[0]
        if path.shape[-2] != T:
            raise ValueError(f"path has {path.shape[-2]} time points but times has {T}")
        out_dtype = path.dtype if path.dtype in _FLOAT_DTYPES else self.dtype
        x = path.to(torch.float64) - self._b64
        total = x.new_zeros(path.shape[:-2])
        if T == 1:
            return total.to(out_dtype)
        tdtype = _time_dtype(times)
        reps, idx = _group_steps(t, tdtype)
        Phi, Sigma, _ = self._transitions64(reps)
        L, info = torch.linalg.cholesky_ex(Sigma)
        if bool((info != 0).any()):
            raise ValueError(
                "log_prob needs positive-definite transition covariances; D is singular (or too "
                "ill-conditioned) for the process to have a density over these steps"
            )
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (K,)
        d = self.dim
        const = 0.5 * d * math.log(2 * math.pi)
        S = T - 1
        chunk = S if reps.shape[0] == 1 else max(1, _CHUNK_BYTES // (2 * d * d * 8))
        for c0 in range(0, S, chunk):
            c1 = min(S, c0 + chunk)
            ic = idx[c0:c1]
            xa, xb = x[..., c0:c1, :], x[..., c0 + 1 : c1 + 1, :]
            if reps.shape[0] == 1:
                r = xb - xa @ Phi[0].mT
                u = torch.linalg.solve_triangular(L[0], r.mT, upper=False).mT
            else:
                r = xb - (Phi[ic] @ xa.unsqueeze(-1))[..., 0]
                u = torch.linalg.solve_triangular(L[ic], r.unsqueeze(-1), upper=False)[..., 0]
            total = total + (-0.5 * (u * u).sum(-1) - 0.5 * logdet[ic] - const).sum(-1)
        return total.to(out_dtype)


def _path_buffer(x: Tensor, T: int) -> Tensor:
    """An (n, T, d) buffer for paths in the dtype and device of the starts x (n, d), with ``[:, 0] = x``."""
    out = x.new_empty(x.shape[0], T, x.shape[1])
    out[:, 0] = x
    return out


def _check_count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive integer; got {n!r}")
    return n


# ----------------------------------------------------------------------------------------------------
# Integrators for nonlinear drifts
# ----------------------------------------------------------------------------------------------------


def _diffusion_factor(D, d: int, dtype, device) -> Tensor:
    D = as_real_tensor(D, "D", dtype=dtype, device=device)
    if D.dim() == 0:
        D = D * torch.eye(d, dtype=dtype, device=device)
    elif D.dim() == 1:
        D = torch.diag(D)
    if D.shape != (d, d):
        raise ValueError(f"D must have shape ({d}, {d}); got {tuple(D.shape)}")
    check_finite(D, "D")
    D64 = D.detach().to(torch.float64)
    eps = torch.finfo(dtype).eps
    scale = float(D64.abs().max())
    if float((D64 - D64.mT).abs().max()) > 100 * eps * max(scale, 1e-300):
        raise ValueError("D must be symmetric")
    D64 = 0.5 * (D64 + D64.mT)
    if scale > 0 and float(torch.linalg.eigvalsh(D64).min()) < -10 * d * eps * scale:
        raise ValueError(f"D must be positive semi-definite; got smallest eigenvalue {float(torch.linalg.eigvalsh(D64).min()):.3g}")
    return _psd_factor(D64[None])[0].to(dtype)


def _prepare_start(x0, n, dtype, device) -> Tensor:
    x0 = as_real_tensor(x0, "x0", device=device)
    if not x0.is_floating_point():
        x0 = x0.to(dtype)
    check_finite(x0, "x0")
    if x0.dim() == 1:
        n = 1 if n is None else _check_count(n, "n")
        return x0.expand(n, x0.shape[0]).clone()
    if x0.dim() == 2:
        if n is not None and _check_count(n, "n") != x0.shape[0]:
            raise ValueError(f"n = {n} does not match x0 of shape {tuple(x0.shape)}")
        return x0.clone()
    raise ValueError(f"x0 must have shape (d,) or (n, d); got {tuple(x0.shape)}")


def euler_maruyama(
    drift: Callable[[Tensor, Tensor], Tensor],
    D,
    x0,
    times,
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Euler-Maruyama for ``dx = drift(t, x) dt + sqrt(D) dW`` on a (possibly uneven) time grid.

    ``x_{k+1} = x_k + drift(t_k, x_k) dt_k + sqrt(dt_k) L z_k`` with ``L L^T = D``.

    Args:
        drift: ``drift(t, x)`` with t a 0-d tensor and x (n, d), returns (n, d).
        D: diffusion, scalar, (d,) diagonal or (d, d) PSD.
        x0: (d,) or (n, d) start at ``times[0]``; dtype follows x0 (float32/float64).
        times: (T,) strictly increasing.

    Returns (n, T, d), ``[:, 0] = x0``.

    Discretisation bias: on the scalar OU drift ``-a x`` the chain's stationary variance is
    ``D / (2a) * 2 / (2 - a dt)`` instead of ``D / (2a)`` (5.3% too large at ``a dt = 0.1``, twice the
    truth at ``a dt = 1``) and it diverges for ``a dt >= 2``; in general the weak error is O(dt).
    """
    t = _check_times(times, None)
    if isinstance(x0, Tensor):
        t = t.to(x0.device)
    x = _prepare_start(x0, n, torch.get_default_dtype(), t.device)
    n_paths, d = x.shape
    L = _diffusion_factor(D, d, x.dtype, x.device)
    T = t.shape[0]
    out = _path_buffer(x, T)
    tt = t.to(x.dtype)
    for k in range(T - 1):
        dt = float(t[k + 1] - t[k])
        z = torch.randn(n_paths, d, dtype=x.dtype, device=x.device, generator=generator)
        f = drift(tt[k], x)
        if f.shape != x.shape:
            raise ValueError(f"drift(t, x) must return shape {tuple(x.shape)}; got {tuple(f.shape)}")
        x = x + f * dt + math.sqrt(dt) * (z @ L.mT)
        out[:, k + 1] = x
    return out


def exponential_integrator(
    A,
    nonlinearity: Callable[[Tensor, Tensor], Tensor] | None,
    D,
    x0,
    times,
    b=None,
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Stochastic exponential Euler for ``dx = [-A (x - b) + f(t, x)] dt + sqrt(D) dW``.

    The linear part is integrated exactly and ``f`` is frozen over each step::

        x_{k+1} = b + Phi(dt) (x_k - b) + phi_1(dt) f(t_k, x_k) + N(0, Sigma(dt)),
        phi_1(dt) = int_0^dt expm(-A u) du   (from expm([[-A dt, I dt], [0, 0]])).

    With ``f = None`` (or constant) this is exact: zero bias at any step. Otherwise the error is O(dt)
    but set by the *smoothness of f*, not by the stiffness of A: the step is not limited by ``|A| dt < 2``
    as in Euler-Maruyama. Example of the bias (tested): with ``f(x) = -c x`` on a scalar, the chain's
    stationary variance is ``Var_xi / (1 - g^2)`` with ``g = e^{-a dt} - c (1 - e^{-a dt}) / a`` and
    ``Var_xi = D (1 - e^{-2 a dt}) / (2a)``, against the truth ``D / (2 (a + c))``.

    Args: as :class:`OUProcess` for A, D, b (A must be stable); f(t, x) with x (n, d) returns (n, d);
    x0 (d,) or (n, d); times (T,) strictly increasing. Returns (n, T, d) with ``[:, 0] = x0``.
    """
    proc = A if isinstance(A, OUProcess) else OUProcess(A, D, b)
    t = _check_times(times, proc.device)
    x = _prepare_start(proc._check_state(x0, "x0").to(proc.dtype), n, proc.dtype, proc.device)
    n_paths, d = x.shape
    T = t.shape[0]
    out = _path_buffer(x, T)
    if T == 1:
        return out
    reps, idx = _group_steps(t, _time_dtype(times))
    with torch.no_grad():
        Phi64, _, L64 = proc._transitions64(reps)
        A64 = proc._A64.detach()
        eye = torch.eye(d, dtype=torch.float64, device=proc.device)
        K = reps.shape[0]
        big = torch.zeros(K, 2 * d, 2 * d, dtype=torch.float64, device=proc.device)
        big[:, :d, :d] = -A64 * reps[:, None, None]
        big[:, :d, d:] = eye * reps[:, None, None]
        phi1 = torch.linalg.matrix_exp(big)[:, :d, d:].to(proc.dtype)
    Phi, L = Phi64.to(proc.dtype), L64.to(proc.dtype)
    b = proc.b.detach()
    tt = t.to(proc.dtype)
    for k in range(T - 1):
        j = int(idx[k])
        z = torch.randn(n_paths, d, dtype=proc.dtype, device=proc.device, generator=generator)
        y = (x - b) @ Phi[j].mT + z @ L[j].mT
        if nonlinearity is not None:
            f = nonlinearity(tt[k], x)
            if f.shape != x.shape:
                raise ValueError(f"nonlinearity(t, x) must return shape {tuple(x.shape)}; got {tuple(f.shape)}")
            y = y + f @ phi1[j].mT
        x = y + b
        out[:, k + 1] = x
    return out
