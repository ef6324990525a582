r"""K-FAC: a Kronecker-factored natural-gradient preconditioner in front of any ``torch.optim`` optimizer.

Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML 2015
(arXiv 1503.05671); convolutions: Grosse & Martens, ICML 2016 (arXiv 1602.01407); weight sharing:
Eschenhagen et al., NeurIPS 2023 (arXiv 2311.00636); the thermodynamic backends: Donatella et al. 2025
(arXiv 2502.08603). Use::

    kfac = KFAC(model)                       # hooks on every nn.Linear / nn.Conv2d / nn.Embedding
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in data:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        kfac.step()                          # .grad <- preconditioned gradient, per layer
        opt.step()

Per layer (shapes and sharing modes in :mod:`thermoai.optim.layers`), with ``M`` the gradient (d_out, d_in)
and step ``k``:

* every ``factor_update_interval`` steps, running averages of the factors from the batch's statistics::

      A <- xi A + (1 - xi) A_batch,     G <- xi G + (1 - xi) G_batch       (xi = factor_decay; the first
                                                                            update takes the batch factors)

  ``fisher="empirical"``: ``G`` from the gradients of the training loss; ``fisher="sampled"``: from the
  gradients of ``-log p(y_hat | x)`` with ``y_hat`` drawn from the model's predictive distribution (the
  "true" Fisher; see :meth:`KFAC.sample_fisher`);
* every ``inverse_update_interval`` steps, the solver prepares the damped inverses (or eigen-bases) with
  the damping ``lambda`` of that step (:mod:`thermoai.optim.solvers`):

  - ``damping_form="factored"``: ``U = (G + lambda_G I)^-1 M (A + lambda_A I)^-1`` with
    ``damping_split="pi"`` (default): ``lambda_A = pi sqrt(lambda)``, ``lambda_G = sqrt(lambda) / pi``,
    ``pi = sqrt((tr A / d_in) / (tr G / d_out))`` (Martens & Grosse §6.3); ``"sqrt"``: ``pi = 1``;
    ``"each"``: ``lambda_A = lambda_G = lambda`` (kfac-pytorch's INVERSE convention);
  - ``damping_form="exact"``: ``vec U = (A kron G + lambda I)^-1 vec M`` in the factors' eigen-bases
    (``eigh`` solver only; kfac-pytorch's EIGEN convention);

* every step, ``U`` from the latest prepared solver state; with ``kl_clip = c`` (default 1e-3) all layers'
  updates are scaled by ``nu = min(1, sqrt(c / |sum_layers lr^2 <U, M>|))`` (Ba et al. 2017; kfac-pytorch),
  which bounds the KL divergence ``lr^2 U^T F U / 2`` of the step under the quadratic model. ``lr`` is the
  ``lr`` argument, or the optimizer's learning rates when ``optimizer=`` (or ``lr=optimizer``) is given, as
  in kfac-pytorch; by default it is 1, so the preconditioned gradient itself is held to a squared Fisher
  norm of at most ``c`` and the optimizer's learning rate scales the clipped step.

Every hyper-parameter (``damping``, ``factor_decay``, ``kl_clip``, ``lr``, and the two intervals) is a number
or a schedule, a callable of the step (a 0-d integer tensor, the number of completed ``step`` calls), as
everywhere in thermoai (:mod:`thermoai.types`). ``lr`` (used by KL clipping only) may also be the
optimizer itself, whose param groups' learning rates are then read at every step.

Opt-out: ``skip=`` modules (instances, names or fnmatch patterns of names, or classes); and with
``optimizer=``, param groups with ``"kfac": False`` (a module is preconditioned only if all its parameters
are). Their gradients are left as they are.

Bad input: modules with parameters that K-FAC cannot precondition (other layer types, grouped
convolutions, sparse embeddings, linear layers whose weight is used functionally, e.g. inside
``nn.MultiheadAttention``) are skipped with **one** warning naming them; a non-finite factor or gradient
raises a ``FloatingPointError`` naming the layer before any gradient is changed; zero damping with a
singular factor raises a ``ValueError``.

``state_dict()`` is a flat dict of tensors (saveable with ``safetensors.torch.save_file``); loading it
into a ``KFAC`` of the same model and settings resumes bit for bit.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from thermoai.optim.layers import SHARING_MODES, LayerHelper, helper_for
from thermoai.optim.solvers import Damping, DeviceUsage, Solver, make_solver
from thermoai.types import Schedule, check_non_negative, check_scalar_value, resolve_schedule

__all__ = ["KFAC", "StepReport"]

_FORMAT = 1


@dataclass(frozen=True)
class StepReport:
    """What one :meth:`KFAC.step` did and cost.

    ``digital_time_s``: host wall-clock seconds of ``factors`` (the hooks' outer products since the last
    step and the running averages), ``inverse`` (the solver's prepare) and ``precondition`` (applying the
    solver state, KL clipping, writing ``.grad``). ``device_time_s``/``device_energy_j``: the simulated
    device's time and energy (thermodynamic solver), layers in turn on one device; ``device_time_parallel_s``:
    one device per layer (the slowest layer). ``kl_scale``: the KL-clipping factor (a 0-d tensor, 1 if off).
    """

    step: int
    factor_update: bool
    inverse_update: bool
    digital_time_s: dict[str, float]
    device_time_s: float = 0.0
    device_time_parallel_s: float = 0.0
    device_energy_j: float = 0.0
    device_runs: int = 0
    kl_scale: Tensor | None = None


class _Layer:
    """The state K-FAC keeps for one module."""

    def __init__(self, name: str, helper: LayerHelper):
        self.name = name
        self.helper = helper
        self.A: Tensor | None = None
        self.G: Tensor | None = None
        self.solver_state: dict[str, Tensor] | None = None
        self.damping: Damping | None = None
        self.clear()

    def clear(self) -> None:
        self.a_sum: Tensor | None = None
        self.a_rows = 0
        self.g_sum: Tensor | None = None
        self.examples = 0
        self.outputs: list[tuple[Tensor, int]] = []  # sampled Fisher: (layer output, N) of this step


def _all_finite(tensors: list[Tensor]) -> bool:
    """True when every element of every tensor is finite, with one host sync.

    Fast path: NaN and Inf survive a sum (``inf - inf`` is NaN), so finite sums prove finite tensors; a sum
    is one read of the tensor, where ``isfinite(t).all()`` also writes a boolean copy (about 35x slower for
    a 1024 x 1025 matrix on one CPU thread). Only when a sum is not finite (a bad entry, or an overflow of the
    sum itself) is each tensor checked element by element."""
    sums = torch.stack([t.sum().float() for t in tensors])
    if bool(torch.isfinite(sums).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _check_interval(value: Any, name: str) -> int:
    if isinstance(value, Tensor):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (or a schedule returning one); got {value!r}")
    return value


class KFAC:
    """K-FAC preconditioner (module docstring).

    Args:
        model: the ``nn.Module`` to precondition; hooks go on its ``nn.Linear``, ``nn.Conv2d`` and
            ``nn.Embedding`` sub-modules.
        damping: Tikhonov damping ``lambda`` (>= 0), default 1e-3 (kfac-pytorch's).
        factor_decay: running-average weight ``xi`` in [0, 1), default 0.95.
        factor_update_interval, inverse_update_interval: steps between factor updates (default 1) and
            between solver preparations (default 10).
        kl_clip: KL-clipping bound ``c`` (default 1e-3, kfac-pytorch's; None: off).
        lr: learning rate seen by KL clipping: a number, a schedule or the optimizer (default: the
            ``optimizer``'s if given, else 1).
        optimizer: read for ``"kfac": False`` param groups (and for ``lr`` if ``lr`` is None).
        damping_form: ``"factored"`` (default) or ``"exact"``.
        damping_split: ``"pi"`` (default), ``"sqrt"`` or ``"each"`` (factored form only).
        fisher: ``"empirical"`` (default) or ``"sampled"`` (needs ``predictive``).
        predictive: for the sampled Fisher, ``outputs -> torch.distributions.Distribution``, the model's
            predictive distribution given its outputs, e.g. ``lambda logits: Categorical(logits=logits)``
            (classification) or ``lambda mean: Normal(mean, 1.0)`` (squared error); one label is drawn per
            output and ``-log_prob(label).sum()`` is back-propagated into the factors only.
        sharing: weight-sharing approximation, ``"expand"`` (default) or ``"reduce"``.
        loss_reduction: ``"mean"`` (default: the loss is averaged over the batch, so per-example gradients
            are ``N`` times the output gradients) or ``"sum"``.
        solver: ``"eigh"`` (default), ``"cholesky"``, ``"inverse"``, ``"thermodynamic"`` or a
            :class:`~thermoai.optim.solvers.Solver` instance (e.g. ``Thermodynamic(method=2)``).
        skip: modules to leave alone (instances, names / fnmatch patterns, or classes).
        seed: seeds the generator of the sampled Fisher's labels.
    """

    def __init__(self, model: nn.Module, *, damping: Schedule = 1e-3, factor_decay: Schedule = 0.95,
                 factor_update_interval: Schedule = 1, inverse_update_interval: Schedule = 10,
                 kl_clip: Schedule | None = 1e-3, lr: Schedule | torch.optim.Optimizer | None = None,
                 optimizer: torch.optim.Optimizer | None = None, damping_form: str = "factored",
                 damping_split: str = "pi", fisher: str = "empirical",
                 predictive: Callable[[Tensor], torch.distributions.Distribution] | None = None,
                 sharing: str = "expand", loss_reduction: str = "mean", solver: str | Solver = "eigh",
                 skip: Iterable[Any] = (), seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        check_non_negative(damping, "damping")
        check_non_negative(factor_decay, "factor_decay")
        if not callable(factor_decay) and float(factor_decay) >= 1:
            raise ValueError(f"factor_decay must be in [0, 1); got {float(factor_decay)}")
        for name, v in (("factor_update_interval", factor_update_interval),
                        ("inverse_update_interval", inverse_update_interval)):
            if not callable(v):
                _check_interval(v, name)
        if kl_clip is not None:
            check_non_negative(kl_clip, "kl_clip", strictly=True)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None; got {type(optimizer).__name__}")
        if lr is None:
            lr = optimizer if optimizer is not None else 1.0
        if not isinstance(lr, torch.optim.Optimizer):
            check_non_negative(lr, "lr")
        for name, v, allowed in (("damping_form", damping_form, ("factored", "exact")),
                                 ("damping_split", damping_split, ("pi", "sqrt", "each")),
                                 ("fisher", fisher, ("empirical", "sampled")),
                                 ("sharing", sharing, SHARING_MODES),
                                 ("loss_reduction", loss_reduction, ("mean", "sum"))):
            if v not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}; got {v!r}")
        if fisher == "sampled" and not callable(predictive):
            raise ValueError("fisher='sampled' needs predictive=, a callable from the model's outputs to a "
                             "torch.distributions.Distribution (e.g. lambda logits: Categorical(logits=logits))")
        if fisher == "empirical" and predictive is not None:
            raise ValueError("predictive= is only used with fisher='sampled'")
        self.solver = make_solver(solver)
        if damping_form == "exact" and not self.solver.supports_exact:
            raise ValueError(f"damping_form='exact' needs the 'eigh' solver; got solver '{self.solver.name}'")

        self.model = model
        self.damping, self.factor_decay, self.kl_clip, self.lr = damping, factor_decay, kl_clip, lr
        self.factor_update_interval, self.inverse_update_interval = factor_update_interval, inverse_update_interval
        self.damping_form, self.damping_split, self.fisher, self.predictive = damping_form, damping_split, fisher, predictive
        self.sharing, self.loss_reduction = sharing, loss_reduction
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.device_time_s = 0.0
        self.device_energy_j = 0.0
        self.last_report: StepReport | None = None
        self._hook_time = 0.0
        self._sampling = False
        self._layers: dict[str, _Layer] = {}
        self._handles: list[Any] = []
        self.skipped: dict[str, str] = {}  # module name -> reason (opted out or unsupported)

        opted_out = self._opted_out_params(optimizer)
        skip = list(skip)
        unsupported: list[str] = []
        functional = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            label = name or "(root)"
            if self._matches(name, module, skip) or any(id(p) in opted_out for p in own):
                self.skipped[label] = "opted out"
                continue
            helper, reason = helper_for(module)
            if helper is not None and id(module) in functional:
                helper, reason = None, "Linear inside nn.MultiheadAttention (its weight is used functionally)"
            if helper is not None and not module.weight.requires_grad:
                self.skipped[label] = "frozen weight"
                continue
            if helper is None:
                self.skipped[label] = reason
                unsupported.append(f"'{label}' ({reason})")
                continue
            layer = _Layer(label, helper)
            self._layers[label] = layer
            self._handles.append(module.register_forward_hook(self._forward_hook(layer)))
        if unsupported:
            warnings.warn(f"KFAC cannot precondition {len(unsupported)} module(s); their gradients are left as "
                          f"they are: {', '.join(unsupported)}", UserWarning, stacklevel=2)
        self._collect = self._is_factor_step(0)

    # --- construction helpers --------------------------------------------------------------------------

    @staticmethod
    def _opted_out_params(optimizer: torch.optim.Optimizer | None) -> set[int]:
        if optimizer is None:
            return set()
        return {id(p) for g in optimizer.param_groups if g.get("kfac", True) is False for p in g["params"]}

    @staticmethod
    def _matches(name: str, module: nn.Module, skip: list[Any]) -> bool:
        for s in skip:
            if isinstance(s, nn.Module) and s is module:
                return True
            if isinstance(s, str) and (name == s or fnmatch.fnmatchcase(name, s)):
                return True
            if isinstance(s, type) and isinstance(module, s):
                return True
        return False

    @property
    def layers(self) -> list[str]:
        """Names of the preconditioned modules."""
        return list(self._layers)

    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The running-average factors ``{layer: (A, G)}`` (A (d_in, d_in), or (d_in,) for an embedding's
        diagonal; G (d_out, d_out)) of the layers updated at least once."""
        return {n: (l.A, l.G) for n, l in self._layers.items() if l.A is not None}

    def remove(self) -> None:
        """Remove the hooks (the model is left as if K-FAC had never been attached)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # --- hyper-parameters --------------------------------------------------------------------------------

    def _value(self, v: Schedule, name: str, step: int, strictly: bool = False) -> float:
        x = resolve_schedule(v, torch.tensor(step), name)
        x = float(x)
        check_scalar_value(x, name, strictly)
        return x

    def _interval(self, v: Schedule, name: str, step: int) -> int:
        return _check_interval(resolve_schedule(v, torch.tensor(step), name), name)

    def _is_factor_step(self, step: int) -> bool:
        return step % self._interval(self.factor_update_interval, "factor_update_interval", step) == 0

    def _lr_of(self, layer: _Layer, step: int) -> float:
        if isinstance(self.lr, torch.optim.Optimizer):
            w = layer.helper.module.weight
            for g in self.lr.param_groups:
                if any(p is w for p in g["params"]):
                    return float(g["lr"])
            return 0.0
        return self._value(self.lr, "lr", step)

    # --- hooks -------------------------------------------------------------------------------------------

    def _forward_hook(self, layer: _Layer):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if not (self._collect and module.training and torch.is_grad_enabled()):
                return
            if not isinstance(output, Tensor) or not output.requires_grad or not inputs:
                return
            t0 = time.perf_counter()
            a, rows, n = layer.helper.a_sum(inputs[0], self.sharing)
            layer.a_sum = a if layer.a_sum is None else layer.a_sum + a
            layer.a_rows += rows
            layer.examples += n
            if self.fisher == "sampled":
                layer.outputs.append((output, n))
            else:
                scale = float(n) if self.loss_reduction == "mean" else 1.0
                output.register_hook(self._grad_hook(layer, scale))
            self._hook_time += time.perf_counter() - t0

        return hook

    def _grad_hook(self, layer: _Layer, scale: float):
        def hook(grad: Tensor) -> None:
            t0 = time.perf_counter()
            g = layer.helper.g_sum(grad, self.sharing, scale)
            layer.g_sum = g if layer.g_sum is None else layer.g_sum + g
            self._hook_time += time.perf_counter() - t0

        return hook

    def sample_fisher(self, outputs: Tensor) -> None:
        """For ``fisher="sampled"``: draw labels from ``predictive(outputs)`` and back-propagate
        ``-log p(labels | outputs).sum()`` into the factors ``G`` (not into any ``.grad``). Call it after the
        forward pass and before ``loss.backward()`` on every step (a no-op on steps that do not update the
        factors). The graph is kept for the loss's own backward pass."""
        if self.fisher != "sampled":
            raise ValueError("sample_fisher is only for fisher='sampled'")
        if not isinstance(outputs, Tensor) or not outputs.requires_grad:
            raise TypeError("outputs must be the model's output tensor (requiring grad), before loss.backward()")
        if not self._collect:
            return
        recorded = [(layer, out, n) for layer in self._layers.values() for out, n in layer.outputs]
        if not recorded:
            return
        t0 = time.perf_counter()
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            dist = self.predictive(outputs.detach())
            labels = dist.sample()
        dist = self.predictive(outputs)
        nll = -dist.log_prob(labels).sum()
        grads = torch.autograd.grad(nll, [out for _, out, _ in recorded], retain_graph=True, allow_unused=True)
        for (layer, _, _), g in zip(recorded, grads):
            if g is None:
                continue
            s = layer.helper.g_sum(g, self.sharing, 1.0)
            layer.g_sum = s if layer.g_sum is None else layer.g_sum + s
        for layer in self._layers.values():
            layer.outputs.clear()
        self._hook_time += time.perf_counter() - t0

    # --- the step ----------------------------------------------------------------------------------------

    def step(self) -> StepReport:
        """Replace each preconditioned parameter's ``.grad`` by its K-FAC preconditioned gradient.

        Call after ``loss.backward()`` and before ``optimizer.step()``. Returns the :class:`StepReport`
        (also kept as :attr:`last_report`)."""
        k = self.steps
        factor_step = self._collect
        inverse_step = k % self._interval(self.inverse_update_interval, "inverse_update_interval", k) == 0
        times = {"factors": self._hook_time, "inverse": 0.0, "precondition": 0.0}
        self._hook_time = 0.0
        try:
            grads = {name: layer.helper.grad_matrix() for name, layer in self._layers.items()}
            live = [layer for layer in self._layers.values() if grads[layer.name] is not None]
            t0 = time.perf_counter()
            if factor_step:
                self._check_statistics(live)
            self._check_finite(live, grads, factor_step)
            if factor_step:
                xi = self._value(self.factor_decay, "factor_decay", k)
                if xi >= 1:
                    raise ValueError(f"factor_decay must be in [0, 1); got {xi} at step {k}")
                for layer in live:
                    self._update_factors(layer, xi)
            times["factors"] += time.perf_counter() - t0

            usage: dict[str, DeviceUsage] = {}
            t0 = time.perf_counter()
            lam = self._value(self.damping, "damping", k)
            for layer in live:
                if layer.A is None:
                    continue
                if inverse_step or layer.solver_state is None:
                    layer.damping = self._damping(layer, lam)
                    state, u = self.solver.prepare(layer.name, layer.A, layer.G, layer.damping)
                    layer.solver_state = state
                    if u is not None:
                        usage[layer.name] = u
            times["inverse"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            updates: dict[str, Tensor] = {}
            for layer in live:
                if layer.solver_state is None:
                    continue
                U, u = self.solver.apply(layer.name, layer.solver_state, grads[layer.name])
                updates[layer.name] = U
                if u is not None:
                    usage.setdefault(layer.name, DeviceUsage()).add(u.time_s, u.energy_j, u.estimated_error, u.runs)
            nu = self._kl_scale(updates, grads, k)
            if nu is not None:
                updates = {n: U * nu for n, U in updates.items()}
            self._check_updates(updates)
            for name, U in updates.items():
                self._layers[name].helper.set_grad(U)
            times["precondition"] = time.perf_counter() - t0
        finally:
            for layer in self._layers.values():
                layer.clear()
        self.steps = k + 1
        self._collect = self._is_factor_step(self.steps)
        dev_t = sum(u.time_s for u in usage.values())
        dev_e = sum(u.energy_j for u in usage.values())
        self.device_time_s += dev_t
        self.device_energy_j += dev_e
        self.last_report = StepReport(
            step=k, factor_update=factor_step, inverse_update=inverse_step, digital_time_s=times,
            device_time_s=dev_t, device_time_parallel_s=max((u.time_s for u in usage.values()), default=0.0),
            device_energy_j=dev_e, device_runs=sum(u.runs for u in usage.values()),
            kl_scale=nu if nu is not None else None)
        return self.last_report

    def _check_statistics(self, live: list[_Layer]) -> None:
        """On a factor step every layer with a gradient must have statistics from the hooks."""
        missing = [layer for layer in live if layer.a_sum is None]
        if missing and len(missing) == len(live):
            raise ValueError("KFAC: no layer statistics were recorded on this factor-update step: run the forward "
                             "pass (in training mode, with gradients enabled) after creating the KFAC and before "
                             "loss.backward(); step() must follow each backward pass")
        if missing:
            names = ", ".join(f"'{layer.name}'" for layer in missing)
            warnings.warn(f"KFAC: {len(missing)} module(s) got gradients but their forward hooks never ran "
                          f"(the weight is used outside the module's forward); they are no longer "
                          f"preconditioned: {names}", UserWarning, stacklevel=3)
            for layer in missing:
                self._drop(layer, "forward hook never ran (weight used functionally)")
                live.remove(layer)
        no_g = [layer for layer in live if layer.g_sum is None]
        if no_g and self.fisher == "sampled":
            raise ValueError("fisher='sampled': no output-gradient statistics were recorded; call "
                             "kfac.sample_fisher(outputs) after the forward pass and before loss.backward() "
                             f"(layers without statistics: {', '.join(layer.name for layer in no_g)})")
        if no_g:
            names = ", ".join(layer.name for layer in no_g)
            raise ValueError(f"KFAC: no output gradients were recorded for {names}: was loss.backward() called "
                             "after the forward pass of this step?")

    def _drop(self, layer: _Layer, reason: str) -> None:
        del self._layers[layer.name]
        self.skipped[layer.name] = reason

    def _check_finite(self, live: list[_Layer], grads: dict[str, Tensor | None], factor_step: bool) -> None:
        """One host sync: every gradient (and, on factor steps, every batch statistic) must be finite."""
        items: list[tuple[str, str, Tensor]] = []
        for layer in live:
            items.append((layer.name, "gradient", grads[layer.name]))
            if factor_step:
                items.append((layer.name, "input factor A", layer.a_sum))
                items.append((layer.name, "output-gradient factor G", layer.g_sum))
        if not items or _all_finite([t for _, _, t in items]):
            return
        bad = [(n, what, t) for n, what, t in items if not bool(torch.isfinite(t).all())]
        n, what, t = bad[0]
        kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise FloatingPointError(f"KFAC: non-finite {what} ({kind}) in layer '{n}'{more} at step {self.steps}; "
                                 "no gradient or factor was changed. Check the loss and the learning rate.")

    def _update_factors(self, layer: _Layer, xi: float) -> None:
        if layer.A is None:
            layer.A, layer.G = layer.a_sum / layer.a_rows, layer.g_sum / layer.examples
        else:
            # A <- xi A + (1 - xi) a_sum / rows, in place (no temporary for the batch factor)
            layer.A.mul_(xi).add_(layer.a_sum, alpha=(1 - xi) / layer.a_rows)
            layer.G.mul_(xi).add_(layer.g_sum, alpha=(1 - xi) / layer.examples)

    def _damping(self, layer: _Layer, lam: float) -> Damping:
        A, G = layer.A, layer.G
        if self.damping_form == "exact":
            d = Damping(0.0, 0.0, lam)
        elif self.damping_split == "each":
            d = Damping(lam, lam)
        else:
            pi = 1.0
            if self.damping_split == "pi":
                ta = float(A.sum() if A.dim() == 1 else torch.diagonal(A).sum()) / A.shape[0]
                tg = float(torch.diagonal(G).sum()) / G.shape[0]
                pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
            d = Damping(pi * math.sqrt(lam), math.sqrt(lam) / pi)
        if lam == 0:
            for which, M in (("A", A), ("G", G)):
                e = M if M.dim() == 1 else torch.linalg.eigvalsh(M.double())
                top = float(e.abs().max()) if e.numel() else 0.0
                if not float(e.min()) > M.shape[0] * torch.finfo(M.dtype).eps * top:
                    raise ValueError(f"KFAC: damping is 0 and the factor {which} of layer '{layer.name}' is singular "
                                     f"(smallest eigenvalue {float(e.min()):.3g}, largest {top:.3g}); use damping > 0")
        return d

    def _kl_scale(self, updates: dict[str, Tensor], grads: dict[str, Tensor | None], k: int) -> Tensor | None:
        if self.kl_clip is None or not updates:
            return None
        c = self._value(self.kl_clip, "kl_clip", k, strictly=True)
        vg = sum(torch.vdot(U.reshape(-1), grads[n].reshape(-1).to(U.dtype)) * self._lr_of(self._layers[n], k) ** 2
                 for n, U in updates.items())
        # |.|: a preconditioner made indefinite (by a device's errors) must not escape the bound
        vg = torch.as_tensor(vg).abs()
        return torch.clamp(torch.sqrt(c / vg.clamp_min(1e-300)), max=1.0)

    def _check_updates(self, updates: dict[str, Tensor]) -> None:
        if not updates or _all_finite(list(updates.values())):
            return
        bad = [n for n, U in updates.items() if not bool(torch.isfinite(U).all())]
        raise FloatingPointError(f"KFAC: the preconditioned gradient of layer '{bad[0]}' is not finite at step "
                                 f"{self.steps} (solver '{self.solver.name}'); no gradient was changed. Raise the "
                                 "damping.")

    # --- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """Everything needed to resume: step, factors, solver states and damping, generators, device totals.
        A flat ``{name: tensor}`` dict (safetensors-compatible); settings are not saved (construct the
        ``KFAC`` with the same arguments)."""
        meta = {"format": _FORMAT, "layers": list(self._layers), "solver": self.solver.name}
        sd: dict[str, Tensor] = {
            "meta": torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8),
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "generator": self.generator.get_state(),
            "device_totals": torch.tensor([self.device_time_s, self.device_energy_j], dtype=torch.float64),
        }
        for name, layer in self._layers.items():
            if layer.A is not None:
                sd[f"layer.{name}.A"] = layer.A.clone()
                sd[f"layer.{name}.G"] = layer.G.clone()
            if layer.solver_state is not None:
                sd[f"layer.{name}.damping"] = layer.damping.as_tensor()
                for key, t in layer.solver_state.items():
                    sd[f"layer.{name}.solver.{key}"] = t.clone()
        for key, t in self.solver.state_dict().items():
            sd[f"solver.{key}"] = t.clone()
        return sd

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s output. Raises ``ValueError`` if it was saved for other layers or by
        another solver, ``TypeError`` if it is not a dict of tensors."""
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise TypeError("state must be the dict of tensors returned by KFAC.state_dict()")
        if "meta" not in state:
            raise ValueError("state has no 'meta' entry: not a KFAC.state_dict()")
        meta = json.loads(bytes(state["meta"].tolist()).decode())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"state has format {meta.get('format')}; this KFAC reads format {_FORMAT}")
        saved = set(meta["layers"])
        ours = set(self._layers)
        if saved != ours:
            raise ValueError(f"state was saved for other layers: missing here {sorted(saved - ours)}, not in the "
                             f"state {sorted(ours - saved)}")
        if meta["solver"] != self.solver.name:
            raise ValueError(f"state was saved with solver '{meta['solver']}'; this KFAC uses '{self.solver.name}'")
        for name, layer in self._layers.items():
            ref = layer.helper.module.weight
            pre = f"layer.{name}."
            layer.A = state[pre + "A"].to(ref.device).clone() if pre + "A" in state else None
            layer.G = state[pre + "G"].to(ref.device).clone() if pre + "G" in state else None
            keys = [k for k in state if k.startswith(pre + "solver.")]
            if keys:
                layer.solver_state = {k[len(pre + "solver."):]: state[k].to(ref.device).clone() for k in keys}
                layer.damping = Damping.from_tensor(state[pre + "damping"])
            else:
                layer.solver_state, layer.damping = None, None
            layer.clear()
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"].clone())
        self.device_time_s, self.device_energy_j = (float(x) for x in state["device_totals"])
        self.solver.load_state_dict({k[len("solver."):]: v for k, v in state.items() if k.startswith("solver.")})
        self._collect = self._is_factor_step(self.steps)
