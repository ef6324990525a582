"""thermoai.philox: the compiled Philox4x32-10 + Box-Muller normals against Random123's known answers, a
NumPy float32 transcription (bit for bit), the normal law (moments, tails, KS) and independence; the
fallback when no kernel can be built."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch

from thermoai import philox

pytestmark = pytest.mark.skipif(not philox.available(), reason=f"no compiled kernel: {philox.status()}")

M32 = 0xFFFFFFFF


def philox_block(counter: tuple[int, int, int, int], key: tuple[int, int]) -> list[int]:
    """Philox4x32-10 of one 128-bit counter (four 32-bit words) and 64-bit key, in Python integers."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return [c0, c1, c2, c3]


def reference_words(blocks: int, key: int, offset: int) -> np.ndarray:
    """(blocks, 4) uint32: block b has counter (b_lo, b_hi, offset_lo, offset_hi)."""
    k = (key & M32, key >> 32)
    rows = [philox_block((b & M32, b >> 32, offset & M32, offset >> 32), k) for b in range(blocks)]
    return np.array(rows, dtype=np.uint32).reshape(blocks, 4)


def f32(x) -> np.float32:
    return np.float32(x)


def reference_log(x: np.ndarray) -> np.ndarray:
    """Cephes logf as the kernel computes it, every operation in float32."""
    bits = x.view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.int32) - 126
    m = ((bits & 0x007FFFFF) | 0x3F000000).view(np.float32)
    small = (m < f32(0.707106781186547524)).astype(np.float32)
    fe = e.astype(np.float32) - small
    t = m * (f32(1.0) + small) - f32(1.0)
    z = t * t
    p = np.full_like(t, f32(7.0376836292e-2))
    for c in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
              2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        p = p * t + f32(c)
    y = t * z * p
    y = y + f32(-2.12194440e-4) * fe
    y = y + f32(-0.5) * z
    return t + y + f32(0.693359375) * fe


