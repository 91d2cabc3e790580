"""Write or read the training-gradient index through `InfraTrainer.attribute` (a script, so DDP can relaunch it).

usage: python attribute_index.py CACHE_DIR OUT_DIR DEVICES MODE INDEX_DIR

MODE ``index``: factors and instance scores of one measurement, writing the index (rank 64, float32:
full rank on the tiny model); MODE ``from``: another measurement scored from INDEX_DIR; MODE
``index4``: the index at rank 4 (approximate); MODE ``check``: scored from it with the exact check
(6 sampled examples and the top and bottom 2 scored exactly, the rest calibrated).
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from infra_pl.callbacks import EKFACFactors, InfluenceScores  # noqa: E402
from infra_pl.measurements import TargetLogProb  # noqa: E402
from infra_pl.trainer import InfraTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable
from tests.scripts.attribute_factors import build  # noqa: E402

KNOWN = TargetLogProb(name="answer", prompts=["What is 2 + 3?", "What is 7 - 4?"], targets=["5", "3"])  # one per rank
NEW = TargetLogProb(name="new", prompts=["Add 4 and 5.", "Write a function that returns 1."], targets=["9", "return 1"])


def main() -> None:
    cache, out, devices, mode, index_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    module, datamodule = build(cache, 17)
    common = dict(batch_size=8, token_top_k=0, sentence_top_k=0, removal_top_k=0, tagger="none", index_dir=index_dir,
                  output_dir=str(Path(out) / "scores"))
    if mode in ("index", "index4"):
        scores = InfluenceScores(measurements=[KNOWN], index=True, index_rank=64 if mode == "index" else 4,
                                 index_dtype="float32", **common)
    elif mode == "check":
        scores = InfluenceScores(measurements=[NEW], from_index=True, index_check_examples=6, index_exact_top=2, **common)
    else:
        scores = InfluenceScores(measurements=[NEW], from_index=True, **common)
    callbacks = [EKFACFactors(fisher="empirical", output_dir=str(Path(out) / "factors"), batch_size=8,
                              log_spectra=False), scores]
    trainer = InfraTrainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out, callbacks=callbacks,
    )
    trainer.attribute(module, datamodule=datamodule)


if __name__ == "__main__":
    main()
