"""The one table of dtype names: configs, command lines and manifests spell dtypes this way."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}


def parse_dtype(name: str | torch.dtype, option: str, allowed: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """The torch dtype of ``name`` (a name, an alias such as ``bf16``, or a dtype) among ``allowed``.

    The error names the option and the choices, so a typo in a YAML file says where it is.
    """
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    name = ALIASES.get(name, name)
    if name not in allowed:
        raise ValueError(f"{option} must be one of {list(allowed)}, got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling of manifests, configs and messages."""
    return str(dtype).removeprefix("torch.")
