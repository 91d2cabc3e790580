"""Target-token scores (paper Eq. 9) from one forward-mode derivative per measurement.

s_t = ∇fᵀH⁻¹∇log p(z_t | z_<t) = v ᵀ∇log p(z_t | z_<t) is the directional derivative of
log p(z_t | z_<t) along v = H⁻¹∇f. Since v is one fixed direction per measurement, every s_t of a
sequence comes out of ONE Jacobian-vector product:  s_t = d/dα log p(z_t | z_<t; θ + α v) at α=0,
for all t at once, instead of one backward pass per target token.

How the perturbation θ + αv is applied without touching the model's parameters: a forward hook on
each tracked layer adds ``α · F.linear(input.detach(), V)`` (V's last column is the bias part when
the layer has a bias) to the layer's output, and we take ``torch.func.jvp`` with respect to the
scalar α at 0 with tangent 1. The derivative of (W + αV)x(α) at α = 0 is W x' + V x; the layer
output already carries W x', the hook adds V x, and detaching the input skips the α·V x' product
that vanishes at α = 0: one extra matmul per tracked layer (a D-matrix primal of zeros would cost
two more, a zero product on the primal and another on the tangent). Under ``vmap`` over several
directions the hook instead adds ``F.linear(input.detach(), D)`` differentiated at D = 0 with the
batched v as tangent, so the primal forward stays unbatched and shared. V and D are in the
canonical [out, in(+1)] layout of the EK-FAC factors, in which ``F.linear`` computes ``x Vᵀ`` for both
``nn.Linear`` and HF ``Conv1D`` (whose stored weight is that matrix transposed), so the
preconditioned direction is used as is and no layout conversion is needed. A layer that runs twice
(shared weights) gets the perturbation twice, which is what perturbing its weight means.

Facts this relies on (DESIGN §3, re-checked by the tests):
* the fused SDPA kernels have no forward-mode rule, so the pass runs inside
  ``sdpa_kernel(SDPBackend.MATH)`` (eager attention is unaffected);
* ``torch.func.jvp`` keeps its tangents under ``no_grad`` and ``inference_mode`` (dual tensors of
  ``torch.autograd.forward_ad`` would silently lose them in ``inference_mode``), so the pass runs
  under ``no_grad`` and stores no autograd graph;
* ``torch.func.vmap`` over the M tangents shares one primal forward among all measurements.
  Measured (``tests/influence/measure_token_pass.py``: 4-layer Llama, hidden 64, 8×128 tokens,
  CPU, one thread, CPU-time medians): one JVP ≈ 2.1× the hooked instance pass (forward +
  backward); for M=2 vmap takes ≈ 0.6× the time of a loop of two JVPs, for M=4 ≈ 0.65×; for
  M=1 vmap only adds overhead, so a single direction is not vectorised.

Memory note: the tangent of the logits is [M, B, T, vocab] in float32, M times the primal
logits; ``chunk_size`` bounds how many directions are carried at once.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from infra_pl.ekfac.loss import LossFn, causal_lm_logits, causal_lm_loss
from infra_pl.ekfac.modules import layer_shape
from infra_pl.ekfac.passes import batch_to_device, eval_mode, model_device
from infra_pl.influence.instance import position_contributions
from infra_pl.influence.measurement import Directions, Modules
from infra_pl.losses import target_log_probs

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

    Position t is aligned with :func:`infra_pl.losses.target_log_probs`: it scores the label at
    input position t+1 (predicted from tokens ≤ t); non-targets and padding are exactly 0.
    Σ_t s_t equals :func:`instance_scores` for the same sequence. One JVP per measurement, all M
    vectorised with ``torch.func.vmap`` when M > 1 (``vectorize=False``: a loop; ``chunk_size``
    bounds how many tangents vmap carries at once, for memory). The model is left as it was: hooks removed,
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

    def derivative(*direction: torch.Tensor) -> torch.Tensor:
        # One direction: along α with v fixed (fewest matmuls).
        return torch.func.jvp(lambda alpha: log_probs(alpha, direction), (alpha0,), (dalpha,))[1]

    # Several directions under vmap: differentiate D at 0 with the batched v as tangent, so the
    # primal forward is not batched (with α, v would make every primal activation batched).
    primals = tuple(
        torch.zeros(layer_shape(tracked[n]).matrix_shape, dtype=dt, device=device) for n, dt in zip(names, dtypes)
    )

    def derivative_d(*tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(lambda *deltas: log_probs(None, deltas), primals, tangent)[1]

    with torch.no_grad(), eval_mode(model), sdpa_kernel(SDPBackend.MATH), perturbation.installed():
        if vectorize and len(directions) > 1:
            scores = torch.func.vmap(derivative_d, chunk_size=chunk_size)(*tangents)
        else:
            scores = torch.stack([derivative(*(t[m] for t in tangents)) for m in range(len(directions))])
    return scores.float()


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
