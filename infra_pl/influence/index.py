"""A reusable training-gradient index: score new measurements without another pass over the training set.

Every score is linear in the training gradient, S(z_n) = Σ_modules ⟨V, G_n⟩ with V = H⁻¹∇f and
G_n = ∇log p(z_n) in the canonical [out, in(+1)] layout. The index keeps, per training example
and tracked module, a compressed G_n:

    R_n = Lᵀ G_n R      ([k_out, k_in]; L [out, k_out], R [in(+1), k_in])

and a later measurement is scored as S(z_n) ≈ Σ_modules ⟨Lᵀ V R, R_n⟩ · c. With the EK-FAC
eigenbasis (the default, ``kind="eigen"``: L = the top-k eigenvectors of the gradient covariance S,
R those of the activation covariance A, c = 1) this is exact at full rank, because
⟨Q_Sᵀ V Q_A, Q_Sᵀ G Q_A⟩ = ⟨V, G⟩ for orthogonal Q; at rank k it drops the part of G_n (and V)
outside the top-k × top-k Kronecker block. (LoGra's "PCA initialisation" of its projections is the
same basis.) ``kind="random"`` projects on Gaussian matrices instead (LoGra's random init, c =
1/(k_out·k_in): an unbiased estimate of ⟨V, G_n⟩); ``benchmarks/bench_index.py`` compares them.

R_n is formed per batch from the hooked activations a_t and output gradients g_t without forming
G_n: R_n = −Σ_t (Lᵀg_t)(Rᵀa_t)ᵀ = −(g L)ᵀ(a R), or from G_n when the instance pass forms it anyway
and that is cheaper (:func:`scores_and_projections`, which also returns the instance scores of the
same pass, computed exactly as :func:`infra_pl.influence.instance.instance_scores` does).

On disk (one folder per module group; ``partition-<k>/`` sub-folders for a partitioned run)::

    manifest.json                  key, kind, rank, dtype, modules (shapes, k, offsets), provenance
    basis.safetensors              L and R per module (so the index scores without the factors)
    part-r<rank>-<n>.npy           [rows, D] values, memory-mapped when read (D = Σ k_out·k_in)
    part-r<rank>-<n>.scales.npy    int8 and float16: [rows, modules] float32 scale of each block
    part-r<rank>-<n>.json          example index and id of every row, key, checksums (written last)

A part exists once its ``.json`` does (values first, then scales, then the json, each renamed
into place), so a pass stopped at any point leaves only whole parts; a rerun scores the examples
no part holds yet. int8 and float16 blocks are stored divided by a float32 scale per block (its
largest magnitude, over 127 for int8), so nothing overflows and each block keeps the dtype's
relative precision: int8's rounding (at most 1/254 of the block's largest entry) moved
agreement with exact scores by less than 1e-4 in ``benchmarks/bench_index.py``, at half of
float16's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from infra_pl.checksum import record, verify
from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import resolve_modules
from infra_pl.ekfac.passes import batch_size, capture_pass, eval_mode, model_device
from infra_pl.influence.instance import module_scores
from infra_pl.influence.measurement import Directions

INDEX_FORMAT = 1
INDEX_DTYPES = {"int8": np.int8, "float16": np.float16, "float32": np.float32}
SCALED_DTYPES = {"int8": 127.0, "float16": 1.0}  # stored = block / scale, scale = largest magnitude / this
BASIS_KINDS = ("eigen", "random")
# Rows wait in memory as float32 until a part is written: at most FLUSH_BYTES of them (and FLUSH_ROWS rows),
# so the pass's extra memory stays small and bounded whatever the rank and N.
FLUSH_BYTES = 32 << 20
FLUSH_ROWS = 512
READ_ROWS = 4096  # rows read from a memory-mapped part at a time when scoring
_PART = re.compile(r"^part-r(\d+)-(\d+)\.json$")


class IndexMismatchError(ValueError):
    """A stored index does not belong to this model, training set or module set."""


# ------------------------------------------------------------------------------------- the basis
@dataclass
class ModuleBasis:
    """The projections of one module: ``left`` [out, k_out], ``right`` [in(+1), k_in]; scores × ``scale``."""

    left: torch.Tensor
    right: torch.Tensor
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.left.shape[1]), int(self.right.shape[1])

    @property
    def size(self) -> int:
        k_out, k_in = self.shape
        return k_out * k_in


@dataclass
class IndexBasis:
    """The projection of every indexed module (in row order) and how it was chosen."""

    kind: str
    rank: int
    modules: dict[str, ModuleBasis]
    info: dict[str, Any] = field(default_factory=dict)

    def layout(self) -> list[dict[str, Any]]:
        """Per module: name, matrix shape, k_out, k_in and the columns [offset, offset + size) of a row."""
        rows, offset = [], 0
        for name, basis in self.modules.items():
            k_out, k_in = basis.shape
            rows.append({"name": name, "out": int(basis.left.shape[0]), "in": int(basis.right.shape[0]),
                         "k_out": k_out, "k_in": k_in, "offset": offset, "size": k_out * k_in,
                         "scale": basis.scale})
            offset += k_out * k_in
        return rows

    @property
    def row_size(self) -> int:
        return sum(b.size for b in self.modules.values())

    def full_rank(self) -> bool:
        """Whether every module keeps its whole eigenbasis (index scores are then exact)."""
        return self.kind == "eigen" and all(
            b.left.shape[0] == b.left.shape[1] and b.right.shape[0] == b.right.shape[1] for b in self.modules.values())

    def digest(self) -> str:
        """sha256 of the basis values (resume never mixes rows of two bases)."""
        digest = hashlib.sha256(f"{self.kind}:{self.rank}".encode())
        for name, basis in self.modules.items():
            digest.update(f"{name}:{basis.shape}:{basis.scale!r};".encode())
            for matrix in (basis.left, basis.right):
                digest.update(matrix.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:20]

    def subset(self, names: Iterable[str]) -> "IndexBasis":
        return IndexBasis(self.kind, self.rank, {n: self.modules[n] for n in names}, dict(self.info))

    def to(self, device: torch.device | str) -> "IndexBasis":
        """The same basis with L and R on ``device`` (float32), for the training pass's products."""
        modules = {n: ModuleBasis(b.left.to(device, torch.float32), b.right.to(device, torch.float32), b.scale)
                   for n, b in self.modules.items()}
        return IndexBasis(self.kind, self.rank, modules, self.info)

    def project(self, directions: Directions) -> dict[str, torch.Tensor]:
        """Lᵀ V R · scale per module: [M, k_out·k_in] in float32 (the query side of an index score)."""
        out = {}
        for name, v in directions.per_module.items():
            basis = self.modules[name]
            left = basis.left.to(device=v.device, dtype=torch.float32)
            right = basis.right.to(device=v.device, dtype=torch.float32)
            projected = left.t() @ v.to(torch.float32) @ right
            out[name] = (projected * basis.scale).reshape(projected.shape[0], -1)
        return out

    def save(self, path: Path) -> str:
        from safetensors.torch import save_file

        tensors = {}
        for name, basis in self.modules.items():
            tensors[f"{name}::left"] = basis.left.detach().to("cpu", torch.float32).contiguous()
            tensors[f"{name}::right"] = basis.right.detach().to("cpu", torch.float32).contiguous()
        tmp = path.with_name("." + path.name + ".tmp")
        save_file(tensors, str(tmp))
        checksum = record(tmp)
        os.replace(tmp, path)
        return checksum

    @classmethod
    def load(cls, path: Path, manifest: Mapping[str, Any]) -> "IndexBasis":
        from safetensors.torch import load_file

        verify(path, manifest.get("basis_sha256"), "index basis file", _rebuild_hint(path.parent))
        tensors = load_file(str(path))
        modules = {m["name"]: ModuleBasis(tensors[f"{m['name']}::left"], tensors[f"{m['name']}::right"],
                                          float(m.get("scale", 1.0)))
                   for m in manifest["modules"]}
        return cls(manifest["kind"], int(manifest["rank"]), modules, dict(manifest.get("basis_info", {})))


