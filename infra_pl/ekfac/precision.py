"""Operand precision of the large EK-FAC products: float32 (default) or bfloat16.

Why an option: after the model's own forward and backward, the costly part of a factor fit is a
handful of big matrix products per layer and batch: the covariance grams aᵀa and gᵀg, the
eigenbasis rotations of the Lambda pass, and the per-sequence gradients and their dot products
with the query directions. On hardware with bfloat16 matrix units (Intel AMX or AVX512-BF16 CPUs,
tensor-core GPUs) these run several times faster with bfloat16 operands: measured on this
project's CPU (one thread), a [1024, 512] gram 2.9 → 0.5 ms and a [1024, 512] × [512, 512]
rotation 2.8 → 0.4 ms. The products still accumulate in float32 inside the kernel and every running
sum, eigendecomposition, Lambda and damping stays float32 (or float64), so only the rounding of
each product's *operands and result* (relative 2⁻⁹) is added, independently per batch; it
averages out over the data. The model itself is never cast.

Not the default: on CPUs without bfloat16 units the same products are emulated and slower, and
reference runs want float32 end to end. :func:`native_bf16` says whether a device has the units.
On a CPU it reads the feature flags (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``; ``bf16``
on Arm) rather than trusting oneDNN's ``_is_mkldnn_bf16_supported()``, which is also true on
AVX512 CPUs that only emulate bfloat16: there a [1024, 512] bfloat16 gram took 19.6 ms against
4.4 ms in float32, and ``auto`` made the benchmark 1.5x slower. :func:`bf16_detection` says what
was found and why; :func:`bf16_gram_speedup` is an optional measurement.
"""

from __future__ import annotations

import platform
import time
from functools import lru_cache

import torch

from infra_pl.dtypes import dtype_name, parse_dtype  # noqa: F401 - dtype_name is re-exported

COMPUTE_DTYPES = ("float32", "bfloat16")


def resolve_compute_dtype(value: str | torch.dtype | None, storage: torch.dtype = torch.float32) -> torch.dtype:
    """The operand dtype of the big products: ``None`` means the storage dtype (no extra rounding).

    Accepts ``"float32"``/``"bfloat16"`` or the torch dtypes. A compute dtype wider than the storage
    dtype (float32 products into a float64 reference fit, say) would only lose precision in a
    different place, so it is refused with that reason.
    """
    if value is None or value == storage:  # None, or an already resolved dtype (float64 in a float64 fit)
        return storage
    value = parse_dtype(value, "compute_dtype", COMPUTE_DTYPES)
    if value == torch.float32 and storage == torch.float64:
        return storage  # float64 reference runs keep float64 products
    if torch.finfo(value).bits > torch.finfo(storage).bits:
        raise ValueError(f"compute_dtype {value} is wider than the storage dtype {storage}")
    return value


def is_reduced(dtype: torch.dtype) -> bool:
    """Whether products in ``dtype`` must be upcast before they are summed (bfloat16, float16)."""
    return torch.finfo(dtype).bits < 32


CPUINFO = "/proc/cpuinfo"

# x86 flags of bfloat16 matrix units (Intel AMX; AVX512-BF16 on Cooper Lake, Sapphire Rapids, Zen 4)
# and the Arm feature of the BFMMLA/BFDOT instructions, strongest first.
_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
_ARM_BF16_FLAGS = (("bf16", "Arm BF16"),)


def read_cpuinfo(path: str = CPUINFO) -> str | None:
    """The text of ``/proc/cpuinfo`` (``None`` where there is none: macOS, Windows, some containers)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_bf16_units(cpuinfo: str | None) -> tuple[bool, str]:
    """Whether a CPU with this ``/proc/cpuinfo`` text multiplies bfloat16 in hardware, and why.

    Only the flags of real bfloat16 units count: AVX512F alone (which oneDNN accepts as "bf16
    supported") converts and multiplies in float32, slower than plain float32. No cpuinfo text
    means unknown, which counts as no units, so ``auto`` never picks an emulated path.
    """
    if cpuinfo is None:
        return False, "no /proc/cpuinfo to read the CPU's features from: assuming no bfloat16 units"
    flags = cpu_flags(cpuinfo)
    if not flags:
        return False, "no feature flags in /proc/cpuinfo: assuming no bfloat16 units"
    arm = "asimd" in flags  # Arm Features (x86 has sse/avx instead)
    for flag, name in _ARM_BF16_FLAGS if arm else _BF16_FLAGS:
        if flag in flags:
            return True, f"{name} (CPU flag {flag})"
    wanted = " or ".join(flag for flag, _ in (_ARM_BF16_FLAGS if arm else _BF16_FLAGS))
    emulated = " (AVX512F only: bfloat16 products are emulated, slower than float32)" if "avx512f" in flags else ""
    return False, f"no bfloat16 units: the CPU flags lack {wanted}{emulated}"


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@lru_cache(maxsize=None)
def bf16_detection(device_type: str = "cpu") -> tuple[bool, str]:
    """``(native, reason)``: whether ``device_type`` multiplies bfloat16 matrices in hardware, and from what.

    The reason is one line for logs and benchmark output, e.g. ``"cpu: AMX-BF16 (CPU flag
    amx_bf16)"`` or ``"cpu: no bfloat16 units: the CPU flags lack amx_bf16 or avx512_bf16 (AVX512F
    only: ...)"``.
    """
    if device_type == "cuda":
        native = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return native, f"cuda: bfloat16 {'supported' if native else 'not supported'} (torch.cuda.is_bf16_supported)"
    if device_type != "cpu":
        return False, f"{device_type}: not checked, assuming no bfloat16 units"
    native, reason = cpu_bf16_units(read_cpuinfo())
    if native and not _mkldnn_bf16():
        return False, f"cpu: {reason}, but this torch build's oneDNN does not use it"
    machine = platform.machine() or "unknown machine"
    return native, f"cpu ({machine}): {reason}"


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` multiplies bfloat16 matrices in hardware (so the option pays off)."""
    return bf16_detection(device_type)[0]


def bf16_gram_speedup(rows: int = 1024, cols: int = 512, repeats: int = 5) -> float:
    """float32 time / bfloat16 time of one ``[rows, cols]`` gram ``aᵀa`` on this CPU (best of ``repeats``).

    Optional, for a benchmark or a doubtful detection: above 1 the bfloat16 path pays off. Takes
    about ``repeats x 25`` ms on the shapes above; runs on the caller's torch threads.
    """
    generator = torch.Generator().manual_seed(0)
    a32 = torch.randn(rows, cols, generator=generator)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = a32.to(dtype)
        a.T @ a  # warm-up (kernel selection, allocation)
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            a.T @ a
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)
