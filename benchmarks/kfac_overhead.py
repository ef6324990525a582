"""thermoai K-FAC against Adam and against kfac-jax: time per step on the same MLP, side by side in one run.

Problem: a synthetic classification task (inputs N(0, I_256), labels of a fixed random teacher network, a pool
of 8 batches cycled), MLP 256-n-n-n-10 with tanh at widths n = 512 and 1024, cross-entropy.

Part 1, overhead (thermoai only): time per step of

* Adam (``torch.optim.Adam``),
* thermoai K-FAC, factors every step and inverses every 10 steps (``KFAC(model)``'s defaults),
* thermoai K-FAC, factors and inverses every 10 steps,
* the same with the ``cholesky`` solver (damped inverses by Cholesky instead of ``eigh``),

each in front of SGD with momentum (K-FAC), on the same model, batches and thread. Blocks of 10 steps (one
inversion each), the configurations alternating block by block; the figure is the median over blocks of the
mean time per step. Target of the issue: K-FAC at most 1.5x Adam. Next to it, where a K-FAC step's time goes
(factors and inverses every 10 steps): the parts ``KFAC.step`` reports, on the wall clock, beside Adam's step;
``--profile`` prints a cProfile of ten such steps at width 1024, batch 1024 instead.

Part 2, against kfac-jax (benchmark environment only, CPU jax): the same problem from the same initial weights
and batches, ``--train-steps`` steps of each library's K-FAC with fixed hyper-parameters as close as the two
APIs allow (learning rate, momentum 0.9, damping, curvature EMA 0.95, inverses every 10 steps, empirical
Fisher in thermoai and kfac-jax's ``fisher_empirical``, the same bound on the step, no adaptive learning rate,
momentum or damping): final
loss on the batch pool and time per step (each library's steps after its first, which compiles), and thermoai's
Adam for reference.

Clock: ``--clock cpu`` (default) is the process CPU time (all threads: jax's XLA threads are counted), robust on
a shared machine; one torch thread and XLA limited to one intra-op thread. Run with the benchmark
environment (kfac-jax, optax and jax are installed only there):

    .venv-bench/bin/python benchmarks/kfac_overhead.py

and it writes ``benchmarks/results/kfac_overhead.md``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import thermoai  # noqa: E402
from thermoai.optim import KFAC  # noqa: E402

D_IN, D_OUT, POOL = 256, 10, 8
LR_KFAC, LR_ADAM, MOMENTUM, DAMPING, KL_CLIP = 0.1, 1e-3, 0.9, 1e-3, 1e-3


def make_problem(batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(D_IN, 64, generator=g) / math.sqrt(D_IN)
    w2 = torch.randn(64, D_OUT, generator=g) / 8.0
    pool = []
    for _ in range(POOL):
        x = torch.randn(batch, D_IN, generator=g)
        pool.append((x, (torch.tanh(x @ w1) @ w2).argmax(1)))
    return pool


def make_mlp(width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                         nn.Linear(width, width), nn.Tanh(), nn.Linear(width, D_OUT))


def clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


# ------------------------------------------------------------------------------------------ torch steppers


def torch_stepper(width: int, pool: list, config: str) -> Callable[[], float]:
    """A closure doing one optimiser step on the next batch of the pool; returns the loss (a float is
    read only every call to keep the work identical across configurations)."""
    model = make_mlp(width)
    kfac = None
    if config == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=LR_ADAM)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=LR_KFAC, momentum=MOMENTUM)
        factor_every = 1 if config == "kfac" else 10
        kfac = KFAC(model, damping=DAMPING, kl_clip=KL_CLIP, factor_update_interval=factor_every,
                    inverse_update_interval=10, solver="cholesky" if config == "kfac10c" else "eigh")
    state = {"i": 0}

    def step() -> float:
        x, y = pool[state["i"] % POOL]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if kfac is not None:
            kfac.step()
        opt.step()
        return float(loss.detach())

    step.model = model  # type: ignore[attr-defined]
    return step


def measure(steppers: dict[str, Callable[[], float]], block: int, repeats: int, warmup: int, kind: str) -> dict[str, float]:
    """Median over ``repeats`` interleaved blocks of the mean time per step, per stepper."""
    tick = clock(kind)
    for fn in steppers.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for r in range(repeats):
        order = list(steppers) if r % 2 == 0 else list(reversed(list(steppers)))
        for name in order:
            t0 = tick()
            for _ in range(block):
                steppers[name]()
            times[name].append((tick() - t0) / block)
    return {k: statistics.median(v) for k, v in times.items()}


def step_breakdown(width: int, pool: list, config: str, steps: int) -> dict[str, float]:
    """Wall-clock seconds per step of each part of a K-FAC step (``config`` as in :func:`torch_stepper`), mean
    over ``steps`` steps after two warm-up steps: the forward/backward pass less the hooks' factor work,
    and the untimed rest of ``KFAC.step``; ``factors`` (hooks and running averages), ``inverse`` (the solver's prepare), ``precondition`` (applying
    the inverses, KL clipping, checks, writing ``.grad``) and the optimizer's step; from :class:`StepReport`."""
    model = make_mlp(width)
    opt = torch.optim.SGD(model.parameters(), lr=LR_KFAC, momentum=MOMENTUM)
    kfac = KFAC(model, damping=DAMPING, kl_clip=KL_CLIP, factor_update_interval=1 if config == "kfac" else 10,
                inverse_update_interval=10, solver="cholesky" if config == "kfac10c" else "eigh")
    parts = {"forward_backward": 0.0, "factors": 0.0, "inverse": 0.0, "precondition": 0.0, "optimizer": 0.0}
    for i in range(steps + 2):
        x, y = pool[i % POOL]
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        report = kfac.step()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i < 2:
            continue
        # the hooks' outer products run inside the backward pass: counted as factor work, not forward/backward
        parts["forward_backward"] += (t3 - t0) - sum(report.digital_time_s.values()) - (t3 - t2)
        for k in ("factors", "inverse", "precondition"):
            parts[k] += report.digital_time_s[k]
        parts["optimizer"] += t3 - t2
    return {k: v / steps for k, v in parts.items()}


