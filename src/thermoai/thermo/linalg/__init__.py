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

**Run length and cost.** Give ``burn_in_s``/``averaging_s`` or a tolerance ``tol``. Either way the run is a
:class:`~thermoai.thermo.planning.Plan` made from the spectrum of the ideal scaled matrix by
:mod:`thermoai.thermo.planning`, the same formulas :mod:`thermoai.thermo.cost` predicts with: the reported
device time and energy equal the prediction for the same device, spectrum and tolerance. The report also
carries the error estimated for the run actually made: exact finite-length formulas for solve and inv,
batch means for lyapunov and expm, the delta method for logdet.

**A tolerance the device cannot meet.** Programming errors (DAC rounding, mismatch) do not average away
with time. When their first-order model alone reaches ``tol``, each function warns with a
:class:`ToleranceWarning` naming the limiting non-ideality and the floor (``strict=True`` raises
ValueError instead).

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
``G``) averages ``e^{-W} >= 1`` with a heavy tail.

**Error mitigation** (arXiv 2401.16231): ``roundings=K`` programs the matrix ``K`` times with unbiased
stochastic rounding (``rounding="stochastic"``) and averages the ``K`` answers (the averaging time is
shared among them), so the first-order quantisation error falls as ``1/sqrt(K)`` down to its ``O(q^2)``
bias. Programming is :meth:`Device.program`: the caller's ``generator`` drives the rounding, while the
chip's mismatch pattern (fixed by ``device.seed``) is the same at every programming and is not averaged
away.

**Quantisation model** (first order, reported as ``error_breakdown["quantisation"]``): with ``V_ij`` the
variance of the programming error of entry ``(i, j)`` (``q^2/12`` for nearest rounding, ``f(1-f) q^2/K``
for ``K`` stochastic roundings, plus ``(mismatch G_ij)^2``), ``dx = -G^-1 dG x + G^-1 dc`` and
``dG^-1 = -G^-1 dG G^-1``; for symmetric programming (one component per pair) the pairs are correlated.

Every function returns ``Result(value, report)``; ``report`` is a :class:`Report`. Symmetric inputs are
programmed symmetrically (one physical coupling per cell pair). Reading adds the device's readout noise
and ADC rounding; second moments subtract their known bias (``readout_noise^2 + q_adc^2 / 12`` on the
diagonal).
"""

from thermoai.thermo.linalg._protocol import Report, Result, ToleranceWarning
from thermoai.thermo.linalg.expm import expm
from thermoai.thermo.linalg.inv import inv
from thermoai.thermo.linalg.logdet import logdet
from thermoai.thermo.linalg.lyapunov import lyapunov
from thermoai.thermo.linalg.solve import solve

__all__ = ["Report", "Result", "ToleranceWarning", "solve", "inv", "lyapunov", "expm", "logdet"]
