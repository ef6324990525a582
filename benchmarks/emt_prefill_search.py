"""Extended Mind prefill: what the top-k search costs, and what faster searches would give and lose.

The prefill of a short prompt with a 16k-token bank costs about five plain prefills on one CPU thread
(``benchmarks/results/emt_speed.md``), almost all of it in the exact top-k search: every query row of
every retrieving layer is scored against every memory of its key/value head. This benchmark captures the
real queries of that prefill (SmolLM2-135M-Instruct, the emt_speed document and prompt, all 30 layers) and
times, on exactly those queries and keys, thermoai's exact search against faster searches that return
candidates and re-rank them exactly:

    exact          thermoai's search: q . k/|k| for all M memories, blocked top-k (``attention._topk``)
    bf16 x m       scores in bfloat16, the m*k best re-scored in float32
    pca r x m      scores on the r leading principal directions of the head's keys, m*k re-scored
    ivf C / P      spherical k-means (C clusters per head); each query row probes its P nearest
                   centroids and the rows of a head share one candidate set, the union of their probes,
                   scored exactly (a batched prefill cannot gather per row cheaply)

For each: the time of the 30 layers' searches (median CPU seconds over repeats, one thread), recall@k of
the exact top-k, the share of query rows whose top-k is exactly the exact one, and the prefill ratio it
would give, ``(bank prefill - exact search + this search) / plain prefill``, with both prefills timed in
the same run. Index builds (k-means, PCA) happen once per bank and are not counted.

    python benchmarks/emt_prefill_search.py [--bank /tmp/speed16k.bank] [--repeats 5]

writes ``benchmarks/results/emt_prefill_search.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from emt_speed import bank_for, speed_document, time_generation, write_report  # noqa: E402

K = 10
SCORED: dict[str, list[float]] = {}  # per IVF setting: the share of the bank each head's union scores


def capture_queries(model, mind, prompt) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(unit keys [n_kv, M, d], query rows [n_kv, R, d])`` of every retrieving layer for ``prompt``."""
    from thermoai.memory import attention

    captured = []
    original = attention.ExtendedMind._retrieve

    def recording(self, layer, q, k):
        b, n_kv, g, s, d = q.shape
        captured.append((layer.unit_keys, q.detach().transpose(0, 1).reshape(n_kv, b * g * s, d).contiguous()))
        return original(self, layer, q, k)

    attention.ExtendedMind._retrieve = recording
    try:
        mind.attach()
        with torch.no_grad():
            model(input_ids=prompt)
    finally:
        mind.detach()
        attention.ExtendedMind._retrieve = original
    return captured


def exact(keys, rows, k=K):
    from thermoai.memory.attention import _topk

    return _topk(torch.matmul(rows, keys.transpose(1, 2)), k)[1]


def rerank(keys, rows, candidates, k=K):
    """The exact top-k among ``candidates [n_kv, R, c]`` (indices into each head's keys)."""
    n_kv, m, d = keys.shape
    flat = candidates + torch.arange(n_kv)[:, None, None] * m
    chosen = keys.reshape(-1, d).index_select(0, flat.reshape(-1)).view(*candidates.shape, d)
    scores = torch.matmul(chosen, rows[..., None]).squeeze(-1)
    return candidates.gather(-1, scores.topk(k, -1).indices)


def bf16_search(mult):
    def prepare(keys):
        return keys.bfloat16().transpose(1, 2)

    def search(keys, rows, keys_t):
        from thermoai.memory.attention import _topk

        return rerank(keys, rows, _topk(torch.matmul(rows.bfloat16(), keys_t), mult * K)[1])
    return prepare, search


def pca_search(r, mult):
    def prepare(keys):
        centred = keys - keys.mean(1, keepdim=True)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v: [n_kv, d, d], rows the directions
        basis = v[:, :r].transpose(1, 2).contiguous()  # [n_kv, d, r]
        return basis, torch.matmul(keys, basis).transpose(1, 2).contiguous()

    def search(keys, rows, prepared):
        from thermoai.memory.attention import _topk

        basis, projected_t = prepared
        return rerank(keys, rows, _topk(torch.matmul(torch.matmul(rows, basis), projected_t), mult * K)[1])
    return prepare, search


