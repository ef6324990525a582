"""Scalable Bayesian learning as functional transforms over parameter trees.

Every method is ``build(log_posterior, **hyper) -> Transform(init, update)``; see ``docs/bayes.md``.

Subpackages and modules:

- :mod:`~thermoai.bayes.sgmcmc`: stochastic-gradient MCMC (SGLD, SGHMC, SGNHT, BAOA, ...).
- :mod:`~thermoai.bayes.vi`: variational inference (``diag``, ``dense``) with sticking-the-landing gradients.
- :mod:`~thermoai.bayes.laplace`: Laplace approximations (diagonal/dense empirical Fisher and GGN, dense Hessian).
- :mod:`~thermoai.bayes.ekf`: extended Kalman filters (``diag_fisher``, ``dense_fisher``; ``diag_ggn``,
  ``dense_ggn``: the Kalman filter on a linear-Gaussian model).
- :mod:`~thermoai.bayes.curvature`: the GGN curvature shared by Laplace and the EKFs.
- :mod:`~thermoai.bayes.ensemble`: tempered (asymptotically unbiased) deep ensembles.
- :mod:`~thermoai.bayes.diagnostics`: MCMC diagnostics (rank-normalised R-hat, bulk/tail ESS, MCSE).
- :mod:`~thermoai.bayes.sbc`: simulation-based calibration of any method (rank histograms, chi-square).
- :mod:`~thermoai.bayes.state_io`: ``save_state`` / ``load_state`` of any method's state (safetensors).
- :mod:`~thermoai.bayes.predictive`: posterior-predictive summaries and the linearised predictive.
- :mod:`~thermoai.bayes.module`: ``nn.Module`` as a pure function; Bayes over a subset of parameters.
- :mod:`~thermoai.bayes.adam`: the functional Adam used by VI.
- :mod:`~thermoai.bayes.log_prob`: validated evaluation of user log densities.
"""

from thermoai.bayes import adam, log_prob, module, predictive
from thermoai.bayes import ekf, laplace, vi
from thermoai.bayes import sgmcmc
from thermoai.bayes import curvature, diagnostics, ensemble, state_io
from thermoai.bayes import sbc
from thermoai.bayes.state_io import load_state, save_state

__all__ = [
    "sgmcmc",
    "vi",
    "laplace",
    "ekf",
    "ensemble",
    "diagnostics",
    "curvature",
    "state_io",
    "sbc",
    "save_state",
    "load_state",
    "predictive",
    "module",
    "adam",
    "log_prob",
]
