"""Per-phase memory of an EK-FAC attribution run, from the model config alone.

Every phase's peak on one device is modelled as

    peak(P) = Σ fixed + Σ_{m ∈ P} resident[m] + max(max(fixed_transient), hook_overhead + max_{m ∈ P} transient[m])

for a group P of tracked modules (a *partition*: the phase handles only P's factors, captures and
directions; the model's own forward/backward is the same for every group):

* ``fixed``: held for the whole phase whatever P is: the weights (+ LoRA adapters), the batch,
  and in gradient passes the activations autograd saves for the backward (with activation
  checkpointing only each decoder block's input and what lies outside the blocks).
* ``fixed_transient``: short-lived buffers that peak while no tracked module's hook runs: the
  logits chain around the loss (gradient passes) or the forward-mode working set (token pass).
* ``resident[m]``: held for module m for the whole phase: factor sums, eigenvectors, Λ, measurement
  directions, and in hooked passes m's captured layer input until its backward hook consumes it.
* ``transient[m]``: buffers of m's own hook (gradient copies, rotations, contractions) or of m's
  eigendecomposition; one module at a time, on top of ``hook_overhead`` (the autograd gradient
  buffers alive while a hook runs, plus, with activation checkpointing, the saved tensors of the
  one block whose replay is running).

The byte counts follow the code of ``infra_pl.ekfac`` / ``infra_pl.influence`` and HF's Llama /
Qwen2 / Mistral decoder op by op; each term's docstring or comment says which tensors it is.
The target is the allocator's live bytes (``torch.cuda.max_memory_allocated``, or the RSS
high-water mark on CPU with freed blocks returned to the OS). NOT counted: the CUDA context and
library workspaces (cuBLAS/cuSOLVER handles: a few hundred MiB), allocator fragmentation (reserved
minus allocated; keep a headroom, see :mod:`infra_pl.planner.partition`), optimizer states (the
planner covers attribution, not training), and Python/host-side objects. Lightning's own buffers
are negligible next to these terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from infra_pl.influence.tokens import DUAL_LOOP_MAX_DIRECTIONS
from infra_pl.planner.model import Architecture, TrackedModule, parameter_bytes, tracked_modules

FLOAT32 = 4
FLOAT64 = 8
INT64 = 8

# Phase names, in run order.
COVARIANCE = "covariance pass"
EIGEN = "eigendecomposition"
LAMBDA = "lambda pass"
MEASUREMENT = "measurement pass"
DIRECTIONS = "directions (H^-1 grad f)"
INSTANCE = "instance scores"
TOKENS = "token scores (JVP)"
PHASES = (COVARIANCE, EIGEN, LAMBDA, MEASUREMENT, DIRECTIONS, INSTANCE, TOKENS)


@dataclass(frozen=True)
class Settings:
    """What a run does, beyond the model: batch shape, measurements, dtypes, Fisher type.

    Args:
        batch_size: sequences per batch in the attribution passes.
        seq_len: tokens per sequence (padded length).
        measurements: number of measurements M (e.g. 2: math and code).
        factor_dtype: accumulation/storage dtype of factors, captures and directions (float32).
        fisher: ``"true"`` (labels sampled from the model) or ``"empirical"``.
        padding: batches contain padding. Then the captures multiply by the mask (one copy per
            layer input), the attention gets a [B, 1, T, T] mask (the fused kernels keep a float
            copy per layer) and GQA keys/values are repeated to all heads before the kernel.
        compute_dtype: operand dtype of the factor passes' products (``EKFACFactors(compute_dtype)``,
            :mod:`infra_pl.ekfac.precision`); None: the factor dtype. The covariance and lambda passes
            then capture in this dtype (a cast copy when it differs from the model's), rotate in it,
            and upcast each batch's rotated gradients to the factor dtype before squaring.
        keep_covariance: the A and S sums stay on the device after the eigendecomposition, as the
            callbacks do now (``EKFACFactors`` keeps the covariance state through the lambda pass,
            ``InfluenceScores`` preconditions with a ``Factors`` that carries A and S). False when
            they are moved off the device: neither the lambda pass nor preconditioning reads them.
        activation_checkpointing: the gradient passes run with every decoder block checkpointed
            (:mod:`infra_pl.ekfac.checkpointing`): the forward keeps each block's input, and the
            backward rebuilds one block's saved tensors at a time (:func:`saved_activation_bytes`,
            :func:`replayed_block_bytes`). The token pass (no backward) is unchanged.
        fsdp_ranks: ranks of an FSDP run (1: not FSDP). ``attribute`` under FSDP gathers the full
            weights on every rank for the whole run (:mod:`infra_pl.fsdp`), so every phase holds the
            full weights plus the rank's own shard (weights ÷ ranks).
    """

    batch_size: int = 1
    seq_len: int = 4096
    measurements: int = 2
    factor_dtype: torch.dtype = torch.float32
    fisher: str = "true"
    padding: bool = False
    keep_covariance: bool = True
    compute_dtype: torch.dtype | None = None
    activation_checkpointing: bool = False
    fsdp_ranks: int = 1

    def __post_init__(self) -> None:
        if self.fsdp_ranks < 1:
            raise ValueError(f"fsdp_ranks must be >= 1, got {self.fsdp_ranks}")
        if self.batch_size < 1 or self.seq_len < 2:
            raise ValueError(f"batch_size must be >= 1 and seq_len >= 2, got {self.batch_size} and {self.seq_len}")
        if self.measurements < 1:
            raise ValueError(f"measurements must be >= 1, got {self.measurements}")
        if self.fisher not in ("true", "empirical"):
            raise ValueError(f"fisher must be 'true' or 'empirical', got {self.fisher!r}")

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


@dataclass
class PhaseCost:
    """The terms of one phase's peak (see the module docstring for the formula)."""

    name: str
    fixed: dict[str, int]
    fixed_transient: dict[str, int] = field(default_factory=dict)
    hook_overhead: int = 0
    resident: dict[str, int] = field(default_factory=dict)
    transient: dict[str, int] = field(default_factory=dict)

    def peak(self, modules: Iterable[str] | None = None) -> int:
        """Peak bytes when the phase handles ``modules`` (default: every tracked module at once)."""
        names = list(self.resident) if modules is None else list(modules)
        unknown = [n for n in names if n not in self.resident]
        if unknown:
            raise KeyError(f"phase {self.name!r} has no cost for modules {unknown[:3]}")
        base = sum(self.fixed.values()) + sum(self.resident[n] for n in names)
        hooks = self.hook_overhead + max((self.transient.get(n, 0) for n in names), default=0)
        return base + max(max(self.fixed_transient.values(), default=0), hooks if names else 0)


