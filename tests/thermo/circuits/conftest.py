"""Session fixtures of the circuit tests: the breast-cancer split and HMC reference posteriors (in memory
only; nothing is cached on disk)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import logistic_reference as R  # noqa: E402

from thermoai.thermo.circuits.data import breast_cancer


@pytest.fixture(scope="session")
def cancer():
    return breast_cancer()


@pytest.fixture(scope="session")
def reference(cancer):
    """HMC draws (64 chains x 1000) of the posterior (T = 1) and of p^(1/2) (T = 2), prior N(0, I)."""
    X, y, _, _ = cancer
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for T in (1.0, 2.0):
        s, acc = R.hmc(X, y, prior_var=1.0, T=T, chains=64, warmup=200, iters=1000, eps=0.5, seed=int(T))
        assert acc > 0.6
        out[T] = s
    torch.set_num_threads(previous)
    return out
