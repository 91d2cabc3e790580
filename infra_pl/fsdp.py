"""Attribution under Lightning's FSDP strategy: the passes run on gathered (full) weights.

A model fine-tuned with ``strategy: fsdp`` is attributed with the same strategy and checkpoint
(a full ``.ckpt`` file or a sharded checkpoint folder): Lightning wraps the module and restores the
checkpoint in the first pass, as in ``fit``. Then every FSDP unit's full weights are gathered on
every rank (:meth:`FullyShardedDataParallel.summon_full_params`, no write-back) and stay gathered
until ``attribute`` ends, with the module tree shown without its wrappers (``_fsdp_wrapped_module``,
``_checkpoint_wrapped_module``). From there on attribution is the DDP code path, unchanged:

* the hooks (:mod:`infra_pl.ekfac.capture`) need each tracked layer's input and output gradient,
  which FSDP never shards; with the weights gathered the layers also keep their shapes
  (``use_orig_params=True``, Lightning's default: the original ``nn.Parameter`` objects hold
  full-shape views), so the forward and backward of a pass run the plain modules;
* module names and weight fingerprints are those of the unwrapped model, so they are
  rank-independent and equal to a single process's (factors fitted under FSDP are reused by a
  DDP or one-process run of the same checkpoint, and the other way round);
* each rank reads its share of the data (Lightning's distributed sampler), the covariance and
  lambda sums are all-reduced once per pass, and the eigendecompositions are spread over ranks by
  module and broadcast, exactly as under DDP.

Why gather instead of running the passes through FSDP's own per-unit unsharding: attribution takes
no optimizer step, so what FSDP saves in training (sharded gradients and optimizer state, 3-4x the
weights in float32 Adam) does not arise; what remains sharded is the weights alone, and a bf16
7B-14B model (14-28 GB) fits one 80 GB device next to the batch's activations, as under DDP. The
attribution backward differentiates with respect to the tracked layers' outputs only, never the
weights, so FSDP's post-backward hooks (which reshard a unit) would never fire: every unit would
stay unsharded after the first backward anyway, through FSDP internals that differ between torch
versions. Gathering once is one all-gather per ``attribute`` and leaves nothing to FSDP's state
machine while the passes run (the strategy's ``predict_step``, which would run the FSDP root
forward, is skipped during attribution passes: the work happens in the callbacks' batch hooks).
A model whose full weights do not fit one device cannot be attributed this way.

Factors stay replicated on every rank (as under DDP), not sharded by module: every rank's batches
run every tracked module, so the lambda and score passes need every module's eigenbasis on every
rank (sharding them would mean exchanging per-example gradients between ranks every batch); their
memory is bounded by module partitions (``EKFACFactors(partitions=...)``, ``offload``) instead.

Lightning re-wraps a module on every ``trainer.predict``/``validate`` run, and FSDP would flatten
the already sharded views a second time (the weights are lost); :func:`reuse_wrapper` makes every
later run of the trainer reuse the first run's wrapper.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn

# The attribute under which torch's wrappers keep the module they wrap (FSDP units, activation
# checkpointing, CPU offload of activations).
WRAPPER_ATTRIBUTES = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def is_fsdp(strategy: Any) -> bool:
    """Whether ``strategy`` is Lightning's FSDP strategy (torch ``FullyShardedDataParallel``)."""
    try:
        from lightning.pytorch.strategies import FSDPStrategy
    except ImportError:  # pragma: no cover - lightning is a dependency
        return False
    return isinstance(strategy, FSDPStrategy)


def is_fsdp_wrapped(strategy: Any) -> bool:
    """Whether ``strategy`` is FSDP and has wrapped its module (a run has set it up): its weights are shards."""
    if not is_fsdp(strategy):
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(getattr(strategy, "model", None), FullyShardedDataParallel)


def check_strategy(strategy: Any) -> None:
    """Refuse, by name, a sharded strategy attribution cannot run under (before any pass)."""
    name = type(strategy).__name__
    if is_fsdp(strategy):
        if getattr(strategy, "kwargs", {}).get("use_orig_params") is False:
            raise ValueError(
                "`attribute` under FSDP needs use_orig_params=True (Lightning's default): the attribution hooks sit "
                "on the model's own layers, which keep their parameters only then. Remove use_orig_params: false "
                "from the strategy settings."
            )
        return
    if name == "ModelParallelStrategy":
        raise ValueError(
            "`attribute` does not run under ModelParallelStrategy (FSDP2 / tensor parallel: DTensor weights). Use "
            "strategy=fsdp (the checkpoint of a ModelParallelStrategy fit loads as a full checkpoint after "
            "consolidation) or strategy=ddp."
        )
    if getattr(strategy, "zero_stage_3", False):
        raise ValueError(
            "`attribute` does not run under DeepSpeed ZeRO stage 3 (partitioned weights): use strategy=fsdp or ddp."
        )


