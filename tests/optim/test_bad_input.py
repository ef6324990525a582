"""Bad input: unsupported modules skipped with one warning naming them; non-finite factors or gradients raise
naming the layer and change nothing; zero damping with a singular factor is refused."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thermoai.optim import KFAC


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.grouped = nn.Conv1d(8, 8, 1, groups=2)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.norm(self.fc(x))  # (N, T, 8)
        h = self.grouped(h.transpose(1, 2)).transpose(1, 2)
        h, _ = self.attn(h, h, h)
        return self.out(h.mean(1))


def test_unsupported_modules_one_warning_naming_them():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kfac = KFAC(_Mixed())
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1
    for name in ("'norm'", "'grouped'", "'attn'", "'attn.out_proj'"):
        assert name in msgs[0]
    assert kfac.layers == ["fc", "out"]
    # and training runs without further warnings, preconditioning only fc and out
    model = kfac.model
    x = torch.randn(3, 5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.cross_entropy(model(x), torch.tensor([0, 1, 0])).backward()
        raw = model.norm.weight.grad.clone()
        kfac.step()
    assert not [w for w in caught if issubclass(w.category, UserWarning)]
    assert torch.equal(model.norm.weight.grad, raw)


def test_functionally_used_linear_is_dropped_with_one_warning():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) + F.linear(x, self.b.weight, self.b.bias)  # b's forward never runs

    m = Tied()
    kfac = KFAC(m)
    with pytest.warns(UserWarning, match="'b'"):
        m(torch.randn(4, 3)).sum().backward()
        kfac.step()
    assert kfac.layers == ["a"] and "b" in kfac.skipped


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.mark.parametrize("where", ["gradient", "factor"])
def test_non_finite_raises_naming_the_layer_and_changes_nothing(where):
    model = _mlp()
    kfac = KFAC(model)
    x = torch.randn(6, 3)
    model(x).pow(2).mean().backward()
    kfac.step()  # a healthy first step
    A_before = kfac.factors()["0"][0].clone()
    model.zero_grad()
    if where == "gradient":
        model(x).pow(2).mean().backward()
        model[2].weight.grad[0, 0] = float("nan")
        match = r"non-finite gradient \(NaN\) in layer '2'"
    else:
        with torch.no_grad():
            model[0].weight[:, 0] = 0.0  # the huge input feature does not reach the output...
        x_bad = x.clone()
        x_bad[0, 0] = 1e30  # ... but its square overflows A in float32
        model(x_bad).pow(2).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        match = r"non-finite input factor A \(Inf\) in layer '0'"
    grads = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=match):
        kfac.step()
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(torch.isnan(p.grad), torch.isnan(g)) and torch.equal(p.grad.nan_to_num(), g.nan_to_num())
    assert torch.equal(kfac.factors()["0"][0], A_before)
    assert kfac.steps == 1


def test_zero_damping_with_a_singular_factor_is_refused():
    model = _mlp().double()
    kfac = KFAC(model, damping=0.0)
    model(torch.randn(2, 3, dtype=torch.float64)).pow(2).mean().backward()  # batch 2 < 4: A is singular
    with pytest.raises(ValueError, match="damping is 0 and the factor A of layer '0' is singular"):
        kfac.step()


def test_zero_damping_with_full_rank_factors_is_accepted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2)).double()
    kfac = KFAC(model, damping=0.0, damping_split="each", kl_clip=None)
    x = torch.randn(50, 2, dtype=torch.float64)
    y = torch.randn(50, 2, dtype=torch.float64)
    (model(x) - y).pow(2).sum(1).mean().backward()
    M = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], 1).clone()
    kfac.step()
    A, G = kfac.factors()["0"]
    ref = torch.linalg.solve(G, M) @ torch.linalg.inv(A)
    U = torch.cat([model[0].weight.grad, model[0].bias.grad[:, None]], 1)
    torch.testing.assert_close(U, ref, rtol=1e-8, atol=1e-12)


def test_forward_before_creating_kfac_is_explained():
    model = _mlp()
    model(torch.randn(4, 3)).sum().backward()
    kfac = KFAC(model)
    with pytest.raises(ValueError, match="run the forward pass"):
        kfac.step()


def test_finite_check_fast_path_and_its_fallback():
    """The one-sync check: a NaN or an Inf anywhere is caught (also +Inf and -Inf that cancel in a sum), and
    finite entries whose float32 sum overflows are still accepted (the element-wise fallback)."""
    from thermoai.optim.kfac import _all_finite

    ok = torch.randn(5, 7)
    assert _all_finite([ok, ok.double()])
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = ok.clone()
        t[2, 3] = bad
        assert not _all_finite([ok, t])
    both = ok.clone()
    both[0, 0], both[1, 1] = float("inf"), -float("inf")
    assert not _all_finite([both])
    huge = torch.full((4, 4), 3e38)  # finite, but the sum is Inf in float32
    assert not torch.isfinite(huge.sum()) and _all_finite([huge, ok])
