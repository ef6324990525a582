"""Bayesian language model: epistemic uncertainty and continual learning for the embedded SmolLM2.

The posteriors paper (Duffield et al., arXiv 2406.00104) applies its methods to large language models in
two set-ups (``research/posteriors.md`` §2, "LLM experiments"):

(a) Llama-3-8B with only its last decoder layer random, ten SGHMC trajectories at ``T = 1/N`` against
    ``T = 0`` and the pretrained model; the predictive entropy split into aleatoric and epistemic parts on
    English against Samoan statements; AUROC of out-of-distribution detection.
(b) Llama-2-7B with LoRA adapters on the last layer, fine-tuned on a sequence of books; after each book
    the diagonal-Fisher Laplace posterior becomes the next book's prior (one quadratic penalty), against
    plain fine-tuning and an offline run on all books.

Here both run on the embedded SmolLM2-135M-Instruct (30 layers) at a size two CPU cores finish:

**(a) Uncertainty.** The last decoder layer (3.5 M parameters) is random, everything else frozen; the
activations entering it are computed once (:class:`thermoai.bayes.lm.LMSubset`), so every member, chain
step and draw runs one layer and the output projection. Training text: windows of the Python language
reference (``pydoc_data``). Prior ``N(theta_pretrained, prior_sd^2 I)``; the log posterior is batch
averaged, ``mean_t log p(x_t | x_<t) + log p(theta) / N`` with ``N`` the number of training tokens, so
``temperature = 1/N`` targets the Bayesian posterior. Methods:

- ``pretrained``: the model as shipped;
- ``map``: one SGHMC member at ``T = 0`` (heavy-ball SGD) from the pretrained weights;
- ``deep_ensemble``: ten such members (:func:`thermoai.bayes.ensemble.deep_ensemble`), each with its own
  minibatch order, all from the pretrained weights (as the paper);
- ``unbiased_ensemble``: the same ten members, orders and starts at ``T = 1/N``
  (:func:`thermoai.bayes.ensemble.unbiased_ensemble`);
- ``sghmc_serial``: one chain at ``T = 1/N``, ten snapshots after the same burn-in;
- ``laplace``: diagonal empirical Fisher at the MAP over the training windows (per-window summed
  log-likelihoods) plus the prior precision, ten draws (the sampled Laplace predictive).

Evaluation: Sphinx's messages in English (in distribution: English documentation text) and the same
messages in Albanian (out of distribution; pairs, so only the language differs), teacher-forced; per
token the split of :mod:`thermoai.bayes.uncertainty`, per statement its mean over the statement's
predicted tokens; AUROC of per-statement epistemic and total uncertainty for "Albanian" against
"English", and the held-out perplexity of the predictive on unseen Python-reference windows. Mean +-
standard error over seeds (each seed: minibatch orders and noise).

**(b) Continual learning.** LoRA adapters (peft; r 8, alpha 32, on q/v/o of the last layer, as the
paper) are the random subset. Three episodes of different text: the Python language reference,
scikit-learn's data-set descriptions, and Sphinx's messages in French; the last windows of each are held
out. Methods: plain fine-tuning (Adam on each episode in turn, prior penalty 0); Laplace (after each
episode the diagonal Fisher at the episode's MAP, times ``lambda``, is added to the prior precision, and
the MAP becomes the prior mean: one quadratic penalty); joint training on all episodes at once (the
offline reference). Reported: held-out loss of every episode after every epoch (curves), forgetting
(loss of an earlier episode at the end minus right after it was learned) and plasticity (the loss drop
on the current episode). All three arms run once more at a smaller Adam lr (``cl_lr_check``): at the
main lr plain fine-tuning over-fits, and the check tells whether the prior's smaller forgetting is memory
or restraint.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import ensemble, lm
from thermoai.bayes.adam import adam
from thermoai.bayes.laplace import diag_fisher
from thermoai.bayes.log_prob import value_and_grad
from thermoai.bayes.sgmcmc import sghmc
from thermoai.bayes.uncertainty import EntropySplit
from thermoai.experiments import llm_data as D

# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Config:
    """Sizes and hyper-parameters (defaults: the full run; sized for 2 shared CPU cores, see RUN_TIME)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    # (a) uncertainty
    chunk_length: int = 32  # tokens per training / held-out window
    n_train_chunks: int = 16
    n_heldout_chunks: int = 2
    batch_chunks: int = 2
    steps: int = 10  # SGHMC steps of every member (MAP, ensembles, serial burn-in)
    lr: float = 0.1  # SGHMC epsilon; with alpha = 3 the T = 0 step is SGD with momentum 0.7, lr 0.01
    alpha: float = 3.0
    prior_sd: float = 0.01
    members: int = 10
    sghmc_samples: int = 10
    sghmc_thin: int = 1
    laplace_samples: int = 10
    language: str = "sq"
    n_statements: int = 16
    max_statement_tokens: int = 40
    eval_batch: int = 16  # rows per call of the random layer in evaluation (the head runs on real tokens only)
    eval_dtype: str = "float32"  # softmax dtype of the entropy split (float32: ~1e-6 nats; see evaluate)
    # (b) continual learning
    cl_seeds: tuple[int, ...] = (0, 1, 2)
    cl_train_chunks: int = 8
    cl_heldout_chunks: int = 2
    cl_epochs: int = 3
    cl_batch_chunks: int = 2
    cl_lr: float = 1e-2
    # all three arms again at this Adam lr (0: skip): is the Laplace prior's advantage memory, or does it
    # restrain a plain fine-tuning that over-fits at cl_lr?
    cl_lr_check: float = 1e-3
    cl_lambda: float = 100.0
    cl_first_prior_sd: float = 1e4
    lora_r: int = 8
    lora_alpha: int = 32
    cl_language: str = "fr"
    # torch threads; 0: torch's default when the machine has that many idle cores, else 1 (see choose_threads)
    threads: int = 0


PAPER = "posteriors"
TITLE = "Bayesian SmolLM2: epistemic uncertainty (English vs Albanian) and Laplace continual learning"
# wall seconds on the shared 2-core machine, both on one thread (choose_threads): quick 49 s through the
# CLI at load 4.0 (45 s wall, 43 s CPU in the experiment); full 1077 s wall,
# 513 s CPU at load 4.9-5.4 (3 seeds; continual learning 3 seeds at two learning rates). Before the head
# ran on predicted tokens only and the thread choice, the full run (continual learning 1 seed, one lr)
# took 2996 s wall and 1087 s CPU at load ~10.
RUN_TIME = {"quick": 50, "full": 1080}

QUICK = Config(
    seeds=(0,),
    n_train_chunks=8,
    n_heldout_chunks=2,
    steps=4,
    members=3,
    sghmc_samples=3,
    sghmc_thin=1,
    laplace_samples=3,
    n_statements=6,
    max_statement_tokens=24,
    cl_seeds=(0, 1),
    cl_train_chunks=4,
    cl_heldout_chunks=2,
    cl_epochs=1,
)

