"""On-disk format of fitted factors: one safetensors file per factor kind plus a JSON manifest.

Why three files: the phases run at different times (and, at scale, on different machines), so a
run can stop after the covariance phase and resume from ``covariance.safetensors``; keeping the
kinds apart also lets a reader load only the eigenbases and Λ it needs for scoring. Tensor keys
are ``"<module name>/<factor>"``. The manifest carries what safetensors cannot: shapes, counts,
Fisher type, damping rule and value, dtype, and the model/data fingerprints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from infra_pl.ekfac.eigen import EigenBasis
from infra_pl.ekfac.modules import LayerShape

if TYPE_CHECKING:  # factors.py imports this module lazily; avoid the cycle at runtime
    from infra_pl.ekfac.factors import Factors

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = {"covariance": "covariance.safetensors", "eigen": "eigen.safetensors", "lambda": "lambda.safetensors"}
_EIGEN_KEYS = ("activation_eigenvectors", "activation_eigenvalues", "gradient_eigenvectors", "gradient_eigenvalues")


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def save_factors(factors: Factors, directory: str | Path) -> Path:
    """Write ``factors`` into ``directory`` (created if needed); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    covariance: dict[str, torch.Tensor] = {}
    eigen: dict[str, torch.Tensor] = {}
    lambdas: dict[str, torch.Tensor] = {}
    modules_meta: dict[str, dict] = {}
    for name, mod in factors.modules.items():
        covariance[f"{name}/activation_covariance"] = _cpu(mod.activation_covariance)
        covariance[f"{name}/gradient_covariance"] = _cpu(mod.gradient_covariance)
        for key in _EIGEN_KEYS:
            eigen[f"{name}/{key}"] = _cpu(getattr(mod.eigen, key))
        lambdas[f"{name}/lambda"] = _cpu(mod.lambdas)
        modules_meta[name] = {
            **mod.shape.to_dict(),
            "n_tokens": mod.n_tokens,
            "n_gradient_tokens": mod.n_gradient_tokens,
            "n_sequences": mod.n_sequences,
            "damping": mod.damping,
        }
    save_file(covariance, str(out / FILES["covariance"]))
    save_file(eigen, str(out / FILES["eigen"]))
    save_file(lambdas, str(out / FILES["lambda"]))
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "ekfac",
        "fisher": factors.fisher,
        "damping_rule": factors.damping_rule,
        "dtype": str(factors.dtype).removeprefix("torch."),
        "files": FILES,
        "model_fingerprint": factors.model_fingerprint,
        "module_fingerprints": factors.module_fingerprints,
        "untracked_fingerprint": factors.untracked_fingerprint,
        "data_fingerprint": factors.data_fingerprint,
        "modules": modules_meta,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a factors directory, with a clear error if it is missing."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no EK-FAC factors at {directory} ({MANIFEST} is missing)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported factors format {manifest.get('format_version')} at {directory}")
    return manifest


def load_factors(directory: str | Path, device: torch.device | str = "cpu") -> Factors:
    """Inverse of :func:`save_factors`."""
    from infra_pl.ekfac.factors import Factors, ModuleFactors  # noqa: F811 (runtime import, see above)

    root = Path(directory)
    manifest = read_manifest(root)
    device = str(device)
    covariance = load_file(str(root / FILES["covariance"]), device=device)
    eigen = load_file(str(root / FILES["eigen"]), device=device)
    lambdas = load_file(str(root / FILES["lambda"]), device=device)
    modules = {}
    for name, meta in manifest["modules"].items():
        modules[name] = ModuleFactors(
            shape=LayerShape(meta["out_features"], meta["in_features"], meta["has_bias"]),
            activation_covariance=covariance[f"{name}/activation_covariance"],
            gradient_covariance=covariance[f"{name}/gradient_covariance"],
            eigen=EigenBasis(**{key: eigen[f"{name}/{key}"] for key in _EIGEN_KEYS}),
            lambdas=lambdas[f"{name}/lambda"],
            damping=float(meta["damping"]),
            n_tokens=int(meta["n_tokens"]),
            n_gradient_tokens=int(meta["n_gradient_tokens"]),
            n_sequences=int(meta["n_sequences"]),
        )
    return Factors(
        modules=modules,
        fisher=manifest["fisher"],
        damping_rule=manifest["damping_rule"],
        dtype=getattr(torch, manifest["dtype"]),
        model_fingerprint=manifest.get("model_fingerprint"),
        module_fingerprints=dict(manifest.get("module_fingerprints") or {}),
        untracked_fingerprint=manifest.get("untracked_fingerprint"),
        data_fingerprint=manifest.get("data_fingerprint"),
    )
