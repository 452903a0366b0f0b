"""The plan of a config on some hardware: exact counts, then predictions with a stated model.

Time of a step on one device (each term a roofline; docs/PLAN.md has the derivation):

    t = gemm_flops / (peak x f_gemm) + attn_flops / (peak x f_attn)
        + bytes / (bandwidth x f_bw) + kernels x launch + all-reduce bytes / link

per layer order (before and after depth recurrence switches on) and per training context (the
#2014 schedule). Steps are the training seconds (train.max_seconds less train.calib_reserve_s)
walked through those segments. Peak memory per device is the sum of its components: fp32
weights, gradients, optimizer state, EMA, autocast copies, the activations one micro-batch saves
for backward (the looped order when recurrence is on), the logits, and a fitted static part.
Evaluation walks the validation documents (shared/plan/doclen.py) the way each mode does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shared.core.config import Config
from shared.errors import PgolfError
from shared.plan import constants as K
from shared.plan.counts import (
    Work,
    artifact_estimate,
    block_matmul_weights,
    block_passes,
    context,
    flops_per_token,
    head_weights,
    lora_work,
    matrix_count,
    ns_flops,
    param_counts,
    pass_work,
)
from shared.plan.doclen import VAL_DOCS, doc_lengths, val_tokens_for
from shared.plan.hardware import Hardware

CAP_BYTES = 16_000_000
EVAL_CAP_S = 600.0
GIB = 2.0 ** 30
SANE_PARAMS = 2_000_000_000   # beyond this the plan states the size and skips nothing, but says so first

# Compressor figures: integer-code bytes per entropy bit (the coder's overhead over the codes' entropy)
# and float bytes per raw byte. "record" (per-group lrzip/ZPAQ + brotli) is fitted on #1855's artifacts;
# pgolf's per-group brotli is ~280 KB (1.76%) larger on the record model, the gap the records report
# between their pipeline and plain brotli (pgolf's per-group is 3 KB below plain brotli, BENCHMARKS.md
# "The record artifact"); zstd-22 is 0.82% above pgolf's per-group on the same model (same table).
# group_zpaq (ZPAQ-5 on the code groups) measured 0.93% below pgolf's per-group on an untrained frontier-shaped
# checkpoint at 2.15x its time (BENCHMARKS.md "Compressors"; trained weights, as the records', gain more).
# group_ans (pgolf's rANS on the code groups) measured 1.08% below per-group brotli on the record-shaped
# checkpoint in 1/15 of its CPU time (BENCHMARKS.md "group_ans").
CODER = {"record": 0.9923, "group": 1.0098, "brotli": 1.0100, "zstd": 1.0181, "group_zpaq": 1.0004, "group_ans": 0.9989,
         "float_zstd": 0.93, "float_brotli": 0.92}
PERCENTILE_INT8_K = 3.494      # per-row int8 at the 99.99984th percentile behaves like a clip at 5.2 std (baseline)
# Packing throughput (CPU work, seconds per output byte): per-group lrzip ~100 s for 15.9 MB (#1855 logs);
# pgolf's brotli-11 pipelines ~3 us/byte, zstd-22 ~0.6 us/byte (measured here, docs/PLAN.md).
PACK_S_PER_BYTE = {"record": 6.3e-6, "group": 3.0e-6, "brotli": 3.0e-6, "zstd": 0.6e-6, "group_zpaq": 6.4e-6,
                   "group_ans": 0.2e-6}
GPTQ_CPU_GFLOPS = 50.0       # pgolf's numpy GPTQ on a pod's CPU: ~50 GFLOP/s (one process, BLAS-bound)
RECORD_GLOBAL_CHUNK = 32768  # tokens per global-TTT SGD step in the records (#1855 global_ttt_chunk_tokens)


@dataclass
class Plan:
    """Everything `pgolf plan` reports (`as_json` gives the contract keys first)."""

    hardware: Hardware
    profile: str
    techniques: dict[str, Any]
    params: dict
    code_bytes: int | None
    artifact: dict
    tokens_per_step: int
    flops: dict
    time: dict
    memory: dict
    eval: dict
    pack_seconds: float
    calib_seconds: float
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gap: list[dict[str, Any]] | None = None    # pgolf profile on a GPU: gap_to_record, term by term

    def as_json(self) -> dict[str, Any]:
        t = self.time
        return {
            "params": self.params["total"],
            "artifact_bytes": self.artifact["bytes"],
            "code_bytes": self.code_bytes,
            "tokens_per_step": self.tokens_per_step,
            "flops_per_step": self.flops["per_step"],
            "ms_per_step": t["ms_per_step"],
            "ms_per_step_before_loop": t["ms_per_step_before_loop"],
            "ms_per_step_after_loop": t["ms_per_step_after_loop"],
            "steps": t["steps"],
            "train_seconds": t["train_seconds"],
            "peak_memory_gb": self.memory["peak_gib"],
            "eval_seconds": self.eval["seconds"],
            "pack_seconds": self.pack_seconds,
            "warnings": list(self.warnings),
            "hardware": self.hardware.name,
            # additive detail
            "total_bytes": None if self.artifact["bytes"] is None else self.artifact["bytes"] + self.code_bytes,
            "profile": self.profile,
            "techniques": self.techniques,
            "calibrated": self.hardware.calibrated,
            "devices": self.hardware.devices,
            "params_by_class": self.params["by_class"],
            "params_by_group": self.params["by_group"],
            "artifact_by_scheme": self.artifact["by_scheme"],
            "flops": {k: v for k, v in self.flops.items() if k != "per_step"},
            "time_ms_by_term": t["terms"],
            "memory_gb_by_component": self.memory["components"],
            "eval_detail": self.eval["detail"],
            "calib_seconds": self.calib_seconds,
            "notes": list(self.notes),
            "gap_to_record": self.gap,
        }


# ------------------------------------------------------------------------------------------- inputs

def parse_techniques(items: tuple[str, ...] | list[str], profile: str, cfg: Config | None = None) -> dict[str, Any]:
    """`NAME=VALUE` flags of the records' techniques (constants.TECHNIQUES). The pgolf profile takes
    the three pgolf has keys for from `cfg` (constants.TECHNIQUE_KEYS), never from a flag."""
    out: dict[str, Any] = {"doc_mask": K.PROFILES[profile].doc_mask, "fused_ce": K.PROFILES[profile].fused_ce,
                           "seq_schedule": [], "short_doc_chunks": [], "ngram_tilt": False}
    if profile == "pgolf" and cfg is not None:
        out.update(seq_schedule=[(cap, frac) for frac, cap in cfg.train.seq_stages()],
                   short_doc_chunks=list(cfg.eval.lora_short_chunk_list), ngram_tilt=cfg.eval.ngram_tilt)
    for raw in items:
        name, _, value = raw.partition("=")
        name, value = name.strip(), value.strip()
        if name not in K.TECHNIQUES:
            raise PgolfError(f"--technique {raw!r}: unknown technique; choose one of {', '.join(K.TECHNIQUES)}")
        if profile != "record" and name in K.TECHNIQUE_KEYS:
            raise PgolfError(f"--technique {name}: the pgolf profile reads pgolf's own key: "
                             f"--set {K.TECHNIQUE_KEYS[name]}=... (--technique is for --profile record)")
        try:
            if name in ("doc_mask", "fused_ce", "ngram_tilt"):
                if value.lower() not in ("", "on", "off", "true", "false", "1", "0"):
                    raise ValueError
                out[name] = value.lower() in ("", "on", "true", "1")
            elif name == "seq_schedule":
                pairs = [p.split("@") for p in value.split(",") if p.strip()]
                out[name] = sorted(((int(a), float(b)) for a, b in pairs), key=lambda x: x[1])
                if not out[name] or any(not 0 < f <= 1 for _, f in out[name]):
                    raise ValueError
            else:
                pairs = [p.split(":") for p in value.split(",") if p.strip()]
                out[name] = sorted((int(a), int(b)) for a, b in pairs)
                if not out[name] or any(a < 1 or b < 1 for a, b in out[name]):
                    raise ValueError
        except ValueError:
            raise PgolfError(f"--technique {raw!r}: malformed value ({K.TECHNIQUES[name]})") from None
    return out


def profile_for(name: str, cfg: Config, hw: Hardware, tech: dict[str, Any]) -> K.Profile:
    if name not in K.PROFILES:
        raise PgolfError(f"--profile {name!r}: choose one of {', '.join(K.PROFILES)}")
    p = K.PROFILES[name]
    eager = hw.kind == "cpu" or not cfg.train.compile
    if eager:
        p = replace(p, **K.EAGER)
    if name == "pgolf" and cfg.train.fused_kernels == "auto" and hw.kind != "cpu" and not cfg.model.asym_logit:
        tech = {**tech, "fused_ce": True}   # train.fused_kernels: the Triton softcapped cross-entropy on a GPU
    if not tech["fused_ce"] and p.fused_ce:
        p = replace(p, logit_bytes=max(p.logit_bytes, K.PROFILES["pgolf"].logit_bytes),
                    logit_saved_bytes=K.PROFILES["pgolf"].logit_saved_bytes)
    elif tech["fused_ce"] and not p.fused_ce:
        rec = K.PROFILES["record"]
        p = replace(p, logit_bytes=rec.logit_bytes, logit_saved_bytes=rec.logit_saved_bytes)
    if name == "pgolf":  # pgolf's own implementation follows the config's keys where it has them
        p = replace(p, ttt_forwards=cfg.eval.lora_forwards)
        if cfg.model.doc_attention:
            tech = {**tech, "doc_mask": True}
    return replace(p, doc_mask=tech["doc_mask"], fused_ce=tech["fused_ce"])


def calibration(hw: Hardware) -> dict[str, float]:
    return K.CALIBRATION["cpu" if hw.kind == "cpu" else "mac" if hw.kind == "mac" else "gpu"]


# ------------------------------------------------------------------------------------------- time

def seconds_of(w: Work, hw: Hardware, cal: dict[str, float]) -> dict[str, float]:
    peak = hw.tflops * 1e12
    bw = hw.mem_bw_gbs * 1e9
    return {"gemm": w.gemm_flops / (peak * cal["gemm"]), "attention": w.attn_flops / (peak * cal["attn"]),
            "memory": w.bytes / (bw * cal["bw"]), "launch": w.kernels * hw.launch_us * 1e-6}


def step_terms(cfg: Config, hw: Hardware, prof: K.Profile, cal: dict[str, float], seq_len: int,
               looped: bool) -> dict[str, float]:
    """Milliseconds of one training step on one device, by term."""
    m, t = cfg.model, cfg.train
    tokens_dev = t.batch_tokens / hw.devices
    micro = max(1, math.ceil(t.grad_accum / hw.devices))            # micro-batches per device per step
    if t.max_microbatch_tokens:
        micro *= max(1, math.ceil(t.batch_tokens / t.grad_accum / t.max_microbatch_tokens))
    ctx = context(seq_len, m.vocab_size, prof.doc_mask)
    w = pass_work(m, prof, tokens_dev, ctx, "train", looped)
    w = Work(w.gemm_flops, w.attn_flops, w.bytes, w.kernels * micro)
    # optimizer: Newton-Schulz on this device's share of the matrices, elementwise state updates
    params = param_counts(m)["total"]
    opt = Work(gemm_flops=ns_flops(m, cfg.optim.muon_backend_steps) / hw.devices,
               bytes=params * (40.0 + (12.0 if t.ema_decay else 0.0)),
               kernels=matrix_count(m) / hw.devices * prof.kernels_per_matrix + 3.0 * matrix_count(m) + 20.0)
    s = seconds_of(w, hw, cal)
    so = seconds_of(opt, hw, cal)
    comm = 0.0
    if hw.devices > 1 and hw.link_gbs:
        ring = 2.0 * (hw.devices - 1) / hw.devices
        comm = ring * params * (4.0 + 2.0) / (hw.link_gbs * 1e9 * 0.8)   # fp32 gradients + bf16 Muon updates
    terms = {"gemm": s["gemm"], "attention": s["attention"], "memory": s["memory"], "launch": s["launch"],
             "optimizer": so["gemm"] + so["memory"] + so["launch"], "comm": comm,
             "host": cal["step_ms"] / 1000.0}
    return {k: 1000.0 * v for k, v in terms.items()}


def train_timeline(cfg: Config, hw: Hardware, prof: K.Profile, cal: dict[str, float],
                   tech: dict[str, Any]) -> dict[str, Any]:
    """Steps and seconds through the run's segments (layer order x training context)."""
    m, t = cfg.model, cfg.train
    budget = max(t.max_seconds - t.calib_reserve_s, 0.0) if t.max_seconds > 0 else 0.0
    sched = tech["seq_schedule"] or [(t.seq_len, 1.0)]
    cuts = sorted({0.0, 1.0, *(f for _, f in sched), *([m.loop_at] if m.looping else [])})
    cache: dict[tuple[int, bool], dict[str, float]] = {}

    def ms(seq: int, looped: bool) -> float:
        if (seq, looped) not in cache:
            cache[(seq, looped)] = step_terms(cfg, hw, prof, cal, seq, looped)
        return sum(cache[(seq, looped)].values())

    def seq_at(frac: float) -> int:
        return next((s for s, f in sched if frac < f), sched[-1][0])

    steps = 0.0
    seconds = 0.0
    before = [0.0, 0.0]   # steps, seconds
    after = [0.0, 0.0]
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        mid = (lo + hi) / 2.0
        looped = m.looping and mid >= m.loop_at
        step_ms = ms(seq_at(mid), looped)
        if budget > 0:
            seg_s = (hi - lo) * budget
            n = seg_s * 1000.0 / step_ms
            if steps + n > t.iterations:
                n = max(t.iterations - steps, 0.0)
                seg_s = n * step_ms / 1000.0
        else:   # uncapped: progress is by steps
            n = (hi - lo) * t.iterations
            seg_s = n * step_ms / 1000.0
        steps += n
        seconds += seg_s
        acc = after if looped else before
        acc[0] += n
        acc[1] += seg_s
    steps_i = int(steps)
    plain = ms(seq_at(0.0), False)
    loop_ms = ms(seq_at(1.0 - 1e-9), True) if m.looping else None
    main_terms = cache[(seq_at(1.0 - 1e-9), m.looping)]
    return {
        "steps": steps_i,
        "train_seconds": round(seconds, 2),
        "ms_per_step": round(1000.0 * seconds / steps, 2) if steps else round(plain, 2),
        "ms_per_step_before_loop": round(1000.0 * before[1] / before[0], 2) if before[0] else round(plain, 2),
        "ms_per_step_after_loop": (round(1000.0 * after[1] / after[0], 2) if after[0] else
                                   None if loop_ms is None else round(loop_ms, 2)),
        "steps_before_loop": int(before[0]),
        "terms": {k: round(v, 3) for k, v in main_terms.items()},
        "budget_seconds": budget,
    }