# the tiniest run (the report's --smoke and its test): every code path, meaningless numbers
SMOKE = Config(
    seeds=(0,), chunk_length=8, n_train_chunks=2, n_heldout_chunks=1, batch_chunks=1, steps=1, members=2,
    sghmc_samples=1, sghmc_thin=1, laplace_samples=2, n_statements=2, max_statement_tokens=20,
    cl_seeds=(0,), cl_train_chunks=1, cl_heldout_chunks=1, cl_epochs=1, cl_batch_chunks=1,
)
REPRODUCE = {"smoke": {"smoke": True}, "quick": {"quick": True}, "full": {"quick": False}}

METHODS = ("pretrained", "map", "deep_ensemble", "unbiased_ensemble", "sghmc_serial", "laplace")
LABELS = {
    "pretrained": "Pretrained",
    "map": "MAP (T=0, 1 member)",
    "deep_ensemble": "Deep ensemble (T=0)",
    "unbiased_ensemble": "Unbiased ensemble (T=1/N)",
    "sghmc_serial": "SGHMC serial (T=1/N)",
    "laplace": "Laplace diag Fisher (sampled)",
}
CL_METHODS = ("plain", "laplace", "joint")
CL_LABELS = {"plain": "Plain fine-tuning", "laplace": "Laplace prior (diag Fisher)", "joint": "Joint (all episodes)"}
EPISODES = ("python_reference", "dataset_descriptions", "sphinx_fr")

SALT_MAP, SALT_ENSEMBLE, SALT_SERIAL, SALT_LAPLACE, SALT_CL = 11, 23, 37, 41, 53


# ---------------------------------------------------------------------------------------------- metrics


def auroc(negatives: Any, positives: Any) -> float:
    """Area under the ROC curve of scores that should be higher for ``positives``: the Mann-Whitney
    probability ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2``."""
    neg = np.asarray(negatives, dtype=np.float64).ravel()
    pos = np.asarray(positives, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"auroc needs scores in both groups; got {neg.size} negatives and {pos.size} positives")
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise ValueError("auroc: scores must be finite")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / sqrt(n); 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else 0.0
    return float(a.mean()), se


def verdict(diff: float, se: float, n: int) -> tuple[str, str]:
    """``(verdict, reason)`` for a claimed positive difference ``diff`` (mean over ``n`` seeds, standard
    error ``se``): reproduced when more than two standard errors above zero, partly when positive but
    within two, not reproduced otherwise."""
    if n < 2 or se == 0.0:
        word = "reproduced" if diff > 0 else "not reproduced"
        return ("partly" if diff > 0 else word), f"difference {diff:+.4f} from {n} seed(s): no standard error"
    if diff > 2 * se:
        return "reproduced", f"difference {diff:+.4f} ± {se:.4f} (more than 2 s.e. above 0, {n} seeds)"
    if diff > 0:
        return "partly", f"difference {diff:+.4f} ± {se:.4f} (right sign, within 2 s.e., {n} seeds)"
    return "not reproduced", f"difference {diff:+.4f} ± {se:.4f} ({n} seeds)"


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TextSet:
    """Token ids ``(B, L)``, mask ``(B, L)`` and the frozen activations ``(B, L, d)`` of one text set."""

    ids: Tensor
    mask: Tensor
    hidden: Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, index: Tensor | slice) -> tuple[Tensor, Tensor, Tensor]:
        return self.hidden[index], self.ids[index], self.mask[index]


def text_set(sub: lm.LMSubset, ids: Tensor, mask: Tensor | None = None) -> TextSet:
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
    return TextSet(ids, mask, sub.prefix(ids))


def statement_sets(sub: lm.LMSubset, tokenizer: Any, cfg: Config) -> tuple[TextSet, TextSet, list[tuple[str, str]]]:
    """English and translated statements whose both sides fit ``max_statement_tokens``, the first
    ``n_statements`` pairs in catalogue order; each set sorted by length (less padding per batch)."""
    pairs = []
    for en, tr in D.translated_statements(cfg.language):
        n_en = len(tokenizer(en, add_special_tokens=False)["input_ids"])
        n_tr = len(tokenizer(tr, add_special_tokens=False)["input_ids"])
        if n_en <= cfg.max_statement_tokens and n_tr <= cfg.max_statement_tokens:
            pairs.append((en, tr))
        if len(pairs) == cfg.n_statements:
            break
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} statement pairs fit max_statement_tokens={cfg.max_statement_tokens}")
    sets = []
    for side in (0, 1):
        enc = D.encode_statements(tokenizer, [p[side] for p in pairs], cfg.max_statement_tokens)
        order = torch.argsort(enc.lengths, stable=True)
        sets.append(text_set(sub, enc.input_ids[order], enc.mask[order]))
    return sets[0], sets[1], pairs


# ---------------------------------------------------------------------------------------------- (a) methods


def make_log_posterior(sub: lm.LMSubset, prior_mean: dict[str, Tensor], prior_sd: float, n_tokens: int) -> Callable:
    """``log_posterior(params, (hidden, ids, mask)) = mean_t log p(x_t | x_<t) + log N(params; prior) / N``
    (constants dropped; mean over the batch's predicted tokens)."""
    prec = 1.0 / prior_sd**2

    def log_posterior(params: dict[str, Tensor], batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        hidden, ids, mask = batch
        ll = sub.token_log_likelihood(params, hidden, ids, mask)
        mean_ll = ll.sum() / mask[:, 1:].sum().clamp_min(1)
        log_prior = -0.5 * prec * sum(((p - prior_mean[k]) ** 2).sum() for k, p in params.items())
        return mean_ll + log_prior / n_tokens, mean_ll.detach()

    return log_posterior


def sequence_log_likelihood(sub: lm.LMSubset) -> Callable:
    """``f(params, (hidden, ids, mask)) -> (mean over the batch of each window's summed log-likelihood, aux)``;
    on a batch of one (as the diagonal Fisher evaluates it) the window's total log-likelihood."""

    def f(params: dict[str, Tensor], batch: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        hidden, ids, mask = batch
        return sub.token_log_likelihood(params, hidden, ids, mask).sum(-1).mean(), torch.tensor([])

    return f


def index_stream(n: int, batch: int, generator: torch.Generator):
    """Endless minibatches of row indices: a fresh permutation per pass, cut into ``batch`` rows (the
    short tail of a pass is dropped)."""
    if batch > n:
        raise ValueError(f"batch ({batch}) exceeds the number of windows ({n})")
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1, batch):
            yield perm[start : start + batch]


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + salt)


