r"""Extended Kalman filter with a diagonal generalised Gauss-Newton (GGN) precision update.

Online Gaussian posterior ``N(mu, diag(sigma^2))`` for a model split like
:mod:`thermoai.bayes.laplace.diag_ggn` (``z = forward(theta, batch)``, ``outer_log_likelihood(z, batch)``
summed over the batch). For each batch, with the GGN diagonal and the gradient at the current mean
(:func:`thermoai.bayes.curvature.diag`):

.. math::

    \sigma_{pred}^2 = \sigma^2 + q^2, \qquad
    \sigma_{new}^{-2} = \sigma_{pred}^{-2} + \mathrm{lr}\; \mathrm{diag}\!\left(\textstyle\sum_i J_i^\top H_i J_i\right),
    \qquad \mu_{new} = \mu + \mathrm{lr}\; \sigma_{new}^2 \odot \nabla_\theta\, \mathrm{outer}(z(\mu)).

This is the dense GGN EKF (:mod:`~thermoai.bayes.ekf.dense_ggn`) with the precision's off-diagonal
dropped after every step. When the batch's GGN is diagonal (e.g. each sample of a linear-Gaussian model
observes one coordinate) nothing is dropped and, with ``lr = 1``, it is exactly the Kalman filter;
otherwise it ignores correlations between parameters (an over-confident mean-field approximation).
``O(B d)`` memory: no Jacobian is formed.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import curvature
from thermoai.bayes._common import transform
from thermoai.bayes.ekf import _common as E
from thermoai.bayes.ekf.diag_fisher import EKFDiagState, init, sample
from thermoai.types import ForwardFn, Schedule, TensorTree, Transform, check_non_negative

__all__ = ["build", "EKFDiagState", "init", "update", "sample"]


def build(
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    lr: Schedule = 1.0,
    transition_sd: float | TensorTree = 0.0,
    init_sds: float | TensorTree = 1.0,
) -> Transform:
    """Diagonal GGN EKF as a :class:`~thermoai.types.Transform`.

    Args:
        forward: ``forward(params, batch) -> (z, aux)``, ``z`` of shape ``(B, *out)``, un-reduced.
        outer_log_likelihood: ``outer_log_likelihood(z, batch) -> scalar``, summed over the batch (no aux).
        lr: ``>= 0`` or a schedule; 1 is the Kalman filter.
        transition_sd: ``>= 0`` random-walk sd per step (number or tree like params).
        init_sds: prior sd (``> 0``; number or tree like params).
    """
    check_non_negative(lr, "lr")
    E.check_positive_or_tree(transition_sd, "transition_sd", strictly=False)
    E.check_positive_or_tree(init_sds, "init_sds", strictly=True)
    return transform(
        init, update, fixed=dict(forward=forward, outer_log_likelihood=outer_log_likelihood), lr=lr,
        transition_sd=transition_sd, init_sds=init_sds,
    )


def update(
    state: EKFDiagState,
    batch: Any,
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    lr: Schedule = 1.0,
    transition_sd: float | TensorTree = 0.0,
    inplace: bool = False,
) -> tuple[EKFDiagState, Any]:
    """One predict-update step; returns ``(state, aux of forward)``. ``state.log_likelihood`` records the
    summed outer log likelihood of the batch at the old mean."""
    step_lr = E.resolve_lr(lr, state.step)
    g = curvature.diag(forward, outer_log_likelihood, state.params, batch)
    new = E.diag_step(state, T.leaves(g.ggn), T.leaves(g.grad), g.value, step_lr, transition_sd, inplace)
    return new, g.aux
