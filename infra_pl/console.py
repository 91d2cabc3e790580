"""One way to tell the user what a long run is doing: ``[infra-pl] ...`` lines on stderr.

Why stderr: stdout carries what a command produces (``--print_config``, the end-of-run summary
of paths), so progress and notices must not mix into it.
"""

from __future__ import annotations

import sys

__all__ = ["log"]


def log(message: str) -> None:
    """Print one ``[infra-pl]`` line to stderr."""
    print(f"[infra-pl] {message}", file=sys.stderr)
