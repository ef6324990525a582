"""The preconditioned gradient equals the dense formulas: (G + l_G I)^-1 M (A + l_A I)^-1, the inverse of the
Kronecker product applied to vec M, and (A kron G + l I)^-1 vec M for eigen-basis damping; KL clipping,
inverse intervals, schedules and opt-outs do what they say."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thermoai.optim import KFAC


def _vec(M):  # stack columns
    return M.T.reshape(-1)


def _unvec(v, shape):
    return v.reshape(shape[1], shape[0]).T


class _Net(nn.Module):
    """A linear layer, a convolution and an embedding: every kind of layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 3)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4 + 3, 3)

    def forward(self, img, tok):
        h = torch.tanh(self.conv(img)).flatten(1)
        return self.fc(torch.cat([h, self.emb(tok).mean(1)], 1))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(12, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 7, (12, 5), generator=g),
            torch.randint(0, 3, (12,), generator=g))


def _grads_and_kfac(**kw):
    kw.setdefault("kl_clip", None)
    net = _Net().double()
    kfac = KFAC(net, **kw)
    img, tok, y = _batch()
    F.cross_entropy(net(img, tok), y).backward()
    M = {name: layer.helper.grad_matrix().clone() for name, layer in kfac._layers.items()}
    kfac.step()
    U = {name: layer.helper.grad_matrix() for name, layer in kfac._layers.items()}
    return kfac, M, U


def _dense(A, G, M, la, lg):
    Ad = torch.diag(A) if A.dim() == 1 else A
    K = torch.kron(Ad + la * torch.eye(Ad.shape[0], dtype=A.dtype), G + lg * torch.eye(G.shape[0], dtype=G.dtype))
    return _unvec(torch.linalg.solve(K, _vec(M)), M.shape)


