"""Extended Mind attention on a tiny random GQA Llama: exactness, grouping, positions, cache, batch, dtype."""

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from thermoai.memory import MemoryBank, attach, suspended
from thermoai.memory.attention import emt_attention

from memory_helpers import make_tiny_llama

TOL = dict(atol=2e-5, rtol=1e-5)  # float32 round-off of a 3-layer model


def test_prefix_memory_with_all_keys_equals_full_context(tiny, doc_ids):
    """(a) memory = exact prefix, k = all, original positions -> full-context logits."""
    m = 50
    full = tiny(doc_ids[None]).logits
    bank = MemoryBank.build(tiny, ids=doc_ids[:m], window=64, progress=False)
    with attach(tiny, bank, topk=m, position_mode="original"):
        out = tiny(doc_ids[None, m:]).logits
        torch.testing.assert_close(out, full[:, m:], **TOL)
    # with fewer memories, or memories placed at position 0, the comparison above would fail
    with attach(tiny, bank, topk=m // 2, position_mode="original"):
        partial = tiny(doc_ids[None, m:]).logits
    assert (partial - full[:, m:]).abs().max() > 1e-3
    # "first" positions put all memories at position 0: not the full-context computation
    with attach(tiny, bank, topk=m, position_mode="first"):
        first = tiny(doc_ids[None, m:]).logits
    assert (first - full[:, m:]).abs().max() > 1e-3


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_prefix_memory_exact_for_multi_query_and_multi_head(doc_ids, kv_heads):
    """(a) again with one shared kv head (MQA) and with as many kv heads as query heads (MHA)."""
    model = make_tiny_llama(kv_heads=kv_heads, layers=2)
    full = model(doc_ids[None, :60]).logits
    bank = MemoryBank.build(model, ids=doc_ids[:45], progress=False)
    assert bank.keys.shape[1] == kv_heads
    with attach(model, bank, topk=45, position_mode="original"):
        torch.testing.assert_close(model(doc_ids[None, 45:60]).logits, full[:, 45:], **TOL)


def test_topk_zero_equals_model_without_memory(tiny, doc_ids):
    """(b)"""
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    plain = tiny(doc_ids[None, 40:]).logits
    with attach(tiny, bank, topk=0) as mind:
        torch.testing.assert_close(tiny(doc_ids[None, 40:]).logits, plain, atol=0, rtol=0)
        mind.topk = 3
        assert (tiny(doc_ids[None, 40:]).logits - plain).abs().max() > 1e-3
        with suspended(tiny):
            torch.testing.assert_close(tiny(doc_ids[None, 40:]).logits, plain, atol=0, rtol=0)
        with mind.settings(topk=0):
            torch.testing.assert_close(tiny(doc_ids[None, 40:]).logits, plain, atol=0, rtol=0)
        assert mind.topk == 3
        with pytest.raises(ValueError, match="settings"):
            with mind.settings(window=3):
                pass
    assert tiny.config._attn_implementation == "sdpa"  # restored on detach
    torch.testing.assert_close(tiny(doc_ids[None, 40:]).logits, plain, atol=0, rtol=0)


def reference_attention(query, key, value, bank_keys, bank_values, k, scaling, threshold=None):
    """Per query head, per token, with the bank repeated to every query head (the reference's way)."""
    b, n_heads, s, d = query.shape
    group = n_heads // key.shape[1]
    keys_rep = bank_keys.repeat_interleave(group, 0)  # [H, M, d]
    values_rep = bank_values.repeat_interleave(group, 0)
    key_rep, value_rep = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    kv = key.shape[2]
    out = torch.zeros(b, s, n_heads, d)
    for bi in range(b):
        for h in range(n_heads):
            for i in range(s):
                q = query[bi, h, i]
                sims = torch.nn.functional.cosine_similarity(q[None], keys_rep[h], dim=-1)
                top = sims.topk(k).indices
                mem_logits = keys_rep[h, top] @ q * scaling
                if threshold is not None:
                    mem_logits = torch.where(sims[top] > threshold, mem_logits, torch.tensor(float("-inf")))
                visible = kv - s + i + 1
                local_logits = key_rep[bi, h, :visible] @ q * scaling
                w = torch.softmax(torch.cat([mem_logits, local_logits]), 0)
                out[bi, i, h] = w[:k] @ values_rep[h, top] + w[k:] @ value_rep[bi, h, :visible]
    return out


@pytest.mark.parametrize("threshold", [None, 0.1])
def test_gqa_grouping_equals_repeated_bank(tiny, doc_ids, threshold):
    """(c) the grouped computation equals repeating the bank to all query heads."""
    bank = MemoryBank.build(tiny, ids=doc_ids[:30], progress=False)
    generator = torch.Generator().manual_seed(3)
    b, s, kv, d = 2, 5, 7, 16
    query = torch.randn(b, 4, s, d, generator=generator)
    key = torch.randn(b, 2, kv, d, generator=generator)
    value = torch.randn(b, 2, kv, d, generator=generator)
    mask = torch.zeros(b, 1, s, kv).masked_fill(~torch.ones(s, kv, dtype=torch.bool).tril(kv - s), torch.finfo(torch.float32).min)
    module = tiny.model.layers[1].self_attn
    with attach(tiny, bank, topk=6, threshold=threshold, position_mode="first"):
        out, _ = emt_attention(module, query, key, value, mask, scaling=d ** -0.5)
    expected = reference_attention(query, key, value, bank.keys[1], bank.values[1], 6, d ** -0.5, threshold)
    assert out.shape == (b, s, 4, d)
    torch.testing.assert_close(out, expected, **TOL)


def test_blocked_topk_equals_torch_topk():
    from thermoai.memory.attention import _topk

    generator = torch.Generator().manual_seed(5)
    # long rows take the blocked path (incomplete tail block included), short ones torch.topk
    for shape, k in (((3, 7, 5000), 10), ((2, 2, 2600), 10), ((4, 700), 3), ((2, 100), 10)):
        scores = torch.randn(*shape, generator=generator)
        values, idx = _topk(scores, k)
        expected = scores.topk(k, dim=-1)
        assert torch.equal(values, expected.values) and torch.equal(idx, expected.indices)
    # all winners in one block, or in the tail block
    scores = torch.randn(2, 64 * 50 + 17, generator=generator)
    scores[0, 128:138] = 10 + torch.arange(10.0)
    scores[1, -7:] = 10 + torch.arange(7.0)
    values, idx = _topk(scores, 10)
    expected = scores.topk(10, dim=-1)
    assert torch.equal(values, expected.values) and torch.equal(idx, expected.indices)


@pytest.mark.parametrize("s, batch, budget", [(1, 1, None), (5, 1, None), (5, 2, None), (5, 2, 3 * 2 * 3000)])
def test_large_bank_equals_repeated_bank(tiny, doc_ids, s, batch, budget, monkeypatch):
    """(c) with 3000 memories: the blocked top-k, for one query token (decoding) and for several, in a
    batch, and with the prefill's query rows scored in blocks of 3 (a similarity budget of 3 rows)."""
    import dataclasses

    from thermoai.memory import attention as A

    if budget is not None:
        monkeypatch.setitem(A._SIM_BUDGET, "cpu", budget)

    small = MemoryBank.build(tiny, ids=doc_ids[:30], progress=False)
    generator = torch.Generator().manual_seed(6)
    m = 3000
    n_layers, n_kv, _, d = small.keys.shape
    bank = dataclasses.replace(small, keys=torch.randn(n_layers, n_kv, m, d, generator=generator),
                               values=torch.randn(n_layers, n_kv, m, d, generator=generator),
                               token_ids=torch.full((m,), 5), positions=torch.arange(m),
                               char_spans=torch.full((m, 2), -1), n_positions=m)
    kv = 7
    query = torch.randn(batch, 4, s, d, generator=generator)
    key = torch.randn(batch, 2, kv, d, generator=generator)
    value = torch.randn(batch, 2, kv, d, generator=generator)
    mask = torch.zeros(1, 1, s, kv).masked_fill(~torch.ones(s, kv, dtype=torch.bool).tril(kv - s), torch.finfo(torch.float32).min)
    module = tiny.model.layers[1].self_attn
    with attach(tiny, bank, topk=10):
        out, _ = emt_attention(module, query, key, value, mask, scaling=d ** -0.5)
    expected = reference_attention(query, key, value, bank.keys[1], bank.values[1], 10, d ** -0.5)
    torch.testing.assert_close(out, expected, **TOL)


def test_constant_and_none_positions_match_rope_of_raw_query(tiny, doc_ids):
    """Memory logits use the query rotated to distance D ("constant") or not rotated ("none")."""
    bank = MemoryBank.build(tiny, ids=doc_ids[:20], progress=False)
    module = tiny.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(4)
    s, d = 3, 16
    raw_q = torch.randn(1, 4, s, d, generator=generator)
    positions = torch.tensor([[7, 8, 9]])
    rotary = tiny.model.rotary_emb
    cos, sin = rotary(raw_q, positions)
    query, _ = apply_rotary_pos_emb(raw_q, raw_q, cos, sin)
    key = torch.randn(1, 2, 10, d, generator=generator)
    value = torch.randn(1, 2, 10, d, generator=generator)
    mask = torch.zeros(1, 1, s, 10).masked_fill(~torch.ones(s, 10, dtype=torch.bool).tril(7), torch.finfo(torch.float32).min)
    for mode, target in (("constant", 25), ("none", 0)):
        with attach(tiny, bank, topk=5, position_mode=mode, distance=25):
            out, _ = emt_attention(module, query, key, value, mask, scaling=d ** -0.5, position_ids=positions)
        cos_t, sin_t = rotary(raw_q, torch.full((1, s), target))
        q_target, _ = apply_rotary_pos_emb(raw_q, raw_q, cos_t, sin_t)
        # the expected computation: retrieval and memory logits with q at the target angle,
        # local attention with the normally rotated query
        group = 2
        expected = torch.zeros(1, s, 4, d)
        for h in range(4):
            keys_h, values_h = bank.keys[0, h // group], bank.values[0, h // group]
            for i in range(s):
                qt = q_target[0, h, i]
                top = torch.nn.functional.cosine_similarity(qt[None], keys_h, dim=-1).topk(5).indices
                logits = torch.cat([keys_h[top] @ qt, key[0, h // group, : 8 + i] @ query[0, h, i]]) * d ** -0.5
                w = torch.softmax(logits, 0)
                expected[0, i, h] = w[:5] @ values_h[top] + w[5:] @ value[0, h // group, : 8 + i]
        torch.testing.assert_close(out, expected, **TOL)


def test_layers_subset_and_causality(tiny, doc_ids):
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    prompt = doc_ids[None, 40:60]
    plain = tiny(prompt).logits
    with attach(tiny, bank, topk=4, layers=[2]):
        # retrieval only in the last layer: earlier layers are untouched, so the output differs
        # from the plain model only through layer 2
        only_last = tiny(prompt).logits
        # causal masking survives the custom attention: a later token cannot change earlier logits
        changed = prompt.clone()
        changed[0, -1] = (changed[0, -1] + 1 - 3) % 98 + 3
        torch.testing.assert_close(tiny(changed).logits[:, :-1], only_last[:, :-1], atol=0, rtol=0)
    assert (only_last - plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="layers"):
        attach(tiny, bank, layers=[3])


def test_generate_with_cache_equals_without(tiny, doc_ids):
    """(e)"""
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], window=16, stride=4, progress=False)
    prompt = doc_ids[None, 40:52]
    for mode in ("first", "original", "constant", "none"):
        with attach(tiny, bank, topk=5, position_mode=mode):
            cached = tiny.generate(prompt, max_new_tokens=8, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True)
            uncached = tiny.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False,
                                     output_logits=True, return_dict_in_generate=True)
        assert torch.equal(cached.sequences, uncached.sequences), mode
        torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), **TOL)


def test_batch_with_left_padding_equals_single_rows(tiny, doc_ids):
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    long, short = doc_ids[40:52], doc_ids[60:67]
    ids = torch.stack([long, torch.cat([torch.zeros(5, dtype=torch.long), short])])
    mask = torch.stack([torch.ones(12, dtype=torch.long), torch.cat([torch.zeros(5), torch.ones(7)]).long()])
    with attach(tiny, bank, topk=5):
        batched = tiny.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=0)
        singles = [tiny.generate(row[None], max_new_tokens=6, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True) for row in (long, short)]
    logits = torch.stack(batched.logits, 1)  # [b, steps, vocab]
    for row, single in enumerate(singles):
        torch.testing.assert_close(logits[row], torch.stack(single.logits, 1)[0], **TOL)
        assert torch.equal(batched.sequences[row, -6:], single.sequences[0, -6:])


