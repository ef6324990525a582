"""Laplace approximations at a mode: diagonal/dense empirical Fisher, diagonal/dense GGN, dense Hessian."""

from thermoai.bayes.laplace import dense_fisher, dense_ggn, dense_hessian, diag_fisher, diag_ggn
from thermoai.bayes.laplace._common import add_prior_precision

__all__ = ["diag_fisher", "diag_ggn", "dense_fisher", "dense_ggn", "dense_hessian", "add_prior_precision"]
