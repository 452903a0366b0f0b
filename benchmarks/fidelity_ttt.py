"""Fidelity of pgolf's per-document LoRA TTT against a record's own code (#1855 `eval_val_ttt_phased`).

    python -m benchmarks.fidelity_ttt --record /path/to/records/1855/train_gpt.py [--json]

Both evaluate the same documents with the same weights on the CPU in float32: pgolf through
`shared.eval.driver.run_eval` (torch backend, `configs/record.toml`'s evaluation at a small shape),
the record through its own `eval_val_ttt_phased` and `GPT.forward_ttt` (imported with
`benchmarks.record_shim`: SDPA for FlashAttention). The model has the record's structure at 6 layers x
128 (layers 2-3 looped twice, so 10 slots; parallel lanes from layer 4; XSA, gates, SmearGate), the
documents are cut at BOS, several longer than the context, in batches so that the warm A carries over
from batch to batch and a short batch draws its own A. The record's A draws (torch's RNG) are handed to
pgolf's `lora_init`, so both start from the same adapters; one byte per token on both sides, so BPB
differences are nats differences. `compare()` returns rows (what, pgolf, record, abs_diff, ok);
benchmarks/fidelity.py prints them beside the model checks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import torch

from shared.core.config import Config, load_config
from shared.core.spec import BOS_ID, init_params
from shared.eval import driver

TOL = 1e-5
SHAPE = ["model.num_layers=6", "model.xsa_last_n=6", "model.model_dim=128", "model.num_heads=2",
         "model.num_kv_heads=1", "model.vocab_size=512", "model.loop_start=2", "model.loop_end=3",
         "model.parallel_from=4", "model.doc_max_len=64"]
# A context shorter than the longest documents, 3 documents per batch (7 documents: 2 full batches and a
# short one), adapters large enough to move the scores (rank 8, alpha 16, LR 3e-3).
EVAL = ["eval.context=64", "eval.lora_chunk=16", "eval.lora_docs=3", "eval.lora_rank=8", "eval.lora_alpha=16.0",
        "eval.lora_lr=0.003", "eval.max_tokens=0"]
# Two global SGD phases (#1855's order): after 2 and 4 scored documents, on 64-token rows in 64-token chunks,
# at an LR that moves the base model.
PHASES = ["eval.lora_phases=2", "eval.lora_prefix_docs=4", "eval.lora_phase_chunk_tokens=64",
          "eval.lora_phase_lr=0.05"]
DOC_LENGTHS = [20, 45, 150, 70, 33, 200, 90]   # tokens per document, its BOS included
SEED = 1855


class OneBytePerToken:
    """Byte tables for the comparison: every target is one byte, in pgolf and in the record."""

    def target_bytes(self, tokens: np.ndarray, lo: int, hi: int) -> int:
        return hi - lo


def make_config(phases: bool = False) -> Config:
    return load_config("configs/record.toml", SHAPE + EVAL + (PHASES if phases else ["eval.lora_phases=0"]))


def make_params(cfg: Config) -> dict[str, np.ndarray]:
    """The model's initial weights, moved far from their init so that every path carries signal."""
    rng = np.random.default_rng(SEED)
    return {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in init_params(cfg.model, seed=SEED).items()}


def make_tokens(vocab: int) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    docs = [np.concatenate([[BOS_ID], rng.integers(2, vocab, n - 1)]) for n in DOC_LENGTHS]
    return np.concatenate(docs).astype(np.int64)


