"""How an attribution driver runs its data passes: the runner interface and the in-process runner.

The drivers (:mod:`infra_pl.ekfac.driver`, :mod:`infra_pl.influence.driver`) own the phases,
resume, partitions and reuse checks; they never loop over data themselves. Each pass is a
:class:`Pass` (what to do at the start, per batch, at the end and on an error) handed to a
:class:`Runner` with a loader. Two runners exist:

* :class:`InProcessRunner` (here): a plain loop with a progress bar, one process, for the pure API
  (``fit_factors``, ``compute_scores``).
* :class:`infra_pl.lightning_runner.LightningRunner`: ``trainer.predict`` with the pass wired to
  the batch hooks, for the callbacks; it brings Lightning's devices, precision and DDP (a
  distributed sampler per pass, collectives for the reductions).

So a fit through the callback and through ``fit_factors`` run the same code and differ only in
the runner.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch

from infra_pl.allocator import release_free_heap
from infra_pl.progress import progress_bar


def _nothing() -> None:
    return None


@dataclass
class Pass:
    """One data pass of a driver.

    ``start`` runs after the pass's RNG is seeded (``seed``, offset by the rank) and before the
    first batch; ``step`` per batch with autograd enabled; ``end`` after the last batch (it still
    runs when a stop request ended the pass early, so written parts are flushed); ``abort`` instead
    of ``end`` when an exception ends it (stop worker threads, drop queued work).
    """

    phase: str
    step: Callable[[Any], None]
    start: Callable[[], None] = _nothing
    end: Callable[[], None] = _nothing
    abort: Callable[[], None] = _nothing
    seed: int | None = None
    label: str = ""
    memory: Callable[[], contextlib.AbstractContextManager[Any]] = field(default=contextlib.nullcontext)


class Runner(Protocol):
    """What a driver needs from whoever runs its passes (one process, or a Lightning trainer)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def world_size(self) -> int: ...

    @property
    def rank(self) -> int: ...

    @property
    def is_main(self) -> bool: ...

    def run(self, work: Pass, loader: Iterable[Any]) -> None:
        """Iterate ``loader`` (this rank's share of it) through ``work``."""

    def all_reduce_sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Sum each tensor over ranks, in place (a no-op on one process)."""

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank."""

    def broadcast_tensor_(self, tensor: torch.Tensor, src: int) -> None:
        """Overwrite ``tensor`` with rank ``src``'s, in place."""

    def barrier(self) -> None: ...


class InProcessRunner:
    """Runs passes as a plain loop in this process (no Lightning): the pure API's runner.

    Batches go to the model's device; each pass is seeded without disturbing the caller's global
    RNG streams (``torch.random.fork_rng``) and starts and ends by returning freed heap to the OS
    (:func:`infra_pl.allocator.release_free_heap`), like the Lightning passes.
    """

    world_size = 1
    rank = 0
    is_main = True

    def __init__(self, device: torch.device | str = "cpu", progress: bool = True) -> None:
        self._device = torch.device(device)
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self._device

    def run(self, work: Pass, loader: Iterable[Any]) -> None:
        release_free_heap()
        with _seeded(work.seed, self._device), work.memory():
            work.start()
            try:
                for batch in progress_bar(loader, work.label or work.phase, enabled=self.progress):
                    with torch.enable_grad():
                        work.step(_to_device(batch, self._device))
            except BaseException:
                work.abort()
                raise
            work.end()
        release_free_heap()

    def all_reduce_sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        return None

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def broadcast_tensor_(self, tensor: torch.Tensor, src: int) -> None:
        return None

    def barrier(self) -> None:
        return None


class PassContextRunner:
    """Another runner's passes, each inside ``context()`` (entered outside the pass's own ``memory``).

    How a driver option that applies to every pass is switched on in one place, e.g.
    :func:`infra_pl.ekfac.checkpointing.checkpointing_runner`. Everything else goes to ``inner``.
    """

    def __init__(self, inner: Runner, context: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
        self.inner = inner
        self.context = context

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def world_size(self) -> int:
        return self.inner.world_size

    @property
    def rank(self) -> int:
        return self.inner.rank

    @property
    def is_main(self) -> bool:
        return self.inner.is_main

    def run(self, work: Pass, loader: Iterable[Any]) -> None:
        own, outer = work.memory, self.context

        @contextlib.contextmanager
        def memory() -> Iterator[None]:
            with outer(), own():
                yield

        self.inner.run(replace(work, memory=memory), loader)

    def all_reduce_sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        self.inner.all_reduce_sum_(tensors)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.inner.broadcast(obj, src)

    def broadcast_tensor_(self, tensor: torch.Tensor, src: int) -> None:
        self.inner.broadcast_tensor_(tensor, src)

    def barrier(self) -> None:
        self.inner.barrier()

    def __getattr__(self, name: str) -> Any:  # e.g. InProcessRunner.progress
        if name in ("inner", "context"):
            raise AttributeError(name)
        return getattr(self.inner, name)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch
