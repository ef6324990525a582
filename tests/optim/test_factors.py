"""K-FAC's factors equal E[a a^T] and E[g g^T] computed explicitly (per-example gradients by autograd, patches
by loops), for Linear, Conv2d and Embedding layers, with and without weight sharing, in both sharing modes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thermoai.optim import KFAC


def _aug(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1)


def _per_example_grads(outputs, loss_sum):
    """d l_n / d s for each recorded layer output s (the examples are independent, so the gradient of the
    sum of the per-example losses is the per-example gradient)."""
    return torch.autograd.grad(loss_sum, outputs)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


@pytest.mark.parametrize("sharing", ["expand", "reduce"])
@pytest.mark.parametrize("seq", [None, 4])
def test_linear_factors(sharing, seq):
    model = _mlp()
    kfac = KFAC(model, sharing=sharing)
    N = 6
    g = torch.Generator().manual_seed(1)
    shape = (N, 5) if seq is None else (N, seq, 5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.randn(*shape[:-1], 3, generator=g, dtype=torch.float64)

    def per_example_loss(out):  # l_n = sum over positions of half the squared error
        return 0.5 * ((out - y) ** 2).reshape(N, -1).sum(1)

    loss = per_example_loss(model(x)).mean()
    loss.backward()
    kfac.step()
    factors = kfac.factors()

    # explicit reference
    lin1, lin2 = model[0], model[2]
    s1 = x @ lin1.weight.T + lin1.bias
    h = torch.tanh(s1)
    s2 = h @ lin2.weight.T + lin2.bias
    g1, g2 = _per_example_grads([s1, s2], per_example_loss(s2).sum())
    for name, a, gr in (("0", x, g1), ("2", h.detach(), g2)):
        ab = _aug(a)
        if seq is None:
            A = torch.einsum("ni,nj->ij", ab, ab) / N
            G = torch.einsum("ni,nj->ij", gr, gr) / N
        elif sharing == "expand":
            A = torch.einsum("nti,ntj->ij", ab, ab) / (N * seq)
            G = torch.einsum("nti,ntj->ij", gr, gr) / N
        else:
            m = ab.mean(1)
            s = gr.sum(1)
            A = m.T @ m / N
            G = s.T @ s / N
        torch.testing.assert_close(factors[name][0], A, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(factors[name][1], G, rtol=1e-12, atol=1e-12)


def _patches_by_loops(x, kernel, stride, pad, mode):
    """Rows (N, L, C kh kw) of input patches, in the order of weight.reshape(out, -1)."""
    xp = F.pad(x, (pad, pad, pad, pad), mode="constant" if mode == "zeros" else mode)
    N, C, H, W = xp.shape
    rows = []
    for i in range(0, H - kernel + 1, stride):
        for j in range(0, W - kernel + 1, stride):
            rows.append(xp[:, :, i:i + kernel, j:j + kernel].reshape(N, -1))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("sharing", ["expand", "reduce"])
@pytest.mark.parametrize("stride,pad,mode", [(2, 1, "zeros"), (1, 1, "reflect")])
def test_conv2d_factors(sharing, stride, pad, mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=stride, padding=pad, padding_mode=mode).double()
    head = nn.Linear(3, 2).double()
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    kfac = KFAC(model, sharing=sharing)
    N = 5
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, 2, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (N,), generator=g)
    F.cross_entropy(model(x), y).backward()
    kfac.step()
    A_k, G_k = kfac.factors()["0"]

    s = conv(x)
    out = head(F.adaptive_avg_pool2d(F.relu(s), 1).flatten(1))
    (gs,) = _per_example_grads([s], F.cross_entropy(out, y, reduction="sum"))
    P = _aug(_patches_by_loops(x, 3, stride, pad, mode))  # (N, L, C k k + 1)
    go = gs.permute(0, 2, 3, 1).reshape(N, -1, 3)  # (N, L, C_out)
    L = P.shape[1]
    assert go.shape[1] == L
    if sharing == "expand":
        A = torch.einsum("nli,nlj->ij", P, P) / (N * L)
        G = torch.einsum("nli,nlj->ij", go, go) / N
    else:
        m, sg = P.mean(1), go.sum(1)
        A, G = m.T @ m / N, sg.T @ sg / N
    torch.testing.assert_close(A_k, A, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(G_k, G, rtol=1e-12, atol=1e-12)


def test_embedding_factors():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4).double()
    head = nn.Linear(4, 3).double()
    kfac = KFAC(nn.ModuleDict({"emb": emb, "head": head}))
    N, T = 4, 5
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 10, (N, T), generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    e = emb(idx)
    F.cross_entropy(head(e.mean(1)), y).backward()
    kfac.step()
    A_k, G_k = kfac.factors()["emb"]
    counts = torch.bincount(idx.reshape(-1), minlength=10).double()
    torch.testing.assert_close(A_k, counts / (N * T), rtol=0, atol=1e-15)
    e2 = emb(idx)
    (ge,) = _per_example_grads([e2], F.cross_entropy(head(e2.mean(1)), y, reduction="sum"))
    G = torch.einsum("nti,ntj->ij", ge, ge) / N
    torch.testing.assert_close(G_k, G, rtol=1e-12, atol=1e-12)


def test_running_average_and_factor_interval():
    model = _mlp()
    kfac = KFAC(model, factor_decay=0.8, factor_update_interval=2)
    g = torch.Generator().manual_seed(4)
    batch = []
    for step in range(3):
        x = torch.randn(8, 5, generator=g, dtype=torch.float64)
        model.zero_grad()
        model(x).pow(2).sum(1).mean().backward()
        kfac.step()
        batch.append(x)
        if step == 0:
            A0 = kfac.factors()["0"][0].clone()
        if step == 1:  # not a factor step: unchanged
            torch.testing.assert_close(kfac.factors()["0"][0], A0, rtol=0, atol=0)
    A2 = _aug(batch[2]).T @ _aug(batch[2]) / 8
    torch.testing.assert_close(kfac.factors()["0"][0], 0.8 * A0 + 0.2 * A2, rtol=1e-12, atol=1e-12)


def test_micro_batches_add_up():
    """Two forward/backward calls before one step give the factors of the concatenated batch."""
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = _mlp()
    kfac = KFAC(model, loss_reduction="sum")
    model(x).pow(2).sum().backward()
    kfac.step()
    ref = {k: (a.clone(), g.clone()) for k, (a, g) in kfac.factors().items()}
    model2 = _mlp()
    kfac2 = KFAC(model2, loss_reduction="sum")
    for part in (x[:4], x[4:]):
        model2(part).pow(2).sum().backward()
    kfac2.step()
    for k, (a, g) in kfac2.factors().items():
        torch.testing.assert_close(a, ref[k][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, ref[k][1], rtol=1e-12, atol=1e-12)


def test_sampled_fisher_matches_the_model_fisher():
    """fisher='sampled': G of the last layer averages (p - e_y)(p - e_y)^T over y ~ p, whose expectation is
    diag(p) - p p^T per example; tolerance from the standard error over independent estimates."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    exact = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    estimates = []
    for rep in range(30):
        kfac = KFAC(model, fisher="sampled", seed=rep,
                    predictive=lambda logits: torch.distributions.Categorical(logits=logits))
        for _ in range(10):  # ten draws per estimate (micro-batches of the same inputs)
            out = model(x)
            kfac.sample_fisher(out)
            out.sum().backward()  # the training loss: any; it does not enter G
        kfac.step()
        model.zero_grad()
        estimates.append(kfac.factors()["2"][1])
    E = torch.stack(estimates)
    se = E.std(0) / len(estimates) ** 0.5
    z = (E.mean(0) - exact).abs() / se.clamp_min(1e-12)
    assert float(z.max()) < 4.5, z
    # the same seed draws the same labels
    kfac_a = KFAC(model, fisher="sampled", seed=3, predictive=lambda o: torch.distributions.Categorical(logits=o))
    out = model(x)
    kfac_a.sample_fisher(out)
    out.sum().backward()
    kfac_a.step()
    model.zero_grad()
    kfac_b = KFAC(model, fisher="sampled", seed=3, predictive=lambda o: torch.distributions.Categorical(logits=o))
    out = model(x)
    kfac_b.sample_fisher(out)
    out.sum().backward()
    kfac_b.step()
    model.zero_grad()
    assert torch.equal(kfac_a.factors()["2"][1], kfac_b.factors()["2"][1])


def test_sampled_fisher_without_sample_call_is_refused():
    model = _mlp()
    kfac = KFAC(model, fisher="sampled", predictive=lambda o: torch.distributions.Normal(o, 1.0))
    model(torch.randn(4, 5, dtype=torch.float64)).sum().backward()
    with pytest.raises(ValueError, match="sample_fisher"):
        kfac.step()
