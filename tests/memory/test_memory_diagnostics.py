"""Retrieval diagnostic: recall@k and attention mass of the answer span, checked against eager attention
and against an independent top-k, and on a planted fact with SmolLM2."""

import pytest
import torch

from thermoai.memory import MemoryBank, attach
from thermoai.memory.citations import answer_citations
from thermoai.memory.diagnostics import RetrievalDiagnostic, answer_steps, classify, diagnose, find_span, span_memories


def test_all_memories_retrieved_mass_equals_full_context_attention(tiny, doc_ids):
    """k = all memories, original positions: every head retrieves the span (recall 1, chance 1) and the
    span's mass is the full-context attention of the last query to those positions (eager attention)."""
    m, target = 40, torch.arange(10, 16)
    bank = MemoryBank.build(tiny, ids=doc_ids[:m], progress=False)
    with attach(tiny, bank, topk=m, position_mode="original", record=True) as mind:
        tiny(doc_ids[None, m:60])
        d = diagnose(mind, target)
    assert d.hit.shape == (1, 3, 4) and bool(d.hit.all()) and d.recall == 1.0 and d.chance == 1.0
    tiny.set_attn_implementation("eager")
    try:
        attentions = tiny(doc_ids[None, :60], output_attentions=True).attentions
    finally:
        tiny.set_attn_implementation("sdpa")
    expected = torch.stack([a[0, :, -1, 10:16].sum(-1) for a in attentions])  # [L, H]
    torch.testing.assert_close(d.mass[0], expected, atol=1e-6, rtol=1e-4)
    expected_memory = torch.stack([a[0, :, -1, :m].sum(-1) for a in attentions])
    torch.testing.assert_close(d.memory_mass[0], expected_memory, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(d.mass_by_layer, expected.mean(-1), atol=1e-6, rtol=1e-4)


def test_hits_equal_an_independent_cosine_top_k(tiny, doc_ids):
    """k = 3 in layer 1 only, position 'first': hit[h] is whether the 3 memories of highest cosine with
    head h's query (computed here from the q/k projections) meet the span."""
    m, k, target = 40, 3, torch.arange(5, 25)
    bank = MemoryBank.build(tiny, ids=doc_ids[:m], progress=False)
    captured = {}
    attn = tiny.model.layers[1].self_attn
    hook = attn.q_proj.register_forward_hook(lambda mod, i, o: captured.setdefault("q", o))
    try:
        with attach(tiny, bank, topk=k, layers=[1], record=True) as mind:
            tiny(doc_ids[None, m:50])
            d = diagnose(mind, target)
    finally:
        hook.remove()
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q = captured["q"].view(1, 10, 4, 16).transpose(1, 2)
    pos = torch.arange(10)[None]
    cos, sin = tiny.model.rotary_emb(q, pos)
    q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    q = q[0, :, -1]  # [H, d], last query
    keys = bank.keys[1]  # [n_kv, M, d], position 0: unrotated
    expected = []
    for h in range(4):
        sim = torch.nn.functional.cosine_similarity(q[h][None], keys[h // 2], dim=-1)
        expected.append(bool(torch.isin(sim.topk(k).indices, target).any()))
    assert d.layers == (1,) and d.hit[0, 0].tolist() == expected
    assert 0 < d.chance < 1 and d.chance == pytest.approx(1 - (20 * 19 * 18) / (40 * 39 * 38))


def test_classify_and_bad_input(tiny, doc_ids):
    hit = torch.zeros(2, 3, 4, dtype=torch.bool)
    zeros = torch.zeros(2, 3, 4)
    d = RetrievalDiagnostic((0, 1, 2), torch.arange(3), hit, zeros, zeros, 10, 1000)
    assert classify(d) == "not retrieved"
    d.hit[:, 2, :2] = True  # half of layer 2's heads at every step
    assert classify(d) == "retrieved" and d.recall_by_layer.tolist() == [0, 0, 0.5]
    assert d.summary()["verdict"] == "retrieved"
    with pytest.raises(ValueError, match="evidence"):
        find_span("The harbour master.", "lighthouse")
    assert find_span("The Harbour master.", "harbour MASTER") == (4, 18)
    bank = MemoryBank.build(tiny, ids=doc_ids[:20], progress=False)
    with pytest.raises(ValueError, match="character spans"):
        span_memories(bank, 0, 5)
    with attach(tiny, bank, topk=2) as mind:
        with pytest.raises(ValueError, match="record=True"):
            diagnose(mind, [1, 2])


def test_planted_fact_is_retrieved_while_answering_and_cited(smollm):
    """SmolLM2 answers from a 600-token document held only in memory (the facts of tests/memory/
    test_commands.py); while it writes each right answer, its top-k memories include the answer's words
    far above chance, and the fact's sentence gets more attention than any other sentence-sized stretch
    but the attention sink at the document's start."""
    from thermoai.experiments.emt_data import make_document

    model, tokenizer = smollm
    doc = make_document(600, 3, seed=5, count_tokens=lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]))
    bank = MemoryBank.build(model, tokenizer, text=doc.text, window=256, stride=128, progress=False)
    checked = 0
    with attach(model, bank, topk=10, record=True) as mind:
        for fact, offset in zip(doc.facts, doc.fact_offsets):
            if fact.kind != "fictional":
                continue
            mind.reset_citations()
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": fact.question}],
                                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
            n = prompt["input_ids"].shape[1]
            out = model.generate(**prompt, max_new_tokens=24, do_sample=False)[0, n:]
            assert fact.answer.lower() in tokenizer.decode(out).lower()
            start = doc.text.index(fact.answer, offset)
            steps = answer_steps(tokenizer, out, fact.answer)
            assert steps is not None and steps.stop > steps.start
            answer = diagnose(mind, (start, start + len(fact.answer)), steps=steps)
            assert classify(answer) == "retrieved" and answer.best_recall > 4 * answer.chance, answer.summary()
            sentence = diagnose(mind, (offset, offset + len(fact.statement)), steps=steps)
            # the same number of memories anywhere else gets less attention than the fact's sentence, except
            # the document's first tokens: the attention sink (0.35 of all attention here), see citations
            width = int(sentence.target.numel())
            others = [diagnose(mind, torch.arange(a, a + width), steps=steps).span_mass for a in range(width, len(bank) - width, width)
                      if not torch.isin(torch.arange(a, a + width), sentence.target).any()]
            assert sentence.span_mass > max(others), (sentence.span_mass, max(others))
            # citations a user can check: the top-ranked span holds the fact; the sink is not evidence
            cited = answer_citations(mind, steps=int(steps.stop), top=3)
            assert cited and cited[0].start < offset + len(fact.statement) and cited[0].end > offset, cited
            assert all(0 not in c.positions for c in cited) and cited[0].text == doc.text[cited[0].start:cited[0].end]
            checked += 1
    assert checked >= 1