@dataclass
class Estimate:
    """Per-phase costs for one model + settings, and the sizes behind them."""

    model_name: str
    parameters: int
    weight_bytes: int
    model_dtype: torch.dtype
    architecture: Architecture
    settings: Settings
    modules: list[TrackedModule]
    phases: dict[str, PhaseCost]
    sizes: dict[str, int]

    @property
    def module_names(self) -> list[str]:
        return [m.name for m in self.modules]

    def peak(self, phase: str, modules: Iterable[str] | None = None) -> int:
        return self.phases[phase].peak(modules)

    def peaks(self, modules: Iterable[str] | None = None) -> dict[str, int]:
        names = None if modules is None else list(modules)
        return {name: cost.peak(names) for name, cost in self.phases.items()}


# --------------------------------------------------------------------------------- model terms
def saved_activation_bytes(arch: Architecture, settings: Settings, s: int, frozen: bool = False) -> int:
    """Bytes autograd saves for the backward in one forward of a [B, T] batch.

    Per decoder layer and token (s = bytes of the model dtype; counted on HF's Llama/Qwen2 code and
    checked with ``saved_tensors_hooks`` in the tests), with trainable weights:
      * 2 RMSNorms: the float32 input of ``pow`` (4H), ``rsqrt`` (4), the normalised input of the
        weight product in the model dtype (sH): 2·(4H + 4 + sH);
      * the two norm outputs, saved by q/k/v and gate/up projections: 2·sH;
      * attention through a fused SDPA kernel (flash / mem-efficient): rotated q (sQ), k and v
        (s·KV each, or s·Q when padding forces ``repeat_kv``), the output (sQ; the o_proj input is
        the same storage) and the float32 logsumexp per head (4·heads);
      * gated MLP: gate output, SiLU output, up output, their product: 4·sI.
    Once per batch: final norm and lm_head input, the rotary cos/sin (2·T·head_dim·s), and with
    padding the float copy of the [B, 1, T, T] attention mask that the kernel keeps per layer.

    ``frozen``: the base weights do not require grad (a LoRA model), so autograd keeps only what
    input gradients need: the norms' weighted input (sH), the projections' inputs (2·sH, the lm_head
    input) and the MLP product (sI) are not saved. Adapter inputs: :func:`lora_activation_bytes`.
    Nothing before the first adapter is recorded either (part of layer 0); counting it anyway makes
    the frozen estimate an upper bound by less than one layer.
    Not counted: eager attention (it would keep the [B, heads, T, T] probabilities).

    With ``settings.activation_checkpointing`` this is what the forward keeps for the whole
    backward: each block's input (the checkpoint's saved argument, sH per token and layer), the
    final norm and lm_head input as above, and, held by the checkpointed blocks for their replays,
    the rotary cos/sin and with padding the boolean [B, 1, T, T] mask (1 byte per element). The
    block being replayed adds :func:`replayed_block_bytes` during its backward.
    """
    layer, outside, shared = _activation_terms(arch, settings, s, frozen)
    if settings.activation_checkpointing:
        mask = settings.batch_size * settings.seq_len**2 if settings.padding else 0
        return arch.layers * settings.tokens * arch.hidden * s + outside + shared + mask
    return arch.layers * layer + outside + shared


