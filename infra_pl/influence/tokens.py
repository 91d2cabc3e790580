"""Target-token scores (paper Eq. 9) from one forward-mode derivative per measurement.

s_t = ∇fᵀH⁻¹∇log p(z_t | z_<t) = v ᵀ∇log p(z_t | z_<t) is the directional derivative of
log p(z_t | z_<t) along v = H⁻¹∇f. Since v is one fixed direction per measurement, every s_t of a
sequence comes out of ONE Jacobian-vector product:  s_t = d/dα log p(z_t | z_<t; θ + α v) at α=0,
for all t at once, instead of one backward pass per target token.

How the perturbation θ + αv is applied without touching the model's parameters (default path):
forward-mode AD with dual tensors. For the pass, every plain linear layer (``nn.Linear``, HF
``Conv1D``) computes its output W p + b from the primal input p and its tangent by hand as W t,
plus V p for a tracked layer (V's last column is the bias part when the layer has a bias). That is
exactly the derivative of (W + αV)x(α) at α = 0, with two matmuls per layer (+1 when tracked):
forward AD through ``F.linear`` itself would also multiply p by a zero weight tangent, a third
matmul per layer. V is in the canonical [out, in(+1)] layout of the EK-FAC factors, in which
``F.linear`` computes ``p Vᵀ`` for both ``nn.Linear`` and ``Conv1D``, so the preconditioned
direction is used as is. A layer that runs twice (shared weights) gets the perturbation twice,
which is what perturbing its weight means.

Fallbacks: under ``inference_mode`` (dual tensors lose their tangents there) or with a tracked
layer of another type, a forward hook adds ``α · F.linear(input.detach(), V)`` to each tracked
layer's output and ``torch.func.jvp`` differentiates along the scalar α. For many directions,
``torch.func.vmap`` differentiates ``F.linear(input.detach(), D)`` at D = 0 with the batched v as
tangent, so the primal forward stays unbatched and shared.

Facts this relies on (DESIGN §3, re-checked by the tests):
* the fused SDPA kernels have no forward-mode rule, so the pass runs inside
  ``sdpa_kernel(SDPBackend.MATH)`` (eager attention is unaffected);
* ``torch.func.jvp`` keeps its tangents under ``no_grad`` and ``inference_mode`` (dual tensors of
  ``torch.autograd.forward_ad`` would silently lose them in ``inference_mode``), so the pass runs
  under ``no_grad`` and stores no autograd graph;
* measured (4-layer Llama, hidden 128, 2 x 16 x 128 tokens, one thread, CPU-time minima): one
  dual-tensor pass 1.3x the hooked instance pass (forward + backward), ``torch.func.jvp`` along α
  1.65x; for M=2 a loop of dual passes 1.70 s vs vmap 1.81 s.

Memory note: the tangent of the logits is [M, B, T, vocab] in float32, M times the primal
logits; ``chunk_size`` bounds how many directions are carried at once.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from infra_pl.allocator import mmap_large_buffers, release_free_heap
from infra_pl.ekfac.loss import LossFn, causal_lm_logits, causal_lm_loss
from infra_pl.ekfac.modules import is_conv1d, layer_shape
from infra_pl.ekfac.passes import batch_to_device, eval_mode, model_device
from infra_pl.influence.instance import position_contributions
from infra_pl.influence.measurement import Directions, Modules
from infra_pl.influence.packing import PackedResults
from infra_pl.log_likelihood import target_log_probs

LogitsFn = Callable[[nn.Module, Mapping[str, Any]], torch.Tensor]


class _Perturbation:
    """Forward hooks adding ``F.linear(input, D_name)`` to each tracked layer's output.

    ``current`` holds the D's of the call in progress (set inside the function being
    differentiated, so the hooks see torch.func's wrapped tensors); ``None`` outside it.
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)
        self.in_features = {name: layer_shape(m).in_features for name, m in self.modules.items()}
        self.has_bias = {name: layer_shape(m).has_bias for name, m in self.modules.items()}
        self.current: tuple[torch.Tensor | None, dict[str, torch.Tensor]] | None = None

    def _hook(self, name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.current is None:
            return output
        alpha, deltas = self.current
        # (W + D)x(α) has derivative W x' + D' x + D x' at D = 0; D x' vanishes there, so the input
        # is detached before the perturbation and that product (and its tangent) is never formed.
        x = inputs[0].detach()
        delta = deltas[name].to(x.dtype)
        n_in = self.in_features[name]
        bias = delta[:, n_in] if self.has_bias[name] else None
        if alpha is None:  # D itself is differentiated (primal 0, tangent v): primal stays shared under vmap
            return output + F.linear(x, delta[:, :n_in], bias)
        # D = αv with α a scalar (primal 0, tangent 1): V x is one matmul, and α· costs nothing.
        return output + alpha * F.linear(x, delta[:, :n_in], bias)

    @contextmanager
    def installed(self) -> Iterator["_Perturbation"]:
        handles = [m.register_forward_hook(partial(self._hook, n)) for n, m in self.modules.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.current = None


# Up to this many directions, one dual-tensor pass per direction beats torch.func.vmap over all of
# them (measured, 4-layer Llama, 2 x 16 x 128 tokens, one thread, CPU-time minima of 4: M=2 loop
# 1.70 s vs vmap 1.81 s; M=1: dual pass 1.72 s vs torch.func.jvp 2.18 s, instance pass 1.32 s).
DUAL_LOOP_MAX_DIRECTIONS = 2


def _patchable(module: nn.Module) -> bool:
    """Layers whose forward :func:`_dual_linears` may replace: plain ``nn.Linear`` and HF ``Conv1D``.

    Subclasses (quantised or otherwise customised linears) keep their own forward.
    """
    return type(module) is nn.Linear or is_conv1d(module)


def _dual_linear_forward(module: nn.Module, delta: torch.Tensor | None, n_in: int, x: torch.Tensor) -> torch.Tensor:
    """y = W p + b with tangent W t (+ V p for a tracked layer), for x = dual(p, t), in two matmuls.

    Forward-mode AD through ``F.linear`` with a dual input also multiplies the primal input by a
    zero weight tangent (three matmuls per layer, measured with torch 2.13 on CPU); computing the
    tangent by hand skips that product.
    """
    primal, tangent = fwAD.unpack_dual(x)
    if is_conv1d(module):
        output = torch.addmm(module.bias, primal.reshape(-1, primal.shape[-1]), module.weight).view(*primal.shape[:-1], -1)
        out_tangent = None if tangent is None else (tangent.reshape(-1, tangent.shape[-1]) @ module.weight).view(*tangent.shape[:-1], -1)
    else:
        output = F.linear(primal, module.weight, module.bias)
        out_tangent = None if tangent is None else F.linear(tangent, module.weight)
    if delta is not None:
        extra = F.linear(primal, delta[:, :n_in].to(primal.dtype), delta[:, n_in].to(primal.dtype) if delta.shape[1] > n_in else None)
        out_tangent = extra if out_tangent is None else out_tangent + extra
    return output if out_tangent is None else fwAD.make_dual(output, out_tangent)


@contextmanager
def _dual_linears(model: nn.Module, deltas: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Replace the forward of every plain linear layer by :func:`_dual_linear_forward` for one pass."""
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for name, module in model.named_modules():
            if _patchable(module):
                saved.append((module, module.__dict__.get("forward")))
                delta = deltas.get(name)
                n_in = layer_shape(module).in_features
                module.forward = partial(_dual_linear_forward, module, delta, n_in)
        yield
    finally:
        for module, original in saved:
            if original is None:
                del module.forward
            else:
                module.forward = original


def _dual_derivative(
    model: nn.Module, batch: Mapping[str, Any], deltas: Mapping[str, torch.Tensor],
    tracked: Mapping[str, nn.Module], logits_fn: LogitsFn,
) -> torch.Tensor:
    """s_t for one direction with forward-AD dual tensors: V p enters each tracked layer's tangent only.

    Compared with ``torch.func.jvp`` along α, the primal carries no α·(V p) terms and every linear
    layer costs two matmuls instead of three (see :func:`_dual_linear_forward`).
    """
    named = dict(model.named_modules())
    with fwAD.dual_level(), _dual_linears(model, {n: deltas[n] for n in tracked if named.get(n) is tracked[n]}):
        log_probs = target_log_probs(logits_fn(model, batch), batch["labels"])[0]
        tangent = fwAD.unpack_dual(log_probs).tangent
    if tangent is None:
        raise RuntimeError("no tracked layer influenced the log-probabilities; check the module selection")
    return tangent


def token_scores(
    model: nn.Module,
    batch: Mapping[str, Any],
    directions: Directions,
    modules: Modules = None,
    *,
    vectorize: bool = True,
    chunk_size: int | None = None,
    logits_fn: LogitsFn = causal_lm_logits,
) -> torch.Tensor:
    """Eq. 9 target-token scores s_t = v_mᵀ∇log p(z_t | z_<t): [M, B, T-1], float32.

    Position t is aligned with :func:`infra_pl.log_likelihood.target_log_probs`: it scores the label at
    input position t+1 (predicted from tokens ≤ t); non-targets and padding are exactly 0.
    Σ_t s_t equals :func:`instance_scores` for the same sequence. One JVP per measurement: a
    forward-AD dual-tensor pass each for up to ``DUAL_LOOP_MAX_DIRECTIONS`` directions, else all M
    vectorised with ``torch.func.vmap`` (``vectorize=False``: always a loop; ``chunk_size`` bounds
    how many tangents vmap carries at once, for memory). Under ``inference_mode`` (where dual
    tensors lose their tangents) ``torch.func.jvp`` is used. The model is left as it was: hooks removed,
    training flags restored, no ``.grad``.
    """
    tracked = directions.modules_of(model, modules)
    names = list(tracked)
    device = model_device(model)
    batch = batch_to_device(batch, device)
    dtypes = [tracked[n].weight.dtype for n in names]
    tangents = tuple(directions.per_module[n].to(device=device, dtype=dt) for n, dt in zip(names, dtypes))
    perturbation = _Perturbation(tracked)
    # Differentiate along the scalar α of θ + αv (primal 0, tangent 1), with v held in the hooks.
    alpha0 = torch.zeros((), device=device)
    dalpha = torch.ones((), device=device)

    def log_probs(alpha: torch.Tensor | None, deltas: tuple[torch.Tensor, ...]) -> torch.Tensor:
        perturbation.current = (alpha, dict(zip(names, deltas)))
        try:
            logits = logits_fn(model, batch)
        finally:
            perturbation.current = None
        return target_log_probs(logits, batch["labels"])[0]  # fp32, already multiplied by the mask

    vmapped = vectorize and len(directions) > DUAL_LOOP_MAX_DIRECTIONS
    # Dual tensors lose their tangents under inference_mode, and only plain linears are patched.
    dual = not vmapped and not torch.is_inference_mode_enabled() and all(_patchable(m) for m in tracked.values())

    def derivative(*direction: torch.Tensor) -> torch.Tensor:
        if dual:
            return _dual_derivative(model, batch, dict(zip(names, direction)), tracked, logits_fn)
        # torch.func along α with v fixed, through the perturbation hooks.
        return torch.func.jvp(lambda alpha: log_probs(alpha, direction), (alpha0,), (dalpha,))[1]

    # Several directions under vmap: differentiate D at 0 with the batched v as tangent, so the
    # primal forward is not batched (with α, v would make every primal activation batched).
    primals = tuple(
        torch.zeros(layer_shape(tracked[n]).matrix_shape, dtype=dt, device=device) for n, dt in zip(names, dtypes)
    )

    def derivative_d(*tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(lambda *deltas: log_probs(None, deltas), primals, tangent)[1]

    hooks = nullcontext() if dual else perturbation.installed()  # the dual path patches forwards instead
    with torch.no_grad(), eval_mode(model), sdpa_kernel(SDPBackend.MATH), hooks:
        if vmapped:
            scores = torch.func.vmap(derivative_d, chunk_size=chunk_size)(*tangents)
        else:
            scores = torch.stack([derivative(*(t[m] for t in tangents)) for m in range(len(directions))])
    return scores.float()


def token_scores_over(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    directions: Directions,
    modules: Modules = None,
    *,
    logits_fn: LogitsFn = causal_lm_logits,
) -> list[torch.Tensor]:
    """:func:`token_scores` of every batch of a loader ([M, B, T-1] each; T may differ by batch).

    One attribution pass: it starts and ends by returning freed heap to the OS
    (:func:`infra_pl.allocator.release_free_heap`), like the factor and instance passes, and its
    large buffers are mapped one by one (:func:`infra_pl.allocator.mmap_large_buffers`), which cut
    its peak RSS by a quarter on the benchmark model at the same speed.
    """
    release_free_heap()
    packed = PackedResults()  # see infra_pl.influence.packing: keeps the memory flat in the number of batches
    with mmap_large_buffers():
        scores = [packed.add(token_scores(model, batch, directions, modules, logits_fn=logits_fn)) for batch in batches]
    release_free_heap()
    return scores


def token_scores_by_position(
    model: nn.Module,
    batch: Mapping[str, Any],
    directions: Directions,
    modules: Modules = None,
    loss_fn: LossFn = causal_lm_loss,
) -> torch.Tensor:
    """kronfluence-style split of S(z) by the *input position where the weights act*: [M, B, T].

    NOT Eq. 9. Entry t is −Σ_layers g_tᵀ V a_t from the hooked instance pass (one backward, the
    token contraction), indexed by input position t (length T, not T-1). It credits position t
    with its effect on every later target through attention, whereas :func:`token_scores`
    credits each *target token* with the derivative of its own log-probability. Both sum over t
    to the instance score.
    """
    return position_contributions(model, batch, directions, modules, loss_fn)
