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
"""

from __future__ import annotations

from functools import lru_cache

import torch

COMPUTE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_compute_dtype(value: str | torch.dtype | None, storage: torch.dtype = torch.float32) -> torch.dtype:
    """The operand dtype of the big products: ``None`` means the storage dtype (no extra rounding).

    Accepts ``"float32"``/``"bfloat16"`` or the torch dtypes. A compute dtype wider than the storage
    dtype (float32 products into a float64 reference fit, say) would only lose precision in a
    different place, so it is refused with that reason.
    """
    if value is None:
        return storage
    if isinstance(value, str):
        if value not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {value!r}")
        value = COMPUTE_DTYPES[value]
    if value not in COMPUTE_DTYPES.values():
        raise ValueError(f"compute_dtype must be float32 or bfloat16, got {value}")
    if value == torch.float32 and storage == torch.float64:
        return storage  # float64 reference runs keep float64 products
    if torch.finfo(value).bits > torch.finfo(storage).bits:
        raise ValueError(f"compute_dtype {value} is wider than the storage dtype {storage}")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling of manifests, configs and messages."""
    return str(dtype).removeprefix("torch.")


def is_reduced(dtype: torch.dtype) -> bool:
    """Whether products in ``dtype`` must be upcast before they are summed (bfloat16, float16)."""
    return torch.finfo(dtype).bits < 32


@lru_cache(maxsize=None)
def native_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` multiplies bfloat16 matrices in hardware (so the option pays off)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False
