"""Extended Mind speed: generation with a 16k-token memory bank against the same model without memory.

One run measures, side by side on the same model, device and prompt:

* bank build throughput: document tokens per second of ``MemoryBank.build`` (window/stride given);
* prefill time of the prompt, with and without the bank attached;
* decode time per generated token (greedy, fixed count, EOS ignored), with and without the bank.

The ratio ``with bank / without`` per generated token is the figure of merit (target: at most 2).
On one CPU thread the times are CPU seconds of this process (``time.process_time``), so other work on a
shared machine disturbs them less; otherwise wall-clock seconds.
The document is a counterfactual benchmark document (``thermoai.experiments.emt_data``).

    python benchmarks/emt_speed.py [--tokens 16000] [--new-tokens 32] [--stride 512] [--layers all|0.5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def clock_for(device):
    """CPU time of this process on one CPU thread (robust to other work on a shared machine), else wall time."""
    if str(device) == "cpu" and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


def speed_document(tokenizer, tokens: int, device="cpu"):
    """The benchmark's document (a counterfactual document of ``tokens`` tokens, seed 1234) and its prompt
    (the first fact's question in the chat template), ``(Document, input_ids [1, s])``."""
    from thermoai.experiments.emt_data import make_document

    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    doc = make_document(tokens, 10, seed=1234, count_tokens=count)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": doc.facts[0].question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"].to(device)
    return doc, prompt


def bank_for(model, tokenizer, doc, window: int, stride: int, path: str | None, device="cpu"):
    """``(bank, build seconds)``: loaded from ``path`` when it exists (build seconds ``None``; refused when it
    was built for another document or window/stride), else built, timed with :func:`clock_for` and saved
    there."""
    from thermoai.memory import MemoryBank

    if path and Path(path).is_file():
        bank = MemoryBank.load(path, model=model, device=device)
        if bank.text != doc.text or (bank.window, bank.stride) != (window, stride):
            raise SystemExit(f"--bank {path}: built for another document or window/stride; delete it to rebuild")
        return bank, None
    clock = clock_for(device)
    _sync(device)
    t0 = clock()
    bank = MemoryBank.build(model, tokenizer, text=doc.text, window=window, stride=stride, progress=True)
    _sync(device)
    build_s = clock() - t0
    if path:
        bank.save(path)
    return bank, build_s


def write_report(text: str, out: str | Path) -> None:
    """Print the report and write it to ``out`` (folders made)."""
    print(text)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


