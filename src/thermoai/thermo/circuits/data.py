"""scikit-learn's bundled breast-cancer set as the circuits' logistic-regression examples use it."""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64


def breast_cancer(n_train: int = 400, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(X_train, y_train, X_test, y_test)``, float64: 569 rows shuffled by a seeded torch permutation, the
    first ``n_train`` for training; the 30 features standardised with the training rows' mean and sd; labels
    in {0, 1}. ValueError unless ``2 <= n_train < 569``."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    if not 2 <= n_train < X.shape[0]:
        raise ValueError(f"n_train must be in [2, {X.shape[0] - 1}]; got {n_train}")
    X, y = torch.tensor(X, dtype=F64), torch.tensor(y, dtype=F64)
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    mu, sd = X[:n_train].mean(0), X[:n_train].std(0)
    X = (X - mu) / sd
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]