def replayed_block_bytes(arch: Architecture, settings: Settings, s: int, frozen: bool = False) -> int:
    """Saved tensors of the one decoder block whose replay runs in a checkpointed backward (0 without
    checkpointing): one layer's share of :func:`saved_activation_bytes` without checkpointing."""
    if not settings.activation_checkpointing:
        return 0
    return _activation_terms(arch, settings, s, frozen)[0]


def _activation_terms(arch: Architecture, settings: Settings, s: int, frozen: bool) -> tuple[int, int, int]:
    """(one decoder layer's saved bytes, bytes saved after the last layer, the rotary cos/sin) for the batch;
    the terms are those of :func:`saved_activation_bytes`."""
    h, i, q = arch.hidden, arch.intermediate, arch.q_width
    kv = q if (settings.padding and arch.kv_heads < arch.heads) else arch.kv_width
    weighted = 0 if frozen else s * h  # the norm's input to the weight product; the projections' inputs
    norm = 4 * h + 4 + weighted
    attention = s * (q + 2 * kv) + s * q + 4 * arch.heads
    mlp = (3 if frozen else 4) * s * i
    per_layer = 2 * norm + 2 * weighted + attention + mlp
    layer = settings.tokens * per_layer
    if settings.padding:
        layer += settings.batch_size * settings.seq_len**2 * s
    return layer, settings.tokens * (norm + weighted), 2 * settings.seq_len * arch.head_dim * s


# The tensor a base projection reads, for sharing one saved input between adapters (frozen base):
# q/k/v read the attention norm's output, gate/up the MLP norm's output, o_proj the SDPA output
# (already saved by the kernel), down_proj the gated product.
_LORA_INPUTS = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in",
                "up_proj": "mlp_in", "o_proj": "sdpa_out", "down_proj": "mlp_product"}


def lora_activation_bytes(model: nn.Module, settings: Settings, frozen: bool = True) -> int:
    """Saved bytes of peft LoRA adapters: each adapted layer's input and lora_B's input (a·r).

    peft casts the layer input to the adapter dtype (float32 adapters on a bf16 model): then every
    adapter keeps its own float32 copy (a·in). Otherwise the adapters keep the layer input itself,
    counted once per input tensor (q/k/v share one, gate/up another) and not at all for o_proj,
    whose input the SDPA kernel already keeps; with trainable base weights
    (``frozen=False``) :func:`saved_activation_bytes` already counts those inputs.
    """
    total, shared = 0, set()
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, nn.ModuleDict) or not hasattr(module, "base_layer"):
            continue
        base_bytes = module.base_layer.weight.element_size()
        kind = _LORA_INPUTS.get(name.rsplit(".", 1)[-1])
        layer = name.rsplit(".", 2)[0]
        for adapter in lora_a.values():
            a_bytes = adapter.weight.element_size()
            if a_bytes != base_bytes:
                total += settings.tokens * adapter.in_features * a_bytes
            elif frozen and kind != "sdpa_out" and (layer, kind) not in shared:
                total += settings.tokens * adapter.in_features * base_bytes
                if kind is not None:
                    shared.add((layer, kind))
            total += settings.tokens * adapter.out_features * a_bytes
    return total


