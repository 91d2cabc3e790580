"""Activation checkpointing for the attribution passes: keep each decoder block's input, replay the block in the backward.

A gradient pass (covariance, lambda, measurement, instance, refinement) keeps everything autograd
saves for the backward of every block until the backward reaches it; at 4096 tokens that is tens of
GiB for a 7B-14B model. Under :func:`activation_checkpointing` each block's forward runs through
non-reentrant :func:`torch.utils.checkpoint.checkpoint`: the forward keeps only the block's inputs,
and the backward replays one block at a time to get its saved tensors back.

Why our own wrapper rather than Hugging Face's ``gradient_checkpointing_enable``: HF checkpoints a
layer only while ``self.gradient_checkpointing and self.training``, and every attribution step runs
in :func:`infra_pl.ekfac.passes.eval_mode` (``model.eval()``, so dropout is off), which switches it
off again; keeping ``training`` on for the layers would have to be done without turning dropout back
on, per model family. Here the block forwards are wrapped directly (an instance attribute, removed on
exit), so the training flags are never touched: dropout stays off, and the plain forward is
bit-identical with and without checkpointing (``tests/ekfac/test_checkpointing.py``).

How the hooks of :class:`infra_pl.ekfac.capture.Capture` stay exact (checked in the tests):

* non-reentrant checkpointing runs the backward through the *original* forward's graph; the replay
  only refills that graph's saved tensors. So the output tensors (and their gradient hooks) of the
  original forward are the ones that receive the gradients, paired with the activations recorded in
  the original forward; the replay's outputs never receive a gradient.
* the replay runs the block's forward hooks a second time (for the layers before the block's last
  saved tensor: replays stop early). :func:`is_recomputing` tells the hooks, which then record
  nothing, so no sum, count or pairing changes.

The token pass runs under ``no_grad`` (forward-mode AD), where nothing is saved for a backward:
the wrapper then calls the block as is. Reentrant checkpointing (``use_reentrant=True``) runs the
original forward without gradients and is not supported by the captures.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from infra_pl.runner import PassContextRunner, Runner

_REPLAY = threading.local()  # how many checkpoint replays are running in this thread
_LOCK = threading.Lock()
_ACTIVE: dict[int, tuple[int, list[tuple[nn.Module, Any]]]] = {}  # id(model) -> (depth, [(block, saved forward)])
_MARK = "_infra_pl_checkpointed"
# A KV cache would be updated twice (forward and replay); the attribution passes never build one.
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


@contextlib.contextmanager
def _replaying() -> Iterator[None]:
    _REPLAY.depth = getattr(_REPLAY, "depth", 0) + 1
    try:
        yield
    finally:
        _REPLAY.depth -= 1


def _contexts() -> tuple[contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]]:
    """``context_fn`` of :func:`torch.utils.checkpoint.checkpoint`: nothing around the forward, a
    replay marker around the recomputation (entered in whichever thread runs it)."""
    return contextlib.nullcontext(), _replaying()


def is_recomputing() -> bool:
    """True while a checkpointed forward is being replayed in the backward (in this thread).

    Replays started by :func:`activation_checkpointing` are marked explicitly. Any other
    checkpointing (``torch.utils.checkpoint`` in a model's own code) is recognised by running inside
    the autograd engine: a module's forward runs during a backward only when a checkpointed region
    is replayed.
    """
    if getattr(_REPLAY, "depth", 0) > 0:
        return True
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)  # no backward will replay it (evaluation, the forward-mode token pass)
        cached = [key for key in _CACHE_KWARGS if kwargs.get(key) is not None]
        if cached:
            raise ValueError(f"activation checkpointing replays the block in the backward, which would update the "
                             f"KV cache {cached} a second time; run the attribution passes without a cache")
        return checkpoint(forward, *args, use_reentrant=False, context_fn=_contexts, **kwargs)

    setattr(run, _MARK, True)
    return run


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules whose forwards are checkpointed: one per decoder block.

    Hugging Face models: every outermost ``GradientCheckpointingLayer`` (the decoder layers of Llama,
    Qwen2, Mistral, GPT-2, ..., also inside a PEFT model). Other models: the children of the
    ``nn.ModuleList`` holding the most parameters (the block stack). Raises when there is none.
    """
    blocks: list[nn.Module] = []
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # an older or no transformers: fall back to the block stack
        GradientCheckpointingLayer = None  # noqa: N806
    if GradientCheckpointingLayer is not None:
        found = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
        inner = {id(sub) for m in found for sub in m.modules() if sub is not m}
        blocks = [m for m in found if id(m) not in inner]
    if not blocks:
        stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        if stacks:
            stack = max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))
            blocks = list(stack)
    if not blocks:
        raise ValueError(f"found no blocks to checkpoint in {type(model).__name__} (no Hugging Face decoder layers, "
                         "no nn.ModuleList); pass blocks= to activation_checkpointing")
    return blocks


@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, blocks: Iterable[nn.Module] | None = None) -> Iterator[list[nn.Module]]:
    """Within the block, every gradient-enabled forward of ``model``'s blocks is checkpointed; yields the blocks.

    ``blocks``: the modules to checkpoint (default :func:`checkpoint_blocks`). Training flags are
    left alone (dropout stays as :func:`~infra_pl.ekfac.passes.eval_mode` sets it). Nested and
    concurrent uses on one model (several streams) share one wrapping: the first entry wraps, the
    last exit restores the forwards (a nested call's ``blocks`` are then ignored).
    """
    key = id(model)
    with _LOCK:
        depth, patched = _ACTIVE.get(key, (0, []))
        if depth == 0:
            patched = _wrap(checkpoint_blocks(model) if blocks is None else list(blocks))
        _ACTIVE[key] = (depth + 1, patched)
    try:
        yield [block for block, _ in patched]
    finally:
        with _LOCK:
            depth, patched = _ACTIVE.pop(key)
            if depth > 1:
                _ACTIVE[key] = (depth - 1, patched)
            else:
                _unwrap(patched)


def _wrap(blocks: list[nn.Module]) -> list[tuple[nn.Module, Any]]:
    patched: list[tuple[nn.Module, Any]] = []
    for block in blocks:
        if getattr(block.forward, _MARK, False) or any(block is done for done, _ in patched):
            continue  # already checkpointed (listed twice, or wrapped by an outer context on another model)
        patched.append((block, block.__dict__.get("forward")))
        block.forward = _checkpointed(block.forward)
    return patched


def _unwrap(patched: list[tuple[nn.Module, Any]]) -> None:
    for block, saved in patched:
        if saved is None:
            del block.forward
        else:
            block.forward = saved


def checkpointing_runner(runner: Runner, model: nn.Module, enabled: bool = True,
                         blocks: Iterable[nn.Module] | None = None) -> Runner:
    """``runner`` with every pass run under :func:`activation_checkpointing` of ``model`` (``runner`` itself
    when not ``enabled``): how a driver turns on its ``activation_checkpointing`` option in one line."""
    if not enabled:
        return runner
    chosen = None if blocks is None else list(blocks)
    return PassContextRunner(runner, lambda: activation_checkpointing(model, chosen))
