"""On-disk format of fitted factors: one safetensors file per factor kind plus a JSON manifest.

Why three files: the phases run at different times (and, at scale, on different machines), so a
run can stop after the covariance phase and resume from ``covariance.safetensors``; keeping the
kinds apart also lets a reader load only the eigenbases and Λ it needs for scoring. Tensor keys
are ``"<module name>/<factor>"``. The manifest carries what safetensors cannot: shapes, counts,
Fisher type, damping rule and value, dtype, the model/data fingerprints, and the SHA-256 of each
file, checked before a file is loaded (:mod:`infra_pl.checksum`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
from safetensors.torch import load_file, save_file

from infra_pl.checksum import readable, record, verify
from infra_pl.ekfac.eigen import EigenBasis
from infra_pl.ekfac.modules import LayerShape
from infra_pl.ekfac.precision import dtype_name

if TYPE_CHECKING:  # annotations only: factors.py builds on this module, which never imports it at runtime
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
    checksums = {}
    for kind, tensors in (("covariance", covariance), ("eigen", eigen), ("lambda", lambdas)):
        save_file(tensors, str(out / FILES[kind]))
        checksums[FILES[kind]] = record(out / FILES[kind])
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": "ekfac",
        "fisher": factors.fisher,
        "damping_rule": factors.damping_rule,
        "dtype": dtype_name(factors.dtype),
        "compute_dtype": factors.compute_dtype,
        "files": FILES,
        "checksums": {"sha256": checksums},
        "model_fingerprint": factors.model_fingerprint,
        "module_fingerprints": factors.module_fingerprints,
        "untracked_fingerprint": factors.untracked_fingerprint,
        "data_fingerprint": factors.data_fingerprint,
        "modules": modules_meta,
    }
    if factors.activation_tokens != "all":  # written only when set, so default manifests stay as they were
        manifest["activation_tokens"] = factors.activation_tokens
    if factors.sample is not None:
        manifest["sample"] = factors.sample
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a factors directory, with a clear error if it is missing."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no EK-FAC factors at {directory} ({MANIFEST} is missing)")
    with readable(path, "EK-FAC factors manifest", refit_hint(directory)):
        manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported factors format {manifest.get('format_version')} at {directory}")
    return manifest


def refit_hint(directory: str | Path) -> str:
    """How to get whole factors again, for the errors about damaged files."""
    return (f"Refit: set refit: true on EKFACFactors (or delete {directory}) and run `infra-pl attribute` again; "
            "the factors are fitted anew from the checkpoint and data")


def _read_tensors(path: Path, names: set[str] | None, device: str, checksum: str | None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or only those of the ``names`` modules (read lazily, key by key).

    The file is checked against its recorded ``checksum`` first (the whole file, even when only
    some modules are read: a damaged byte anywhere means the file is not the one written).
    """
    hint = refit_hint(path.parent)
    verify(path, checksum, "EK-FAC factor file", hint)
    with readable(path, "EK-FAC factor file", hint):
        if names is None:
            return load_file(str(path), device=device)
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device=device) as handle:
            for key in handle.keys():
                if key.rsplit("/", 1)[0] in names:
                    out[key] = handle.get_tensor(key)
        return out


