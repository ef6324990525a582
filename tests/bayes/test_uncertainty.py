"""The total/aleatoric/epistemic split of thermoai.bayes.uncertainty on constructed logits."""

from __future__ import annotations

import math

import pytest
import torch

from thermoai.bayes import predictive, uncertainty as U


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_agreeing_members_have_zero_epistemic_and_the_members_entropy():
    g = torch.Generator().manual_seed(0)
    one = torch.randn(4, 7, 11, generator=g) * 3
    logits = one.expand(5, 4, 7, 11)  # five identical members
    u = U.entropy_split(logits)
    p = torch.softmax(one.double(), -1)
    h = -(p * p.log()).sum(-1)
    assert torch.allclose(u.total, h, atol=1e-12) and torch.allclose(u.aleatoric, h, atol=1e-12)
    assert float(u.epistemic.abs().max()) < 1e-12
    assert u.total.shape == (4, 7)
    # a single draw has exactly zero epistemic uncertainty (so its AUROC is one of ties, 0.5)
    assert torch.equal(U.EntropySplit().add(one).result().epistemic, torch.zeros(4, 7, dtype=torch.float64))


def test_two_opposite_confident_members_split_exactly():
    # member 1: p = (1 - e, e); member 2: p = (e, 1 - e), e = sigmoid(-a). Mean (1/2, 1/2): total log 2,
    # aleatoric H(e) for both, epistemic log 2 - H(e).
    a = 4.0
    logits = torch.tensor([[[a / 2, -a / 2]], [[-a / 2, a / 2]]], dtype=torch.float64)
    e = 1.0 / (1.0 + math.exp(a))
    u = U.entropy_split(logits)
    assert float(u.total) == pytest.approx(math.log(2), abs=1e-12)
    assert float(u.aleatoric) == pytest.approx(binary_entropy(e), abs=1e-12)
    assert float(u.epistemic) == pytest.approx(math.log(2) - binary_entropy(e), abs=1e-12)


def test_disjoint_one_hot_members_reach_the_log_s_bound():
    # S members each certain of a different class: aleatoric 0, epistemic = total = log S
    S = 4
    logits = torch.full((S, 1, S), -1e4, dtype=torch.float64)
    for s in range(S):
        logits[s, 0, s] = 0.0
    u = U.entropy_split(logits)
    assert float(u.aleatoric) == pytest.approx(0.0, abs=1e-12)
    assert float(u.epistemic) == pytest.approx(U.max_epistemic(S), abs=1e-12)


def test_agrees_with_predictive_classification_uncertainty_and_bounds():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, 5, 9, generator=g, dtype=torch.float64) * 4
    u = U.entropy_split(logits)
    c = predictive.classification_uncertainty(logits)
    for name in ("total", "aleatoric", "epistemic"):
        assert torch.allclose(getattr(u, name), getattr(c, name), atol=1e-10), name
    assert torch.allclose(u.total, u.aleatoric + u.epistemic, atol=1e-12)
    assert bool((u.epistemic >= 0).all()) and bool((u.epistemic <= math.log(6) + 1e-12).all())
    # the sample dimension may sit elsewhere
    moved = U.entropy_split(logits.movedim(0, 2), dim=2)
    assert torch.allclose(moved.epistemic, u.epistemic, atol=1e-12)


def test_streaming_equals_one_shot_and_log_predictive_of_targets():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 2, 4, 6, generator=g)
    targets = torch.randint(0, 6, (2, 4), generator=g)
    targets[1, 3] = -1  # padding
    acc = U.EntropySplit(targets)
    for s in range(3):
        acc.add(logits[s])
    streamed = acc.result()
    shot = U.entropy_split(logits, targets=targets)
    assert torch.equal(streamed.epistemic, shot.epistemic)
    mean_p = torch.softmax(logits.double(), -1).mean(0)
    expected = mean_p.gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1).log()
    assert torch.allclose(streamed.log_predictive[0], expected[0], atol=1e-12)
    assert torch.allclose(streamed.log_predictive[1, :3], expected[1, :3], atol=1e-12)
    assert float(streamed.log_predictive[1, 3]) == 0.0


def test_sequence_mean_uses_only_masked_tokens():
    values = torch.tensor([[1.0, 2.0, 100.0], [4.0, 6.0, 8.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.allclose(U.sequence_mean(values, mask), torch.tensor([1.5, 6.0]))
    assert torch.allclose(U.sequence_mean(values), values.mean(-1))


def test_bad_input_is_refused_with_the_argument_named():
    logits = torch.randn(2, 3, 4)
    bad = logits.clone()
    bad[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        U.entropy_split(bad)
    inf = logits.clone()
    inf[0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="draw 0"):
        U.entropy_split(inf)
    with pytest.raises(ValueError, match="class"):
        U.entropy_split(logits, dim=-1)
    with pytest.raises(ValueError, match="dim"):
        U.entropy_split(logits, dim=5)
    with pytest.raises(ValueError, match="sample and a class"):
        U.entropy_split(torch.randn(4))
    with pytest.raises(TypeError, match="logits"):
        U.EntropySplit().add(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="logits"):
        U.entropy_split([[0.0, 1.0]])
    with pytest.raises(ValueError, match="earlier draws"):
        U.EntropySplit().add(torch.zeros(2, 3)).add(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="targets"):
        U.EntropySplit(torch.zeros(5, dtype=torch.long)).add(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="targets"):
        U.EntropySplit(torch.zeros(2))
    with pytest.raises(ValueError, match="at least one draw"):
        U.EntropySplit().result()
    with pytest.raises(ValueError, match="no token of sequences \\[1\\]"):
        U.sequence_mean(torch.ones(2, 3), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="mask"):
        U.sequence_mean(torch.ones(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_draws"):
        U.max_epistemic(0)


def test_float32_softmax_is_within_its_rounding_of_float64():
    # a vocabulary-sized class dimension, where float32 saves most; the split to ~1e-6 nats
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 5, 4096, generator=g) * 4
    exact = U.entropy_split(logits)
    fast = U.entropy_split(logits, dtype=torch.float32)
    assert fast.total.dtype == torch.float64
    for name in ("total", "aleatoric", "epistemic"):
        assert torch.allclose(getattr(fast, name), getattr(exact, name), atol=1e-5), name
    agree = U.entropy_split(logits[:1].expand(4, 2, 5, 4096), dtype=torch.float32)
    assert float(agree.epistemic.max()) < 1e-5
    with pytest.raises(ValueError, match="dtype"):
        U.EntropySplit(dtype=torch.float16)


def test_minus_infinity_and_nan_in_any_class_are_refused():
    for value in (float("-inf"), float("nan")):
        logits = torch.randn(2, 3, 6)
        logits[1, 2, 4] = value
        with pytest.raises(ValueError, match="draw 1 have NaN or infinite"):
            U.entropy_split(logits, dtype=torch.float32)
