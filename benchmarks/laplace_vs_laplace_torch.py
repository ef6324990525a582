"""thermoai.bayes.laplace against laplace-torch 0.3: fit time, posterior precisions, predictive NLL.

The same MLPs on scikit-learn's bundled digits (1257 training, 540 test images), trained to the MAP once
with torch's Adam (the same weights go to both libraries), prior N(0, 1/prior_precision I):

- diagonal GGN (``thermoai.bayes.laplace.diag_ggn`` vs ``DiagLaplace``, all weights) on a 64-100-100-10 MLP;
- dense GGN (``thermoai.bayes.laplace.dense_ggn`` vs ``FullLaplace``, all weights) on a 64-16-10 MLP.

Both libraries sum the GGN of the categorical likelihood over the training set (batches of 128) and add
the prior precision. Reported: the fit time (median of ``--repeats`` interleaved fits, this process, one
torch thread), the agreement of the posterior precisions (max |difference| / max |precision| and the
largest relative difference of the diagonal), and the test NLL of the linearised (GLM) predictive
estimated with the same number of Monte Carlo draws in each library.

Run with the benchmark environment (laplace-torch is installed only there):

    .venv-bench/bin/python benchmarks/laplace_vs_laplace_torch.py

and it writes ``benchmarks/results/laplace_vs_laplace_torch.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")

import laplace as laplace_torch  # noqa: E402

from thermoai import tree as T  # noqa: E402
from thermoai.bayes import predictive  # noqa: E402
from thermoai.bayes.laplace import dense_ggn, diag_ggn  # noqa: E402
from thermoai.experiments.cold_posterior import load_digits_split  # noqa: E402


def make_mlp(sizes: tuple[int, ...], seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def train_map(model: torch.nn.Module, data, prior_precision: float, epochs: int, seed: int) -> None:
    """Adam on the summed NLL plus the Gaussian prior's negative log density (the MAP both libraries use)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(128):
            opt.zero_grad()
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx], reduction="sum") * (n / len(idx))
            loss = loss + 0.5 * prior_precision * sum((p**2).sum() for p in model.parameters())
            (loss / n).backward()
            opt.step()


def batches(data, size: int = 128):
    n = data.x_train.shape[0]
    return [(data.x_train[i : i + size], data.y_train[i : i + size]) for i in range(0, n, size)]


def thermoai_fit(model, data, structure: str, prior_precision: float):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def forward(p, batch):
        return torch.func.functional_call(model, p, (batch[0],)), torch.tensor([])

    def outer(logits, batch):
        return -F.cross_entropy(logits, batch[1], reduction="sum")

    module = diag_ggn if structure == "diag" else dense_ggn
    transform = module.build(forward, outer, prior_precision=prior_precision)
    state = transform.init(params)
    for batch in batches(data):
        state, _ = transform.update(state, batch, inplace=True)
    return state, forward


def laplace_torch_fit(model, data, structure: str, prior_precision: float):
    la = laplace_torch.Laplace(model, "classification", subset_of_weights="all", hessian_structure=structure,
                               prior_precision=prior_precision)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=128)
    la.fit(loader)
    return la


def as_model_order(model: torch.nn.Module, tree: dict) -> torch.Tensor:
    """A tree over ``named_parameters`` as one vector in ``model.parameters()`` order (laplace-torch's)."""
    return torch.cat([tree[name].reshape(-1) for name, _ in model.named_parameters()])


def permutation(model: torch.nn.Module) -> torch.Tensor:
    """Index map from thermoai's ravel order (sorted dict keys) to ``model.parameters()`` order."""
    names = [n for n, _ in model.named_parameters()]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    offsets, start = {}, 0
    for n in sorted(names):  # optree flattens dicts in sorted-key order
        offsets[n] = start
        start += sizes[n]
    return torch.cat([torch.arange(offsets[n], offsets[n] + sizes[n]) for n in names])


def nll_from_probs(probs: torch.Tensor, y: torch.Tensor) -> float:
    return float(-torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12)).mean())


def thermoai_predictive(state, forward, model, data, structure: str, n_samples: int, seed: int) -> float:
    if structure == "diag":
        sd = T.tree_map(torch.rsqrt, state.prec_diag)
        out = predictive.linearized_forward_diag(forward, state.params, (data.x_test, data.y_test), sd, jitter=1e-8)
    else:
        cov = torch.cholesky_inverse(torch.linalg.cholesky(state.prec.double())).to(state.prec.dtype)
        out = predictive.linearized_forward_dense(forward, state.params, (data.x_test, data.y_test), cov, jitter=1e-8)
    logits = predictive.sample_linearized(out.mean, out.chol, n_samples, generator=torch.Generator().manual_seed(seed))
    return nll_from_probs(torch.softmax(logits, -1).mean(0), data.y_test)


