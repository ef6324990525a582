"""state_dict / load_state_dict resume bit for bit, also through safetensors and with a device solver."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from thermoai.optim import KFAC, Thermodynamic
from thermoai.thermo.device import Device


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 8), nn.Tanh(),
                         nn.Linear(8, 3))


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(10, 1, 4, 4, generator=g), torch.randint(0, 3, (10,), generator=g)) for _ in range(n)]


def _make(solver_factory, **kw):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    kfac = KFAC(net, solver=solver_factory(), factor_update_interval=2, inverse_update_interval=3,
                kl_clip=1e-2, optimizer=opt, **kw)
    return net, opt, kfac


def _train(net, opt, kfac, batches, sampled=False):
    for x, y in batches:
        opt.zero_grad()
        out = net(x)
        if sampled:
            kfac.sample_fisher(out)
        F.cross_entropy(out, y).backward()
        kfac.step()
        opt.step()


SOLVERS = {
    "eigh": lambda: "eigh",
    "thermo-error-model": lambda: Thermodynamic(1, mode="error_model", averaging_s=2e-3, seed=5,
                                                device=Device(dac_bits=10, mismatch=0.0)),
}


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("sampled", [False, True])
def test_resume_is_bit_identical(tmp_path, solver, sampled):
    kw = {"fisher": "sampled", "predictive": lambda o: torch.distributions.Categorical(logits=o)} if sampled else {}
    batches = _batches(9)
    net, opt, kfac = _make(SOLVERS[solver], **kw)
    _train(net, opt, kfac, batches, sampled)
    reference = [p.detach().clone() for p in net.parameters()]
    device_time = kfac.device_time_s

    net, opt, kfac = _make(SOLVERS[solver], **kw)
    _train(net, opt, kfac, batches[:5], sampled)  # stop between inverse updates (5 % 3 != 0)
    save_file(kfac.state_dict(), tmp_path / "kfac.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "net.safetensors")

    net2, opt2, kfac2 = _make(SOLVERS[solver], **kw)
    net2.load_state_dict(load_file(tmp_path / "net.safetensors"))
    opt2.load_state_dict(opt.state_dict())
    kfac2.load_state_dict(load_file(tmp_path / "kfac.safetensors"))
    assert kfac2.steps == 5
    _train(net2, opt2, kfac2, batches[5:], sampled)
    for p, r in zip(net2.parameters(), reference):
        assert torch.equal(p.detach(), r)
    assert kfac2.device_time_s == device_time and (device_time > 0) == (solver != "eigh")


def test_load_refuses_a_state_of_other_layers_or_solver():
    net, opt, kfac = _make(lambda: "eigh")
    _train(net, opt, kfac, _batches(1))
    sd = kfac.state_dict()
    other = KFAC(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="other layers"):
        other.load_state_dict(sd)
    _, _, kfac_c = _make(lambda: "cholesky")
    with pytest.raises(ValueError, match="solver 'eigh'"):
        kfac_c.load_state_dict(sd)
    with pytest.raises(TypeError, match="dict of tensors"):
        kfac.load_state_dict({"steps": 3})
