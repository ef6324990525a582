"""Stochastic-gradient MCMC as functional transforms over parameter trees.

Each module (``sgld``, ``sghmc``, ``sgnht``, ``baoa``, ``psgld``) offers ``build(log_posterior, lr, ...,
temperature=...) -> Transform``, a ``State`` NamedTuple, ``init(params)`` and
``update(state, batch, inplace=False, generator=None) -> (state, aux)``. ``temperature=0`` turns each into
an optimiser; with a batch-averaged log posterior, ``temperature=1/N`` targets the Bayesian posterior.
"""

from thermoai.bayes.sgmcmc import baoa, psgld, sghmc, sgld, sgnht

__all__ = ["sgld", "sghmc", "sgnht", "baoa", "psgld"]