@torch.no_grad()
def time_generation(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """``(prefill seconds, decode seconds per token)`` of greedy decoding of ``new_tokens`` tokens."""
    from transformers import DynamicCache

    device = prompt.device
    clock = clock_for(device.type)
    cache = DynamicCache(config=model.config)
    _sync(device)
    t0 = clock()
    logits = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    _sync(device)
    prefill = clock() - t0
    token = logits[:, -1].argmax(-1, keepdim=True)
    t0 = clock()
    for _ in range(new_tokens):
        logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    return prefill, (clock() - t0) / new_tokens


def _flop_note(model, prompt_tokens: int, memories: int, layers: int) -> str:
    """The arithmetic floor of the prefill ratio: exact scoring FLOPs against the model's own."""
    cfg = model.config
    n_heads, head_dim = cfg.num_attention_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    embed = sum(p.numel() for name, p in model.named_parameters() if "embed" in name or "lm_head" in name)
    body = sum(p.numel() for p in model.parameters()) - embed  # tied lm_head counted once, as the embedding
    model_flop = 2 * body * prompt_tokens
    score_flop = 2 * layers * n_heads * prompt_tokens * memories * head_dim
    return (f"Exact retrieval scores each of the {prompt_tokens} prompt tokens' {n_heads} query heads against all "
            f"{memories} memory keys in each of {layers} layers: {score_flop / 1e9:.1f} GFLOP, "
            f"{score_flop / model_flop:.1f} times the model's own {model_flop / 1e9:.1f} GFLOP of matrix products "
            f"(2 x {body / 1e6:.0f}M non-embedding parameters x {prompt_tokens} tokens). At equal arithmetic speed "
            f"the prefill ratio cannot fall below {1 + score_flop / model_flop:.1f} with exact float32 scoring.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16000, help="document length in tokens (default 16000)")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per run (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the median is kept")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--layers", default="all",
                        help="retrieving layers: 'all' (default, the reference) or a fraction such as 0.5 (evenly spaced)")
    parser.add_argument("--window", type=int, default=3072)
    parser.add_argument("--stride", type=int, default=512, help="bank stride (default 512, the reference)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/emt_speed.md")
    parser.add_argument("--bank", default=None,
                        help="bank file: loaded if it exists (the build is then not timed), else built and saved there")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from thermoai.memory import attach, load_model

    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model, tokenizer = load_model(None, dtype=dtype, device=args.device)
    load_s = time.perf_counter() - t0
    doc, prompt = speed_document(tokenizer, args.tokens, args.device)
    bank, build_s = bank_for(model, tokenizer, doc, args.window, args.stride, args.bank, args.device)
    clock = clock_for(args.device)
    n = bank.n_positions
    windows = 1 + max(0, -(-(n - args.window) // args.stride))
    forwards = sum(min(args.window, n - i * args.stride) for i in range(windows))  # the last window may be short

    n_layers = model.config.num_hidden_layers
    if args.layers == "all":
        layers = list(range(n_layers))
    else:
        from thermoai.experiments.emt_benchmark import evenly_spaced_layers

        layers = evenly_spaced_layers(n_layers, float(args.layers))
    mind = attach(model, bank, topk=args.topk, layers=layers)  # places the bank once
    mind.detach()

    def one(with_bank: bool, new_tokens: int):
        if with_bank:
            mind.attach()
        try:
            return time_generation(model, prompt, new_tokens)
        finally:
            mind.detach()

    # alternating runs without and with the bank: a change of the machine's load hits both alike
    one(False, 4), one(True, 4)  # warm-up
    plain_runs, emt_runs = [], []
    for _ in range(args.repeats):
        plain_runs.append(one(False, args.new_tokens))
        emt_runs.append(one(True, args.new_tokens))
    plain_prefill, plain_decode = (statistics.median(r[i] for r in plain_runs) for i in (0, 1))
    emt_prefill, emt_decode = (statistics.median(r[i] for r in emt_runs) for i in (0, 1))

    rows = [
        ("prompt prefill (s)", plain_prefill, emt_prefill),
        ("decode per generated token (ms)", 1000 * plain_decode, 1000 * emt_decode),
        ("generated tokens/s", 1 / plain_decode, 1 / emt_decode),
    ]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    command = "python benchmarks/emt_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Extended Mind speed",
        "",
        f"SmolLM2-135M-Instruct, {args.dtype}, {device_name}; a {n}-token memory bank ({len(bank)} memories, "
        f"{f'all {n_layers}' if len(layers) == n_layers else f'{len(layers)} of {n_layers}'} layers retrieve, k={args.topk}, exact top-k) against the same model "
        f"without memory; prompt of {prompt.shape[1]} tokens, {args.new_tokens} generated tokens, median of "
        f"{args.repeats} alternating runs each; times are "
        + ("CPU seconds of this process (one thread)." if clock is time.process_time else "wall-clock seconds."),
        "",
        "| measure | no memory | with 16k bank | ratio (bank / none) |".replace("16k", f"{n}-token"),
        "|---|---|---|---|",
    ]
    for name, plain, emt in rows:
        lines.append(f"| {name} | {plain:.4g} | {emt:.4g} | {emt / plain:.2f} |")
    lines += [
        "",
        (f"Bank build: {n} document tokens in {build_s:.1f} s = **{n / build_s:.0f} document tokens/s** "
         f"(window {args.window}, stride {args.stride}: {windows} windows, {forwards} token-forwards, "
         f"{forwards / build_s:.0f} token-forwards/s)." if build_s is not None else
         f"Bank loaded from `{args.bank}` (window {args.window}, stride {args.stride}; build not timed in this run).")
        + f" Model load {load_s:.1f} s.",
        "",
        _flop_note(model, prompt.shape[1], len(bank), len(layers)),
        "",
        f"Slow-down per generated token: **{emt_decode / plain_decode:.2f}x** (target: at most 2x); "
        f"prefill: **{emt_prefill / plain_prefill:.2f}x** (target: at most 2x).",
        "",
        f"Command: `{command.strip()}`",
        "",
    ]
    write_report("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
