"""The Extended Mind perplexity experiment: its documents, the shortcuts it takes, and a tiny run."""

import json
import math

import pytest
import torch

from thermoai.experiments import emt_perplexity as E


@pytest.fixture(scope="module")
def smollm():
    pytest.importorskip("transformers")
    from thermoai.memory import load_model

    return load_model()


def test_documents_are_long_real_texts_in_a_fixed_order(smollm):
    _, tokenizer = smollm
    docs = E.documents(tokenizer, 3, 4096)
    assert [d.name for d in docs] == [d.name for d in E.documents(tokenizer, 3, 4096)]
    assert len({d.ids for d in docs}) == 3 and all(len(d.ids) == 4096 for d in docs)
    assert all("PSF" in d.licence and d.source for d in docs)
    from pydoc_data.topics import topics

    first = tokenizer(topics["specialnames"], add_special_tokens=False)["input_ids"][:4096]
    assert docs[0].ids == tuple(first)
    with pytest.raises(ValueError, match="n_documents"):
        E.documents(tokenizer, 50, 8192)


@torch.no_grad()
def test_scores_match_separate_forward_passes(smollm):
    model, tokenizer = smollm
    ids = torch.tensor(E.documents(tokenizer, 1, 160)[0].ids)
    window, scored = 64, 24
    out = E.score_document(model, ids, (48, 100, 160), window, scored, topk=3)

    def nll(context):  # a plain forward pass of exactly that context
        logits = model(input_ids=context[None]).logits[0, -scored - 1:-1]
        return float(torch.nn.functional.cross_entropy(logits, context[-scored:]))

    for n in (48, 100, 160):
        # one long forward pass stands for every shorter input (causal attention)
        assert out["full"][n] == pytest.approx(nll(ids[:n]), abs=2e-4)
        assert out["truncated"][n] == pytest.approx(nll(ids[max(0, n - window):n]), abs=2e-4)
    # nothing to remember at L <= W: the three conditions coincide
    assert out["extended_mind"][48] == out["truncated"][48]
    assert out["full"][48] == pytest.approx(out["truncated"][48], abs=2e-4)
    # memories change the prediction; against a bank built on exactly that prefix (not a cut one)
    from thermoai.memory import MemoryBank, attach

    bank = MemoryBank.build(model, ids=ids[:160 - window], window=window, stride=window, progress=False)
    with attach(model, bank, topk=3):
        direct = nll(ids[160 - window:160])
    assert out["extended_mind"][160] == pytest.approx(direct, abs=2e-4)
    assert abs(out["extended_mind"][160] - out["truncated"][160]) > 1e-3


def test_bad_settings_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="scored"):
        E.run(tmp_path, quick=True, lengths=(64, 128), window=32, scored=64)
    with pytest.raises(ValueError, match="topk"):
        E.run(tmp_path, quick=True, topk=0)
    with pytest.raises(ValueError, match="window"):
        E.run(tmp_path, quick=True, window=1, scored=1)


def test_smoke_run_writes_report_and_its_headline_is_rebuilt_from_json(tmp_path, smollm):
    model, tokenizer = smollm
    kwargs = {k: v for k, v in E.REPRODUCE["smoke"].items()}
    result = E.run(tmp_path, model=model, tokenizer=tokenizer, progress=False, **kwargs)
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"emt_perplexity.{ext}").stat().st_size > 0
    saved = json.loads((tmp_path / "emt_perplexity.json").read_text())
    assert E.headline(saved) == E.headline(result)
    verdicts = {v["claim"]: v["verdict"] for v in result["verdicts"]}
    assert set(verdicts.values()) <= {"reproduced", "partly", "not reproduced", "not tested here"}
    # the table's perplexity is the mean over documents of exp(NLL)
    n = str(kwargs["lengths"][-1])
    docs = saved["documents"]
    mean = sum(math.exp(d["extended_mind"][n]) for d in docs) / len(docs)
    assert saved["table"][n]["extended_mind"]["perplexity"] == pytest.approx(mean)
    diff = [d["extended_mind"][n] - d["truncated"][n] for d in docs]
    assert saved["paired"][n]["extended_mind - truncated"]["nll_difference"] == pytest.approx(sum(diff) / len(diff))
