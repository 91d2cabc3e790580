"""Forward/backward hooks that expose each tracked layer's input activations and output gradients.

Why hooks on the *output tensor* rather than ``register_full_backward_hook``: a tensor hook fires
whenever autograd computes d(loss)/d(output), whether the caller differentiates with respect to
the layer outputs, the tracked weights, or calls ``loss.backward()``; and it never touches
parameter ``.grad``. The drivers in this package run ``torch.autograd.backward`` with the outputs'
gradient edges as ``inputs`` (:meth:`Capture.outputs`), so no weight gradient is ever formed
(cheaper, and parameters stay clean), and neither the outputs nor their gradients are held for the
whole backward: ``torch.autograd.grad`` would keep every tracked output's gradient until it returns
(as much memory as the tracked layers' outputs again, which is what remains once activation
checkpointing has dropped the saved activations).

Activation checkpointing (:mod:`infra_pl.ekfac.checkpointing`): the backward replays checkpointed
blocks, which runs their forward hooks again; the hooks record nothing during a replay
(:func:`~infra_pl.ekfac.checkpointing.is_recomputing`), and the gradients arrive on the original
forward's outputs, paired with its activations.

All per-layer data is handed to callbacks as soon as it exists instead of being stored, because
holding every layer's output gradient for a batch at once costs as much memory as the model's
activations again.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Callable, Mapping

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils.hooks import RemovableHandle

from infra_pl.ekfac.checkpointing import is_recomputing
from infra_pl.ekfac.modules import LayerShape, layer_shape
from infra_pl.ekfac.precision import is_reduced

# (module name, activations [N, in(+1)] already masked, number of real tokens among the N rows)
ActivationFn = Callable[[str, torch.Tensor, int], None]
# (module name, output gradients [N, out] already masked, number of real tokens)
GradientFn = Callable[[str, torch.Tensor, int], None]
# (module name, activations [B, T, in(+1)], output gradients [B, T, out]) for per-sequence sums
PairFn = Callable[[str, torch.Tensor, torch.Tensor], None]


class Capture:
    """Context manager that hooks the tracked layers and feeds callbacks, one batch at a time.

    Padding positions (``attention_mask == 0``) are zeroed in both activations and gradients, so
    they add nothing to any sum; the constant-1 bias column is zeroed there too. Token counts
    passed to callbacks are the number of non-padding positions, as in kronfluence 1.0.1
    (``TrackedLinear.get_flattened_activation``/``get_flattened_gradient``).

    Usage per batch: ``capture.start_batch(attention_mask)``, run forward + autograd, then
    ``capture.finish_batch()``, which checks every layer that ran also received its gradient.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        *,
        on_activation: ActivationFn | None = None,
        on_gradient: GradientFn | None = None,
        on_pair: PairFn | None = None,
        dtype: torch.dtype = torch.float32,
        activation_tokens: str = "all",
    ) -> None:
        self.modules = dict(modules)
        self.shapes: dict[str, LayerShape] = {name: layer_shape(m) for name, m in self.modules.items()}
        self.on_activation = on_activation
        self.on_gradient = on_gradient
        self.on_pair = on_pair
        self.dtype = dtype
        if activation_tokens not in ("all", "targets"):
            raise ValueError(f"activation_tokens must be 'all' or 'targets', got {activation_tokens!r}")
        self.activation_tokens = activation_tokens
        self._target_mask: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._mask: torch.Tensor | None = None
        self._mask_count = 0
        self._outputs: list[GradientEdge] = []
        self._pending: dict[str, torch.Tensor | None] = {}
        self._done: set[str] = set()
        self._owner: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "Capture":
        if self._handles:
            raise RuntimeError("this Capture is already active; hooks would be registered twice")
        # Module hooks fire for every thread's forward; a Capture only records the thread that
        # entered it, so several streams (infra_pl.ekfac.streams) can each run their own.
        self._owner = threading.get_ident()
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(partial(self._forward_hook, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._owner = None
        self._reset()

    def start_batch(self, attention_mask: torch.Tensor | None, labels: torch.Tensor | None = None) -> None:
        """Forget the previous batch and set the padding mask ([B, T]) for the next forward pass.

        With ``activation_tokens="targets"``, ``labels`` ([B, T], -100 = no target) decide which
        positions' activations ``on_activation`` sees: those that predict a target token (position t
        predicts labels[t + 1]). Per-sequence pairs and gradients always keep every real token.
        """
        self._reset()
        if self.activation_tokens == "targets":
            if labels is None:
                raise ValueError("activation_tokens='targets' needs the batch's labels")
            predicts = torch.zeros_like(labels, dtype=torch.bool)
            predicts[:, :-1] = labels[:, 1:] != -100
            self._target_mask = predicts
        if attention_mask is not None:
            count = int(attention_mask.sum().item())  # one host sync per batch, not per layer
            self._mask_count = count
            # Without padding the mask is all ones: multiplying by it would cost two full passes
            # over every activation and gradient per layer (~5% of a factor fit) for nothing.
            self._mask = attention_mask.to(self.dtype) if count < attention_mask.numel() else None

    def outputs(self) -> list[GradientEdge]:
        """Gradient edges of the tracked layers' outputs in this forward pass: the ``inputs`` of
        ``torch.autograd.backward`` (or ``torch.autograd.grad``). Edges, not tensors, so the outputs
        themselves are freed as soon as autograd no longer needs them."""
        return list(self._outputs)

    def finish_batch(self) -> None:
        """Raise if some layer ran forward but never got its output gradient (it would skew counts)."""
        missing = [name for name in self._pending if name not in self._done]
        self._reset()
        if missing:
            raise RuntimeError(
                f"tracked modules {missing} ran in the forward pass but received no gradient: "
                "the loss does not depend on their output, so they cannot be tracked"
            )

    def _reset(self) -> None:
        self._outputs.clear()
        self._pending.clear()
        self._done.clear()
        self._mask = None
        self._mask_count = 0
        self._target_mask = None

    # -- hooks ---------------------------------------------------------------------------------
    def _token_mask(self, leading_shape: torch.Size) -> torch.Tensor | None:
        """The [B, T] padding mask if it lines up with this layer's leading dims, else None."""
        if self._mask is not None and tuple(self._mask.shape) == tuple(leading_shape):
            return self._mask
        return None

    def _forward_hook(self, name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if is_recomputing():
            # A checkpointed block replayed in the backward (possibly in autograd's own thread): the
            # original forward recorded this layer and its gradient arrives on that forward's output.
            # Only the frozen-model leaf is made again, so the replay saves the tensors the forward saved.
            return output.detach().requires_grad_(True) if not output.requires_grad else None
        if threading.get_ident() != self._owner:
            return None  # another stream's forward pass: its own Capture records it
        if not torch.is_grad_enabled():
            return None  # evaluation passes run under no_grad: nothing to attribute
        if name in self._pending:
            raise RuntimeError(
                f"tracked module {name!r} ran twice in one forward pass (shared weights); "
                "EK-FAC here assumes each tracked layer is applied once per batch"
            )
        with torch.no_grad():
            activation = self._prepare_activation(name, inputs[0])
        replaced = None
        if not output.requires_grad:
            # Frozen model: make this output a leaf so gradients still reach the tracked layers. The
            # backward accumulates into the leaf's .grad, which is dropped at once (the hook has it).
            output = replaced = output.detach().requires_grad_(True)
            output.register_post_accumulate_grad_hook(_drop_grad)
        self._pending[name] = activation if self.on_pair is not None else None
        self._outputs.append(get_gradient_edge(output))
        output.register_hook(partial(self._backward_hook, name))
        return replaced

    def _prepare_activation(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        """Cast, zero padding positions, append the bias column; returns [..., in(+1)]."""
        activation = raw.detach().to(self.dtype)
        mask = self._token_mask(activation.shape[:-1])
        if mask is not None:
            activation = activation * mask.unsqueeze(-1)
        if self.shapes[name].has_bias:
            ones = torch.ones(activation.shape[:-1] + (1,), dtype=self.dtype, device=activation.device)
            if mask is not None:
                ones = ones * mask.unsqueeze(-1)
            activation = torch.cat([activation, ones], dim=-1)
        rows = activation.numel() // activation.shape[-1]
        activation = _bucket_tokens(activation)
        if self.on_activation is not None:
            if self._target_mask is not None and tuple(self._target_mask.shape) == tuple(raw.shape[:-1]):
                chosen = self._target_mask.to(activation.device)
                flat = activation[:, : chosen.shape[1]][chosen]  # the positions that predict a target
                self.on_activation(name, flat, int(chosen.sum()))
            else:
                flat = activation.reshape(-1, activation.shape[-1])
                self.on_activation(name, flat, self._count(mask, rows))
        return activation

    def _backward_hook(self, name: str, grad: torch.Tensor) -> None:
        with torch.no_grad():
            gradient = grad.detach().to(self.dtype)
            mask = self._token_mask(gradient.shape[:-1])
            if mask is not None:
                gradient = gradient * mask.unsqueeze(-1)
            rows = gradient.numel() // gradient.shape[-1]
            gradient = _bucket_tokens(gradient)
            if self.on_gradient is not None:
                flat = gradient.reshape(-1, gradient.shape[-1])
                self.on_gradient(name, flat, self._count(mask, rows))
            if self.on_pair is not None:
                activation = self._pending[name]
                self.on_pair(name, _as_sequences(activation), _as_sequences(gradient))
                self._pending[name] = None  # free the activation as soon as it is used
        self._done.add(name)

    def _count(self, mask: torch.Tensor | None, rows: int) -> int:
        """Real tokens behind ``rows`` flattened positions (all of them when no padding mask applies)."""
        return self._mask_count if mask is not None else rows


def _drop_grad(leaf: torch.Tensor) -> None:
    leaf.grad = None


TOKEN_BUCKET = 64


def _bucket_tokens(x: torch.Tensor) -> torch.Tensor:
    """Reduced-precision [B, T, d] tensors get T zero-padded to a multiple of :data:`TOKEN_BUCKET`.

    Why: on CPU, bfloat16 products run in oneDNN, which compiles and caches kernels for every
    distinct shape and never frees them. With variable-length batches every batch has a new
    token count, so memory grew without bound: 615 distinct shapes of a [N, 256] gram added
    1.6 GB (capping oneDNN's primitive cache still left 390 MB). Zero tokens add nothing to any
    sum this module feeds (grams, per-sequence gradients, score contractions), so padding is
    exact, and it bounds the shapes to one per (batch size, bucket). float32 goes to MKL's GEMM,
    which has no such cache, and is left alone; so are GPU tensors (cuBLAS keeps no per-shape kernels).
    """
    if not is_reduced(x.dtype) or x.dim() != 3 or x.device.type != "cpu":
        return x
    tokens = x.shape[1]
    padded = -(-tokens // TOKEN_BUCKET) * TOKEN_BUCKET
    if padded == tokens:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, padded - tokens))


def _as_sequences(x: torch.Tensor) -> torch.Tensor:
    """View as [B, T, d]: 2-D inputs are one token per example, extra dims fold into tokens."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], -1, x.shape[-1])
