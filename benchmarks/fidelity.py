"""Fidelity: pgolf's record model against the record's own code, with identical weights.

    python -m benchmarks.fidelity --record PATH/TO/train_gpt.py [--json]

The record (PR #1855's train_gpt.py, or a later one with the same model code) is imported from the path
given through benchmarks/record_shim.py (SDPA for FlashAttention, including its varlen call; triton
stubbed; eager), never copied. Both models get the same random weights (every tensor away from its init,
so every path matters) at a small shape with the record's structure: 6 layers x 128, layers 2-3 looped
twice, parallel lanes from layer 4, XSA on every layer, partial RoPE, q gain, layer-norm scale, the sparse
attention gate, SmearGate with its BOS mask, gated skips, LeakyReLU^2, and one packed row of several
documents (BOS mid-row, one document longer than the segment cap) attended per document as the record's
`cu_seqlens` say. Compared, in both layer orders: the softcapped logits and the loss (fp32, eval mode), and
every parameter's gradient (training mode). `benchmarks/fidelity_optim.py` and `benchmarks/fidelity_ttt.py`
add the optimizer step and the TTT score when present. docs/REFERENCE.md has the method and the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import replace

import numpy as np
import torch

from benchmarks.record_shim import load_record, record_hparams
from shared.core.config import ModelConfig
from shared.core.spec import BOS_ID
from tests.reference_math import live_params

SHAPE = dict(num_layers=6, model_dim=128, num_heads=4, num_kv_heads=2, vocab_size=512, mlp_mult=4.0,
             activation="leaky_relu2", rope_dims=16, qk_gain_init=5.0, ln_scale=True, xsa_last_n=6,
             skip_gates=True, loop_start=2, loop_end=3, num_loops=2, loop_at=0.35, parallel_from=4,
             smear_gate=True, attn_gate=True, attn_gate_scale=0.5, gate_dims=12, ortho_init=True,
             doc_attention=True, doc_max_len=64)
SEQ = 256          # one packed row (the record trains on one row of all its micro-batch tokens)
LOGIT_TOL, GRAD_TOL = 1e-5, 1e-4


def pgolf_model() -> ModelConfig:
    m = replace(ModelConfig(), **SHAPE)
    m.validate()
    return m


def record_model(rec, m: ModelConfig):
    h = record_hparams(rec, num_layers=m.num_layers, model_dim=m.model_dim, num_heads=m.num_heads,
                       num_kv_heads=m.num_kv_heads, vocab_size=m.vocab_size, mlp_mult=m.mlp_mult,
                       rope_dims=m.rope_dims, qk_gain_init=m.qk_gain_init, ln_scale=m.ln_scale,
                       xsa_last_n=m.xsa_last_n, skip_gates_enabled=m.skip_gates, loop_start=m.loop_start,
                       loop_end=m.loop_end, num_loops=m.num_loops, enable_looping_at=m.loop_at,
                       parallel_start_layer=m.parallel_from, smear_gate_enabled=m.smear_gate,
                       sparse_attn_gate_enabled=m.attn_gate, sparse_attn_gate_scale=m.attn_gate_scale,
                       gate_window=m.gate_dims, train_seq_len=m.doc_max_len, rope_train_seq_len=m.doc_max_len,
                       logit_softcap=m.logit_softcap, rope_base=m.rope_base, fused_ce_enabled=False,
                       rope_yarn=False, attn_out_gate_enabled=False, gated_attn_enabled=False)
    return rec.GPT(h).float()


def to_record(params: dict[str, np.ndarray], m: ModelConfig) -> dict[str, torch.Tensor]:
    """pgolf's canonical per-layer tensors as the record's state dict (its stacked banks)."""
    n, t = m.num_layers, {k: torch.from_numpy(v) for k, v in params.items()}
    blk = lambda i, k: t[f"blocks.{i}.{k}"]  # noqa: E731
    sd = {"tok_emb.weight": t["tok_emb.weight"],
          "qo_bank": torch.stack([blk(i, "attn.c_q.weight") for i in range(n)] + [blk(i, "attn.proj.weight") for i in range(n)]),
          "kv_bank": torch.stack([blk(i, "attn.c_k.weight") for i in range(n)] + [blk(i, "attn.c_v.weight") for i in range(n)]),
          "mlp_up_bank": torch.stack([blk(i, "mlp.fc.weight") for i in range(n)]),
          "mlp_down_bank": torch.stack([blk(i, "mlp.proj.weight") for i in range(n)]),
          "skip_weights": t["skip_weights"], "skip_gates": t["skip_gates"],
          "parallel_post_lambdas": t["lane_route"], "parallel_resid_lambdas": t["lane_scale"],
          "smear_gate.weight": t["smear.weight"], "smear_lambda": t["smear.lam"]}
    for i in range(n):
        for ours, theirs in (("attn.q_gain", "attn.q_gain"), ("attn.gate", "attn.attn_gate_w"),
                             ("attn_scale", "attn_scale"), ("mlp_scale", "mlp_scale"), ("resid_mix", "resid_mix")):
            sd[f"blocks.{i}.{theirs}"] = blk(i, ours)
    return sd


def from_record_grads(model, m: ModelConfig) -> dict[str, np.ndarray]:
    """The record's gradients under pgolf's names (banks split per layer)."""
    g = {k: p.grad.detach().numpy() for k, p in model.named_parameters() if p.grad is not None}
    n, out = m.num_layers, {"tok_emb.weight": g["tok_emb.weight"], "skip_weights": g["skip_weights"],
                            "skip_gates": g["skip_gates"], "lane_route": g["parallel_post_lambdas"],
                            "lane_scale": g["parallel_resid_lambdas"], "smear.weight": g["smear_gate.weight"],
                            "smear.lam": g["smear_lambda"]}
    for i in range(n):
        out.update({f"blocks.{i}.attn.c_q.weight": g["qo_bank"][i], f"blocks.{i}.attn.proj.weight": g["qo_bank"][n + i],
                    f"blocks.{i}.attn.c_k.weight": g["kv_bank"][i], f"blocks.{i}.attn.c_v.weight": g["kv_bank"][n + i],
                    f"blocks.{i}.mlp.fc.weight": g["mlp_up_bank"][i], f"blocks.{i}.mlp.proj.weight": g["mlp_down_bank"][i]})
        for ours, theirs in (("attn.q_gain", "attn.q_gain"), ("attn.gate", "attn.attn_gate_w"),
                             ("attn_scale", "attn_scale"), ("mlp_scale", "mlp_scale"), ("resid_mix", "resid_mix")):
            out[f"blocks.{i}.{ours}"] = g[f"blocks.{i}.{theirs}"]
    return out


def packed_row(m: ModelConfig, seed: int = 1) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One row of documents: BOS at 0, 37, 50 and 190 (the third document, 140 tokens, is longer than the
    segment cap); targets are the next tokens."""
    stream = np.random.default_rng(seed).integers(4, m.vocab_size, size=SEQ + 1)
    bos = [0, 37, 50, 190]
    stream[bos] = BOS_ID
    return stream[None, :-1].astype(np.int64), stream[None, 1:].astype(np.int64), bos


