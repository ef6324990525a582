"""save_state / load_state: an interrupted run of every method resumes bit for bit (state and generator);
the file is safetensors + JSON (no pickle) and refuses corruption and foreign classes with clear errors."""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

import optree
import pytest
import torch

from thermoai.bayes import ekf, ensemble, laplace, sgmcmc, vi
from thermoai.bayes.state_io import load_generator, load_state, save_state

F64 = torch.float64
N = 40


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, generator=g, dtype=F64)
    y = x @ torch.randn(3, 2, generator=g, dtype=F64) + 0.3 * torch.randn(N, 2, generator=g, dtype=F64)
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, N, 8)]


def params():
    return {"w": torch.zeros(3, 2, dtype=F64), "b": torch.zeros(2, dtype=F64)}


def forward(p, batch):
    return batch[0] @ p["w"] + p["b"], torch.tensor([])


def outer(z, batch):
    return -0.5 * ((batch[1] - z) ** 2).sum()


def log_posterior(p, batch):
    """Batch-mean Gaussian log likelihood plus a N(0, 1) prior over N (temperature 1/N is Bayes)."""
    z, _ = forward(p, batch)
    prior = -0.5 * sum((v * v).sum() for v in p.values())
    return -0.5 * ((batch[1] - z) ** 2).sum(-1).mean() + prior / N, z.detach()


RANDOM = {
    "sgmcmc.sgld": lambda: sgmcmc.sgld.build(log_posterior, lr=1e-2, temperature=1 / N),
    "sgmcmc.sghmc": lambda: sgmcmc.sghmc.build(log_posterior, lr=1e-1, temperature=1 / N),
    "sgmcmc.sgnht": lambda: sgmcmc.sgnht.build(log_posterior, lr=1e-1, temperature=1 / N),
    "sgmcmc.baoa": lambda: sgmcmc.baoa.build(log_posterior, lr=1e-1, temperature=1 / N),
    "sgmcmc.psgld": lambda: sgmcmc.psgld.build(log_posterior, lr=1e-2, temperature=1 / N),
    "vi.diag": lambda: vi.diag.build(log_posterior, lr=1e-2, temperature=1 / N, n_samples=2),
    "vi.dense": lambda: vi.dense.build(log_posterior, lr=1e-2, temperature=1 / N),
}
DETERMINISTIC = {
    "laplace.diag_fisher": lambda: laplace.diag_fisher.build(log_posterior, prior_precision=1.0),
    "laplace.dense_fisher": lambda: laplace.dense_fisher.build(log_posterior, prior_precision=1.0),
    "laplace.dense_hessian": lambda: laplace.dense_hessian.build(log_posterior, rescale=8.0),
    "laplace.diag_ggn": lambda: laplace.diag_ggn.build(forward, outer, prior_precision=1.0),
    "laplace.dense_ggn": lambda: laplace.dense_ggn.build(forward, outer, prior_precision=1.0),
    "ekf.diag_fisher": lambda: ekf.diag_fisher.build(log_posterior, lr=8.0, transition_sd=1e-3),
    "ekf.dense_fisher": lambda: ekf.dense_fisher.build(log_posterior, lr=8.0, transition_cov=1e-4),
    "ekf.diag_ggn": lambda: ekf.diag_ggn.build(forward, outer),
    "ekf.dense_ggn": lambda: ekf.dense_ggn.build(forward, outer, transition_cov=1e-4),
}
ENSEMBLES = {  # vmapped members draw from the global RNG: torch.default_generator is what is saved
    "ensemble.unbiased": lambda: ensemble.unbiased_ensemble(log_posterior, lr=1e-1, num_data=N, n_members=3, alpha=1.0),
    "ensemble.deep": lambda: ensemble.deep_ensemble(log_posterior, lr=1e-1, n_members=3, alpha=1.0),
}


def _bytes(x):
    return x.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_bit_identical(a, b):
    la, sa = optree.tree_flatten(a)
    lb, sb = optree.tree_flatten(b)
    assert sa == sb, f"structures differ:\n{sa}\n{sb}"
    for x, y in zip(la, lb):
        assert type(x) is type(y)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device
            # bytes compared, so that NaN entries (a fresh log posterior) and signed zeros count too
            assert torch.equal(_bytes(x), _bytes(y))
        else:
            assert x == y


