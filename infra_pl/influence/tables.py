"""The score tables: rows, columns and sums shared by every scoring product (pure pandas).

One instance row per training example (id, index, the datamodule's metadata, ``score_<m>``), the
behaviour columns from the tagger, the sums of per-partition shares, and the keys that tell a
resumed pass which stored parts belong to it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from infra_pl.console import log
from infra_pl.protocol import ProtocolError


def tagger_label(tagger: Any) -> str | None:
    from infra_pl.data.tagging import tagger_name

    return None if tagger is None else tagger_name(tagger)


def with_behaviours(instance_df: pd.DataFrame, tagged: list[Any] | None, tagger: Any) -> pd.DataFrame:
    """The instance table with ``behaviour_*`` counts from the tagger and a ``tagged_by`` column.

    Without a tagger the columns are dropped: a column of zeros would read as "no example shows
    any behaviour", which nobody measured.
    """
    from infra_pl.data.schema import BEHAVIOURS

    frame = instance_df.drop(columns=[c for c in instance_df.columns if c.startswith("behaviour_")])
    if tagged is None:
        return frame
    counts = [tagged[int(i)].counts() for i in frame["index"]]
    for behaviour in BEHAVIOURS:
        frame[f"behaviour_{behaviour}"] = [c[behaviour] for c in counts]
    frame["tagged_by"] = tagger_label(tagger)
    return frame


def directions_key(directions: Any, factors: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(list(directions.names)).encode())
    digest.update(str(factors.model_fingerprint).encode())
    for name in sorted(directions.per_module):
        tensor = directions.per_module[name].detach().double().cpu()
        digest.update(f"{name}:{tensor.sum().item():.10e}:{tensor.abs().sum().item():.10e}".encode())
    return digest.hexdigest()[:20]


def instance_table(datamodule: Any, train_ids: list[str], scored: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per scored training example: id, index, the datamodule's metadata columns, scores."""
    has_metadata = callable(getattr(datamodule, "attribution_metadata", None))
    metadata = list(datamodule.attribution_metadata("train")) if has_metadata else [{} for _ in train_ids]
    if len(metadata) != len(train_ids):
        raise ProtocolError(f"attribution_metadata('train') has {len(metadata)} rows for {len(train_ids)} ids")
    rows = []
    for index, example_id in enumerate(train_ids):
        if index not in scored.index:
            continue
        row = {"id": example_id, "index": index}
        row.update({k: v for k, v in metadata[index].items() if k not in row and not k.startswith("score_")})
        row.update({f"score_{n}": float(scored.at[index, f"score_{n}"]) for n in names})
        rows.append(row)
    return pd.DataFrame(rows)


def check_token_sums(token_df: pd.DataFrame, instance_df: pd.DataFrame, names: list[str]) -> None:
    """Σ_t s_t must equal S(z); a mismatch means a bug, so it is reported loudly."""
    if token_df.empty:
        return
    sums = token_df.groupby(["index", "measurement"])["score"].sum()
    instance = instance_df.set_index("index")
    worst = 0.0
    for (index, name), total in sums.items():
        reference = instance.at[index, f"score_{name}"]
        scale = max(abs(instance[f"score_{name}"]).max(), 1e-30)
        worst = max(worst, abs(total - reference) / scale)
    log(f"token scores: max |Σ_t s_t − S(z)| / max|S| = {worst:.2e}")
    if worst > 1e-3:
        log("WARNING: token scores do not sum to the instance scores; please report this")


def sum_score_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Sum the ``score_*`` columns of per-partition score frames indexed by example index."""
    if len(frames) == 1:
        return frames[0]
    total = frames[0].copy()
    columns = [c for c in total.columns if c.startswith("score_")]
    for frame in frames[1:]:
        if not frame.index.equals(total.index):
            raise ValueError("module partitions scored different training examples; delete the *_parts folders and rerun")
        total[columns] = total[columns].to_numpy() + frame[columns].to_numpy()
    return total


def sum_token_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Token scores of all partitions summed per (example, measurement, position), in a stable order."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    keys = ["id", "index", "measurement", "position", "token"]
    total = pd.concat(frames).groupby(keys, sort=False, as_index=False)["score"].sum()
    return total.sort_values(["index", "measurement", "position"], kind="stable").reset_index(drop=True)


def indices_key(indices: list[int]) -> str:
    return hashlib.sha256(json.dumps(sorted(indices)).encode()).hexdigest()[:12]
