"""Are two attribution runs' factors and score tables the same? (a refactor must not change numbers)

Compares every tensor of the factor files (``covariance``/``eigen``/``lambda`` safetensors, per
partition too) and every score table (``instance``, ``token``, ``sentence``, ``pairwise``,
``behaviour_removal``) of two ``attribution/`` folders: same keys, shapes, rows and columns, and
values equal bit for bit, or within ``--rtol`` of the largest magnitude (then the largest relative
difference is printed). Manifests are compared without their timestamps and file checksums.

    # one checkpoint (fit + validate once), attributed by the old and the new code:
    infra-pl attribute -c configs/demo.yaml --trainer.default_root_dir OLD --ckpt_path OLD/checkpoints/last.ckpt
    infra-pl attribute -c configs/demo.yaml --trainer.default_root_dir NEW --ckpt_path NEW/checkpoints/last.ckpt
    python benchmarks/check_attribution_equality.py OLD/attribution NEW/attribution

Exit status 0 when everything is equal (within ``--rtol``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

TABLES = ("instance_scores", "token_scores", "sentence_scores", "pairwise_scores", "behaviour_removal")
VOLATILE = {"created", "written", "checksums", "sha256", "files", "time", "version"}


def compare_arrays(what: str, a: np.ndarray, b: np.ndarray, rtol: float) -> tuple[bool, str]:
    if a.shape != b.shape:
        return False, f"{what}: shape {a.shape} vs {b.shape}"
    if np.array_equal(a, b, equal_nan=True):
        return True, f"{what}: identical"
    if a.dtype.kind not in "fc":
        return False, f"{what}: values differ"
    scale = max(float(np.nanmax(np.abs(a))) if a.size else 0.0, 1e-30)
    worst = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale
    return worst <= rtol, f"{what}: max |Δ|/max|x| = {worst:.2e}"


def compare_factors(old: Path, new: Path, rtol: float) -> list[tuple[bool, str]]:
    results = []
    files = sorted(p.relative_to(old) for p in old.rglob("*.safetensors") if "partial" not in p.parts)
    if not files:
        return [(False, f"no factor files under {old}")]
    for rel in files:
        if not (new / rel).exists():
            results.append((False, f"{rel}: missing in {new}"))
            continue
        a, b = load_file(old / rel), load_file(new / rel)
        if set(a) != set(b):
            results.append((False, f"{rel}: tensor names differ ({sorted(set(a) ^ set(b))[:4]})"))
            continue
        oks = [compare_arrays(f"{rel}:{k}", a[k], b[k], rtol) for k in sorted(a)]
        identical = sum(1 for ok, msg in oks if ok and msg.endswith("identical"))
        bad = [msg for ok, msg in oks if not ok]
        close = [msg for ok, msg in oks if ok and not msg.endswith("identical")]
        results.append((not bad, f"{rel}: {len(a)} tensors, {identical} identical"
                        + (f", {len(close)} within rtol (worst {close[0]})" if close else "") + (f"; {bad}" if bad else "")))
    for manifest in sorted(old.rglob("manifest.json")):
        rel = manifest.relative_to(old)
        a, b = _stable(json.loads(manifest.read_text())), _stable(json.loads((new / rel).read_text()))
        results.append((a == b, f"{rel}: {'equal' if a == b else 'differs'} (timestamps and checksums ignored)"))
    return results


def _stable(value: object) -> object:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def compare_tables(old: Path, new: Path, rtol: float) -> list[tuple[bool, str]]:
    results = []
    for name in TABLES:
        a_path, b_path = old / f"{name}.parquet", new / f"{name}.parquet"
        if not a_path.exists():
            if b_path.exists():
                results.append((False, f"{name}: only in {new}"))
            continue
        if not b_path.exists():
            results.append((False, f"{name}: missing in {new}"))
            continue
        a, b = pd.read_parquet(a_path), pd.read_parquet(b_path)
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            results.append((False, f"{name}: columns/rows differ ({list(a.columns)} x {len(a)} vs {list(b.columns)} x {len(b)})"))
            continue
        messages, ok_all = [], True
        for column in a.columns:
            left, right = a[column].to_numpy(), b[column].to_numpy()
            if left.dtype == object:
                same = all(_same_cell(x, y) for x, y in zip(left, right))
                ok_all &= same
                if not same:
                    messages.append(f"{column}: values differ")
                continue
            ok, message = compare_arrays(column, left, right, rtol)
            ok_all &= ok
            if not message.endswith("identical"):
                messages.append(message)
        results.append((ok_all, f"{name}: {len(a)} rows x {len(a.columns)} columns, "
                        + ("all identical" if not messages else "; ".join(messages))))
    return results


def _same_cell(x: object, y: object) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return list(np.asarray(x)) == list(np.asarray(y))
    return x == y or (x != x and y != y)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the reference run's attribution/ folder")
    parser.add_argument("new", type=Path, help="the run to check, attribution/ folder")
    parser.add_argument("--rtol", type=float, default=0.0,
                        help="allowed max |Δ| / max |x| per tensor or column (0: bit for bit)")
    args = parser.parse_args(argv)
    results = compare_factors(args.old / "factors", args.new / "factors", args.rtol)
    results += compare_tables(args.old / "scores", args.new / "scores", args.rtol)
    for ok, message in results:
        print(("ok    " if ok else "FAIL  ") + message)
    failed = sum(1 for ok, _ in results if not ok)
    print(f"{len(results) - failed} of {len(results)} checks passed" + (" (bit for bit)" if args.rtol == 0 else f" (rtol {args.rtol})"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