@pytest.mark.parametrize("name", sorted(RANDOM) + sorted(DETERMINISTIC))
def test_interrupted_run_resumes_bit_for_bit(name, tmp_path):
    make = {**RANDOM, **DETERMINISTIC}[name]
    random = name in RANDOM
    batches = data()
    transform = make()
    kw = lambda g: {"generator": g} if random else {}  # noqa: E731
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(3)  # SGHMC-family init draws momenta from the global RNG
    state = transform.init(params())
    for batch in batches[:3]:
        state, _ = transform.update(state, batch, **kw(gen))
    path = save_state(tmp_path / "run.safetensors", state, generator=gen if random else None, metadata={"step": "3"})

    straight = state
    for batch in batches[3:] * 2:
        straight, _ = transform.update(straight, batch, **kw(gen))

    resumed_gen = torch.Generator()
    resumed = load_state(path, generator=resumed_gen if random else None)
    assert type(resumed) is type(state)
    assert_bit_identical(resumed, state)
    for batch in batches[3:] * 2:  # in place: the loaded tensors are fresh, writable storage
        resumed, _ = transform.update(resumed, batch, inplace=True, **kw(resumed_gen))
    assert_bit_identical(resumed, straight)
    assert int(resumed.step) == 7


@pytest.mark.parametrize("name", sorted(ENSEMBLES))
def test_ensemble_resumes_with_the_global_generator(name, tmp_path):
    batches = data(1)
    members = ENSEMBLES[name]()
    torch.manual_seed(5)
    state = members.init([params() for _ in range(3)])
    for batch in batches[:2]:
        state, _ = members.update(state, batch, inplace=True)
    save_state(tmp_path / "ens.safetensors", state, generator=torch.default_generator)
    straight = state
    for batch in batches[2:]:
        straight, _ = members.update(straight, batch)
    torch.manual_seed(12345)  # the global RNG moves on elsewhere; loading puts it back
    resumed = load_state(tmp_path / "ens.safetensors", generator=torch.default_generator)
    for batch in batches[2:]:
        resumed, _ = members.update(resumed, batch, inplace=True)
    assert_bit_identical(resumed, straight)
    assert resumed.params["w"].shape == (3, 3, 2)
    if name == "ensemble.unbiased":  # the members did draw noise: a different RNG would give other values
        torch.manual_seed(0)
        other = load_state(tmp_path / "ens.safetensors")
        for batch in batches[2:]:
            other, _ = members.update(other, batch)
        assert not torch.equal(other.params["w"], straight.params["w"])


class Custom(NamedTuple):
    a: torch.Tensor
    extra: object


def test_file_is_safetensors_with_json_and_keeps_dtypes_and_python_values(tmp_path):
    shared = torch.arange(6, dtype=torch.int64).reshape(2, 3)
    state = {
        "f32": torch.randn(4), "f64": torch.randn(2, 2, dtype=F64).T,  # non-contiguous
        "int": shared, "again": shared, "view": shared[1], "bool": torch.tensor([True, False]),
        "empty": torch.tensor([]), "scalar": torch.tensor(3.5, dtype=F64),
        "py": [1, 2.5, float("nan"), None, "text", True, (float("inf"), -0.0)], 7: "int key",
    }
    path = save_state(tmp_path / "s.safetensors", state, generator=torch.Generator().manual_seed(4))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])  # a safetensors header: JSON, no pickle opcode anywhere
    assert header["__metadata__"]["format"] == "thermoai.bayes.state"
    loaded = load_state(path)
    assert set(loaded) == set(state)
    for key in ("f32", "f64", "int", "again", "view", "bool", "empty", "scalar"):
        assert loaded[key].dtype == state[key].dtype and torch.equal(loaded[key], state[key])
    py = loaded["py"]
    assert py[:2] == [1, 2.5] and py[2] != py[2] and py[3:6] == [None, "text", True]
    assert py[6] == (float("inf"), -0.0) and str(py[6][1]) == "-0.0" and loaded[7] == "int key"
    assert torch.equal(load_generator(path).get_state(), torch.Generator().manual_seed(4).get_state())


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        load_state(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="directory"):
        save_state(tmp_path / "no" / "such" / "dir.safetensors", {"a": torch.ones(1)})
    with pytest.raises(TypeError, match=r"state\['f'\]"):
        save_state(tmp_path / "bad.safetensors", {"f": lambda: 0})
    with pytest.raises(TypeError, match="generator"):
        save_state(tmp_path / "bad.safetensors", {"a": torch.ones(1)}, generator=3)

    path = save_state(tmp_path / "custom.safetensors", Custom(torch.ones(2), 1.0))
    with pytest.raises(ValueError, match="outside thermoai; pass like="):
        load_state(path)
    assert isinstance(load_state(path, like=Custom(torch.zeros(2), 0.0)), Custom)
    with pytest.raises(ValueError, match="no generator state"):
        load_state(path, like=Custom(torch.zeros(2), 0.0), generator=torch.Generator())

    good = save_state(tmp_path / "good.safetensors", sgmcmc.sgld.init(torch.arange(64, dtype=F64)))
    raw = bytearray(good.read_bytes())
    raw[-5] ^= 0xFF  # flip bits in the tensor data
    (tmp_path / "corrupt.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_state(tmp_path / "corrupt.safetensors")
    (tmp_path / "short.safetensors").write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_state(tmp_path / "short.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a thermoai.bayes state"):
        load_state(tmp_path / "other.safetensors")