def record_state(params: dict[str, np.ndarray], cfg: Config) -> dict[str, torch.Tensor]:
    """pgolf's canonical weights in the record's banked layout (qo/kv/mlp banks, lane lambdas)."""
    n = cfg.model.num_layers
    t = {k: torch.from_numpy(v.copy()) for k, v in params.items()}
    b = [f"blocks.{i}." for i in range(n)]
    state = {
        "tok_emb.weight": t["tok_emb.weight"],
        "qo_bank": torch.stack([t[p + "attn.c_q.weight"] for p in b] + [t[p + "attn.proj.weight"] for p in b]),
        "kv_bank": torch.stack([t[p + "attn.c_k.weight"] for p in b] + [t[p + "attn.c_v.weight"] for p in b]),
        "mlp_up_bank": torch.stack([t[p + "mlp.fc.weight"] for p in b]),
        "mlp_down_bank": torch.stack([t[p + "mlp.proj.weight"] for p in b]),
        "skip_weights": t["skip_weights"], "skip_gates": t["skip_gates"],
        "parallel_post_lambdas": t["lane_route"], "parallel_resid_lambdas": t["lane_scale"],
        "smear_gate.weight": t["smear.weight"], "smear_lambda": t["smear.lam"],
    }
    for i, p in enumerate(b):
        state.update({f"blocks.{i}.attn.q_gain": t[p + "attn.q_gain"], f"blocks.{i}.attn.attn_gate_w": t[p + "attn.gate"],
                      f"blocks.{i}.attn_scale": t[p + "attn_scale"], f"blocks.{i}.mlp_scale": t[p + "mlp_scale"],
                      f"blocks.{i}.resid_mix": t[p + "resid_mix"]})
    return state


def record_hparams_for(rec, cfg: Config, run_id: str):
    from benchmarks.record_shim import record_hparams

    m, e = cfg.model, cfg.eval
    return record_hparams(
        rec, vocab_size=m.vocab_size, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, mlp_mult=m.mlp_mult, rope_dims=m.rope_dims, rope_base=m.rope_base,
        qk_gain_init=m.qk_gain_init, ln_scale=m.ln_scale, xsa_last_n=m.xsa_last_n, skip_gates_enabled=m.skip_gates,
        loop_start=m.loop_start, loop_end=m.loop_end, num_loops=m.num_loops, parallel_start_layer=m.parallel_from,
        smear_gate_enabled=m.smear_gate, sparse_attn_gate_enabled=m.attn_gate,
        sparse_attn_gate_scale=m.attn_gate_scale, gate_window=m.gate_dims, logit_softcap=m.logit_softcap,
        tie_embeddings=m.tie_embeddings, rope_yarn=False, train_seq_len=e.context, rope_train_seq_len=e.context,
        ttt_batch_size=e.lora_docs, ttt_lora_rank=e.lora_rank, ttt_chunk_size=e.lora_chunk,
        ttt_eval_seq_len=e.context, ttt_lora_lr=e.lora_lr, ttt_weight_decay=e.lora_wd, ttt_beta1=0.0,
        ttt_beta2=0.99, ttt_grad_steps=1, ttt_optimizer="adam", ttt_k_lora=True, ttt_mlp_lora=True,
        ttt_o_lora=True, ttt_eval_batches="", eval_seq_len=e.context,
        phased_ttt_prefix_docs=e.lora_prefix_docs if e.lora_phases else 0, phased_ttt_num_phases=max(1, e.lora_phases),
        global_ttt_lr=e.lora_phase_lr, global_ttt_momentum=e.ttt_momentum, global_ttt_epochs=1,
        global_ttt_chunk_tokens=e.lora_phase_chunk_tokens, global_ttt_batch_seqs=e.lora_phase_rows,
        global_ttt_grad_clip=e.ttt_grad_clip, global_ttt_warmup_chunks=0,
        # the phases' rows split at BOS (varlen) when the model has document-isolated attention
        global_ttt_respect_doc_boundaries=m.doc_attention,
        val_doc_fraction=1.0, run_id=run_id, rank=0, world_size=1, is_main_process=True, logfile=None)


