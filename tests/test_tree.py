"""thermoai.tree: structure checks, ravel, extraction, fused arithmetic (also under vmap callers)."""

import pytest
import torch

from thermoai import tree as T


def params(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 2, generator=gen).to(dtype), "b": [torch.randn(2, generator=gen).to(dtype)]}


def test_leaves_structure_size():
    p = params()
    assert len(T.leaves(p)) == 2 and T.tree_size(p) == 8
    spec = T.structure(p)
    rebuilt = T.unflatten(spec, T.leaves(p))
    assert rebuilt["w"] is p["w"] and rebuilt["b"][0] is p["b"][0]


def test_check_same_structure():
    T.check_same_structure(params(), params())
    with pytest.raises(ValueError, match="different tree structures"):
        T.check_same_structure(params(), {"w": torch.zeros(3, 2)}, "params", "momenta")
    other = params()
    other["w"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        T.check_same_structure(params(), other)


def test_tree_map_inplace_writes_into_leaves():
    p = params()
    w = p["w"]
    out = T.tree_map(lambda x, y: x + 2 * y, p, params(), inplace=True)
    assert out is p and p["w"] is w
    torch.testing.assert_close(w, 3 * params()["w"])


def test_ravel_roundtrip_dtypes_and_batched_unravel():
    p = {"a": torch.arange(3.0, dtype=torch.float64), "b": torch.ones(2, 2, dtype=torch.float32)}
    flat, unravel = T.ravel(p)
    assert flat.shape == (7,) and flat.dtype == torch.float64
    back = unravel(flat)
    assert back["b"].dtype == torch.float32 and torch.equal(back["a"], p["a"])
    batched = unravel(torch.zeros(5, 7, dtype=torch.float64))
    assert batched["b"].shape == (5, 2, 2)
    with pytest.raises(ValueError, match="7 elements"):
        unravel(torch.zeros(6))
    assert torch.equal(T.tree_ravel(p), flat)


def test_ravel_roundtrip_with_a_scalar_leaf():
    p = {"bias": torch.tensor(1.5), "w": torch.arange(2.0)}  # a 0-d leaf, unbatched and batched
    flat, unravel = T.ravel(p)
    back = unravel(flat)
    assert back["bias"].shape == () and float(back["bias"]) == 1.5 and torch.equal(back["w"], p["w"])
    assert unravel(torch.zeros(4, 3))["bias"].shape == (4,)


def test_extract_and_insert():
    p = {"a": torch.ones(2, requires_grad=True), "b": torch.zeros(3)}
    sub = T.extract_requires_grad(p)
    assert sub["b"] is None and not sub["a"].requires_grad
    full = T.tree_insert(p, {"a": torch.full((2,), 5.0)}, lambda x: x.requires_grad)
    assert torch.equal(full["a"], torch.full((2,), 5.0)) and full["b"] is p["b"]
    with pytest.raises(ValueError, match="more leaves"):
        T.tree_insert(p, [torch.ones(2), torch.ones(3)], lambda x: x.requires_grad)


def test_tree_extract_keeps_structure_and_roundtrips_through_insert():
    p = {"w": torch.ones(2, 3), "b": torch.zeros(3), "rest": [torch.ones(4, 5)]}
    matrices = lambda x: x.ndim == 2  # noqa: E731
    sub = T.tree_extract(p, matrices)
    assert sub["b"] is None and sub["w"] is p["w"] and sub["rest"][0] is p["rest"][0]
    assert T.tree_size(sub) == 6 + 20
    doubled = T.tree_map(lambda x: 2 * x, sub)
    full = T.tree_insert(p, doubled, matrices)
    assert torch.equal(full["w"], 2 * p["w"]) and torch.equal(full["rest"][0], 2 * p["rest"][0])
    assert full["b"] is p["b"]


def test_extract_requires_grad_and_func():
    p = {"a": torch.ones(2, requires_grad=True), "b": torch.full((2,), 3.0)}
    sub, f = T.extract_requires_grad_and_func(p, lambda q, k: (q["a"] * q["b"]).sum() * k)
    assert f({"a": torch.full((2,), 2.0), "b": None}, 10.0) == 120.0
    with pytest.raises(ValueError, match="requires grad"):
        T.extract_requires_grad_and_func({"b": torch.ones(2)}, lambda q: q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_arithmetic_matches_leafwise(dtype):
    a, b = params(dtype), T.tree_map(lambda x: x * 0.5 + 1, params(dtype))
    expect = T.tree_map(lambda x, y: x + 0.3 * y, a, b)
    for got in (T.tree_add(a, b, alpha=0.3), T.tree_add(a, b, alpha=torch.tensor(0.3, dtype=dtype))):
        for x, y in zip(T.leaves(got), T.leaves(expect)):
            torch.testing.assert_close(x, y)
            assert x.dtype == dtype
    c = T.tree_map(torch.clone, a)
    w = c["w"]
    T.tree_add(c, b, alpha=0.3, inplace=True)
    assert c["w"] is w
    torch.testing.assert_close(c["w"], expect["w"])
    torch.testing.assert_close(T.tree_scale(a, 2.0)["w"], 2 * a["w"])
    lin = T.tree_lincomb([(2.0, a), (-1.0, b)])
    torch.testing.assert_close(lin["b"][0], 2 * a["b"][0] - b["b"][0])
    vdot = T.tree_vdot(a, b)
    torch.testing.assert_close(vdot, (a["w"] * b["w"]).sum() + (a["b"][0] * b["b"][0]).sum())


def test_tree_add_under_vmap_with_batched_alpha():
    def f(x, alpha):
        return T.tree_add({"x": x}, {"x": torch.ones_like(x)}, alpha=alpha)["x"]

    out = torch.func.vmap(f)(torch.zeros(3, 2), torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))


def test_randn_like_generator_and_finite():
    p = params(torch.float64)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    n1, n2 = T.tree_randn_like(p, g1), T.tree_randn_like(p, g2)
    assert torch.equal(n1["w"], n2["w"]) and n1["w"].dtype == torch.float64
    assert T.tree_all_finite(p)
    p["w"][0, 0] = float("inf")
    assert not T.tree_all_finite(p)
    assert T.tree_all_finite({})


def test_tree_insert_():
    target = params()
    w = target["w"]
    T.tree_insert_(target, T.tree_zeros_like(target))
    assert target["w"] is w and torch.equal(w, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="leaves"):
        T.tree_insert_(target, [torch.zeros(1)])
