"""Defaults that work out of the box: the README's Bayesian quick start, run as written on scikit-learn's
digits, learns with every method (only the arguments the README passes; defaults for everything else).

The model is the README's: a small MLP, ``log_posterior`` = batch-mean log likelihood + N(0, 1) log prior
/ N, ``temperature = 1/N``; README learning rates (1e-2 for SGMCMC and ensembles, 1e-3 for VI). 10
classes: chance is 10 %. VI diag with posteriors' default initial sd of 1 stays at chance (checked below:
the reason the default changed to a tenth of the parameters' RMS).
"""

from __future__ import annotations

import pytest
import torch

from thermoai.bayes import ekf, ensemble, sgmcmc, vi
from thermoai.experiments.cold_posterior import load_digits_split, minibatches

DATA = load_digits_split()
N = DATA.n_train
EPOCHS, BATCH = 30, 64


def make_model(seed=0, hidden=32):
    torch.manual_seed(seed)
    if hidden:
        return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    return torch.nn.Linear(64, 10)


def readme_log_posterior(model):
    def log_posterior(params, batch):  # as in README.md
        x, y = batch
        logits = torch.func.functional_call(model, params, (x,))
        log_prior = -0.5 * sum((p**2).sum() for p in params.values())
        return -torch.nn.functional.cross_entropy(logits, y) + log_prior / N, logits.detach()

    return log_posterior


def loader(epochs=EPOCHS, seed=0):
    stream = minibatches(N, BATCH, torch.Generator().manual_seed(seed))
    for _ in range(epochs * (N // BATCH)):
        idx = next(stream)
        yield DATA.x_train[idx], DATA.y_train[idx]


def accuracy(model, params):
    """Test accuracy of one parameter tree, or of the predictive mean over a leading sample dimension."""
    with torch.no_grad():
        first = next(iter(params.values()))
        if first.dim() > next(iter(dict(model.named_parameters()).values())).dim():
            logits = torch.func.vmap(lambda p: torch.func.functional_call(model, p, (DATA.x_test,)))(params)
            log_p = torch.logsumexp(torch.log_softmax(logits, -1), 0)
        else:
            log_p = torch.func.functional_call(model, params, (DATA.x_test,))
    return float((log_p.argmax(-1) == DATA.y_test).double().mean())


def train(transform, model, sample=None):
    state = transform.init({k: v.detach().clone() for k, v in model.named_parameters()})
    for batch in loader():
        state, _ = transform.update(state, batch, inplace=True)
    params = state.params if sample is None else sample(state, (16,))
    return accuracy(model, params)


METHODS = {
    # the README's calls
    "sghmc": lambda lp: sgmcmc.sghmc.build(lp, lr=1e-2, alpha=1.0, temperature=1 / N),
    "vi.diag": lambda lp: vi.diag.build(lp, lr=1e-3, temperature=1 / N),
    # dense VI over all 2410 parameters (a 2410 x 2410 factor): NaN within ten steps before its diagonal was
    # optimised as a log and its off-diagonal relative to the row's scale (vi/dense.py)
    "vi.dense": lambda lp: vi.dense.build(lp, lr=1e-3, temperature=1 / N),
    # the other methods with the README's learning rate of their family
    "sgld": lambda lp: sgmcmc.sgld.build(lp, lr=1e-2, temperature=1 / N),
    "sgnht": lambda lp: sgmcmc.sgnht.build(lp, lr=1e-2, temperature=1 / N),
    "baoa": lambda lp: sgmcmc.baoa.build(lp, lr=1e-2, temperature=1 / N),
    "psgld": lambda lp: sgmcmc.psgld.build(lp, lr=1e-2, temperature=1 / N),
}
SAMPLE = {"vi.diag": vi.diag.sample, "vi.dense": vi.dense.sample}
SLOW = {"vi.dense"}  # about 0.1 s a step on one core (the dense factor), 570 steps


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(METHODS)]
)
def test_each_method_learns_the_readme_example(name):
    model = make_model()
    acc = train(METHODS[name](readme_log_posterior(model)), model, SAMPLE.get(name))
    # measured 0.85-0.94 at 30-40 epochs; a method stuck near chance (the reported vi.diag defect) is ~0.1
    assert acc > 0.8, (name, acc)


def test_unbiased_ensemble_learns_the_readme_example():
    model = make_model()
    members = ensemble.unbiased_ensemble(readme_log_posterior(model), lr=1e-2, num_data=N, n_members=4)
    state = members.init(lambda k: {n: p.detach().clone() for n, p in make_model(seed=k).named_parameters()})
    for batch in loader():
        state, _ = members.update(state, batch, inplace=True)
    assert accuracy(model, state.params) > 0.8


def test_ekf_learns_a_linear_readme_model_in_one_pass():
    """The GGN EKF with its defaults (lr 1, prior sd 1) on the README's model with a linear classifier,
    one pass over the data."""
    model = make_model(hidden=0)

    def forward(params, batch):
        return torch.func.functional_call(model, params, (batch[0],)), torch.tensor([])

    def outer(logits, batch):
        return -torch.nn.functional.cross_entropy(logits, batch[1], reduction="sum")

    transform = ekf.diag_ggn.build(forward, outer)
    state = transform.init({k: v.detach().clone() for k, v in model.named_parameters()})
    for batch in loader(epochs=1):
        state, _ = transform.update(state, batch, inplace=True)
    assert accuracy(model, state.params) > 0.8


def test_vi_diag_with_posteriors_default_sd_of_one_stays_at_chance():
    """Why the default changed: with an initial sd of 1 (log sd 0) the draws are noise at the scale of
    the weights and nothing is learnt."""
    model = make_model()
    acc = train(vi.diag.build(readme_log_posterior(model), lr=1e-3, temperature=1 / N, init_log_sds=0.0), model,
                vi.diag.sample)
    assert acc < 0.3
    default = vi.diag.init({k: v.detach() for k, v in model.named_parameters()})
    rms = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).square().mean().sqrt()
    assert torch.allclose(default.log_sd_diag["0.weight"], torch.log(0.1 * rms).expand(32, 64))
    dense = vi.dense.init({"w": torch.full((3,), 2.0)})
    assert torch.allclose(vi.dense.L_from_flat(dense.L_factor), 0.2 * torch.eye(3))