def reference_sincos(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = f32(4.0) * v
    q = (x + f32(0.5)).astype(np.int32)
    phi = (x - q.astype(np.float32)) * f32(1.57079632679489662)
    z = phi * phi
    sp = ((f32(-1.9515295891e-4) * z + f32(8.3321608736e-3)) * z - f32(1.6666654611e-1)) * z * phi + phi
    cp = ((f32(2.443315711809948e-5) * z - f32(1.388731625493765e-3)) * z + f32(4.166664568298827e-2)) * z * z \
        - f32(0.5) * z + f32(1.0)
    k = q & 3
    odd = (k & 1).astype(bool)
    sa, ca = np.where(odd, cp, sp), np.where(odd, sp, cp)
    return np.where(k & 2, -sa, sa), np.where((k + 1) & 2, -ca, ca)


def reference_normals(n: int, key: int, offset: int, scale: float) -> np.ndarray:
    w = reference_words((n + 3) // 4, key, offset)
    out = np.empty(w.shape, dtype=np.float32)
    for pair in (0, 1):
        u = ((w[:, 2 * pair] >> 9).astype(np.float32) + f32(0.5)) * f32(1.1920928955078125e-7)
        v = (w[:, 2 * pair + 1] >> 8).astype(np.float32) * f32(5.9604644775390625e-8)
        r = f32(scale) * np.sqrt(f32(-2.0) * reference_log(u))
        s, c = reference_sincos(v)
        out[:, 2 * pair], out[:, 2 * pair + 1] = r * c, r * s
    return out.reshape(-1)[:n]


def test_reference_philox_matches_random123_known_answers():
    assert philox_block((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox_block((M32,) * 4, (M32, M32)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox_block((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("key, offset", [(0, 0), (2**63 + 12345, 7), (0xA4093822299F31D0, 2**64 - 1)])
def test_kernel_words_equal_the_reference(key, offset):
    blocks = 300  # several of the kernel's 64-block batches and a partial one
    assert np.array_equal(philox.words(blocks, key, offset).numpy().astype(np.uint32),
                          reference_words(blocks, key, offset))


@pytest.mark.parametrize("n", [1, 3, 4, 255, 256, 257, 1027])
def test_normals_equal_the_float32_transcription_bit_for_bit(n):
    for key, offset, scale in ((1, 0, 1.0), (2**62 + 99, 3, 0.37)):
        got = philox.normal_(torch.empty(n), scale, key, offset).numpy()
        assert np.array_equal(got.view(np.uint32), reference_normals(n, key, offset, scale).view(np.uint32))


def test_transcendental_kernels_are_accurate():
    u = ((np.arange(0, 2**23, 61, dtype=np.uint32)).astype(np.float32) + f32(0.5)) * f32(2.0**-23)
    rel = np.abs(reference_log(u).astype(np.float64) - np.log(u.astype(np.float64))) / np.abs(np.log(u.astype(np.float64)))
    assert rel.max() < 3e-7
    v = np.arange(0, 2**24, 97, dtype=np.uint32).astype(np.float32) * f32(2.0**-24)
    s, c = reference_sincos(v)
    angle = 2 * np.pi * v.astype(np.float64)
    assert np.abs(s - np.sin(angle)).max() < 3e-7 and np.abs(c - np.cos(angle)).max() < 3e-7


def test_draws_follow_the_standard_normal_law():
    n = 2_000_000
    z = philox.normal_(torch.empty(n), 1.0, key=20261202).double()
    se = 1 / math.sqrt(n)
    assert abs(float(z.mean())) < 5 * se
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2) * se
    assert abs(float((z**3).mean())) < 5 * math.sqrt(15) * se
    assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96) * se
    for t in (1.0, 2.0, 3.0, 4.0):  # two-sided tail frequencies, binomial standard error
        p = 2 * scipy.stats.norm.sf(t)
        assert abs(float((z.abs() > t).double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n), t
    assert scipy.stats.kstest(z[:200_000].numpy(), "norm").pvalue > 1e-3
    assert float(z.abs().max()) <= math.sqrt(48 * math.log(2)) + 1e-5


def test_elements_keys_and_offsets_are_independent():
    n = 400_000
    bound = 5 / math.sqrt(n)  # sd of a sample correlation of independent draws
    a = philox.normal_(torch.empty(n), 1.0, key=5)
    for other in (philox.normal_(torch.empty(n), 1.0, key=6), philox.normal_(torch.empty(n), 1.0, key=5, offset=1)):
        assert abs(float(torch.corrcoef(torch.stack([a, other]))[0, 1])) < bound
    for lag in (1, 2, 3, 4):  # the pair partners (z0, z1) and neighbouring blocks: uncorrelated, and so are squares
        x, y = a[:-lag], a[lag:]
        assert abs(float(torch.corrcoef(torch.stack([x, y]))[0, 1])) < bound * math.sqrt(n / (n - lag))
        assert abs(float(torch.corrcoef(torch.stack([x * x, y * y]))[0, 1])) < bound * math.sqrt(n / (n - lag))
    again = philox.normal_(torch.empty(n), 1.0, key=5)
    assert torch.equal(a, again)


def test_draw_key_follows_the_torch_generator():
    g = torch.Generator().manual_seed(3)
    first = [philox.draw_key(g) for _ in range(3)]
    assert len(set(first)) == 3 and all(0 <= k < 2**63 for k in first)
    assert [philox.draw_key(torch.Generator().manual_seed(3)) for _ in range(1)] == first[:1]
    torch.manual_seed(11)
    k = philox.draw_key()
    torch.manual_seed(11)
    assert philox.draw_key() == k


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="float32"):
        philox.normal_(torch.empty(4, dtype=torch.float64), 1.0, 0)
    with pytest.raises(ValueError, match="not contiguous"):
        philox.normal_(torch.empty(4, 4).t(), 1.0, 0)
    with pytest.raises(ValueError, match="key"):
        philox.normal_(torch.empty(4), 1.0, -1)
    with pytest.raises(ValueError, match="offset"):
        philox.normal_(torch.empty(4), 1.0, 0, offset=2**64)


def test_without_the_kernel_callers_keep_torch_normals():
    code = ("import torch; from thermoai import philox; from thermoai.bayes.sgmcmc import _common as C;"
            "assert not philox.available() and 'THERMOAI_NATIVE=0' in philox.status();"
            "g = torch.Generator().manual_seed(1); z = C.scratch_normal([torch.zeros(1000)], 1.0, g)[0];"
            "assert torch.equal(z, torch.randn(1000, generator=torch.Generator().manual_seed(1))); print('ok')")
    env = dict(os.environ, THERMOAI_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_add_normal_adds_the_same_numbers_in_one_pass():
    x = torch.linspace(-1, 1, 1001)
    expected = x + philox.normal_(torch.empty(1001), 0.3, key=77, offset=2)
    assert torch.equal(philox.add_normal_(x.clone(), 0.3, key=77, offset=2), x + (expected - x))
    assert torch.allclose(philox.add_normal_(x.clone(), 0.3, key=77, offset=2), expected, atol=0, rtol=0)


@pytest.mark.parametrize("flags", [["-mno-avx512f"], ["-O0"]])
def test_every_compiled_variant_draws_the_same_numbers(tmp_path, flags):
    """The kernel has an AVX-512 path and a portable one; both (and unoptimised code) give identical
    numbers: the portable path is what a machine without AVX-512 compiles."""
    import ctypes
    import shutil

    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    lib_path = tmp_path / "variant.so"
    base = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno"]
    run = subprocess.run([cc, *base, *flags, "-fPIC", "-shared", "-o", str(lib_path), str(philox._SOURCE)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lib = ctypes.CDLL(str(lib_path))
    lib.thermoai_philox_normal_f32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64,
                                               ctypes.c_float]
    n, key, offset = 5003, 2**63 + 5, 9
    out = torch.empty(n)
    lib.thermoai_philox_normal_f32(out.data_ptr(), n, key, offset, 1.5)
    assert torch.equal(out, philox.normal_(torch.empty(n), 1.5, key, offset))
