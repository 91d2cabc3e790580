"""The fitted EK-FAC approximation and the one operation scoring needs from it: H⁻¹ v.

Per module, H ≈ (Q_S ⊗ Q_A) diag(Λ) (Q_S ⊗ Q_A)^T, and the damped inverse applied to a gradient
matrix G [out, in(+1)] is  Q_S [(Q_S^T G Q_A) / (Λ + λ)] Q_A^T.  With row-major flattening of G
(index o·in + i) this is exactly the Kronecker product in the order Q_S ⊗ Q_A, because
vec_row(Q_S R Q_A^T) = (Q_S ⊗ Q_A) vec_row(R).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from infra_pl.ekfac.covariance import CovarianceState
from infra_pl.ekfac.eigen import EigenBasis
from infra_pl.ekfac.fingerprint import data_fingerprint, model_fingerprint, module_fingerprints, untracked_fingerprint
from infra_pl.ekfac.lambdas import LambdaState
from infra_pl.ekfac.modules import LayerShape, layer_shape, resolve_modules
from infra_pl.ekfac.storage import read_factors, save_factors

HEURISTIC_DAMPING_SCALE = 0.1  # λ = 0.1 · mean(Λ), kronfluence's default when no damping is given
MIN_DAMPING = 1e-12  # floor when Λ is identically zero (e.g. an untrained LoRA B = 0)


class FactorsMismatchError(ValueError):
    """Saved factors do not belong to this model / module set / training set."""


@dataclass
class ModuleFactors:
    """Everything fitted for one tracked module (tensors in the factors' dtype)."""

    shape: LayerShape
    activation_covariance: torch.Tensor  # A [in(+1), in(+1)], normalised
    gradient_covariance: torch.Tensor  # S [out, out], normalised
    eigen: EigenBasis
    lambdas: torch.Tensor  # Λ [out, in(+1)], mean over sequences
    damping: float
    n_tokens: int  # non-padding tokens behind A
    n_gradient_tokens: int  # tokens behind S (equal to n_tokens without checkpoint re-runs)
    n_sequences: int  # sequences behind Λ

    def precondition(self, grad: torch.Tensor) -> torch.Tensor:
        """(Q_S ⊗ Q_A)(Λ + λ)⁻¹(Q_S ⊗ Q_A)^T applied to [out, in(+1)] or [N, out, in(+1)] gradients."""
        if tuple(grad.shape[-2:]) != self.shape.matrix_shape:
            raise ValueError(f"gradient of shape {tuple(grad.shape)} does not match {self.shape.matrix_shape}")
        dtype = torch.promote_types(grad.dtype, self.lambdas.dtype)
        q_a = self.eigen.activation_eigenvectors.to(device=grad.device, dtype=dtype)
        q_s = self.eigen.gradient_eigenvectors.to(device=grad.device, dtype=dtype)
        denominator = self.lambdas.to(device=grad.device, dtype=dtype) + self.damping
        rotated = q_s.t() @ grad.to(dtype) @ q_a
        rotated.div_(denominator)  # in place: a fresh tensor, and the gradient-sized buffer is the costly part
        return q_s @ rotated @ q_a.t()


def resolve_damping(lambdas: torch.Tensor, damping: float | None) -> float:
    """Fixed damping if given, else the heuristic 0.1 · mean(Λ) (floored above zero)."""
    if damping is not None:
        if damping < 0:
            raise ValueError(f"damping must be non-negative, got {damping}")
        return float(damping)
    return max(HEURISTIC_DAMPING_SCALE * float(lambdas.double().mean()), MIN_DAMPING)


def damping_rule(damping: float | None) -> str:
    """Human-readable rule recorded in the manifest."""
    return f"heuristic:{HEURISTIC_DAMPING_SCALE}*mean(lambda)" if damping is None else f"fixed:{float(damping)!r}"


@dataclass
class Factors:
    """EK-FAC factors for a set of modules, with the provenance needed to trust them later."""

    modules: dict[str, ModuleFactors]
    fisher: str
    damping_rule: str
    dtype: torch.dtype
    model_fingerprint: str | None = None
    module_fingerprints: dict[str, str] = field(default_factory=dict)
    untracked_fingerprint: str | None = None
    data_fingerprint: str | None = None
    # operand dtype of the passes' products (infra_pl.ekfac.precision): provenance, so reuse can tell
    compute_dtype: str = "float32"
    # which positions' activations A covers: every real token ("all") or those that predict a target
    activation_tokens: str = "all"
    # the covariance/lambda subsample settings (None: every training example)
    sample: dict | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_states(
        cls,
        covariance: CovarianceState,
        eigen: Mapping[str, EigenBasis],
        lambdas: LambdaState,
        *,
        fisher: str,
        damping: float | None = None,
        model: nn.Module | None = None,
        tracked: Mapping[str, nn.Module] | None = None,
        train_ids: Iterable[object] | None = None,
        compute_dtype: str = "float32",
        activation_tokens: str = "all",
        sample: dict | None = None,
    ) -> "Factors":
        """Normalise the phase states, resolve damping, and fingerprint the model/data if given."""
        per_module: dict[str, ModuleFactors] = {}
        for name, shape in covariance.shapes.items():
            lam = lambdas.lambdas(name)
            dmp = resolve_damping(lam, damping)
            if damping is None and float(lam.abs().max()) == 0.0:
                warnings.warn(f"Λ of module {name!r} is all zero (no gradient signal); damping floored to {dmp}")
            per_module[name] = ModuleFactors(
                shape=shape,
                activation_covariance=covariance.activation_covariance(name),
                gradient_covariance=covariance.gradient_covariance(name),
                eigen=eigen[name],
                lambdas=lam,
                damping=dmp,
                n_tokens=int(covariance.activation_counts[name]),
                n_gradient_tokens=int(covariance.gradient_counts[name]),
                n_sequences=int(lambdas.n_sequences),
            )
        dtype = next(iter(per_module.values())).lambdas.dtype
        factors = cls(modules=per_module, fisher=fisher, damping_rule=damping_rule(damping), dtype=dtype,
                      compute_dtype=compute_dtype, activation_tokens=activation_tokens, sample=sample)
        return factors.fingerprint(model, tracked, train_ids)

    def fingerprint(
        self, model: nn.Module | None, tracked: Mapping[str, nn.Module] | None, train_ids: Iterable[object] | None = None
    ) -> "Factors":
        """Record (in place) which model weights and training set these factors belong to; returns self.

        A merged partitioned fit calls this with the whole tracked set: each part's own
        fingerprints treat the other parts' modules as untracked.
        """
        if model is not None and tracked is not None:
            self.model_fingerprint = model_fingerprint(model, tracked)
            self.module_fingerprints = module_fingerprints(tracked)
            self.untracked_fingerprint = untracked_fingerprint(model, tracked)
        if train_ids is not None:
            self.data_fingerprint = data_fingerprint(train_ids)
        return self

    def with_damping(self, damping: float | None) -> "Factors":
        """Same factors with another damping (fixed value, or None for the heuristic); no refit."""
        modules = {n: replace(m, damping=resolve_damping(m.lambdas, damping)) for n, m in self.modules.items()}
        return replace(self, modules=modules, damping_rule=damping_rule(damping))

    def to(self, device: torch.device | str, covariances: bool = True) -> "Factors":
        """Copy of the factors with every tensor on ``device``.

        ``covariances=False`` leaves A and S where they are: preconditioning reads only the
        eigenbases and Λ, and at 8B scale A and S are a fifth of the factors' memory.
        """

        def move(m: ModuleFactors) -> ModuleFactors:
            eig = EigenBasis(**{k: v.to(device) for k, v in vars(m.eigen).items()})
            return replace(
                m,
                activation_covariance=m.activation_covariance.to(device) if covariances else m.activation_covariance,
                gradient_covariance=m.gradient_covariance.to(device) if covariances else m.gradient_covariance,
                eigen=eig,
                lambdas=m.lambdas.to(device),
            )

        return replace(self, modules={n: move(m) for n, m in self.modules.items()})

    # -- use ----------------------------------------------------------------------------------
    def precondition(self, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """H⁻¹ g per module for gradients in the [out, in(+1)] (or [N, out, in(+1)]) layout."""
        unknown = [n for n in grads if n not in self.modules]
        if unknown:
            raise KeyError(f"no factors for modules {unknown}; factors cover {list(self.modules)}")
        return {name: self.modules[name].precondition(grad) for name, grad in grads.items()}

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write covariance/eigen/lambda safetensors and ``manifest.json`` into ``directory``."""
        return save_factors(self, directory)

    @classmethod
    def load(
        cls, directory: str | Path, device: torch.device | str = "cpu", modules: Iterable[str] | None = None
    ) -> "Factors":
        """Read factors written by :meth:`save` (or a partitioned fit); ``modules``: only these."""
        per_module, fields = read_factors(directory, device=device, modules=modules)
        return cls(modules={name: ModuleFactors(**meta) for name, meta in per_module.items()}, **fields)

    def subset(self, names: Iterable[str]) -> "Factors":
        """The factors of some modules only (tensors shared, not copied), e.g. one partition."""
        names = list(names)
        unknown = [n for n in names if n not in self.modules]
        if unknown:
            raise KeyError(f"no factors for modules {unknown}; factors cover {list(self.modules)}")
        return replace(self, modules={n: self.modules[n] for n in names})

    @classmethod
    def merge(cls, parts: Sequence["Factors"]) -> "Factors":
        """One Factors from per-partition fits over disjoint module groups (fingerprints left to the caller)."""
        if not parts:
            raise ValueError("no factors to merge")
        first = parts[0]
        modules: dict[str, ModuleFactors] = {}
        for part in parts:
            if (part.fisher, part.dtype, part.compute_dtype, part.activation_tokens) != (
                    first.fisher, first.dtype, first.compute_dtype, first.activation_tokens):
                raise ValueError("cannot merge factors fitted with different Fisher types or dtypes")
            overlap = set(modules) & set(part.modules)
            if overlap:
                raise ValueError(f"modules {sorted(overlap)} appear in more than one partition")
            modules.update(part.modules)
        return replace(first, modules=modules, model_fingerprint=None, module_fingerprints={}, untracked_fingerprint=None)

    # -- validation -----------------------------------------------------------------------------
    def check_compatible(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module] | str | Sequence[str] | None = None,
        train_ids: Iterable[object] | None = None,
        strict: bool = True,
    ) -> list[str]:
        """Raise :class:`FactorsMismatchError` naming every difference (warn instead if not strict).

        Compares module names, shapes, weight fingerprints (per module, plus all untracked
        parameters) and, when ``train_ids`` is given, the training-set fingerprint. Returns the
        list of differences (empty when compatible).
        """
        if modules is None:  # the factors' own module names; absent ones are reported, not raised
            present = dict(model.named_modules())
            tracked = {n: present[n] for n in self.modules if n in present}
        else:
            tracked = resolve_modules(model, modules)
        problems = self._differences(model, tracked, train_ids)
        if problems:
            message = "EK-FAC factors do not match: " + "; ".join(problems)
            if strict:
                raise FactorsMismatchError(message + " (pass strict=False to use them anyway)")
            warnings.warn(message)
        return problems

    def _differences(
        self, model: nn.Module, tracked: Mapping[str, nn.Module], train_ids: Iterable[object] | None
    ) -> list[str]:
        problems: list[str] = []
        missing = [n for n in tracked if n not in self.modules]
        extra = [n for n in self.modules if n not in tracked]
        if missing or extra:
            problems.append(f"module names differ (not in factors: {missing}; not in model: {extra})")
        common = [n for n in tracked if n in self.modules]
        shapes = {n: layer_shape(tracked[n]) for n in common}
        wrong_shape = [
            f"{n} {self.modules[n].shape.matrix_shape} vs {shapes[n].matrix_shape}"
            for n in common
            if shapes[n] != self.modules[n].shape
        ]
        if wrong_shape:
            problems.append(f"module shapes differ: {wrong_shape}")
        if self.module_fingerprints:
            now = module_fingerprints({n: tracked[n] for n in common})
            changed = [n for n in common if n in self.module_fingerprints and now[n] != self.module_fingerprints[n]]
            if changed:
                problems.append(f"weight fingerprint differs for modules {changed}")
        if self.untracked_fingerprint is not None and not missing and not extra:
            if untracked_fingerprint(model, tracked) != self.untracked_fingerprint:
                problems.append("weight fingerprint differs for parameters outside the tracked modules")
        if train_ids is not None:
            if self.data_fingerprint is None:
                warnings.warn("factors were saved without a training-set fingerprint; cannot check the data")
            elif data_fingerprint(train_ids) != self.data_fingerprint:
                problems.append("training-set fingerprint (sorted example ids) differs")
        return problems