def run_single(sub: lm.LMSubset, train: TextSet, log_post: Callable, cfg: Config, seed: int, temperature: float,
               salt: int, snapshots: int = 0, thin: int = 1) -> list[dict[str, Tensor]]:
    """One SGHMC chain from the pretrained subset: ``cfg.steps`` steps, then (``snapshots > 0``) one
    snapshot every ``thin`` steps; returns ``[final]`` or the snapshots."""
    transform = sghmc.build(log_post, lr=cfg.lr, alpha=cfg.alpha, temperature=temperature, momenta=0.0)
    state = transform.init(sub.params())
    rows = index_stream(len(train), cfg.batch_chunks, _generator(seed, salt))
    noise = _generator(seed, salt + 1)
    for _ in range(cfg.steps):
        state, _ = transform.update(state, train.rows(next(rows)), inplace=True, generator=noise)
    if snapshots == 0:
        return [T.tree_map(lambda x: x.clone(), state.params)]
    out = []
    for _ in range(snapshots):
        for _ in range(thin):
            state, _ = transform.update(state, train.rows(next(rows)), inplace=True, generator=noise)
        out.append(T.tree_map(lambda x: x.clone(), state.params))
    return out


def run_ensemble(sub: lm.LMSubset, train: TextSet, log_post: Callable, cfg: Config, seed: int, unbiased: bool) -> list[dict[str, Tensor]]:
    """``cfg.members`` SGHMC members advanced together (vmapped), all from the pretrained subset, each with
    its own minibatch order (the same orders for both temperatures: a paired comparison)."""
    kwargs = dict(lr=cfg.lr, alpha=cfg.alpha, n_members=cfg.members, momenta=0.0, batch_per_member=True)
    if unbiased:
        ens = ensemble.unbiased_ensemble(log_post, num_data=n_predicted(train), **kwargs)
    else:
        ens = ensemble.deep_ensemble(log_post, **kwargs)
    state = ens.init(lambda k: sub.params())
    streams = [index_stream(len(train), cfg.batch_chunks, _generator(seed, SALT_ENSEMBLE + 7 * k)) for k in range(cfg.members)]
    with torch.random.fork_rng():
        torch.manual_seed(1_000_003 * seed + SALT_ENSEMBLE + (1 if unbiased else 0))
        for _ in range(cfg.steps):
            idx = [next(s) for s in streams]
            batch = tuple(torch.stack([part[i] for i in idx]) for part in (train.hidden, train.ids, train.mask))
            state, _ = ens.update(state, batch, inplace=True)
    return [T.tree_map(lambda x: x.clone(), m) for m in ensemble.members(state.params)]


def run_laplace(sub: lm.LMSubset, train: TextSet, map_params: dict[str, Tensor], cfg: Config, seed: int) -> list[dict[str, Tensor]]:
    """Diagonal empirical Fisher of the per-window log-likelihoods at the MAP plus the prior precision;
    ``cfg.laplace_samples`` draws of ``N(MAP, 1/prec)``."""
    transform = diag_fisher.build(sequence_log_likelihood(sub), prior_precision=1.0 / cfg.prior_sd**2)
    state = transform.init(map_params)
    for start in range(0, len(train), cfg.batch_chunks):
        state, _ = transform.update(state, train.rows(slice(start, start + cfg.batch_chunks)), inplace=True)
    draws = diag_fisher.sample(state, (cfg.laplace_samples,), generator=_generator(seed, SALT_LAPLACE))
    return [T.tree_map(lambda x: x[s].clone(), draws) for s in range(cfg.laplace_samples)]


def n_predicted(data: TextSet) -> int:
    """Number of predicted tokens (targets) in a text set."""
    return int(data.mask[:, 1:].sum())