def profile_step(width: int, batch: int, top: int = 25) -> str:
    """cProfile of 10 steps of K-FAC with factor and inverse intervals 10 (one factor update and one inversion),
    sorted by own time: the text of pstats."""
    import cProfile
    import io
    import pstats

    pool = make_problem(batch)
    step = torch_stepper(width, pool, "kfac10")
    for _ in range(2):
        step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(10):
        step()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def pool_loss(model: nn.Module, pool: list) -> float:
    with torch.no_grad():
        return float(sum(F.cross_entropy(model(x), y) for x, y in pool) / len(pool))


# ------------------------------------------------------------------------------------------------ kfac-jax


def kfac_jax_run(width: int, pool: list, steps: int, kind: str) -> dict[str, Any]:
    """kfac-jax on the same MLP, initial weights and batches; returns final pool loss and time per step."""
    import jax
    import jax.numpy as jnp
    import kfac_jax

    model = make_mlp(width)
    params = [(jnp.asarray(m.weight.detach().numpy().T), jnp.asarray(m.bias.detach().numpy()))
              for m in model if isinstance(m, nn.Linear)]

    def forward(params, x):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return h

    def loss_fn(params, batch):
        x, y = batch
        logits = forward(params, x)
        kfac_jax.register_softmax_cross_entropy_loss(logits, y)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss_fn), l2_reg=0.0, value_func_has_aux=False,
        use_adaptive_learning_rate=False, learning_rate_schedule=lambda s: LR_KFAC,
        use_adaptive_momentum=False, momentum_schedule=lambda s: MOMENTUM,
        use_adaptive_damping=False, damping_schedule=lambda s: DAMPING,
        # thermoai clips lr_c^2 <U, M> <= kl_clip with lr_c = 1 (its default); kfac-jax's norm_constraint bounds
        # lr^2 <U, M>, so the same bound is kl_clip lr^2
        norm_constraint=KL_CLIP * LR_KFAC**2,
        curvature_ema=0.95, inverse_update_period=10, estimation_mode="fisher_empirical",
        num_burnin_steps=0, multi_device=False)
    batches = [(jnp.asarray(x.numpy()), jnp.asarray(y.numpy())) for x, y in pool]
    rng = jax.random.PRNGKey(0)
    state = opt.init(params, rng, batches[0])
    tick = clock(kind)
    t_first = None
    t0 = tick()
    for i in range(steps):
        rng, key = jax.random.split(rng)
        params, state, stats = opt.step(params, state, key, batch=batches[i % POOL], global_step_int=i)
        jax.block_until_ready(params)
        if i == 0:
            t_first = tick() - t0
            t0 = tick()
    per_step = (tick() - t0) / max(1, steps - 1)
    final = float(np.mean([float(loss_fn_plain(forward, params, b)) for b in batches]))
    return {"loss": final, "s_per_step": per_step, "first_step_s": t_first, "version": kfac_jax.__version__,
            "jax": jax.__version__}