def _top(eigenvalues: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest eigenvalues, largest first (eigh returns them ascending)."""
    return torch.argsort(eigenvalues.double(), descending=True, stable=True)[:k]


def eigen_basis(factors: Any, rank: int, modules: Sequence[str] | None = None) -> IndexBasis:
    """Top-``rank`` eigenvectors of S (left) and A (right) per module, by eigenvalue.

    ``info`` records what the truncation keeps of each module, from the fitted Λ (the training
    gradients' variance in the eigenbasis): ``energy``, the kept share of Σ Λ (of the gradients'
    squared norm), and ``effective``, the kept share of Σ Λ/(Λ+λ), the effective number of
    directions the damped inverse weights (a score's error grows with what this leaves out).
    """
    if rank < 1:
        raise ValueError(f"index rank must be positive, got {rank}")
    names = list(modules) if modules is not None else list(factors.modules)
    per_module, kept = {}, {}
    totals = {"energy": [0.0, 0.0], "effective": [0.0, 0.0]}
    for name in names:
        mf = factors.modules[name]
        eig = mf.eigen
        rows = _top(eig.gradient_eigenvalues, min(rank, eig.gradient_eigenvectors.shape[1]))
        cols = _top(eig.activation_eigenvalues, min(rank, eig.activation_eigenvectors.shape[1]))
        per_module[name] = ModuleBasis(eig.gradient_eigenvectors[:, rows].to("cpu", torch.float32).contiguous(),
                                       eig.activation_eigenvectors[:, cols].to("cpu", torch.float32).contiguous())
        lam = mf.lambdas.detach().to("cpu", torch.float64).clamp(min=0)
        block = lam[rows.cpu()][:, cols.cpu()]
        effective = lam / (lam + mf.damping)
        shares = {"energy": (float(block.sum()), float(lam.sum())),
                  "effective": (float((block / (block + mf.damping)).sum()), float(effective.sum()))}
        kept[name] = {k: (a / b if b > 0 else 1.0) for k, (a, b) in shares.items()}
        for k, (a, b) in shares.items():
            totals[k][0] += a
            totals[k][1] += b
    info = {"kept": kept, **{k: (a / b if b > 0 else 1.0) for k, (a, b) in totals.items()},
            "sums": {k: list(v) for k, v in totals.items()}}  # kept and total, so module groups combine
    return IndexBasis("eigen", rank, per_module, info)


def random_basis(shapes: Mapping[str, tuple[int, int]], rank: int, seed: int = 0) -> IndexBasis:
    """Gaussian projections per module (LoGra's random init): an unbiased, noisier estimate.

    ``shapes``: module -> (out, in(+1)). E[L Lᵀ] = k_out·I and E[R Rᵀ] = k_in·I, so the score is
    scaled by 1/(k_out·k_in).
    """
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, (out, inp) in shapes.items():
        k_out, k_in = min(rank, out), min(rank, inp)
        left = torch.randn(out, k_out, generator=generator)
        right = torch.randn(inp, k_in, generator=generator)
        modules[name] = ModuleBasis(left, right, 1.0 / (k_out * k_in))
    return IndexBasis("random", rank, modules, {"seed": seed})


def factors_digest(factors: Any) -> str:
    """Which factors an eigenbasis came from (provenance in the manifest; the basis itself is stored)."""
    digest = hashlib.sha256(json.dumps({
        "model": factors.model_fingerprint, "data": factors.data_fingerprint, "fisher": factors.fisher,
        "activation_tokens": getattr(factors, "activation_tokens", "all"), "compute_dtype": factors.compute_dtype,
    }, sort_keys=True).encode())
    for name in sorted(factors.modules):
        eig = factors.modules[name].eigen
        digest.update(f"{name}:{float(eig.activation_eigenvalues.double().sum()):.12e}:"
                      f"{float(eig.gradient_eigenvalues.double().sum()):.12e};".encode())
    return digest.hexdigest()[:20]


def make_basis(kind: str, factors: Any, rank: int, modules: Sequence[str] | None = None, seed: int = 0) -> IndexBasis:
    if kind == "eigen":
        return eigen_basis(factors, rank, modules)
    if kind == "random":
        names = list(modules) if modules is not None else list(factors.modules)
        return random_basis({n: factors.modules[n].shape.matrix_shape for n in names}, rank, seed)
    raise ValueError(f"index basis must be one of {list(BASIS_KINDS)}, got {kind!r}")


# ------------------------------------------------------------------------------- the batch pass
def _check_grad_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError("index projections need a backward pass, which inference_mode forbids")


def _projection(name: str, basis: ModuleBasis, activations: torch.Tensor, output_grads: torch.Tensor,
                grads: torch.Tensor | None) -> torch.Tensor:
    """[B, k_out·k_in] of Lᵀ ∇log p(z_b) R = −Lᵀ G_b R, from G_b when formed and cheaper, else per token."""
    device = activations.device
    left = basis.left.to(device=device, dtype=torch.float32)
    right = basis.right.to(device=device, dtype=torch.float32)
    (out, k_out), (inp, k_in) = left.shape, right.shape
    tokens = activations.shape[1]
    from_grads = k_out * out * inp + k_out * inp * k_in
    per_token = tokens * (out * k_out + inp * k_in + k_out * k_in)
    if grads is not None and from_grads <= per_token:
        projected = torch.matmul(left.t(), grads.float()) @ right
    else:
        projected = torch.bmm((output_grads.float() @ left).transpose(1, 2), activations.float() @ right)
    return projected.reshape(projected.shape[0], -1).neg_()


def scores_and_projections(
    model: nn.Module,
    batch: Mapping[str, Any],
    directions: Directions | None,
    basis: IndexBasis,
    modules: Mapping[str, nn.Module] | None = None,
    loss_fn: LossFn = causal_lm_loss,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One hooked pass: the instance scores [B, M] (None without directions) and the index rows [B, D].

    The scores are computed with the same operations as
    :func:`infra_pl.influence.instance.instance_scores` (``contraction="auto"``), so an instance
    pass that writes the index scores the same; the rows follow ``basis.layout()``.
    """
    _check_grad_mode()
    if directions is not None:
        tracked = directions.modules_of(model, modules)
        dtype = directions.dtype
    else:
        tracked = resolve_modules(model, modules if modules is not None else list(basis.modules))
        dtype = torch.float32
    missing = [n for n in tracked if n not in basis.modules]
    if missing:
        raise KeyError(f"the index basis has no modules {missing}")
    layout = {m["name"]: (m["offset"], m["size"]) for m in basis.layout()}
    rows = torch.zeros(batch_size(batch), basis.row_size, dtype=torch.float32, device=model_device(model))
    result: dict[str, torch.Tensor] = {}

    def contract(name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
        grads = None
        if directions is not None:  # the instance score, exactly as infra_pl.influence.instance computes it
            v = directions.per_module[name].to(device=activations.device, dtype=dtype)
            term, grads = module_scores(v, activations, output_grads, "auto")
            result["total"] = term if "total" not in result else result["total"] + term
        offset, size = layout[name]
        rows[:, offset : offset + size] = _projection(name, basis.modules[name], activations, output_grads, grads)

    capture = Capture(tracked, on_pair=contract, dtype=dtype)
    with eval_mode(model), capture:
        capture_pass(model, batch, loss_fn, capture, sample_labels=False)
    return result.get("total"), rows


# ---------------------------------------------------------------------------------- the writer
def index_key(basis: IndexBasis, dtype: str, model_fingerprint: str | None, data_fingerprint: str | None) -> str:
    """What the stored rows depend on: the basis, the storage dtype, the weights and the training set."""
    digest = hashlib.sha256(json.dumps({"format": INDEX_FORMAT, "basis": basis.digest(), "dtype": dtype,
                                        "model": model_fingerprint, "data": data_fingerprint,
                                        "modules": basis.layout()}, sort_keys=True).encode())
    return digest.hexdigest()[:20]


def _rebuild_hint(directory: Path) -> str:
    return (f"Delete {directory} and run the instance pass again with index: true (or score without from_index)")


def _part_files(directory: Path) -> list[tuple[int, int, Path]]:
    """(rank, number, json path) of every finished part, in (rank, number) order."""
    found = []
    for path in directory.glob("part-r*-*.json"):
        match = _PART.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    return sorted(found)


def _atomic_save(path: Path, array: np.ndarray) -> str:
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    checksum = record(tmp)
    os.replace(tmp, path)
    return checksum


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class IndexWriter:
    """Buffers index rows and writes them as numbered parts of one module group (one writer per rank).

    The manifest is written by rank 0; parts of another key (another basis, dtype, model or
    training set) are deleted: they can never be read with this one.
    """

    def __init__(self, directory: Path, basis: IndexBasis, dtype: str, key: str, provenance: Mapping[str, Any],
                 rank: int = 0, flush_rows: int | None = None) -> None:
        if dtype not in INDEX_DTYPES:
            raise ValueError(f"index_dtype must be one of {list(INDEX_DTYPES)}, got {dtype!r}")
        self.directory, self.basis, self.dtype, self.key, self.rank = Path(directory), basis, dtype, key, rank
        self.layout = basis.layout()
        row_bytes = basis.row_size * 4  # the float32 buffer
        self.flush_rows = flush_rows or max(1, min(FLUSH_ROWS, FLUSH_BYTES // max(row_bytes, 1)))
        self._indices: list[int] = []
        self._ids: list[str] = []
        self._rows: list[torch.Tensor] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        stale = 0
        for part_rank, _, path in _part_files(self.directory):
            if part_rank != rank and rank != 0:
                continue
            if not _same_key(path, key):
                stale += 1
                for suffix in (".json", ".npy", ".scales.npy"):
                    path.with_name(path.name[: -len(".json")] + suffix).unlink(missing_ok=True)
        if stale:
            from infra_pl.console import log

            log(f"training index {self.directory}: removed {stale} part(s) of another basis, dtype, model or "
                "training set")
        manifest_file = self.directory / "manifest.json"
        if rank == 0 and not (manifest_file.exists() and _same_key(manifest_file, key)):
            manifest = {"format": INDEX_FORMAT, "key": key, "kind": basis.kind, "rank": basis.rank, "dtype": dtype,
                        "row_size": basis.row_size, "bytes_per_example": self.bytes_per_example,
                        "modules": self.layout, "full_rank": basis.full_rank(), "basis_info": basis.info,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **provenance}
            manifest["basis_sha256"] = basis.save(self.directory / "basis.safetensors")
            _write_json(self.directory / "manifest.json", manifest)
        self._counter = 1 + max((n for r, n, _ in _part_files(self.directory) if r == rank), default=-1)

    @property
    def bytes_per_example(self) -> int:
        scale_bytes = 4 * len(self.layout) if self.dtype in SCALED_DTYPES else 0
        return self.basis.row_size * np.dtype(INDEX_DTYPES[self.dtype]).itemsize + scale_bytes

    def add(self, indices: Sequence[int], ids: Sequence[str], rows: torch.Tensor) -> None:
        if len(indices) != rows.shape[0]:
            raise ValueError(f"{len(indices)} indices for {rows.shape[0]} index rows")
        self._indices.extend(int(i) for i in indices)
        self._ids.extend(str(i) for i in ids)
        self._rows.append(rows.detach().to("cpu", torch.float32))
        if len(self._indices) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._indices:
            return
        values = torch.cat(self._rows).numpy()
        stem = f"part-r{self.rank}-{self._counter:06d}"
        checksums = {}
        if self.dtype in SCALED_DTYPES:
            levels = SCALED_DTYPES[self.dtype]
            scales = np.ones((values.shape[0], len(self.layout)), dtype=np.float32)
            stored = np.empty(values.shape, dtype=INDEX_DTYPES[self.dtype])
            for j, module in enumerate(self.layout):
                block = values[:, module["offset"] : module["offset"] + module["size"]]
                peak = np.abs(block).max(axis=1) if block.size else np.zeros(values.shape[0], np.float32)
                scale = (np.where(peak > 0, peak, 1.0) / levels).astype(np.float32)
                scales[:, j] = scale
                scaled = block / scale[:, None]
                stored[:, module["offset"] : module["offset"] + module["size"]] = (
                    np.rint(scaled) if levels > 1 else scaled)
            checksums["values"] = _atomic_save(self.directory / f"{stem}.npy", stored)
            checksums["scales"] = _atomic_save(self.directory / f"{stem}.scales.npy", scales)
        else:
            checksums["values"] = _atomic_save(self.directory / f"{stem}.npy", values.astype(np.float32, copy=False))
        _write_json(self.directory / f"{stem}.json", {"key": self.key, "rows": len(self._indices),
                                                      "index": self._indices, "id": self._ids, "sha256": checksums})
        self._counter += 1
        self._indices, self._ids, self._rows = [], [], []


def remove_overlapping_groups(root: Path, directory: Path, modules: Iterable[str]) -> list[Path]:
    """Delete the index files of other module groups under ``root`` that hold any of ``modules``.

    Such a group is left from a run with another module partitioning (with and without
    partitions, or another number of them); read together with the new group it would count
    those modules twice. Returns the folders cleared.
    """
    wanted, cleared = set(modules), []
    root, directory = Path(root), Path(directory)
    for folder in [root, *sorted(p for p in root.glob("partition-*") if p.is_dir())]:
        manifest = folder / "manifest.json"
        if folder.resolve() == directory.resolve() or not manifest.exists():
            continue
        try:
            held = {m["name"] for m in json.loads(manifest.read_text()).get("modules", [])}
        except (OSError, json.JSONDecodeError):
            held = set()
        if held & wanted:
            for path in [manifest, folder / "basis.safetensors", *folder.glob("part-r*-*")]:
                path.unlink(missing_ok=True)
            cleared.append(folder)
    return cleared


def _same_key(path: Path, key: str) -> bool:
    try:
        return json.loads(path.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def indexed(directory: Path, key: str) -> set[int]:
    """Example indices held by the finished parts of ``directory`` written under ``key``."""
    done: set[int] = set()
    if not Path(directory).exists():
        return done
    for _, _, path in _part_files(Path(directory)):
        meta = json.loads(path.read_text())
        if meta.get("key") == key:
            done.update(int(i) for i in meta["index"])
    return done


# ---------------------------------------------------------------------------------- the reader
@dataclass
class IndexGroup:
    """One module group's folder: its manifest, basis and finished parts."""

    directory: Path
    manifest: dict[str, Any]
    basis: IndexBasis

    @property
    def modules(self) -> list[str]:
        return [m["name"] for m in self.manifest["modules"]]

    def parts(self) -> list[dict[str, Any]]:
        key = self.manifest["key"]
        out = []
        for _, _, path in _part_files(self.directory):
            meta = json.loads(path.read_text())
            if meta.get("key") == key:
                out.append({**meta, "stem": path.name[: -len(".json")]})
        return out


class TrainingIndex:
    """Every module group of a stored index (``index_dir`` and its ``partition-*`` sub-folders)."""

    def __init__(self, groups: list[IndexGroup]) -> None:
        self.groups = groups
        first = groups[0].manifest
        self.kind, self.rank, self.dtype = first["kind"], int(first["rank"]), first["dtype"]

    @classmethod
    def open(cls, directory: str | Path) -> "TrainingIndex":
        directory = Path(directory)
        candidates = [directory, *sorted(p for p in directory.glob("partition-*") if p.is_dir())]
        groups = []
        for folder in candidates:
            manifest_file = folder / "manifest.json"
            if manifest_file.exists():
                manifest = json.loads(manifest_file.read_text())
                if manifest.get("format") != INDEX_FORMAT:
                    raise IndexMismatchError(f"training index {folder} has format {manifest.get('format')}, this "
                                             f"infra-pl reads format {INDEX_FORMAT}. {_rebuild_hint(folder)}")
                groups.append(IndexGroup(folder, manifest, IndexBasis.load(folder / "basis.safetensors", manifest)))
        if not groups:
            raise FileNotFoundError(f"no training index under {directory} (no manifest.json): write one with "
                                    "InfluenceScores index: true (an instance pass), then score with from_index: true")
        owners: dict[str, list[str]] = {}
        for group in groups:
            for name in group.modules:
                owners.setdefault(name, []).append(str(group.directory))
        twice = {name: where for name, where in owners.items() if len(where) > 1}
        if twice:
            name, where = next(iter(twice.items()))
            raise IndexMismatchError(f"the index under {directory} holds {len(twice)} module(s) in more than one "
                                     f"folder (e.g. {name} in {where}): an index written with and without module "
                                     "partitions; delete the stale folder (or the whole index and write it again)")
        settings = {(g.manifest["kind"], g.manifest["rank"], g.manifest["dtype"]) for g in groups}
        if len(settings) > 1:
            raise IndexMismatchError(f"the module groups under {directory} were written with different settings "
                                     f"{sorted(settings)}")
        return cls(groups)

    @property
    def modules(self) -> list[str]:
        return [name for group in self.groups for name in group.modules]

    def full_rank(self) -> bool:
        return all(group.manifest.get("full_rank") for group in self.groups)

    def describe(self) -> dict[str, Any]:
        """What every output scored from this index records about it."""
        first = self.groups[0].manifest
        info = {"index": str(self.groups[0].directory if len(self.groups) == 1 else self.groups[0].directory.parent),
                "kind": self.kind, "rank": self.rank, "dtype": self.dtype, "exact": self.full_rank(),
                "bytes_per_example": sum(g.manifest["bytes_per_example"] for g in self.groups),
                "factors": first.get("factors")}
        sums = [g.manifest.get("basis_info", {}).get("sums") for g in self.groups]
        if self.kind == "eigen" and all(sums):
            for what, label in (("energy", "kept_energy"), ("effective", "kept_effective_directions")):
                kept, total = sum(s[what][0] for s in sums), sum(s[what][1] for s in sums)
                info[label] = kept / total if total > 0 else 1.0
        return info

    def check(self, model_fingerprint: str | None, data_fingerprint: str | None, n_train: int | None = None) -> None:
        """Raise :class:`IndexMismatchError` unless the index was written for these weights and training set."""
        problems = []
        for group in self.groups:
            stored_model, stored_data = group.manifest.get("model_fingerprint"), group.manifest.get("data_fingerprint")
            if stored_model is not None and model_fingerprint is not None and stored_model != model_fingerprint:
                problems.append(f"{group.directory}: written for other model weights")
            if stored_data is not None and data_fingerprint is not None and stored_data != data_fingerprint:
                problems.append(f"{group.directory}: written for another training set (ids differ)")
            if n_train is not None and group.manifest.get("n_train") not in (None, n_train):
                problems.append(f"{group.directory}: written for {group.manifest['n_train']} training examples, "
                                f"there are {n_train}")
        if problems:
            raise IndexMismatchError("the training index does not match: " + "; ".join(problems) + ". "
                                     + _rebuild_hint(self.groups[0].directory))

    def indices(self, modules: Iterable[str] | None = None) -> set[int]:
        """Examples held by every group that holds one of ``modules`` (default: all groups)."""
        wanted = set(modules) if modules is not None else None
        result: set[int] | None = None
        for group in self.groups:
            if wanted is not None and not wanted & set(group.modules):
                continue
            held = {int(i) for part in group.parts() for i in part["index"]}
            result = held if result is None else result & held
        return result or set()

    def scores(self, directions: Directions, verify_parts: bool = True) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Scores of every indexed example for ``directions``: (example indices, ids, [N, M] float64).

        Each of the directions' modules must be in the index; every group's rows are read once
        from their memory-mapped parts, ``READ_ROWS`` at a time (memory stays flat in N).
        """
        missing = [n for n in directions.per_module if n not in self.modules]
        if missing:
            raise IndexMismatchError(f"the training index has no rows for modules {missing} (it holds "
                                     f"{len(self.modules)} modules)")
        m = len(directions.names)
        totals: dict[int, np.ndarray] = {}
        ids: dict[int, str] = {}
        seen_per_group: list[set[int]] = []
        for group in self.groups:
            names = [n for n in group.modules if n in directions.per_module]
            if not names:
                continue
            layout = {mod["name"]: (j, mod["offset"], mod["size"]) for j, mod in enumerate(group.manifest["modules"])}
            projected = group.basis.subset(names).project(directions.restrict(names).to("cpu"))
            queries = {n: projected[n].t().contiguous().numpy() for n in names}  # [size, M]
            seen: set[int] = set()
            for part in group.parts():
                stem = group.directory / part["stem"]
                values_file = stem.with_name(stem.name + ".npy")
                if verify_parts:
                    verify(values_file, part["sha256"].get("values"), "index part", _rebuild_hint(group.directory))
                values = np.load(values_file, mmap_mode="r")
                scales = None
                if "scales" in part["sha256"]:
                    scales_file = stem.with_name(stem.name + ".scales.npy")
                    if verify_parts:
                        verify(scales_file, part["sha256"]["scales"], "index part", _rebuild_hint(group.directory))
                    scales = np.load(scales_file)
                if values.shape != (part["rows"], group.manifest["row_size"]):
                    raise IndexMismatchError(f"index part {values_file} has shape {values.shape}, its json says "
                                             f"({part['rows']}, {group.manifest['row_size']}). "
                                             + _rebuild_hint(group.directory))
                keep = [r for r, i in enumerate(part["index"]) if int(i) not in seen]  # a rescored example: first row wins
                for start in range(0, len(keep), READ_ROWS):
                    chunk = keep[start : start + READ_ROWS]
                    contiguous = chunk == list(range(chunk[0], chunk[0] + len(chunk)))
                    block = values[chunk[0] : chunk[0] + len(chunk)] if contiguous else values[chunk]
                    block = np.asarray(block, dtype=np.float32)
                    out = np.zeros((len(chunk), m), dtype=np.float64)
                    for name in names:
                        j, offset, size = layout[name]
                        term = (block[:, offset : offset + size] @ queries[name]).astype(np.float64)
                        if scales is not None:
                            term *= scales[chunk, j][:, None]
                        out += term
                    for r, row in zip(chunk, out):
                        index = int(part["index"][r])
                        totals[index] = totals.get(index, 0.0) + row
                        ids[index] = part["id"][r]
                seen.update(int(i) for i in part["index"])
            seen_per_group.append(seen)
        common = set.intersection(*seen_per_group) if seen_per_group else set()
        order = np.array(sorted(common), dtype=np.int64)
        matrix = np.stack([totals[int(i)] for i in order]) if len(order) else np.zeros((0, m))
        return order, [ids[int(i)] for i in order], matrix


# ------------------------------------------------------------------------------------ planning
def index_bytes_per_example(shapes: Iterable[tuple[int, int]], rank: int, dtype: str = "float16") -> int:
    """Bytes of one example's index row: Σ_modules min(k, out)·min(k, in)·itemsize (+ block scales)."""
    itemsize = np.dtype(INDEX_DTYPES[dtype]).itemsize
    shapes = list(shapes)
    values = sum(min(rank, out) * min(rank, inp) for out, inp in shapes) * itemsize
    return values + (4 * len(shapes) if dtype in SCALED_DTYPES else 0)


def model_index_bytes(config: str | Path | Mapping[str, Any], rank: int, dtype: str = "float16",
                      modules: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Estimated index size per example for a model config (the planner's meta model: no weights)."""
    from infra_pl.planner.model import load_config, meta_model, tracked_modules

    model = meta_model(load_config(config))
    tracked = tracked_modules(model, modules)
    shapes = [(m.out_features, m.in_dim) for m in tracked]
    return {"modules": len(tracked), "rank": rank, "dtype": dtype,
            "bytes_per_example": index_bytes_per_example(shapes, rank, dtype),
            "gradient_bytes_per_example": sum(o * i for o, i in shapes) * 2}  # one 16-bit gradient, for scale
