"""thermoai.bayes against posteriors 0.1.3: time per update step on the same model, batch and method.

Model: a ReLU MLP 784-512-512-512-10 (0.93 M parameters, 8 parameter tensors), categorical likelihood,
isotropic Gaussian prior, batch-averaged log posterior (``temperature = 1/N`` with N = 60 000), one fixed
batch of 128 random inputs and labels. Methods: SGLD, SGHMC, VI diag (one sample, STL, Adam lr 1e-3),
Laplace diag empirical Fisher (per-sample gradients by vmap). Each method runs with ``inplace=False``
(the default of both libraries) and ``inplace=True``.

Timing: both libraries in this one process, the same torch thread count, a warm-up, then ``--repeats``
blocks of ``--steps`` updates per library, the order of the two libraries alternating block by block;
the figure is the median over blocks of the mean time per step, with the ratios' range over the rounds,
and the machine's load average at the start and the end. The gradient of the log posterior alone
(``torch.func.grad_and_value``, which both libraries call) is timed the same way, so that the cost of the
update arithmetic itself is ``step - gradient``; for SGMCMC the table reports both ratios.

The floor of an SGMCMC update on a CPU is the Gaussian noise (one normal per parameter): the same run
times thermoai's draw (``thermoai.philox``), posteriors', torch's ``normal_`` into one buffer and numpy's
ziggurat, and the parts of thermoai's SGLD step (validated gradient, finiteness check, one fused axpy),
and the report states the least update-only ratio those parts allow.

Run with the benchmark environment (posteriors, torchopt and tensordict are installed only there):

    .venv-bench/bin/python benchmarks/bayes_vs_posteriors.py

and it writes ``benchmarks/results/bayes_vs_posteriors.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

# posteriors' TensorClass states warn at import about shared defaults (research/posteriors.md §4, item 4)
warnings.filterwarnings("ignore", category=FutureWarning)

import posteriors  # noqa: E402
import torchopt  # noqa: E402

import thermoai  # noqa: E402
from thermoai import philox  # noqa: E402
from thermoai.bayes.laplace import diag_fisher as tai_diag_fisher  # noqa: E402
from thermoai.bayes.sgmcmc import sghmc as tai_sghmc  # noqa: E402
from thermoai.bayes.sgmcmc._common import add_noise, scratch_normal  # noqa: E402
from thermoai.bayes.sgmcmc import sgld as tai_sgld  # noqa: E402
from thermoai.bayes.vi import diag as tai_vi_diag  # noqa: E402

N_DATA = 60_000
SIZES = (784, 512, 512, 512, 10)
PRIOR_SD = 1.0


def make_params(generator: torch.Generator) -> dict[str, torch.Tensor]:
    params = {}
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        params[f"w{i}"] = torch.randn(a, b, generator=generator) * math.sqrt(2.0 / a)
        params[f"b{i}"] = torch.zeros(b)
    return params


def mlp(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    n = len(params) // 2
    for i in range(n):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            x = torch.relu(x)
    return x


def log_posterior(params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    log_lik = -F.cross_entropy(mlp(params, x), y)
    log_prior = -0.5 * sum((p * p).sum() for p in params.values()) / PRIOR_SD**2
    return log_lik + log_prior / N_DATA, torch.tensor([])


def gaussian_log_density(params: dict[str, torch.Tensor], batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal over the same parameter tree: its gradient costs about one pass over the
    parameters, so an SGMCMC step on it is almost only the library's update arithmetic."""
    return -0.5 * sum((p * p).sum() for p in params.values()), torch.tensor([])


# ------------------------------------------------------------------------------------------ the methods
# Each entry: name -> (thermoai transform, posteriors transform); hyper-parameters identical.


