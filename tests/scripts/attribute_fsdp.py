"""Fine-tune under FSDP, then attribute that checkpoint under FSDP (or in one process), on CPU.

usage: python attribute_fsdp.py fit       CACHE OUT DEVICES STRATEGY STATE_DICT   (writes OUT/fitted.ckpt)
       python attribute_fsdp.py attribute CACHE OUT DEVICES STRATEGY CKPT [REFERENCE_CKPT_FILE] [again]
       python attribute_fsdp.py consolidate FOLDER FILE   (a sharded checkpoint as one .ckpt, for one process)
       python attribute_fsdp.py fingerprints OUT                                   (2 processes, torch only)

STRATEGY: ``fsdp`` (Lightning's default: one FSDP unit, the root), ``fsdp-wrap`` (an FSDP unit and
activation checkpointing per decoder layer: wrapper names in the module tree) or ``single`` (one
process, no strategy). STATE_DICT: ``full`` (one ``.ckpt`` file) or ``sharded`` (a folder of shards).
attribute fits the factors and scores 17 examples on one target-log-probability measurement (with
token scores), as tests/scripts/attribute_factors.py does.

Lightning refuses ``strategy="fsdp"`` without a GPU ("The strategy `fsdp` requires a GPU
accelerator, but received `accelerator='cpu'`"), and FSDP on CPU needs ``device_id=cpu``
(without it: "FSDP needs a non-CPU accelerator device, but no accelerator device is detected").
:class:`CPUFSDPStrategy` is Lightning's FSDPStrategy with that device id; the check in Lightning
is on the exact class, so the subclass passes. Everything else (wrapping, gloo collectives, full
and sharded checkpoints, the distributed sampler) is Lightning's and torch's FSDP code.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from lightning.pytorch.strategies import FSDPStrategy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests` importable
from tests.scripts.attribute_factors import build  # noqa: E402

LIMIT = 17


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP strategy on CPU processes (gloo): torch FSDP with ``device_id=cpu``."""

    def _setup_model(self, model):
        from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return model
        wrapped = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
        )
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def lightning_module_state_dict(self):
        # Lightning gathers a full state dict with offload_to_cpu=True, which on CPU tensors segfaults in
        # torch 2.13 (FSDP's _full_post_state_dict_hook clones freed storage): the same without the offload.
        if self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            return self.model.state_dict()


def strategy_for(name: str, state_dict: str = "full"):
    if name == "single":
        return "auto"
    if name == "fsdp":
        return CPUFSDPStrategy(state_dict_type=state_dict)
    if name == "fsdp-wrap":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return CPUFSDPStrategy(state_dict_type=state_dict, auto_wrap_policy={LlamaDecoderLayer},
                               activation_checkpointing_policy={LlamaDecoderLayer})
    raise ValueError(f"unknown strategy {name!r}")


