"""``FactorOptions``: every option of an EK-FAC factor fit, declared once with its help text.

The pure API (:func:`infra_pl.ekfac.fit_factors`), the ``EKFACFactors`` callback (its
``__init__`` and ``--help`` are generated from these fields), the phase key that decides whether a
stored phase is reused, and the memory planner's settings all read this one dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from infra_pl.dtypes import parse_dtype
from infra_pl.options import key_values, option

# Examples per factor pass under ``covariance_max_examples``/``lambda_max_examples: auto`` (the default).
# On the LDS harness even 20 examples kept per-item LDS inside the full-data interval; at N = 8,192 a
# 1,024-example sample gave scores with Pearson 0.9985 (aggregated f) and 0.9974 (per item) to full-data
# factors' at 0.31 instead of 2.08 epoch-equivalents (benchmarks/bench_factor_sample.py). Sets up to
# 1,024 examples are fitted whole.
AUTO_SAMPLE = 1024


@dataclass
class FactorOptions:
    """Options of the EK-FAC factor fit (covariance pass, eigendecomposition, lambda pass)."""

    modules: str | list[str] | None = option(
        None, "regex or list of module names to track; default: the MLP projections of every block (LoRA adapter "
        "layers inside MLPs when the model is a PEFT model).")
    fisher: str = option(
        "true", "``true`` (labels sampled from the model, as in the paper) or ``empirical`` (data labels).", key=True)
    damping: float | None = option(None, "fixed damping λ; default (null): 0.1 × mean(Λ) per module.")
    batch_size: int | None = option(
        None, "batch size of the factor passes (default: the datamodule's eval batch size).")
    output_dir: str | None = option(
        None, "where factors go (default: ``<default_root_dir>/attribution/factors``).")
    dtype: str = option(
        "float32", "accumulation dtype of the factors (float32, or float64 for reference runs).", key=True)
    seed: int = option(
        0, "seed of the label sampling for the true Fisher (both passes sample the same labels).", key=True)
    strict: bool = option(
        True, "refuse factors on disk that were fitted on another model or dataset (false: use them anyway, with a "
        "warning).")
    refit: bool = option(False, "ignore factors and phase results on disk and fit again.")
    log_spectra: bool = option(True, "log eigenvalue spectra and Λ histograms to TensorBoard.")
    partitions: int | str | list[list[str]] | None = option(
        None, "fit one group of modules at a time, so device memory holds one group's factors and pass buffers: a "
        "number of balanced contiguous groups, or the groups as lists of module names. Each group costs its own two "
        "data passes; factors go to ``partition-<k>/`` folders read lazily by module. ``auto``: the fewest groups the "
        "memory planner (``infra-pl-plan``) fits into ``device_budget`` for this model, batch size and max_length.")
    offload: bool = option(
        False, "keep factors in CPU memory between uses: A and S leave the device after the eigendecomposition (the "
        "lambda pass and scoring read only eigenbases and Λ), and each finished group's factors leave it too.")
    device_budget: str | None = option(
        None, "device memory the ``auto`` plan may fill, e.g. ``70GiB`` (default: 90% of the CUDA device's memory; "
        "required on CPU).")
    streams: int = option(
        1, "CPU only: split every batch into this many parts that run at once, each on threads ÷ streams cores "
        "(``infra_pl.ekfac.streams``); the same sequences are in flight as with one stream, so memory does not grow. "
        "Pays off on small models with free cores (see benchmarks/RESULTS.md); refused on a GPU.")
    compute_dtype: str = option(
        "float32", "operand dtype of the passes' big products (covariance grams, Λ rotations): ``float32`` or "
        "``bfloat16`` (faster only on hardware with bfloat16 matrix units). Sums, eigendecompositions and the "
        "stored factors stay in ``dtype``; the model is never cast (``infra_pl.ekfac.precision``).", key=True)

    activation_tokens: str = option(
        "all", "which positions the activation covariance A averages over: ``all`` real tokens (kronfluence's "
        "convention) or only ``targets``, the positions that predict a loss target (bergson's and dattri's); the "
        "gradients, and so Λ and every score, always use every token.", key=True)

    covariance_max_examples: int | float | str | None = option(
        "auto", "fit A and S on a sample of the training set: a count, a fraction in (0, 1], ``auto`` (the default: "
        f"{AUTO_SAMPLE} examples: every example up to N = {AUTO_SAMPLE}) or null (every example); seeded "
        "(``sample_seed``) and stratified by domain and difficulty where the data has them. The sample is recorded "
        "in the manifest; accuracy against full-data factors (LDS per item, score agreement at N = 2k-32k): "
        "benchmarks/RESULTS.md.", key=True)
    lambda_max_examples: int | float | str | None = option(
        "auto", "fit the eigenvalue correction Λ on a sample (as ``covariance_max_examples``; null: every example).",
        key=True)
    sample_seed: int = option(0, "seed of the covariance and lambda samples.", key=True)

    activation_checkpointing: bool = option(
        False, "checkpoint every decoder block in the covariance and lambda passes: the forward keeps only each "
        "block's input and the backward replays one block at a time (infra_pl.ekfac.checkpointing); the same "
        "factors, far less activation memory; ``partitions: auto`` plans with it (infra-pl-plan "
        "--activation-checkpointing).")

    def __post_init__(self) -> None:
        from infra_pl.ekfac.passes import check_fisher
        from infra_pl.ekfac.precision import resolve_compute_dtype
        from infra_pl.ekfac.streams import check_streams

        check_fisher(self.fisher)
        for which in ("covariance_max_examples", "lambda_max_examples"):
            value = getattr(self, which)
            if isinstance(value, str) and value != "auto":
                raise ValueError(f"{which} must be a count, a fraction in (0, 1], 'auto' or null; got {value!r}")
            if value is not None and value != "auto":
                from infra_pl.sampling import sample_size

                sample_size(value, 1 << 62, which)  # a non-positive count or a fraction above 1 fails here
        if self.activation_tokens not in ("all", "targets"):
            raise ValueError(f"activation_tokens must be 'all' or 'targets', got {self.activation_tokens!r}")
        check_streams(self.streams)
        self.torch_dtype = parse_dtype(self.dtype, "dtype", ("float32", "float64"))
        self.torch_compute_dtype = resolve_compute_dtype(self.compute_dtype, self.torch_dtype)
        if isinstance(self.partitions, bool) or (isinstance(self.partitions, int) and self.partitions < 1):
            raise ValueError(f"partitions must be at least 1, got {self.partitions}")
        if isinstance(self.partitions, str) and self.partitions != "auto":
            raise ValueError(f"partitions must be a number, a list of module-name lists or 'auto', got {self.partitions!r}")

    def phase_key(self, model: torch.nn.Module, tracked: dict[str, torch.nn.Module], train_ids: list[str]) -> dict[str, Any]:
        """What a stored phase must match to be reused: tracked shapes, the key options, fingerprints."""
        from infra_pl.ekfac.fingerprint import data_fingerprint, model_fingerprint
        from infra_pl.ekfac.modules import layer_shape

        values = key_values(self)
        values["dtype"] = str(self.torch_dtype)
        values["compute_dtype"] = str(self.torch_compute_dtype)  # bfloat16 products give other (close) sums
        return {
            "modules": {name: layer_shape(m).to_dict() for name, m in tracked.items()},
            **{k: values[k] for k in ("fisher", "dtype", "compute_dtype", "seed")},
            # only when set, so phases stored before the option resume
            **({"activation_tokens": self.activation_tokens} if self.activation_tokens != "all" else {}),
            **({"sample": sample} if (sample := self.sample_spec(None if train_ids is None else len(train_ids))) else {}),
            "model_fingerprint": model_fingerprint(model, tracked),
            "data_fingerprint": data_fingerprint(train_ids),
        }

    def max_examples(self, which: str) -> int | float | None:
        """``covariance_max_examples`` or ``lambda_max_examples`` with ``auto`` resolved to its count."""
        value = getattr(self, which)
        return AUTO_SAMPLE if value == "auto" else value

    def sample_spec(self, n_train: int | None) -> dict[str, Any] | None:
        """The subsample settings for ``n_train`` examples, for phase keys and the manifest; None when both
        passes see every example (a count of at least N is no sample: such factors equal full-data ones
        and stay reusable when the option changes). Without N (a loader without example ids) ``auto``
        means every example."""
        from infra_pl.sampling import sample_size

        spec = {}
        for which in ("covariance_max_examples", "lambda_max_examples"):
            value = self.max_examples(which)
            if n_train is None:
                spec[which] = None if getattr(self, which) == "auto" else value
            else:
                spec[which] = value if sample_size(value, n_train, which) is not None else None
        if all(v is None for v in spec.values()):
            return None
        return {**spec, "seed": self.sample_seed}

    def budget_bytes(self, device: torch.device) -> int | None:
        """``device_budget`` if set, else 90% of a CUDA device's memory, else None (nothing to plan for)."""
        from infra_pl.planner import parse_bytes

        if self.device_budget is not None:
            return parse_bytes(self.device_budget)
        if device.type == "cuda":
            return int(0.9 * torch.cuda.get_device_properties(device).total_memory)
        return None

    def planner_settings(self, batch_size: int, seq_len: int, measurements: int = 2) -> Any:
        """The memory planner's :class:`~infra_pl.planner.Settings` for these options and batch shape."""
        from infra_pl.planner import Settings

        return Settings(batch_size=batch_size, seq_len=seq_len, measurements=measurements, factor_dtype=self.torch_dtype,
                        fisher=self.fisher, padding=True, keep_covariance=not self.offload,
                        compute_dtype=self.torch_compute_dtype,
                        activation_checkpointing=self.activation_checkpointing)