def sgmcmc_transforms(log_posterior: Callable[..., Any], temperature: float) -> dict[str, tuple[Any, Any]]:
    return {
        "SGLD": (
            tai_sgld.build(log_posterior, lr=1e-3, temperature=temperature),
            posteriors.sgmcmc.sgld.build(log_posterior, lr=1e-3, temperature=temperature),
        ),
        "SGHMC": (
            tai_sghmc.build(log_posterior, lr=1e-2, alpha=1.0, temperature=temperature, momenta=0.0),
            posteriors.sgmcmc.sghmc.build(log_posterior, lr=1e-2, alpha=1.0, temperature=temperature, momenta=0.0),
        ),
    }


def transforms(temperature: float) -> dict[str, tuple[Any, Any]]:
    return {
        "SGLD": (
            tai_sgld.build(log_posterior, lr=1e-3, temperature=temperature),
            posteriors.sgmcmc.sgld.build(log_posterior, lr=1e-3, temperature=temperature),
        ),
        "SGHMC": (
            tai_sghmc.build(log_posterior, lr=1e-2, alpha=1.0, temperature=temperature, momenta=0.0),
            posteriors.sgmcmc.sghmc.build(log_posterior, lr=1e-2, alpha=1.0, temperature=temperature, momenta=0.0),
        ),
        "VI diag": (
            tai_vi_diag.build(log_posterior, lr=1e-3, temperature=temperature, n_samples=1, stl=True, init_log_sds=-3.0),
            posteriors.vi.diag.build(
                log_posterior, optimizer=torchopt.adam(lr=1e-3), temperature=temperature, n_samples=1, stl=True,
                init_log_sds=-3.0,
            ),
        ),
        "Laplace diag Fisher": (
            tai_diag_fisher.build(log_posterior),
            posteriors.laplace.diag_fisher.build(log_posterior, per_sample=False),
        ),
    }


# ------------------------------------------------------------------------------------------ timing


