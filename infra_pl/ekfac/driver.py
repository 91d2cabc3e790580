"""The EK-FAC factor fit, end to end, for any runner: phases, resume, partitions, reuse.

Phases per module group: covariance pass → eigendecomposition (spread over ranks by module) →
lambda pass. With an output folder every finished phase is written (an interrupted fit resumes from
the last finished phase, and from the last finished partition), and finished factors on disk are
reused when their fingerprints match the model and data. The passes run through a
:class:`~infra_pl.runner.Runner`: :func:`infra_pl.ekfac.fit_factors` uses the in-process one, the
``EKFACFactors`` callback the Lightning one; nothing here knows Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from infra_pl.console import log
from infra_pl.ekfac import phase_store
from infra_pl.ekfac.checkpointing import checkpointing_runner
from infra_pl.ekfac.covariance import CovarianceAccumulator
from infra_pl.ekfac.eigen import EigenBasis, eigendecompose
from infra_pl.ekfac.factors import Factors, FactorsMismatchError
from infra_pl.ekfac.lambdas import LambdaAccumulator
from infra_pl.ekfac.loss import LossFn
from infra_pl.ekfac.modules import layer_shape, resolve_modules
from infra_pl.ekfac.options import FactorOptions
from infra_pl.ekfac.partition import check_partitions, split_modules
from infra_pl.ekfac.precision import dtype_name
from infra_pl.ekfac.storage import partition_dir, read_partition_index, write_partition_index
from infra_pl.ekfac.streams import AccumulatorStreams, merged_state
from infra_pl.runner import Pass, Runner
from infra_pl.sampling import sample_indices

COVARIANCE, LAMBDA = "ekfac/covariance", "ekfac/lambda"


@dataclass
class FactorsResult:
    """What a factor fit produced: the factors, where they are, whether they were reused, the groups."""

    factors: Factors
    output_dir: Path | None
    reused: bool
    partitions: list[list[str]] = field(default_factory=list)


class FactorFit:
    """One factor fit (or reuse) of ``model`` over the batches ``train_loader(indices)`` yields.

    ``train_loader`` is called once per pass (a Lightning pass needs a fresh loader) with the
    example indices of that pass (None: every example; a sample when ``covariance_max_examples`` or
    ``lambda_max_examples`` is set, stratified by ``strata``, one label per example). ``tracked``
    overrides ``options.modules`` with a ready mapping. ``batch_shape`` (sequences, tokens) is the
    largest batch the memory planner must fit (``partitions: auto``); ``reserved_bytes`` is device
    memory held outside the planner's terms, taken off the budget (under FSDP: the shard each rank
    keeps while the full weights are gathered, :mod:`infra_pl.fsdp`).
    """

    def __init__(self, options: FactorOptions, runner: Runner, model: nn.Module, loss_fn: LossFn,
                 train_loader: Callable[[list[int] | None], Iterable[Any]], train_ids: list[str] | None,
                 output_dir: Path | None = None, tracked: Mapping[str, nn.Module] | None = None,
                 batch_shape: tuple[int, int] | None = None, strata: Sequence[Any] | None = None,
                 reserved_bytes: int = 0) -> None:
        self.options = options
        # every pass with each decoder block checkpointed when asked (infra_pl.ekfac.checkpointing)
        self.runner = checkpointing_runner(runner, model, options.activation_checkpointing)
        self.model = model
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.train_ids = train_ids
        self.out = output_dir
        self.tracked = dict(tracked) if tracked is not None else resolve_modules(model, options.modules)
        self.batch_shape = batch_shape
        self.strata = list(strata) if strata is not None else None
        self.reserved_bytes = reserved_bytes

    # ------------------------------------------------------------ entry point
    def run(self) -> FactorsResult:
        out = self.out
        if out is not None and not self.options.refit and (
            (out / "manifest.json").exists() or read_partition_index(out) is not None
        ):
            factors = self._reuse(out)
            index = read_partition_index(out)
            return FactorsResult(factors, out, True, index["partitions"] if index else [list(factors.modules)])
        groups = self.module_groups()
        if len(groups) == 1:
            factors = self._fit_group(out, self.tracked, "")
            if out is not None and self.runner.is_main:
                factors.save(out)
                phase_store.clear_partial(out)
        else:
            factors = self._fit_partitioned(out, groups)
        self.runner.barrier()
        if out is not None and self.runner.is_main:
            log(f"EK-FAC factors written to {out}" + (f" in {len(groups)} partitions" if len(groups) > 1 else ""))
        return FactorsResult(factors, out, False, groups)

    # ----------------------------------------------------------------- reuse
    def _reuse(self, out: Path) -> Factors:
        factors = Factors.load(out, device="cpu")
        try:
            factors.check_compatible(self.model, self.options.modules, train_ids=self.train_ids, strict=self.options.strict)
        except FactorsMismatchError as err:
            raise FactorsMismatchError(
                f"{err}. The factors in {out} were fitted on another model or dataset: delete that folder, "
                "set refit: true on EKFACFactors, or strict: false to use them anyway."
            ) from None
        if factors.fisher != self.options.fisher:
            raise FactorsMismatchError(
                f"factors in {out} use the {factors.fisher} Fisher but {self.options.fisher} was requested; set refit: true"
            )
        if factors.activation_tokens != self.options.activation_tokens:
            raise FactorsMismatchError(
                f"factors in {out} average A over {factors.activation_tokens!r} tokens but activation_tokens "
                f"{self.options.activation_tokens!r} was requested; set refit: true"
            )
        wanted_sample = self.options.sample_spec(self._n_train)
        if factors.sample != wanted_sample:
            raise FactorsMismatchError(
                f"factors in {out} were fitted on the sample {factors.sample} but {wanted_sample} was "
                "requested; set refit: true"
            )
        fitted, wanted = getattr(torch, factors.compute_dtype), self.options.torch_compute_dtype
        if torch.finfo(fitted).bits < torch.finfo(wanted).bits:
            raise FactorsMismatchError(
                f"factors in {out} were fitted with {factors.compute_dtype} products but compute_dtype "
                f"{dtype_name(wanted)} was requested; set refit: true"
            )
        if fitted != wanted:
            log(f"EK-FAC: the factors in {out} were fitted with {factors.compute_dtype} products, more precise "
                f"than the requested {dtype_name(wanted)}; reusing them")
        log(f"EK-FAC: reusing factors from {out}")
        return factors.with_damping(self.options.damping).to("cpu" if self.options.offload else self.runner.device)

    def _reuse_partition(self, folder: Path, sub: dict[str, nn.Module]) -> Factors | None:
        """A finished partition of an interrupted partitioned fit, if it belongs to this model and data."""
        if self.options.refit or not (folder / "manifest.json").exists():
            return None
        part = Factors.load(folder, device="cpu")
        if part.fisher != self.options.fisher or part.activation_tokens != self.options.activation_tokens or part.check_compatible(self.model, sub, train_ids=self.train_ids, strict=False):
            return None
        log(f"EK-FAC: reusing finished partition {folder}")
        return part.with_damping(self.options.damping).to(self.runner.device)

    # ------------------------------------------------------------ partitions
    def module_groups(self) -> list[list[str]]:
        """The module groups fitted one after another (one group without partitions)."""
        partitions, tracked = self.options.partitions, self.tracked
        if partitions == "auto":
            return self._planned_groups()
        if partitions is None or partitions == 1:
            return [list(tracked)]
        if isinstance(partitions, int):
            return split_modules({n: layer_shape(m) for n, m in tracked.items()}, partitions)
        return check_partitions(partitions, list(tracked))

    def _planned_groups(self) -> list[list[str]]:
        from infra_pl.planner import estimate, format_bytes, plan_partitions

        budget = self.options.budget_bytes(self.runner.device)
        if budget is None:
            raise ValueError("partitions: auto needs device_budget (e.g. '16GiB') when the model is not on a CUDA device")
        if self.batch_shape is None:
            raise ValueError("partitions: auto needs the batch shape (sequences, tokens) the passes will use")
        batch_size, seq_len = self.batch_shape
        settings = self.options.planner_settings(batch_size, seq_len)
        usable = budget - self.reserved_bytes
        plan = plan_partitions(estimate(self.model, settings, modules=list(self.tracked)), usable)
        phase, peak = plan.largest_peak
        reserved = f", {format_bytes(self.reserved_bytes)} of it reserved" if self.reserved_bytes else ""
        log(f"EK-FAC plan: {len(plan.partitions)} partition(s) for a {format_bytes(budget)} budget{reserved} "
            f"(batch {batch_size} x {seq_len} tokens; largest estimated peak {format_bytes(peak)} in the {phase})")
        return check_partitions(plan.partitions, list(self.tracked))

    def _fit_partitioned(self, out: Path | None, groups: list[list[str]]) -> Factors:
        parts = []
        for k, group in enumerate(groups):
            folder = partition_dir(out, k) if out is not None else None
            sub = {n: self.tracked[n] for n in group}
            label = f" [partition {k + 1}/{len(groups)}: {len(group)} modules]"
            part = (self._reuse_partition(folder, sub) if folder is not None else None) or self._fit_group(folder, sub, label)
            if folder is not None and self.runner.is_main:
                part.save(folder)
                phase_store.clear_partial(folder)
            parts.append(part.to("cpu") if self.options.offload else part)
        factors = Factors.merge(parts).fingerprint(self.model, self.tracked, self.train_ids)
        if out is not None and self.runner.is_main:
            write_partition_index(out, groups, {
                "model_fingerprint": factors.model_fingerprint, "module_fingerprints": factors.module_fingerprints,
                "untracked_fingerprint": factors.untracked_fingerprint, "data_fingerprint": factors.data_fingerprint,
            })
        return factors

    # ---------------------------------------------------------------- phases
    def _fit_group(self, out: Path | None, tracked: dict[str, nn.Module], label: str) -> Factors:
        """The three phases for one group of modules, each resumable when ``out`` is set."""
        options = self.options
        key = options.phase_key(self.model, tracked, self.train_ids or []) if out is not None else {}
        covariance = self._phase(out, key, "1/3 covariance" + label, phase_store.load_covariance,
                                 phase_store.save_covariance, lambda: self._accumulate(COVARIANCE, tracked, None))
        eigen = self._phase(out, key, "2/3 eigendecomposition" + label, phase_store.load_eigen,
                            phase_store.save_eigen, lambda: self._distributed_eigen(covariance))
        if options.offload:  # the lambda pass reads only the eigenbases: A and S wait in CPU memory
            for sums in (covariance.activation_sums, covariance.gradient_sums):
                for name in sums:
                    sums[name] = sums[name].cpu()
        lambdas = self._phase(out, key, "3/3 lambda" + label, phase_store.load_lambda,
                              phase_store.save_lambda, lambda: self._accumulate(LAMBDA, tracked, eigen))
        return Factors.from_states(
            covariance, eigen, lambdas, fisher=options.fisher, damping=options.damping, model=self.model,
            tracked=tracked, train_ids=self.train_ids, compute_dtype=dtype_name(options.torch_compute_dtype),
            activation_tokens=options.activation_tokens, sample=options.sample_spec(self._n_train),
        )

    def _phase(self, out: Path | None, key: dict[str, Any], label: str, load: Callable, save: Callable,
               compute: Callable[[], Any]) -> Any:
        """Reuse a finished phase from disk when its key matches, else compute it and save it (main rank)."""
        if out is None:
            return compute()
        result, why = (None, "refit requested") if self.options.refit else load(out, key, str(self.runner.device))
        if result is not None:
            log(f"EK-FAC phase {label}: {why} from {out / phase_store.PARTIAL}")
            return result
        log(f"EK-FAC phase {label}: computing ({why})")
        result = compute()
        if self.runner.is_main:
            save(out, result, key)
        return result

    def _accumulate(self, phase: str, tracked: dict[str, nn.Module], eigen: dict[str, EigenBasis] | None) -> Any:
        """One covariance or lambda pass; the sums of every stream and rank, reduced once."""
        options, model, device = self.options, self.model, self.runner.device
        if eigen is None:
            def make() -> Any:
                return CovarianceAccumulator(model, tracked, self.loss_fn, options.fisher, options.torch_dtype,
                                             options.torch_compute_dtype, options.activation_tokens)
        else:
            on_device = {n: _basis_to(b, device) for n, b in eigen.items()}

            def make() -> Any:
                return LambdaAccumulator(model, tracked, on_device, self.loss_fn, options.fisher, options.torch_dtype,
                                         options.torch_compute_dtype)
        holder: dict[str, Any] = {}

        def start() -> None:
            holder["streams"] = AccumulatorStreams(make, options.streams, sampled_labels=options.fisher == "true")

        def end() -> None:
            holder["state"] = merged_state(holder.pop("streams").finish())

        def abort() -> None:
            if "streams" in holder:  # stop the stream workers of an interrupted pass
                holder.pop("streams").close()

        def step(batch: Any) -> None:
            holder["streams"].step(batch)

        label = "EK-FAC covariance" if eigen is None else "EK-FAC eigenvalue correction"
        self.runner.run(Pass(phase, step, start=start, end=end, abort=abort, seed=options.seed, label=label),
                        self.train_loader(self._sample(eigen is None)))
        state = holder["state"]
        self.runner.all_reduce_sum_(state.tensors())  # once per pass: ranks may have seen different batch counts
        return state

    @property
    def _n_train(self) -> int | None:
        """How many examples the factor passes draw from (None: a loader without ids or strata)."""
        if self.strata is not None:
            return len(self.strata)
        return None if self.train_ids is None else len(self.train_ids)

    def _sample(self, covariance: bool) -> list[int] | None:
        """The example indices of a covariance or lambda pass (None: all), seeded and stratified."""
        options = self.options
        which = "covariance_max_examples" if covariance else "lambda_max_examples"
        wanted = options.max_examples(which)
        if wanted is None:
            return None
        if self._n_train is None:
            if getattr(options, which) == "auto":
                log(f"EK-FAC {'covariance' if covariance else 'lambda'} pass: {which}=auto, but the loader has no "
                    "example ids to sample from, so the pass sees every example")
                return None
            raise ValueError(f"{which}={wanted} needs the training ids (or strata) to sample from")
        strata = self.strata if self.strata is not None else [None] * len(self.train_ids or [])
        chosen = sample_indices(strata, wanted, options.sample_seed + (0 if covariance else 1), which)
        if chosen is None:
            return None
        log(f"EK-FAC {'covariance' if covariance else 'lambda'} pass on a sample: {len(chosen)} of {len(strata)} examples "
            f"({which}={wanted}, stratified, seed {options.sample_seed})")
        return chosen

    def _distributed_eigen(self, covariance: Any) -> dict[str, EigenBasis]:
        """Each rank decomposes every world-th module; the bases are then broadcast from their owners."""
        runner = self.runner
        names = list(covariance.shapes)
        world = runner.world_size
        mine = names[runner.rank::world] if world > 1 else names
        eigen = eigendecompose(covariance, names=mine, progress=runner.is_main and getattr(runner, "progress", True))
        if world == 1:
            return eigen
        for index, name in enumerate(names):
            shape = covariance.shapes[name]
            like = covariance.activation_sums[name]
            basis = eigen.get(name) or EigenBasis(
                like.new_empty(shape.in_dim, shape.in_dim), like.new_empty(shape.in_dim),
                like.new_empty(shape.out_features, shape.out_features), like.new_empty(shape.out_features),
            )
            for tensor in (basis.activation_eigenvectors, basis.activation_eigenvalues, basis.gradient_eigenvectors,
                           basis.gradient_eigenvalues):
                runner.broadcast_tensor_(tensor, src=index % world)
            eigen[name] = basis
        return eigen


def _basis_to(basis: EigenBasis, device: torch.device) -> EigenBasis:
    return EigenBasis(*(t.to(device) for t in (basis.activation_eigenvectors, basis.activation_eigenvalues,
                                                basis.gradient_eigenvectors, basis.gradient_eigenvalues)))
