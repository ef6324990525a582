"""thermoai.bayes.lm: the frozen prefix and the random suffix of a causal LM, on small random models.

The embedded SmolLM2 is exercised in tests/experiments/test_llm_uncertainty.py; here tiny random Llama and
GPT-2 models (made in a fraction of a second) check exactness, the subset's extraction and insertion,
and the errors.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from thermoai import tree as T  # noqa: E402
from thermoai.bayes import lm  # noqa: E402


def tiny_llama(tie: bool = False, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(1))


def full_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_suffix_logits_equal_the_whole_model(llama, ids, layer):
    sub = lm.LMSubset(llama, layer=layer)
    hidden = sub.prefix(ids, batch_size=2)  # rows in two forward passes
    assert hidden.shape == (3, 12, 32) and not hidden.requires_grad
    out = sub.logits(sub.params(), hidden)
    assert float((out - full_logits(llama, ids)).abs().max()) < 1e-5


def test_right_padding_leaves_the_real_tokens_logits_unchanged(llama, ids):
    sub = lm.LMSubset(llama)
    short = ids[:1, :7]
    padded = torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    out = sub.logits(sub.params(), sub.prefix(padded))[:, :7]
    assert float((out - full_logits(llama, short)).abs().max()) < 1e-5


def test_gpt2_layout_is_found_too():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
    model.requires_grad_(False)
    sub = lm.LMSubset(model, layer=-1)
    assert all(name.startswith("transformer.h.1.") for name in sub.names)
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    out = sub.logits(sub.params(), sub.prefix(x))
    assert float((out - full_logits(model, x)).abs().max()) < 1e-5


def test_the_subset_round_trips_through_the_tree_helpers_and_frozen_weights_stay_put(llama):
    sub = lm.LMSubset(llama, layer=-1)
    full = sub.full_tree()
    extracted = T.tree_extract(full, sub.keep)
    assert sorted(k for k, v in extracted.items() if v is not None) == sorted(sub.names)
    assert all(k.startswith("model.layers.2.") for k in sub.names)
    params = sub.params()
    assert all(params[k] is not full[k] for k in params)  # copies, not the model's tensors
    merged = sub.merged(params)
    assert T.structure(merged) == T.structure(full)
    for name, value in merged.items():
        if name in params:
            assert value is params[name]
        else:
            assert value is full[name]  # frozen tensors are not copied
    # tree_insert of the extracted leaves gives the tree back, leaf for leaf
    back = T.tree_insert(full, {k: v for k, v in extracted.items() if v is not None}, sub.keep)
    assert all(back[k] is full[k] for k in full)


def test_load_writes_only_the_subset(ids):
    model = tiny_llama(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sub = lm.LMSubset(model, layer=1, include="mlp.")
    assert sub.names and all(".mlp." in n and (".1." in n or ".2." in n) for n in sub.names)
    params = {k: v + 0.5 for k, v in sub.params().items()}
    sub.load(params)
    after = model.state_dict()
    for name, value in after.items():
        if name in params:
            assert torch.equal(value, params[name])
        else:
            assert torch.equal(value, before[name]), name  # bit-identical
    with pytest.raises(ValueError, match="missing"):
        sub.load({k: v for k, v in list(params.items())[1:]})


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_gradient_and_vmap_over_the_subset(llama, ids):
    sub = lm.LMSubset(llama)
    hidden = sub.prefix(ids)
    params = sub.params()
    grads = torch.func.grad(lambda p: sub.token_log_likelihood(p, hidden, ids).mean())(params)
    assert set(grads) == set(params) and all(float(g.abs().sum()) > 0 for g in grads.values())
    stacked = {k: torch.stack([v, v + 0.1]) for k, v in params.items()}
    both = torch.func.vmap(lambda p: sub.logits(p, hidden))(stacked)
    second = sub.logits({k: v + 0.1 for k, v in params.items()}, hidden)
    assert torch.allclose(both[1], second, atol=1e-5) and torch.allclose(both[0], sub.logits(params, hidden), atol=1e-5)


def test_token_log_likelihood_is_the_next_token_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    x = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    ll = lm.token_log_likelihood(logits, x, mask)
    expected = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None]).squeeze(-1)
    assert torch.allclose(ll[0], expected[0], atol=1e-6)
    assert torch.allclose(ll[1, :2], expected[1, :2], atol=1e-6) and torch.equal(ll[1, 2:], torch.zeros(2))
    with pytest.raises(ValueError, match="mask"):
        lm.token_log_likelihood(logits, x, mask[:, :3])
    with pytest.raises(ValueError, match="input_ids"):
        lm.token_log_likelihood(logits, x[:, :3])
    for value in (float("nan"), float("inf")):
        bad = logits.clone()
        bad[1, 2, 3] = value
        with pytest.raises(ValueError, match=r"logits: NaN or \+inf entries give NaN log-likelihoods in rows \[1\]"):
            lm.token_log_likelihood(bad, x, mask)
    # -inf at a class is "impossible", not an error: finite unless it is the target
    impossible = logits.clone()
    impossible[0, 0, (int(x[0, 1]) + 1) % 7] = float("-inf")
    assert bool(torch.isfinite(lm.token_log_likelihood(impossible, x)[0, 0]))


def test_a_tied_head_is_never_random():
    model = tiny_llama(tie=True)
    sub = lm.LMSubset(model, layer=-1, include=lambda name: True)  # everything the suffix may hold
    assert "model.embed_tokens.weight" not in sub.names and "lm_head.weight" not in sub.names
    assert "model.norm.weight" in sub.names
    with pytest.raises(ValueError, match="used before block"):
        lm.LMSubset(model, layer=-1, include=["model.embed_tokens.weight"])


def test_bad_input_is_refused_with_the_argument_named(llama, ids):
    with pytest.raises(ValueError, match="include: no parameter"):
        lm.LMSubset(llama, include="no_such_parameter")
    with pytest.raises(ValueError, match="include: no parameter"):
        lm.LMSubset(llama, layer=-1, include="layers.0.")  # exists, but only before the suffix
    with pytest.raises(ValueError, match="used before block"):
        lm.LMSubset(llama, layer=2, include=["model.layers.0.mlp.up_proj.weight"])
    with pytest.raises(ValueError, match="not parameter names"):
        lm.LMSubset(llama, include=["nope"])
    with pytest.raises(ValueError, match="empty string"):
        lm.LMSubset(llama, include="")
    with pytest.raises(TypeError, match="include"):
        lm.LMSubset(llama, include=3)
    with pytest.raises(ValueError, match="layer"):
        lm.LMSubset(llama, layer=3)
    with pytest.raises(TypeError, match="nn.Module"):
        lm.LMSubset("model")
    sub = lm.LMSubset(llama)
    with pytest.raises(ValueError, match="window is 64"):
        sub.prefix(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        sub.prefix(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="hidden"):
        sub.logits(sub.params(), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="hidden has 65 positions but the model's window is 64"):
        sub.logits(sub.params(), torch.zeros(1, 65, 32))
    with pytest.raises(TypeError, match="params"):
        sub.load([1, 2])
    with pytest.raises(TypeError, match="decoder blocks"):
        lm.LMSubset(torch.nn.Linear(2, 2))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_positions_run_the_head_only_where_asked(llama, ids):
    sub = lm.LMSubset(llama)
    hidden, params = sub.prefix(ids), sub.params()
    full = sub.logits(params, hidden)  # (3, 12, 97)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, :5] = True
    mask[2, 3:9] = True
    picked = sub.logits(params, hidden, positions=mask)
    assert picked.shape == (11, 97) and torch.allclose(picked, full[mask], atol=1e-6)
    index = mask.flatten().nonzero().flatten()
    assert torch.equal(sub.logits(params, hidden, positions=index), picked)
    # the index form works under vmap over the subset
    stacked = {k: torch.stack([v, v + 0.1]) for k, v in params.items()}
    both = torch.func.vmap(lambda p: sub.logits(p, hidden, positions=index))(stacked)
    assert torch.allclose(both[0], picked, atol=1e-5)
    with pytest.raises(ValueError, match="positions: a bool mask"):
        sub.logits(params, hidden, positions=mask[:, :4])
    with pytest.raises(ValueError, match="positions: flat indices"):
        sub.logits(params, hidden, positions=torch.tensor([36]))
    with pytest.raises(ValueError, match="positions: an index tensor"):
        sub.logits(params, hidden, positions=torch.zeros(3, 12))
    with pytest.raises(TypeError, match="positions"):
        sub.logits(params, hidden, positions=[0, 1])


def test_a_subset_that_selects_nothing_is_refused_in_every_form(llama):
    for include in ([], lambda name: False, "lora_"):  # no names; a predicate that keeps none; no adapters
        with pytest.raises(ValueError, match="the subset would be empty"):
            lm.LMSubset(llama, include=include)