def reuse_wrapper(strategy: Any) -> None:
    """Make every later run of ``strategy`` reuse the FSDP wrapper its first run made (idempotent).

    Lightning wraps the LightningModule anew in every ``predict``/``validate``; with
    ``use_orig_params=True`` the module's parameters are by then views of the first wrapper's
    shards, which a second wrapper would flatten as if they were the weights (they are lost). With
    an ``auto_wrap_policy`` the second run finds the inner units and leaves the root unwrapped,
    which loses the root's weights the same way.
    """
    if getattr(strategy, "_infra_pl_reuses_wrapper", False):
        return
    original = strategy._setup_model

    def setup_model(model: nn.Module) -> nn.Module:
        wrapper = getattr(strategy, "_infra_pl_wrapper", None)
        if wrapper is not None and getattr(wrapper, "_fsdp_wrapped_module", None) is model:
            return wrapper
        wrapper = original(model)
        strategy._infra_pl_wrapper = wrapper
        return wrapper

    strategy._setup_model = setup_model
    strategy._infra_pl_reuses_wrapper = True


def gather_after_restore(strategy: Any, gathered: "GatheredWeights") -> None:
    """While ``gathered.wanted``, gather the weights as soon as the strategy has restored a checkpoint (idempotent).

    Lightning's FSDP strategy loads the weights into the shards itself (strictly, by name: a full
    ``.ckpt`` or a sharded folder) and drops ``checkpoint["state_dict"]``; the LightningModule's
    ``on_load_checkpoint`` runs next and may read it (SFTModule checks shapes and LoRA adapters
    against its own parameters, which are shards at that point). So the weights are gathered right
    after loading, and ``state_dict`` becomes the loaded module's own (full, unwrapped names): the
    hook sees the model and the weights as a single process would.
    """
    if getattr(strategy, "_infra_pl_gathers_after_restore", False):
        return
    original = strategy.load_checkpoint

    def load_checkpoint(*args: Any, **kwargs: Any) -> Any:
        checkpoint = original(*args, **kwargs)
        if gathered.wanted:
            gathered.enter()
            if isinstance(checkpoint, dict) and "state_dict" not in checkpoint:
                checkpoint["state_dict"] = strategy.lightning_module.state_dict()
        return checkpoint

    strategy.load_checkpoint = load_checkpoint
    strategy._infra_pl_gathers_after_restore = True


def _inner(module: nn.Module) -> nn.Module | None:
    for attribute in WRAPPER_ATTRIBUTES:
        inner = module._modules.get(attribute)
        if inner is not None:
            return inner
    return None


def _unwrap_tree(module: nn.Module, swaps: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Replace every wrapper child below ``module`` by the module it wraps, recording the swaps."""
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        inner = child
        while (deeper := _inner(inner)) is not None:
            inner = deeper
        if inner is not child:
            module._modules[name] = inner
            swaps.append((module, name, child))
        _unwrap_tree(inner, swaps)


class GatheredWeights:
    """Every FSDP unit's full weights on every rank, and the module tree without wrappers.

    :meth:`enter` needs the wrapped model (``strategy.model``, after a run's setup) and all ranks
    (an all-gather); :meth:`exit` restores the wrappers and frees the gathered weights (nothing is
    written back: attribution never changes weights). Both are idempotent.
    """

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy
        self.wanted = False  # inside `attribute`: gather as soon as the wrapped model exists (gather_after_restore)
        self._stack: contextlib.ExitStack | None = None
        self._swaps: list[tuple[nn.Module, str, nn.Module]] = []

    @property
    def active(self) -> bool:
        return self._stack is not None

    def enter(self) -> None:
        if self._stack is not None:
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.strategy.model
        if not isinstance(root, FullyShardedDataParallel):
            raise RuntimeError(
                f"the FSDP strategy's model is a {type(root).__name__}, not the FullyShardedDataParallel wrapper: "
                "the weights can only be gathered after Lightning's setup of a run"
            )
        stack = contextlib.ExitStack()
        stack.enter_context(FullyShardedDataParallel.summon_full_params(root, writeback=False, rank0_only=False))
        self._stack = stack
        self._swaps = []
        _unwrap_tree(root._fsdp_wrapped_module, self._swaps)

    def exit(self) -> None:
        if self._stack is None:
            return
        for parent, name, wrapper in reversed(self._swaps):
            parent._modules[name] = wrapper
        self._swaps = []
        stack, self._stack = self._stack, None
        stack.close()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """The wrapped, sharded model for a while (e.g. a ``validate`` run inside ``attribute``): nothing is
        gathered inside the block, and what was gathered before is gathered again after it."""
        was_active, wanted = self.active, self.wanted
        self.wanted = False
        self.exit()
        try:
            yield
        finally:
            self.wanted = wanted
            if was_active:
                self.enter()


@contextlib.contextmanager
def full_weights(strategy: Any) -> Iterator[None]:
    """The full, unwrapped weights of an FSDP-wrapped model inside the block; nothing elsewhere.

    For reading weights (e.g. their fingerprints) between FSDP runs; every rank must enter it (it
    all-gathers). A no-op for other strategies, before the first run has wrapped the model, and
    when the weights are already gathered (inside ``attribute``).
    """
    if not is_fsdp_wrapped(strategy):
        yield
        return
    session = getattr(strategy, "_infra_pl_gathered", None)
    if session is not None and session.active:
        yield
        return
    gathered = GatheredWeights(strategy)
    gathered.enter()
    try:
        yield
    finally:
        gathered.exit()
