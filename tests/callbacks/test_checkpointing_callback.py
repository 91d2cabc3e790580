"""Activation checkpointing through the Lightning runner: ``EKFACFactors(activation_checkpointing=True)``
gives the plain factors, and its passes really replay the blocks."""

from infra_pl.callbacks import EKFACFactors
from infra_pl.ekfac.checkpointing import is_recomputing
from infra_pl.ekfac.driver import FactorFit
from infra_pl.trainer import InfraTrainer
from tests.scripts.attribute_factors import build


def _fit(root, tiny_cache, checkpointing=False):
    module, datamodule = build(str(tiny_cache), None)
    trainer = InfraTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False, default_root_dir=str(root),
                           callbacks=[EKFACFactors(fisher="true", batch_size=8, log_spectra=False,
                                                   activation_checkpointing=checkpointing)])
    trainer.attribute(module, datamodule=datamodule)
    return trainer.attribution_state.factors.factors


def test_lightning_passes_checkpointed_equal_plain(tmp_path, tiny_cache, monkeypatch):
    plain = _fit(tmp_path / "plain", tiny_cache)
    replays = []
    original = FactorFit.__init__

    def watched(self, options, runner, model, *args, **kwargs):
        first = next(m for n, m in model.named_modules() if n.endswith("mlp.gate_proj"))
        first.register_forward_hook(lambda *_: replays.append(is_recomputing()))
        original(self, options, runner, model, *args, **kwargs)

    monkeypatch.setattr(FactorFit, "__init__", watched)
    ck = _fit(tmp_path / "ckpt", tiny_cache, checkpointing=True)
    assert any(replays) and not all(replays)  # the Lightning passes replayed the blocks
    for name, ref in plain.modules.items():
        got = ck.modules[name]
        for a, b in ((got.activation_covariance, ref.activation_covariance), (got.gradient_covariance, ref.gradient_covariance),
                     (got.lambdas, ref.lambdas)):
            assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())
        assert (got.n_tokens, got.n_gradient_tokens, got.n_sequences) == (ref.n_tokens, ref.n_gradient_tokens, ref.n_sequences)