@pytest.mark.parametrize("solver", ["eigh", "cholesky", "inverse"])
def test_factored_damping_each_equals_dense(solver):
    lam = 0.05
    kfac, M, U = _grads_and_kfac(damping=lam, damping_split="each", solver=solver)
    for name, (A, G) in kfac.factors().items():
        Ad = torch.diag(A) if A.dim() == 1 else A
        eye_a, eye_g = torch.eye(Ad.shape[0], dtype=A.dtype), torch.eye(G.shape[0], dtype=G.dtype)
        ref = torch.linalg.solve(G + lam * eye_g, M[name]) @ torch.linalg.inv(Ad + lam * eye_a)
        torch.testing.assert_close(U[name], ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(U[name], _dense(A, G, M[name], lam, lam), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("split", ["pi", "sqrt"])
def test_pi_and_sqrt_splits(split):
    lam = 0.03
    kfac, M, U = _grads_and_kfac(damping=lam, damping_split=split)
    for name, (A, G) in kfac.factors().items():
        ta = float(A.sum() if A.dim() == 1 else torch.trace(A)) / A.shape[0]
        pi = math.sqrt(ta / (float(torch.trace(G)) / G.shape[0])) if split == "pi" else 1.0
        assert pi != 1.0 or split == "sqrt"
        ref = _dense(A, G, M[name], pi * math.sqrt(lam), math.sqrt(lam) / pi)
        torch.testing.assert_close(U[name], ref, rtol=1e-9, atol=1e-12)


def test_eigen_basis_form_equals_dense_inverse_of_kronecker_plus_damping():
    lam = 0.02
    kfac, M, U = _grads_and_kfac(damping=lam, damping_form="exact")
    for name, (A, G) in kfac.factors().items():
        Ad = torch.diag(A) if A.dim() == 1 else A
        K = torch.kron(Ad, G) + lam * torch.eye(Ad.shape[0] * G.shape[0], dtype=A.dtype)
        ref = _unvec(torch.linalg.solve(K, _vec(M[name])), M[name].shape)
        torch.testing.assert_close(U[name], ref, rtol=1e-8, atol=1e-12)


def test_exact_form_needs_eigh():
    with pytest.raises(ValueError, match="eigh"):
        KFAC(_Net(), damping_form="exact", solver="cholesky")


def test_kl_clip_scales_every_layer():
    lr, c = 0.5, 1e-6
    _, M, U0 = _grads_and_kfac(damping=0.05)
    kfac, _, U = _grads_and_kfac(damping=0.05, kl_clip=c, lr=lr)
    vg = sum(float((U0[n] * M[n]).sum()) for n in U0) * lr**2
    nu = min(1.0, math.sqrt(c / vg))
    assert nu < 1  # the bound is active here
    for n in U:
        torch.testing.assert_close(U[n], nu * U0[n], rtol=1e-10, atol=1e-14)
    assert float(kfac.last_report.kl_scale) == pytest.approx(nu, rel=1e-10)


def test_kl_clip_is_on_by_default_with_unit_learning_rate():
    _, M, U0 = _grads_and_kfac(damping=0.05)
    kfac, _, U = _grads_and_kfac(damping=0.05, kl_clip=1e-3)
    vg = sum(float((U0[n] * M[n]).sum()) for n in U0)
    nu = min(1.0, math.sqrt(1e-3 / vg))
    assert nu < 1 and kfac.kl_clip == KFAC(_Net()).kl_clip == 1e-3
    for n in U:
        torch.testing.assert_close(U[n], nu * U0[n], rtol=1e-10, atol=1e-14)


def test_kl_clip_reads_the_optimizer_learning_rate():
    net = _Net().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    kfac = KFAC(net, damping=0.05, kl_clip=1e-6, optimizer=opt)
    _, _, U_ref = _grads_and_kfac(damping=0.05, kl_clip=1e-6, lr=0.5)
    img, tok, y = _batch()
    F.cross_entropy(net(img, tok), y).backward()
    kfac.step()
    for name, layer in kfac._layers.items():
        torch.testing.assert_close(layer.helper.grad_matrix(), U_ref[name], rtol=1e-10, atol=1e-14)


def test_inverse_interval_reuses_the_prepared_inverses_and_damping_schedule():
    """With inverse_update_interval=3 the second step applies the first step's inverses to new gradients;
    the damping schedule is evaluated at the inverse-update steps."""
    sched_calls = []

    def damping(step):
        sched_calls.append(int(step))
        return 0.1 / (1 + int(step))

    net = _Net().double()
    kfac = KFAC(net, damping=damping, damping_split="each", inverse_update_interval=3, factor_decay=0.5,
                kl_clip=None)
    A_at = []
    for step in range(4):
        img, tok, y = _batch(step)
        net.zero_grad()
        F.cross_entropy(net(img, tok), y).backward()
        M = kfac._layers["fc"].helper.grad_matrix().clone()
        A, G = (t.clone() for t in kfac.factors().get("fc", (None, None))) if step else (None, None)
        kfac.step()
        A_at.append({n: (a.clone(), g.clone()) for n, (a, g) in kfac.factors().items()})
        U = kfac._layers["fc"].helper.grad_matrix()
        if step in (0, 3):
            lam = 0.1 / (1 + step)
            fa, fg = A_at[step]["fc"]
        else:
            lam = 0.1
            fa, fg = A_at[0]["fc"]  # inverses prepared at step 0
        eye_a, eye_g = torch.eye(fa.shape[0], dtype=fa.dtype), torch.eye(fg.shape[0], dtype=fg.dtype)
        ref = torch.linalg.solve(fg + lam * eye_g, M) @ torch.linalg.inv(fa + lam * eye_a)
        torch.testing.assert_close(U, ref, rtol=1e-9, atol=1e-12)
    assert kfac.last_report.inverse_update and 3 in sched_calls


def test_skip_by_name_pattern_type_and_param_group():
    net = _Net().double()
    img, tok, y = _batch()
    F.cross_entropy(net(img, tok), y).backward()
    raw = {n: p.grad.clone() for n, p in net.named_parameters()}
    for kw in ({"skip": ["fc"]}, {"skip": ["f*"]}, {"skip": [nn.Linear]}, {"skip": [net.fc]}):
        kfac = KFAC(net, **kw)
        assert kfac.layers == ["emb", "conv"] and kfac.skipped["fc"] == "opted out"
        net.zero_grad()
        F.cross_entropy(net(img, tok), y).backward()
        kfac.step()
        assert torch.equal(net.fc.weight.grad, raw["fc.weight"]) and torch.equal(net.fc.bias.grad, raw["fc.bias"])
        assert not torch.equal(net.conv.weight.grad, raw["conv.weight"])
        kfac.remove()
    opt = torch.optim.SGD([{"params": list(net.conv.parameters()) + list(net.emb.parameters())},
                           {"params": net.fc.parameters(), "kfac": False}], lr=0.1)
    kfac = KFAC(net, optimizer=opt)
    assert kfac.layers == ["emb", "conv"]
    net.zero_grad()
    F.cross_entropy(net(img, tok), y).backward()
    kfac.step()
    assert torch.equal(net.fc.weight.grad, raw["fc.weight"])


def test_frozen_bias_drops_the_bias_column():
    net = nn.Sequential(nn.Linear(3, 2)).double()
    net[0].bias.requires_grad_(False)
    kfac = KFAC(net, damping=0.1, damping_split="each", kl_clip=None)
    x = torch.randn(5, 3, dtype=torch.float64)
    net(x).pow(2).sum().backward()
    M = net[0].weight.grad.clone()
    kfac.step()
    A, G = kfac.factors()["0"]
    assert A.shape == (3, 3)
    torch.testing.assert_close(net[0].weight.grad, _dense(A, G, M, 0.1, 0.1), rtol=1e-9, atol=1e-12)


def test_schedules_are_validated_when_evaluated():
    net = _Net().double()
    kfac = KFAC(net, damping=lambda step: -1.0)
    img, tok, y = _batch()
    F.cross_entropy(net(img, tok), y).backward()
    with pytest.raises(ValueError, match="damping"):
        kfac.step()
    for kw, match in (({"damping": -1}, "damping"), ({"factor_decay": 1.0}, "factor_decay"),
                      ({"inverse_update_interval": 0}, "inverse_update_interval"), ({"sharing": "mean"}, "sharing"),
                      ({"fisher": "true"}, "fisher"), ({"solver": "lu"}, "solver"), ({"damping_split": "x"}, "damping_split"),
                      ({"fisher": "sampled"}, "predictive")):
        with pytest.raises(ValueError, match=match):
            KFAC(_Net(), **kw)
    with pytest.raises(TypeError, match="model"):
        KFAC(lambda x: x)