def time_block(step: Callable[[], Any], n: int) -> tuple[float, float]:
    """``(wall, cpu)`` seconds per call of ``step`` averaged over ``n`` calls; ``cpu`` is this thread's CPU
    time, which with one torch thread is the work done and is robust to other processes on the machine."""
    _sync()
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        step()
    _sync()
    return (time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n


def _sync() -> None:
    """Wait for queued GPU work, so that wall-clock blocks measure the kernels, not their launch."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def stepper(transform: Any, params: dict[str, torch.Tensor], batch: Any, inplace: bool) -> Callable[[], Any]:
    """A closure advancing one chain by one update (the state is carried between calls)."""
    holder = {"state": transform.init({k: v.clone() for k, v in params.items()})}

    def step() -> None:
        holder["state"], _ = transform.update(holder["state"], batch, inplace=inplace)

    return step


def measure_blocks(
    steps: dict[str, Callable[[], Any]], n_steps: int, repeats: int, warmup: int, clock: str
) -> dict[str, list[float]]:
    """Per named stepper, the mean seconds per step of each of ``repeats`` interleaved blocks (block ``r``
    of every stepper ran in the same round, the order alternating between rounds) on ``clock``
    ("cpu": this thread's CPU time; "wall": elapsed time)."""
    names = list(steps)
    for name in names:
        time_block(steps[name], warmup)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu = time_block(steps[name], n_steps)
            samples[name].append(cpu if clock == "cpu" else wall)
    return samples


def measure(
    steps: dict[str, Callable[[], Any]], n_steps: int, repeats: int, warmup: int, clock: str
) -> dict[str, float]:
    """Median over ``repeats`` interleaved blocks of the mean seconds per step (:func:`measure_blocks`)."""
    return {n: statistics.median(v) for n, v in measure_blocks(steps, n_steps, repeats, warmup, clock).items()}


def spread(values: list[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of per-round ratios."""
    return statistics.median(values), min(values), max(values)


def update_parts(params: dict[str, torch.Tensor], batch: Any) -> dict[str, Callable[[], Any]]:
    """thermoai's in-place SGLD step on the MLP taken apart: where its time goes besides the gradient."""
    from thermoai import tree as T
    from thermoai.bayes import log_prob
    from thermoai.bayes.sgmcmc import _common as C

    theta = [p.clone() for p in T.leaves(params)]
    _, grad, _ = log_prob.value_and_grad(log_posterior, params, batch)
    g = T.leaves(grad)

    def bare() -> None:
        with torch.no_grad():
            torch.func.grad_and_value(log_posterior, has_aux=True)(params, batch)

    def arithmetic() -> None:
        C.axpy(theta, 1e-12, g, True)  # theta += eps g (the noise's add is the same kernel once more)

    return {
        "torch.func.grad_and_value alone": bare,
        "thermoai's log_prob.value_and_grad (validated: pair, scalar, finite value and gradient)":
            lambda: log_prob.value_and_grad(log_posterior, params, batch),
        "the finiteness check of value and gradient alone (tree_all_finite)": lambda: T.tree_all_finite(g),
        "one fused axpy over the tree (torch._foreach_add_)": arithmetic,
    }


# ------------------------------------------------------------------------------------------ the noise
# Ways to draw one standard normal per parameter, timed side by side (the floor of an SGMCMC update on a
# CPU): posteriors', thermoai's (thermoai.philox) and what torch and numpy offer.
THERMOAI_NOISE = "thermoai: Philox + Box-Muller noise added into the parameters in place, one pass (add_noise)"


def noise_candidates(leaves: list[torch.Tensor]) -> dict[str, Callable[[], Any]]:
    n = sum(p.numel() for p in leaves)
    words = torch.empty((n + 1) // 2, dtype=torch.int64)
    flat = torch.empty(n)
    np_out = np.empty(n, dtype=np.float32)

    def sfc64_ziggurat() -> None:
        np.random.Generator(np.random.SFC64(int(torch.randint(0, 2**62, ())))).standard_normal(
            out=np_out, dtype=np.float32
        )

    targets = [p.detach().clone() for p in leaves]
    return {
        "posteriors: torch.randn_like leaf by leaf": lambda: [torch.randn_like(p) for p in leaves],
        THERMOAI_NOISE: lambda: add_noise(targets, 0.01, None, True),
        "thermoai: the same draw into a reused buffer (scratch_normal)": lambda: scratch_normal(leaves, 0.01, None),
        "torch's normal_ into one reused buffer (thermoai where no kernel can be built)": lambda: flat.normal_(0.0, 0.01),
        "torch's Mersenne Twister bits alone (random_, n/2 int64 words)": lambda: words.random_(),
        "numpy SFC64 ziggurat (float32)": sfc64_ziggurat,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both libraries (default 1)")
    parser.add_argument("--steps", type=int, default=20, help="updates per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per library (median taken)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed updates first")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu",
        help="cpu: the main thread's CPU time (default; robust on a shared machine, needs --threads 1); wall",
    )
    parser.add_argument("--device", default="cpu", help="torch device for model, data and states (default cpu)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bayes_vs_posteriors.md"))
    parser.add_argument(
        "--methods", default="", help="comma-separated subset of the methods (e.g. SGLD,SGHMC); default all"
    )
    args = parser.parse_args(argv)

    if args.device != "cpu" and args.clock == "cpu":
        args.clock = "wall"  # host CPU time says nothing about GPU kernels
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1 (or --clock wall)")
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    device = torch.device(args.device)
    params = {k: v.to(device) for k, v in make_params(generator).items()}
    n_params = sum(p.numel() for p in params.values())
    batch = (
        torch.randn(128, SIZES[0], generator=generator).to(device),
        torch.randint(0, SIZES[-1], (128,), generator=generator).to(device),
    )
    torch.manual_seed(0)
    load_start = os.getloadavg()[0]

    def grad_only() -> None:
        with torch.no_grad():
            torch.func.grad_and_value(log_posterior, has_aux=True)(params, batch)

    def gaussian_grad_only() -> None:
        with torch.no_grad():
            torch.func.grad_and_value(gaussian_log_density, has_aux=True)(params, None)

    cases = [(m, "MLP", tai, post, batch, grad_only) for m, (tai, post) in transforms(1.0 / N_DATA).items()]
    cases += [
        (m, "Gaussian", tai, post, None, gaussian_grad_only)
        for m, (tai, post) in sgmcmc_transforms(gaussian_log_density, 1e-4).items()
    ]
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",")}
        cases = [c for c in cases if c[0] in wanted]
    rows = []
    for method, target, tai, post, data, grad_fn in cases:
        for inplace in (False, True):
            steps = {
                "thermoai": stepper(tai, params, data, inplace),
                "posteriors": stepper(post, params, data, inplace),
                "grad": grad_fn,
            }
            # a Laplace step is a per-sample-gradient pass (seconds): fewer steps per block, same repeats
            n_steps = max(1, args.steps // 10) if method.startswith("Laplace") else args.steps
            warmup = min(args.warmup, 1) if method.startswith("Laplace") else args.warmup
            blocks = measure_blocks(steps, n_steps, args.repeats, warmup, args.clock)
            t = {k: statistics.median(v) for k, v in blocks.items()}
            step_ratios = [a / b for a, b in zip(blocks["thermoai"], blocks["posteriors"])]
            update_ratios = [
                (a - g) / (b - g) for a, b, g in zip(blocks["thermoai"], blocks["posteriors"], blocks["grad"]) if b - g > 0
            ]
            row = {
                "method": method, "target": target, "inplace": inplace, "thermoai": t["thermoai"], "posteriors": t["posteriors"],
                "grad": t["grad"], "step_ratios": step_ratios, "update_ratios": update_ratios,
            }
            rows.append(row)
            print(_format_row(row), flush=True)

    # the Gaussian noise an SGMCMC step draws (one normal per parameter), timed alone: posteriors draws
    # randn_like leaf by leaf into fresh tensors; thermoai one scaled normal_ into a reused buffer; and the
    # candidate faster generators
    leaves = list(params.values())
    noises = measure(noise_candidates(leaves), args.steps, args.repeats, args.warmup, args.clock)
    for name, sec in noises.items():
        print(f"noise: {name:<66} {sec * 1e3:6.2f} ms")
    parts = measure(update_parts(params, batch), args.steps, args.repeats, args.warmup, args.clock)
    for name, sec in parts.items():
        print(f"SGLD part: {name:<62} {sec * 1e3:6.2f} ms")
    load_end = os.getloadavg()[0]
    header = _table(rows)
    command = "$ " + " ".join([".venv-bench/bin/python", "benchmarks/bayes_vs_posteriors.py", *(argv or sys.argv[1:])])
    env = (
        f"thermoai {thermoai.__version__ if hasattr(thermoai, '__version__') else '?'}, "
        f"posteriors {getattr(posteriors, '__version__', '0.1.3')}, torch {torch.__version__}, "
        f"{args.threads} torch thread(s), Python {platform.python_version()}, {platform.machine()}, "
        f"device {_device_name(device)}; noise kernel: {philox.status().split(': /')[0]}; "
        f"model {n_params:,} parameters; {args.repeats} interleaved blocks of {args.steps} steps "
        f"(Laplace: {max(1, args.steps // 10)}) after {args.warmup} warm-up steps, median of "
        f"{'the main thread CPU time' if args.clock == 'cpu' else 'wall-clock time'} per step; "
        f"load average (1 min) {load_start:.1f} at the start, {load_end:.1f} at the end (other processes "
        f"share the {os.cpu_count()} cores)."
    )
    print()
    print(header)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_report(command, env, header, rows, noises, parts))
    print(f"\nwritten to {out}")
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)"


def _format_row(row: dict[str, Any]) -> str:
    return (
        f"{row['method']:<20} {row['target']:<8} inplace={str(row['inplace']):<5}  thermoai {row['thermoai'] * 1e3:8.2f} ms  "
        f"posteriors {row['posteriors'] * 1e3:8.2f} ms  ratio {row['thermoai'] / row['posteriors']:.2f}  "
        f"(gradient alone {row['grad'] * 1e3:.2f} ms)"
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | target | inplace | thermoai ms/step | posteriors ms/step | ratio thermoai/posteriors, median [min, max] | "
        "gradient ms | update-only ratio (step - gradient), median [min, max] |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sgmcmc = r["method"] in ("SGLD", "SGHMC")
        update = "n/a"
        if sgmcmc and r["update_ratios"] and r["posteriors"] - r["grad"] > 0.05 * r["grad"]:
            update = "{:.2f} [{:.2f}, {:.2f}]".format(*spread(r["update_ratios"]))
        lines.append(
            f"| {r['method']} | {r['target']} | {r['inplace']} | {r['thermoai'] * 1e3:.2f} | {r['posteriors'] * 1e3:.2f} | "
            + "{:.2f} [{:.2f}, {:.2f}]".format(*spread(r["step_ratios"]))
            + f" | {r['grad'] * 1e3:.2f} | {update} |"
        )
    return "\n".join(lines)


def _noise_table(noises: dict[str, float]) -> str:
    base = noises[THERMOAI_NOISE]
    lines = ["| noise for all parameters, one step | ms | / thermoai's draw |", "|---|---:|---:|"]
    lines += [f"| {name} | {sec * 1e3:.2f} | {sec / base:.2f} |" for name, sec in noises.items()]
    return "\n".join(lines)


def _targets(rows: list[dict[str, Any]], noises: dict[str, float]) -> str:
    """The targets, judged on this run's numbers."""
    scratch = noises[THERMOAI_NOISE]
    slower = [f"{r['method']} ({r['target']}, inplace={r['inplace']})" for r in rows if r["thermoai"] > r["posteriors"]]
    sgmcmc = [r for r in rows if r["method"] in ("SGLD", "SGHMC")]
    if not sgmcmc:
        return "- (no SGMCMC rows in this run)"
    update = [statistics.median(r["update_ratios"]) for r in sgmcmc if r["update_ratios"]]
    step = [r["thermoai"] / r["posteriors"] for r in sgmcmc]
    worst = max(update)
    floors = [
        f"{r['method']} {r['target']} inplace={r['inplace']}: {scratch / (r['posteriors'] - r['grad']):.2f}"
        for r in sgmcmc if r["posteriors"] > r["grad"]
    ]
    normals = {k: v for k, v in noises.items() if "alone" not in k}  # the bits alone are not normals yet
    fastest = min(normals, key=normals.get)
    others = "; ".join(f"{k}: {v / scratch:.2f}×" for k, v in normals.items() if k != THERMOAI_NOISE)
    return "\n".join([
        f"- No method slower than posteriors: **{'met' if not slower else 'missed'}**"
        + (f" (slower: {', '.join(slower)})" if slower else f" (worst step ratio {max(r['thermoai'] / r['posteriors'] for r in rows):.2f})."),
        f"- SGMCMC update (step − gradient) at most 0.6× posteriors' (issue 14): **{'met' if worst <= 0.6 else 'missed'}**"
        f" (median update-only ratios {min(update):.2f} to {worst:.2f}; whole-step ratios {min(step):.2f} to {max(step):.2f}).",
        f"- The floor: thermoai's noise draw alone takes {scratch * 1e3:.2f} ms; divided by posteriors' whole update "
        f"(its step − gradient) that is the update-only ratio thermoai would reach with free arithmetic: "
        + "; ".join(floors) + ".",
        f"- The fastest exact normals measured here: {fastest} ({normals[fastest] * 1e3:.2f} ms); the others "
        f"against thermoai's draw: {others}.",
    ])


def _parts_text(parts: dict[str, float], noises: dict[str, float], rows: list[dict[str, Any]]) -> str:
    scratch = noises[THERMOAI_NOISE]
    axpy = parts["one fused axpy over the tree (torch._foreach_add_)"]
    check = parts["the finiteness check of value and gradient alone (tree_all_finite)"]
    lines = ["| part of thermoai's SGLD step (MLP) | ms |", "|---|---:|"]
    lines += [f"| {k} | {v * 1e3:.2f} |" for k, v in parts.items()]
    lines += [f"| the noise, added in place (thermoai's draw, above) | {scratch * 1e3:.2f} |"]
    least = scratch + axpy + check
    sgld = [r for r in rows if r["method"] == "SGLD" and r["target"] == "MLP" and r["posteriors"] > r["grad"]]
    verdict = ""
    if sgld:
        post = min(r["posteriors"] - r["grad"] for r in sgld)
        verdict = (
            f" Against posteriors' fastest SGLD update in this run ({post * 1e3:.2f} ms) that is an update-only "
            f"ratio of {least / post:.2f}, and {(scratch + axpy) / post:.2f} without the finiteness check."
        )
    validated = parts["thermoai's log_prob.value_and_grad (validated: pair, scalar, finite value and gradient)"]
    bare = parts["torch.func.grad_and_value alone"]
    return "\n".join(lines) + (
        f"\n\nthermoai's SGLD update is at least the gradient axpy, the noise added in place and the check, each "
        f"timed alone (on warm caches, so a lower bound): {axpy * 1e3:.2f} + {scratch * 1e3:.2f} + {check * 1e3:.2f} = "
        f"{least * 1e3:.2f} ms." + verdict + f" Inside the step the validated gradient costs "
        f"{(validated - bare) * 1e3:.2f} ms more than the bare one: there the check reads gradients just written "
        f"by the backward pass, from memory rather than cache."
    )


def _report(
    command: str, env: str, table: str, rows: list[dict[str, Any]], noises: dict[str, float], parts: dict[str, float]
) -> str:
    return f"""# thermoai.bayes vs posteriors 0.1.3: time per update step

Produced by

```
{command}
```

{env}

{table}

A ratio below 1 means thermoai is faster. Ratios are per round (the blocks of thermoai, posteriors and
the gradient that ran one after the other), median and range over the rounds. Target "MLP": the
classifier above with a batch of 128; target "Gaussian": a standard normal over the same parameter tree
(gradient about one pass over the parameters), where a step is almost only the library's update
arithmetic and noise generation. "gradient ms" is `torch.func.grad_and_value` of the same log density
alone (both libraries call it once per step; for Laplace and VI the work differs: per-sample gradients,
and the gradient through the reparameterised sample). For SGMCMC, where a step is exactly one such
gradient plus the update arithmetic, the update-only ratio divides what is left of each step after the
gradient: the part a library's own code decides.

## Targets

{_targets(rows, noises)}

## The noise draw

{_noise_table(noises)}

{_parts_text(parts, noises, rows)}

An SGMCMC update is a few element-wise passes over the parameters plus one standard-normal draw per
parameter. thermoai does the passes with `torch._foreach_*`, the scalar folded into each axpy, in place
when asked (SGLD: one axpy, SGHMC: three, plus one cheap sum per leaf to check finiteness), where
posteriors' `tree_map` of Python expressions makes four and eight passes, each allocating a temporary.
The draw dominates what is left, and torch's CPU `normal_` is its Mersenne Twister (one 32-bit word per
normal, drawn in a scalar loop; the raw words alone cost about half of the normals) followed by a
vectorised Box-Muller. thermoai draws float32 noise with `thermoai.philox` instead: Philox4x32-10 words
(the counter-based generator of torch's CUDA backend) and Box-Muller with its own branch-free ln, sin
and cos, one compiled pass that the C compiler vectorises and that adds the noise straight into the new
parameters or momenta (no noise buffer is written or read), keyed by one draw of torch's generator (so
`torch.manual_seed` and a saved generator state still reproduce the chain). The kernel is compiled on
first use with the system C compiler; where there is none, thermoai falls back to torch's `normal_` into
one buffer (the row above). Its draws equal a NumPy float32 transcription bit for bit and pass the
moment, tail, KS and independence tests of `tests/test_philox.py`.
"""


if __name__ == "__main__":
    raise SystemExit(main())