def spherical_kmeans(x: torch.Tensor, c: int, iters: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(x.shape[0], generator=g)[:c]].clone()
    for _ in range(iters):
        assign = (x @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = torch.bincount(assign, minlength=c) == 0
        sums[empty] = centroids[empty]
        centroids = torch.nn.functional.normalize(sums, dim=-1)
    return centroids, (x @ centroids.T).argmax(1)


def ivf_search(c, p):
    def prepare(keys):
        out = []
        for head in keys:
            centroids, assign = spherical_kmeans(head, c)
            order = torch.argsort(assign, stable=True)
            out.append((centroids, assign, order))
        return out

    def search(keys, rows, prepared):
        result = []
        for h, (centroids, assign, order) in enumerate(prepared):
            probes = torch.unique((rows[h] @ centroids.T).topk(p, -1).indices)
            members = torch.isin(assign, probes).nonzero().flatten()
            SCORED.setdefault(f"ivf {c} / {p}", []).append(members.numel() / assign.numel())
            top = (rows[h] @ keys[h].index_select(0, members).T).topk(K, -1).indices
            result.append(members[top])
        return torch.stack(result)
    return prepare, search


def measure(captured, strategies, repeats):
    """Per strategy: (seconds for all layers, recall@k, share of rows exact, share of keys scored)."""
    truth = [exact(keys, rows) for keys, rows in captured]
    out = {}
    for name, (prepare, search) in strategies.items():
        prepared = [prepare(keys) for keys, _ in captured]
        found = [search(keys, rows, prep) for (keys, rows), prep in zip(captured, prepared)]
        hits = torch.cat([(f[..., :, None] == t[..., None, :]).any(-1).float().reshape(-1, K) for f, t in zip(found, truth)])
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            for (keys, rows), prep in zip(captured, prepared):
                search(keys, rows, prep)
            times.append(time.thread_time() - t0)
        out[name] = (statistics.median(times), float(hits.mean()), float((hits.sum(-1) == K).float().mean()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16000)
    parser.add_argument("--stride", type=int, default=2048)
    parser.add_argument("--window", type=int, default=3072)
    parser.add_argument("--bank", default=None, help="bank file: loaded if it exists, else built and saved there")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "emt_prefill_search.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from thermoai.memory import attach, load_model

    model, tokenizer = load_model(None)
    doc, prompt = speed_document(tokenizer, args.tokens)  # the emt_speed document and prompt
    bank, _ = bank_for(model, tokenizer, doc, args.window, args.stride, args.bank)
    mind = attach(model, bank, topk=K)
    mind.detach()

    def prefill(with_bank: bool) -> float:
        if with_bank:
            mind.attach()
        try:
            return time_generation(model, prompt, 1)[0]
        finally:
            mind.detach()

    prefill(False), prefill(True)  # warm-up
    plain, with_bank = [], []
    for _ in range(args.repeats):
        plain.append(prefill(False))
        with_bank.append(prefill(True))
    plain_s, bank_s = statistics.median(plain), statistics.median(with_bank)

    captured = capture_queries(model, mind, prompt)
    strategies = {"exact (thermoai)": (lambda keys: None, lambda keys, rows, _: exact(keys, rows))}
    for m in (1, 2, 4):
        strategies[f"bf16 x {m}"] = bf16_search(m)
    for r in (16, 32):
        strategies[f"pca {r} x 4"] = pca_search(r, 4)
    for c, p in ((256, 8), (256, 16), (512, 16)):
        strategies[f"ivf {c} / {p}"] = ivf_search(c, p)
    results = measure(captured, strategies, args.repeats)
    exact_s = results["exact (thermoai)"][0]

    n_kv, m, d = captured[0][0].shape
    rows = captured[0][1].shape[1]
    lines = [
        "# Extended Mind prefill: the cost of the top-k search",
        "",
        f"SmolLM2-135M-Instruct, float32, one CPU thread; a {bank.n_positions}-token bank ({m} memories per key/value "
        f"head), a {prompt.shape[1]}-token prompt, {len(captured)} retrieving layers, {n_kv} key/value heads x {rows} "
        f"query rows each, k = {K}. Prefill medians of {args.repeats} alternating runs: plain {plain_s:.3f} s, with the "
        f"bank {bank_s:.3f} s (**{bank_s / plain_s:.2f}x**); the exact search of those layers alone, timed on the captured "
        f"queries, {exact_s:.3f} s ({exact_s / (bank_s - plain_s):.0%} of what the bank adds).",
        "",
        "| search | time, 30 layers (s) | / exact | recall@10 of the exact top-10 | rows with the exact top-10 | prefill ratio it would give |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (sec, recall, same) in results.items():
        ratio = (bank_s - exact_s + sec) / plain_s
        lines.append(f"| {name} | {sec:.3f} | {sec / exact_s:.2f} | {recall:.4f} | {same:.3f} | {ratio:.2f} |")
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    score_flop = 2 * len(captured) * n_kv * rows * m * d
    model_flop = 2 * body * prompt.shape[1]
    lossy = [f"{k} ({v[1]:.3f})" for k, v in results.items() if v[1] < 0.99]
    fastest = min((v[0], k) for k, v in results.items())
    shares = ", ".join(f"{k}: {statistics.mean(v):.0%}" for k, v in SCORED.items())
    good = [(v[0], k) for k, v in results.items() if v[1] >= 0.99]
    best = min(good)
    best_ratio = (bank_s - exact_s + best[0]) / plain_s
    lines += [
        "",
        f"Searches with recall@10 below 0.99 (they would change which memories the model attends to): "
        f"{', '.join(lossy) or 'none'}. The fastest search with recall@10 of at least 0.99 is {best[1]} "
        f"({best[0]:.3f} s), which would give a prefill ratio of {best_ratio:.2f}x; the fastest of all, {fastest[1]}, "
        f"{(bank_s - exact_s + fastest[0]) / plain_s:.2f}x. Why the candidates miss: a "
        "bfloat16 score differs from the float32 one by about 2^-9 of |q|, more than the gaps between neighbouring "
        "scores at the top of 16k memories; a few principal directions keep too little of the keys' 64; and the rows "
        f"of one head probe different clusters, so the union a batched prefill scores is a large share of the bank (on average {shares}).",
        "",
        f"The exact search is the matmul of the query rows against every memory, 2 x {len(captured)} layers x "
        f"{n_kv * rows} rows x {m} memories x {d} = {score_flop / 1e9:.1f} GFLOP, {score_flop / model_flop:.1f} times "
        f"the model's own prefill ({model_flop / 1e9:.1f} GFLOP for {body / 1e6:.0f}M non-embedding parameters x "
        f"{prompt.shape[1]} tokens), plus a pass of the top-k over the scores. "
        f"The 2x target is {'met' if best_ratio <= 2 else 'not met'} by a search that keeps recall@10 >= 0.99. "
        "thermoai keeps the exact search as the default; `index=\"faiss\"` (HNSW) stays the option for banks far "
        "above 100k memories, where a sublinear search pays.",
        "",
        f"Command: `python benchmarks/emt_prefill_search.py {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip(),
        "",
    ]
    write_report("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
