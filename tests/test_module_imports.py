"""Every module imports on its own, first, in a fresh interpreter: no import cycle hides behind import order.

A cycle through a package ``__init__`` (a module importing ``infra_pl.ekfac.x`` runs
``infra_pl/ekfac/__init__``, which may import that module back) only fails when the module is
the first one imported, which the rest of the suite never tries.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib, pkgutil, sys, traceback
import torch, lightning  # heavy third-party modules stay loaded between tries
names = []
for package in ("infra_pl", "callbacks"):
    module = importlib.import_module(package)
    names.append(package)
    names += [m.name for m in pkgutil.walk_packages(module.__path__, package + ".") if not m.name.endswith("__main__")]
failures = []
for name in names:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("infra_pl", "callbacks")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as err:
        failures.append(f"{name}: {type(err).__name__}: {err}")
print(len(names))
print("\n".join(failures))
"""


def test_every_module_imports_first():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    count, *failures = result.stdout.strip().splitlines()
    assert int(count) > 100  # the walk found the modules
    assert not [f for f in failures if f], "\n".join(failures)
