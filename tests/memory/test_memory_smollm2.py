"""The embedded SmolLM2-135M-Instruct: offline load, exact prefix memory, k = 0, refusal, cache."""

import os
from pathlib import Path

import torch

from thermoai.memory import MemoryBank, attach, load_model
from thermoai.memory.model import DEFAULT_MODEL_NAME, cache_dir

from memory_helpers import make_tiny_llama

DOCUMENT = (
    "The lighthouse of Ostend was rebuilt in 1859 after a storm destroyed the old tower. Its keeper, "
    "Lena Vos, kept a logbook of every ship that passed, and in the winter of 1861 she counted "
    "four hundred and twelve vessels."
)
QUESTION = " How many vessels did the keeper count in the winter of 1861?"


def test_default_model_is_smollm2_and_cached(smollm):
    model, tokenizer = smollm
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    assert (cache_dir() / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert model.config.name_or_path == DEFAULT_MODEL_NAME and not model.training
    again, _ = load_model()  # from the safetensors cache
    assert torch.equal(again.model.layers[3].self_attn.k_proj.weight, model.model.layers[3].self_attn.k_proj.weight)


def test_cache_dir_is_thermoai_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("THERMOAI_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.delenv("THERMOAI_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "thermoai"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "thermoai"


def test_the_suite_keeps_the_model_cache_in_the_repository():
    """tests/conftest.py points the cache at the repository's ignored .pytest_cache, never at ~/.cache."""
    suite_cache = Path(__file__).resolve().parents[2] / ".pytest_cache"
    assert cache_dir() == Path(os.environ["THERMOAI_CACHE_DIR"])
    assert cache_dir().resolve().is_relative_to(suite_cache)


def test_prefix_memory_equals_full_context_and_k0_equals_plain(smollm):
    """(a) and (b) on SmolLM2 (no BOS is added by its tokenizer, so the prefix has no special token)."""
    model, tokenizer = smollm
    ids = tokenizer(DOCUMENT + QUESTION, return_tensors="pt").input_ids
    m = len(tokenizer(DOCUMENT).input_ids)
    assert ids[0, :m].tolist() == tokenizer(DOCUMENT).input_ids  # the document is an exact token prefix
    assert ids.shape[1] > m and not set(ids[0, :m].tolist()) & set(tokenizer.all_special_ids)
    full = model(ids).logits[:, m:]
    plain = model(ids[:, m:]).logits
    bank = MemoryBank.build(model, tokenizer, text=DOCUMENT, progress=False)
    assert len(bank) == m
    with attach(model, bank, topk=m, position_mode="original") as mind:
        # 30 float32 layers: logits of scale ~20 agree to about 1e-4
        torch.testing.assert_close(model(ids[:, m:]).logits, full, atol=2e-4, rtol=1e-5)
        mind.topk = 0
        torch.testing.assert_close(model(ids[:, m:]).logits, plain, atol=0, rtol=0)
    assert (plain - full).abs().max() > 1.0  # the document matters, so the first check means something


def test_bank_of_another_model_is_refused(smollm, tmp_path):
    """(d) a bank of the tiny model with SmolLM2's vocabulary is refused by SmolLM2, and vice versa."""
    model, tokenizer = smollm
    small = make_tiny_llama(vocab=model.config.vocab_size, layers=2)
    path = MemoryBank.build(small, tokenizer, text=DOCUMENT, progress=False).save(tmp_path / "small.safetensors")
    try:
        MemoryBank.load(path, model=model)
    except ValueError as err:
        assert "SmolLM2-135M-Instruct" in str(err) and "rebuild the bank" in str(err)
    else:
        raise AssertionError("a bank of another model was accepted")
    bank = MemoryBank.build(model, tokenizer, text=DOCUMENT, progress=False)
    try:
        attach(small, bank)
    except ValueError as err:
        assert "rebuild the bank" in str(err)
    else:
        raise AssertionError("a bank of another model was attached")


def test_generate_with_cache_equals_without(smollm):
    """(e) on SmolLM2 with the chat template, in the reference's position mode."""
    model, tokenizer = smollm
    bank = MemoryBank.build(model, tokenizer, text=DOCUMENT, progress=False)
    messages = [{"role": "user", "content": QUESTION.strip()}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with attach(model, bank, topk=8):
        kwargs = dict(max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
        cached = model.generate(**prompt, **kwargs)
        uncached = model.generate(**prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=2e-4, rtol=1e-5)


def test_memory_answers_a_question_and_cites_the_fact(smollm):
    """The reference's use: the document only in memory, the question as the prompt (greedy)."""
    model, tokenizer = smollm
    document = (
        "The village of Kestrel Bay sits on a cold northern coast. Fishing boats leave before dawn and return "
        "at noon. In 1987 the villagers built a new school with red brick walls. The harbour master of Kestrel "
        "Bay is a woman named Marguerite Olsen. She has held the job for twenty years. Every summer the village "
        "hosts a festival with music, dancing and grilled fish."
    )
    bank = MemoryBank.build(model, tokenizer, text=document, progress=False)
    messages = [{"role": "user", "content": "Who is the harbour master of Kestrel Bay?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    n = prompt["input_ids"].shape[1]
    plain = tokenizer.decode(model.generate(**prompt, max_new_tokens=18, do_sample=False)[0, n:])
    with attach(model, bank, topk=10, record=True) as mind:
        out = model.generate(**prompt, max_new_tokens=18, do_sample=False)[0, n:]
        cited = mind.citations(top=3)[0]
    answer = tokenizer.decode(out)
    assert "Marguerite" not in plain and "Marguerite Olsen" in answer
    # the step that produces the name's second piece ("uer") cites the name in the document
    step = next(t for t in range(len(out)) if "Marguer" in tokenizer.decode(out[: t + 1]))
    assert any("Marguerite" in c.text for c in cited[step]), cited[step]