# ------------------------------------------------------------------------------------------- memory

def memory(cfg: Config, hw: Hardware, prof: K.Profile, cal: dict[str, float]) -> dict[str, Any]:
    """Peak bytes one device holds while training, by component (GiB)."""
    m, t = cfg.model, cfg.train
    pc = param_counts(m)
    n = pc["total"]
    matrix = pc["by_group"].get("matrix", 0)
    micro_tokens = t.batch_tokens / t.grad_accum
    if t.max_microbatch_tokens:
        micro_tokens = min(micro_tokens, t.max_microbatch_tokens)
    _, _, saved_d, saved_h = block_passes(m, prof, m.looping)
    act_bytes = 2.0 if hw.kind != "cpu" else 4.0          # bf16 autocast on accelerators, fp32 on a CPU
    comp = {
        "weights": n * 4.0,
        "gradients": n * 4.0,
        "optimizer": matrix * 4.0 + (n - matrix) * 8.0,
        "ema": n * 4.0 if t.ema_decay else 0.0,
        "autocast_copies": n * 2.0 if hw.kind != "cpu" else 0.0,
        "activations": cal["act"] * micro_tokens * (saved_d * m.model_dim + saved_h * m.hidden_dim) * act_bytes,
        "logits": micro_tokens * m.vocab_size * prof.logit_saved_bytes * (act_bytes / 2.0),
        "static": cal["static_gib"] * GIB,
    }
    gib = {k: round(v / GIB, 3) for k, v in comp.items()}
    return {"peak_gib": round(sum(comp.values()) / GIB, 3), "components": gib}