def record_model(rec, h, params: dict[str, np.ndarray], cfg: Config):
    model = rec.GPT(h).float()
    missing, unexpected = model.load_state_dict(record_state(params, cfg), strict=False)
    if unexpected or [k for k in missing if not k.endswith(("cos_cached", "sin_cached"))]:
        raise RuntimeError(f"record weights do not map: missing {missing}, unexpected {unexpected}")
    model.looping_active = cfg.model.looping
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def record_draws(rec, h, model, cfg: Config) -> list[dict[str, np.ndarray]]:
    """The A matrices of the record's adapters in the order it builds them (the reusable batch-size set
    first; the short batch, scored first; one set after each phase), from the seed it evaluates under,
    named as pgolf names them (pgolf's `lora_init` draws in the same order)."""
    torch.manual_seed(SEED)
    sizes = [h.ttt_batch_size, len(DOC_LENGTHS) % h.ttt_batch_size] + [h.ttt_batch_size] * cfg.eval.lora_phases
    out = []
    for bsz in sizes:
        lora = rec.BatchedTTTLoRA(bsz, model, h.ttt_lora_rank, k_lora=True, mlp_lora=True, o_lora=True)
        named = {"head": lora.lm_head_lora.A}
        for kind, mods in (("q", lora.q_loras), ("k", lora.k_loras), ("v", lora.v_loras),
                           ("o_in", lora.o_loras), ("mlp", lora.mlp_loras)):
            named.update({f"slot{j}.{kind}": mod.A for j, mod in enumerate(mods)})
        rows = cfg.eval.lora_docs   # pgolf's adapters always have lora_docs rows; a short batch uses the first
        out.append({k: np.pad(a.detach().numpy(), ((0, rows - a.size(0)), (0, 0), (0, 0))) for k, a in named.items()})
    return out


def run_record(rec, h, model, tokens: np.ndarray) -> tuple[float, float, float]:
    """(mean nats, bpb, tokens) of the record's phased TTT (phases off) on `tokens`."""
    vocab = h.vocab_size
    val = SimpleNamespace(val_tokens=torch.from_numpy(tokens), caseops_enabled=False, val_bytes=None,
                          base_bytes_lut=torch.ones(vocab, dtype=torch.int16),
                          has_leading_space_lut=torch.zeros(vocab, dtype=torch.bool),
                          is_boundary_token_lut=torch.zeros(vocab, dtype=torch.bool))
    torch.manual_seed(SEED)
    try:
        loss, bpb = rec.eval_val_ttt_phased(h, model, torch.device("cpu"), val, forward_ttt_train=model.forward_ttt)
    finally:
        for name in ("ttt_counter_", "ttt_prefix_counter_", "ttt_pause_flag_"):
            try:
                os.remove(os.path.join("/tmp", name + h.run_id))
            except FileNotFoundError:
                pass
    return float(loss), float(bpb), float(tokens.size - 1)


def run_pgolf(cfg: Config, params: dict[str, np.ndarray], tokens: np.ndarray, draws: list[dict[str, np.ndarray]],
              ) -> tuple[float, float, float]:
    from cuda_train.session import session_from

    real = driver.lora_init
    driver.lora_init = lambda m, e, draw=0: draws[draw]
    try:
        res = driver.run_eval(session_from(cfg, params), cfg, tokens, OneBytePerToken()).result
    finally:
        driver.lora_init = real
    return res.nats / res.tokens, res.nats / res.tokens / math.log(2.0), float(res.tokens)


# pgolf options that differ from the record, each set back to pgolf's first design one at a time
# (`--sensitivity`): the score must move by more than TOL, or the comparison could not tell them apart.
FLIPS = [(False, "lora_tail", "chunk"), (False, "lora_train_last", True), (False, "lora_warm_a", False),
         (False, "lora_alpha", 8.0), (False, "lora_adam_eps", 1e-8),
         # with the phases: no phase training at all, and chunks of two rows (one trained chunk, not two)
         (True, "lora_phase_lr", 0.0), (True, "lora_phase_chunk_tokens", 128)]


