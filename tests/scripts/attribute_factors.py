"""Fit EK-FAC factors through `InfraTrainer.attribute` (run as a script so DDP can relaunch it).

usage: python attribute_factors.py CACHE_DIR OUT_DIR DEVICES [LIMIT]
"""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from infra_pl.callbacks import EKFACFactors  # noqa: E402
from infra_pl.data.datamodule import DemoOptions, ReasoningDataModule  # noqa: E402
from infra_pl.data.sources import Source  # noqa: E402
from infra_pl.module import SFTModule  # noqa: E402
from infra_pl.trainer import InfraTrainer  # noqa: E402

TINY_MODEL = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True,
}
TINY_DEMO = {"seed": 0, "n_train": 60, "n_eval": 5, "n_pool": 10}  # keep equal to tests.conftest.TINY_DEMO


def build(cache: str, limit: int | None):
    datamodule = ReasoningDataModule(
        train=[Source("demo:train", limit=limit)], cache_dir=cache, demo=DemoOptions(**TINY_DEMO), batch_size=8, eval_batch_size=8
    )
    module = SFTModule(model_config=TINY_MODEL, init_seed=1)
    return module, datamodule


def main() -> None:
    cache, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limit = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    module, datamodule = build(cache, limit)
    trainer = InfraTrainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
        callbacks=[EKFACFactors(fisher="empirical", output_dir=out, batch_size=8, log_spectra=False)],
    )
    trainer.attribute(module, datamodule=datamodule)


if __name__ == "__main__":
    main()
