"""Extended Mind on a tiny random-weight Gemma 3 (no wheel needed): 2 key/value heads, a 16-token window."""

import pytest
import torch

from thermoai.memory import MemoryBank, attach
from thermoai.memory.gemma import layer_rope, layer_window, mask_outside_window

WINDOW = 16


def _tiny_gemma3(**changes):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    settings = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, sliding_window=WINDOW, max_position_embeddings=512,
                    query_pre_attn_scalar=16, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    settings.update(changes)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**settings)).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def tiny_gemma():
    return _tiny_gemma3()


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (1, n), generator=generator)
    ids[0, 0] = 2  # <bos>
    return ids


def test_tiny_gemma3_has_two_rope_tables_and_one_global_layer(tiny_gemma):
    cfg = tiny_gemma.config
    rotary = tiny_gemma.model.rotary_emb
    assert [layer_window(cfg, i) for i in range(6)] == [WINDOW] * 5 + [None]
    local, _ = layer_rope(rotary, cfg, 0)
    global_, _ = layer_rope(rotary, cfg, 5)
    # inv_freq_i = base^(-2i/d): the second entries hold the two bases 10^4 and 10^6
    assert torch.allclose(local[1], torch.tensor(1e4 ** (-2 / 16))) and torch.allclose(global_[1], torch.tensor(1e6 ** (-2 / 16)))


@pytest.mark.parametrize("prefix", [40, 8])
def test_tiny_gemma3_prefix_memory_equals_full_context(tiny_gemma, prefix):
    """``P`` = 40 > window: the sliding layers' full model sees only the last 16 positions, and
    ``local_layers="window"`` drops the memories beyond them, so memory = full context; with 2
    key/value heads this also checks that the bank reads Gemma's ``[b, n_kv, s, d]`` normed keys
    head by head. ``P`` = 8 with an 8-token prompt: all 16 tokens fit the window, so ``"all"`` holds too."""
    model = tiny_gemma
    ids = _ids(prefix + 8, seed=prefix)
    with torch.no_grad():
        full = model(ids).logits[:, prefix:]
        plain = model(ids[:, prefix:]).logits
        bank = MemoryBank.build(model, ids=ids[0, :prefix], remove_special=False, progress=False)
        modes = ("window",) if prefix > WINDOW else ("window", "all")
        for local_layers in modes:
            with attach(model, bank, topk=prefix, position_mode="original", local_layers=local_layers) as mind:
                torch.testing.assert_close(model(ids[:, prefix:]).logits, full, atol=2e-5, rtol=1e-5)
                mind.topk = 0
                torch.testing.assert_close(model(ids[:, prefix:]).logits, plain, atol=0, rtol=0)
        if prefix > WINDOW:
            for local_layers in ("all", "global"):
                with attach(model, bank, topk=prefix, position_mode="original", local_layers=local_layers):
                    assert (model(ids[:, prefix:]).logits - full).abs().max() > 1e-2
    assert (plain - full).abs().max() > 1e-2


def test_tiny_gemma3_every_position_mode_runs(tiny_gemma):
    model = tiny_gemma
    ids = _ids(30, seed=5)
    with torch.no_grad():
        bank = MemoryBank.build(model, ids=ids[0], progress=False)
        for mode in ("first", "original", "constant", "none"):
            with attach(model, bank, topk=4, position_mode=mode):
                out = model(ids[:, :20]).logits
            assert torch.isfinite(out).all()


def test_window_mask_follows_the_position_mode():
    logits = torch.zeros(1, 1, 1, 3, 2)  # [b, n_kv, G, s, k]
    idx = torch.tensor([0, 1]).expand(1, 1, 1, 3, 2)
    queries = torch.tensor([[0, 5, 9]])
    original = torch.tensor([-6, -1])  # memories at p - P
    masked = mask_outside_window(logits, idx, original, queries, 10, "original", 0)
    # distance t - (p - P): query 0 sees 6, 1; query 5 sees 11 (dropped), 6; query 9 sees 15, 10 (both dropped)
    expect = torch.tensor([[False, False], [True, False], [True, True]])
    assert torch.equal(torch.isinf(masked[0, 0, 0]), expect)
    first = mask_outside_window(logits, idx, torch.zeros(2, dtype=torch.long), queries, 6, "first", 0)
    assert torch.equal(torch.isinf(first[0, 0, 0]), torch.tensor([[False, False], [False, False], [True, True]]))
    assert torch.isinf(mask_outside_window(logits, idx, original, queries, 10, "constant", 10)).all()
    assert not torch.isinf(mask_outside_window(logits, idx, original, queries, 10, "constant", 9)).any()
    assert not torch.isinf(mask_outside_window(logits, idx, original, queries, 1, "none", 0)).any()


def test_softcapping_is_refused():
    model = _tiny_gemma3(attn_logit_softcapping=50.0, num_hidden_layers=1)
    bank = MemoryBank.build(model, ids=_ids(10)[0], progress=False)
    with pytest.raises(TypeError, match="softcapping"):
        attach(model, bank)
