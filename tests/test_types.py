"""thermoai.types: schedules and hyper-parameter checks."""

import math

import pytest
import torch

from thermoai.types import Transform, check_non_negative, check_scalar_value, resolve_schedule


def test_resolve_schedule():
    assert resolve_schedule(0.5, torch.tensor(3)) == 0.5
    assert resolve_schedule(lambda s: 1.0 / (1 + s), torch.tensor(3)) == pytest.approx(0.25)
    assert float(resolve_schedule(lambda s: s * 2, 4)) == 8  # int step is wrapped in a tensor
    with pytest.raises(TypeError, match="lr"):
        resolve_schedule("fast", 0, name="lr")


def test_check_non_negative():
    check_non_negative(0.0, "temperature")
    check_non_negative(lambda s: -1.0, "lr")  # callables are checked when evaluated
    check_non_negative(torch.tensor(0.1), "lr")
    with pytest.raises(ValueError, match="lr must be non-negative"):
        check_non_negative(-0.1, "lr")
    with pytest.raises(ValueError, match="lr must be positive"):
        check_non_negative(0.0, "lr", strictly=True)
    with pytest.raises(ValueError, match="finite"):
        check_non_negative(math.nan, "alpha")
    with pytest.raises(ValueError, match="scalar"):
        check_non_negative(torch.ones(2), "beta")
    with pytest.raises(TypeError, match="sigma"):
        check_non_negative("1", "sigma")


def test_check_scalar_value_skips_batched():
    with pytest.raises(ValueError, match="temperature"):
        check_scalar_value(torch.tensor(-1.0), "temperature")
    # inside vmap a per-member value cannot be inspected without a sync: it is let through
    torch.func.vmap(lambda t: check_scalar_value(t, "temperature") or t)(torch.tensor([-1.0, 1.0]))


def test_transform_is_a_named_pair():
    t = Transform(init=lambda p: p, update=lambda s, b, inplace=False: (s, None))
    init, update = t
    assert init(3) == 3 and t.update(1, None) == (1, None)
