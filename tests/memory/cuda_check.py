"""Manual CUDA check of thermoai.memory (not collected by pytest; needs a GPU).

    PYTHONPATH=src python tests/memory/cuda_check.py

Repeats the exactness checks of the test suite on the GPU in float32 and bfloat16, then times
prefill and decoding against a 100k-token bank on a random model shaped like SmolLM2-135M
(30 layers, 9 query / 3 key-value heads, head_dim 64), and the bank build throughput.
"""

import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from thermoai.memory import MemoryBank, attach
from thermoai.memory.bank import config_hash, weights_fingerprint

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" runs the checks without timing
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def model_of(layers, hidden, heads, kv, vocab, dtype=torch.float32, seed=0, inter=None):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      rope_theta=100000.0)
    return LlamaForCausalLM(cfg).eval().to(device=device, dtype=dtype).requires_grad_(False)


failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        failures.append(name)


with torch.no_grad():
    tiny = model_of(3, 64, 4, 2, 101)
    ids = torch.randint(3, 101, (80,), generator=torch.Generator().manual_seed(1)).to(device)
    m = 50
    full = tiny(ids[None]).logits
    bank = MemoryBank.build(tiny, ids=ids[:m], window=64, progress=False)
    check("bank on cpu by default", bank.keys.device.type == "cpu")
    with attach(tiny, bank, topk=m, position_mode="original") as mind:
        err = (tiny(ids[None, m:]).logits - full[:, m:]).abs().max().item()
        check("(a) prefix = full context", err < 1e-4, f"max err {err:.2e}")
        check("bank placed on the model device", mind._layers[0].unit_keys.device.type == device)
    plain = tiny(ids[None, m:]).logits
    with attach(tiny, bank, topk=0):
        # sdpa without a mask (is_causal kernel) vs with the eager float mask: kernels differ on GPU
        err = (tiny(ids[None, m:]).logits - plain).abs().max().item()
        check("(b) k=0 = plain", err < 1e-5, f"max err {err:.2e}")
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny.to(dtype)
        b = MemoryBank.build(model, ids=ids[:40], window=16, stride=4, progress=False)
        with attach(model, b, topk=5):
            kw = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
            c = model.generate(ids[None, 40:52], **kw)
            u = model.generate(ids[None, 40:52], use_cache=False, **kw)
            err = (torch.stack(c.logits) - torch.stack(u.logits)).abs().max().item()
            check(f"(e) cache = no cache {dtype}", torch.equal(c.sequences, u.sequences), f"logit err {err:.2e}")
            batch = torch.stack([ids[40:52], torch.cat([torch.zeros(5, dtype=torch.long, device=device), ids[60:67]])])
            mask = (batch != 0).long()
            out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
            one = model.generate(ids[None, 60:67], max_new_tokens=6, do_sample=False)
            check(f"batch row = single {dtype}", torch.equal(out[1, -6:], one[0, -6:]))
    tiny.float()

    # ---- timing on a SmolLM2-shaped random model with a 100k-token bank
    for dtype in ((torch.bfloat16,) if device == "cuda" else ()):
        big = model_of(30, 576, 9, 3, 49152, dtype=dtype, inter=1536)
        n_mem = 100_000
        g = torch.Generator(device=device).manual_seed(0)
        keys = torch.randn(30, 3, n_mem, 64, device=device, dtype=dtype, generator=g)
        values = torch.randn(30, 3, n_mem, 64, device=device, dtype=dtype, generator=g)
        pos = torch.arange(n_mem, device=device)
        bank = MemoryBank(keys, values, pos.clone(), pos.clone(), torch.full((n_mem, 2), -1, device=device), None,
                          n_mem, "random-smollm2-shape", config_hash(big), weights_fingerprint(big), 3072, 512, n_mem)
        prompt = torch.randint(3, 49152, (1, 512), device=device)

        def timed(fn, reps=3):
            fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
            return (time.perf_counter() - t) / reps

        gen = lambda: big.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False)  # noqa: E731
        pre = lambda: big(prompt)  # noqa: E731
        t_plain_gen, t_plain_pre = timed(gen), timed(pre)
        with attach(big, bank, topk=10) as mind:
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
            t_emt_gen, t_emt_pre = timed(gen), timed(pre)
            peak = torch.cuda.max_memory_allocated() - base_mem
        print(f"TIME {dtype} M={n_mem} prompt=512: prefill plain {t_plain_pre*1e3:.1f} ms, emt {t_emt_pre*1e3:.1f} ms; "
              f"32-token generate plain {t_plain_gen:.3f} s, emt {t_emt_gen:.3f} s; "
              f"peak extra memory during emt {peak/2**30:.2f} GiB (bank {bank.nbytes/2**30:.2f} GiB)")
        doc = torch.randint(3, 49152, (16384,), device=device)
        torch.cuda.synchronize()
        t = time.perf_counter()
        built = MemoryBank.build(big, ids=doc, progress=False)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        print(f"BUILD {dtype} 16384 tokens, window {built.window} stride {built.stride}: {dt:.2f} s "
              f"({16384/dt:.0f} document tokens/s)")

print("FAILURES:", failures)
sys.exit(1 if failures else 0)