def read_factors(
    directory: str | Path, device: torch.device | str = "cpu", modules: Iterable[str] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Inverse of :func:`save_factors` (and of a partitioned save, see :func:`save_partition`).

    Returns what :meth:`~infra_pl.ekfac.factors.Factors.load` builds the factors from: per module
    the fields of its ``ModuleFactors``, and the fields of the ``Factors`` besides ``modules``.
    ``modules``: read only these modules' tensors (the others are never read from disk), which is
    how a partitioned scoring pass keeps one group of factors in memory at a time.
    """
    root = Path(directory)
    if (root / PARTITIONS).exists():
        return _read_partitioned(root, device, modules)
    manifest = read_manifest(root)
    device = str(device)
    wanted = None if modules is None else set(modules)
    if wanted is not None:
        unknown = sorted(wanted - set(manifest["modules"]))
        if unknown:
            raise KeyError(f"no factors for modules {unknown} in {root}")
    # Manifests written before checksums have none: those files load unverified, with a notice.
    sums = (manifest.get("checksums") or {}).get("sha256") or {}
    covariance, eigen, lambdas = (
        _read_tensors(root / FILES[kind], wanted, device, sums.get(FILES[kind])) for kind in ("covariance", "eigen", "lambda")
    )
    loaded = {}
    for name, meta in manifest["modules"].items():
        if wanted is not None and name not in wanted:
            continue
        loaded[name] = {
            "shape": LayerShape(meta["out_features"], meta["in_features"], meta["has_bias"]),
            "activation_covariance": covariance[f"{name}/activation_covariance"],
            "gradient_covariance": covariance[f"{name}/gradient_covariance"],
            "eigen": EigenBasis(**{key: eigen[f"{name}/{key}"] for key in _EIGEN_KEYS}),
            "lambdas": lambdas[f"{name}/lambda"],
            "damping": float(meta["damping"]),
            "n_tokens": int(meta["n_tokens"]),
            "n_gradient_tokens": int(meta["n_gradient_tokens"]),
            "n_sequences": int(meta["n_sequences"]),
        }
    fields = {
        "fisher": manifest["fisher"],
        "damping_rule": manifest["damping_rule"],
        "dtype": getattr(torch, manifest["dtype"]),
        "model_fingerprint": manifest.get("model_fingerprint"),
        "module_fingerprints": dict(manifest.get("module_fingerprints") or {}),
        "untracked_fingerprint": manifest.get("untracked_fingerprint"),
        "data_fingerprint": manifest.get("data_fingerprint"),
        "compute_dtype": manifest.get("compute_dtype", "float32"),  # manifests before the option: float32
        "activation_tokens": manifest.get("activation_tokens", "all"),
        "sample": manifest.get("sample"),
    }
    return loaded, fields


# -- partitioned layout -------------------------------------------------------------------------
PARTITIONS = "partitions.json"


def partition_dir(directory: str | Path, index: int) -> Path:
    """Where partition ``index`` of a partitioned fit lives: an ordinary factors directory."""
    return Path(directory) / f"partition-{index:03d}"


def save_partition(factors: Factors, directory: str | Path, index: int) -> Path:
    """Save one group's factors as ``<directory>/partition-<index>/`` (the ordinary format)."""
    return save_factors(factors, partition_dir(directory, index))


def write_partition_index(directory: str | Path, groups: list[list[str]], fingerprints: dict) -> Path:
    """Mark ``directory`` as a partitioned fit of ``groups``, written last: it means every part is whole.

    ``fingerprints`` are the whole model's (``model_fingerprint``, ``module_fingerprints``,
    ``untracked_fingerprint``, ``data_fingerprint``): a group's own manifest fingerprints the model
    as if only its modules were tracked, which is not what a later compatibility check compares.
    """
    root = Path(directory)
    for index in range(len(groups)):
        read_manifest(partition_dir(root, index))  # raises if a part is missing
    index_file = root / PARTITIONS
    tmp = index_file.with_name("." + PARTITIONS + ".tmp")
    tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, "partitions": groups, **fingerprints}, indent=2) + "\n")
    tmp.replace(index_file)
    return index_file


def read_partition_index(directory: str | Path) -> dict | None:
    """The partition index of a factors directory, or None for an ordinary (single-group) one."""
    path = Path(directory) / PARTITIONS
    return json.loads(path.read_text()) if path.exists() else None


def _read_partitioned(
    root: Path, device: torch.device | str, modules: Iterable[str] | None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    index = json.loads((root / PARTITIONS).read_text())
    groups: list[list[str]] = index["partitions"]
    wanted = None if modules is None else set(modules)
    known = {n for g in groups for n in g}
    if wanted is not None and wanted - known:
        raise KeyError(f"no factors for modules {sorted(wanted - known)} in {root}")
    loaded: dict = {}
    first = None
    for k, group in enumerate(groups):
        take = group if wanted is None else [n for n in group if n in wanted]
        if not take:
            continue
        part_modules, part_fields = read_factors(partition_dir(root, k), device=device, modules=take)
        first = first or part_fields
        loaded.update(part_modules)
    if first is None:
        raise ValueError(f"no modules selected from the partitioned factors at {root}")
    fields = {
        "fisher": first["fisher"],
        "damping_rule": first["damping_rule"],
        "dtype": first["dtype"],
        "model_fingerprint": index.get("model_fingerprint"),
        "module_fingerprints": dict(index.get("module_fingerprints") or {}),
        "untracked_fingerprint": index.get("untracked_fingerprint"),
        "data_fingerprint": index.get("data_fingerprint"),
        "compute_dtype": first["compute_dtype"],
        "activation_tokens": first.get("activation_tokens", "all"),
        "sample": first.get("sample"),
    }
    return {n: loaded[n] for g in groups for n in g if n in loaded}, fields