def logits_chain_bytes(arch: Architecture, settings: Settings, s: int) -> int:
    """Peak of the [B, T, vocab] buffers around the loss of a gradient pass.

    max of: true-Fisher label sampling (logits, a float32 copy of the target rows, their softmax:
    12 bytes per element for a float32 model, 10 for bf16), the loss forward (logits, float32 copy,
    log-softmax output: 8 / 10) and the loss backward (saved log-softmax output, the NLL gradient,
    the log-softmax gradient: 12). The logits themselves are freed once the loss exists.
    """
    upcast = FLOAT32 if s != FLOAT32 else 0
    sampling = s + max(s + upcast, (upcast or s) + FLOAT32) if settings.fisher == "true" else 0
    forward = s + upcast + FLOAT32
    backward = 3 * FLOAT32
    return settings.tokens * arch.vocab * max(sampling, forward, backward)


def backward_working_bytes(arch: Architecture, settings: Settings, s: int) -> int:
    """Autograd's gradient buffers alive while a tracked module's hook runs inside the MLP backward:
    the residual-stream gradient (sH) and two [B, T, I] gradients of the gated product (2·sI)."""
    return settings.tokens * s * (2 * arch.intermediate + arch.hidden)


def jvp_tangents(settings: Settings) -> int:
    """Directions the token pass carries at once: one at a time (a dual-tensor pass per direction)
    up to ``influence.tokens.DUAL_LOOP_MAX_DIRECTIONS``, all M under ``torch.func.vmap`` above."""
    m = settings.measurements
    return m if m > DUAL_LOOP_MAX_DIRECTIONS else 1


def jvp_logits_bytes(arch: Architecture, settings: Settings, s: int) -> int:
    """Peak of the forward-mode logits chain of the token pass, with m = :func:`jvp_tangents` tangents.

    Primal and m tangent logits (s each), their float32 copies when the model is not float32, the
    log-softmax output and its ``exp`` (float32, primal only) and the tangent of the log-softmax
    (the product with ``exp`` and the result: 4·m).
    """
    m = jvp_tangents(settings)
    upcast = FLOAT32 if s != FLOAT32 else 0
    per_element = (1 + m) * (s + upcast) + 2 * FLOAT32 + FLOAT32 * m
    return settings.tokens * arch.vocab * per_element


def jvp_layer_bytes(arch: Architecture, settings: Settings, s: int) -> int:
    """Largest forward-mode working set inside one decoder layer of the token pass.

    The pass runs under no_grad, so nothing is kept across layers; inside a layer, every buffer
    exists as a primal and m tangents (m = :func:`jvp_tangents`, written M below). Terms:
      * the residual stream, normed input, q/k/v and attention output: (1+M)·(4H + Q + 2·KV)·s per token;
      * attention in the math SDPA kernel (the fused kernels have no forward-mode rule): the
        [B, heads, T, T] scores, softmax output and ``_safe_softmax``'s masked copy, each a primal
        and M tangents, in float32 (the math kernel upcasts bf16/fp16): 3·(1+M)·4 bytes per element,
        plus its boolean mask (1 byte) and the causal mask as bool + float ([T, T]);
      * or the gated MLP: SiLU output, up output, the perturbation ``α·F.linear(x, V)`` added to it
        and the sum, each primal + M tangents, plus the primal-only ``F.linear`` output:
        (4·(1+M) + 1)·I·s per token.
    Measured on CPU (4-layer Llama, T=2048): attention ≈ 6.2 squares with one tangent and 9.2 with
    two under vmap, against 6 and 9 here.
    """
    m = jvp_tangents(settings)
    a = max(s, FLOAT32)
    t = settings.seq_len
    stream = (1 + m) * settings.tokens * (4 * arch.hidden + arch.q_width + 2 * arch.kv_width) * s
    attention = settings.batch_size * arch.heads * t * t * (3 * (1 + m) * a + 1) + t * t * (1 + a)
    mlp = (4 * (1 + m) + 1) * settings.tokens * arch.intermediate * s
    return stream + max(attention, mlp)


