"""The config tree: one typed, frozen description of a run.

Sections: `model` (architecture), `train` (batch, schedule, logging),
`optim` (optimizer groups), `data` (paths), `quant` (artifact packing) and
`eval` (validation). Each component receives only its own subtree.

Loaded strictly from TOML: unknown sections or keys are errors that name the
key and the nearest valid one; `--set section.key=value` overrides are parsed
as TOML values and type-checked against the default. The resolved config is
written beside every checkpoint and artifact (`to_toml`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from shared.errors import PgolfError


class _Section:
    """Float fields hold floats even when built from ints (`mlp_mult=2`), so that the resolved TOML,
    and with it every artifact's embedded config, is the same however the config was made."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(f.default, float) and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    """The architecture of the challenge baseline (docs/FACTS.md), every shape a knob.

    The record-stack options (PR numbers in README "The record stack")
    default to off, so the defaults are the baseline bit for bit."""

    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0            # MLP width as a multiple of model_dim
    activation: str = "relu2"        # relu2 | leaky_relu2 (LeakyReLU(0.5), then squared)
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    rope_dims: int = 0               # rotate only the first N dims of each head (0 = all: the baseline)
    qk_gain_init: float = 1.5
    ln_scale: bool = False           # each block's normalised inputs times 1/sqrt(layer + 1)
    xsa_last_n: int = 0              # exclusive self-attention on the last N layers (0 = off)
    skip_gates: bool = False         # U-Net skips as lerp(w * skip, x, sigmoid(g)) instead of x + w * skip
    loop_start: int = 0              # depth recurrence: layers loop_start..loop_end (inclusive) ...
    loop_end: int = -1               # ... run 1 + num_loops times in a row (loop_end < loop_start: off)
    num_loops: int = 0
    loop_at: float = 0.0             # ... from this fraction of training on (before: the plain order)
    parallel_from: int = -1          # parallel attention/MLP residual lanes from this layer on (-1 = off)
    smear_gate: bool = False         # previous-token mixing of the embeddings, gated, zeroed at BOS
    smear_bos_mask: bool = True      # ... zeroed at BOS (#1855's fix); false: it crosses BOS, as #2135 ran
    attn_gate: bool = False          # per-head sigmoid gate on the attention output
    attn_gate_scale: float = 0.5     # s in sigmoid(s * W x[:gate_dims])
    gate_dims: int = 12              # residual dims the smear and attention gates read
    ortho_init: bool = False         # orthogonal init of the input-side block matrices (outputs stay zero)
    asym_logit: bool = False         # learned softcaps for positive and negative logits (#1923), init logit_softcap
    doc_attention: bool = False      # attention never crosses a BOS; training packs each micro-batch as one row
    doc_max_len: int = 0             # ... and cuts documents into segments of at most this many tokens (0 = no cut)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def hidden_dim(self) -> int:
        return int(round(self.mlp_mult * self.model_dim))

    @property
    def looping(self) -> bool:
        return self.num_loops > 0 and self.loop_end >= self.loop_start

    def layer_order(self, looped: bool | None = None) -> list[int]:
        """The blocks in the order they run: the plain order, or (depth recurrence, once switched on)
        loop_start..loop_end repeated 1 + num_loops times, e.g. [0,1,2, 3,4,5, 3,4,5, 3,4,5, 6,...]."""
        plain = list(range(self.num_layers))
        if not (self.looping if looped is None else looped and self.looping):
            return plain
        body = plain[self.loop_start:self.loop_end + 1]
        return plain[:self.loop_start] + body * (1 + self.num_loops) + plain[self.loop_end + 1:]

    def lanes_from(self, layer: int) -> bool:
        """Whether block `layer` runs in parallel lanes when it is a decoder step (#1855: the lanes start at
        the first decoder step at or past `parallel_from` and never in the encoder)."""
        return 0 <= self.parallel_from <= layer

    @property
    def num_encoder_layers(self) -> int:
        """The first half of the (looped, if any) layer order stores U-Net skips."""
        return len(self.layer_order()) // 2

    @property
    def num_decoder_layers(self) -> int:
        return len(self.layer_order()) - self.num_encoder_layers

    @property
    def num_skip_weights(self) -> int:
        return min(self.num_encoder_layers, self.num_decoder_layers)

    @property
    def rotary_dims(self) -> int:
        return self.rope_dims or self.head_dim

    def validate(self) -> None:
        for key in ("vocab_size", "num_layers", "model_dim", "num_heads", "num_kv_heads"):
            if getattr(self, key) < 1:
                raise PgolfError(f"model.{key} must be at least 1, got {getattr(self, key)}")
        if not self.mlp_mult > 0 or self.hidden_dim < 1:
            raise PgolfError(f"model.mlp_mult must make a hidden width of at least 1, got {self.mlp_mult}")
        if self.activation not in ("relu2", "leaky_relu2"):
            raise PgolfError(f"model.activation = {self.activation!r}: choose relu2 or leaky_relu2")
        if self.rope_dims < 0 or self.rope_dims > self.model_dim // self.num_heads or self.rope_dims % 2:
            raise PgolfError(f"model.rope_dims must be even and in 0..head dim ({self.model_dim // self.num_heads}), "
                             f"got {self.rope_dims}")
        if not 0 <= self.xsa_last_n <= self.num_layers:
            raise PgolfError(f"model.xsa_last_n must be in 0..num_layers={self.num_layers}, got {self.xsa_last_n}")
        if self.num_loops < 0 or (self.num_loops > 0 and not 0 <= self.loop_start <= self.loop_end < self.num_layers):
            raise PgolfError(f"depth recurrence needs 0 <= model.loop_start <= model.loop_end < num_layers and "
                             f"model.num_loops >= 0, got {self.loop_start}..{self.loop_end} x{self.num_loops}")
        if not 0.0 <= self.loop_at <= 1.0:
            raise PgolfError(f"model.loop_at is a fraction of training in [0, 1], got {self.loop_at}")
        if not -1 <= self.parallel_from < self.num_layers:
            raise PgolfError(f"model.parallel_from must be -1 (off) or a layer index < {self.num_layers}, "
                             f"got {self.parallel_from}")
        if self.doc_max_len < 0 or (self.doc_max_len and not self.doc_attention):
            raise PgolfError(f"model.doc_max_len must be >= 0 and needs model.doc_attention = true, "
                             f"got {self.doc_max_len}")
        for looped in (False, True):  # once the lanes start (in the decoder), every later step must run in them
            dec = self.layer_order(looped)[len(self.layer_order(looped)) // 2:]
            on = [self.lanes_from(i) for i in dec]
            if True in on and not all(on[on.index(True):]):
                raise PgolfError(f"model.parallel_from = {self.parallel_from} starts the parallel lanes inside the "
                                 f"looped layers {self.loop_start}..{self.loop_end}, whose next pass returns below it: "
                                 f"set it above model.loop_end or at most model.loop_start")
        if (self.smear_gate or self.attn_gate) and not 1 <= self.gate_dims <= self.model_dim:
            raise PgolfError(f"model.gate_dims must be in 1..model_dim={self.model_dim}, got {self.gate_dims}")
        if self.tied_embed_init_std < 0 or self.rope_base <= 1:
            raise PgolfError(f"model.tied_embed_init_std must not be negative and model.rope_base must be above 1, "
                             f"got {self.tied_embed_init_std}, {self.rope_base}")
        if self.model_dim % self.num_heads:
            raise PgolfError(f"model.model_dim={self.model_dim} must be divisible by model.num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise PgolfError(f"model.num_heads={self.num_heads} must be divisible by model.num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise PgolfError(f"head dim {self.head_dim} (model.model_dim / model.num_heads) must be even for RoPE")
        if self.logit_softcap <= 0:
            raise PgolfError(f"model.logit_softcap must be positive, got {self.logit_softcap}")
        if self.vocab_size > 65536:
            raise PgolfError(f"model.vocab_size={self.vocab_size} does not fit the uint16 shard format")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Section):
    """Batch, length of the run, schedule and logging cadence."""

    seed: int = 1337
    iterations: int = 20000          # step budget
    max_seconds: float = 600.0       # wallclock cap on training (0 = none); eval time is not counted
    batch_tokens: int = 524288       # global tokens per optimizer step, all ranks together
    seq_len: int = 1024
    grad_accum: int = 8              # global micro-batches per step; each rank runs grad_accum / world_size
    max_microbatch_tokens: int = 0   # memory cap: split a micro-batch into chunks of at most this many tokens (0 = no cap)
    warmup_steps: int = 20           # compile/warm-up steps whose effect is undone before training starts
    warmdown_iters: int = 1200       # linear LR warmdown over the last N steps (in wallclock when max_seconds > 0)
    warmdown_frac: float = 0.0       # instead: warm down over this fraction of training (time, or steps) (0 = use warmdown_iters)
    min_lr: float = 0.0              # the warmdown's floor, a fraction of each group's peak LR
    calib_reserve_s: float = 0.0     # seconds of train.max_seconds kept for GPTQ calibration, which reads training
                                     # data and so counts; quantising and packing do not (docs/TIME-BUDGET.md)
    ema_decay: float = 0.0           # EMA of the weights after every step (0 = off); the EMA is checkpointed, evaluated, packed
    seq_schedule: str = ""           # growing context (#2014): "1024@0.1,2048@0.7,3072@1.0" = the document segment cap
                                     # (model.doc_attention) up to each fraction of training; "" = model.doc_max_len
    seq_rewarm_steps: int = 0        # after each change of the cap, the LR ramps back up over this many steps (#2014: 32)
    val_every: int = 1000            # validate every N steps (0 = only at the end)
    log_every: int = 200
    checkpoint_every: int = 0        # save a checkpoint every N steps (0 = only at the end and on Ctrl-C)
    compute_dtype: str = "auto"      # auto | float32 | bfloat16 (auto: bf16 on GPU, fp32 on CPU)
    compile: bool = True
    compile_fullgraph: bool = True   # torch.compile(fullgraph=True): a graph break in the training forward is an error
    # torch on several ranks: "sharded" (no DDP wrapper; matrix gradients reduce-scattered to the rank that
    # runs their Newton-Schulz, Muon momentum kept only there, updates all-gathered) or "ddp" (the DDP
    # wrapper, every rank holds every momentum). The same numbers either way (tests/test_torch_distributed.py).
    grad_sync: str = "sharded"
    # Fused Triton kernels (cuda_train/kernels.py, after #1855) for the training step's MLP (the up-projection
    # with the squared (leaky) ReLU; in backward the down-projection's input gradient with its derivative) and
    # the symmetric softcapped cross-entropy: "auto" uses them where the tensors are CUDA and triton imports,
    # "off" never. The eager numbers up to float-sum order; evaluation, TTT/LoRA and model.asym_logit's loss
    # stay eager. The MLX backend always runs its eager math (no triton there).
    fused_kernels: str = "off"

    def seq_stages(self) -> list[tuple[float, int]]:
        """train.seq_schedule as (fraction, segment cap) stages, by fraction; the last reaches 1.0."""
        stages = []
        for raw in filter(None, (p.strip() for p in self.seq_schedule.split(","))):
            try:
                cap, frac = raw.split("@")
                stage = (float(frac), int(cap))
            except ValueError:
                raise PgolfError(f"train.seq_schedule stage {raw!r}: write LEN@FRACTION, e.g. 1024@0.1") from None
            if stage[1] < 1 or not 0.0 < stage[0] <= 1.0:
                raise PgolfError(f"train.seq_schedule stage {raw!r}: the length must be >= 1 and the fraction in (0, 1]")
            stages.append(stage)
        stages.sort()
        if stages and stages[-1][0] < 1.0:
            stages.append((1.0, stages[-1][1]))
        return stages

    def validate(self) -> None:
        for key in ("iterations", "batch_tokens", "seq_len", "grad_accum"):
            if getattr(self, key) < 1:
                raise PgolfError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("seed", "max_seconds", "max_microbatch_tokens", "warmup_steps", "warmdown_iters", "val_every",
                    "log_every", "checkpoint_every", "calib_reserve_s"):
            if getattr(self, key) < 0:
                raise PgolfError(f"train.{key} must not be negative, got {getattr(self, key)}")
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise PgolfError(f"train.compute_dtype must be auto, float32 or bfloat16, got {self.compute_dtype!r}")
        if self.grad_sync not in ("sharded", "ddp"):
            raise PgolfError(f"train.grad_sync must be sharded or ddp, got {self.grad_sync!r}")
        if self.fused_kernels not in ("auto", "off"):
            raise PgolfError(f"train.fused_kernels must be auto or off, got {self.fused_kernels!r}")
        if self.batch_tokens % (self.grad_accum * self.seq_len):
            raise PgolfError(
                f"train.batch_tokens={self.batch_tokens} must be a multiple of "
                f"train.grad_accum * train.seq_len = {self.grad_accum * self.seq_len}"
            )
        if not 0.0 <= self.warmdown_frac <= 1.0 or not 0.0 <= self.min_lr < 1.0:
            raise PgolfError(f"train.warmdown_frac must be in [0, 1] and train.min_lr in [0, 1), got "
                             f"{self.warmdown_frac}, {self.min_lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise PgolfError(f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.max_seconds > 0 and self.calib_reserve_s >= self.max_seconds:
            raise PgolfError(f"train.calib_reserve_s={self.calib_reserve_s:g} leaves no training time of "
                             f"train.max_seconds={self.max_seconds:g}")
        if self.seq_rewarm_steps < 0:
            raise PgolfError(f"train.seq_rewarm_steps must be >= 0, got {self.seq_rewarm_steps}")
        self.seq_stages()  # parses, or one line naming the stage
        if self.max_microbatch_tokens and self.max_microbatch_tokens % self.seq_len:
            raise PgolfError(f"train.max_microbatch_tokens must be a multiple of train.seq_len={self.seq_len}")


@dataclass(frozen=True, kw_only=True)
class OptimConfig(_Section):
    """Muon for 2-D block matrices, Adam for the embedding, head and vectors/scalars."""

    embed_lr: float = 0.6            # untied embedding
    head_lr: float = 0.008           # untied lm_head
    tied_embed_lr: float = 0.05
    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    muon_momentum: float = 0.95
    muon_backend_steps: int = 5
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0
    muon_wd: float = 0.0             # decoupled weight decay of the Muon matrices: p *= 1 - lr * wd
    embed_wd: float = 0.0            # ... of the embedding / head (Adam)
    scalar_wd: float = 0.0           # ... of the vectors, scalars and gates (Adam)
    muon_row_norm: bool = False      # MuonEq-R: divide each row of the update by its L2 norm before Newton-Schulz
    muon_ns: str = "quintic"         # Newton-Schulz coefficients: quintic (fixed) | polar_express (per iteration)
    # The record's Muon numerics (#1855), each a choice of its own (docs/REFERENCE.md "Fidelity: optimizer"):
    muon_row_norm_eps: str = "add"   # MuonEq-R divides by: add = norm + eps | max = max(norm, eps), norm in fp32 (#1855)
    muon_momentum_dtype: str = "float32"  # float32 | bfloat16: gradient rounded to bf16, momentum, Nesterov and
                                     # row norm in bf16, Newton-Schulz always in bf16 (#1855)
    muon_ns_form: str = "baseline"   # baseline: normalise, then iterate on the wide side, B = b A + (c A) A, update
                                     # scaled before the step | record: transpose first, then normalise, B = b A + c (A A),
                                     # the scale folded into the step size (#1855)
    grad_clip_banks: bool = False    # the clip's global norm takes one norm per bank (q+o, k+v, MLP up, MLP down
                                     # stacked over layers) in the record's order, as #1855's clip_grad_norm_
    grad_clip_local: bool = False    # several ranks: clip each rank's own gradient, then average (#1855's order);
                                     # off: clip the averaged gradient
    warmup_muon_momentum: str = "reset"  # after the undone warm-up: reset | keep | keep_multi_rank (keep on more than
                                     # one rank, reset on one: #1855's sharded momentum survives its reset);
                                     # a resumed run always continues from its saved momentum

    def validate(self) -> None:
        if self.muon_ns not in ("quintic", "polar_express"):
            raise PgolfError(f"optim.muon_ns = {self.muon_ns!r}: choose quintic or polar_express")
        for key, allowed in (("muon_row_norm_eps", ("add", "max")), ("muon_momentum_dtype", ("float32", "bfloat16")),
                             ("muon_ns_form", ("baseline", "record")),
                             ("warmup_muon_momentum", ("reset", "keep", "keep_multi_rank"))):
            if getattr(self, key) not in allowed:
                raise PgolfError(f"optim.{key} = {getattr(self, key)!r}: choose {' or '.join(allowed)}")
        if self.muon_momentum_dtype == "bfloat16" and self.muon_ns_form != "record":
            raise PgolfError("optim.muon_momentum_dtype = bfloat16 is the record's precision and needs its order of "
                             "operations: set optim.muon_ns_form = \"record\" (the backends then round alike)")
        if self.muon_ns == "polar_express" and self.muon_backend_steps > 5:
            raise PgolfError("optim.muon_ns = polar_express has coefficients for at most 5 iterations: "
                             f"set optim.muon_backend_steps <= 5, got {self.muon_backend_steps}")
        if min(self.muon_wd, self.embed_wd, self.scalar_wd, self.grad_clip_norm) < 0:
            raise PgolfError("optim.muon_wd, embed_wd, scalar_wd and grad_clip_norm must not be negative")
        for key in ("embed_lr", "head_lr", "tied_embed_lr", "matrix_lr", "scalar_lr", "muon_momentum_warmup_steps"):
            if getattr(self, key) < 0:
                raise PgolfError(f"optim.{key} must not be negative, got {getattr(self, key)}")
        for key in ("muon_momentum", "muon_momentum_warmup_start", "beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise PgolfError(f"optim.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.adam_eps <= 0 or self.muon_backend_steps < 1:
            raise PgolfError(f"optim.adam_eps must be positive and optim.muon_backend_steps at least 1, "
                             f"got {self.adam_eps}, {self.muon_backend_steps}")


@dataclass(frozen=True, kw_only=True)
class DataConfig(_Section):
    """Where the shards and tokenizer live (the CLI's --data/--tokenizer win)."""

    dir: str = "data/datasets/fineweb10B_sp1024"
    tokenizer: str = "data/tokenizers/fineweb_1024_bpe.model"


@dataclass(frozen=True, kw_only=True)
class QuantConfig(_Section):
    """How the artifact is packed, per tensor class."""

    embed: str = "int8"              # scheme for the token embedding / head
    attn: str = "int8"               # attention matrices
    mlp: str = "int8"                # MLP matrices
    other: str = "fp16"              # vectors and control tensors
    keep_float_max_numel: int = 65536  # float tensors this small are stored as `other`
    small: str = "other"             # ... or, for those of the embed/attn/mlp classes, this float scheme
                                     # ("other" = quant.other; baseline.toml: fp16, as train_gpt.py's export)
    clip_percentile: float = 99.99984  # int8 per-row clip (the baseline's)
    min_scale: float = 0.0           # floor on every row's quantisation step (the baseline's export: 1/127)
    clip_k: float = 12.0             # std-based clip for int<8 block matrices: clip = clip_k * row std
    embed_steps: str = "row"         # embedding/head row steps: "row" (the scheme's own clip per row) or
                                     # "frequency" (finer steps for frequent tokens: shared/artifact/quant.py)
    embed_clip_k: float = 16.0       # the embedding's std-based clip (int<8, or any int in "frequency" steps)
    embed_freq_floor: float = 0.1    # "frequency" steps: added to each token's relative count (rare tokens)
    gptq: bool = False
    gptq_block: int = 128
    gptq_damp: float = 0.01
    calib_tokens: int = 65536        # calibration tokens from the training split (GPTQ, budget mode)
    budget_tokens: int = 32768       # of those, the tokens whose loss ranks tensors in budget mode (8192 was too noisy: BENCHMARKS.md)
    zstd_level: int = 22
    # Record artifact (docs/ARTIFACT.md). Per-class clip sigmas: 0 means "use quant.clip_k".
    attn_clip_k: float = 0.0         # the attention matrices' std-based clip (record: 13.0)
    mlp_clip_k: float = 0.0          # the MLP matrices' std-based clip (record: 11.5-12.85)
    gate: str = "fp16"               # the attention / smear gate tensors' scheme (record: int8 per row)
    lqer_tensors: int = 0            # LQER: how many tensors (largest quantisation error) get a correction
    lqer_rank: int = 4               # rank of each correction W - Q(W) ~ A B
    lqer_a_bits: int = 2             # bits of A [out, rank] (one scale for the whole factor)
    lqer_b_bits: int = 4             # bits of B [rank, in] (one scale per group of lqer_group values)
    lqer_group: int = 64
    awq_groups: int = 0              # AWQ-lite (#1908): the N most salient column groups, model-wide, coded at awq_bits
    awq_group_size: int = 64         # columns per group (salience: activation RMS x mean |weight| of each column)
    awq_bits: int = 8
    prune_values: int = 0            # +-1 codes set to 0, least Hessian-weighted cost first (budget mode sets it)
    compressor: str = "zstd"         # "zstd" (v1's), "brotli" (shuffled, brotli-11), "group" (by role),
                                     # "group_zpaq" (group with ZPAQ on the codes: the zpaq package),
                                     # "group_ans" (group with pgolf's numpy rANS coder on the codes)
    group_sort: bool = False         # "group": reorder rows by similarity, permutation stored (BENCHMARKS.md)
    budget_measure: str = "every"    # budget mode's loss sensitivities: "every" (a forward pass per tensor and width) or
                                     # "narrowest" (one at int4 per tensor, scaled to the other widths by each width's
                                     # diag-Hessian-weighted error: 5x fewer passes; shared/artifact/budget.py)
    tensor_schemes: str = ""         # per-tensor scheme overrides "NAME=SCHEME,NAME=SCHEME" (canonical names, after the
                                     # class rules above); `pgolf pack --budget --write-config` writes its fit here

    def tensor_scheme_map(self) -> dict[str, str]:
        """`tensor_schemes` parsed: {canonical name: scheme}, in the order written (syntax checked by validate)."""
        out: dict[str, str] = {}
        for item in self.tensor_schemes.replace("\n", ",").split(","):
            if not item.strip():
                continue
            name, sep, scheme = item.partition("=")
            if not sep or not name.strip() or not scheme.strip():
                raise PgolfError(f"quant.tensor_schemes: {item.strip()!r} is not NAME=SCHEME "
                                 "(e.g. \"blocks.0.mlp.fc.weight=int5,tok_emb.weight=int6\")")
            if name.strip() in out:
                raise PgolfError(f"quant.tensor_schemes names {name.strip()!r} twice: keep one entry per tensor")
            out[name.strip()] = scheme.strip()
        return out

    @property
    def calibrates(self) -> bool:
        """Whether packing needs calibration tokens (GPTQ Hessians, "frequency" token counts)."""
        return self.gptq or self.embed_steps == "frequency"

    def validate(self) -> None:
        # The scheme names are those of shared/artifact/quant.py (kept literal here: config imports nothing).
        schemes = ("fp32", "fp16", "int8", "int7", "int6", "int5", "int4", "int3", "int2")
        for key in ("embed", "attn", "mlp", "other"):
            value = getattr(self, key)
            if value not in schemes:
                raise PgolfError(f"quant.{key} = {value!r} is not a scheme: choose one of {', '.join(schemes)}")
        if self.small not in ("other", "fp16", "fp32"):
            raise PgolfError(f"quant.small = {self.small!r}: choose other (follow quant.other), fp16 or fp32")
        if not 0.0 < self.clip_percentile <= 100.0:
            raise PgolfError(f"quant.clip_percentile must be in (0, 100], got {self.clip_percentile}")
        if self.min_scale < 0.0:
            raise PgolfError(f"quant.min_scale must not be negative, got {self.min_scale}")
        if not self.clip_k > 0.0:
            raise PgolfError(f"quant.clip_k must be positive, got {self.clip_k}")
        if self.embed_steps not in ("row", "frequency"):
            raise PgolfError(f"quant.embed_steps = {self.embed_steps!r}: choose \"row\" or \"frequency\"")
        if not self.embed_clip_k > 0.0:
            raise PgolfError(f"quant.embed_clip_k must be positive, got {self.embed_clip_k}")
        if not self.embed_freq_floor > 0.0:
            raise PgolfError(f"quant.embed_freq_floor must be positive, got {self.embed_freq_floor}")
        if not 0.0 < self.gptq_damp < 1.0:
            raise PgolfError(f"quant.gptq_damp must be in (0, 1), got {self.gptq_damp}")
        if min(self.gptq_block, self.calib_tokens, self.budget_tokens) < 1 or self.keep_float_max_numel < 0:
            raise PgolfError("quant.gptq_block, quant.calib_tokens and quant.budget_tokens must be >= 1, "
                             "quant.keep_float_max_numel >= 0")
        if not 1 <= self.zstd_level <= 22:
            raise PgolfError(f"quant.zstd_level must be in 1..22, got {self.zstd_level}")
        if self.gate not in schemes:
            raise PgolfError(f"quant.gate = {self.gate!r} is not a scheme: choose one of {', '.join(schemes)}")
        if self.attn_clip_k < 0.0 or self.mlp_clip_k < 0.0:
            raise PgolfError("quant.attn_clip_k and quant.mlp_clip_k must be >= 0 (0: use quant.clip_k)")
        if self.awq_groups < 0 or self.awq_group_size < 1 or not 2 <= self.awq_bits <= 8:
            raise PgolfError(f"quant.awq_groups must be >= 0, awq_group_size >= 1 and awq_bits in 2..8, got "
                             f"{self.awq_groups}, {self.awq_group_size}, {self.awq_bits}")
        if self.awq_groups and not self.gptq:
            raise PgolfError("quant.awq_groups ranks columns by their calibration activations: it needs quant.gptq = true")
        if self.lqer_tensors < 0 or self.lqer_rank < 0 or self.prune_values < 0:
            raise PgolfError("quant.lqer_tensors, quant.lqer_rank and quant.prune_values must be >= 0")
        for key in ("lqer_a_bits", "lqer_b_bits"):
            if not 2 <= getattr(self, key) <= 8:
                raise PgolfError(f"quant.{key} must be in 2..8, got {getattr(self, key)}")
        if self.lqer_group < 1:
            raise PgolfError(f"quant.lqer_group must be >= 1, got {self.lqer_group}")
        if self.compressor == "auto":  # a removed value: keys and their values are contracts
            raise PgolfError('quant.compressor = "auto" was removed: "group" was the smallest pipeline it ever picked '
                             '(BENCHMARKS.md, the record artifact); set quant.compressor = "group"')
        if self.compressor not in ("zstd", "brotli", "group", "group_zpaq", "group_ans"):
            raise PgolfError(f"quant.compressor = {self.compressor!r}: choose zstd, brotli, group, group_zpaq or group_ans")
        if self.budget_measure not in ("every", "narrowest"):
            raise PgolfError(f"quant.budget_measure = {self.budget_measure!r}: choose every or narrowest")
        for name, scheme in self.tensor_scheme_map().items():
            if scheme not in schemes:
                raise PgolfError(f"quant.tensor_schemes: {name}={scheme!r} is not a scheme: choose one of "
                                 f"{', '.join(schemes)}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(_Section):
    """Validation: the whole split unless max_tokens says otherwise, scored the way `mode` says.

    `flat` scores disjoint train.seq_len blocks (the reference; every periodic validation
    during training is flat). `sliding` and `ttt` are the records' final evaluation
    (shared/eval/, README "Evaluation"); the record values are in the comments. Defaults
    suit configs/small.toml (seq_len 128) on a CPU."""

    max_tokens: int = 0              # 0 = whole validation split; otherwise the first N target tokens
    batch_tokens: int = 524288       # tokens per validation batch, all ranks together
    mode: str = "flat"               # flat | sliding | ttt
    context: int = 0                 # sliding/ttt window length in tokens (0 = train.seq_len; records: 2048)
    stride: int = 32                 # sliding: each window scores its last `stride` targets (records: 64)
    ttt: str = "sgd"                 # ttt flavour: sgd (chunked full-model SGD) | lora (per-document LoRA)
    # chunked full-model SGD (records: 32768 tokens, lr 0.002-0.005, momentum 0.9, 3 epochs, clip 1.0)
    ttt_chunk_tokens: int = 2048     # score a chunk, then train on it; the last chunk is never trained
    ttt_lr: float = 0.01             # peak SGD LR, cosine-decayed over the chunks
    ttt_momentum: float = 0.9
    ttt_epochs: int = 3              # passes over each scored chunk
    ttt_grad_clip: float = 1.0       # global grad-norm clip (0 = off)
    ttt_cosine: bool = True          # cosine LR over chunks (false: constant ttt_lr)
    # per-document LoRA (#1855: rank 80, alpha = rank, Adam lr 1e-4 betas (0, 0.99), 64 docs, chunk 48)
    lora_rank: int = 8
    lora_alpha: float = 8.0          # adapter output scale alpha / rank
    lora_lr: float = 0.001           # Adam LR of the adapters, betas (0, 0.99)
    lora_wd: float = 0.0             # decoupled weight decay of the adapters (records: 0.5)
    lora_targets: str = "q,k,v,o,mlp"  # which projections get adapters: any of q, k, v, o, mlp, head (#1855: all)
    lora_docs: int = 16              # documents per batch (sorted by length, one per row)
    lora_chunk: int = 32             # tokens scored per adapter step (records: 48)
    lora_reset: bool = True          # adapters back to zero (B) for every document
    lora_phases: int = 0             # global SGD phases: after every lora_phase_docs documents (0 = off; records: 3)
    lora_phase_docs: int = 0         # documents scored between global phases (records: 833)
    lora_phase_lr: float = 0.001     # global phase SGD LR (momentum ttt_momentum, cosine within the epoch)
    # how the adapters sit and train; the defaults are pgolf's first design, #1855's values in brackets
    lora_per_slot: bool = False      # one adapter per position of the looped layer order, not per block [true]
    lora_layout: str = "proj"        # proj: o reads the attention output, MLP adapters on fc and proj; block:
                                     # o and one dim->dim MLP adapter read their sublayer's normed input [block]
    lora_a_init: str = "normal"      # A's draw: normal (std 1/sqrt(in)) | uniform (+-1/sqrt(in)) [uniform]
    lora_warm_a: bool = False        # A kept from batch to batch (only B and Adam reset) [true]
    lora_adam_eps: float = 1e-8      # the adapters' Adam eps [1e-10]
    lora_tail: str = "chunk"         # a document's last window: chunk (ends where a full chunk would) |
                                     # document (ends at the document's end: full context) [document]
    lora_train_last: bool = True     # also step on a document's last chunk (nothing of it is scored later) [false]
    lora_phase_order: str = "stream"  # stream: phases between groups of lora_phase_docs documents in stream order;
                                     # scored: one length-sorted queue, phases by documents scored (#1855) [scored]
    lora_prefix_docs: int = 0        # scored order: phase k after prefix * (k + 1) / lora_phases documents [2500]
    lora_phase_chunk_tokens: int = 32768  # scored order: SGD chunks of the scored tokens, never the last [32768]
    lora_phase_rows: int = 32        # scored order: rows of `context` tokens per rank and SGD step [32]
    lora_forwards: int = 1           # 1: score and train from one forward per chunk; 2: a scoring forward, then
                                     # a training one (the first design; the same scores)
    lora_max_tokens: int = 0         # input tokens per LoRA forward (rows x window; a batch goes in pieces of
                                     # whole rows); 0 = a training micro-batch's: train.batch_tokens / grad_accum
                                     # (or train.max_microbatch_tokens): no more activations than a training step
    lora_compile: bool = False       # torch on CUDA: the TTT forward and backward under torch.compile (dynamic
                                     # shapes; its graphs compile inside the evaluation's time)
    lora_short_chunks: str = ""      # #2014's short-document score-first chunks: "256:8,2000:24" = a batch whose
                                     # longest document has at most 256 tokens (with its BOS) in chunks of 8, at
                                     # most 2000 in chunks of 24, longer ones in lora_chunk ("" = off)
    # #2135's token-only n-gram tilt (from #1145; shared/eval/ngram.py): sliding and ttt only, the scores only
    ngram_tilt: bool = False         # tilt each scored distribution towards the stream prefix's n-gram hint [true]
    ngram_order: int = 16            # the hint's context: the order - 1 targets before it [16]
    ngram_threshold: float = 0.8     # the tilt applies where the hint's frequency in its context reaches this [0.8]
    ngram_boost: float = 2.625       # beta: the hint's logit + beta, then renormalised [2.625]

    def validate(self) -> None:
        if self.max_tokens < 0 or self.batch_tokens < 1:
            raise PgolfError(f"eval.max_tokens must be >= 0 and eval.batch_tokens >= 1, got {self.max_tokens}, "
                             f"{self.batch_tokens}")
        if self.mode not in ("flat", "sliding", "ttt"):
            raise PgolfError(f"eval.mode = {self.mode!r}: choose flat, sliding or ttt")
        if self.ttt not in ("sgd", "lora"):
            raise PgolfError(f"eval.ttt = {self.ttt!r}: choose sgd or lora")
        if self.context < 0 or self.stride < 1 or self.ttt_chunk_tokens < 1 or self.ttt_epochs < 0:
            raise PgolfError("eval.context must be >= 0, eval.stride and eval.ttt_chunk_tokens >= 1, "
                             "eval.ttt_epochs >= 0")
        if self.context and self.stride > self.context:
            raise PgolfError(f"eval.stride={self.stride} must not exceed eval.context={self.context}")
        if min(self.ttt_lr, self.ttt_momentum, self.ttt_grad_clip, self.lora_lr, self.lora_wd,
               self.lora_phase_lr) < 0 or self.ttt_momentum >= 1:
            raise PgolfError("eval.ttt_lr, ttt_grad_clip, lora_lr, lora_wd, lora_phase_lr must be >= 0 and "
                             "eval.ttt_momentum in [0, 1)")
        if self.lora_rank < 1 or self.lora_docs < 1 or self.lora_chunk < 1 or self.lora_alpha <= 0:
            raise PgolfError("eval.lora_rank, lora_docs and lora_chunk must be >= 1 and eval.lora_alpha > 0")
        bad = [t for t in self.lora_target_list if t not in LORA_TARGETS]
        if bad or not self.lora_target_list:
            raise PgolfError(f"eval.lora_targets = {self.lora_targets!r}: a comma list of {', '.join(LORA_TARGETS)}")
        for key, value, choices in (("lora_layout", self.lora_layout, ("proj", "block")),
                                    ("lora_a_init", self.lora_a_init, ("normal", "uniform")),
                                    ("lora_tail", self.lora_tail, ("chunk", "document"))):
            if value not in choices:
                raise PgolfError(f"eval.{key} = {value!r}: choose {' or '.join(choices)}")
        if not self.lora_adam_eps > 0:
            raise PgolfError(f"eval.lora_adam_eps = {self.lora_adam_eps}: must be > 0")
        if self.lora_phase_order not in ("stream", "scored"):
            raise PgolfError(f"eval.lora_phase_order = {self.lora_phase_order!r}: choose stream or scored")
        scored = self.lora_phase_order == "scored"
        if self.lora_phases < 0 or self.lora_phase_docs < 0 or (self.lora_phases and not scored
                                                                 and not self.lora_phase_docs):
            raise PgolfError("eval.lora_phases needs eval.lora_phase_docs >= 1 (both >= 0)")
        if self.lora_phases and scored and self.lora_prefix_docs < self.lora_phases:
            raise PgolfError(f"eval.lora_phase_order = \"scored\" needs eval.lora_prefix_docs >= lora_phases "
                             f"({self.lora_phases}), got {self.lora_prefix_docs}")
        if self.lora_forwards not in (1, 2) or self.lora_max_tokens < 0:
            raise PgolfError(f"eval.lora_forwards = {self.lora_forwards}: choose 1 or 2; eval.lora_max_tokens >= 0")
        if self.lora_phase_chunk_tokens < 1 or self.lora_phase_rows < 1:
            raise PgolfError("eval.lora_phase_chunk_tokens and eval.lora_phase_rows must be >= 1")
        if not (1 <= self.ngram_order <= 33 and 0 < self.ngram_threshold <= 1 and self.ngram_boost >= 0):
            raise PgolfError(f"eval.ngram_order = {self.ngram_order}, ngram_threshold = {self.ngram_threshold}, "
                             f"ngram_boost = {self.ngram_boost}: need order in 1..33, threshold in (0, 1], boost >= 0")
        if self.ngram_tilt and self.mode == "flat":
            raise PgolfError('eval.ngram_tilt scores per target: set eval.mode = "sliding" or "ttt" (not "flat")')
        _ = self.lora_short_chunk_list  # parses, or says what is wrong

    @property
    def lora_short_chunk_list(self) -> list[tuple[int, int]]:
        """`lora_short_chunks` as (longest document tokens, chunk) pairs, shortest limit first."""
        out = []
        for item in (i.strip() for i in self.lora_short_chunks.split(",")):
            if not item:
                continue
            limit, _, chunk = item.partition(":")
            try:
                pair = (int(limit), int(chunk))
            except ValueError:
                pair = (0, 0)
            if min(pair) < 1:
                raise PgolfError(f"eval.lora_short_chunks = {self.lora_short_chunks!r}: a comma list of "
                                 "DOC_TOKENS:CHUNK with both >= 1, e.g. \"256:8,2000:24\"")
            out.append(pair)
        return sorted(out)

    @property
    def lora_target_list(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


LORA_TARGETS = ("q", "k", "v", "o", "mlp", "head")  # where LoRA adapters go (mlp: fc and proj, or one; head: the logits)


@dataclass(frozen=True, kw_only=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> Config:
        self._check_finite()
        self.model.validate()
        self.train.validate()
        if self.train.seq_schedule and not self.model.doc_attention:
            raise PgolfError(f"train.seq_schedule = {self.train.seq_schedule!r} grows the document segment cap: it "
                             "needs model.doc_attention = true")
        self.optim.validate()
        self.quant.validate()
        self.eval.validate()
        self._check_eval_windows()
        self._check_tensor_schemes()
        return self

    def _check_eval_windows(self) -> None:
        """The sliding/TTT window (eval.context, 0 = train.seq_len) must hold eval.stride: checked with the config,
        not at the final evaluation after the whole training."""
        e = self.eval
        context = e.context or self.train.seq_len
        if (e.mode == "sliding" or (e.mode == "ttt" and e.ttt == "sgd")) and e.stride > context:
            where = "eval.context" if e.context else "train.seq_len (eval.context = 0)"
            raise PgolfError(f"eval.stride={e.stride} must not exceed the evaluation window {where} = {context}")

    def _check_finite(self) -> None:
        """Every float key is a finite number and every int fits int64, however the config was built
        (a dataclass made in Python skips `_check_type`)."""
        for f in fields(self):
            sub = getattr(self, f.name)
            for g in fields(sub):
                v, where = getattr(sub, g.name), f"{f.name}.{g.name}"
                if isinstance(v, float) and not math.isfinite(v) and where not in ALLOW_INFINITY:
                    raise PgolfError(f"{where} must be a finite number, got {v}")
                if isinstance(v, float) and math.isfinite(v) and abs(v) > FLOAT32_MAX:
                    raise PgolfError(f"{where} = {v:g} is out of range: the trainers compute in float32 "
                                     f"(at most {FLOAT32_MAX:.4g})")
                if isinstance(v, int) and not isinstance(v, bool) and not -INT_LIMIT <= v < INT_LIMIT:
                    raise PgolfError(f"{where} = {v} is out of range: it must fit a signed 64-bit integer")

    def _check_tensor_schemes(self) -> None:
        """quant.tensor_schemes may only name parameters of this model, and integer schemes only matrices
        (a vector given int6 would be stored as floats: an override that silently did nothing)."""
        overrides = self.quant.tensor_scheme_map()
        if not overrides:
            return
        from shared.core.spec import param_table  # at call time: loading a config needs no numpy

        table = param_table(self.model)
        for name, scheme in overrides.items():
            if name not in table:
                raise PgolfError(f"quant.tensor_schemes: unknown tensor {name!r}{_nearest(name, list(table))}")
            if scheme.startswith("int") and len(table[name].shape) < 2:
                raise PgolfError(f"quant.tensor_schemes: {name} is a vector: only matrices take integer schemes "
                                 "(give it fp16 or fp32)")


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


def _nearest(name: str, options: list[str]) -> str:
    """A likely misspelling names its key; anything else lists the valid ones."""
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else f" (valid: {', '.join(sorted(options))})"


INT_LIMIT = 2**63
FLOAT32_MAX = 3.4028234663852886e38  # a float key beyond it overflows where a backend casts it
# Float keys where infinity means something (none so far: every limit has its own "off" value, like 0).
ALLOW_INFINITY: frozenset[str] = frozenset()


def _check_type(where: str, value: Any, default: Any) -> Any:
    """Coerce `value` to the type of `default`, or raise naming `where`."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:  # beyond int64 every library downstream overflows
                raise PgolfError(f"{where} = {value} is out of range: it must fit a signed 64-bit integer")
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:  # NaN passes every `<`/`>` range check below; no knob means it
                raise PgolfError(f"{where} must be a number, got nan")
            if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
                raise PgolfError(f"{where} = {value} is out of range")
            if value in (float("inf"), float("-inf")) and where.rsplit(": ", 1)[-1] not in ALLOW_INFINITY:
                # infinity passes most one-sided checks and then fails far from its cause (an LR, a scale)
                raise PgolfError(f"{where} must be a finite number, got {value}")
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise PgolfError(f"{where} must be {type(default).__name__}, got {type(value).__name__} {value!r}")


def _apply(cfg: Config, section: str, key: str, value: Any, source: str) -> Config:
    if section not in SECTIONS:
        raise PgolfError(f"{source}: unknown config section {section!r}{_nearest(section, list(SECTIONS))}")
    sub = getattr(cfg, section)
    names = [f.name for f in fields(sub)]
    if key not in names:
        raise PgolfError(f"{source}: unknown config key '{section}.{key}'{_nearest(key, names)}")
    value = _check_type(f"{source}: {section}.{key}", value, getattr(sub, key))
    return replace(cfg, **{section: replace(sub, **{key: value})})


def from_dict(tree: dict[str, Any], source: str = "config", base: Config | None = None) -> Config:
    cfg = base or Config()
    for section, table in tree.items():
        if not isinstance(table, dict):
            raise PgolfError(f"{source}: {section!r} must be a [section] table{_nearest(section, list(SECTIONS))}")
        for key, value in table.items():
            cfg = _apply(cfg, section, key, value, source)
    return cfg


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` with a TOML value; bare words are taken as strings."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise PgolfError(f"--set {text!r}: expected section.key=value, e.g. --set train.iterations=200")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...], source: str = "--set") -> Config:
    """Each `section.key=value`, type-checked against the current value, then cross-field checks."""
    for text in overrides:
        section, key, value = parse_override(text)
        cfg = _apply(cfg, section, key, value, source=source)
    return cfg.validate()


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file, then each `--set` override, then cross-field checks."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PgolfError(f"config file {path} not found: pass an existing TOML file, e.g. configs/small.toml")
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise PgolfError(f"{path}: malformed TOML ({e}); fix the file and retry") from None
        cfg = from_dict(tree, source=str(path), base=cfg)
    return apply_overrides(cfg, overrides)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML; `load_config` of it gives back `cfg`."""
    lines: list[str] = []
    for section, table in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


# Whether configs read from text are checked key by key. train_gpt.py's build of this module fixes it False
# (shared/record/script.py FOLDED): it reads only configs it wrote, checked when it was generated.
CHECKED = True


def from_toml_text(text: str, source: str = "config") -> Config:
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PgolfError(f"{source}: malformed TOML ({e})") from None
    if CHECKED:
        return from_dict(tree, source=source).validate()
    return Config(**{section: SECTIONS[section](**table) for section, table in tree.items()})
