"""MemoryBank: windows, stored keys/values, special tokens, cap, files and their errors."""

import os

import pytest
import torch

from thermoai.memory import MemoryBank
from thermoai.memory.bank import default_window

from memory_helpers import make_tiny_llama


def kv_of_forward(model, ids):
    """Pre-RoPE keys and values of every layer for one plain forward of ``ids``: [L, n_kv, T, d]."""
    keys, values = [], []
    hooks = []
    for layer in model.model.layers:
        hooks.append(layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: keys.append(o)))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(lambda m, i, o: values.append(o)))
    with torch.no_grad():
        model(ids[None])
    for hook in hooks:
        hook.remove()
    d = model.config.hidden_size // model.config.num_attention_heads
    shape = lambda t: t[0].reshape(t.shape[1], -1, d).transpose(0, 1)  # noqa: E731
    return torch.stack([shape(k) for k in keys]), torch.stack([shape(v) for v in values])


def test_windows_keep_new_tokens_with_left_context(tiny, doc_ids):
    ids = doc_ids[:30]
    bank = MemoryBank.build(tiny, ids=ids, window=12, stride=4, progress=False)
    assert len(bank) == 30 and bank.positions.tolist() == list(range(30))
    assert bank.keys.shape == (3, 2, 30, 16)  # per kv head: GQA is not repeated
    # windows [0,12) keeps 0..11; [4,16) keeps 12..15; ...; [16,28) keeps 24..27; [20,30) keeps 28, 29
    for begin, end, kept in [(0, 12, range(0, 12)), (4, 16, range(12, 16)), (16, 28, range(24, 28)),
                             (20, 30, range(28, 30))]:
        keys, values = kv_of_forward(tiny, ids[begin:end])
        rows = [p - begin for p in kept]
        torch.testing.assert_close(bank.keys[:, :, list(kept)], keys[:, :, rows])
        torch.testing.assert_close(bank.values[:, :, list(kept)], values[:, :, rows])


def test_default_window_scales_reference_to_model():
    model = make_tiny_llama()
    assert default_window(model) == (512, 85)  # 3072/512 scaled to 512 positions
    model.config.max_position_embeddings = 8192
    assert default_window(model) == (3072, 512)


def test_special_tokens_removed_and_positions_kept(tiny, doc_ids):
    ids = torch.cat([torch.tensor([1]), doc_ids[:10], torch.tensor([2]), doc_ids[10:20]])
    bank = MemoryBank.build(tiny, ids=ids, window=64, progress=False)
    assert len(bank) == 20
    assert 1 not in bank.token_ids.tolist() and 2 not in bank.token_ids.tolist()
    assert bank.positions.tolist() == list(range(1, 11)) + list(range(12, 22))
    assert bank.n_positions == 22
    keys, _ = kv_of_forward(tiny, ids)  # one window: the kept keys are those of the full forward
    torch.testing.assert_close(bank.keys, keys[:, :, bank.positions])
    kept = MemoryBank.build(tiny, ids=ids, window=64, remove_special=False, progress=False)
    assert len(kept) == 22


def test_cap_drops_oldest_and_skips_their_windows(tiny, doc_ids):
    ids = doc_ids[:30]
    full = MemoryBank.build(tiny, ids=ids, window=12, stride=4, progress=False)
    with pytest.warns(UserWarning, match="oldest 20 are dropped"):
        capped = MemoryBank.build(tiny, ids=ids, window=12, stride=4, max_tokens=10, progress=False)
    assert len(capped) == 10 and capped.dropped == 20
    assert capped.positions.tolist() == list(range(20, 30))
    torch.testing.assert_close(capped.keys, full.keys[:, :, 20:])


def test_text_build_keeps_character_spans(smollm):
    model, tokenizer = smollm
    small = make_tiny_llama(vocab=model.config.vocab_size, layers=2)
    text = "The harbour master of Ostend, Lena Vos, keeps 1,204 lanterns."
    bank = MemoryBank.build(small, tokenizer, text=text, progress=False)
    assert bank.text == text
    pieces = [text[s:e] for s, e in bank.char_spans.tolist()]
    assert "".join(pieces) == text
    for piece, token in zip(pieces, bank.token_ids.tolist()):
        assert tokenizer.decode([token]) == piece


