"""``ScoreOptions``: every option of the scoring run, declared once with its help text.

Read by the score driver (:class:`infra_pl.influence.driver.ScoreRun`) and by the
``InfluenceScores`` callback, whose ``__init__`` and ``--help`` are generated from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra_pl.dtypes import parse_dtype
from infra_pl.measurements import CorrectAnswerLogLikelihood, Measurement
from infra_pl.options import option

DCORRECT_DEFAULTS = {"n_correct": 100, "min_correct": 10, "fallback": None, "correctness_file": None, "seed": 0,
                     "target": "auto"}


@dataclass
class ScoreOptions:
    """Options of the measurement directions and the instance, token, sentence and pairwise scores."""

    measurements: list[Measurement] | None = option(
        None, "the measurement objects (``infra_pl.measurements``, ``class_path``/``init_args`` in YAML); default: "
        "one CorrectAnswerLogLikelihood configured by the six D_correct options below (the paper's Eq. 6). Those "
        "options are refused when measurements are given: set them on the measurement instead.")
    n_correct: int | None = option(None, "size of D_correct per evaluation domain (default 100; random correct items, "
                                   "all if fewer).")
    min_correct: int | None = option(None, "below this many correct items a domain stops the run, unless "
                                     "``fallback`` (default 10).")
    fallback: str | None = option(None, "``reference`` measures on the reference answers of all evaluation items when "
                                  "a domain has too few correct ones; every output then carries that label.")
    correctness_file: str | None = option(None, "per-example correctness from ``validate`` (default: the newest "
                                          "``correctness.jsonl`` under the run folder; if none exists, validation "
                                          "runs first).")
    seed: int | None = option(None, "seed of the D_correct draw (default 0).")
    target: str | None = option(None, "the correct answer y_i that the default measurement teacher-forces: "
                                "``generated`` (the model's own correct generation), ``reference`` (the dataset's "
                                "solution; refused where it is a stand-in) or ``auto`` (default: generated for "
                                "long-CoT training data and items without a full reference solution).")
    batch_size: int | None = option(None, "batch size of the scoring passes (default: the datamodule's eval batch "
                                    "size).")
    token_top_k: int = option(100, "token scores for the top-K examples of each training domain per measurement (by "
                              "instance score), so math and code traces can be compared even when one domain "
                              "dominates the top; 0 turns token scores off (then the module needs no "
                              "``attribution_logits``).")
    token_all: bool = option(False, "token scores for every training example instead of the top-K.")
    sentence_top_k: int = option(10, "sentence scores (Eq. 7) for the top examples per measurement (0: off).")
    pairwise: bool = option(False, "also write per-query scores (every measured item x every training example) to "
                            "``pairwise_scores.parquet``, for analyses beyond the mean measurement.")
    output_dir: str | None = option(None, "where scores go (default: ``<default_root_dir>/attribution/scores``).")
    streams: int = option(1, "CPU only: split every instance-score and pairwise-query batch into this many parts "
                          "that run at once, each on threads ÷ streams cores (``infra_pl.ekfac.streams``); the same "
                          "scores. Token scores run as one stream. Refused on a GPU.")
    pairwise_dtype: str = option("float32", "dtype of the per-query directions of ``pairwise`` and of the products "
                                 "of their training pass: ``float32`` or ``bfloat16`` (half the memory of Q "
                                 "directions; scores are summed in float32). The measurement directions stay "
                                 "float32, so token scores still sum to the instance scores.")
    tagger: Any = option("auto", "who labels the cognitive behaviours of every training trace: ``rules``, an "
                         "``infra_pl.data.llm_judge.LLMJudgeTagger`` (the paper's judge; ``class_path`` in YAML), "
                         "``none`` (no behaviour analyses) or ``auto`` (rules when the datamodule gives chat "
                         "examples through ``attribution_example``, else none, said in the log and report). Tagged "
                         "once per trace, on the whole trace, and cached under the scores folder.")
    tag_workers: int = option(1, "processes for rule tagging (it is CPU-bound: long traces take a while each).")
    removal_top_k: int = option(20, "paper Table 2: per measurement and behaviour, the top-K examples that show the "
                                "behaviour are scored with all of its sentences removed at once (0: off).")
    refine_iterations: int = option(0, "refine every measurement direction v = H⁻¹∇f toward the exact damped "
                                    "inverse by this many iterations of conjugate gradient on the damped Fisher, "
                                    "with EK-FAC as preconditioner and start (0: EK-FAC only). Each iteration is one "
                                    "forward + backward pass over the refinement examples; the fixed point uses "
                                    "EK-FAC's damping, and every score uses the refined directions.")
    refine_tolerance: float = option(1e-3, "stop refining a measurement once ‖∇f − (F+λ)v‖ / ‖∇f‖ is below this.")
    refine_examples: int | None = option(512, "training sequences behind the refinement's Fisher: a seeded sample "
                                         "stratified by domain (null: the whole training set).")
    refine_fisher: str | None = option(None, "``true`` (labels sampled from the model, one fixed seed per "
                                       "sequence) or ``empirical``; default: the factors' Fisher.")
    refine_blocks: str = option("module", "``module``: the Fisher block-diagonal per tracked module (what EK-FAC "
                                "approximates); ``all``: with the cross-module blocks.")
    refine_pairwise: bool = option(False, "refine the per-query directions of ``pairwise`` too (cost grows with the "
                                   "number of queries: every iteration multiplies all of them).")
    refine_seed: int = option(0, "seed of the refinement sample and of its sampled labels.")
    index: bool = option(False, "during the instance pass (no extra pass), also store every training example's "
                         "gradient ∇log p(z) compressed in the EK-FAC eigenbasis: per tracked module, the "
                         "index_rank × index_rank block Q_S,kᵀ G Q_A,k on the top eigenvectors of S and A "
                         "(``infra_pl.influence.index``), in ``index_dir``. Later measurements are then scored "
                         "with ``from_index: true`` without another pass over the training set. The instance "
                         "scores are the same; a stopped pass keeps the parts written and a rerun completes them "
                         "(turning the index on after a finished run reruns the pass once to fill it).")
    index_rank: int = option(64, "eigenvectors of S and of A kept per module in the index (k): k_out·k_in = "
                             "min(k, out)·min(k, in) numbers per module and example. Exact at full rank; the "
                             "agreement of lower ranks with exact scores and the index size per example: "
                             "benchmarks/RESULTS.md (``benchmarks/bench_index.py``).")
    index_dtype: str = option("int8", "storage of the index: ``int8`` (each module's block scaled by its largest "
                              "magnitude / 127, the scale kept in float32; rounding moved agreement with exact "
                              "scores by < 1e-3), ``float16`` (twice the bytes) or ``float32`` (four times).")
    index_dir: str | None = option(None, "where the index is written and read (default: ``<output_dir>/index``, "
                                   "``partition-<k>/`` sub-folders with module partitions).")
    from_index: bool = option(False, "score the measurements against the stored index instead of a pass over the "
                              "training set: only the measurement passes run (and refinement, if set), then "
                              "S(z) ≈ Σ_modules ⟨Q_S,kᵀ v Q_A,k, R_z⟩ for every indexed example. The index must "
                              "hold every training example and belong to these weights and training ids. Token, "
                              "sentence and removal scores need the training set and are skipped; pairwise scores "
                              "are scored from the index too. Every output records that the scores come from the "
                              "index, at which rank and whether that rank is exact (``scored_from``).")
    index_check_examples: int = option(128, "with ``from_index``: a seeded sample of this many training examples "
                                       "(stratified by domain) is scored exactly, by an instance pass over those "
                                       "examples only, to measure each measurement's agreement with exact scores "
                                       "(Pearson, Spearman: logged, in ``scored_from.check`` and in the report) and "
                                       "to calibrate the index scores onto the exact scale (exact ≈ a·index + b, "
                                       "least squares on the sample): a rank-k index drops part of every score, so "
                                       "its raw scores are smaller in magnitude. 0: no check, raw index scores.")
    index_exact_top: int = option(50, "with ``from_index``: the K highest and K lowest examples of each measurement by "
                                  "index score are rescored exactly, so the examples a ranking shows first carry "
                                  "exact scores (column ``exact_score`` marks every exactly scored row). 0: none.")
    index_check_seed: int = option(0, "seed of the index check sample.")

    activation_checkpointing: bool = option(False, "checkpoint every decoder block in the scoring passes: the "
                                            "forward keeps only each block's input and the backward replays one "
                                            "block at a time (infra_pl.ekfac.checkpointing); the same scores, far "
                                            "less activation memory (infra-pl-plan --activation-checkpointing).")

    def __post_init__(self) -> None:
        from infra_pl.ekfac.streams import check_streams

        check_streams(self.streams)
        self.torch_pairwise_dtype = parse_dtype(self.pairwise_dtype, "pairwise_dtype", ("float32", "bfloat16"))
        if self.fallback not in (None, "reference"):
            raise ValueError(f"fallback must be null or 'reference', got {self.fallback!r}")
        if self.refine_iterations < 0:
            raise ValueError(f"refine_iterations must be 0 or more, got {self.refine_iterations}")
        if self.refine_fisher not in (None, "true", "empirical"):
            raise ValueError(f"refine_fisher must be null, 'true' or 'empirical', got {self.refine_fisher!r}")
        if self.refine_blocks not in ("module", "all"):
            raise ValueError(f"refine_blocks must be 'module' or 'all', got {self.refine_blocks!r}")
        if self.refine_examples is not None and self.refine_examples < 1:
            raise ValueError(f"refine_examples must be positive or null, got {self.refine_examples}")
        if self.index_rank < 1:
            raise ValueError(f"index_rank must be positive, got {self.index_rank}")
        if self.index_dtype not in ("int8", "float16", "float32"):
            raise ValueError(f"index_dtype must be 'int8', 'float16' or 'float32', got {self.index_dtype!r}")
        if self.index_check_examples < 0 or 0 < self.index_check_examples < 3:
            raise ValueError(f"index_check_examples must be 0 (no check) or at least 3, got {self.index_check_examples}")
        if self.index_exact_top < 0:
            raise ValueError(f"index_exact_top must be 0 or more, got {self.index_exact_top}")
        if self.index and self.from_index:
            raise ValueError("index: true writes the index in an instance pass and from_index: true scores without "
                             "one: set one of them")
        given = {name: getattr(self, name) for name in DCORRECT_DEFAULTS if getattr(self, name) is not None}
        if self.measurements and given:
            raise ValueError(f"{sorted(given)} configure the default measurement, which is not used when measurements "
                             "are given: set them on the measurement objects instead")

    def measurement_objects(self) -> list[Measurement]:
        """The configured measurements, or the paper's default built from the D_correct options."""
        if self.measurements:
            return list(self.measurements)
        values = {name: default if getattr(self, name) is None else getattr(self, name)
                  for name, default in DCORRECT_DEFAULTS.items()}
        return [CorrectAnswerLogLikelihood(n=values["n_correct"], min_correct=values["min_correct"],
                                           fallback=values["fallback"], correctness_file=values["correctness_file"],
                                           seed=values["seed"], target=values["target"])]

    @property
    def wants_tokens(self) -> bool:
        return self.token_all or self.token_top_k > 0
