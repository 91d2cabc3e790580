"""Instance scores S(z) = vᵀ∇log p(z) for a whole batch from one hooked forward + backward.

For a tracked layer y_t = W a_t, ∇_W log p(z) = −Σ_t g_t a_tᵀ with g_t = ∂L/∂y_t of the summed
loss, so S(z) = −Σ_layers Σ_t g_tᵀ V a_t (V = that layer's slice of v). Two ways to contract:

* ``"sequence"``: form G_b = Σ_t g_t a_tᵀ ([B, out, in]), then ⟨V_m, G_b⟩ for every m.
  Cost ≈ B·out·in·(T + M) multiply-adds, memory B·out·in.
* ``"token"``: form V_m a_t for every token ([B, T, M, out]), then dot with g_t.
  Cost ≈ B·T·M·out·in, memory B·T·M·out. It also yields the per-position contributions
  g_tᵀ V a_t (see :func:`position_contributions`).

``"auto"`` picks the one with fewer multiply-adds: tokens iff T·M < T + M, which in practice
means a single measurement (then the token path also never materialises an [out, in] matrix per
sequence, the larger buffer for wide MLPs); with two or more measurements the per-sequence
gradient is shared by all of them and wins.

Why output-tensor hooks (``infra_pl.ekfac.Capture``) and ``autograd.grad`` on the layer outputs:
no weight gradient is ever formed and no parameter ``.grad`` is written, so scoring can run on a
model that is also being trained or checkpointed.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Iterable, Iterator, Literal, Mapping

import torch
from torch import nn

from infra_pl.allocator import release_free_heap
from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.factors import Factors
from infra_pl.ekfac.gradients import sequence_gradients
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import layer_shape, resolve_modules
from infra_pl.ekfac.passes import batch_size, capture_pass, eval_mode, model_device
from infra_pl.ekfac.precision import is_reduced
from infra_pl.ekfac.streams import check_streams, map_in_streams, map_parts, split_batch
from infra_pl.influence.measurement import Directions, Modules
from infra_pl.influence.packing import PackedResults

Contraction = Literal["auto", "sequence", "token"]


def choose_contraction(n_tokens: int, n_measurements: int) -> Literal["sequence", "token"]:
    """The cheaper contraction by multiply-adds: per-token costs T·M, per-sequence T + M (× B·out·in)."""
    return "token" if n_tokens * n_measurements < n_tokens + n_measurements else "sequence"


def _check_grad_mode() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "instance scores need a backward pass, which inference_mode forbids; "
            "call them under torch.no_grad() or outside inference_mode (Lightning: "
            "trainer.predict_loop.inference_mode = False)"
        )


def module_scores(
    v: torch.Tensor, activations: torch.Tensor, output_grads: torch.Tensor, mode: Contraction, per_position: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One tracked layer's share of the scores, −Σ_t g_tᵀ V a_t: [B, M] (or [M, B, T] per position).

    Also returns the per-sequence gradients [B, out, in(+1)] when the sequence contraction formed
    them (None otherwise), for callers that need them too (the training-gradient index).
    """
    if mode == "auto":
        mode = choose_contraction(activations.shape[1], v.shape[0])
    grads = None
    if mode == "sequence":
        # Explicit bmm + one mm: ~3x faster on CPU than the equivalent einsums, which copy operands.
        # V·Gᵀ rather than G·Vᵀ: with the long out·in axis contiguous in both operands' rows the
        # product ran 1.5x (float32) to 2x (bfloat16) faster here for 8-16 sequences x 32 directions.
        grads = torch.bmm(output_grads.transpose(1, 2), activations)
        term = -(v.reshape(v.shape[0], -1) @ grads.reshape(grads.shape[0], -1).t()).t()
    else:
        # V a_t or g_tᵀ V: keep the narrower of out/in as the intermediate's last dim.
        if v.shape[1] <= v.shape[2]:
            term = -torch.einsum("btmo,bto->mbt", torch.einsum("bti,moi->btmo", activations, v), output_grads)
        else:
            term = -torch.einsum("btmi,bti->mbt", torch.einsum("bto,moi->btmi", output_grads, v), activations)
        if not per_position:
            term = term.sum(dim=-1).t()
    if is_reduced(term.dtype):
        term = term.float()  # bfloat16 directions: each module's product is summed in float32
    return term, grads