def test_bad_documents(tiny):
    with pytest.raises(ValueError, match="empty"):
        MemoryBank.build(tiny, ids=[], progress=False)
    with pytest.raises(ValueError, match="only special tokens"):
        MemoryBank.build(tiny, ids=[1, 2, 0], progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        MemoryBank.build(tiny, progress=False)
    with pytest.raises(ValueError, match=r"token ids in \[0, 101\)"):
        MemoryBank.build(tiny, ids=[5, 500], progress=False)
    with pytest.raises(ValueError, match="stride"):
        MemoryBank.build(tiny, ids=[5, 6], window=4, stride=5, progress=False)
    with pytest.raises(ValueError, match="max_tokens"):
        MemoryBank.build(tiny, ids=[5, 6], max_tokens=0, progress=False)
    with pytest.raises(ValueError, match="1-D"):
        MemoryBank.build(tiny, ids=[[5, 6]], progress=False)


def test_save_load_round_trip(tiny, doc_ids, tmp_path):
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], window=16, stride=8, progress=False)
    path = bank.save(tmp_path / "doc.safetensors")
    assert os.listdir(tmp_path) == ["doc.safetensors"]  # no temporary file left
    back = MemoryBank.load(path, model=tiny)
    for name in ("keys", "values", "token_ids", "positions", "char_spans"):
        assert torch.equal(getattr(back, name), getattr(bank, name)), name
    assert (back.window, back.stride, back.n_positions, back.model, back.text) == (16, 8, 40, bank.model, None)
    assert back.config_hash == bank.config_hash and back.fingerprint == bank.fingerprint


def test_bank_for_another_model_is_refused(tiny, doc_ids, tmp_path):
    bank = MemoryBank.build(tiny, ids=doc_ids[:20], progress=False)
    path = bank.save(tmp_path / "doc.safetensors")
    same_config_other_weights = make_tiny_llama(seed=5)
    with pytest.raises(ValueError, match="built for model .* rebuild the bank"):
        MemoryBank.load(path, model=same_config_other_weights)
    other_shape = make_tiny_llama(layers=2)
    with pytest.raises(ValueError, match="config hash"):
        MemoryBank.load(path, model=other_shape)
    # the same weights in bfloat16 are the same model
    MemoryBank.load(path, model=make_tiny_llama().to(torch.bfloat16))


def test_corrupted_and_truncated_files(tiny, doc_ids, tmp_path):
    path = MemoryBank.build(tiny, ids=doc_ids[:20], progress=False).save(tmp_path / "doc.safetensors")
    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        MemoryBank.load(tmp_path / "short.safetensors")
    flipped = bytearray(data)
    flipped[-9] ^= 0xFF  # a byte of the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        MemoryBank.load(tmp_path / "flipped.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a bank at all")
    with pytest.raises(ValueError, match="corrupted or truncated"):
        MemoryBank.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a thermoai memory bank"):
        MemoryBank.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        MemoryBank.load(tmp_path / "missing.safetensors")


def test_failed_save_leaves_nothing(tiny, doc_ids, tmp_path, monkeypatch):
    bank = MemoryBank.build(tiny, ids=doc_ids[:20], progress=False)
    target = tmp_path / "doc.safetensors"
    bank.save(target)
    before = target.read_bytes()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        bank.save(target)
    assert os.listdir(tmp_path) == ["doc.safetensors"] and target.read_bytes() == before


