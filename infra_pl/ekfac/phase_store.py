"""Intermediate results of the EK-FAC phases on disk, so an interrupted fit resumes.

Each finished phase (covariance sums, eigenbases, Λ sums) is written under ``<dir>/partial/``
together with a key describing exactly what it was computed from (model fingerprint, data
fingerprint, module names and shapes, Fisher type, dtype). A later run reuses a phase only when
its key matches; otherwise the phase is recomputed and the reason is reported. The key file also
records the SHA-256 of the tensors file, checked before the phase is reused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from infra_pl.checksum import readable, record, verify
from infra_pl.ekfac.covariance import CovarianceState
from infra_pl.ekfac.eigen import EigenBasis
from infra_pl.ekfac.lambdas import LambdaState
from infra_pl.ekfac.modules import LayerShape

PARTIAL = "partial"
CHECKSUM = "sha256"  # entry of a key file that is not part of the key: the tensors file's checksum
_EIGEN_KEYS = ("activation_eigenvectors", "activation_eigenvalues", "gradient_eigenvectors", "gradient_eigenvalues")


def _shapes_from_key(key: Mapping[str, Any]) -> dict[str, LayerShape]:
    return {name: LayerShape(**shape) for name, shape in key["modules"].items()}


def _write(directory: Path, phase: str, tensors: dict[str, torch.Tensor], key: Mapping[str, Any]) -> None:
    """Tensors first, key last (atomically): a key on disk means the tensors beside it are whole."""
    part = directory / PARTIAL
    part.mkdir(parents=True, exist_ok=True)
    tmp = part / f".{phase}.safetensors.tmp"
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, part / f"{phase}.safetensors")
    digest = record(part / f"{phase}.safetensors")
    tmp_key = part / f".{phase}.json.tmp"
    tmp_key.write_text(json.dumps({**dict(key), CHECKSUM: digest}, indent=2, sort_keys=True))
    os.replace(tmp_key, part / f"{phase}.json")


def _read(directory: Path, phase: str, key: Mapping[str, Any], device: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    part = directory / PARTIAL
    key_file = part / f"{phase}.json"
    if not key_file.exists():
        return None, "not computed yet"
    tensors_file = part / f"{phase}.safetensors"
    hint = (f"Delete {tensors_file} and {key_file} (that phase is computed again), or set refit: true on EKFACFactors, "
            "and run `infra-pl attribute` again")
    with readable(key_file, "EK-FAC phase partial key", hint):
        stored = json.loads(key_file.read_text())
    checksum = stored.pop(CHECKSUM, None)  # None: written before checksums (loaded with a notice)
    expected = json.loads(json.dumps(dict(key), sort_keys=True))
    if stored != expected:
        differing = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        return None, f"stored {phase} was computed with different {', '.join(differing)}"
    verify(tensors_file, checksum, "EK-FAC phase partial", hint)
    with readable(tensors_file, "EK-FAC phase partial", hint):
        return load_file(str(tensors_file), device=device), "reused"


def save_covariance(directory: Path, state: CovarianceState, key: Mapping[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {"n_sequences": state.n_sequences}
    for name in state.shapes:
        tensors[f"{name}/activation_sum"] = state.activation_sums[name]
        tensors[f"{name}/gradient_sum"] = state.gradient_sums[name]
        tensors[f"{name}/activation_count"] = state.activation_counts[name]
        tensors[f"{name}/gradient_count"] = state.gradient_counts[name]
    _write(directory, "covariance", tensors, key)


def load_covariance(directory: Path, key: Mapping[str, Any], device: str = "cpu") -> tuple[CovarianceState | None, str]:
    tensors, why = _read(directory, "covariance", key, device)
    if tensors is None:
        return None, why
    shapes = _shapes_from_key(key)
    state = CovarianceState(
        shapes=shapes,
        activation_sums={n: tensors[f"{n}/activation_sum"] for n in shapes},
        gradient_sums={n: tensors[f"{n}/gradient_sum"] for n in shapes},
        activation_counts={n: tensors[f"{n}/activation_count"] for n in shapes},
        gradient_counts={n: tensors[f"{n}/gradient_count"] for n in shapes},
        n_sequences=tensors["n_sequences"],
    )
    return state, why


def save_eigen(directory: Path, eigen: Mapping[str, EigenBasis], key: Mapping[str, Any]) -> None:
    tensors = {f"{name}/{k}": getattr(basis, k) for name, basis in eigen.items() for k in _EIGEN_KEYS}
    _write(directory, "eigen", tensors, key)


def load_eigen(directory: Path, key: Mapping[str, Any], device: str = "cpu") -> tuple[dict[str, EigenBasis] | None, str]:
    tensors, why = _read(directory, "eigen", key, device)
    if tensors is None:
        return None, why
    return {n: EigenBasis(**{k: tensors[f"{n}/{k}"] for k in _EIGEN_KEYS}) for n in key["modules"]}, why


def save_lambda(directory: Path, state: LambdaState, key: Mapping[str, Any]) -> None:
    tensors = {f"{name}/lambda_sum": state.sums[name] for name in state.shapes}
    tensors["n_sequences"] = state.n_sequences
    _write(directory, "lambda", tensors, key)


def load_lambda(directory: Path, key: Mapping[str, Any], device: str = "cpu") -> tuple[LambdaState | None, str]:
    tensors, why = _read(directory, "lambda", key, device)
    if tensors is None:
        return None, why
    shapes = _shapes_from_key(key)
    return LambdaState(shapes=shapes, sums={n: tensors[f"{n}/lambda_sum"] for n in shapes}, n_sequences=tensors["n_sequences"]), why


def clear_partial(directory: Path) -> None:
    """Drop phase intermediates once the final factors are written."""
    shutil.rmtree(directory / PARTIAL, ignore_errors=True)
