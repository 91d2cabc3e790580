"""Checksums of stored products (factors, phase partials, score parts), checked before use.

A factor file whose bytes changed after it was written (a flipped bit on disk, a copy cut short)
still parses when its size and header are intact, and scores computed from it are wrong without
any sign. Every writer records the SHA-256 of the file's bytes; every reader verifies it before
loading and raises :class:`CorruptFileError`, naming the file and how to get a whole one again.

Cost: one streamed read of each file, once per process (a verified file is remembered by path,
size, inode and change times, so a partitioned pass that loads the same factors again does not
hash them again; files changed in the last seconds are always hashed). Files written before
checksums existed load with a notice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator

_CHUNK = 1 << 20
_RACY_NS = 3_000_000_000
_verified: dict[str, tuple[tuple[int, ...], str]] = {}
_noticed: set[str] = set()


class CorruptFileError(ValueError):
    """A stored file is not the one that was written: checksum mismatch, truncated or unreadable."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (memory stays flat for multi-GB factors)."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _stamp(path: Path) -> tuple[int, ...]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def _settled(stamp: tuple[int, ...]) -> bool:
    """Changed long enough ago that a later change must move its timestamps (file times are coarse).

    Like git's "racy clean" rule: a file modified within the last seconds is hashed every time.
    """
    return time.time_ns() - max(stamp[1], stamp[2]) > _RACY_NS


def record(path: str | Path) -> str:
    """The checksum of a file just written, to store in its manifest, key file or sidecar."""
    return file_sha256(path)


def verify(path: str | Path, expected: str | None, what: str, remedy: str) -> None:
    """Raise :class:`CorruptFileError` unless ``path`` hashes to ``expected``.

    ``what`` names the product ("EK-FAC factor file"), ``remedy`` says how to get a whole one
    again. ``expected=None`` (written before checksums were recorded): a one-time notice, no check.
    """
    path = Path(path)
    if not path.exists():
        raise CorruptFileError(f"{what} {path} is missing. {remedy}")
    if expected is None:
        if str(path) not in _noticed:
            _noticed.add(str(path))
            print(f"[infra-pl] notice: {what} {path} has no recorded checksum (written by an older infra-pl); "
                  "loading it unverified", file=sys.stderr)
        return
    key = str(path.resolve())
    stamp = _stamp(path)
    if _verified.get(key) == (stamp, expected):
        return
    found = file_sha256(path)
    if found != expected:
        _verified.pop(key, None)
        raise CorruptFileError(
            f"{what} {path} is corrupt: its SHA-256 ({found[:16]}...) differs from the one recorded when it was "
            f"written ({expected[:16]}...; file now {stamp[0]} bytes), so its bytes changed on disk. {remedy}"
        )
    if _settled(stamp):
        _verified[key] = (stamp, expected)


@contextlib.contextmanager
def readable(path: str | Path, what: str, remedy: str) -> Iterator[None]:
    """Turn a parser's error on ``path`` (truncated or garbled file) into :class:`CorruptFileError`.

    For files without a recorded checksum, and as a second line behind one.
    """
    try:
        yield
    except CorruptFileError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors/pyarrow raise their own error types
        raise CorruptFileError(f"{what} {path} cannot be read ({type(err).__name__}: {err}). {remedy}") from err


def write_sidecar(path: str | Path, digest: str) -> Path:
    """``<path>.sha256`` holding ``digest``, written atomically (for files with no manifest of their own)."""
    sidecar = Path(str(path) + ".sha256")
    tmp = sidecar.with_name("." + sidecar.name + ".tmp")
    tmp.write_text(digest + "\n")
    os.replace(tmp, sidecar)
    return sidecar


def read_sidecar(path: str | Path) -> str | None:
    sidecar = Path(str(path) + ".sha256")
    return sidecar.read_text().strip() if sidecar.exists() else None
