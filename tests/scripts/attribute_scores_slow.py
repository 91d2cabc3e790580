"""Factors and instance scores through `InfraTrainer.attribute`, with slow instance batches.

usage: python attribute_scores_slow.py CACHE_DIR OUT_DIR SECONDS_PER_INSTANCE_BATCH

For the SIGTERM test: every instance batch of 8 examples is flushed as its own Parquet part and
takes at least the given time, so a signal sent after the first part lands mid-pass.
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from infra_pl import scores_store  # noqa: E402
from infra_pl.callbacks import EKFACFactors, InfluenceScores  # noqa: E402
from infra_pl.measurements import TargetLogProb  # noqa: E402
from infra_pl.trainer import InfraTrainer  # noqa: E402
from tests.scripts.attribute_factors import build  # noqa: E402

scores_store.PartWriter.__init__.__defaults__ = (0, 8)  # rank 0, a part per 8 rows (one instance batch)


class SlowInstanceBatches(Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_predict_batch_end(self, trainer, *args, **kwargs):
        if trainer.attribution_phase == "influence/instance":
            time.sleep(self.seconds)


def main() -> None:
    cache, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    torch.set_num_threads(1)
    module, datamodule = build(cache, None)
    measurement = TargetLogProb(name="answer", prompts=["What is 2 + 3?", "Add 4 and 5."], targets=["5", "9"])
    callbacks = [
        EKFACFactors(fisher="empirical", output_dir=out, batch_size=8, log_spectra=False),
        InfluenceScores(measurements=[measurement], batch_size=8, token_top_k=1, sentence_top_k=0,
                        output_dir=str(Path(out) / "scores")),
        SlowInstanceBatches(seconds),
    ]
    trainer = InfraTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False, default_root_dir=out, callbacks=callbacks)
    trainer.attribute(module, datamodule=datamodule)


if __name__ == "__main__":
    main()
