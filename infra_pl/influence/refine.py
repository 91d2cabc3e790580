"""Refined measurement directions: v = (F + λ)⁻¹∇f by preconditioned conjugate gradient (PCG).

EK-FAC approximates the damped Fisher F + λ of the tracked modules by a Kronecker-factored
eigenbasis; that approximation, not the arithmetic, is what limits how close the scores come to
exact influence. A measurement direction is computed once per measurement (M is small), so it can
afford a few iterations of CG on the *real* damped Fisher, started from and preconditioned by
EK-FAC. CG's fixed point is the exact damped inverse applied to ∇f (the same damping λ per module
as EK-FAC, so refining changes the approximation, not the problem).

The Fisher here is the one EK-FAC estimates: F = (1/N) Σ_n G_n G_nᵀ over per-sequence gradients
G_n = ∇L(z_n) of the tracked modules (data labels for the empirical Fisher; for the true Fisher,
labels sampled from the model with one fixed seed per sequence, so every product uses the same
matrix). ``blocks="module"`` keeps F block-diagonal per module (what EK-FAC approximates);
``"all"`` includes the cross-module blocks. A Fisher-vector product needs no stored per-example
gradients: one hooked backward per batch gives each module's activations a_t and output gradients
g_t, G_n = Σ_t g_t a_tᵀ per sequence, s_n = ⟨G_n, u⟩ and F u = (1/N) Σ_n s_n G_n.

Plain torch; passes go through a :class:`~infra_pl.runner.Runner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.gradients import sequence_gradients
from infra_pl.ekfac.loss import LossFn, label_seeds
from infra_pl.ekfac.passes import batch_size, capture_pass, eval_mode
from infra_pl.influence.measurement import Directions
from infra_pl.runner import Pass, Runner

REFINE = "influence/refine"
Vectors = dict[str, torch.Tensor]  # {module: [M, out, in(+1)]}


class IdentityPreconditioner:
    """H⁻¹ = I: v = ∇f, so S(z) = ∇fᵀ∇log p(z) (the gradient dot product; also how raw query
    gradients come out of :func:`infra_pl.influence.query_directions` for refinement)."""

    def precondition(self, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: grad.clone() for name, grad in grads.items()}


class RefinementError(ValueError):
    """CG cannot go on: a non-finite residual, or curvature that is not positive (named in the message)."""


@dataclass
class RefineResult:
    """Refined directions and how CG got there (for the log, TensorBoard and the score metadata)."""

    directions: Directions
    residuals: dict[str, list[float]]  # per measurement: ‖b − A x‖/‖b‖ at the start and after each iteration
    iterations: int
    stop_reason: str
    passes: int  # Fisher-vector-product passes over the refinement examples
    examples: int  # sequences behind F
    history: list[dict[str, Any]] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """What goes into ``measurement_info.json`` per measurement."""
        return {"iterations": self.iterations, "stop_reason": self.stop_reason, "passes": self.passes,
                "examples": self.examples}


def sequence_seeds(seed: int, indices: Iterable[int]) -> list[int]:
    """One label-sampling seed per sequence from its example index: the same labels in every product."""
    return [(seed * 1_000_003 + int(i) * 7_919 + 1) % 2**62 for i in indices]


class FisherProduct:
    """u ↦ Σ_n s_n G_n over batches (s_n = ⟨G_n, u⟩ per module or summed over modules), plus the count."""

    def __init__(self, model: nn.Module, tracked: Mapping[str, nn.Module], loss_fn: LossFn, fisher: str,
                 blocks: str = "module", seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        if fisher not in ("true", "empirical"):
            raise ValueError(f"fisher must be 'true' or 'empirical', got {fisher!r}")
        if blocks not in ("module", "all"):
            raise ValueError(f"blocks must be 'module' (block-diagonal) or 'all' (with cross-module blocks), got {blocks!r}")
        self.model, self.tracked, self.loss_fn = model, dict(tracked), loss_fn
        self.fisher, self.blocks, self.seed, self.dtype = fisher, blocks, seed, dtype

    def batch(self, batch: Mapping[str, Any], vectors: Vectors) -> tuple[Vectors, int]:
        """Σ_n s_n G_n of one batch for every vector (rows of ``vectors``), and the batch's sequence count."""
        grads: dict[str, torch.Tensor] = {}

        def keep(name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
            grads[name] = sequence_gradients(activations.to(self.dtype), output_grads.to(self.dtype))  # [B, out, in]

        seeds = None
        if self.fisher == "true":
            indices = batch["index"].tolist() if "index" in batch else range(batch_size(batch))
            seeds = sequence_seeds(self.seed, indices)
        capture = Capture(self.tracked, on_pair=keep, dtype=self.dtype)
        with eval_mode(self.model), capture, label_seeds(seeds):
            capture_pass(self.model, batch, self.loss_fn, capture, sample_labels=self.fisher == "true")
        dots = {name: torch.einsum("boi,moi->bm", g, vectors[name].to(g)) for name, g in grads.items()}  # [B, M]
        if self.blocks == "all":
            total = sum(dots.values())
            dots = {name: total for name in dots}
        return {name: torch.einsum("bm,boi->moi", dots[name], g) for name, g in grads.items()}, batch_size(batch)


def fisher_product(runner: Runner, loader: Callable[[], Iterable[Any]], product: FisherProduct, vectors: Vectors,
                   damping: Mapping[str, float]) -> tuple[Vectors, int]:
    """(F + λ) u for every row of ``vectors`` and the number of sequences behind F: one pass over
    ``loader()``, summed over ranks."""
    sums = {name: torch.zeros_like(v) for name, v in vectors.items()}
    count = torch.zeros((), dtype=torch.float64, device=runner.device)

    def step(batch: Any) -> None:
        nonlocal count
        part, n = product.batch(batch, vectors)
        for name, value in part.items():
            sums[name] += value.to(sums[name])
        count += n

    runner.run(Pass(REFINE, step, label="refine: Fisher-vector product"), loader())
    runner.all_reduce_sum_([*sums.values(), count])
    n = float(count)
    if n == 0:
        raise RefinementError("the refinement examples are empty: no Fisher-vector product can be formed")
    return {name: sums[name] / n + damping[name] * vectors[name] for name in vectors}, int(n)


def _dots(a: Vectors, b: Vectors, systems: list[list[str]]) -> torch.Tensor:
    """Inner products per row and system (a group of modules solved together): [M, G] (float64)."""
    return torch.stack([sum((a[n].double() * b[n].double()).flatten(1).sum(dim=1) for n in group) for group in systems],
                       dim=1)


def _scaled(coefficients: torch.Tensor, x: Vectors, systems: list[list[str]]) -> Vectors:
    """x with every (row, system) block multiplied by its coefficient ([M, G])."""
    out = {}
    for g, group in enumerate(systems):
        for n in group:
            out[n] = coefficients[:, g].to(x[n]).view(-1, 1, 1) * x[n]
    return out


def conjugate_gradient(
    apply_a: Callable[[Vectors], Vectors],
    precondition: Callable[[Vectors], Vectors],
    b: Vectors,
    names: list[str],
    iterations: int,
    tolerance: float,
    state: dict[str, Any] | None = None,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
    systems: list[list[str]] | None = None,
) -> tuple[Vectors, dict[str, Any]]:
    """Preconditioned CG for A x = b, started at M⁻¹b, one independent system per row (measurement)
    and per module group in ``systems`` (default: all modules together).

    With a block-diagonal A, one system per module (``[[m] for m in modules]``) makes the result
    independent of how modules are grouped into partitions. A system stops moving once its
    ‖r‖/‖b‖ ≤ ``tolerance``; the loop ends when all have, or after ``iterations`` updates. The
    residual reported per row is over all modules. ``state`` (from ``on_iteration``) resumes an
    interrupted run. Returns x and the final state, with ``stop_reason`` "tolerance" or "iterations".
    """
    systems = systems or [list(b)]
    b_norm = _dots(b, b, systems).sqrt().clamp_min(1e-300)  # [M, G]
    row_norm = b_norm.square().sum(dim=1).sqrt()

    def relative(r: Vectors) -> tuple[torch.Tensor, list[float]]:
        rr = _dots(r, r, systems)
        return rr.sqrt() / b_norm, (rr.sum(dim=1).sqrt() / row_norm).tolist()

    if state is None:
        x = precondition(b)  # EK-FAC's answer is the starting point
        r = {n: b[n] - ax for n, ax in apply_a(x).items()}
        z = precondition(r)
        p = {n: v.clone() for n, v in z.items()}
        per_system, per_row = relative(r)
        state = {"x": x, "r": r, "z": z, "p": p, "rz": _dots(r, z, systems), "iteration": 0, "system_residuals": per_system,
                 "residuals": {name: [per_row[m]] for m, name in enumerate(names)}, "passes": 1}
        _check_finite(state, names)
        if on_iteration is not None:
            on_iteration(state)
    while state["iteration"] < iterations:
        done = state["system_residuals"] <= tolerance  # [M, G]
        if bool(done.all()):
            break
        x, r, p, rz = state["x"], state["r"], state["p"], state["rz"]
        ap = apply_a(p)
        curvature = _dots(p, ap, systems)
        if bool((curvature[~done] <= 0).any()):
            bad = sorted({names[m] for m, g in (curvature <= 0).logical_and(~done).nonzero().tolist()})
            raise RefinementError(f"CG met non-positive curvature pᵀ(F+λ)p for {bad} at iteration "
                                  f"{state['iteration'] + 1}; raise the damping")
        zero = torch.zeros_like(rz)
        alpha = torch.where(done, zero, rz / curvature.clamp_min(1e-300))
        step_x, step_r = _scaled(alpha, p, systems), _scaled(alpha, ap, systems)
        x = {n: x[n] + step_x[n] for n in x}
        r = {n: r[n] - step_r[n] for n in r}
        z = precondition(r)
        rz_new = _dots(r, z, systems)
        beta = torch.where(done, zero, rz_new / rz.clamp_min(1e-300))
        kept = _scaled(beta, p, systems)
        frozen = {n: done[:, g].view(-1, 1, 1) for g, group in enumerate(systems) for n in group}
        p = {n: torch.where(frozen[n].to(p[n].device), p[n], z[n] + kept[n]) for n in p}
        per_system, per_row = relative(r)
        state.update(x=x, r=r, z=z, p=p, rz=rz_new, iteration=state["iteration"] + 1, passes=state["passes"] + 1,
                     system_residuals=torch.where(done, state["system_residuals"], per_system))
        for m, name in enumerate(names):
            state["residuals"][name].append(per_row[m])
        _check_finite(state, names)
        if on_iteration is not None:
            on_iteration(state)
    converged = bool((state["system_residuals"] <= tolerance).all())
    state["stop_reason"] = "tolerance" if converged else "iterations"
    return state["x"], state


def _check_finite(state: dict[str, Any], names: list[str]) -> None:
    for name in names:
        value = state["residuals"][name][-1]
        if not math.isfinite(value):
            raise RefinementError(f"CG residual of measurement {name!r} is {value} at iteration {state['iteration']}: "
                                  "non-finite gradients or factors (check the model in float32, or raise the damping)")


def stack_gradients(gradients: Mapping[str, Mapping[str, torch.Tensor]]) -> Directions:
    """{measurement: {module: [out, in]}} -> :class:`Directions` with [M, out, in] per module."""
    names = list(gradients)
    modules = list(gradients[names[0]])
    return Directions(names, {m: torch.stack([gradients[n][m] for n in names]) for m in modules})


def refine_directions(
    runner: Runner,
    loader: Callable[[], Iterable[Any]],
    factors: Any,
    product: FisherProduct,
    gradients: Directions,
    iterations: int,
    tolerance: float,
    state: dict[str, Any] | None = None,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> RefineResult:
    """v_m = (F + λ)⁻¹∇f_m for every row m of ``gradients`` (∇f, stacked) by PCG on ``product``'s modules.

    ``factors`` (EK-FAC, with the damping λ of every module) precondition and give the start;
    ``loader()`` yields the refinement examples (every rank its shard). ``iterations=0`` returns
    EK-FAC's directions after one product, with the residual that says how far they are from the
    exact damped inverse. ``state``/``on_iteration``: resume from and save after every iteration.
    """
    names = list(gradients.names)
    modules = list(product.tracked)
    device = runner.device
    b = {m: gradients.per_module[m].to(device=device, dtype=product.dtype) for m in modules}
    damping = {m: float(factors.modules[m].damping) for m in modules}
    seen = {"examples": int((state or {}).get("examples", 0))}

    def precondition(vectors: Vectors) -> Vectors:
        return {m: v.to(device=device, dtype=product.dtype) for m, v in factors.precondition(vectors).items()}

    def apply_a(u: Vectors) -> Vectors:
        result, seen["examples"] = fisher_product(runner, loader, product, u, damping)
        return result

    def record(current: dict[str, Any]) -> None:
        current["examples"] = seen["examples"]
        if on_iteration is not None:
            on_iteration(current)

    systems = [[m] for m in modules] if product.blocks == "module" else [modules]  # independent of partitions
    x, final = conjugate_gradient(apply_a, precondition, b, names, iterations, tolerance, state=state,
                                  on_iteration=record, systems=systems)
    return RefineResult(Directions(names, x), final["residuals"], final["iteration"], final["stop_reason"],
                        final["passes"], int(final.get("examples", seen["examples"])))


# ------------------------------------------------------------------ resume


def refinement_key(gradients: Directions, factors: Any, fisher: str, blocks: str, indices: list[int] | None,
                   seed: int) -> str:
    """What a stored CG state must match to be resumed: ∇f, the factors, the Fisher and its sample."""
    import hashlib
    import json

    digest = hashlib.sha256()
    digest.update(json.dumps([list(gradients.names), fisher, blocks, seed, indices, str(factors.model_fingerprint),
                              str(factors.data_fingerprint)]).encode())
    for name in sorted(gradients.per_module):
        tensor = gradients.per_module[name].detach().double().cpu()
        digest.update(f"{name}:{tensor.sum().item():.12e}:{tensor.abs().sum().item():.12e}".encode())
    for name in sorted(factors.modules):
        digest.update(f"{name}:{float(factors.modules[name].damping):.12e}".encode())
    return digest.hexdigest()[:24]


def save_refinement_state(path: Any, key: str, state: dict[str, Any]) -> None:
    """The CG state after an iteration, written atomically (a stop mid-write leaves the previous one)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: state[k] for k in ("x", "r", "z", "p", "rz", "iteration", "residuals", "passes", "examples",
                                  "system_residuals") if k in state}
    cpu = {k: ({n: t.detach().cpu() for n, t in v.items()} if isinstance(v, dict) and k in ("x", "r", "z", "p")
               else v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in keep.items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, **cpu}, tmp)
    tmp.replace(path)


def load_refinement_state(path: Any, key: str, device: torch.device) -> dict[str, Any] | None:
    """A stored CG state for this key (tensors on ``device``), or None."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return None
    stored = torch.load(path, map_location=device, weights_only=True)
    if stored.pop("key", None) != key:
        return None
    return stored
