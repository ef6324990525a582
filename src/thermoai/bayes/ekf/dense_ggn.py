r"""Extended Kalman filter with a dense generalised Gauss-Newton (GGN) precision update.

Online Gaussian posterior ``N(mu, Sigma)`` over the ravelled parameters (``d`` elements) for a model split
like :mod:`thermoai.bayes.laplace.dense_ggn`: ``z = forward(theta, batch)`` (``(B, *out)``) and the batch
log likelihood ``outer_log_likelihood(z, batch)`` (summed over the batch). For each batch, linearising the
network at the current mean (``J_i = dz_i / dtheta`` at ``mu``, ``H_i = -d^2 outer / dz_i^2``,
:mod:`thermoai.bayes.curvature`):

.. math::

    \Sigma_{pred} = \Sigma + Q, \qquad
    \Sigma_{new}^{-1} = \Sigma_{pred}^{-1} + \mathrm{lr} \textstyle\sum_i J_i^\top H_i J_i, \qquad
    \mu_{new} = \mu + \mathrm{lr}\, \Sigma_{new} \nabla_\theta \,\mathrm{outer}(z(\mu)).

With ``lr = 1`` this is the extended Kalman filter in information form. For a linear-Gaussian model
(``z = X theta``, ``outer = -|y - z|^2 / (2 s^2)`` summed) the GGN is ``X^T X / s^2`` whatever the mean,
the gradient is ``X^T (y - X mu) / s^2``, and by the Woodbury identity the step *is* the Kalman filter
(``K = Sigma_pred X^T (X Sigma_pred X^T + s^2 I)^{-1}``, ``mu_new = mu + K (y - X mu)``,
``Sigma_new = (I - K X) Sigma_pred``): one pass over the data with ``transition_cov = 0`` gives the exact
posterior. ``lr`` tempers the likelihood (``lr = 1/T``). Compare the empirical-Fisher variant
(:mod:`~thermoai.bayes.ekf.dense_fisher`), which replaces ``H_i`` by the squared residual's outer product
and is not exact. Two ``O(d^3)`` Cholesky inversions per step; ``B x C x d`` Jacobians held at once.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import curvature
from thermoai.bayes._common import transform
from thermoai.bayes.ekf import _common as E
from thermoai.bayes.ekf.dense_fisher import EKFDenseState, init, sample
from thermoai.types import ForwardFn, Schedule, Transform, check_non_negative

__all__ = ["build", "EKFDenseState", "init", "update", "sample"]


def build(
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    lr: Schedule = 1.0,
    transition_cov: float | Tensor = 0.0,
    init_cov: float | Tensor = 1.0,
) -> Transform:
    """Dense GGN EKF as a :class:`~thermoai.types.Transform`.

    Args:
        forward: ``forward(params, batch) -> (z, aux)``, ``z`` of shape ``(B, *out)``, un-reduced.
        outer_log_likelihood: ``outer_log_likelihood(z, batch) -> scalar``, summed over the batch (no aux).
        lr: ``>= 0`` or a schedule; 1 is the Kalman filter (the likelihood at temperature ``1/lr``).
        transition_cov: random-walk covariance per step: number ``c`` (``c I``), ``(d,)`` diagonal or
            ``(d, d)`` PSD matrix.
        init_cov: prior covariance: number ``c > 0``, ``(d,)`` positive diagonal or ``(d, d)`` positive
            definite matrix (a Gaussian prior ``N(params, init_cov)`` at ``init``).
    """
    check_non_negative(lr, "lr")
    E.check_dense_hyper(init_cov, transition_cov)
    return transform(
        init, update, fixed=dict(forward=forward, outer_log_likelihood=outer_log_likelihood), lr=lr,
        transition_cov=transition_cov, init_cov=init_cov,
    )


def update(
    state: EKFDenseState,
    batch: Any,
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    lr: Schedule = 1.0,
    transition_cov: float | Tensor = 0.0,
    inplace: bool = False,
) -> tuple[EKFDenseState, Any]:
    """One predict-update step; returns ``(state, aux of forward)``. ``state.log_likelihood`` records the
    summed outer log likelihood of the batch at the old mean."""
    step_lr = E.resolve_lr(lr, state.step)
    g = curvature.dense(forward, outer_log_likelihood, state.params, batch)
    new = E.dense_step(state, g.ggn, T.tree_ravel(g.grad), g.value, step_lr, transition_cov, inplace)
    return new, g.aux