def loss_fn_plain(forward, params, batch):
    import jax
    import jax.numpy as jnp

    x, y = batch
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(forward(params, x)), y[:, None], axis=1))


def torch_train(width: int, pool: list, steps: int, config: str, kind: str) -> dict[str, Any]:
    step = torch_stepper(width, pool, config)
    tick = clock(kind)
    step()  # the first step (no compilation in torch, but keep the protocols alike)
    t0 = tick()
    for _ in range(steps - 1):
        step()
    per_step = (tick() - t0) / max(1, steps - 1)
    return {"loss": pool_loss(step.model, pool), "s_per_step": per_step}  # type: ignore[attr-defined]


# -------------------------------------------------------------------------------------------------- main


def _adam_wall(width: int, pool: list, steps: int) -> float:
    """Wall-clock seconds per Adam step, measured right after the breakdown (the same clock as its parts)."""
    step = torch_stepper(width, pool, "adam")
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="512,1024")
    parser.add_argument("--batches", default="1024,4096", help="batch sizes (K-FAC's overhead falls as n / batch)")
    parser.add_argument("--block", type=int, default=10, help="steps per timed block (one inversion each)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per configuration (median taken)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=50, help="steps of the kfac-jax comparison")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--skip-jax", action="store_true", help="only part 1")
    parser.add_argument("--breakdown-steps", type=int, default=20,
                        help="steps of the per-part breakdown of K-FAC (factors and inverses every 10); 0: skip")
    parser.add_argument("--profile", action="store_true",
                        help="only print a cProfile of 10 K-FAC steps (intervals 10) at width 1024, batch 1024")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kfac_overhead.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.profile:
        print(profile_step(1024, 1024))
        return 0
    widths = [int(w) for w in args.widths.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    command = "$ .venv-bench/bin/python benchmarks/kfac_overhead.py" + (" " + " ".join(argv if argv is not None
                                                                                        else sys.argv[1:])).rstrip()
    overhead, peers = [], []
    for n, batch in itertools.product(widths, batches):
        pool = make_problem(batch)
        steppers = {c: torch_stepper(n, pool, c) for c in ("adam", "kfac", "kfac10", "kfac10c")}
        t = measure(steppers, args.block, args.repeats, args.warmup, args.clock)
        row = {"width": n, "batch": batch, **t}
        if args.breakdown_steps:
            row["parts"] = step_breakdown(n, pool, "kfac10", args.breakdown_steps)
            row["parts_adam"] = _adam_wall(n, pool, args.breakdown_steps)
        overhead.append(row)
        print(f"n={n}, batch {batch}: Adam {t['adam'] * 1e3:.1f} ms, K-FAC {t['kfac'] * 1e3:.1f} ms ({t['kfac'] / t['adam']:.2f}x), "
              f"K-FAC factors/10 {t['kfac10'] * 1e3:.1f} ms ({t['kfac10'] / t['adam']:.2f}x), the same with Cholesky "
              f"{t['kfac10c'] * 1e3:.1f} ms ({t['kfac10c'] / t['adam']:.2f}x)", flush=True)
        if not args.skip_jax and batch == batches[0]:
            tai = torch_train(n, pool, args.train_steps, "kfac", args.clock)
            adam = torch_train(n, pool, args.train_steps, "adam", args.clock)
            jx = kfac_jax_run(n, pool, args.train_steps, args.clock)
            peers.append({"width": n, "batch": batch, "thermoai": tai, "adam": adam, "kfac_jax": jx})
            print(f"  {args.train_steps} steps: thermoai K-FAC loss {tai['loss']:.4f} ({tai['s_per_step'] * 1e3:.1f} ms), "
                  f"kfac-jax loss {jx['loss']:.4f} ({jx['s_per_step'] * 1e3:.1f} ms), Adam {adam['loss']:.4f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(_markdown(args, command, overhead, peers))
    print(f"wrote {args.out}")
    return 0


def _markdown(args: argparse.Namespace, command: str, overhead: list[dict], peers: list[dict]) -> str:
    env = (f"thermoai {thermoai.__version__}, torch {torch.__version__}, 1 torch thread, Python "
           f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} logical cores")
    if peers:
        env += f", kfac-jax {peers[0]['kfac_jax']['version']}, jax {peers[0]['kfac_jax']['jax']} (CPU)"
    clock_s = "process CPU time" if args.clock == "cpu" else "wall-clock time"
    lines = ["# thermoai K-FAC: overhead over Adam, and kfac-jax side by side", "", "Produced by", "", "```",
             command, "```", "", env + ".", "",
             f"MLP 256-n-n-n-10 (tanh), synthetic teacher labels, a pool of {POOL} batches. "
             f"{clock_s.capitalize()}, median over {args.repeats} interleaved blocks of {args.block} steps after "
             f"{args.warmup} warm-up steps.", "",
             "## Overhead over Adam (same model, batches, thread)", "",
             "| width n | batch | Adam ms/step | K-FAC ms/step (factors every step, inverses every 10) | ratio | "
             "K-FAC ms/step (factors and inverses every 10) | ratio | the same, Cholesky solver | ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in overhead:
        lines.append(f"| {r['width']} | {r['batch']} | {r['adam'] * 1e3:.1f} | {r['kfac'] * 1e3:.1f} | {r['kfac'] / r['adam']:.2f} | "
                     f"{r['kfac10'] * 1e3:.1f} | {r['kfac10'] / r['adam']:.2f} | {r['kfac10c'] * 1e3:.1f} | "
                     f"{r['kfac10c'] / r['adam']:.2f} |")
    lines += ["", "Process CPU time is robust to other processes' load but not immune to it (shared caches and "
              "memory bandwidth): on this shared 2-core machine, ratios move by up to about 20 % between runs.", ""]
    for b in sorted({r["batch"] for r in overhead}):
        rows = [r for r in overhead if r["batch"] == b]
        worst1 = max(r["kfac"] / r["adam"] for r in rows)
        worst10 = max(r["kfac10"] / r["adam"] for r in rows)
        worst10c = max(r["kfac10c"] / r["adam"] for r in rows)
        lines.append(f"- Target K-FAC / Adam <= 1.5 at batch {b}: factors every step **{'met' if worst1 <= 1.5 else 'missed'}** "
                     f"(worst {worst1:.2f}); factors every 10 steps **{'met' if worst10 <= 1.5 else 'missed'}** "
                     f"(worst {worst10:.2f}); with Cholesky **{'met' if worst10c <= 1.5 else 'missed'}** "
                     f"(worst {worst10c:.2f}).")
    if any("parts" in r for r in overhead):
        lines += ["", "### Where a K-FAC step's time goes (factors and inverses every 10 steps, eigh)", "",
                  "Wall-clock ms per step, mean over the breakdown's steps (from `KFAC.step`'s report), next to "
                  "Adam's step on the same clock; the last column is the step as predicted from its parts: Adam's "
                  "step plus the parts K-FAC adds.", "",
                  "| width n | batch | Adam | forward+backward | factor statistics (1 step in 10) | inversion "
                  "(1 step in 10) | preconditioning (every step) | optimizer | (Adam + factors + inversion + "
                  "preconditioning) / Adam |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in overhead:
            if "parts" not in r:
                continue
            p, a = r["parts"], r["parts_adam"]
            extra = p["factors"] + p["inverse"] + p["precondition"]
            lines.append(f"| {r['width']} | {r['batch']} | {a * 1e3:.1f} | {p['forward_backward'] * 1e3:.1f} | "
                         f"{p['factors'] * 1e3:.1f} | {p['inverse'] * 1e3:.1f} | {p['precondition'] * 1e3:.1f} | "
                         f"{p['optimizer'] * 1e3:.1f} | {(a + extra) / a:.2f} |")
    lines += ["", "Why the ratio depends on the batch: per square layer and step Adam's work is the forward and "
              "backward pass, 6 b n^2 flops; K-FAC adds two Gram matrices per factor update (about 4 b n^2), the "
              "two preconditioning matmuls every step (4 n^3) and two eigendecompositions per inversion (LAPACK's "
              "syevd, several n^3 at a lower rate than a matmul; a Cholesky inverse is about n^3 at matmul "
              "speed), amortised over 10 steps. The preconditioning alone is 4 n^3 / (6 b n^2) = 2n / (3b) of "
              "Adam's step, so no K-FAC that preconditions every step reaches 1.5x at b = n; the factor updates "
              "add 2 / (3 T_f). The target is within reach once the factors are updated every 10 steps and the "
              "batch is a few times the width.", ""]
    if peers:
        lines += ["## Against kfac-jax (same problem, initial weights and batches)", "",
                  f"Batch {peers[0]['batch']}, {args.train_steps} steps; lr {LR_KFAC}, momentum {MOMENTUM}, damping {DAMPING}, curvature EMA "
                  "0.95, inverses every 10 steps, empirical Fisher, nothing adaptive (kfac-jax's damping is on the "
                  "curvature, thermoai's pi-split over the factors; the step is bounded in both: thermoai's KL clip "
                  "1e-3 at unit learning rate, kfac-jax's norm_constraint 1e-3 lr^2, the same bound). "
                  "Time per step excludes each library's first step (kfac-jax compiles there).", "",
                  "| width n | thermoai K-FAC loss | kfac-jax loss | Adam loss (thermoai) | thermoai ms/step | "
                  "kfac-jax ms/step | ratio thermoai/kfac-jax | kfac-jax first step (s) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in peers:
            t, j, a = p["thermoai"], p["kfac_jax"], p["adam"]
            lines.append(f"| {p['width']} | {t['loss']:.4f} | {j['loss']:.4f} | {a['loss']:.4f} | "
                         f"{t['s_per_step'] * 1e3:.1f} | {j['s_per_step'] * 1e3:.1f} | "
                         f"{t['s_per_step'] / j['s_per_step']:.2f} | {j['first_step_s']:.1f} |")
        lines += ["", "The same nominal damping is not the same damping: thermoai adds pi sqrt(lambda) and "
                  "sqrt(lambda) / pi to its factors as defined in docs/optim.md, kfac-jax applies lambda to its own "
                  "normalisation of the curvature blocks, so the final losses compare two tunings, not one "
                  "algorithm; the times per step compare the same work.", ""]
    else:
        lines += ["kfac-jax part not run (`--skip-jax`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
