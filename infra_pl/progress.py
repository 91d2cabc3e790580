"""Progress bars for the long EK-FAC passes (tqdm, silent when disabled or not a terminal task)."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(items: Iterable[T], description: str, enabled: bool = True) -> Iterator[T]:
    """Wrap an iterable (a dataloader, a module list) in a bar; the total comes from ``len`` if any."""
    try:
        total: int | None = len(items)  # type: ignore[arg-type]
    except TypeError:
        total = None
    yield from tqdm(items, desc=description, total=total, disable=not enabled, dynamic_ncols=True)