# ------------------------------------------------------------------------------------------- evaluation

def _ttt_lora_seconds(cfg: Config, hw: Hardware, prof: K.Profile, cal: dict[str, float], tech: dict[str, Any],
                      lens: np.ndarray) -> dict[str, float]:
    """Per-document LoRA TTT. A batch of eval.lora_docs documents (sorted by length) runs chunk c over
    min((c + 1) x chunk, context) tokens in every row (finished rows are padding): forward(s), then a
    LoRA backward unless it is the batch's last chunk; each chunk step also pays a fixed cost.

    record: batches are claimed longest-first from one queue by every device; when the documents scored
    reach a phase boundary, every device finishes its batch and waits, then a global SGD phase trains the
    base model on the documents scored so far (the longest ones) in steps of 32,768 tokens split over the
    devices. pgolf: documents in stream-order groups of eval.lora_phase_docs, each sorted into batches
    dealt round-robin to the devices; a phase runs after each group on one process."""
    m, e = cfg.model, cfg.eval
    ctx_cap = e.context or cfg.train.seq_len
    fixed = cal["ttt_chunk_ms"] / 1000.0 + prof.ttt_host_ms / 1000.0
    cache: dict[tuple, float] = {}
    flops = 0.0

    def chunk_s(rows: int, width: int, train: bool) -> float:
        nonlocal flops
        key = (rows, width, train)
        if key not in cache:
            tokens = rows * width
            w = pass_work(m, prof, tokens, (width + 1) / 2.0, "fwd").scale(prof.ttt_forwards)
            w = w + lora_work(m, tokens, e.lora_rank, e.lora_target_list, prof.name == "record").scale(
                prof.ttt_forwards / 3.0)
            if train:
                w = w + pass_work(m, prof, tokens, (width + 1) / 2.0, "lora") + pass_work(
                    m, prof, tokens, (width + 1) / 2.0, "fwd").scale(-1.0)
                w = w + lora_work(m, tokens, e.lora_rank, e.lora_target_list, prof.name == "record").scale(2.0 / 3.0)
            cache[key] = sum(seconds_of(w, hw, cal).values()) / cal["ttt_eff"] + fixed
        return cache[key]

    def batch_s(b: np.ndarray) -> tuple[float, int]:
        longest = int(b.max()) - 1
        chunk = e.lora_chunk
        for limit, size in tech["short_doc_chunks"]:
            if longest + 1 <= limit:
                chunk = size
                break
        n = max(1, math.ceil(longest / chunk))
        grow = min(n, max(1, ctx_cap // chunk))    # widths grow by a chunk up to the context, then stay
        t = sum(chunk_s(len(b), min((c + 1) * chunk, ctx_cap), c < n - 1) for c in range(grow))
        if n > grow:
            t += chunk_s(len(b), ctx_cap, True) * (n - grow - 1) + chunk_s(len(b), ctx_cap, False)
        return t, n

    def phase_s(tokens: float) -> float:
        if prof.phases_ranks == "all":
            steps, per_dev, dev = math.ceil(tokens / RECORD_GLOBAL_CHUNK), RECORD_GLOBAL_CHUNK / hw.devices, hw.devices
        else:
            rows = max(1, e.batch_tokens // ctx_cap)
            steps, per_dev, dev = math.ceil(tokens / (rows * ctx_cap)), rows * ctx_cap, 1
        w = pass_work(m, prof, per_dev, context(ctx_cap, m.vocab_size, prof.doc_mask), "train")
        step = sum(seconds_of(w, hw, cal).values()) + cal["sgd_step_ms"] / 1000.0
        if dev > 1 and hw.link_gbs:
            step += 2.0 * param_counts(m)["total"] * 4.0 / (hw.link_gbs * 1e9 * 0.8)
        return steps * step

    bsz, R = e.lora_docs, hw.devices
    phases = e.lora_phases if e.lora_phase_docs else 0
    bounds = [e.lora_phase_docs * (k + 1) for k in range(phases)]
    chunk_steps = 0
    phase_total = 0.0
    starts: list[float] = []
    if prof.name == "record":
        order = np.sort(lens)
        batches = [order[i:i + bsz] for i in range(0, order.size, bsz)][::-1]   # longest first
        free = [0.0] * R
        cur = [0] * R          # documents of the batch each device is on (counted when it finishes)
        done_docs, k, q, scored = 0, 0, 0, []
        while True:
            r = int(np.argmin(free))
            if k < phases:
                done_docs += cur[r]
            cur[r] = 0
            if k < phases and done_docs >= bounds[k]:
                start = max(free)           # the barrier: every device finishes its batch first
                starts.append(start)
                toks = float(np.concatenate(scored)[:bounds[k]].sum()) if scored else 0.0
                dur = phase_s(toks)
                phase_total += dur
                done_docs += sum(cur)
                cur = [0] * R
                free = [start + dur] * R
                k += 1
                continue
            if q >= len(batches):
                break
            b = batches[q]
            q += 1
            t, n = batch_s(b)
            chunk_steps += n
            free[r] += t
            if k < phases:
                cur[r] = len(b)
                scored.append(b[::-1])
        total = max(free)
    else:
        if phases and prof.phases_ranks == "one":
            R = 1                            # global phases on one process only
        rng = np.random.default_rng(0)      # stream order: lengths in no particular order
        stream = rng.permutation(lens)
        size = e.lora_phase_docs if phases else stream.size
        total = 0.0
        for g, lo in enumerate(range(0, stream.size, size)):
            group = np.sort(stream[lo:lo + size])
            per = [0.0] * R
            for i, start in enumerate(range(0, group.size, bsz)):
                t, n = batch_s(group[start:start + bsz])
                per[i % R] += t
                chunk_steps += n
            total += max(per)
            if g < min(phases, math.ceil(stream.size / size) - 1):
                starts.append(total)
                dur = phase_s(float(stream[:lo + size].sum()))
                phase_total += dur
                total += dur
    ngram = K.NGRAM_US_PER_TOKEN * 1e-6 * float(lens.sum()) if tech["ngram_tilt"] else 0.0
    return {"seconds": total + ngram, "score_seconds": total - phase_total, "phase_seconds": phase_total,
            "ngram_seconds": ngram, "chunk_steps": chunk_steps, "phase_starts": [round(x, 1) for x in starts]}


def local_val_tokens(cfg: Config) -> int | None:
    """Validation tokens of the config's dataset when it is on this machine (shard headers), else None."""
    from pathlib import Path

    from shared.data.shards import find_shards, shard_count

    try:
        return sum(shard_count(f) for f in find_shards(Path(cfg.data.dir), "val")) or None
    except Exception:  # noqa: BLE001 - absent or unreadable data: the published split's size is used
        return None


def evaluation(cfg: Config, hw: Hardware, prof: K.Profile, cal: dict[str, float], tech: dict[str, Any]) -> dict:
    """Seconds of each eval mode on the whole validation split (or eval.max_tokens)."""
    m, e = cfg.model, cfg.eval
    full = local_val_tokens(cfg) or val_tokens_for(m.vocab_size)
    n_tok = min(e.max_tokens, full) if e.max_tokens else full
    docs = max(1, round(VAL_DOCS * n_tok / full))
    lens = doc_lengths(n_tok, docs)
    seq = cfg.train.seq_len
    ctx_len = e.context or seq

    def run(tokens: float, ctx: float, kind: str = "fwd") -> float:
        w = pass_work(m, prof, tokens / hw.devices, ctx, kind)
        return sum(seconds_of(w, hw, cal).values())

    # flat: disjoint seq_len blocks in eval.batch_tokens batches
    batches = max(1, math.ceil(n_tok / e.batch_tokens))
    flat = run(n_tok, context(seq, m.vocab_size, prof.doc_mask)) + batches * (
        pass_work(m, prof, 1, 1, "fwd").kernels * hw.launch_us * 1e-6)
    windows = max(1, math.ceil(max(n_tok - ctx_len, 0) / e.stride) + 1)
    sliding = run(windows * ctx_len, context(ctx_len, m.vocab_size, prof.doc_mask))
    detail: dict[str, Any] = {"val_tokens": n_tok, "val_docs": docs, "sliding_windows": windows}
    if e.ttt == "lora":
        lo = _ttt_lora_seconds(cfg, hw, prof, cal, tech, lens)
        ttt = lo["seconds"]
        detail["ttt_lora"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in lo.items()}
    else:
        chunks = max(1, math.ceil(n_tok / e.ttt_chunk_tokens))
        score = sliding
        train = run(n_tok * e.ttt_epochs * (chunks - 1) / chunks, context(ctx_len, m.vocab_size, prof.doc_mask),
                    "train")
        ttt = score + train + chunks * e.ttt_epochs * cal["sgd_step_ms"] / 1000.0
        detail["ttt_sgd"] = {"chunks": chunks, "score_seconds": round(score, 2), "train_seconds": round(train, 2)}
    secs = {"flat": round(flat, 2), "sliding": round(sliding, 2), "ttt": round(ttt, 2)}
    return {"seconds": secs, "selected": e.mode, "detail": detail}


# ------------------------------------------------------------------------------------------- pack

def pack_and_calib(cfg: Config, hw: Hardware, prof: K.Profile, cal: dict[str, float], artifact_bytes: int) -> tuple:
    """(pack seconds, calibration seconds): GPTQ Hessians as forwards of quant.calib_tokens, the GPTQ
    solve (the record on the GPU; pgolf in numpy on the host), and the compressor's throughput."""
    m, q = cfg.model, cfg.quant
    calib = 0.0
    if q.gptq:
        w = pass_work(m, prof, q.calib_tokens / hw.devices, context(cfg.train.seq_len, m.vocab_size, prof.doc_mask),
                      "fwd")
        calib += sum(seconds_of(w, hw, cal).values()) * 2.0     # plus the X^T X products, as much again
        from shared.plan.counts import table_rows

        gptq_flops = sum(2.0 * shape[0] * shape[1] ** 2 + shape[1] ** 3
                         for _, shape, group, qclass, _ in table_rows(m) if group == "matrix" or qclass == "embed")
        rate = hw.tflops * 1e12 * cal["gemm"] if prof.name == "record" and hw.kind == "gpu" else GPTQ_CPU_GFLOPS * 1e9
        if hw.kind == "cpu":
            rate = hw.tflops * 1e12 * cal["gemm"]
        calib += gptq_flops / rate
    key = "record" if prof.name == "record" and q.compressor in ("group", "group_ans") else q.compressor
    pack_s = artifact_bytes * PACK_S_PER_BYTE[key]
    return pack_s + calib, calib


# ------------------------------------------------------------------------------------------- the plan

def make_plan(cfg: Config, hw: Hardware, profile: str = "pgolf", techniques: tuple[str, ...] = (),
              checkpoint: str | None = None, code_bytes: int | None = None) -> Plan:
    m, t = cfg.model, cfg.train
    tech = parse_techniques(techniques, profile, cfg)
    prof = profile_for(profile, cfg, hw, tech)
    cal = calibration(hw)
    warnings: list[str] = []
    notes: list[str] = []
    # Up-front sanity: the size of the model before anything that scales with it.
    approx = m.num_layers * block_matmul_weights(m) + head_weights(m)
    if approx > SANE_PARAMS:
        warnings.append(f"size: about {approx:,.0f} parameters ({m.num_layers:,} layers of {block_matmul_weights(m):,}): "
                        f"far beyond what fits {CAP_BYTES:,} bytes or a 10-minute run; check model.* "
                        "(e.g. model.num_layers)")
    if approx > SANE_PARAMS:   # nothing below is worth computing (or fast) at this size
        return _absurd(cfg, hw, profile, approx, warnings)
    params = param_counts(m)
    if code_bytes is None:
        from shared.record.script import code_bytes as count_code

        code_bytes = count_code("torch", cfg)
    coder = dict(CODER)
    if prof.name == "record":   # the record's own pipeline stands where pgolf's per-group ones are
        coder["group"] = coder["group_ans"] = coder["record"]
    art = artifact_estimate(cfg, coder, PERCENTILE_INT8_K)
    art["source"] = "estimate: per-tensor scheme entropy x measured coder overhead (docs/PLAN.md)"
    if checkpoint:
        art["bytes"], art["source"] = real_artifact_bytes(checkpoint, cfg)
    f_plain = flops_per_token(m, t.seq_len, False, prof.doc_mask)
    f_loop = flops_per_token(m, t.seq_len, True, prof.doc_mask)
    time = train_timeline(cfg, hw, prof, cal, tech)
    sb = time["steps_before_loop"]
    per_step_plain = f_plain["total"] * t.batch_tokens
    per_step_loop = f_loop["total"] * t.batch_tokens
    mean = ((sb * per_step_plain + (time["steps"] - sb) * per_step_loop) / time["steps"]
            if time["steps"] and m.looping else per_step_plain)
    flops = {"per_step": mean, "per_step_before_loop": per_step_plain,
             "per_step_after_loop": per_step_loop if m.looping else None,
             "per_token_before_loop": f_plain, "per_token_after_loop": f_loop if m.looping else None}
    mem = memory(cfg, hw, prof, cal)
    ev = evaluation(cfg, hw, prof, cal, tech)
    pack_s, calib_s = pack_and_calib(cfg, hw, prof, cal, art["bytes"])
    plan = Plan(hw, profile, {k: v for k, v in tech.items() if v not in ([], False) or k in ("doc_mask", "fused_ce")},
                params, int(code_bytes), art, t.batch_tokens, flops, time, mem, ev, round(pack_s, 1),
                round(calib_s, 1), warnings, notes)
    add_warnings(plan, cfg)
    if not hw.calibrated:
        notes.append(f"{hw.name}: uncalibrated ({K.CALIBRATION_SOURCES['mac' if hw.kind == 'mac' else 'gpu']}); "
                     "treat its times as a rough guide")
    return plan


def _absurd(cfg: Config, hw: Hardware, profile: str, approx: float, warnings: list[str]) -> Plan:
    """The plan of a model far too large to plan: its size and the warning, every prediction null."""
    none_t = {"steps": None, "train_seconds": None, "ms_per_step": None, "ms_per_step_before_loop": None,
              "ms_per_step_after_loop": None, "steps_before_loop": None, "terms": {}}
    return Plan(hw, profile, {}, {"total": int(approx), "by_class": {}, "by_group": {}, "by_tensor": {}}, None,
                {"bytes": None, "by_scheme": {}, "source": "not estimated"}, cfg.train.batch_tokens,
                {"per_step": 6.0 * approx * cfg.train.batch_tokens, "per_step_before_loop": None,
                 "per_step_after_loop": None, "per_token_before_loop": None, "per_token_after_loop": None},
                none_t, {"peak_gib": None, "components": {}},
                {"seconds": {"flat": None, "sliding": None, "ttt": None}, "selected": cfg.eval.mode, "detail": {}},
                None, None, warnings, ["the model is too large to plan: only its size is given (params approximate: "
                                       "the block matrices and the head)"])


def real_artifact_bytes(path: str, cfg: Config) -> tuple[int, str]:
    """An artifact's size, or the size of a checkpoint packed with the config's [quant] (no calibration:
    GPTQ and frequency steps fall back to plain per-row steps)."""
    from pathlib import Path

    p = Path(path)
    if p.suffix == ".pgz" and p.is_file():
        return p.stat().st_size, f"measured: {p} ({p.stat().st_size:,} bytes)"
    from shared.artifact.format import pack
    from shared.core.spec import check_params
    from shared.run.rundir import load_checkpoint

    params, _, _ = load_checkpoint(p)
    check_params(params, cfg.model, str(p))
    q = replace(cfg.quant, gptq=False, embed_steps="row")
    blob = pack(params, replace(cfg, quant=q))
    return len(blob), f"packed from {p} with [quant] (round to nearest, no calibration)"


def add_warnings(plan: Plan, cfg: Config) -> None:
    w, hw = plan.warnings, plan.hardware
    total = plan.artifact["bytes"] + plan.code_bytes
    if total > CAP_BYTES:
        w.append(f"size: {total:,} bytes (artifact {plan.artifact['bytes']:,} + code {plan.code_bytes:,}) is over "
                 f"the {CAP_BYTES:,}-byte cap by {total - CAP_BYTES:,}: lower quant.* widths or "
                 "`pgolf pack --budget 16000000`")
    peak = plan.memory["peak_gib"]
    if hw.kind == "mac" and peak > hw.mem_gib:
        w.append(f"memory: {peak:.1f} GiB peak is over the {hw.mem_gib:g} GiB of unified memory the GPU may use on "
                 f"{hw.chip}: set train.max_microbatch_tokens (e.g. {fit_microbatch(plan, cfg):,})")
    elif peak > hw.mem_gib:
        where = "this machine's RAM" if hw.kind == "cpu" else f"one {hw.chip}"
        w.append(f"memory: {peak:.1f} GiB peak per device is over the {hw.mem_gib:.1f} GiB of {where}: set "
                 f"train.max_microbatch_tokens (e.g. {fit_microbatch(plan, cfg):,}) or a smaller model")
    sel = plan.eval["seconds"].get(plan.eval["selected"], 0.0)
    if sel > EVAL_CAP_S:
        w.append(f"eval: {plan.eval['selected']} evaluation takes ~{sel:.0f} s, over the challenge's {EVAL_CAP_S:.0f} s "
                 "evaluation budget")
    if K.PROFILES[plan.profile].phases_ranks == "one" and cfg.eval.mode == "ttt" and cfg.eval.ttt == "lora" \
            and cfg.eval.lora_phases and hw.devices > 1:
        w.append(f"eval: pgolf runs eval.lora_phases on one process: a {hw.devices}-device run refuses them before "
                 "training; the eval time given is one device's (`pgolf eval` afterwards)")
    t = cfg.train
    if cfg.quant.gptq and t.max_seconds > 0 and plan.calib_seconds > t.calib_reserve_s:
        w.append(f"gptq: calibration and GPTQ take ~{plan.calib_seconds:.0f} s but train.calib_reserve_s="
                 f"{t.calib_reserve_s:g}: training time would overrun train.max_seconds; raise the reserve to "
                 f">= {math.ceil(plan.calib_seconds * 1.2)}")
    if t.max_seconds > 0 and plan.time["steps"] < 1:
        w.append(f"time: one step takes ~{plan.time['ms_per_step'] / 1000:.0f} s: no step fits "
                 f"train.max_seconds={t.max_seconds:g}")


def fit_microbatch(plan: Plan, cfg: Config) -> int:
    """The largest micro-batch (a multiple of train.seq_len) whose activations fit the device."""
    comp = plan.memory["components"]
    fixed = plan.memory["peak_gib"] - comp["activations"] - comp["logits"]
    per_token = (comp["activations"] + comp["logits"]) / max(1.0, cfg.train.batch_tokens / cfg.train.grad_accum)
    room = plan.hardware.mem_gib * 0.9 - fixed
    tokens = int(room / per_token) if per_token > 0 and room > 0 else 0
    return max(cfg.train.seq_len, tokens // cfg.train.seq_len * cfg.train.seq_len)


def summary_line(plan: Plan) -> str:
    """One line: what `pgolf train` prints at start."""
    t = plan.time
    warn = f"; {len(plan.warnings)} warning(s): {plan.warnings[0]}" if plan.warnings else ""
    cal = "" if plan.hardware.calibrated else ", uncalibrated"
    head = f"plan ({plan.hardware.name}, {plan.profile} profile{cal}):"
    if t["ms_per_step"] is None:
        return f"{head} ~{plan.params['total']:,} parameters, not planned{warn}"
    loop = (f" ({t['ms_per_step_before_loop']:.0f}/{t['ms_per_step_after_loop']:.0f} before/after recurrence)"
            if t["ms_per_step_after_loop"] is not None else "")
    ev = plan.eval["seconds"].get(plan.eval["selected"], 0.0)
    return (f"{head} ~{t['ms_per_step']:.0f} ms/step{loop}, ~{t['steps']:,} steps in {t['train_seconds']:.0f} s, "
            f"peak {plan.memory['peak_gib']:.1f} GiB/device, {plan.eval['selected']} eval ~{ev:.0f} s, "
            f"{plan.artifact['bytes'] + plan.code_bytes:,} bytes{warn}")


def beside_measured(cfg: Config, gpu_name: str | None, speed: dict[str, Any]) -> dict[str, Any]:
    """The plan's figures for what `pgolf gpu-check` measured on one device (the config's whole step on
    one GPU, each layer order), the measured ones beside them, and measured / predicted: the data a
    pod run needs to recalibrate the model (docs/PLAN.md "Recalibrating")."""
    from shared.plan.hardware import cpu_hardware, get_hardware

    low = (gpu_name or "").lower()
    hw = get_hardware("h200") if "h200" in low else get_hardware("1xh100") if "h100" in low else cpu_hardware()
    prof = profile_for("pgolf", cfg, hw, parse_techniques((), "pgolf", cfg))
    cal = calibration(hw)
    out: dict[str, Any] = {"hardware": hw.name, "profile": "pgolf", "orders": {}}
    for order, r in speed.get("orders", {}).items():
        pred = sum(step_terms(cfg, hw, prof, cal, cfg.train.seq_len, order == "looped").values())
        got = r.get("ms_per_step_median")
        out["orders"][order] = {"ms_per_step_predicted": round(pred, 3), "ms_per_step_measured": got,
                                "measured_over_predicted": None if not got else round(got / pred, 4)}
    peak = memory(cfg, hw, prof, cal)["peak_gib"]
    got = speed.get("peak_memory_bytes")
    out["peak_memory_gb_predicted"] = peak
    out["peak_memory_gb_measured"] = None if got is None else round(got / GIB, 3)
    return out


def gap_to_record(cfg: Config, hw: Hardware, mine: Plan) -> list[dict[str, Any]]:
    """How far pgolf's implementation is from the records' on this config, term by term, and why: the
    same config planned with the record profile, each differing term beside pgolf's."""
    rec = make_plan(cfg, hw, "record", code_bytes=mine.code_bytes)
    pg, rp = replace(K.PROFILES["pgolf"], ttt_forwards=cfg.eval.lora_forwards), K.PROFILES["record"]
    ctx_m = mine.flops["per_token_before_loop"]["context"]
    ctx_r = rec.flops["per_token_before_loop"]["context"]
    why = {
        "attention": f"no document mask: each query attends over the whole packed row ({ctx_m:.0f} vs {ctx_r:.0f} "
                     "keys on average)",
        "memory": f"fp32 logits and an unfused cross-entropy ({pg.logit_bytes:g} vs {rp.logit_bytes:g} bytes moved "
                  "per logit)",
        "optimizer": f"Muon one matrix at a time (~{pg.kernels_per_matrix:g} kernels each) against the records' "
                     "batched banks",
        "launch": "more kernels per step (the unfused loss, the per-matrix optimizer)",
    }
    rows = []
    for term, ms in mine.time["terms"].items():
        other = rec.time["terms"].get(term, 0.0)
        if abs(ms - other) > 0.05:
            rows.append({"term": f"{term} ms/step", "pgolf": round(ms, 2), "record": round(other, 2),
                         "why": why.get(term, "")})
    rows.append({"term": "peak memory GiB", "pgolf": mine.memory["peak_gib"], "record": rec.memory["peak_gib"],
                 "why": f"logits held as fp32 with their gradient ({pg.logit_saved_bytes:g} vs "
                        f"{rp.logit_saved_bytes:g} bytes per logit)"})
    sel = cfg.eval.mode
    rows.append({"term": f"{sel} eval s", "pgolf": mine.eval["seconds"][sel], "record": rec.eval["seconds"][sel],
                 "why": (f"{pg.ttt_forwards} vs {rp.ttt_forwards} forward(s) per TTT chunk; {pg.ttt_host_ms:g} ms of "
                         "host work per chunk (ledger, numpy batches; assumed, not measured)"
                         if sel == "ttt" else "attention without the document mask")})
    rows.append({"term": "artifact bytes", "pgolf": mine.artifact["bytes"], "record": rec.artifact["bytes"],
                 "why": ("ZPAQ on the groups, measured on untrained weights (the records' fit is on trained ones)"
                         if cfg.quant.compressor == "group_zpaq" else
                         "no lrzip/ZPAQ stage: pgolf's rANS on the groups (order 0 and row classes)"
                         if cfg.quant.compressor == "group_ans" else
                         "no lrzip/ZPAQ stage: per-group brotli only (~1.8% larger)")})
    return rows