@pytest.mark.parametrize("threshold", [None, 0.05])
def test_fused_local_attention_equals_joint_softmax(tiny, doc_ids, monkeypatch, threshold):
    """On a CPU the local part comes from torch's fused kernel and is merged through its log-sum-exp;
    it must equal the materialised joint softmax: prefill, cached decoding, left padding, citations."""
    from thermoai.memory import attention

    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    long, short = doc_ids[40:52], doc_ids[60:67]
    ids = torch.stack([long, torch.cat([torch.zeros(5, dtype=torch.long), short])])
    mask = torch.stack([torch.ones(12, dtype=torch.long), torch.cat([torch.zeros(5), torch.ones(7)]).long()])

    def run(fused):
        monkeypatch.setattr(attention, "_FUSED_LOCAL", fused)
        with attach(tiny, bank, topk=5, threshold=threshold, record=True) as mind:
            out = tiny.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, pad_token_id=0)
            weights = [w for step in mind.steps for _, _, w in step]
        return torch.stack(out.logits, 1), out.sequences, torch.stack(weights)

    assert attention._FUSED_LOCAL  # this torch has the fused CPU kernel: the default path is the fused one
    fused_logits, fused_seq, fused_w = run(True)
    joint_logits, joint_seq, joint_w = run(False)
    torch.testing.assert_close(fused_logits, joint_logits, **TOL)
    torch.testing.assert_close(fused_w, joint_w, **TOL)
    assert torch.equal(fused_seq, joint_seq)