def _setup(record_path: str, phases: bool = False):
    import torch._dynamo  # noqa: F401  (before the shim's stand-in triton: the record's AdamW imports dynamo)

    from benchmarks.record_shim import load_record

    rec = load_record(record_path)
    cfg = make_config(phases)
    params = make_params(cfg)
    tokens = make_tokens(cfg.model.vocab_size)
    h = record_hparams_for(rec, cfg, f"pgolf_fidelity_{os.getpid()}")
    rec.BatchedLinearLoRA._ALPHA = cfg.eval.lora_alpha   # the record reads TTT_LORA_ALPHA when imported
    rec.BatchedLinearLoRA._WARM_START_A = cfg.eval.lora_warm_a
    model = record_model(rec, h, params, cfg)
    draws = record_draws(rec, h, model, cfg)
    return rec, cfg, params, tokens, h, model, draws


def compare(record_path: str) -> list[dict]:
    """pgolf's LoRA TTT score vs the record's own, same weights and documents, without and with global SGD
    phases: rows (what, pgolf, record, abs_diff, ok)."""
    rows = []
    for phases in (False, True):
        rec, cfg, params, tokens, h, model, draws = _setup(record_path, phases)
        state = {k: v.clone() for k, v in model.state_dict().items()}   # the record's phases train its model
        ours, theirs = run_pgolf(cfg, params, tokens, draws), run_record(rec, h, model, tokens)
        model.load_state_dict(state)
        frozen = run_pgolf(replace(cfg, eval=replace(cfg.eval, lora_lr=0.0, lora_phase_lr=0.0)), params, tokens, draws)
        case = "ttt_lora + 2 phases" if phases else "ttt_lora"
        for what, a, b, tol in ((f"{case}: mean nats per token", ours[0], theirs[0], TOL),
                                (f"{case}: bits per byte (1 byte per token)", ours[1], theirs[1], TOL),
                                (f"{case}: tokens scored", ours[2], theirs[2], 0.0)):
            rows.append({"what": what, "pgolf": a, "record": b, "abs_diff": abs(a - b), "ok": abs(a - b) <= tol})
        # test-time training must move the score by far more than the tolerance, or the check proves nothing
        gain = frozen[0] - ours[0]
        rows.append({"what": f"{case}: gain over no training (nats/token; > 100x tolerance)", "pgolf": gain,
                     "record": None, "abs_diff": None, "ok": abs(gain) > 100 * TOL})
    return rows


def sensitivity(record_path: str) -> list[dict]:
    """Rows (what, pgolf, record, abs_diff, ok): the score with one record option set to pgolf's first
    design; ok when the difference from the record is above TOL (the comparison sees the option)."""
    rows = []
    for phases in (False, True):
        rec, cfg, params, tokens, h, model, draws = _setup(record_path, phases)
        theirs = run_record(rec, h, model, tokens)[0]
        for _, key, value in (f for f in FLIPS if f[0] == phases):
            ours = run_pgolf(replace(cfg, eval=replace(cfg.eval, **{key: value})), params, tokens, draws)[0]
            rows.append({"what": f"eval.{key} = {value!r}" + (" (with phases)" if phases else ""), "pgolf": ours,
                         "record": theirs, "abs_diff": abs(ours - theirs), "ok": abs(ours - theirs) > TOL})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", required=True, help="the record's train_gpt.py (e.g. records/1855/train_gpt.py)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sensitivity", action="store_true",
                    help="instead: the score with each record option set back to pgolf's first design")
    args = ap.parse_args()
    rows = (sensitivity if args.sensitivity else compare)(args.record)
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'what':<72} {'pgolf':>14} {'record':>14} {'abs_diff':>10}  ok")
        def fmt(v) -> str:
            return f"{v:14.8f}" if isinstance(v, float) else f"{'-':>14}"

        for r in rows:
            diff = "-" if r["abs_diff"] is None else f"{r['abs_diff']:.2e}"
            print(f"{r['what']:<72} {fmt(r['pgolf'])} {fmt(r['record'])} {diff:>10}  {r['ok']}")
    raise SystemExit(0 if args.sensitivity or all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
