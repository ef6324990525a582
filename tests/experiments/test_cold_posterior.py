"""The cold-posterior experiment: its pieces (metrics, data, model) and a quick end-to-end run.

The quick run checks that the outputs exist and are sane (accuracies far above chance, finite metrics,
every method in the table); whether the paper's findings hold is the experiment's result, not a test.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from thermoai.experiments import cold_posterior as cp


# ------------------------------------------------------------------------------------------------ metrics


def test_nll_and_accuracy_match_hand_computation():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    y = torch.tensor([0, 1, 1])
    log_probs = probs.log()
    assert cp.accuracy(log_probs, y) == pytest.approx(1 / 3)
    assert cp.nll(log_probs, y) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.4)) / 3)


def test_ece_hand_computed_bins():
    # confidences 0.7 (correct), 0.6 (wrong), 0.5 (wrong) fall in three different 1/15-wide bins:
    # ECE = (|1-0.7| + |0-0.6| + |0-0.5|) / 3
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    y = torch.tensor([0, 1, 1])
    assert cp.expected_calibration_error(probs.log(), y) == pytest.approx((0.3 + 0.6 + 0.5) / 3)
    # two examples in the same bin (0.9, 0.92 -> bin (0.867, 0.933]) pool their accuracy and confidence
    probs = torch.tensor([[0.9, 0.1], [0.08, 0.92]])
    y = torch.tensor([0, 0])
    assert cp.expected_calibration_error(probs.log(), y) == pytest.approx(abs(0.5 - 0.91))


def test_ece_is_zero_for_a_calibrated_predictor():
    # 10 examples at confidence 0.8 of which 8 are right: perfectly calibrated
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert cp.expected_calibration_error(probs.log(), y) == pytest.approx(0.0, abs=1e-12)


def test_log_predictive_is_log_of_mean_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 3, generator=g) * 10
    expected = torch.softmax(logits.double(), -1).mean(0).log()
    assert torch.allclose(cp.log_predictive_from_logits(logits).double(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="samples, n, classes"):
        cp.log_predictive_from_logits(logits[0])


def test_evaluate_rejects_non_finite_predictive():
    lp = torch.full((2, 3), -math.log(3.0))
    lp[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        cp.evaluate(lp, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cp.evaluate(torch.zeros(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="n_bins"):
        cp.expected_calibration_error(torch.zeros(2, 3), torch.tensor([0, 1]), n_bins=0)


# ------------------------------------------------------------------------------------------- data, model


def test_digits_split_is_fixed_standardised_and_stratified():
    a = cp.load_digits_split(0.3, seed=0)
    b = cp.load_digits_split(0.3, seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1257, 64) and a.x_test.shape == (540, 64) and a.n_classes == 10
    assert a.x_train.mean(0).abs().max() < 1e-5
    sd = a.x_train.std(0, unbiased=False)
    assert torch.all(((sd - 1).abs() < 1e-4) | (sd < 1e-6))  # constant pixels stay 0
    counts = torch.bincount(a.y_test, minlength=10)
    assert counts.min() >= 50 and counts.max() <= 56  # stratified: ~54 per class
    with pytest.raises(ValueError, match="test_fraction"):
        cp.load_digits_split(1.5)


def test_minibatches_cover_each_epoch_without_repeats():
    stream = cp.minibatches(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(stream) for _ in range(3)])  # 3 full batches of 3; the short one is dropped
    assert epoch.unique().numel() == 9
    with pytest.raises(ValueError, match="batch_size"):
        next(cp.minibatches(3, 4, torch.Generator()))


def test_log_posterior_is_batch_mean_plus_prior_over_n():
    g = torch.Generator().manual_seed(1)
    params = cp.init_mlp((4, 5, 3), g)
    x, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    lp = cp.make_log_posterior(n_train=50, prior_sd=0.5)
    value, _ = lp(params, (x, y))
    log_lik = torch.log_softmax(cp.mlp(params, x), -1)[torch.arange(6), y].mean()
    log_prior = -0.5 * sum((p**2).sum() for p in params.values()) / 0.25
    assert value.item() == pytest.approx((log_lik + log_prior / 50).item(), rel=1e-6)


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cold_posterior")
    return out, cp.run(out, quick=True)


def test_quick_run_writes_sane_outputs(quick_run):
    out, result = quick_run
    md = (out / "cold_posterior.md").read_text()
    assert (out / "cold_posterior.png").stat().st_size > 10_000
    on_disk = json.loads((out / "cold_posterior.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(result["summary"]))
    for method in cp.METHODS:
        assert f"| {cp.LABELS[method]} |" in md
        keys = result["summary"][method]
        expected = {"0"} if method in ("map", "deep_ensemble") else {cp.t_key(t) for t in cp.QUICK.temperatures}
        assert set(keys) == expected
        for key, m in keys.items():
            # 10 classes: chance is 0.1; even the quick settings reach far above it
            assert m["accuracy"][0] > 0.6, (method, key, m)
            assert 0 < m["nll"][0] < math.log(10), (method, key, m)
            assert 0 <= m["ece"][0] < 0.5 and math.isfinite(m["ece"][1]), (method, key, m)
    assert "Finding 1" in md and "Finding 2" in md


def test_quick_run_is_reproducible(quick_run, tmp_path):
    # same seeds -> the same numbers (randomness explicit); a one-seed, one-temperature config keeps it short
    _, first = quick_run
    cfg = dataclasses.replace(cp.QUICK, seeds=(0,), temperatures=(cp.QUICK.temperatures[0],))
    again = cp.run(tmp_path, config=cfg)
    key = cp.t_key(cp.QUICK.temperatures[0])
    for method in cp.METHODS:
        k = "0" if method in ("map", "deep_ensemble") else key
        assert again["per_seed"][0][method][k] == first["per_seed"][0][method][k], method


def test_run_uses_one_thread_and_restores_the_count(monkeypatch, tmp_path):
    """The sweep runs on one torch thread (tiny model) and puts the caller's count back, also after an error."""
    seen = []

    def fake_seed(cfg, data, seed, bar=None):
        seen.append(torch.get_num_threads())
        raise RuntimeError("the seed failed")

    monkeypatch.setattr(cp, "run_seed", fake_seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with pytest.raises(RuntimeError, match="the seed failed"):
            cp.run(tmp_path, quick=True)
        assert seen == [1] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