def _score_pass(
    model: nn.Module,
    batch: Mapping[str, Any],
    directions: Directions,
    modules: Modules,
    loss_fn: LossFn,
    contraction: Contraction,
    per_position: bool,
) -> torch.Tensor:
    """One hooked pass; returns S as [B, M] or, with ``per_position``, the [M, B, T] contributions."""
    if contraction not in ("auto", "sequence", "token"):
        raise ValueError(f"contraction must be 'auto', 'sequence' or 'token', got {contraction!r}")
    _check_grad_mode()
    tracked = directions.modules_of(model, modules)
    dtype = directions.dtype
    result: dict[str, torch.Tensor] = {}

    def contract(name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
        v = directions.per_module[name].to(device=activations.device, dtype=dtype)
        term, _ = module_scores(v, activations, output_grads, "token" if per_position else contraction, per_position)
        result["total"] = term if "total" not in result else result["total"] + term

    capture = Capture(tracked, on_pair=contract, dtype=dtype)
    with eval_mode(model), capture:
        capture_pass(model, batch, loss_fn, capture, sample_labels=False)
    if per_position:  # bfloat16 captures pad the tokens to a bucket (Capture): cut back to T
        return result["total"][..., : batch["input_ids"].shape[1]]
    return result["total"]


def instance_scores(
    model: nn.Module,
    batch: Mapping[str, Any],
    directions: Directions,
    modules: Modules = None,
    loss_fn: LossFn = causal_lm_loss,
    contraction: Contraction = "auto",
    streams: int = 1,
) -> torch.Tensor:
    """S(z) = v_mᵀ∇log p(z) for every sequence b and measurement m: [B, M].

    Positive = up-weighting the sequence raises f_m. ``modules=None`` uses the directions' own
    module names. Works under a caller's ``torch.no_grad()`` (grad is enabled inside), not under
    ``inference_mode``. Computed in the directions' dtype (bfloat16 directions from
    ``query_directions(dtype=torch.bfloat16)`` multiply bfloat16 operands and sum the modules'
    products in float32; :mod:`infra_pl.ekfac.precision`). ``streams > 1`` (CPU only) splits the
    batch into that many parts scored at once, each on its share of the threads
    (:mod:`infra_pl.ekfac.streams`): the same scores, sooner on small models.
    """
    check_streams(streams, model_device(model))
    _check_grad_mode()  # in the caller's thread: a worker thread starts outside inference_mode

    def score(part: Mapping[str, Any]) -> torch.Tensor:
        return _score_pass(model, part, directions, modules, loss_fn, contraction, per_position=False)

    return map_parts(score, batch, streams, dim=0)


def position_contributions(
    model: nn.Module,
    batch: Mapping[str, Any],
    directions: Directions,
    modules: Modules = None,
    loss_fn: LossFn = causal_lm_loss,
) -> torch.Tensor:
    """Split of S(z) by the *input position where the weights are applied*: [M, B, T].

    Entry t is −Σ_layers g_tᵀ V a_t: the part of S that flows through the layer applications at
    position t (kronfluence's per-token decomposition). It is NOT the Eq. 9 target-token score:
    position t's contribution mixes the effect on every later target through attention. Summed
    over t it gives :func:`instance_scores`. Costs one instance pass with the token contraction.
    """
    return _score_pass(model, batch, directions, modules, loss_fn, "token", per_position=True)


def query_directions(
    model: nn.Module,
    query_batches: Iterable[Mapping[str, Any]],
    factors: Factors,
    modules: Modules = None,
    loss_fn: LossFn = causal_lm_loss,
    dtype: torch.dtype = torch.float32,
    streams: int = 1,
) -> Directions:
    """One direction per query sequence: v_q = H⁻¹∇log p(q) = −H⁻¹∇L(q), named ``"query_<k>"``.

    Compute once and pass to :func:`instance_scores` for every training batch (that is all
    :func:`pairwise_scores` does); memory is Q × the tracked parameters in ``dtype``. With
    ``dtype=torch.bfloat16`` the query gradients are formed from bfloat16 operands, preconditioned
    in the factors' float32 and stored as bfloat16: half the memory, and the training pass then
    multiplies bfloat16 operands too (:mod:`infra_pl.ekfac.precision`).

    Each module's per-query gradients are preconditioned inside the backward hook, as soon as
    they exist, and written straight into a preallocated [Q, out, in(+1)] buffer: only one
    module's raw gradients are alive at a time, and no list of parts is concatenated at the end
    (which would briefly hold every direction twice). ``streams > 1`` (CPU): each query batch is
    split into that many parts that run at once, each writing its own rows.
    """
    if modules is None:
        named = dict(model.named_modules())
        modules = {n: named[n] for n in factors.modules}
    tracked = resolve_modules(model, modules)
    batches = list(query_batches)
    count = sum(batch_size(b) for b in batches)
    if count == 0:
        raise ValueError("no query sequences given")
    device = model_device(model)
    per_module = {
        name: torch.empty((count, *layer_shape(module).matrix_shape), dtype=dtype, device=device)
        for name, module in tracked.items()
    }
    if check_streams(streams, device) > 1:  # one part per stream, so no more sequences are in flight
        batches = [part for batch in batches for part in split_batch(batch, streams)]
    offsets = [0, *itertools.accumulate(batch_size(b) for b in batches)][:-1]

    def precondition_batch(item: tuple[Mapping[str, Any], int]) -> None:
        batch, offset = item

        def precondition_into(name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
            grads = sequence_gradients(activations, output_grads)
            rows = per_module[name][offset : offset + grads.shape[0]]
            rows.copy_(factors.precondition({name: grads})[name]).neg_()

        capture = Capture(tracked, on_pair=precondition_into, dtype=dtype)
        with eval_mode(model), capture:
            capture_pass(model, batch, loss_fn, capture, sample_labels=False)

    release_free_heap()  # the Q directions are the largest buffer of a pairwise run: give them a compact heap
    for _ in map_in_streams(precondition_batch, zip(batches, offsets), streams):
        pass  # each batch writes its own rows of the buffers
    release_free_heap()
    return Directions([f"query_{k}" for k in range(count)], per_module)


def instance_scores_over(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    directions: Directions,
    modules: Modules = None,
    loss_fn: LossFn = causal_lm_loss,
    contraction: Contraction = "auto",
    streams: int = 1,
) -> torch.Tensor:
    """:func:`instance_scores` of every sequence of a loader, in loader order: [N, M].

    One attribution pass, like the factor passes: it starts and ends by returning freed heap to
    the OS (:func:`infra_pl.allocator.release_free_heap`), so one pass's garbage never inflates
    the next one's peak. With ``streams > 1`` (CPU) the parts of consecutive batches flow through
    the streams without waiting for each batch to finish. Scores of N × M floats stay in memory:
    for very large N, score batch by batch and write them out (the ``InfluenceScores`` callback
    streams them to Parquet parts).
    """
    check_streams(streams, model_device(model))
    _check_grad_mode()
    score = functools.partial(instance_scores, model, directions=directions, modules=modules, loss_fn=loss_fn,
                              contraction=contraction)

    def parts() -> Iterator[Mapping[str, Any]]:
        for batch in batches:
            yield from split_batch(batch, streams) if streams > 1 else [batch]

    release_free_heap()
    packed = PackedResults()  # one tensor per batch would pin glibc's heap and grow RSS with N
    scores = [packed.add(part) for part in map_in_streams(score, parts(), streams)]
    release_free_heap()
    if not scores:
        raise ValueError("no training batches given")
    return torch.cat(scores)


def pairwise_scores(
    model: nn.Module,
    query_batches: Iterable[Mapping[str, Any]],
    train_batch: Mapping[str, Any],
    factors: Factors,
    modules: Modules = None,
    loss_fn: LossFn = causal_lm_loss,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Score of every training sequence for every query taken as its own measurement: [Q, B].

    score[q, b] = ∇log p(q)ᵀ H⁻¹ ∇log p(z_b), the instance score with f = log p(q). Because both
    gradients flip sign relative to the losses, this equals ∇L(q)ᵀ H⁻¹ ∇L(z_b), which is exactly
    kronfluence's pairwise score when its measurement is the query's summed NLL (and minus
    kronfluence's score when its measurement is the query's log-likelihood).
    """
    directions = query_directions(model, query_batches, factors, modules, loss_fn, dtype)
    return instance_scores(model, train_batch, directions, modules, loss_fn).t()
