"""Fast exact standard normals on the CPU: Philox4x32-10 words and Box-Muller in one compiled pass.

torch's CPU ``normal_`` draws one Mersenne Twister word per normal in a scalar loop, then a vectorised
Box-Muller; on an SGMCMC step that draw is most of the update. This module draws the same law from a
counter-based generator instead: block ``b`` of a draw with 64-bit ``key`` and stream ``offset`` is
``Philox4x32-10(counter = (b, offset), key)`` (Salmon et al. 2011; torch's CUDA generator is the same
Philox), four words that Box-Muller turns into four normals

    u = (floor(w_0 / 2^9) + 1/2) 2^-23,   v = floor(w_1 / 2^8) 2^-24,   r = sqrt(-2 ln u)
    z_0 = r cos(2 pi v),   z_1 = r sin(2 pi v)            (and likewise from w_2, w_3)

so that element ``i`` of the output is normal ``i`` of the sequence times ``scale``. Everything is
float32 arithmetic in a fixed order (no fused multiply-add, no fast-math), so a draw is a pure function of
``(key, offset, n)``, the same on every machine that compiles the kernel; the tests compare it bit for bit
with a NumPy float32 transcription. Tails: ``|z| <= sqrt(48 ln 2) = 5.77`` as with torch's 24-bit
uniforms.

The kernel (``_native/philox_normal.c``, about 200 lines of C) is compiled on first use with the system C
compiler (``$CC``, else ``cc``) into ``$THERMOAI_CACHE_DIR`` (default ``~/.cache/thermoai``) and loaded
with ``ctypes``; where no compiler is found, or ``THERMOAI_NATIVE=0``, :func:`available` is ``False`` and
callers keep torch's ``normal_`` (the same law, another stream). :func:`status` says which and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from thermoai.cache import cache_dir

__all__ = ["available", "status", "normal_", "add_normal_", "eligible", "draw_key", "words"]

_SOURCE = Path(__file__).parent / "_native" / "philox_normal.c"
# -ffp-contract=off: no fused multiply-add, so the vectorised loops round exactly like the scalar
# definition; -fno-math-errno lets sqrtf vectorise (it changes no floating-point mode)
_FLAGS = [["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno"],
          ["-O3", "-ffp-contract=off", "-fno-math-errno"]]
_LOCK = threading.Lock()
_STATE: dict = {}


def _cpu_tag() -> str:
    """What the compiled code depends on: the machine, and with -march=native its CPU flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _compile() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("THERMOAI_NATIVE", "1") == "0":
        return None, "disabled by THERMOAI_NATIVE=0"
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None, "no C compiler found ($CC, cc, gcc, clang)"
    source = _SOURCE.read_bytes()
    errors = []
    for flags in _FLAGS:
        tag = hashlib.sha256(source + repr(flags).encode() + compiler.encode() + _cpu_tag().encode()).hexdigest()[:16]
        for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"thermoai-{os.getuid() if hasattr(os, 'getuid') else 0}"):
            target = folder / f"philox_normal-{tag}.so"
            try:
                if not target.exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
                    os.close(fd)
                    run = subprocess.run([compiler, *flags, "-fPIC", "-shared", "-o", partial, str(_SOURCE)],
                                         capture_output=True, text=True, timeout=120)
                    if run.returncode != 0:
                        os.unlink(partial)
                        errors.append(f"{' '.join(flags)}: {run.stderr.strip()[:200]}")
                        break  # the next flags, not the next folder
                    os.replace(partial, target)  # atomic: concurrent processes never load a half-written file
                lib = ctypes.CDLL(str(target))
            except (OSError, subprocess.SubprocessError) as err:
                errors.append(f"{folder}: {err}")
                continue
            lib.thermoai_philox_normal_f32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64,
                                                        ctypes.c_uint64, ctypes.c_float]
            lib.thermoai_philox_normal_f32.restype = None
            lib.thermoai_philox_add_normal_f32.argtypes = lib.thermoai_philox_normal_f32.argtypes
            lib.thermoai_philox_add_normal_f32.restype = None
            lib.thermoai_philox_words.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64]
            lib.thermoai_philox_words.restype = None
            return lib, f"compiled ({' '.join(flags)}): {target}"
    return None, "compilation failed: " + "; ".join(errors)


def _library() -> ctypes.CDLL | None:
    if "lib" not in _STATE:
        with _LOCK:
            if "lib" not in _STATE:
                _STATE["lib"], _STATE["status"] = _compile()
    return _STATE["lib"]


def available() -> bool:
    """Whether the compiled kernel could be built and loaded on this machine (compiles on first call)."""
    return _library() is not None


def status() -> str:
    """Which normal generator serves: ``"compiled (...): path"``, or why torch's ``normal_`` serves instead."""
    _library()
    return _STATE["status"]


def _check_key(key: int, offset: int) -> None:
    for name, value in (("key", key), ("offset", offset)):
        if not isinstance(value, int) or not 0 <= value < 2**64:
            raise ValueError(f"{name}: expected an integer in [0, 2^64), got {value!r}")


def eligible(x: Tensor) -> bool:
    """Whether the kernel can write ``x``: float32, on the CPU, contiguous (and the kernel available)."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous() and available()


def _required() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError(f"thermoai.philox: the compiled kernel is not available ({status()})")
    return lib


def _checked(out: Tensor, key: int, offset: int) -> ctypes.CDLL:
    lib = _required()
    if out.dtype != torch.float32 or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous float32 CPU tensor, got {out.dtype} on {out.device}"
                         f"{'' if out.is_contiguous() else ', not contiguous'}")
    _check_key(key, offset)
    return lib


def normal_(out: Tensor, scale: float, key: int, offset: int = 0) -> Tensor:
    """Fill ``out`` (float32, CPU, contiguous; any shape, ``n`` elements) with ``scale * z``, ``z`` the
    first ``n`` normals of stream ``(key, offset)``; returns ``out``.

    Raises ``RuntimeError`` when the kernel is not available (check :func:`available`), ``ValueError`` for
    another dtype, device or layout, or a key outside ``[0, 2^64)``.
    """
    lib = _checked(out, key, offset)
    if out.numel():
        lib.thermoai_philox_normal_f32(out.data_ptr(), out.numel(), key, offset, float(scale))
    return out


def add_normal_(out: Tensor, scale: float, key: int, offset: int = 0) -> Tensor:
    """``out += scale * z`` in one pass, ``z`` as in :func:`normal_` (the same numbers): no noise buffer is
    written or read. Same requirements and errors as :func:`normal_`."""
    lib = _checked(out, key, offset)
    if out.numel():
        lib.thermoai_philox_add_normal_f32(out.data_ptr(), out.numel(), key, offset, float(scale))
    return out


def words(blocks: int, key: int, offset: int = 0) -> Tensor:
    """The raw Philox4x32-10 words of blocks ``0 .. blocks-1`` of stream ``(key, offset)``: shape
    ``(blocks, 4)``, int64 holding the unsigned 32-bit values (for known-answer tests)."""
    lib = _required()
    _check_key(key, offset)
    raw = torch.empty(blocks * 4, dtype=torch.int32)
    if blocks:
        lib.thermoai_philox_words(raw.data_ptr(), blocks, key, offset)
    return raw.to(torch.int64).bitwise_and_(0xFFFFFFFF).view(blocks, 4)


def draw_key(generator: torch.Generator | None = None) -> int:
    """A fresh 63-bit key from ``generator`` (torch's default generator when ``None``): seeding torch, or
    saving and restoring the generator, reproduces every draw keyed from it."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator))
