"""Fit EK-FAC factors through `InfraTrainer.attribute` (run as a script so DDP can relaunch it).

usage: python attribute_factors.py CACHE_DIR OUT_DIR DEVICES [LIMIT] [PARTITIONS] [SCORES] [REFINE]

PARTITIONS (default 1): EK-FAC module partitions. SCORES=1 also runs InfluenceScores with one
target-log-probability measurement (no validate/generation needed) and token scores for 3 examples.
REFINE=k refines the measurement direction by k CG iterations over the whole training set.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from infra_pl.callbacks import EKFACFactors, InfluenceScores  # noqa: E402
from infra_pl.data.datamodule import DemoOptions, ReasoningDataModule  # noqa: E402
from infra_pl.data.sources import Source  # noqa: E402
from infra_pl.measurements import TargetLogProb  # noqa: E402
from infra_pl.module import SFTModule  # noqa: E402
from infra_pl.trainer import InfraTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable
from tests.conftest import TINY_DEMO, TINY_MODEL  # noqa: E402  (one definition of the tiny settings)


def build(cache: str, limit: int | None):
    datamodule = ReasoningDataModule(
        train=[Source("demo:train", limit=limit)], cache_dir=cache, demo=DemoOptions(**TINY_DEMO), batch_size=8, eval_batch_size=8
    )
    module = SFTModule(model_config=TINY_MODEL, init_seed=1)
    return module, datamodule


def main() -> None:
    cache, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "all" else None
    partitions = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    scores = len(sys.argv) > 6 and sys.argv[6] == "1"
    refine = int(sys.argv[7]) if len(sys.argv) > 7 else 0
    torch.set_num_threads(1)
    module, datamodule = build(cache, limit)
    callbacks = [EKFACFactors(fisher="empirical", output_dir=out, batch_size=8, log_spectra=False, partitions=partitions,
                              offload=partitions > 1)]
    if scores:
        measurement = TargetLogProb(name="answer", prompts=["What is 2 + 3?", "Add 4 and 5."], targets=["5", "9"])
        callbacks.append(InfluenceScores(measurements=[measurement], batch_size=8, token_top_k=3, sentence_top_k=0,
                                         output_dir=str(Path(out) / "scores"), refine_iterations=refine,
                                         refine_examples=None, refine_tolerance=0.0))
    trainer = InfraTrainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out, callbacks=callbacks,
    )
    trainer.attribute(module, datamodule=datamodule)


if __name__ == "__main__":
    main()