def test_bfloat16_close_to_float32(doc_ids):
    model32 = make_tiny_llama()
    model16 = make_tiny_llama(dtype=torch.bfloat16)
    bank = MemoryBank.build(model32, ids=doc_ids[:40], progress=False)
    prompt = doc_ids[None, 40:56]
    with attach(model32, bank, topk=5, position_mode="original"):
        ref = model32(prompt).logits
    with attach(model16, bank, topk=5, position_mode="original") as mind:
        assert mind._layers[0].unit_keys.dtype == torch.bfloat16  # the bank is placed once in the model's dtype
        low = model16(prompt).logits
        gen = model16.generate(prompt, max_new_tokens=4, do_sample=False)
    assert low.dtype == torch.bfloat16 and gen.shape == (1, 20)
    # bfloat16 has 8 mantissa bits (relative step 2^-8 ~ 0.004); through 3 layers the logits
    # (scale ~1) stay within a few percent
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05


def test_bad_arguments(tiny, doc_ids):
    bank = MemoryBank.build(tiny, ids=doc_ids[:10], progress=False)
    with pytest.raises(ValueError, match="position_mode"):
        attach(tiny, bank, position_mode="sideways")
    with pytest.raises(ValueError, match="topk"):
        attach(tiny, bank, topk=-1)
    with pytest.raises(ValueError, match="threshold"):
        attach(tiny, bank, threshold=2.0)
    with pytest.raises(TypeError, match="MemoryBank"):
        attach(tiny, "bank")
    with pytest.raises(ValueError, match="rebuild the bank"):
        attach(make_tiny_llama(seed=9), bank)
    with attach(tiny, bank):
        with pytest.raises(RuntimeError, match="already has an ExtendedMind"):
            attach(tiny, bank)
    assert tiny.config._attn_implementation == "sdpa"


