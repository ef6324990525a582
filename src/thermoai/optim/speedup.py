r"""Predicted per-step time of Adam, digital K-FAC and thermodynamic K-FAC, and time to a target.

From a model's layer shapes (or a list of widths), the batch size, a :class:`~thermoai.thermo.device.Device`
and a :class:`~thermoai.thermo.digital.DigitalHardware`, the per-step time of each optimiser (Donatella et
al. 2025, arXiv 2502.08603; the reconstruction of research/kfac-paper.md §3.2 and §6, every unknown a
parameter). Per linear layer with ``n_in`` inputs (the bias column included), ``n_out`` outputs, ``t``
positions sharing the weights per example (tokens, nodes) and batch ``b`` (``B = b t`` rows):

================  ===========================================================  =================
part              work                                                          where
================  ===========================================================  =================
forward/backward  ``6 B n_in n_out`` flops                                       digital, all
Adam update       ``~12 n_in n_out`` flops, 7 reads/writes per parameter           digital
K-FAC factors     ``2 B (n_in^2 + n_out^2)`` flops, every ``factor_interval``     digital
K-FAC inverses    ``eigh``: ``9 (n_in^3 + n_out^3)`` flops, every ``inverse_interval``   digital K-FAC
K-FAC apply       ``2 (n_out^2 n_in + n_out n_in^2)`` flops, every step             digital K-FAC, method 1
device work       the run plans of :mod:`thermoai.thermo.planning`                  thermodynamic
================  ===========================================================  =================

Thermodynamic K-FAC, ``method=1``: the device inverts both damped factors (``plan_inv``) every
``inverse_interval`` steps and the host applies them; ``method=2`` (default, the paper's "O(n^2 kappa^2)"):
every step the device solves ``n_in`` systems of size ``n_out`` and ``n_out`` of size ``n_in``
(``plan_solve`` with that many right-hand sides; the factor is programmed once per inverse interval, each
right-hand side every step). Layers share ``solvers`` devices, assigned greedily by cost; the device time of
a step is the busiest device's. All flops run at the digital hardware's roofline
(:meth:`DigitalHardware.time_s`, without its per-call overhead, which is charged once per step).

Spectra: the damped factors' rates are taken evenly spaced on ``[1/kappa, 1]`` (``kappa`` the damped
factors' condition number, a parameter). Time to a target: K-FAC takes ``steps_ratio`` times Adam's steps
(0.5-0.75 for K-FAC-expand/reduce on the AlgoPerf workloads, Eschenhagen et al., NeurIPS 2023), so
``speedup_vs_adam = t_adam / (steps_ratio t_kfac)``.

Presets: :func:`vit_s16` (AlgoPerf ImageNet ViT-S/16: width 384, depth 12, MLP 1536, 197 tokens) and
:func:`ogbg_gnn` (AlgoPerf ogbg-molpcba GraphNetwork: latent 256, 5 message-passing steps; about 26 nodes
and 56 edges per molecule), from research/kfac.md §2.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.digital import DigitalHardware
from thermoai.thermo.planning import Spectrum, plan_inv, plan_solve

__all__ = ["LinearShape", "StepTimes", "predict", "width_sweep", "vit_s16", "ogbg_gnn", "PRESETS", "mlp"]


@dataclass(frozen=True)
class LinearShape:
    """One preconditioned layer: ``n_in`` inputs (without the bias column), ``n_out`` outputs, ``positions``
    rows per example that share the weight (1 for an MLP; tokens, nodes or edges otherwise), ``count``
    identical copies (e.g. the same block in every layer of a transformer)."""

    name: str
    n_in: int
    n_out: int
    positions: int = 1
    count: int = 1
    bias: bool = True

    def __post_init__(self) -> None:
        for f in ("n_in", "n_out", "positions", "count"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LinearShape.{f} must be a positive integer; got {v!r}")

    @property
    def a_size(self) -> int:
        """Size of the input factor A (with the bias column)."""
        return self.n_in + (1 if self.bias else 0)


@dataclass(frozen=True)
class StepTimes:
    """Predicted seconds per optimisation step and the parts they are made of."""

    adam_s: float
    kfac_digital_s: float
    kfac_thermo_s: float
    breakdown: dict[str, dict[str, float]]
    device_energy_j: float
    settings: dict = field(default_factory=dict)

    @property
    def speedup_vs_kfac(self) -> float:
        """Digital K-FAC step time over thermodynamic K-FAC step time (> 1: the device helps)."""
        return self.kfac_digital_s / self.kfac_thermo_s

    def speedup_vs_adam(self, steps_ratio: float = 0.75) -> float:
        """Time to a target of Adam over thermodynamic K-FAC, K-FAC needing ``steps_ratio`` of Adam's steps."""
        return self.adam_s / (steps_ratio * self.kfac_thermo_s)

    def digital_kfac_vs_adam(self, steps_ratio: float = 0.75) -> float:
        """Time to a target of Adam over digital K-FAC."""
        return self.adam_s / (steps_ratio * self.kfac_digital_s)


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer; got {v!r}")
    return v


