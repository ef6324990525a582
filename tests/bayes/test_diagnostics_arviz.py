"""Rank-normalised R-hat, bulk/tail ESS and MCSE equal ArviZ's on fixed draws (to 1e-6, relative).

The reference numbers were computed once by ArviZ in the benchmark environment
(``tests/bayes/data/make_arviz_reference.py``) and committed with the draws; when ArviZ is importable the
same draws are also compared live.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from thermoai.bayes import diagnostics as D

REFERENCE = json.loads((Path(__file__).parent / "data" / "arviz_reference.json").read_text())
FUNCTIONS = {
    "rhat": D.rhat,
    "ess_bulk": D.ess_bulk,
    "ess_tail": D.ess_tail,
    "ess_mean": D.ess_mean,
    "ess_quantile_0.3": lambda x: D.ess_quantile(x, 0.3),
    "mcse_mean": D.mcse_mean,
    "mcse_sd": D.mcse_sd,
    "mcse_quantile_0.3": lambda x: D.mcse_quantile(x, 0.3),
}


@pytest.mark.parametrize("case", sorted(REFERENCE["cases"]))
@pytest.mark.parametrize("stat", sorted(FUNCTIONS))
def test_equals_arviz_on_fixed_draws(case, stat):
    draws = torch.tensor(REFERENCE["cases"][case]["draws"], dtype=torch.float64)
    expected = torch.tensor(REFERENCE["cases"][case]["arviz"][stat], dtype=torch.float64)
    got = FUNCTIONS[stat](draws)
    assert got.shape == (2,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)


def test_the_cases_exercise_what_they_are_named_for():
    """The fixture is not all easy cases: stuck and trending chains have R-hat well above 1.01 (the classic
    split R-hat agrees there), antithetic chains an ESS above the number of draws."""
    ref = {k: v["arviz"] for k, v in REFERENCE["cases"].items()}
    assert min(ref["stuck_chain"]["rhat"]) > 1.05 and min(ref["trend"]["rhat"]) > 1.05
    assert max(ref["ar1_0.6"]["rhat"]) < 1.05
    assert min(ref["antithetic"]["ess_bulk"]) > 300  # 2 x 150 draws
    stuck = torch.tensor(REFERENCE["cases"]["stuck_chain"]["draws"], dtype=torch.float64)
    assert (D.split_rhat(stuck) > 1.05).all()


def test_live_against_arviz_when_installed():
    az = pytest.importorskip("arviz")
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 80, 2)).cumsum(axis=1) * 0.3 + rng.standard_normal((3, 80, 2))
    ds = az.convert_to_dataset(x)
    t = torch.tensor(x)
    for ours, theirs in (
        (D.rhat(t), az.rhat(ds, method="rank")), (D.ess_bulk(t), az.ess(ds, method="bulk")),
        (D.ess_tail(t), az.ess(ds, method="tail")), (D.mcse_mean(t), az.mcse(ds, method="mean")),
        (D.mcse_sd(t), az.mcse(ds, method="sd")),
    ):
        np.testing.assert_allclose(ours.numpy(), np.asarray(theirs["x"]), rtol=1e-6)


def test_trees_shapes_and_errors():
    g = torch.Generator().manual_seed(0)
    tree = {"a": torch.randn(4, 50, 3, generator=g), "b": torch.randn(4, 50, 2, 2, generator=g)}
    out = D.ess_bulk(tree)
    assert out["a"].shape == (3,) and out["b"].shape == (2, 2)
    assert D.rhat(tree)["b"].shape == (2, 2)
    # independent draws: ESS near the number of draws (sd of the estimate ~ a few percent of 200)
    assert ((D.ess_bulk(tree["a"]) / 200 - 1).abs() < 0.35).all()
    with pytest.raises(ValueError, match="at least 2 chains"):
        D.rhat(torch.randn(1, 50, 2))
    with pytest.raises(ValueError, match="at least 4 draws"):
        D.ess_bulk(torch.randn(2, 3))
    with pytest.raises(ValueError, match="prob"):
        D.ess_quantile(torch.randn(2, 50), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        D.mcse_mean(torch.full((2, 50), math.nan))
    constant = torch.ones(2, 20, 1)
    assert float(D.ess_bulk(constant)) == 40.0  # ArviZ's convention: a constant has ESS = number of draws