# -------------------------------------------------------------------------------- module terms
def _capture_copies(module: TrackedModule, settings: Settings, f: int) -> tuple[int, int]:
    """How many new float tensors ekfac.Capture makes of a layer input / output gradient: a cast when
    the layer dtype differs from the factor dtype, a masked copy with padding, and (inputs only) the
    concatenation of the bias column. Without any of them the capture is the autograd tensor itself."""
    cast = int(module.dtype_bytes != f)
    pad = int(settings.padding)
    return cast + pad + int(module.has_bias), cast + pad


def _pending_bytes(module: TrackedModule, settings: Settings, f: int) -> int:
    """The captured layer input that Capture keeps from the forward until m's backward hook
    (``on_pair`` phases): one float [B, T, in(+1)] tensor when a copy is made at all. Without a copy
    it is the layer input itself, which autograd saves anyway, except under activation
    checkpointing: then the capture alone keeps it (layers reading one input, like gate and up, are
    each counted: an upper bound)."""
    copies_in, _ = _capture_copies(module, settings, f)
    if copies_in:
        return settings.tokens * module.in_dim * f
    return settings.tokens * module.in_dim * module.dtype_bytes if settings.activation_checkpointing else 0


def _input_copy_bytes(module: TrackedModule, settings: Settings, f: int) -> int:
    """Momentary copies of a layer input inside the forward hook (all of them, as an upper bound)."""
    return settings.tokens * module.in_dim * f * _capture_copies(module, settings, f)[0]


def _gradient_copy_bytes(module: TrackedModule, settings: Settings, f: int) -> int:
    """Copies of the output gradient inside the backward hook (cast, masked)."""
    return settings.tokens * module.out_features * f * _capture_copies(module, settings, f)[1]


def _rotation_bytes(module: TrackedModule, settings: Settings, f: int) -> int:
    """Temporaries of lambdas.rotated_sequence_gradients for one batch, whichever order it picks."""
    b, t, out, inn = settings.batch_size, settings.seq_len, module.out_features, module.in_dim
    per_seq = b * out * inn * f
    if t * (out * out + inn * inn) < out * inn * (out + inn):
        rotate_tokens = b * t * (inn + out) * f + per_seq  # rotated activations and gradients, then G
        return max(rotate_tokens, per_seq + out * inn * f)
    return 3 * per_seq  # G, Q_Sᵀ G, (Q_Sᵀ G) Q_A


def _contraction_bytes(module: TrackedModule, settings: Settings, f: int) -> int:
    """Buffer of the instance-score contraction (influence.instance.choose_contraction)."""
    m = settings.measurements
    if settings.seq_len * m < settings.seq_len + m:  # "token": [B, T, M, min(out, in)]
        return settings.tokens * m * min(module.out_features, module.in_dim) * f
    return settings.batch_size * module.out_features * module.in_dim * f  # "sequence": [B, out, in]


def _eigh_bytes(module: TrackedModule) -> int:
    """float64 buffers of eigen.eigendecompose for one module (LAPACK/cuSOLVER syevd).

    Both covariances are normalised to float64 first (8·(in² + out²)); each ``eigh`` then holds the
    symmetrised copy, the eigenvector output and the divide-and-conquer workspace (≈ 2n² doubles),
    and A's eigenvectors stay alive while S is decomposed. The loop's locals also keep the previous
    module's float64 eigenvectors until they are rebound (counted as one more n² of the larger
    factor: consecutive MLP projections alternate their shapes).
    """
    a, s = module.in_dim**2, module.out_features**2
    covs = FLOAT64 * (a + s)
    during_a = covs + FLOAT64 * 4 * a
    during_s = covs + FLOAT64 * a + FLOAT64 * 4 * s
    previous = FLOAT64 * max(a, s)
    return max(during_a, during_s) + previous


