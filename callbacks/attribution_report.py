"""``AttributionReport``: aggregate tables, ``report.html`` / ``report.md``, TensorBoard figures.

Runs after ``InfluenceScores`` in ``infra-pl attribute``. The tables and figures themselves are
built by ``infra_pl.report`` (no Lightning); this callback only feeds it and sends the same
figures, heatmaps and summary scalars to TensorBoard.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L

from infra_pl.hooks import ReportReady, dispatch, tensorboard_writer
from infra_pl.protocol import ProtocolError
from infra_pl.trainer import AttributionStep


class AttributionReport(AttributionStep):
    """Write the attribution report and log its figures to TensorBoard.

    Groups by the instance table's metadata columns: ``domain`` is required (from the
    datamodule's ``attribution_metadata("train")``); ``category``, ``difficulty`` and
    ``behaviour_*`` add tables when present. Afterwards every callback's
    ``on_report_ready(trainer, pl_module, ReportReady)`` is called.

    Args:
        top_k: influential examples shown per measurement (with token heatmaps).
        n_boot: bootstrap resamples for the 95% confidence intervals.
        output_dir: report folder (default: ``<default_root_dir>/attribution/report``).
        tensorboard_heatmaps: token-heatmap images logged per measurement.
    """

    order = 30

    def __init__(self, top_k: int = 10, n_boot: int = 2000, output_dir: str | None = None, tensorboard_heatmaps: int = 3):
        self.top_k = top_k
        self.n_boot = n_boot
        self.output_dir = output_dir
        self.tensorboard_heatmaps = tensorboard_heatmaps

    def run_attribution(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        scores = trainer.attribution_state.require("scores", "AttributionReport", "InfluenceScores")
        if not trainer.is_global_zero:
            return
        if "domain" not in scores.instance_scores.columns:
            raise ProtocolError(
                "AttributionReport groups training examples by 'domain', which the instance scores lack: return it "
                "from the datamodule's attribution_metadata('train'), or leave AttributionReport out of the callbacks"
            )
        import pandas as pd

        from infra_pl.report import standard_tables, write_report
        from infra_pl.report.analyses import extra_tables

        out = Path(self.output_dir) if self.output_dir else trainer.attribution_dir() / "report"
        instance_df, token_df, sentence_df = scores.instance_scores, scores.token_scores, scores.sentence_scores
        tables = standard_tables(instance_df, sentence_df, n_boot=self.n_boot)
        pairwise = pd.read_parquet(scores.pairwise_scores_path) if scores.pairwise_scores_path else None
        tables.update(extra_tables(instance_df, token_df, scores.behaviour_removal, pairwise, n_boot=self.n_boot))
        html_path, md_path = write_report(
            out, instance_df, token_df, sentence_df, scores.measurement_info, tables, top_k=self.top_k, n_boot=self.n_boot
        )
        print(f"[infra-pl] report written to {html_path}", file=sys.stderr)
        self._tensorboard(trainer, instance_df, token_df, tables)
        event = ReportReady(out, Path(html_path), Path(md_path), tables, scores)
        trainer.attribution_state.report = event
        dispatch(trainer, pl_module, event)

    def _tensorboard(self, trainer: Any, instance_df: Any, token_df: Any, tables: dict[str, Any]) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        from infra_pl.report import score_histograms, token_heatmap
        from infra_pl.report.figures import report_figures

        names = [c.removeprefix("score_") for c in instance_df.columns if c.startswith("score_")]
        writer.add_figure("attribution/score_histograms", score_histograms(instance_df), 0)
        for item in report_figures(instance_df, tables):
            writer.add_figure(f"attribution/{item.name}", item.figure, 0)
        for name in names:
            scores = instance_df[f"score_{name}"]
            writer.add_scalar(f"attribution/{name}/mean_score", float(scores.mean()), 0)
            writer.add_scalar(f"attribution/{name}/share_positive", float((scores > 0).mean()), 0)
            for domain, group in instance_df.groupby("domain"):
                writer.add_scalar(f"attribution/{name}/mean_score_{domain}_data", float(group[f"score_{name}"].mean()), 0)
            if token_df is None or token_df.empty:
                continue
            top = instance_df.nlargest(self.tensorboard_heatmaps, f"score_{name}")
            for rank, index in enumerate(top["index"]):
                rows = token_df[(token_df["index"] == index) & (token_df["measurement"] == name)].sort_values("position")
                if rows.empty:
                    continue
                fig = token_heatmap(list(rows["token"]), rows["score"].to_numpy(), title=f"{name}: top {rank + 1} ({rows['id'].iloc[0]})")
                writer.add_figure(f"attribution/{name}/token_heatmap_top{rank + 1}", fig, 0)
        writer.flush()