def test_non_finite_bank_is_refused(tiny, doc_ids):
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    bank.values[1, 0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 1 holds NaN or Inf"):
        attach(tiny, bank)
    bank.values[1, 0, 3, 0] = 0.0
    bank.keys[0, 1, 5, 2] = float("inf")
    with pytest.raises(ValueError, match="layer 0 holds NaN or Inf"):
        attach(tiny, bank)
    assert not hasattr(tiny, "_thermoai_mind")  # nothing half-attached


def test_canonical_position_mode():
    from thermoai.memory import POSITION_MODES, canonical_position_mode

    assert [canonical_position_mode(mode) for mode in POSITION_MODES] == list(POSITION_MODES)
    assert canonical_position_mode("infllm") == "constant"
    assert canonical_position_mode("as_if_first") == "first"
    for bad in ("sideways", None, 3):
        with pytest.raises(ValueError, match="position_mode"):
            canonical_position_mode(bad)


class ExactStandIn:
    """Stands in for faiss.IndexHNSWFlat with exact inner-product search (faiss-cpu is optional)."""

    def __init__(self, dim, links, metric):
        self.hnsw = type("Params", (), {"efSearch": 0})()
        self.data = None

    def add(self, vectors):
        self.data = torch.from_numpy(vectors)

    def search(self, queries, k):
        scores = torch.from_numpy(queries) @ self.data.T
        best = scores.topk(k, dim=-1)
        return best.values.numpy(), best.indices.numpy()


def test_index_path_equals_exact_search(tiny, doc_ids, monkeypatch):
    import sys
    import types

    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    prompt = doc_ids[None, 40:55]
    with attach(tiny, bank, topk=4, threshold=0.05):
        exact = tiny(prompt).logits
    fake = types.SimpleNamespace(IndexHNSWFlat=ExactStandIn, METRIC_INNER_PRODUCT=0)
    monkeypatch.setitem(sys.modules, "faiss", fake)
    with attach(tiny, bank, topk=4, threshold=0.05, index="faiss"):
        indexed = tiny(prompt).logits
    torch.testing.assert_close(indexed, exact, **TOL)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    with pytest.raises(ImportError, match="faiss-cpu"):
        attach(tiny, bank, index="faiss")


def test_bank_built_while_attached_ignores_the_mind(tiny, doc_ids):
    plain = MemoryBank.build(tiny, ids=doc_ids[:30], window=16, stride=8, progress=False)
    with attach(tiny, plain, topk=5):
        again = MemoryBank.build(tiny, ids=doc_ids[:30], window=16, stride=8, progress=False)
    torch.testing.assert_close(again.keys, plain.keys, atol=0, rtol=0)


def test_skip_first_memory_equals_a_bank_without_it(tiny, doc_ids):
    """skip_memories="first" retrieves exactly as a bank cut to its other memories would, and the
    recorded indices are those of the whole bank (the skipped one never appears)."""
    from dataclasses import replace

    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    cut = replace(bank, keys=bank.keys[:, :, 1:], values=bank.values[:, :, 1:], token_ids=bank.token_ids[1:],
                  positions=bank.positions[1:], char_spans=bank.char_spans[1:])
    prompt = doc_ids[None, 40:52]
    with attach(tiny, cut, topk=6, record=True) as mind:
        expected = tiny(prompt).logits
        expected_idx = [i + 1 for _, i, _ in mind.steps[0]]
    with attach(tiny, bank, topk=6, record=True, skip_memories="first") as mind:
        got = tiny(prompt).logits
        got_idx = [i for _, i, _ in mind.steps[0]]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(got_idx, expected_idx))
    assert all((i != 0).all() for i in got_idx)
    with attach(tiny, bank, topk=6) as mind:
        assert not torch.equal(tiny(prompt).logits, got)  # the first memory mattered
    with pytest.raises(ValueError, match="skip_memories"):
        attach(tiny, bank, skip_memories="all")