def fit(cache: str, out: str, devices: int, strategy: str, state_dict: str) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from infra_pl.trainer import InfraTrainer

    module, datamodule = build(cache, LIMIT)
    # A checkpoint callback with a folder: without one SFTModule.on_train_end asks trainer.log_dir on rank 0
    # only, a collective under any multi-process strategy (the fit hangs).
    checkpoints = ModelCheckpoint(dirpath=str(Path(out) / "checkpoints"), save_last=False, save_top_k=0)
    trainer = InfraTrainer(
        accelerator="cpu", devices=devices, strategy=strategy_for(strategy, state_dict), max_steps=3, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out, callbacks=[checkpoints],
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(module, datamodule=datamodule)
    # Every rank: FSDP gathers (full) or writes its shard. Weights only: attribution reads no optimizer state.
    trainer.save_checkpoint(Path(out) / "fitted.ckpt", weights_only=True)


def attribute(cache: str, out: str, devices: int, strategy: str, ckpt: str, reference: str | None = None,
              again: bool = False) -> None:
    """Factors and scores of ``ckpt``; OUT/run.json: reused?, the weights' fingerprint, and the largest difference
    between the weights attributed and ``reference`` (default: ``ckpt``; a file holding the same weights).
    ``again``: then attribute once more with the same trainer and module (``again_*`` entries)."""
    import json

    from infra_pl.callbacks import EKFACFactors, InfluenceScores
    from infra_pl.ekfac.fingerprint import weights_fingerprint
    from infra_pl.fsdp import full_weights
    from infra_pl.measurements import TargetLogProb
    from infra_pl.trainer import InfraTrainer

    module, datamodule = build(cache, LIMIT)
    measurement = TargetLogProb(name="answer", prompts=["What is 2 + 3?", "Add 4 and 5."], targets=["5", "9"])
    callbacks = [
        EKFACFactors(fisher="empirical", output_dir=out, batch_size=8, log_spectra=False),
        InfluenceScores(measurements=[measurement], batch_size=8, token_top_k=3, sentence_top_k=0,
                        output_dir=str(Path(out) / "scores")),
    ]
    trainer = InfraTrainer(
        accelerator="cpu", devices=devices, strategy=strategy_for(strategy), logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out, callbacks=callbacks,
    )
    trainer.attribute(module, datamodule=datamodule, ckpt_path=ckpt)
    # The weights attribution used are the checkpoint's: compared on the full weights (every rank gathers).
    with full_weights(trainer.strategy):
        own = {k: v.detach().clone() for k, v in module.state_dict().items()}
        fingerprint = weights_fingerprint(module.attribution_model())
    if trainer.is_global_zero:
        stored = torch.load(reference or ckpt, map_location="cpu", weights_only=False)["state_dict"]
        difference = max(float((own[k].float() - v.float()).abs().max()) for k, v in stored.items())
        summary = {"reused": trainer.attribution_state.factors.reused, "weights_fingerprint": fingerprint,
                   "checkpoint_tensors": len(stored), "max_difference_to_checkpoint": difference,
                   "sharded_after": _sharded(module)}
    if again:
        # The same trainer and module once more, no checkpoint and no gradient check: the model is wrapped and
        # sharded from the first run, so the factor step gathers it with a setup pass before reading fingerprints.
        first = trainer.attribution_state.scores.instance_scores.set_index("id").sort_index()["score_answer"]
        trainer.attribute(module, datamodule=datamodule, gradient_check=False)
        second = trainer.attribution_state.scores.instance_scores.set_index("id").sort_index()["score_answer"]
        if trainer.is_global_zero:
            summary["again_reused"] = trainer.attribution_state.factors.reused
            summary["again_max_score_difference"] = float((first - second).abs().max())
    if trainer.is_global_zero:
        (Path(out) / "run.json").write_text(json.dumps(summary, indent=1))


def _sharded(module) -> bool:
    """Whether the module's weights are FSDP shards again (attribute hands the model back as it found it)."""
    from infra_pl.ekfac.fingerprint import ShardedWeightsError, require_full_weights

    try:
        require_full_weights(module.named_modules())
    except ShardedWeightsError:
        return True
    return False


def consolidate(folder: str, output: str) -> None:
    """A sharded FSDP checkpoint folder as one ``.ckpt`` file (Lightning's consolidate_checkpoint, whose
    ``torch.load`` of the folder's ``meta.pt`` refuses the hyperparameters' classes under weights_only)."""
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    checkpoint: dict = {}
    _load_state_dict(checkpoint, storage_reader=FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    checkpoint.update(torch.load(Path(folder) / "meta.pt", map_location="cpu", weights_only=False))
    torch.save(_format_checkpoint(checkpoint), output)


def _fingerprint_worker(rank: int, out: str) -> None:
    """Fingerprints of an FSDP-sharded tiny Llama: refused on the shards, equal to one process's when gathered."""
    import json

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from infra_pl.ekfac.fingerprint import ShardedWeightsError, model_fingerprint, weights_fingerprint
    from infra_pl.ekfac.modules import find_tracked_modules
    from infra_pl.fsdp import GatheredWeights
    from tests.influence.influence_helpers import tiny_llama

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("FSDP_TEST_PORT", "29561"))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {}
    for label, policy in (("root", None), ("layers", {LlamaDecoderLayer})):
        model = tiny_llama(seed=3)
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        kwargs = {"auto_wrap_policy": ModuleWrapPolicy(policy)} if policy else {}
        wrapped = FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=True, **kwargs)
        refused = []
        for fingerprint in (lambda: weights_fingerprint(model),
                            lambda: model_fingerprint(model, find_tracked_modules(model))):
            try:
                fingerprint()
            except ShardedWeightsError as err:
                refused.append(str(err)[:200])

        class Strategy:  # what GatheredWeights needs of a Lightning strategy: the wrapped model
            pass

        strategy = Strategy()
        strategy.model = wrapped
        gathered = GatheredWeights(strategy)
        gathered.enter()
        try:
            names = sorted(n for n, _ in model.named_modules())
            full = {"weights": weights_fingerprint(model), "model": model_fingerprint(model, find_tracked_modules(model)),
                    "tracked": sorted(find_tracked_modules(model))}
        finally:
            gathered.exit()
        wrapped_names = [n for n, _ in model.named_modules() if "_fsdp_wrapped_module" in n]
        results[label] = {"refused": refused, "gathered": full, "names_unwrapped": not any("wrapped" in n for n in names),
                          "wrapped_again": bool(wrapped_names) == (policy is not None)}
    reference = tiny_llama(seed=3)
    results["reference"] = {"weights": weights_fingerprint(reference),
                            "model": model_fingerprint(reference, find_tracked_modules(reference)),
                            "tracked": sorted(find_tracked_modules(reference))}
    Path(out, f"fingerprints-r{rank}.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


def main() -> None:
    torch.set_num_threads(1)
    mode = sys.argv[1]
    if mode == "consolidate":
        consolidate(sys.argv[2], sys.argv[3])
        return
    if mode == "fingerprints":
        import torch.multiprocessing as mp

        mp.spawn(_fingerprint_worker, args=(sys.argv[2],), nprocs=2)
        return
    cache, out, devices, strategy = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    if mode == "fit":
        fit(cache, out, devices, strategy, sys.argv[6])
    elif mode == "attribute":
        extra = sys.argv[7:]
        again = "again" in extra
        reference = next((a for a in extra if a != "again"), None)
        attribute(cache, out, devices, strategy, sys.argv[6], reference, again)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
