"""Config files merged as ``infra-pl fit -c BASE -c OVERLAY`` merges them, for the programs that
read YAML themselves (``infra-pl compare``, ``infra-pl curate``).

LightningCLI (jsonargparse) applies several ``-c`` files in order, key by key: a mapping merges into
a mapping, while a list (``trainer.callbacks``, ``data.pool``), a scalar, or a mapping with another
``class_path`` replaces what was there. A variant is therefore a small overlay over its base
(``configs/variants/*.yaml``) that sets only the keys it changes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Sequence


def merge_configs(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``, as ``-c base -c overlay``: mappings merge; anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping) and not _other_class(old, value):
            merged[key] = merge_configs(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _other_class(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return "class_path" in old and "class_path" in new and old["class_path"] != new["class_path"]


def config_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """One path or several, as a list of strings."""
    return [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]


def load_configs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The YAML files merged in order (later files win), as one dict."""
    import yaml

    config: dict[str, Any] = {}
    for path in config_paths(paths):
        config = merge_configs(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    return config
