"""The SBC experiment: the quick run writes a complete report in a couple of minutes, the verdict logic
says what the numbers say, the models simulate what they claim, and the same seed gives the same ranks.

Whether each method is calibrated is the experiment's result (docs/results/sbc.md), not a test; the
statistical behaviour of thermoai.bayes.sbc itself is tested in tests/bayes/test_sbc.py.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from thermoai.bayes import sbc as S
from thermoai.experiments import sbc as E


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sbc")
    return out, E.run(out, quick=True, progress=False)


def test_quick_run_writes_a_complete_report(quick_run):
    out, result = quick_run
    assert result["seconds"] < 300  # "a couple of minutes" on 2 cores (measured 40-110 s on a busy machine)
    on_disk = json.loads((out / "sbc.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(result["results"]))
    assert (out / "sbc.png").stat().st_size > 20_000
    md = (out / "sbc.md").read_text()
    for model in E.MODELS:
        assert set(result["results"][model]) == set(E.METHODS)
        for m, r in result["results"][model].items():
            assert f"| {E.LABELS[m]} |" in md
            assert len(r["p_values"]) == 2 and all(0.0 <= p <= 1.0 for p in r["p_values"])
            R = E.QUICK.n_replications_cheap if m in E.CHEAP else E.QUICK.n_replications
            assert r["n_replications"] == R and sum(r["counts"][0]) == R
    assert len(result["verdicts"]) == 2 * len(E.METHODS)
    assert all(v["verdict"] in ("reproduced", "not reproduced") and v["reason"] for v in result["verdicts"])
    assert "Which methods are calibrated, and why" in md
    head = E.headline(on_disk)
    assert len(head["summary"]["rows"]) == len(E.METHODS) and head["verdicts"] == result["verdicts"]


def test_exact_methods_pass_and_broken_ones_fail_even_in_the_quick_run(quick_run):
    """The strongest effects show at quick sizes: the Kalman filter (dense GGN EKF) and dense Laplace are
    exact on the linear model; the empirical-Fisher EKF is far off."""
    _, result = quick_run
    lin = result["results"]["linear"]
    assert lin["ekf_dense_ggn"]["p_min_bonferroni"] >= 0.01 and lin["laplace_dense"]["p_min_bonferroni"] >= 0.01
    assert lin["ekf_dense_fisher"]["p_min_bonferroni"] < 1e-4 and lin["ekf_diag_fisher"]["p_min_bonferroni"] < 1e-4


def test_verdict_and_shape_logic():
    ranks = torch.cat([torch.zeros(40, 2, dtype=torch.int64), torch.full((40, 2), 9), torch.full((20, 2), 5)])
    edges, counts, expected, chi2, p = S.uniformity_test(ranks, 9, 5)
    u_shaped = S.SBCResult(ranks, 9, edges, counts, expected, chi2, p, ["w[0]", "w[1]"])
    assert "too narrow" in E.shape_of(u_shaped)
    hump = torch.full((100, 2), 5)
    assert "too wide" in E.shape_of(S.SBCResult(hump, 9, *S.uniformity_test(hump, 9, 5), ["a", "b"]))
    low = torch.randint(0, 4, (100, 2), generator=torch.Generator().manual_seed(0))
    assert "biased high" in E.shape_of(S.SBCResult(low, 9, *S.uniformity_test(low, 9, 5), ["a", "b"]))
    entry = {**u_shaped.to_dict(), "shape": E.shape_of(u_shaped)}
    v = E.verdict("vi_diag", "linear", entry)  # expected miscalibrated, and it is
    assert v["verdict"] == "reproduced" and "not calibrated" in v["claim"] and "too narrow" in v["reason"]
    v = E.verdict("laplace_dense", "linear", entry)  # expected calibrated, but it is not
    assert v["verdict"] == "not reproduced" and "expected calibrated" in v["reason"]
    flat = torch.arange(100).remainder(10)[:, None].expand(100, 2)
    ok = {**S.SBCResult(flat, 9, *S.uniformity_test(flat, 9, 5), ["a", "b"]).to_dict(), "shape": "-"}
    assert E.verdict("vi_dense", "logistic", ok)["verdict"] == "not reproduced"  # not resolved by SBC
    assert E.verdict("sgld", "logistic", ok)["verdict"] == "reproduced"


def test_models_simulate_what_they_claim():
    cfg = E.Config()
    g = torch.Generator().manual_seed(0)
    lin = E.linear_spec(cfg).model
    x, y = lin.simulate({"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}, g)
    assert x.shape == (cfg.n_linear, 2) and y.shape == (cfg.n_linear,)
    xs = torch.cat([lin.simulate({"w": torch.zeros(2, dtype=torch.float64)}, g)[0] for _ in range(500)])
    assert abs(float(torch.corrcoef(xs.T)[0, 1]) - cfg.rho) < 5 * (1 - cfg.rho**2) / len(xs) ** 0.5
    x, y = E.logistic_spec(cfg).model.simulate({"w": torch.tensor([0.0, 50.0], dtype=torch.float64)}, g)
    assert torch.equal(x[:, 0], torch.ones(cfg.n_logistic)) and torch.equal(y, (x[:, 1] > 0).double())
    # Newton's MAP: the gradient of the log posterior vanishes there
    spec = E.logistic_spec(cfg)
    thetas, data = S.simulate(spec.model, 4, g)
    mode = E.newton_map(spec, data, cfg.newton_steps)
    for r in range(4):
        grad = torch.func.grad(lambda w: spec.model.log_posterior({"w": w}, (data[0][r], data[1][r]))[0])(mode["w"][r])
        assert grad.abs().max() < 1e-9


def test_same_seed_same_ranks_and_unknown_methods(tmp_path):
    cfg = replace(E.REPRODUCE["smoke"]["config"], methods=("ekf_dense_ggn", "sgld"))
    a = E.run(tmp_path / "a", config=cfg, progress=False)
    b = E.run(tmp_path / "b", config=cfg, progress=False)
    assert a["results"]["linear"]["sgld"]["counts"] == b["results"]["linear"]["sgld"]["counts"]
    assert a["results"]["logistic"]["ekf_dense_ggn"]["chi2"] == b["results"]["logistic"]["ekf_dense_ggn"]["chi2"]
    with pytest.raises(ValueError, match="unknown method 'nuts'"):
        E.run(tmp_path / "c", config=replace(cfg, methods=("nuts",)), progress=False)