def compare_model(record_path: str) -> list[dict]:
    from cuda_train.model import build_model

    torch.manual_seed(0)
    rec = load_record(record_path)
    m = pgolf_model()
    params = live_params(m)
    x, y, bos = packed_row(m)
    cu, max_len = rec._build_cu_seqlens(bos, SEQ, "cpu", m.doc_max_len, 64)
    rows = []
    for looped in (False, True):
        ours = build_model(m, params)
        theirs = record_model(rec, m)
        theirs.load_state_dict(to_record(params, m), strict=True)
        theirs.looping_active = looped
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        order = "looped" if looped else "plain"
        with torch.no_grad():
            ours.eval(), theirs.eval()
            lo, lr = ours.logits(xt, looped=looped), theirs.forward_logits(xt, cu, max_len)
            d = (lo - lr).abs().max().item()
            rows.append(dict(what=f"logits ({order})", max_abs_diff=d, max_rel_diff=d / lr.abs().max().item(),
                             ok=d / lr.abs().max().item() <= LOGIT_TOL))
        ours.train(), theirs.train()
        loss_o, loss_r = ours(xt, yt, looped=looped), theirs(xt, yt, cu, max_len)
        rows.append(dict(what=f"loss ({order})", max_abs_diff=abs(loss_o.item() - loss_r.item()),
                         max_rel_diff=abs(loss_o.item() / loss_r.item() - 1), ok=abs(loss_o.item() / loss_r.item() - 1) <= LOGIT_TOL))
        loss_o.backward()
        loss_r.backward()
        go = {k: p.grad.numpy() for k, p in ours.named_parameters()}
        gr = from_record_grads(theirs, m)
        rel = {k: float(np.linalg.norm(go[k] - gr[k]) / max(np.linalg.norm(gr[k]), 1e-30)) for k in go}
        worst = max(rel, key=rel.get)
        rows.append(dict(what=f"gradients, {len(rel)} tensors ({order}; worst {worst})",
                         max_abs_diff=max(float(np.abs(go[k] - gr[k]).max()) for k in go), max_rel_diff=rel[worst],
                         ok=rel[worst] <= GRAD_TOL))
    return rows


def compare(record_path: str) -> list[dict]:
    rows = compare_model(record_path)
    for name in ("benchmarks.fidelity_optim", "benchmarks.fidelity_ttt"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        rows += mod.compare(record_path)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", required=True, help="the record's train_gpt.py (read from here, never copied)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = compare(args.record)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'what':<58} {'max abs diff':>13} {'max rel diff':>13}  ok")
        for r in rows:
            a = r.get("max_abs_diff", r.get("abs_diff", float("nan")))
            print(f"{r['what']:<58} {a:>13.3e} {r.get('max_rel_diff', float('nan')):>13.3e}  {'yes' if r['ok'] else 'NO'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