def test_int8_and_bfloat16_banks_round_trip_and_stay_close(tiny, doc_ids, tmp_path):
    """int8 with per-vector scales: each element within half a scale step of float32; saved and loaded
    as int8 (a quarter of the bytes plus scales); attached, the logits stay close to the float32 bank's."""
    from thermoai.memory import attach
    from thermoai.memory.bank import quantize_int8

    full = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    small = MemoryBank.build(tiny, ids=doc_ids[:40], dtype="int8", progress=False)
    half = MemoryBank.build(tiny, ids=doc_ids[:40], dtype=torch.bfloat16, progress=False)
    assert small.keys.dtype == torch.int8 and small.key_scales.shape == (3, 2, 40) and half.keys.dtype == torch.bfloat16
    keys, values = small.layer(1)
    assert ((keys - full.keys[1]).abs() <= small.key_scales[1][..., None] / 2 + 1e-7).all()
    assert ((values - full.values[1]).abs() <= small.value_scales[1][..., None] / 2 + 1e-7).all()
    q, scale = quantize_int8(full.keys)
    assert torch.equal(q, small.keys) and q.abs().max() == 127
    assert small.nbytes == full.nbytes // 4 + 2 * 3 * 2 * 40 * 4
    loaded = MemoryBank.load(small.save(tmp_path / "b8.safetensors"), model=tiny)
    assert loaded.quantized and torch.equal(loaded.keys, small.keys) and torch.equal(loaded.value_scales, small.value_scales)
    assert torch.equal(loaded.to(dtype=torch.float32).keys[1], keys)
    prompt = doc_ids[None, 40:60]
    outs = {}
    for name, bank in (("full", full), ("int8", loaded), ("bf16", half)):
        with attach(tiny, bank, topk=8):
            outs[name] = tiny(prompt).logits
    assert (outs["int8"] - outs["full"]).abs().max() < 0.05 and (outs["bf16"] - outs["full"]).abs().max() < 0.05
    with pytest.raises(ValueError, match="dtype"):
        MemoryBank.build(tiny, ids=doc_ids[:40], dtype="int4", progress=False)


def test_int8_bank_without_scales_is_refused(tiny, doc_ids, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = MemoryBank.build(tiny, ids=doc_ids[:20], dtype="int8", progress=False).save(tmp_path / "b.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k != "value_scales"}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="value_scales"):
        MemoryBank.load(path, verify=False)


def test_progress_bar_counts_document_tokens(tiny, doc_ids, monkeypatch):
    """The bar's total is the document's length in tokens (not the overlapping token-forwards)."""
    import tqdm.auto

    seen = {}

    class Bar:
        def __init__(self, total, **kwargs):
            seen["total"], seen["done"], seen["desc"] = total, 0, kwargs.get("desc")

        def update(self, n):
            seen["done"] += n

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    MemoryBank.build(tiny, ids=doc_ids, window=32, stride=8, progress=True)
    assert seen["total"] == seen["done"] == 80 and "document tokens" in seen["desc"]


@pytest.mark.parametrize("n", [5, 12, 13, 22, 29, 30])
def test_prefix_equals_a_build_on_the_prefix(tiny, doc_ids, n):
    ids = doc_ids[:30].clone()
    ids[7] = 1  # a special token: removed, so memory count and positions differ
    bank = MemoryBank.build(tiny, ids=ids, window=12, stride=4, progress=False)
    cut, built = bank.prefix(n), MemoryBank.build(tiny, ids=ids[:n], window=12, stride=4, progress=False)
    assert cut.n_positions == built.n_positions == n and len(cut) == len(built)
    assert torch.equal(cut.positions, built.positions) and torch.equal(cut.token_ids, built.token_ids)
    torch.testing.assert_close(cut.keys, built.keys)
    torch.testing.assert_close(cut.values, built.values)
    q8 = bank.to(dtype="int8").prefix(n)
    assert q8.quantized and q8.key_scales.shape == q8.keys.shape[:3]


def test_prefix_bad_lengths(tiny, doc_ids):
    bank = MemoryBank.build(tiny, ids=doc_ids[:20], window=12, stride=4, progress=False)
    for bad in (0, 21, 3.0, True):
        with pytest.raises(ValueError, match="n_tokens"):
            bank.prefix(bad)
    with pytest.warns(UserWarning):
        capped = MemoryBank.build(tiny, ids=doc_ids[:20], window=12, stride=4, max_tokens=10, progress=False)
    with pytest.raises(ValueError, match="dropped"):
        capped.prefix(15)