def evaluate(sub: lm.LMSubset, draws: list[dict[str, Tensor]], data: TextSet, batch: int,
             dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Per-statement mean total/aleatoric/epistemic uncertainty (lists in the set's row order) and the
    predictive's mean log-likelihood per token over ``data``.

    The head runs only at the positions that predict a kept token (no logits for padding), ``batch`` rows
    at a time through the random layer; ``dtype`` is the softmax dtype of
    :class:`~thermoai.bayes.uncertainty.EntropySplit` (float32: entropies to ~1e-6 nats, a third of the
    float64 time on the 49152-token vocabulary).
    """
    per: dict[str, list[float]] = {"total": [], "aleatoric": [], "epistemic": []}
    tokens: dict[str, list[list[float]]] = {"token_total": [], "token_epistemic": []}
    ll_sum, n_tok = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch):
            hidden, ids, mask = data.rows(slice(start, start + batch))
            width = int(mask.sum(-1).max())  # drop all-padding columns
            hidden, ids, mask = hidden[:, :width], ids[:, :width], mask[:, :width]
            keep = mask[:, 1:]  # (B, L-1): position t predicts token t+1, kept where that token is real
            predicting = torch.zeros_like(mask)
            predicting[:, :-1] = keep
            counts = keep.sum(-1).tolist()
            if 0 in counts:
                raise ValueError(f"data: rows {[start + i for i, c in enumerate(counts) if c == 0]} have no token to predict")
            acc = EntropySplit(ids[:, 1:][keep], dtype=dtype)  # targets (n,), row-major like the logits
            for params in draws:
                acc.add(sub.logits(params, hidden, positions=predicting))  # (n, V)
            u = acc.result()
            for name in per:
                per[name] += [float(v.mean()) for v in getattr(u, name).split(counts)]
            tokens["token_total"] += [v.tolist() for v in u.total.split(counts)]
            tokens["token_epistemic"] += [v.tolist() for v in u.epistemic.split(counts)]
            ll_sum += float(u.log_predictive.sum())
            n_tok += int(keep.sum())
    return {**per, **tokens, "mean_log_lik": ll_sum / n_tok, "n_tokens": n_tok}


def run_seed(sub: lm.LMSubset, sets: dict[str, TextSet], cfg: Config, seed: int, progress: Any = None) -> dict[str, Any]:
    """Every method for one seed: ``{method: {"english": eval, "translated": eval, "heldout": eval,
    "auroc_epistemic", "auroc_total", "perplexity"}}``."""
    train = sets["train"]
    pretrained = sub.params()
    log_post = make_log_posterior(sub, pretrained, cfg.prior_sd, n_predicted(train))
    temp = 1.0 / n_predicted(train)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], list]) -> list:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        if progress is not None:
            progress.update(1)
        return out

    draws: dict[str, list[dict[str, Tensor]]] = {"pretrained": [pretrained]}
    draws["map"] = timed("map", lambda: run_single(sub, train, log_post, cfg, seed, 0.0, SALT_MAP))
    draws["deep_ensemble"] = timed("deep_ensemble", lambda: run_ensemble(sub, train, log_post, cfg, seed, False))
    draws["unbiased_ensemble"] = timed("unbiased_ensemble", lambda: run_ensemble(sub, train, log_post, cfg, seed, True))
    draws["sghmc_serial"] = timed(
        "sghmc_serial",
        lambda: run_single(sub, train, log_post, cfg, seed, temp, SALT_SERIAL, cfg.sghmc_samples, cfg.sghmc_thin),
    )
    draws["laplace"] = timed("laplace", lambda: run_laplace(sub, train, draws["map"][0], cfg, seed))
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for method in METHODS:
        res = {name: evaluate(sub, draws[method], sets[name], cfg.eval_batch, getattr(torch, cfg.eval_dtype)) for name in ("english", "translated", "heldout")}
        res["auroc_epistemic"] = auroc(res["english"]["epistemic"], res["translated"]["epistemic"])
        res["auroc_total"] = auroc(res["english"]["total"], res["translated"]["total"])
        res["perplexity"] = math.exp(-res["heldout"]["mean_log_lik"])
        res["distance_from_pretrained"] = float(np.mean([_distance(d, pretrained) for d in draws[method]]))
        out[method] = res
    timings["evaluation"] = time.perf_counter() - t0
    out["timings"] = timings
    return out


def _distance(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Root-mean-square parameter difference."""
    total = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    return math.sqrt(total / sum(v.numel() for v in a.values()))


# ---------------------------------------------------------------------------------------------- (b) continual


def inject_lora(model: Any, sub_layer: int, r: int, alpha: int) -> lm.LMSubset:
    """LoRA adapters (peft) on q/v/o of decoder block ``sub_layer`` (in place, the others untouched) and the
    :class:`~thermoai.bayes.lm.LMSubset` of those adapters. The adapters start at ``B = 0``: the model's
    function is unchanged until they are trained."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:  # pragma: no cover - peft is in the experiments extra
        raise ImportError("the continual-learning part needs peft (pip install 'thermoai[experiments]')") from err
    blocks = lm.decoder_blocks(model)
    prefix = next(n for n, m in model.named_modules() if m is blocks[sub_layer])
    targets = [f"{prefix}.self_attn.{name}" for name in ("q_proj", "v_proj", "o_proj")]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # peft draws A with the global generator: fix it
        inject_adapter_in_model(config, model)
    model.requires_grad_(False)
    return lm.LMSubset(model, layer=sub_layer, include="lora_")


def episode_texts(tokenizer: Any, cfg: Config) -> dict[str, Tensor]:
    """``{episode: (train + held-out windows, L)}``: the held-out windows are the text's last ones."""
    sources = {
        "python_reference": D.python_reference()[::-1],  # the end of the reference: unlike part (a)'s windows
        "dataset_descriptions": D.dataset_descriptions(),
        "sphinx_fr": D.sphinx_messages(cfg.cl_language),
    }
    n = cfg.cl_train_chunks + cfg.cl_heldout_chunks
    return {name: D.chunk(tokenizer, paragraphs, cfg.chunk_length, n) for name, paragraphs in sources.items()}


def cl_log_posterior(sub: lm.LMSubset, prior_mean: dict[str, Tensor], prior_prec: dict[str, Tensor], n_seq: int) -> Callable:
    """``mean over windows of sum_t log p + log N(params; prior_mean, 1/prior_prec) / n_seq`` (the paper's
    units: a window's log-likelihood, the prior spread over the episode's windows)."""
    f = sequence_log_likelihood(sub)

    def log_posterior(params: dict[str, Tensor], batch: Any) -> tuple[Tensor, Tensor]:
        ll, _ = f(params, batch)
        log_prior = -0.5 * sum((prior_prec[k] * (p - prior_mean[k]) ** 2).sum() for k, p in params.items())
        return ll + log_prior / n_seq, torch.tensor([])

    return log_posterior


def heldout_losses(sub: lm.LMSubset, params: dict[str, Tensor], heldout: dict[str, TextSet]) -> dict[str, float]:
    """Mean negative log-likelihood per token (nats) of each episode's held-out windows."""
    names = list(heldout)
    sets = [heldout[n] for n in names]
    out = {}
    with torch.no_grad():
        if len({d.ids.shape[1] for d in sets}) == 1:  # windows of one length: one forward for all episodes
            ids, mask, hidden = (torch.cat([getattr(d, a) for d in sets]) for a in ("ids", "mask", "hidden"))
            lls = sub.token_log_likelihood(params, hidden, ids, mask).split([len(d) for d in sets])
        else:
            lls = [sub.token_log_likelihood(params, d.hidden, d.ids, d.mask) for d in sets]
        for name, data, ll in zip(names, sets, lls):
            out[name] = float(-ll.sum() / data.mask[:, 1:].sum())
    return out


def train_adam(sub: lm.LMSubset, params: dict[str, Tensor], data: TextSet, log_post: Callable, cfg: Config,
               generator: torch.Generator, epochs: int, after_epoch: Callable[[dict[str, Tensor]], None]) -> dict[str, Tensor]:
    """Adam (maximising ``log_post``) over ``data`` for ``epochs`` passes; ``after_epoch(params)`` after each."""
    opt = adam(lr=cfg.cl_lr, maximize=True)
    state = opt.init(params)
    per_epoch = len(data) // cfg.cl_batch_chunks
    rows = index_stream(len(data), cfg.cl_batch_chunks, generator)
    for _ in range(epochs):
        for _ in range(per_epoch):
            _, grads, _ = value_and_grad(log_post, params, data.rows(next(rows)))
            params, state = opt.update(grads, state, params, inplace=True)
        after_epoch(params)
    return params


def run_continual(sub: lm.LMSubset, episodes: dict[str, tuple[TextSet, TextSet]], cfg: Config, seed: int,
                  progress: Any = None) -> dict[str, Any]:
    """Plain fine-tuning, the Laplace prior and joint training for one seed. Curves: held-out loss of
    every episode after every epoch; ``after_episode[e]``: the losses when episode ``e`` was finished."""
    t0 = time.perf_counter()
    start = sub.params()
    heldout = {name: pair[1] for name, pair in episodes.items()}
    names = list(episodes)
    out: dict[str, Any] = {"initial": heldout_losses(sub, start, heldout)}
    for method in ("plain", "laplace"):
        params = T.tree_map(lambda x: x.clone(), start)
        prior_mean = T.tree_map(torch.zeros_like, start)
        prior_prec = T.tree_map(lambda x: torch.full_like(x, cfg.cl_first_prior_sd**-2), start)
        curve, after_episode = [], []
        for e, name in enumerate(names):
            train = episodes[name][0]
            log_post = cl_log_posterior(sub, prior_mean, prior_prec, len(train))
            record = lambda p, e=e: curve.append({"episode": e, **heldout_losses(sub, p, heldout)})  # noqa: E731
            params = train_adam(sub, params, train, log_post, cfg, _generator(seed, SALT_CL + e), cfg.cl_epochs, record)
            after_episode.append(dict(curve[-1]))
            if method == "laplace":
                transform = diag_fisher.build(sequence_log_likelihood(sub))
                state = transform.init(params)
                for s in range(0, len(train), cfg.cl_batch_chunks):
                    state, _ = transform.update(state, train.rows(slice(s, s + cfg.cl_batch_chunks)), inplace=True)
                prior_mean = T.tree_map(lambda x: x.clone(), params)
                prior_prec = T.tree_map(lambda p, f: p + cfg.cl_lambda * f, prior_prec, state.prec_diag)
            if progress is not None:
                progress.update(1)
        out[method] = {"curve": curve, "after_episode": after_episode}
    # joint: every episode's training windows at once, the same number of passes over each
    joint = TextSet(*[torch.cat([getattr(episodes[n][0], a) for n in names]) for a in ("ids", "mask", "hidden")])
    prior_mean = T.tree_map(torch.zeros_like, start)
    prior_prec = T.tree_map(lambda x: torch.full_like(x, cfg.cl_first_prior_sd**-2), start)
    curve: list[dict[str, Any]] = []
    record = lambda p: curve.append({"episode": len(names) - 1, **heldout_losses(sub, p, heldout)})  # noqa: E731
    train_adam(sub, T.tree_map(lambda x: x.clone(), start), joint, cl_log_posterior(sub, prior_mean, prior_prec, len(joint)),
               cfg, _generator(seed, SALT_CL + 99), cfg.cl_epochs, record)
    out["joint"] = {"curve": curve, "after_episode": [dict(curve[-1])]}
    out["seconds"] = time.perf_counter() - t0
    if progress is not None:
        progress.update(1)
    return out


def forgetting_table(per_seed: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per method: forgetting of each earlier episode (final loss minus loss right after learning it),
    plasticity of each episode (initial loss minus loss right after learning it) and final losses, as
    ``[mean, se]`` over seeds."""
    out: dict[str, Any] = {}
    last = len(names) - 1
    for method in ("plain", "laplace"):
        forget, plastic, final = {}, {}, {}
        for e, name in enumerate(names):
            final[name] = list(mean_se([r[method]["after_episode"][last][name] for r in per_seed]))
            plastic[name] = list(mean_se([r["initial"][name] - r[method]["after_episode"][e][name] for r in per_seed]))
            if e < last:
                forget[name] = list(mean_se([r[method]["after_episode"][last][name] - r[method]["after_episode"][e][name] for r in per_seed]))
        mean_forget = mean_se([np.mean([r[method]["after_episode"][last][n] - r[method]["after_episode"][e][n]
                                        for e, n in enumerate(names[:-1])]) for r in per_seed])
        out[method] = {"forgetting": forget, "plasticity": plastic, "final": final, "mean_forgetting": list(mean_forget),
                       "mean_final": list(mean_se([np.mean([r[method]["after_episode"][last][n] for n in names]) for r in per_seed]))}
    out["joint"] = {"final": {n: list(mean_se([r["joint"]["after_episode"][0][n] for r in per_seed])) for n in names},
                    "mean_final": list(mean_se([np.mean([r["joint"]["after_episode"][0][n] for n in names]) for r in per_seed]))}
    out["initial"] = {n: list(mean_se([r["initial"][n] for r in per_seed])) for n in names}

    def final(r: dict[str, Any], method: str) -> float:
        return float(np.mean([r[method]["after_episode"][-1][n] for n in names]))

    def forgetting(r: dict[str, Any], method: str) -> float:
        return float(np.mean([r[method]["after_episode"][last][n] - r[method]["after_episode"][e][n] for e, n in enumerate(names[:-1])]))

    # paired over seeds (each seed: the same minibatch orders for every method)
    out["paired"] = {
        "forgetting_plain_minus_laplace": list(mean_se([forgetting(r, "plain") - forgetting(r, "laplace") for r in per_seed])),
        "final_plain_minus_joint": list(mean_se([final(r, "plain") - final(r, "joint") for r in per_seed])),
        "final_laplace_minus_joint": list(mean_se([final(r, "laplace") - final(r, "joint") for r in per_seed])),
        "final_plain_minus_laplace": list(mean_se([final(r, "plain") - final(r, "laplace") for r in per_seed])),
    }
    return out


# ---------------------------------------------------------------------------------------------- summary


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{method: {metric: [mean, se]}}`` over seeds."""
    out = {}
    for method in METHODS:
        out[method] = {
            "auroc_epistemic": list(mean_se([r[method]["auroc_epistemic"] for r in per_seed])),
            "auroc_total": list(mean_se([r[method]["auroc_total"] for r in per_seed])),
            "perplexity": list(mean_se([r[method]["perplexity"] for r in per_seed])),
            "epistemic_english": list(mean_se([float(np.mean(r[method]["english"]["epistemic"])) for r in per_seed])),
            "epistemic_translated": list(mean_se([float(np.mean(r[method]["translated"]["epistemic"])) for r in per_seed])),
            "total_english": list(mean_se([float(np.mean(r[method]["english"]["total"])) for r in per_seed])),
            "total_translated": list(mean_se([float(np.mean(r[method]["translated"]["total"])) for r in per_seed])),
            "distance_from_pretrained": list(mean_se([r[method]["distance_from_pretrained"] for r in per_seed])),
        }
    return out


def paired(per_seed: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str]) -> tuple[float, float, int]:
    """Mean +- s.e. over seeds of ``metric(a) - metric(b)`` (same seed: same orders)."""
    m, se = mean_se([r[a[0]][a[1]] - r[b[0]][b[1]] for r in per_seed])
    return m, se, len(per_seed)


def verdicts(per_seed: list[dict[str, Any]], cl_per_seed: list[dict[str, Any]], names: list[str],
             cl_check: list[dict[str, Any]] | None = None, check_lr: float = 0.0) -> list[dict[str, str]]:
    """The paper's findings, checked on paired per-seed differences (see :func:`verdict`); with
    ``cl_check`` (the continual-learning runs at Adam lr ``check_lr``) the forgetting claim once more there."""
    out = []

    def add(claim: str, diff: float, se: float, n: int) -> None:
        word, reason = verdict(diff, se, n)
        out.append({"claim": claim, "verdict": word, "reason": reason})

    add("The unbiased ensemble (T=1/N) separates out-of-distribution (Albanian) from English statements by "
        "epistemic uncertainty better than the deep ensemble (T=0): AUROC difference",
        *paired(per_seed, ("unbiased_ensemble", "auroc_epistemic"), ("deep_ensemble", "auroc_epistemic")))
    add("The unbiased ensemble's epistemic uncertainty separates the two sets better than the pretrained model's "
        "total entropy (the pretrained model has no epistemic part): AUROC difference",
        *paired(per_seed, ("unbiased_ensemble", "auroc_epistemic"), ("pretrained", "auroc_total")))
    last = len(names) - 1

    def mean_forgetting(r: dict[str, Any], method: str) -> float:
        return float(np.mean([r[method]["after_episode"][last][n] - r[method]["after_episode"][e][n] for e, n in enumerate(names[:-1])]))

    m, se = mean_se([mean_forgetting(r, "plain") - mean_forgetting(r, "laplace") for r in cl_per_seed])
    add("Continual learning: the Laplace prior forgets less than plain fine-tuning (plain minus Laplace mean "
        "forgetting of earlier episodes, nats per token)", m, se, len(cl_per_seed))

    def mean_plasticity(r: dict[str, Any], method: str) -> float:
        return float(np.mean([r["initial"][n] - r[method]["after_episode"][e][n] for e, n in enumerate(names)]))

    m, se = mean_se([mean_plasticity(r, "plain") - mean_plasticity(r, "laplace") for r in cl_per_seed])
    add("Continual learning: the Laplace prior pays for it in plasticity, learning each new episode less than "
        "plain fine-tuning (plain minus Laplace mean loss drop on the current episode, nats per token)", m, se, len(cl_per_seed))
    if cl_check:
        m, se = mean_se([mean_forgetting(r, "plain") - mean_forgetting(r, "laplace") for r in cl_check])
        add(f"Continual learning at Adam lr {check_lr:g}, where plain fine-tuning over-fits less: the Laplace prior "
            "still forgets less than plain fine-tuning (plain minus Laplace mean forgetting, nats per token)", m, se, len(cl_check))
    return out


# ---------------------------------------------------------------------------------------------- report


def _fmt(ms: list[float], digits: int = 3) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def table(summary: dict) -> str:
    lines = [
        "| method | AUROC epistemic | AUROC total | held-out perplexity | epistemic EN | epistemic SQ | total EN | total SQ | RMS distance from pretrained |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        s = summary[method]
        lines.append(
            f"| {LABELS[method]} | {_fmt(s['auroc_epistemic'])} | {_fmt(s['auroc_total'])} | {_fmt(s['perplexity'], 2)} | "
            f"{_fmt(s['epistemic_english'], 4)} | {_fmt(s['epistemic_translated'], 4)} | {_fmt(s['total_english'], 2)} | "
            f"{_fmt(s['total_translated'], 2)} | {s['distance_from_pretrained'][0]:.2e} |"
        )
    return "\n".join(lines)


def cl_table(f: dict, names: list[str]) -> str:
    head = " | ".join(f"forgetting {n}" for n in names[:-1])
    lines = [
        f"| method | {head} | mean forgetting | " + " | ".join(f"plasticity {n}" for n in names) + " | mean final loss |",
        "|---|" + "---:|" * (len(names) - 1) + "---:|" + "---:|" * len(names) + "---:|",
    ]
    for method in ("plain", "laplace"):
        r = f[method]
        lines.append(
            f"| {CL_LABELS[method]} | " + " | ".join(_fmt(r["forgetting"][n], 4) for n in names[:-1]) + f" | {_fmt(r['mean_forgetting'], 4)} | "
            + " | ".join(_fmt(r["plasticity"][n], 4) for n in names) + f" | {_fmt(r['mean_final'], 4)} |"
        )
    r = f["joint"]
    lines.append(f"| {CL_LABELS['joint']} | " + " | ".join("—" for _ in names[:-1]) + " | — | " + " | ".join("—" for _ in names)
                 + f" | {_fmt(r['mean_final'], 4)} |")
    lines += ["", "| held-out loss (nats/token) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines.append("| pretrained | " + " | ".join(_fmt(f["initial"][n], 4) for n in names) + " |")
    for method in CL_METHODS:
        lines.append(f"| {CL_LABELS[method]}, at the end | " + " | ".join(_fmt(f[method]["final"][n], 4) for n in names) + " |")
    return "\n".join(lines)


def cl_paired(f: dict, n_seeds: int) -> str:
    """The paired per-seed differences of the continual-learning arms, as sentences."""
    p = f.get("paired")
    if p is None:
        return ""
    return (
        f"Paired over the {n_seeds} seeds (mean ± s.e. of the per-seed difference, nats/token): mean forgetting, "
        f"plain minus Laplace {_fmt(p['forgetting_plain_minus_laplace'], 4)}; mean final held-out loss, plain minus "
        f"Laplace {_fmt(p['final_plain_minus_laplace'], 4)}, plain minus joint {_fmt(p['final_plain_minus_joint'], 4)}, "
        f"Laplace minus joint {_fmt(p['final_laplace_minus_joint'], 4)} (joint: the offline reference, the same number "
        "of passes over every episode's windows at once)."
    )


def check_section(result: dict, cfg: Config, names: list[str]) -> str:
    """The continual-learning tables once more at the check learning rate (empty when it was not run)."""
    f = result.get("continual_check_summary")
    if not f:
        return ""
    return (f"### The same at Adam lr {cfg.cl_lr_check:g}\n\nAll three arms again, the same seeds, orders and "
            f"episodes, with Adam's lr {cfg.cl_lr_check:g} instead of {cfg.cl_lr:g}: does the Laplace prior remember, or "
            f"does it restrain a plain fine-tuning that over-fits at the larger lr?\n\n{cl_table(f, names)}\n\n"
            f"{cl_paired(f, len(cfg.cl_seeds))}")


def _cell(token: str) -> str:
    text = token.strip().replace("|", "\\|").replace("`", "'")
    return f"`{text}`" if text else repr(token)


def token_table(result: dict) -> str:
    """Per-token total and epistemic uncertainty of the unbiased ensemble (seed of the first run) on the
    shortest statement of each set: what the per-statement means average."""
    r = result["per_seed"][0]["unbiased_ensemble"]
    lines = ["Per token (unbiased ensemble, first seed; the token predicted at each position, nats):", ""]
    for key, label in (("english", "English"), ("translated", "Albanian")):
        toks = result["example_tokens"][key]
        tot, epi = r[key]["token_total"][0], r[key]["token_epistemic"][0]
        lines += [f"| {label} token | " + " | ".join(_cell(t) for t in toks) + " |",
                  "|---|" + "---:|" * len(toks),
                  "| total | " + " | ".join(f"{v:.2f}" for v in tot) + " |",
                  "| epistemic | " + " | ".join(f"{v:.3f}" for v in epi) + " |", ""]
    return "\n".join(lines)


def plot(summary: dict, per_seed: list[dict], cl_per_seed: list[dict], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 7.5))
    ax1 = fig.add_subplot(2, 3, 1)
    ax2 = fig.add_subplot(2, 3, 2)
    ax3 = fig.add_subplot(2, 3, 3)
    x = np.arange(len(METHODS))
    for ax, key, title in ((ax1, "auroc_epistemic", "AUROC, epistemic (EN vs SQ)"), (ax2, "auroc_total", "AUROC, total entropy")):
        m = np.array([summary[k][key] for k in METHODS])
        ax.bar(x, m[:, 0], yerr=m[:, 1], capsize=3, color=[f"C{i}" for i in range(len(METHODS))])
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xticks(x, [LABELS[k].split(" (")[0] for k in METHODS], rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=9)
    r0 = per_seed[0]
    for method, colour in (("deep_ensemble", "C2"), ("unbiased_ensemble", "C3"), ("laplace", "C5")):
        ax3.scatter(r0[method]["english"]["epistemic"], r0[method]["english"]["total"], s=10, color=colour, marker="o",
                    label=f"{LABELS[method].split(' (')[0]} EN")
        ax3.scatter(r0[method]["translated"]["epistemic"], r0[method]["translated"]["total"], s=14, color=colour, marker="x",
                    label=f"{LABELS[method].split(' (')[0]} SQ")
    ax3.set_xscale("symlog", linthresh=1e-4)
    ax3.set_xlabel("per-statement epistemic (nats)", fontsize=8)
    ax3.set_ylabel("per-statement total (nats)", fontsize=8)
    ax3.set_title(f"statements, seed {0}", fontsize=9)
    ax3.legend(fontsize=6)
    n_cl = len(cl_per_seed)
    for e, name in enumerate(names):
        ax = fig.add_subplot(2, len(names), len(names) + e + 1)
        for method, colour in (("plain", "C0"), ("laplace", "C1")):
            ys = np.array([[pt[name] for pt in r[method]["curve"]] for r in cl_per_seed])  # (seeds, epochs)
            mean = ys.mean(0)
            se = ys.std(0, ddof=1) / math.sqrt(n_cl) if n_cl > 1 else np.zeros_like(mean)
            xs = np.arange(1, mean.size + 1)
            ax.plot(xs, mean, marker="o", ms=3, color=colour, label=CL_LABELS[method])
            ax.fill_between(xs, mean - se, mean + se, color=colour, alpha=0.25, lw=0)
        joint = float(np.mean([r["joint"]["after_episode"][0][name] for r in cl_per_seed]))
        ax.axhline(joint, color="k", ls="--", lw=1, label=CL_LABELS["joint"])
        ax.axhline(cl_per_seed[0]["initial"][name], color="grey", ls=":", lw=1, label="pretrained")
        per_episode = len(cl_per_seed[0]["plain"]["curve"]) // len(names)
        for b in range(1, len(names)):
            ax.axvline(b * per_episode + 0.5, color="grey", lw=0.5)
        ax.set_title(f"held-out loss: {name}", fontsize=9)
        ax.set_xlabel("epoch (episodes separated by lines)", fontsize=8)
        if e == 0:
            ax.legend(fontsize=6)
    fig.suptitle(f"SmolLM2-135M, last layer Bayesian (top); LoRA continual learning, mean ± s.e. over {n_cl} seed(s) "
                 "(bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load_text(result: dict) -> str:
    load = result.get("load_average")
    if not load or None in load:
        return "on a shared machine (wall time depends on the load of other jobs, CPU time much less)"
    return (f"at a 1-minute load average of {load[0]:.1f} at the start and {load[1]:.1f} at the end on "
            f"{os.cpu_count()} cores (a shared machine: wall time depends on the other jobs' load, CPU time much less)")


def report(result: dict) -> str:
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["config"].items()})
    quick = result["quick"] or result.get("smoke", False)
    command = "thermoai reproduce llm_uncertainty" + (" --smoke" if result.get("smoke") else " --quick" if result["quick"] else "")
    names = list(EPISODES)
    verdict_lines = "\n".join(f"- **{v['verdict']}**: {v['claim']}. {v['reason']}." for v in result["verdicts"])
    sources = "\n".join(f"- {s['what']}: {s['language']}; licence {s['licence']}." for s in D.SOURCES.values())
    ex = result["examples"]
    return f"""# Bayesian SmolLM2: epistemic uncertainty and continual learning

The posteriors paper's LLM experiments (Duffield et al., arXiv 2406.00104; `research/posteriors.md` §2)
at the size of the embedded SmolLM2-135M-Instruct on two CPU cores. Produced by

```
{command}
```

in {result['seconds']:.0f} s of wall-clock time and {result.get('cpu_seconds', float('nan')):.0f} s of CPU time on
{result.get('threads', '?')} threads, {_load_text(result)} ({'quick settings: a smoke test, not a result' if quick else 'default settings'}).

## Set-up

- **Random subset**: the last decoder layer ({result['n_params']:,} parameters), everything else frozen; the
  activations entering it are computed once (`thermoai.bayes.lm.LMSubset.prefix`) and reused by every member,
  step and draw. Prior N(θ_pretrained, {cfg.prior_sd:g}² I); batch-averaged log posterior over
  N = {result['n_train_tokens']} training tokens ({cfg.n_train_chunks} windows of {cfg.chunk_length} tokens of the Python
  language reference), so T = 1/N is the Bayesian posterior.
- **Methods** (all from the pretrained weights, {cfg.steps} SGHMC steps of {cfg.batch_chunks} windows, lr {cfg.lr:g},
  friction α {cfg.alpha:g}, momenta 0): MAP (T = 0, one member); deep ensemble (T = 0, {cfg.members} members, each
  with its own minibatch order); unbiased ensemble (the same members and orders at T = 1/N); serial SGHMC (one
  chain at T = 1/N, {cfg.sghmc_samples} snapshots every {cfg.sghmc_thin} steps after the same {cfg.steps} steps);
  Laplace (diagonal empirical Fisher of the per-window log-likelihoods at the MAP plus the prior precision,
  {cfg.laplace_samples} draws). Ensembles run as one vmapped update (`thermoai.bayes.ensemble`).
- **Statements**: {result['n_statements']} Sphinx messages in English (in distribution) and the same messages in
  Albanian ({cfg.language}; out of distribution), each at most {cfg.max_statement_tokens} tokens, teacher-forced.
  Example: "{ex[0][0]}" / "{ex[0][1]}".
  Per token: total entropy of the mean predictive, aleatoric (mean member entropy), epistemic (their
  difference), `thermoai.bayes.uncertainty`; per statement: the mean over its predicted tokens. AUROC:
  Albanian scored as the positive class. Held-out perplexity: {cfg.n_heldout_chunks} unseen windows of the Python
  reference, under each method's predictive (the mean over members of their probabilities).
- Seeds {list(cfg.seeds)} (minibatch orders, noise, Laplace draws); mean ± standard error over seeds. The
  pretrained model does not depend on the seed.

Text sources (all shipped in packages that `make venv` installs; nothing is downloaded):

{sources}

## Out-of-distribution detection and perplexity

{table(result['methods'])}

![LLM uncertainty](llm_uncertainty.png)

{token_table(result)}

## Continual learning

LoRA adapters (peft, r {cfg.lora_r}, α {cfg.lora_alpha}, q/v/o of the last layer: {result['n_lora_params']:,} parameters)
over three episodes of {cfg.cl_train_chunks} training windows each (held out: the last {cfg.cl_heldout_chunks} windows):
{', '.join(names)} (Sphinx's messages in {cfg.cl_language}). Adam (lr {cfg.cl_lr:g}), {cfg.cl_epochs} passes per episode,
batches of {cfg.cl_batch_chunks} windows. Laplace: after each episode the prior becomes N(MAP, (prec + λ F)⁻¹) with F the
diagonal empirical Fisher of the episode's windows and λ = {cfg.cl_lambda:g} (first prior sd {cfg.cl_first_prior_sd:g}); plain
fine-tuning is the same with λ = 0; joint trains once on all episodes. Forgetting: held-out loss of an
episode at the end minus right after it was learned (lower is better); plasticity: its loss drop while it
was learned (higher is better). Seeds {list(cfg.cl_seeds)}; mean ± s.e.

{cl_table(result['continual_summary'], names)}

{cl_paired(result['continual_summary'], len(cfg.cl_seeds))}

{check_section(result, cfg, names)}

## The paper's findings, checked

A difference counts as reproduced when it has the claimed sign and lies more than two standard errors
from zero over seeds; "partly" when the sign is right but the difference is within two standard errors.

{verdict_lines}

Time per phase of the first seed (s): {', '.join(f'{k} {v:.0f}' for k, v in result['per_seed'][0]['timings'].items())};
continual learning per seed (s): {', '.join(f"{r.get('seconds', float('nan')):.0f}" for r in result['continual'] + result.get('continual_lr_check', []))}.
"""


# ---------------------------------------------------------------------------------------------- run


def _load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not on every platform
        return None


def headline(result: dict) -> dict:
    """The report's verdicts, headline table and seeds, from the numbers of ``llm_uncertainty.json``."""
    methods = result["methods"]
    rows = [
        [LABELS[m], methods[m]["auroc_epistemic"], methods[m]["auroc_total"], methods[m]["perplexity"]]
        for m in METHODS
    ]
    cl = result["continual_summary"]
    rows += [[f"{CL_LABELS[m]}: mean forgetting (nats/token)", cl[m]["mean_forgetting"], None, None] for m in ("plain", "laplace")]
    caption = (f"SmolLM2-135M, last layer Bayesian; AUROC of per-statement uncertainty, Albanian vs English "
               f"Sphinx messages; perplexity on held-out Python-reference windows; mean ± s.e. over seeds "
               f"{result['config']['seeds']} (continual: LoRA, seeds {result['config']['cl_seeds']})")
    return {
        "verdicts": result["verdicts"],
        "summary": {"columns": ["method", "AUROC epistemic", "AUROC total", "held-out perplexity"], "rows": rows, "caption": caption},
        "seeds": result["config"]["seeds"],
    }


def choose_threads(requested: int, load: float | None, cores: int | None = None, default: int | None = None) -> int:
    """Torch threads for the run: ``requested`` if positive; else ``default`` (torch's own count) when the
    machine's 1-minute ``load`` average leaves that many of its ``cores`` idle (to half a core), else 1.

    Why: each parallel torch op waits at a barrier for all its threads, so on cores that other jobs keep
    busy two threads spend much of their time waiting for each other (measured here at load 6 on 2 cores:
    a training step took 4x the wall time and 3x the CPU time of one thread)."""
    if not isinstance(requested, int) or requested < 0:
        raise ValueError(f"threads must be a non-negative int (0: automatic); got {requested!r}")
    if requested > 0:
        return requested
    cores = (os.cpu_count() or 1) if cores is None else cores
    default = torch.get_num_threads() if default is None else default
    # a load average of a few tenths is a quiet machine (our own start-up, system daemons)
    if load is None or load + default <= cores + 0.5:
        return default
    return 1


def run(out_dir: Path, quick: bool = False, config: Config | None = None, smoke: bool = False) -> dict:
    """Run both parts and write ``llm_uncertainty.md``, ``.json`` and ``.png`` into ``out_dir``; returns the
    numbers (config, per-seed results, method summaries, continual-learning tables, ``verdicts`` and the
    report's headline ``summary``). ``smoke`` runs :data:`SMOKE` (seconds, every code path). Torch's thread
    count is set for the run (:func:`choose_threads`) and restored after it."""
    cfg = config if config is not None else (SMOKE if smoke else QUICK if quick else Config())
    previous = torch.get_num_threads()
    torch.set_num_threads(choose_threads(cfg.threads, _load_average()))
    try:
        return _run(out_dir, quick, cfg, smoke)
    finally:
        torch.set_num_threads(previous)


def _run(out_dir: Path, quick: bool, cfg: Config, smoke: bool) -> dict:
    from tqdm.auto import tqdm

    from thermoai.memory.model import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), _load_average()
    with warnings.catch_warnings():
        # vmap over SDPA attention falls back to a loop over members for that one op; correct, only noted
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        model, tokenizer = load_model()
        sub = lm.LMSubset(model, layer=-1)
        paragraphs = D.python_reference()
        windows = D.chunk(tokenizer, paragraphs, cfg.chunk_length, cfg.n_train_chunks + cfg.n_heldout_chunks)
        english, translated, pairs = statement_sets(sub, tokenizer, cfg)
        sets = {
            "train": text_set(sub, windows[: cfg.n_train_chunks]),
            "heldout": text_set(sub, windows[cfg.n_train_chunks :]),
            "english": english,
            "translated": translated,
        }
        jobs = len(cfg.seeds) * 5 + len(cfg.cl_seeds) * (2 * len(EPISODES) + 1) * (2 if cfg.cl_lr_check > 0 else 1)
        with tqdm(total=jobs, desc="llm uncertainty", unit="job") as bar:
            per_seed = [run_seed(sub, sets, cfg, seed, bar) for seed in cfg.seeds]
            n_params = sub.n_params()
            lora = inject_lora(model, sub.layer, cfg.lora_r, cfg.lora_alpha)
            texts = episode_texts(tokenizer, cfg)
            episodes = {}
            for name, ids in texts.items():
                data = text_set(lora, ids)
                tr = TextSet(data.ids[: cfg.cl_train_chunks], data.mask[: cfg.cl_train_chunks], data.hidden[: cfg.cl_train_chunks])
                te = TextSet(data.ids[cfg.cl_train_chunks :], data.mask[cfg.cl_train_chunks :], data.hidden[cfg.cl_train_chunks :])
                episodes[name] = (tr, te)
            cl_per_seed = [run_continual(lora, episodes, cfg, seed, bar) for seed in cfg.cl_seeds]
            check_cfg = replace(cfg, cl_lr=cfg.cl_lr_check)
            cl_check = [run_continual(lora, episodes, check_cfg, seed, bar) for seed in cfg.cl_seeds] if cfg.cl_lr_check > 0 else []
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    names = list(EPISODES)
    result = {
        "config": asdict(cfg),
        "smoke": smoke,
        "quick": quick,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        # 1-minute load averages of the machine at the start and the end (other jobs share the cores)
        "load_average": [load_start, _load_average()],
        "threads": torch.get_num_threads(),
        "n_params": n_params,
        "n_lora_params": lora.n_params(),
        "n_train_tokens": n_predicted(sets["train"]),
        "n_statements": len(pairs),
        "examples": pairs[:3],
        # the predicted tokens (positions 1..n-1) of the first row of each statement set, for the report
        "example_tokens": {
            key: [tokenizer.decode([int(t)]) for t in sets[key].ids[0, 1 : int(sets[key].mask[0].sum())]]
            for key in ("english", "translated")
        },
        "sources": D.SOURCES,
        "per_seed": per_seed,
        "seeds": list(cfg.seeds),
        "methods": summarise(per_seed),
        "continual": cl_per_seed,
        "continual_summary": forgetting_table(cl_per_seed, names),
        "continual_lr_check": cl_check,
        "continual_check_summary": forgetting_table(cl_check, names) if cl_check else None,
        "verdicts": verdicts(per_seed, cl_per_seed, names, cl_check, cfg.cl_lr_check),
    }
    result["summary"] = headline(result)["summary"]
    (out_dir / "llm_uncertainty.json").write_text(json.dumps(result, indent=1))
    plot(result["methods"], per_seed, cl_per_seed, names, out_dir / "llm_uncertainty.png")
    (out_dir / "llm_uncertainty.md").write_text(report(result))
    return result