# ------------------------------------------------------------------------------------- phases
def estimate(
    model: nn.Module,
    settings: Settings,
    modules: str | Sequence[str] | None = None,
    architecture: Architecture | None = None,
    model_name: str | None = None,
) -> Estimate:
    """Per-phase memory terms for ``model`` (normally a meta-device model) under ``settings``.

    ``modules``: the tracked-module selection (None: the EK-FAC default, the MLP projections).
    ``architecture``: the decoder sizes (default: read from ``model.config``).
    """
    config = getattr(model, "config", None)
    arch = architecture or Architecture.from_config(config)
    tracked = tracked_modules(model, modules)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    s = embed.weight.element_size() if embed is not None else next(model.parameters()).element_size()
    model_dtype = embed.weight.dtype if embed is not None else next(model.parameters()).dtype
    f = torch.empty((), dtype=settings.factor_dtype).element_size()
    c = torch.empty((), dtype=settings.compute_dtype or settings.factor_dtype).element_size()  # factor passes' operands
    n, m = settings.tokens, settings.measurements

    weights = parameter_bytes(model)
    if settings.fsdp_ranks > 1:  # the full weights are gathered beside each rank's own shard
        weights += -(-weights // settings.fsdp_ranks)
    batch = 3 * n * INT64  # input_ids, attention_mask, labels
    # Frozen base weights (a LoRA model): autograd keeps fewer inputs (see saved_activation_bytes).
    frozen = any(not p.requires_grad for p in model.parameters()) and any(p.requires_grad for p in model.parameters())
    lora = lora_activation_bytes(model, settings, frozen)
    replayed = 0
    if settings.activation_checkpointing:  # the adapters' inputs live inside the blocks: one layer's share is replayed
        activations = saved_activation_bytes(arch, settings, s, frozen)
        replayed = replayed_block_bytes(arch, settings, s, frozen) + -(-lora // arch.layers)
    else:
        activations = saved_activation_bytes(arch, settings, s, frozen) + lora
    grad_fixed = {"weights": weights, "batch": batch, "saved activations": activations}
    logits = {"logits chain": logits_chain_bytes(arch, settings, s)}
    working = backward_working_bytes(arch, settings, s) + replayed

    def per_module(fn: Any) -> dict[str, int]:
        return {mod.name: int(fn(mod)) for mod in tracked}

    def square_factors(mod: TrackedModule) -> int:
        return f * (mod.in_dim**2 + mod.out_features**2)

    def eigenvalues(mod: TrackedModule) -> int:
        return f * (mod.in_dim + mod.out_features)

    def matrix(mod: TrackedModule) -> int:
        return f * mod.weight_elements

    def kept_covariance(mod: TrackedModule) -> int:
        return square_factors(mod) if settings.keep_covariance else 0

    phases = {
        COVARIANCE: PhaseCost(
            COVARIANCE,
            dict(grad_fixed),
            dict(logits),
            working,
            resident=per_module(square_factors),  # A and S sums
            transient=per_module(
                lambda mod: max(_input_copy_bytes(mod, settings, c), _gradient_copy_bytes(mod, settings, c))
                + (c * max(mod.in_dim, mod.out_features) ** 2 if c != f else 0)  # reduced gram, before its upcast add
            ),
        ),
        EIGEN: PhaseCost(
            EIGEN,
            {"weights": weights},
            resident=per_module(lambda mod: 2 * square_factors(mod) + eigenvalues(mod)),  # sums + Q_A, Q_S, eigenvalues
            transient=per_module(_eigh_bytes),
        ),
        LAMBDA: PhaseCost(
            LAMBDA,
            dict(grad_fixed),
            dict(logits),
            working,
            resident=per_module(
                lambda mod: square_factors(mod) + eigenvalues(mod) + matrix(mod) + _pending_bytes(mod, settings, c)
                + kept_covariance(mod) + (c * (mod.in_dim**2 + mod.out_features**2) if c != f else 0)
            ),  # Q_A, Q_S, eigenvalues, Λ sum, captured input (+ A and S sums if kept; + Q_A, Q_S in c)
            transient=per_module(
                lambda mod: _gradient_copy_bytes(mod, settings, c) + _rotation_bytes(mod, settings, c)
                + (settings.batch_size * mod.weight_elements * f if c != f else 0)  # rotated G upcast to square
            ),
        ),
        MEASUREMENT: PhaseCost(
            MEASUREMENT,
            dict(grad_fixed),
            dict(logits),
            working,
            # ∇f of the M measurements (finished ones and the running sum), the captured input. The
            # normalised copy made at the end of each measurement (one more [out, in]) exists only once
            # the batch's activations are freed, so it never adds to this peak at realistic sizes.
            resident=per_module(lambda mod: m * matrix(mod) + _pending_bytes(mod, settings, f)),
            transient=per_module(lambda mod: _gradient_copy_bytes(mod, settings, f)),
        ),
        DIRECTIONS: PhaseCost(
            DIRECTIONS,
            {"weights": weights},
            # Q_A, Q_S, eigenvalues, Λ (+ A and S if kept); ∇f, H⁻¹∇f and the stacked [M, out, in] directions
            resident=per_module(
                lambda mod: square_factors(mod) + eigenvalues(mod) + matrix(mod) + 3 * m * matrix(mod) + kept_covariance(mod)
            ),
            transient=per_module(lambda mod: 2 * matrix(mod)),  # rotated gradient and one matmul temporary
        ),
        INSTANCE: PhaseCost(
            INSTANCE,
            dict(grad_fixed),
            dict(logits),
            working,
            resident=per_module(lambda mod: m * matrix(mod) + _pending_bytes(mod, settings, f)),
            transient=per_module(
                lambda mod: _gradient_copy_bytes(mod, settings, f) + _contraction_bytes(mod, settings, f)
            ),
        ),
        TOKENS: PhaseCost(
            TOKENS,
            {"weights": weights, "batch": batch},
            {"JVP logits chain": jvp_logits_bytes(arch, settings, s), "JVP layer": jvp_layer_bytes(arch, settings, s)},
            0,
            # directions (factor dtype), their copy in the layer dtype, and the zero primals of the
            # perturbation D (made on every call, used by the vmap path)
            resident=per_module(
                lambda mod: m * matrix(mod)
                + (m * mod.weight_elements * mod.dtype_bytes if mod.dtype_bytes != f else 0)
                + mod.weight_elements * mod.dtype_bytes
            ),
            transient=per_module(lambda mod: 2 * (1 + jvp_tangents(settings)) * n * mod.out_features * mod.dtype_bytes),
        ),
    }
    sizes = {
        "A (in x in)": sum(f * mod.in_dim**2 for mod in tracked),
        "S (out x out)": sum(f * mod.out_features**2 for mod in tracked),
        "eigenvectors Q_A, Q_S": sum(square_factors(mod) for mod in tracked),
        "Lambda (out x in)": sum(matrix(mod) for mod in tracked),
        f"directions ({m} x out x in)": sum(m * matrix(mod) for mod in tracked),
        "saved activations per batch": activations,
        **({"replayed block (activation checkpointing)": replayed} if settings.activation_checkpointing else {}),
        "logits chain per batch": logits["logits chain"],
        "captured inputs per batch": sum(_pending_bytes(mod, settings, f) for mod in tracked),
        "largest eigh workspace (float64)": max(_eigh_bytes(mod) for mod in tracked),
    }
    name = model_name or type(model).__name__
    return Estimate(
        model_name=name,
        parameters=sum(p.numel() for p in model.parameters()),
        weight_bytes=weights,
        model_dtype=model_dtype,
        architecture=arch,
        settings=settings,
        modules=tracked,
        phases=phases,
        sizes=sizes,
    )


def estimate_from_config(
    config: str | Mapping[str, Any] | Any,
    settings: Settings,
    dtype: torch.dtype = torch.bfloat16,
    modules: str | Sequence[str] | None = None,
    lora: Mapping[str, Any] | None = None,
) -> Estimate:
    """:func:`estimate` for a model built on ``meta`` from a config file, folder, dict or config object."""
    from infra_pl.planner.model import load_config, meta_model

    cfg = config if hasattr(config, "model_type") and not isinstance(config, Mapping) else load_config(config)
    model = meta_model(cfg, dtype=dtype, lora=lora)
    name = getattr(cfg, "_name_or_path", "") or (cfg.architectures[0] if getattr(cfg, "architectures", None) else "")
    return estimate(model, settings, modules, model_name=name or type(model).__name__)