def _flops_time(hw: DigitalHardware, flops: float, n_bytes: float = 0.0) -> float:
    """Roofline time without the per-call overhead (charged once per step)."""
    return max(flops / (hw.flop_rate * hw.efficiency), n_bytes / hw.memory_bandwidth)


def _device_cost_per_step(shape: LinearShape, device: Device, kappa: float, tol: float, method: int,
                          inverse_interval: int) -> Cost:
    """Device cost of one step for one copy of the layer (amortised over the inverse interval)."""
    total = Cost()
    for d, rhs in ((shape.n_out, shape.a_size), (shape.a_size, shape.n_out)):
        dev = replace(device, n_cells=max(device.n_cells, d))
        spec = Spectrum.uniform(d, kappa)
        if method == 1:
            total = total + plan_inv(dev, spec, tol).cost * (1.0 / inverse_interval)
        else:
            p = plan_solve(dev, spec, tol, rhs=rhs)
            matrix = dev.program_cost(d * d)  # the factor changes only at inverse-update steps
            total = total + p.cost + matrix * (1.0 / inverse_interval - 1.0)
    return total


def predict(layers: Sequence[LinearShape], batch: int, *, device: Device | None = None,
            digital: DigitalHardware | None = None, kappa: float = 100.0, tol: float = 0.1, method: int = 2,
            inverse_interval: int = 10, factor_interval: int = 1, solvers: int | None = None) -> StepTimes:
    """Per-step times of Adam, digital K-FAC and thermodynamic K-FAC (module docstring).

    Args:
        layers: the preconditioned layers (:class:`LinearShape`); ``count`` copies each.
        batch: examples per step.
        device: the thermodynamic device (default :meth:`Device.projected_chip`); its ``n_cells`` is raised to
            each factor's size.
        digital: the GPU/host (default the H100 figures of :class:`DigitalHardware`).
        kappa: condition number of the damped factors; tol: relative error asked of each device solve.
        method: 1 (device inverses every ``inverse_interval`` steps) or 2 (device solves every step).
        solvers: devices working in parallel (default one per layer copy).
    """
    if not layers or not all(isinstance(s, LinearShape) for s in layers):
        raise TypeError("layers must be a non-empty sequence of LinearShape")
    _positive_int(batch, "batch")
    _positive_int(inverse_interval, "inverse_interval")
    _positive_int(factor_interval, "factor_interval")
    if method not in (1, 2):
        raise ValueError(f"method must be 1 or 2; got {method!r}")
    if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 1):
        raise ValueError(f"kappa must be a finite number >= 1; got {kappa!r}")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1); got {tol!r}")
    dev = Device.projected_chip(8) if device is None else device
    hw = DigitalHardware() if digital is None else digital
    copies = sum(s.count for s in layers)
    n_solvers = copies if solvers is None else _positive_int(solvers, "solvers")

    fwd_bwd = adam = factors = inverses = apply = 0.0
    device_jobs: list[Cost] = []
    for s in layers:
        rows = batch * s.positions
        a, g = s.a_size, s.n_out
        fwd_bwd += s.count * _flops_time(hw, 6.0 * rows * s.n_in * s.n_out)
        adam += s.count * _flops_time(hw, 12.0 * a * g, 7.0 * a * g * hw.bytes_per_element)
        factors += s.count * _flops_time(hw, 2.0 * rows * (a * a + g * g)) / factor_interval
        inverses += s.count * _flops_time(hw, 9.0 * (a**3 + g**3)) / inverse_interval
        apply += s.count * _flops_time(hw, 2.0 * (g * g * a + g * a * a))
        device_jobs += [_device_cost_per_step(s, dev, float(kappa), float(tol), method, inverse_interval)] * s.count
    # greedy assignment of the layers' device work to the solvers, largest first (KAISA-style)
    loads = [0.0] * n_solvers
    for job in sorted(device_jobs, key=lambda c: -c.time):
        i = loads.index(min(loads))
        loads[i] += job.time
    device_time = max(loads)
    energy = sum(c.energy for c in device_jobs)
    overhead = hw.overhead_s
    t_adam = overhead + fwd_bwd + adam
    t_kfac = overhead + fwd_bwd + adam + factors + inverses + apply
    t_thermo = overhead + fwd_bwd + adam + factors + (apply if method == 1 else 0.0) + device_time
    breakdown = {
        "adam": {"forward_backward": fwd_bwd, "update": adam, "overhead": overhead},
        "kfac_digital": {"forward_backward": fwd_bwd, "update": adam, "factors": factors, "inverses": inverses,
                         "apply": apply, "overhead": overhead},
        "kfac_thermo": {"forward_backward": fwd_bwd, "update": adam, "factors": factors,
                        "apply": apply if method == 1 else 0.0, "device": device_time, "overhead": overhead},
    }
    settings = {"batch": batch, "kappa": kappa, "tol": tol, "method": method, "inverse_interval": inverse_interval,
                "factor_interval": factor_interval, "solvers": n_solvers, "layers": [s.__dict__ for s in layers],
                "device": dev.__dict__, "digital": hw.__dict__}
    return StepTimes(t_adam, t_kfac, t_thermo, breakdown, energy, settings)