def laplace_torch_predictive(la, data, n_samples: int, seed: int) -> float:
    torch.manual_seed(seed)
    probs = la(data.x_test, pred_type="glm", link_approx="mc", n_samples=n_samples)
    return nll_from_probs(probs, data.y_test)


def timed(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def case(structure: str, sizes: tuple[int, ...], data, args) -> dict:
    model = make_mlp(sizes, seed=0)
    train_map(model, data, args.prior_precision, args.epochs, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    ta_times, lt_times = [], []
    state = forward = la = None
    for r in range(args.repeats):  # interleaved, so that machine load hits both alike
        order = [0, 1] if r % 2 == 0 else [1, 0]
        for which in order:
            t = time.perf_counter()
            if which == 0:
                state, forward = thermoai_fit(model, data, structure, args.prior_precision)
                ta_times.append(time.perf_counter() - t)
            else:
                la = laplace_torch_fit(model, data, structure, args.prior_precision)
                lt_times.append(time.perf_counter() - t)
    perm = permutation(model)
    if structure == "diag":
        ours = T.tree_ravel(state.prec_diag)[perm]
        theirs = la.posterior_precision.detach()
        max_abs = float((ours - theirs).abs().max() / theirs.abs().max())
        diag_rel = float(((ours - theirs).abs() / theirs.abs()).max())
    else:
        ours = state.prec[perm][:, perm]
        theirs = la.posterior_precision.detach()
        max_abs = float((ours - theirs).abs().max() / theirs.abs().max())
        diag_rel = float(((ours.diagonal() - theirs.diagonal()).abs() / theirs.diagonal().abs()).max())
    with torch.no_grad():
        map_nll = float(F.cross_entropy(model(data.x_test), data.y_test))
    ta_nll = thermoai_predictive(state, forward, model, data, structure, args.samples, seed=1)
    lt_nll = laplace_torch_predictive(la, data, args.samples, seed=1)
    row = {
        "structure": structure, "sizes": sizes, "n_params": n_params, "thermoai_s": statistics.median(ta_times),
        "laplace_torch_s": statistics.median(lt_times), "prec_max_abs_rel": max_abs, "prec_diag_max_rel": diag_rel,
        "nll_map": map_nll, "nll_thermoai": ta_nll, "nll_laplace_torch": lt_nll,
    }
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="MAP training epochs")
    parser.add_argument("--prior-precision", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=200, help="Monte Carlo draws of the GLM predictive")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "laplace_vs_laplace_torch.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_digits_split()
    rows = [case("diag", (64, 100, 100, 10), data, args), case("full", (64, 16, 10), data, args)]
    lines = [
        "| Hessian | MLP | parameters | thermoai fit s | laplace-torch fit s | ratio thermoai/laplace-torch | "
        "precision: max abs diff / max | diagonal: max rel diff | test NLL MAP | test NLL thermoai (GLM, MC) | "
        "test NLL laplace-torch (GLM, MC) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {'diagonal GGN' if r['structure'] == 'diag' else 'full GGN'} | {'-'.join(map(str, r['sizes']))} | "
            f"{r['n_params']:,} | {r['thermoai_s']:.3f} | {r['laplace_torch_s']:.3f} | "
            f"{r['thermoai_s'] / r['laplace_torch_s']:.2f} | {r['prec_max_abs_rel']:.1e} | {r['prec_diag_max_rel']:.1e} | "
            f"{r['nll_map']:.4f} | {r['nll_thermoai']:.4f} | {r['nll_laplace_torch']:.4f} |"
        )
    table = "\n".join(lines)
    print(table)
    command = "$ " + " ".join([".venv-bench/bin/python", "benchmarks/laplace_vs_laplace_torch.py", *(argv or sys.argv[1:])])
    env = (f"laplace-torch {getattr(laplace_torch, '__version__', '0.3')}, torch {torch.__version__}, {args.threads} torch "
           f"thread(s), Python {platform.python_version()}, {platform.machine()}; MAP by Adam ({args.epochs} epochs), "
           f"prior precision {args.prior_precision:g}; fit time median of {args.repeats} interleaved fits; "
           f"{args.samples} Monte Carlo draws of the linearised predictive in each library.")
    text = f"""# thermoai.bayes.laplace vs laplace-torch: fit time, precisions, predictive NLL

Produced by

```
{command}
```

{env}

{table}

The precisions are the same matrices up to float32 rounding (both sum the exact GGN of the categorical
likelihood over the same batches and add the same prior precision; thermoai's is over its ravel order,
mapped to `model.parameters()` order for the comparison). The predictive NLLs are Monte Carlo
estimates of the same linearised (GLM) predictive from independent random streams, one per library;
they are not expected to agree beyond that sampling error. thermoai's diagonal fit is one vmapped pass of
vector-Jacobian products per batch; the full fit forms the per-sample Jacobians and one GEMM. A ratio below 1 means thermoai fits faster.
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