def test_output_attentions_in_retrieving_and_other_layers(tiny, doc_ids):
    """Retrieving layers return [b, H, q, k + kv] joint weights (rows sum to 1, the memory part equal to the
    recorded weights of the last query); non-retrieving layers return eager weights; outputs unchanged."""
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    prompt = doc_ids[None, 40:52]
    with attach(tiny, bank, topk=5, layers=[0, 2], record=True) as mind:
        plain = tiny(prompt).logits
        mind.reset_citations()
        out = tiny(prompt, output_attentions=True)
    torch.testing.assert_close(out.logits, plain, atol=1e-5, rtol=1e-5)
    a0, a1, a2 = out.attentions
    assert a0.shape == (1, 4, 12, 5 + 12) and a2.shape == a0.shape and a1.shape == (1, 4, 12, 12)
    for a in out.attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
    recorded = mind.steps[0][0][2].view(4, 5)  # layer 0, last query, weights of its 5 memories
    torch.testing.assert_close(a0[0, :, -1, :5], recorded, atol=1e-6, rtol=1e-5)
    assert torch.equal(a1[0].triu(1), torch.zeros_like(a1[0]))  # causal


def test_neighbours_add_the_following_memories_once(tiny, doc_ids):
    """neighbours=n attends to each retrieved memory and the n after it, each distinct memory once: with
    k = all memories and n = 2 every memory is there three times over, and the logits equal k = all with
    no neighbours (the duplicates are masked); the recorded indices are runs of consecutive memories."""
    m = 24
    bank = MemoryBank.build(tiny, ids=doc_ids[:m], progress=False)
    prompt = doc_ids[None, m:36]
    with attach(tiny, bank, topk=m, position_mode="original") as mind:
        everything = tiny(prompt).logits
    with attach(tiny, bank, topk=m, position_mode="original", neighbours=2) as mind:
        torch.testing.assert_close(tiny(prompt).logits, everything, atol=1e-5, rtol=1e-5)
    with attach(tiny, bank, topk=3, record=True) as mind:
        plain = tiny(prompt).logits
    with attach(tiny, bank, topk=3, neighbours=2, record=True) as mind:
        assert not torch.equal(tiny(prompt).logits, plain)
        _, idx, _ = mind.steps[0][0]
    runs = idx.view(4, 3, 3)  # [heads, retrieved, 1 + neighbours]
    assert torch.equal(runs, (runs[..., :1] + torch.arange(3)).clamp_max(m - 1))
    with pytest.raises(ValueError, match="neighbours"):
        attach(tiny, bank, neighbours=-1)