def mlp(widths: Sequence[int], name: str = "mlp") -> list[LinearShape]:
    """The layers of an MLP with the given widths (input first): ``len(widths) - 1`` linear layers."""
    if len(widths) < 2:
        raise ValueError(f"widths must hold at least an input and an output width; got {list(widths)}")
    return [LinearShape(f"{name}.{i}", int(widths[i]), int(widths[i + 1])) for i in range(len(widths) - 1)]


def width_sweep(widths: Sequence[int], *, depth: int = 4, batch: int = 128, **kwargs) -> list[dict]:
    """:func:`predict` for square MLPs of ``depth`` layers at each width; one row per width."""
    rows = []
    for n in widths:
        t = predict(mlp([n] * (depth + 1)), batch, **kwargs)
        rows.append({"width": n, "adam_s": t.adam_s, "kfac_digital_s": t.kfac_digital_s,
                     "kfac_thermo_s": t.kfac_thermo_s, "speedup_vs_kfac": t.speedup_vs_kfac,
                     "speedup_vs_adam": t.speedup_vs_adam(), "digital_kfac_vs_adam": t.digital_kfac_vs_adam(),
                     "device_energy_j": t.device_energy_j})
    return rows


def vit_s16() -> list[LinearShape]:
    """AlgoPerf ImageNet ViT-S/16: 12 blocks of width 384 (qkv 384->1152, proj 384->384, MLP 384->1536->384,
    197 tokens), the 16x16x3 patch embedding (768->384, 196 patches) and the 1000-way head."""
    t = 197
    return [LinearShape("patch_embedding", 768, 384, positions=196),
            LinearShape("qkv", 384, 1152, positions=t, count=12), LinearShape("proj", 384, 384, positions=t, count=12),
            LinearShape("fc1", 384, 1536, positions=t, count=12), LinearShape("fc2", 1536, 384, positions=t, count=12),
            LinearShape("head", 384, 1000)]


def ogbg_gnn(nodes: int = 26, edges: int = 56) -> list[LinearShape]:
    """AlgoPerf ogbg-molpcba GraphNetwork (latent 256, 5 steps): per step an edge, node and global MLP layer
    (step 0: 896, 896, 640 inputs; steps 1-4: 1024, 1024, 768), the embedders 9->256 and 3->256 and the
    decoder 256->128; ``nodes``/``edges`` per molecule share the weights."""
    layers = [LinearShape("node_embed", 9, 256, positions=nodes), LinearShape("edge_embed", 3, 256, positions=edges),
              LinearShape("edge_0", 896, 256, positions=edges), LinearShape("node_0", 896, 256, positions=nodes),
              LinearShape("global_0", 640, 256),
              LinearShape("edge", 1024, 256, positions=edges, count=4),
              LinearShape("node", 1024, 256, positions=nodes, count=4),
              LinearShape("global", 768, 256, count=4), LinearShape("decoder", 256, 128)]
    return layers


PRESETS = {"vit_s16": vit_s16, "ogbg_gnn": ogbg_gnn}
