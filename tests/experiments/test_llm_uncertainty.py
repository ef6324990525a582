"""The language-model uncertainty experiment: its text, metrics and methods on the embedded SmolLM2.

Whether the paper's findings hold is the experiment's result, not a test; these tests check that the
pieces compute what they claim (exact splits, untouched frozen weights, the predictive's likelihood equal
to the model's own) and that a smoke run writes a complete report.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from thermoai.bayes import lm  # noqa: E402
from thermoai.experiments import llm_data as D  # noqa: E402
from thermoai.experiments import llm_uncertainty as E  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


@pytest.fixture(scope="module")
def smollm():
    from thermoai.memory.model import load_model

    return load_model()


@pytest.fixture(scope="module")
def sub(smollm):
    return lm.LMSubset(smollm[0], layer=-1)


@pytest.fixture(scope="module")
def tiny_train(sub, smollm):
    ids = D.chunk(smollm[1], D.python_reference(), 8, 3)
    return E.text_set(sub, ids)


# ------------------------------------------------------------------------------------------- text


def test_translated_statements_are_real_sentence_pairs():
    pairs = D.translated_statements("sq")
    assert len(pairs) >= 100  # Sphinx 8.2.3's Albanian catalogue gives 120
    assert len({en for en, _ in pairs}) == len(pairs)
    for en, sq in pairs:
        assert en != sq and len(en.split()) >= 6 and len(sq.split()) >= 6
        assert not any(c in en + sq for c in "%{}<>\n")
    # Albanian letters occur in the translations, not in the English originals
    assert sum("ë" in sq for _, sq in pairs) > len(pairs) // 2 and not any("ë" in en for en, _ in pairs)
    with pytest.raises(ValueError, match="language"):
        D.sphinx_catalogue("xx_NOPE")
    with pytest.raises(ValueError, match="language"):
        D.sphinx_catalogue("../etc")
    with pytest.raises(ValueError, match="min_words"):
        D.translated_statements("sq", min_words=0)


def test_episode_texts_exist_and_differ():
    assert len(D.dataset_descriptions()) >= 20 and len(D.sphinx_messages("fr")) >= 300
    assert len(D.python_reference()) >= 100
    assert not set(D.dataset_descriptions()) & set(D.python_reference())


def test_encode_statements_pads_right_and_refuses_or_truncates_long_text(smollm):
    tok = smollm[1]
    texts = ["A short statement.", "A somewhat longer statement about the Python language reference."]
    enc = D.encode_statements(tok, texts, max_length=32)
    n0 = len(tok(texts[0], add_special_tokens=False)["input_ids"])
    assert enc.input_ids.shape[0] == 2 and enc.lengths.tolist()[0] == n0
    assert enc.mask[0].tolist() == [True] * n0 + [False] * (enc.input_ids.shape[1] - n0)
    with pytest.raises(ValueError, match="texts\\[1\\] has .* tokens, more than max_length=4"):
        D.encode_statements(tok, texts, max_length=4)
    cut = D.encode_statements(tok, texts, max_length=4, truncate=True)
    assert cut.input_ids.shape == (2, 4) and cut.truncated == int(n0 > 4) + 1
    assert cut.input_ids[1].tolist() == tok(texts[1], add_special_tokens=False)["input_ids"][:4]
    with pytest.raises(ValueError, match="max_length"):
        D.encode_statements(tok, texts, max_length=1)
    with pytest.raises(ValueError, match="non-empty"):
        D.encode_statements(tok, "one string", max_length=8)


def test_chunk_cuts_consecutive_windows(smollm):
    tok = smollm[1]
    windows = D.chunk(tok, D.dataset_descriptions(), 16, 5)
    assert windows.shape == (5, 16)
    flat = tok("\n\n".join(D.dataset_descriptions()), add_special_tokens=False)["input_ids"][:80]
    assert windows.flatten().tolist() == flat
    with pytest.raises(ValueError, match="n_chunks"):
        D.chunk(tok, ["a few words"], 16, 3)


def test_text_longer_than_the_window_is_refused(sub):
    with pytest.raises(ValueError, match="window is 8192"):
        sub.prefix(torch.zeros(1, 8193, dtype=torch.long))


# ------------------------------------------------------------------------------------------- metrics


def test_auroc_is_the_mann_whitney_probability():
    assert E.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert E.auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert E.auroc([1.0, 1.0], [1.0, 1.0]) == 0.5  # all ties
    # pairs (pos > neg): 0.5>0.1, 0.5>0.4, 0.3>0.1; 0.3<0.4 -> 3 of 4
    assert E.auroc([0.1, 0.4], [0.5, 0.3]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both groups"):
        E.auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        E.auroc([float("nan")], [1.0])


def test_verdict_needs_two_standard_errors():
    assert E.verdict(0.3, 0.1, 3)[0] == "reproduced"
    assert E.verdict(0.1, 0.1, 3)[0] == "partly"
    assert E.verdict(-0.1, 0.1, 3)[0] == "not reproduced"
    assert E.verdict(0.1, 0.0, 1)[0] == "partly"  # one seed: never more than partly


# ------------------------------------------------------------------------------------------- methods


def test_unbiased_ensemble_on_smollm_changes_only_the_subset(smollm, sub, tiny_train):
    model = smollm[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dataclasses.replace(E.SMOKE, members=2, steps=2, batch_chunks=1)
    pretrained = sub.params()
    log_post = E.make_log_posterior(sub, pretrained, cfg.prior_sd, E.n_predicted(tiny_train))
    draws = E.run_ensemble(sub, tiny_train, log_post, cfg, seed=0, unbiased=True)
    assert len(draws) == 2 and sorted(draws[0]) == sorted(sub.names)
    # the model itself is untouched by training (the functional core never writes into it)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for name in sub.names:  # T = 1/N injects noise into every coordinate of every member
        assert not torch.equal(draws[0][name], pretrained[name])
        assert not torch.equal(draws[0][name], draws[1][name])
    sub.load(draws[0])
    try:
        for name, value in model.state_dict().items():
            if name in draws[0]:
                assert torch.equal(value, draws[0][name])
            else:
                assert torch.equal(value, before[name]), f"frozen {name} changed"
    finally:
        sub.load(pretrained)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_evaluation_matches_the_model_and_agreeing_draws_have_no_epistemic(smollm, sub):
    model, tok = smollm
    enc = D.encode_statements(tok, ["The if statement is used for conditional execution.",
                                    "Se çdo gjë shkon mirë, dokumentimi do të ndërtohet."], max_length=40)
    data = E.text_set(sub, enc.input_ids, enc.mask)
    p = sub.params()
    exact = E.evaluate(sub, [p, p], data, batch=2, dtype=torch.float64)
    assert max(exact["epistemic"]) < 1e-9 and all(t > 0 for t in exact["total"])
    res = E.evaluate(sub, [p, p], data, batch=1)  # the run's float32 softmax: float32 rounding only
    assert max(res["epistemic"]) < 1e-5
    assert res["total"] == pytest.approx(exact["total"], abs=1e-4)
    # the head runs on the real tokens only: padding changes nothing
    assert len(res["token_total"][0]) == int(enc.mask[0].sum()) - 1
    # the predictive's log-likelihood of one draw is the model's own next-token log-likelihood
    with torch.no_grad():
        logits = model(input_ids=enc.input_ids, use_cache=False).logits
    ll = lm.token_log_likelihood(logits, enc.input_ids, enc.mask)
    expected = float(ll.sum() / enc.mask[:, 1:].sum())
    # float32 logits of |z| ~ 30 from differently shaped batches round differently: ~1e-4 per token
    assert res["mean_log_lik"] == pytest.approx(expected, abs=1e-3)
    assert res["n_tokens"] == int(enc.mask[:, 1:].sum())
    # different draws: positive epistemic on every statement
    q = {k: v + 0.02 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) for k, v in p.items()}
    assert min(E.evaluate(sub, [p, q], data, batch=1)["epistemic"]) > 0


def test_smoke_run_writes_a_complete_report(tmp_path):
    result = E.run(tmp_path, smoke=True)
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"llm_uncertainty.{ext}").stat().st_size > 0
    saved = json.loads((tmp_path / "llm_uncertainty.json").read_text())
    assert set(saved["methods"]) == set(E.METHODS)
    for method in E.METHODS:
        s = saved["methods"][method]
        assert 0.0 <= s["auroc_epistemic"][0] <= 1.0 and math.isfinite(s["perplexity"][0])
    # a single deterministic model has no epistemic part: AUROC of ties
    assert saved["methods"]["pretrained"]["auroc_epistemic"][0] == 0.5
    # four claims, and the forgetting claim once more at the check learning rate
    assert [v["verdict"] in ("reproduced", "partly", "not reproduced") for v in result["verdicts"]] == [True] * 5
    assert "lr 0.001" in result["verdicts"][-1]["claim"] and len(saved["continual_lr_check"]) == len(E.SMOKE.cl_seeds)
    assert saved["continual_check_summary"]["paired"]["forgetting_plain_minus_laplace"][0] == pytest.approx(
        result["continual_check_summary"]["paired"]["forgetting_plain_minus_laplace"][0])
    head = E.headline(saved)
    assert head["summary"]["columns"][0] == "method" and len(head["summary"]["rows"]) == len(E.METHODS) + 2
    text = (tmp_path / "llm_uncertainty.md").read_text()
    assert "--smoke" in text and "PSF License" in text and "BSD-2-Clause" in text
    assert "### The same at Adam lr 0.001" in text


def test_choose_threads_drops_to_one_on_a_busy_machine():
    assert E.choose_threads(0, 0.2, cores=2, default=2) == 2  # quiet
    assert E.choose_threads(0, 6.0, cores=2, default=2) == 1  # other jobs keep the cores busy
    assert E.choose_threads(0, None, cores=2, default=2) == 2  # no load average on this platform
    assert E.choose_threads(3, 6.0, cores=2, default=2) == 3  # asked for
    with pytest.raises(ValueError, match="threads"):
        E.choose_threads(-1, 0.0)


def test_heldout_losses_in_one_forward_equal_one_per_episode(sub, smollm):
    tok = smollm[1]
    a = E.text_set(sub, D.chunk(tok, D.python_reference(), 8, 2))
    b = E.text_set(sub, D.chunk(tok, D.dataset_descriptions(), 8, 3))
    c = E.text_set(sub, D.chunk(tok, D.dataset_descriptions(), 6, 1))  # another length: the loop
    p = sub.params()
    both = E.heldout_losses(sub, p, {"a": a, "b": b})
    for name, data in (("a", a), ("b", b)):
        alone = E.heldout_losses(sub, p, {name: data})[name]
        assert both[name] == pytest.approx(alone, abs=1e-5)
    mixed = E.heldout_losses(sub, p, {"a": a, "c": c})
    assert mixed["a"] == pytest.approx(both["a"], abs=1e-5) and math.isfinite(mixed["c"])
