"""Citations: recorded memory attention, checked against the full-context attention weights."""

import pytest
import torch

from thermoai.memory import MemoryBank, attach, cite, memory_weights

from memory_helpers import make_tiny_llama


def test_memory_weights_equal_full_context_attention(tiny, doc_ids):
    """With the prefix as memory, all memories and original positions, the recorded weight of each
    memory is the full-context attention of the last query to that position, averaged over layers
    and heads (computed here by the eager implementation with output_attentions)."""
    m = 40
    bank = MemoryBank.build(tiny, ids=doc_ids[:m], progress=False)
    with attach(tiny, bank, topk=m, position_mode="original", record=True) as mind:
        tiny(doc_ids[None, m:60])
        weights = memory_weights(mind)
    assert len(weights) == 1 and len(weights[0]) == 1  # one batch row, one forward step
    indices, values = weights[0][0]
    recorded = torch.zeros(m).index_put_((indices,), values)

    tiny.set_attn_implementation("eager")
    try:
        attentions = tiny(doc_ids[None, :60], output_attentions=True).attentions
    finally:
        tiny.set_attn_implementation("sdpa")
    expected = torch.stack([a[0, :, -1, :m] for a in attentions]).mean(dim=(0, 1))
    torch.testing.assert_close(recorded, expected, atol=1e-6, rtol=1e-4)


def test_one_step_per_generated_token_and_spans(smollm):
    _, tokenizer = smollm
    model = make_tiny_llama(vocab=len(tokenizer), layers=2)
    text = ("Ostend keeps 1,204 lanterns. The harbour master is Lena Vos. She lights them at dusk "
            "every day except Sunday, when the bells of the old church ring twice.")
    bank = MemoryBank.build(model, tokenizer, text=text, progress=False)
    prompt = tokenizer("Who lights the lanterns?", return_tensors="pt")
    with attach(model, bank, topk=3, record=True) as mind:
        model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        assert len(mind.steps) == 5 and all(len(step) == 2 for step in mind.steps)
        result = mind.citations(top=6)
        mind.reset_citations()
        assert mind.steps == []
    assert len(result) == 1 and len(result[0]) == 5
    for spans in result[0]:
        assert 1 <= len(spans) <= 6
        assert [c.weight for c in spans] == sorted((c.weight for c in spans), reverse=True)
        for c in spans:
            assert c.text == text[c.start:c.end] and c.text.strip()  # blank sinks are skipped
            assert 0 not in c.positions  # the first document token is a sink, skipped by default
            assert list(c.positions) == sorted(c.positions)
            # merged memories are neighbours in the document
            assert all(b - a <= 1 for a, b in zip(c.positions, c.positions[1:]))
            assert 0 < c.weight <= 1


def test_citations_need_recording(tiny, doc_ids):
    bank = MemoryBank.build(tiny, ids=doc_ids[:20], progress=False)
    with attach(tiny, bank, topk=2) as mind:
        tiny(doc_ids[None, 20:30])
        with pytest.raises(ValueError, match="record=True"):
            mind.citations()
        with pytest.raises(ValueError, match="top"):
            cite(mind, top=0)


def test_answer_citations_subtract_the_content_free_baseline(tiny, doc_ids):
    """With the baseline, a memory's reported contribution is its value-weighted attention minus what a
    BOS query gives it; without, it is the raw contribution; both come from the same records."""
    from thermoai.memory.citations import answer_citations, baseline_contributions, contributions

    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    with attach(tiny, bank, topk=5, record=True) as mind:
        tiny(doc_ids[None, 40:50])
        raw = contributions(mind)
        base = baseline_contributions(mind)
        assert len(mind.steps) == 1  # the baseline's forward is not added to the records
        cited = answer_citations(mind, top=40, merge_gap=1, baseline=True)
        plain = answer_citations(mind, top=40, merge_gap=1, baseline=False)
    excess = (raw - base).clamp_min(0)
    assert sum(c.weight for c in cited) == pytest.approx(float(excess.sum()), rel=1e-5)
    assert sum(c.weight for c in plain) == pytest.approx(float(raw.sum()), rel=1e-5)
    assert base.sum() > 0 and 0 < (raw > 0).sum() <= 5 * 4 * 3  # at most k x heads x layers memories
