"""One torch thread against two for the Bayesian SmolLM2 experiment's work, side by side in one process.

The work of ``thermoai reproduce llm_uncertainty`` (experiments/llm_uncertainty.py): the frozen prefix
of 16 windows of 32 tokens through 29 of SmolLM2-135M's 30 layers (``LMSubset.prefix``), and gradient
steps of the batch-averaged log posterior over the last layer on two windows (``torch.func.grad``). The
two thread counts alternate round by round (``--rounds``), so both see the same load from other jobs;
the table gives wall and CPU time per setting (median over rounds) and the ratio two threads / one,
with the machine's 1-minute load average at the start and the end.

Why it matters: each parallel torch op waits at a barrier for all its threads; on cores that other jobs
keep busy that wait dominates. ``llm_uncertainty.choose_threads`` picks one thread when the load
average leaves fewer idle cores than torch's thread count.

    .venv/bin/python benchmarks/llm_threads.py [--rounds 3]

writes ``benchmarks/results/llm_threads.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "llm_threads.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="There is a performance drop")

    from thermoai.bayes import lm
    from thermoai.experiments import llm_data as D
    from thermoai.experiments import llm_uncertainty as E
    from thermoai.memory.model import load_model

    model, tok = load_model()
    sub = lm.LMSubset(model, layer=-1)
    ids = D.chunk(tok, D.python_reference(), 32, 16)
    train = E.text_set(sub, ids)
    start = sub.params()
    log_post = E.make_log_posterior(sub, start, 0.01, E.n_predicted(train))
    batch = train.rows(slice(0, 2))

    def step() -> None:
        torch.func.grad(lambda p: log_post(p, batch)[0])(start)

    def timed(fn, n: int) -> tuple[float, float]:
        c, t = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n, (time.process_time() - c) / n

    load0 = os.getloadavg()[0]
    step()  # warm-up: kwargs recorded, kernels loaded
    rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            rows.setdefault(("prefix, 16 windows x 32 tokens", threads), []).append(timed(lambda: sub.prefix(ids), 1))
            rows.setdefault(("last-layer gradient step, 2 windows", threads), []).append(timed(step, args.steps))
    load1 = os.getloadavg()[0]

    lines = [
        "# One torch thread against two (Bayesian SmolLM2 work)", "",
        f"`.venv/bin/python benchmarks/llm_threads.py --rounds {args.rounds} --steps {args.steps}` on "
        f"{os.cpu_count()} cores, 1-minute load average {load0:.1f} at the start and {load1:.1f} at the end "
        "(other jobs share the machine). Median over rounds; the two settings alternate.", "",
        "| work | wall, 2 threads (s) | wall, 1 thread (s) | wall ratio 2/1 | CPU, 2 threads (s) | CPU, 1 thread (s) | CPU ratio 2/1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for work in dict.fromkeys(k[0] for k in rows):
        w2, c2 = (statistics.median(x) for x in zip(*rows[(work, 2)]))
        w1, c1 = (statistics.median(x) for x in zip(*rows[(work, 1)]))
        lines.append(f"| {work} | {w2:.2f} | {w1:.2f} | {w2 / w1:.2f} | {c2:.2f} | {c1:.2f} | {c2 / c1:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
