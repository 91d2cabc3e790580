"""Example 3: a custom callback on the attribution hook points.

``TopProponentsJSONL`` subclasses ``infra_pl.hooks.AttributionHooks`` (a Lightning Callback) and
overrides the three hooks ``infra-pl attribute`` calls once a product exists:

* ``on_factors_ready(trainer, pl_module, FactorsReady)``: notes which layers were tracked;
* ``on_scores_ready(trainer, pl_module, ScoresReady)``: writes the top-k proponents of every
  measurement to ``<scores_dir>/top_proponents.jsonl`` and logs a bar chart of them to
  TensorBoard (whichever position the TensorBoard logger has among the loggers);
* ``on_report_ready(trainer, pl_module, ReportReady)``: prints where everything went.

Hooks run on global rank 0 only, after the product is complete. List the callback in YAML next
to ours (with ``examples/`` on PYTHONPATH)::

    trainer:
      callbacks:
        - class_path: infra_pl.callbacks.EKFACFactors
        - class_path: infra_pl.callbacks.InfluenceScores
        - class_path: top_proponents_callback.TopProponentsJSONL
          init_args: {k: 50}

Run:  python examples/top_proponents_callback.py --out runs/example_callback
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the toy module and data of example 1

from infra_pl.hooks import AttributionHooks, FactorsReady, ReportReady, ScoresReady, tensorboard_writer  # noqa: E402


class TopProponentsJSONL(AttributionHooks):
    """Top-k proponents per measurement as JSONL, plus a TensorBoard figure of their scores.

    Args:
        k: examples per measurement (the k largest scores: the data that raises f most).
        filename: JSONL file name inside the scores folder.
        figure: log a bar chart per measurement to TensorBoard (``top_proponents/<measurement>``).
    """

    def __init__(self, k: int = 50, filename: str = "top_proponents.jsonl", figure: bool = True) -> None:
        self.k = k
        self.filename = filename
        self.figure = figure
        self.events: list[str] = []  # hook names in call order (handy for tests)
        self.path: Path | None = None

    def on_factors_ready(self, trainer: Any, pl_module: Any, event: FactorsReady) -> None:
        self.events.append("factors")
        print(f"[top-proponents] factors for {len(event.modules)} layers ({event.fisher} Fisher, "
              f"{'reused' if event.reused else 'fitted'}) in {event.factors_dir}")

    def on_scores_ready(self, trainer: Any, pl_module: Any, event: ScoresReady) -> None:
        self.events.append("scores")
        self.path = event.scores_dir / self.filename
        rows = []
        for name in event.measurements:
            top = event.top(name, self.k)
            for rank, (_, row) in enumerate(top.iterrows(), start=1):
                record = {"measurement": name, "rank": rank, "id": row["id"], "index": int(row["index"]),
                          "score": float(row[event.score_column(name)])}
                if "domain" in row:
                    record["domain"] = row["domain"]
                rows.append(record)
            if self.figure:
                self._log_figure(trainer, name, top, event.score_column(name))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as handle:
            for record in rows:
                handle.write(json.dumps(record) + "\n")
        print(f"[top-proponents] {len(rows)} rows -> {self.path}")

    def on_report_ready(self, trainer: Any, pl_module: Any, event: ReportReady) -> None:
        self.events.append("report")
        print(f"[top-proponents] report {event.html_path}; top proponents {self.path}")

    @staticmethod
    def _log_figure(trainer: Any, name: str, top: Any, column: str) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.patches
        import matplotlib.pyplot as plt

        labels = [str(i) for i in top["id"]][::-1]
        domains = [str(d) for d in top["domain"]][::-1] if "domain" in top else ["-"] * len(top)
        palette = {d: f"C{i}" for i, d in enumerate(dict.fromkeys(domains))}
        fig, ax = plt.subplots(figsize=(6, 0.18 * len(top) + 1.2))
        ax.barh(labels, top[column].to_numpy()[::-1], color=[palette[d] for d in domains])
        ax.legend(handles=[matplotlib.patches.Patch(color=c, label=d) for d, c in palette.items()], fontsize=7)
        ax.set_xlabel("influence score")
        ax.set_title(f"top {len(top)} proponents: {name}")
        ax.tick_params(axis="y", labelsize=6)
        fig.tight_layout()
        writer.add_figure(f"top_proponents/{name}", fig, 0)
        plt.close(fig)
        writer.flush()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import plain_module_attribution as toy
    from lightning.pytorch.loggers import TensorBoardLogger

    args = toy.parse_args(list(argv) if argv is not None else None)
    if args.out == "runs/example_plain":
        args.out = "runs/example_callback"
    module, datamodule = toy.build(args)
    toy.fit(module, datamodule, args)
    export = TopProponentsJSONL(k=50)
    logger = TensorBoardLogger(save_dir=args.out, name="tensorboard")
    state = toy.attribute(module, datamodule, args, toy.attribution_callbacks(args, extra=[export]), logger=logger)
    return {"scores": state.scores, "top_proponents_path": export.path, "tensorboard_dir": logger.log_dir}


if __name__ == "__main__":
    main(sys.argv[1:])
