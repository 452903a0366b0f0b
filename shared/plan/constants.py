"""The plan's constants in one place: what each implementation profile does, and the calibration.

A *profile* is an implementation: the kernels a step runs and how evaluation is organised.
`record` is the challenge's scripts as the records run them (torch.compile, FlashAttention 3
varlen with the document mask, fused cross-entropy, banked Muon, per-document LoRA TTT that
forwards each chunk once and reuses that loss for its step; #1855). `pgolf` is this
repository's torch backend as it is (dense causal attention over packed sequences, fp32
logits and unfused cross-entropy, Muon one matrix at a time, LoRA TTT that scores a chunk
and then runs a second forward for its step, global TTT phases on one process).

The per-op counts of a profile (element passes, kernels) are counted from its code
(docs/PLAN.md lists them); the *achieved fractions* of the hardware peaks are the only fitted
numbers: `CALIBRATION`, fitted by benchmarks/plan_calibration.py on two published runs (the
challenge baseline and #1855) and never on the held-out records it then predicts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    doc_mask: bool               # attention stops at BOS (varlen) instead of plain causal over the packed row
    fused_ce: bool               # cross-entropy fused with the logits (no fp32 logits tensor)
    ew_passes_d: float           # element passes over d-wide activations per layer application, fwd+bwd
    ew_passes_h: float           # ... over MLP-hidden-wide activations
    logit_bytes: float           # bytes moved per logit (vocab entry) per trained token, fwd+bwd
    logit_saved_bytes: float     # bytes per logit held at the peak (logits and their gradient)
    act_saved_d: float           # d-wide activations saved for backward per layer application (2-byte values)
    act_saved_h: float           # ... MLP-hidden-wide
    kernels_per_app: float       # kernels per layer application, fwd+bwd
    kernels_fixed: float         # embedding, head, loss, grad clip, EMA, ... per micro-batch/step
    kernels_per_matrix: float    # optimizer kernels per Muon matrix on its owner rank
    ttt_forwards: int            # forwards of a TTT chunk (1: the scored forward's loss is trained on)
    ttt_host_ms: float           # host-side work per TTT chunk step (index building, ledger), ms
    phases_ranks: str            # "all": global TTT phases run on every rank; "one": on one process


PROFILES: dict[str, Profile] = {
    # Counts for a compiled step: inductor fuses each run of elementwise ops between two matmuls into
    # one kernel; per layer forward ~10 such kernels + 6 GEMMs + attention, backward about twice that.
    "record": Profile("record", doc_mask=True, fused_ce=True, ew_passes_d=60.0, ew_passes_h=6.0,
                      logit_bytes=8.0, logit_saved_bytes=4.0, act_saved_d=12.0, act_saved_h=2.0,
                      kernels_per_app=40.0, kernels_fixed=60.0, kernels_per_matrix=2.0,
                      ttt_forwards=1, ttt_host_ms=0.0, phases_ranks="all"),
    "pgolf": Profile("pgolf", doc_mask=False, fused_ce=False, ew_passes_d=60.0, ew_passes_h=6.0,
                     logit_bytes=24.0, logit_saved_bytes=12.0, act_saved_d=12.0, act_saved_h=2.0,
                     kernels_per_app=40.0, kernels_fixed=80.0, kernels_per_matrix=30.0,
                     ttt_forwards=2, ttt_host_ms=1.0, phases_ranks="all"),
}

# Eager execution (pgolf on a CPU, or train.compile = false): every elementwise op is its own pass
# and kernel: RMSNorm alone is ~5 (square, mean, rsqrt, multiply, cast).
EAGER = dict(ew_passes_d=150.0, ew_passes_h=12.0, kernels_per_app=150.0, kernels_fixed=200.0,
             logit_bytes=48.0, act_saved_d=24.0, act_saved_h=3.0)

# FlashAttention's achieved fraction of peak relative to a dense GEMM's on H100 at head dim 64: FA3
# reports ~500 TFLOP/s forward and less backward (Shah et al. 2024, FlashAttention-3, fig. 5-7) against
# ~750-800 for cuBLAS bf16 GEMMs; with short documents (varlen) less again. Fixed, not fitted: the
# three calibration step times cannot separate it from the GEMM fraction.
ATTN_RATIO = 0.5

# Fitted fractions of the hardware peaks (benchmarks/plan_calibration.py prints the fit):
#   gemm: achieved / peak FLOP/s of the dense matmuls; attn: of the attention kernels;
#   bw: achieved / peak bandwidth of the memory-bound passes; act: saved-activation scale;
#   ttt_chunk_ms: fixed cost of one TTT chunk step (launches, host sync, small kernels) on the GPU;
#   sgd_step_ms: fixed cost of one global-TTT SGD step; ngram_us_per_token: n-gram tilt precompute.
CALIBRATION: dict[str, dict[str, float]] = {
    "gpu": {"gemm": 0.7843, "attn": 0.3921, "bw": 0.7843, "act": 0.9684, "ttt_chunk_ms": 10.0, "sgd_step_ms": 65.22,
            "static_gib": 0.2536, "step_ms": 9.429, "ttt_eff": 0.7},
    "cpu": {"gemm": 1.479, "attn": 1.479, "bw": 1.479, "act": 1.0, "ttt_chunk_ms": 0.0, "sgd_step_ms": 0.0,
            "static_gib": 0.3552, "step_ms": 0.0, "ttt_eff": 1.0},
    "mac": {"gemm": 0.6, "attn": 0.35, "bw": 0.6, "act": 1.0, "ttt_chunk_ms": 20.0, "sgd_step_ms": 100.0,
            "static_gib": 1.0, "step_ms": 5.0, "ttt_eff": 1.0},
}

# Where each constant of CALIBRATION came from (docs/PLAN.md, BENCHMARKS.md "pgolf plan").
CALIBRATION_SOURCES = {
    "gpu": "fitted on the challenge baseline (43.5 ms/step, 10,184 MiB) and #1855 (~96 / ~141 ms/step, "
           "41,707 MiB, TTT eval 455-509 s) on 8xH100",
    "cpu": "fitted on one torch run of a calibration config on the 2-vCPU development machine",
    "mac": "not calibrated: no Mac run exists yet (the GPU fractions are used)",
}

# Techniques of the frontier records, named for the record profile with `pgolf plan --technique
# NAME=VALUE` (defaults in brackets); the pgolf profile reads pgolf's own keys for them (TECHNIQUE_KEYS,
# model.doc_attention, train.fused_kernels).
TECHNIQUES = {
    "doc_mask": "attention stops at BOS inside packed sequences (FlashAttention varlen) [on in the record "
                "profile, off in pgolf's]",
    "fused_ce": "cross-entropy fused with the logits, no fp32 logits tensor [record: on; pgolf: off]",
    "seq_schedule": "training context grown during training, e.g. 1024@0.1,2048@0.7,3072@1.0: LEN@UNTIL, "
                    "UNTIL the fraction of training time (#2014) [none]",
    "short_doc_chunks": "TTT chunk size by document length, e.g. 256:8,2000:24: documents shorter than LEN "
                        "tokens use chunks of N (#2014) [none: eval.lora_chunk for all]",
    "ngram_tilt": "token-only causal n-gram tilt at evaluation; its precompute runs inside the eval timer "
                  "(#2130, #2135) [off]",
}

TECHNIQUE_KEYS = {"seq_schedule": "train.seq_schedule", "short_doc_chunks": "eval.lora_short_chunks",
                  "ngram_tilt": "eval.ngram_tilt"}

# n-gram tilt precompute, per validation target, on the records' pods (CPU work): #2130's validation
# logs (the base #2135 built on) report 163.4-165.7 s for 47,851,520 targets inside the eval timer.
NGRAM_US_PER_TOKEN = 164.6e6 / 47_851_520
