"""``EKFACFactors``: fit (or reuse) EK-FAC factors in dedicated Lightning passes.

Phases: covariance pass -> eigendecomposition -> lambda pass. The math is in
``infra_pl.ekfac``; this callback wires it to the trainer: it feeds predict batches to the
accumulators (with autograd on), reduces the sums across ranks once per pass, spreads the
eigendecompositions over ranks by module, writes each finished phase to disk (an interrupted run
resumes from the last finished phase) and logs spectra to TensorBoard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch

from infra_pl.console import log as _log
from infra_pl.ekfac import (
    CovarianceAccumulator,
    Factors,
    FactorsMismatchError,
    LambdaAccumulator,
    data_fingerprint,
    eigendecompose,
    model_fingerprint,
    phase_store,
)
from infra_pl.ekfac.eigen import EigenBasis
from infra_pl.ekfac.modules import layer_shape, resolve_modules
from infra_pl.ekfac.partition import check_partitions, split_modules
from infra_pl.ekfac.passes import model_device
from infra_pl.ekfac.precision import dtype_name, resolve_compute_dtype
from infra_pl.ekfac.storage import partition_dir, read_partition_index, write_partition_index
from infra_pl.ekfac.streams import AccumulatorStreams, check_streams, merged_state
from infra_pl.hooks import FactorsReady, dispatch, tensorboard_writer
from infra_pl.protocol import attribution_model, loss_fn_for, model_is_built, require_data, require_module, require_true_fisher
from infra_pl.trainer import AttributionStep

COVARIANCE, LAMBDA = "ekfac/covariance", "ekfac/lambda"
DTYPES = {"float32": torch.float32, "float64": torch.float64}



class EKFACFactors(AttributionStep):
    """EK-FAC factors of the training-loss Fisher over the tracked (MLP) layers.

    Works on any LightningModule implementing ``attribution_model()`` and ``per_example_loss``
    (plus sampled labels for the true Fisher) with a datamodule implementing
    ``attribution_ids``/``attribution_dataloader`` (``infra_pl.protocol``). Afterwards every
    callback's ``on_factors_ready(trainer, pl_module, FactorsReady)`` is called.

    Args:
        modules: regex or list of module names to track; default: the MLP projections of every block
            (LoRA adapter layers inside MLPs when the model is a PEFT model).
        fisher: ``true`` (labels sampled from the model, as in the paper) or ``empirical`` (data labels).
        damping: fixed damping λ; default (null): 0.1 × mean(Λ) per module.
        batch_size: batch size of the factor passes (default: the datamodule's eval batch size).
        output_dir: where factors go (default: ``<default_root_dir>/attribution/factors``).
        dtype: accumulation dtype of the factors (float32, or float64 for reference runs).
        seed: seed of the label sampling for the true Fisher (both passes sample the same labels).
        strict: refuse factors on disk that were fitted on another model or dataset (set false to
            use them anyway, with a warning).
        refit: ignore factors and phase results on disk and fit again.
        log_spectra: log eigenvalue spectra and Λ histograms to TensorBoard.
        partitions: fit one group of modules at a time, so device memory holds one group's factors
            and pass buffers (see ``infra-pl-plan`` for how many groups a device needs): a number of
            balanced contiguous groups, or the groups as lists of module names. Each group costs its
            own two data passes; factors go to ``partition-<k>/`` folders read lazily by module.
            ``auto``: the fewest groups the memory planner (``infra_pl.planner``) fits into
            ``device_budget`` for this model, batch size and the datamodule's ``max_length``.
        offload: keep factors in CPU memory between uses: A and S leave the device after the
            eigendecomposition (the lambda pass and scoring read only eigenbases and Λ), and each
            finished group's factors leave it too, so the device only holds the group in progress.
        device_budget: device memory the ``auto`` plan may fill, e.g. ``70GiB`` (default: 90% of
            the CUDA device's memory; required on CPU).
        streams: CPU only: split every batch into this many parts that run at once, each on
            threads ÷ streams cores, at least one (so more streams than threads oversubscribes;
            ``infra_pl.ekfac.streams``). Small models leave cores idle between torch ops; 2 streams
            on 2 cores fitted factors 0.74-0.79x kronfluence's time here, against 0.82x with one
            stream (``benchmarks/bench_vs_kronfluence.py``). The same sequences are in flight as
            with one stream, so the live tensors do not grow (the memory planner stays valid).
            Refused on a GPU.
        compute_dtype: operand dtype of the passes' big products (covariance grams, Lambda
            rotations): ``float32`` or ``bfloat16``. bfloat16 pays off on hardware with bfloat16
            matrix units (AMX/AVX512-BF16 CPUs, tensor-core GPUs) and is slower where it is emulated.
            Sums, eigendecompositions and the stored factors stay in ``dtype``; the model is never
            cast (``infra_pl.ekfac.precision``). On this project's 2-core AMX CPU it cut the factor
            fit to 0.86x of the float32 time, with Λ within 0.5% and scores at Pearson 0.99999.
    """

    order = 10

    def __init__(
        self,
        modules: str | list[str] | None = None,
        fisher: str = "true",
        damping: float | None = None,
        batch_size: int | None = None,
        output_dir: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
        strict: bool = True,
        refit: bool = False,
        log_spectra: bool = True,
        partitions: int | str | list[list[str]] | None = None,
        offload: bool = False,
        device_budget: str | None = None,
        streams: int = 1,
        compute_dtype: str = "float32",
    ) -> None:
        check_streams(streams)
        if fisher not in ("true", "empirical"):
            raise ValueError(f"fisher must be 'true' or 'empirical', got {fisher!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.modules = modules
        self.fisher = fisher
        self.damping = damping
        self.batch_size = batch_size
        self.output_dir = output_dir
        self.dtype = DTYPES[dtype]
        self.compute_dtype = resolve_compute_dtype(compute_dtype, self.dtype)
        self.seed = seed
        self.strict = strict
        self.refit = refit
        self.log_spectra = log_spectra
        if isinstance(partitions, int) and partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if isinstance(partitions, str) and partitions != "auto":
            raise ValueError(f"partitions must be a number, a list of module-name lists or 'auto', got {partitions!r}")
        self.device_budget = device_budget
        self.partitions = partitions
        self.offload = offload
        self.streams = streams
        self._tracked_for_pass: dict[str, torch.nn.Module] | None = None
        self._accumulator: AccumulatorStreams | None = None
        self._eigen_for_pass: dict[str, EigenBasis] = {}
        self._result: Any = None

    # ------------------------------------------------------------- helpers
    def factors_dir(self, trainer: Any) -> Path:
        return Path(self.output_dir) if self.output_dir else trainer.attribution_dir() / "factors"

    @staticmethod
    def hf_model(pl_module: L.LightningModule) -> torch.nn.Module:
        """The network to hook: ``pl_module.attribution_model()`` (the protocol)."""
        return attribution_model(pl_module)

    def _phase_key(self, model: torch.nn.Module, tracked: dict[str, torch.nn.Module], train_ids: list[str]) -> dict[str, Any]:
        return {
            "modules": {name: layer_shape(m).to_dict() for name, m in tracked.items()},
            "fisher": self.fisher,
            "dtype": str(self.dtype),
            "compute_dtype": str(self.compute_dtype),  # bfloat16 products give other (close) sums
            "seed": self.seed,
            "model_fingerprint": model_fingerprint(model, tracked),
            "data_fingerprint": data_fingerprint(train_ids),
        }

    # --------------------------------------------------------- entry point
    def run_attribution(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        require_module(pl_module, ["attribution_model", "per_example_loss"], "EKFACFactors")
        if self.fisher == "true":
            require_true_fisher(pl_module, "EKFACFactors")
        require_data(datamodule, ["attribution_ids", "attribution_dataloader"], "EKFACFactors")
        check_streams(self.streams, pl_module.device)
        out = self.factors_dir(trainer)
        train_ids = list(datamodule.attribution_ids("train"))
        self._ensure_model_ready(trainer, pl_module, datamodule)
        factors = None
        if ((out / "manifest.json").exists() or read_partition_index(out) is not None) and not self.refit:
            factors = self._reuse(pl_module, out, train_ids)
        reused = factors is not None
        if factors is None:
            factors = self._fit(trainer, pl_module, datamodule, out, train_ids)
        trainer.attribution_state["factors"] = factors
        trainer.attribution_state["factors_dir"] = out
        index = read_partition_index(out)
        trainer.attribution_state["factor_partitions"] = index["partitions"] if index else [list(factors.modules)]
        dispatch(trainer, pl_module, FactorsReady(out, factors, list(factors.modules), factors.fisher, reused))

    @staticmethod
    def _ensure_model_ready(trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        """Build the model and restore the checkpoint with a one-batch pass, before reading anything on disk.

        Fingerprints of the model decide whether stored phases can be reused, so the checkpoint
        weights must be in place first.
        """
        if trainer._pending_ckpt_path is None and model_is_built(pl_module):
            return
        limit = trainer.limit_predict_batches
        trainer.limit_predict_batches = 1
        try:
            trainer.run_attribution_pass("ekfac/setup", pl_module, datamodule, split="train", batch_size=1)
        finally:
            trainer.limit_predict_batches = limit

    def _reuse(self, pl_module: L.LightningModule, out: Path, train_ids: list[str]) -> Factors:
        model = self.hf_model(pl_module)
        factors = Factors.load(out, device="cpu")
        try:
            factors.check_compatible(model, self.modules, train_ids=train_ids, strict=self.strict)
        except FactorsMismatchError as err:
            raise FactorsMismatchError(
                f"{err}. The factors in {out} were fitted on another model or dataset: delete that folder, "
                "set refit: true on EKFACFactors, or strict: false to use them anyway."
            ) from None
        if factors.fisher != self.fisher:
            raise FactorsMismatchError(
                f"factors in {out} use the {factors.fisher} Fisher but {self.fisher} was requested; set refit: true"
            )
        fitted, wanted = getattr(torch, factors.compute_dtype), self.compute_dtype
        if torch.finfo(fitted).bits < torch.finfo(wanted).bits:
            raise FactorsMismatchError(
                f"factors in {out} were fitted with {factors.compute_dtype} products but compute_dtype "
                f"{dtype_name(wanted)} was requested; set refit: true"
            )
        if fitted != wanted:
            _log(f"EK-FAC: the factors in {out} were fitted with {factors.compute_dtype} products, more precise "
                 f"than the requested {dtype_name(wanted)}; reusing them")
        _log(f"EK-FAC: reusing factors from {out}")
        return factors.with_damping(self.damping).to("cpu" if self.offload else pl_module.device)

    def _groups(self, tracked: dict[str, torch.nn.Module], model: torch.nn.Module, datamodule: Any) -> list[list[str]]:
        if self.partitions == "auto":
            return self._planned_groups(tracked, model, datamodule)
        if self.partitions is None or self.partitions == 1:
            return [list(tracked)]
        if isinstance(self.partitions, int):
            return split_modules({n: layer_shape(m) for n, m in tracked.items()}, self.partitions)
        return check_partitions(self.partitions, list(tracked))

    def memory_estimate(self, model: torch.nn.Module, datamodule: Any, measurements: int = 2) -> Any:
        """The planner's per-phase estimate (``infra_pl.planner.Estimate``) for this model and batch shape.

        Used by ``partitions: auto`` and by ``infra-pl attribute --print_plan``.
        """
        from infra_pl.planner import Settings, estimate

        batch_size, seq_len = self._batch_shape(datamodule)
        settings = Settings(batch_size=batch_size, seq_len=seq_len, measurements=measurements, factor_dtype=self.dtype,
                            fisher=self.fisher, padding=True, keep_covariance=not self.offload,
                            compute_dtype=self.compute_dtype)
        return estimate(model, settings, modules=list(resolve_modules(model, self.modules)))

    def budget_bytes(self, device: torch.device) -> int | None:
        """``device_budget`` if set, else 90% of a CUDA device's memory, else None (nothing to plan for)."""
        from infra_pl.planner import parse_bytes

        if self.device_budget is not None:
            return parse_bytes(self.device_budget)
        if device.type == "cuda":
            return int(0.9 * torch.cuda.get_device_properties(device).total_memory)
        return None

    def _batch_shape(self, datamodule: Any) -> tuple[int, int]:
        """(sequences, tokens per sequence) of the largest attribution batch the planner must fit.

        With a token budget (``attribution_max_tokens``), the largest activations come from the
        budget's worth of longest sequences: budget // max_length of them, capped by the batch size.
        """
        batch_size = self.batch_size or getattr(datamodule, "eval_batch_size", None) or 1
        seq_len = getattr(datamodule, "max_length", None) or 2048
        max_tokens = getattr(datamodule, "attribution_max_tokens", None)
        if max_tokens:
            batch_size = max(1, min(batch_size, max_tokens // seq_len))
        return batch_size, seq_len

    def _planned_groups(self, tracked: dict[str, torch.nn.Module], model: torch.nn.Module, datamodule: Any) -> list[list[str]]:
        """Module groups from the memory planner for this model, batch shape and device budget."""
        from infra_pl.planner import format_bytes, plan_partitions

        budget = self.budget_bytes(model_device(model))
        if budget is None:
            raise ValueError("partitions: auto needs device_budget (e.g. '16GiB') when the model is not on a CUDA device")
        plan = plan_partitions(self.memory_estimate(model, datamodule), budget)
        phase, peak = plan.largest_peak
        batch_size, seq_len = self._batch_shape(datamodule)
        _log(f"EK-FAC plan: {len(plan.partitions)} partition(s) for a {format_bytes(budget)} budget "
             f"(batch {batch_size} x {seq_len} tokens; largest estimated peak {format_bytes(peak)} in the {phase})")
        return check_partitions(plan.partitions, list(tracked))

    def _fit(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any, out: Path, train_ids: list[str]) -> Factors:
        model = self.hf_model(pl_module)
        tracked = resolve_modules(model, self.modules)
        groups = self._groups(tracked, model, datamodule)
        if len(groups) == 1:
            factors = self._fit_group(trainer, pl_module, datamodule, out, tracked, train_ids, "")
            if trainer.is_global_zero:
                factors.save(out)
                phase_store.clear_partial(out)
        else:
            parts = []
            for k, group in enumerate(groups):
                folder = partition_dir(out, k)
                sub = {n: tracked[n] for n in group}
                label = f" [partition {k + 1}/{len(groups)}: {len(group)} modules]"
                part = self._reuse_partition(folder, model, sub, train_ids) or self._fit_group(
                    trainer, pl_module, datamodule, folder, sub, train_ids, label
                )
                if trainer.is_global_zero:
                    part.save(folder)
                    phase_store.clear_partial(folder)
                parts.append(part.to("cpu") if self.offload else part)
            factors = Factors.merge(parts).fingerprint(model, tracked, train_ids)
            if trainer.is_global_zero:
                write_partition_index(out, groups, {
                    "model_fingerprint": factors.model_fingerprint, "module_fingerprints": factors.module_fingerprints,
                    "untracked_fingerprint": factors.untracked_fingerprint, "data_fingerprint": factors.data_fingerprint,
                })
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            _log(f"EK-FAC factors written to {out}" + (f" in {len(groups)} partitions" if len(groups) > 1 else ""))
            self._log_tensorboard(trainer, factors)
        return factors

    def _reuse_partition(self, folder: Path, model: torch.nn.Module, sub: dict[str, torch.nn.Module], train_ids: list[str]) -> Factors | None:
        """A finished partition of an interrupted partitioned fit, if it belongs to this model and data."""
        if self.refit or not (folder / "manifest.json").exists():
            return None
        part = Factors.load(folder, device="cpu")
        if part.fisher != self.fisher or part.check_compatible(model, sub, train_ids=train_ids, strict=False):
            return None
        _log(f"EK-FAC: reusing finished partition {folder}")
        return part.with_damping(self.damping).to(model_device(model))

    def _fit_group(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any, out: Path,
                   tracked: dict[str, torch.nn.Module], train_ids: list[str], label: str) -> Factors:
        """The three phases for one group of modules (all of them without partitions), each resumable."""
        model = self.hf_model(pl_module)
        key = self._phase_key(model, tracked, train_ids)
        device = str(pl_module.device)
        self._tracked_for_pass = tracked

        def run_pass(phase: str) -> Any:
            trainer.run_attribution_pass(phase, pl_module, datamodule, batch_size=self.batch_size)
            return self._result

        try:
            covariance = self._phase(
                trainer, out, key, device, "1/3 covariance" + label, phase_store.load_covariance,
                phase_store.save_covariance, lambda: run_pass(COVARIANCE),
            )
            eigen = self._phase(
                trainer, out, key, device, "2/3 eigendecomposition" + label, phase_store.load_eigen,
                phase_store.save_eigen, lambda: self._distributed_eigen(trainer, covariance),
            )
            self._eigen_for_pass = eigen
            if self.offload:  # the lambda pass reads only the eigenbases: A and S wait in CPU memory
                for sums in (covariance.activation_sums, covariance.gradient_sums):
                    for name in sums:
                        sums[name] = sums[name].cpu()
            lambdas = self._phase(
                trainer, out, key, device, "3/3 lambda" + label, phase_store.load_lambda,
                phase_store.save_lambda, lambda: run_pass(LAMBDA),
            )
        finally:
            self._tracked_for_pass = None
            self._eigen_for_pass = {}
        return Factors.from_states(
            covariance, eigen, lambdas, fisher=self.fisher, damping=self.damping, model=model, tracked=tracked,
            train_ids=train_ids, compute_dtype=dtype_name(self.compute_dtype),
        )

    def _phase(self, trainer: Any, out: Path, key: dict[str, Any], device: str, label: str,
               load: Callable, save: Callable, compute: Callable[[], Any]) -> Any:
        """Reuse a finished phase from disk when its key matches, else compute it and save it (rank 0)."""
        result, why = (None, "refit requested") if self.refit else load(out, key, device)
        if result is not None:
            _log(f"EK-FAC phase {label}: {why} from {out / phase_store.PARTIAL}")
            return result
        _log(f"EK-FAC phase {label}: computing ({why})")
        result = compute()
        if trainer.is_global_zero:
            save(out, result, key)
        return result

    # ------------------------------------------------------- batch plumbing
    def on_predict_start(self, trainer: Any, pl_module: L.LightningModule) -> None:
        phase = getattr(trainer, "attribution_phase", None)
        if phase not in (COVARIANCE, LAMBDA):
            return
        model = self.hf_model(pl_module)
        tracked = self._tracked_for_pass if self._tracked_for_pass is not None else resolve_modules(model, self.modules)
        torch.manual_seed(self.seed + trainer.global_rank)  # true-Fisher label sampling, same in both passes
        loss_fn = loss_fn_for(pl_module)
        if phase == COVARIANCE:
            def make() -> Any:
                return CovarianceAccumulator(model, tracked, loss_fn, self.fisher, self.dtype, self.compute_dtype)
        else:
            eigen = {n: _basis_to(b, pl_module.device) for n, b in self._eigen_for_pass.items()}

            def make() -> Any:
                return LambdaAccumulator(model, tracked, eigen, loss_fn, self.fisher, self.dtype, self.compute_dtype)
        self._accumulator = AccumulatorStreams(make, self.streams, sampled_labels=self.fisher == "true")

    def on_predict_batch_end(self, trainer: Any, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._accumulator is None or getattr(trainer, "attribution_phase", None) not in (COVARIANCE, LAMBDA):
            return
        with torch.enable_grad():  # predict hooks run under no_grad
            self._accumulator.step(batch)

    def on_predict_end(self, trainer: Any, pl_module: L.LightningModule) -> None:
        if self._accumulator is None:
            return
        accumulators = self._accumulator.finish()
        self._accumulator = None
        state = merged_state(accumulators)
        if trainer.world_size > 1:  # exactly once per pass: ranks may have seen different batch counts
            for tensor in state.tensors():
                tensor.copy_(trainer.strategy.reduce(tensor.clone(), reduce_op="sum"))
        self._result = state

    def on_exception(self, trainer: Any, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._accumulator is not None:  # stop the stream workers of an interrupted pass
            self._accumulator.close()
            self._accumulator = None

    # ------------------------------------------------------- distribution
    def _distributed_eigen(self, trainer: Any, covariance: Any) -> dict[str, EigenBasis]:
        names = list(covariance.shapes)
        world, rank = trainer.world_size, trainer.global_rank
        mine = names[rank::world] if world > 1 else names
        eigen = eigendecompose(covariance, names=mine, progress=trainer.is_global_zero)
        if world == 1:
            return eigen
        import torch.distributed as dist

        for index, name in enumerate(names):
            owner = index % world
            shape = covariance.shapes[name]
            dtype = covariance.activation_sums[name].dtype
            device = covariance.activation_sums[name].device
            basis = eigen.get(name) or EigenBasis(
                torch.empty(shape.in_dim, shape.in_dim, dtype=dtype, device=device),
                torch.empty(shape.in_dim, dtype=dtype, device=device),
                torch.empty(shape.out_features, shape.out_features, dtype=dtype, device=device),
                torch.empty(shape.out_features, dtype=dtype, device=device),
            )
            for tensor in (basis.activation_eigenvectors, basis.activation_eigenvalues, basis.gradient_eigenvectors, basis.gradient_eigenvalues):
                dist.broadcast(tensor, src=owner)
            eigen[name] = basis
        return eigen

    # ---------------------------------------------------------- monitoring
    def _log_tensorboard(self, trainer: Any, factors: Factors) -> None:
        writer = tensorboard_writer(trainer)
        if not self.log_spectra or writer is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for name, mod in factors.modules.items():
            short = name.replace("model.", "").replace("layers.", "L")
            for ax, values in zip(
                axes,
                (mod.eigen.activation_eigenvalues, mod.eigen.gradient_eigenvalues, mod.lambdas.flatten()),
            ):
                v = torch.sort(values.detach().double().cpu().clamp_min(1e-30), descending=True).values
                ax.semilogy(v.numpy(), label=short, lw=0.8)
            writer.add_histogram(f"ekfac/lambda_log10/{name}", torch.log10(mod.lambdas.detach().double().cpu().clamp_min(1e-30)), 0)
            writer.add_scalar(f"ekfac/damping/{name}", mod.damping, 0)
        for ax, title in zip(axes, ("eigenvalues of A", "eigenvalues of S", "Λ (eigenvalue correction)")):
            ax.set_title(title)
            ax.set_xlabel("rank")
        axes[0].legend(fontsize=5, ncol=2)
        fig.tight_layout()
        writer.add_figure("ekfac/spectra", fig, 0)
        plt.close(fig)


def _basis_to(basis: EigenBasis, device: torch.device) -> EigenBasis:
    return EigenBasis(*(t.to(device) for t in (basis.activation_eigenvectors, basis.activation_eigenvalues, basis.gradient_eigenvectors, basis.gradient_eigenvalues)))
