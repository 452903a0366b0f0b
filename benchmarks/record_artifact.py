"""Record-artifact benchmark (issue 14): bytes of each compression pipeline, with and without LQER.

    # a configs/record.toml-shaped checkpoint (35.9M params), made here, no training:
    python -m benchmarks.record_artifact record [--budget 16000000] [--json OUT.json]
    # a trained checkpoint: the BPB cost of each step
    python -m benchmarks.record_artifact trained RUN/checkpoint.safetensors --backend torch [--json OUT.json]

`record`: the weights are `init_params(record model, seed 0)` plus, on every
matrix, Student-t noise (4 degrees of freedom, heavier tails than a Gaussian,
like trained weights) of std 0.02 times a per-row log-normal factor (sigma
0.3: rows of a trained matrix differ in scale); vectors and gates get
N(0, 0.02). It is not trained, so it has no meaningful BPB: the table
reports bytes, pack time and the relative weight error sum|W - W_hat|^2 /
sum|W|^2. Quantisation: configs/record.toml's [quant] (int6 block matrices,
int7 embedding) with the record's per-class sigmas (attention 13.0, MLP
12.0, embedding 14.0), int8 gates, round to nearest (GPTQ needs Hessians from
a forward pass; a 36M model's calibration does not fit this CPU benchmark).
`--budget` runs `fit_budget` (artifact + the fitted config's code <= the budget) with the relative weight error as its loss
(a proxy: sensitivities from the real loss need 330 forward passes of the
36M model).

`trained`: configs quantised as the checkpoint's [quant] (GPTQ Hessians from
`quant.calib_tokens` training tokens), then each step of the record artifact
added; every row evaluates the unpacked weights on the [eval] validation
tokens and reports the gap q_val_bpb - val_bpb.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.artifact import compress as pipelines
from shared.artifact import format as artifact
from shared.artifact.budget import fit_budget
from shared.artifact.quant import dequantize
from shared.core.config import Config, load_config
from shared.core.spec import init_params, param_table
from shared.record.script import code_bytes

PIPELINES = (("zstd-22", {"compressor": "zstd"}), ("brotli-11 + shuffle", {"compressor": "brotli"}),
             ("per-group, sorted rows", {"compressor": "group", "group_sort": True}),
             ("per-group, table order", {"compressor": "group", "group_sort": False}),
             ("per-group rANS, table order", {"compressor": "group_ans", "group_sort": False}))
LQER = {"lqer_tensors": 3, "lqer_rank": 4, "lqer_a_bits": 2, "lqer_b_bits": 4, "lqer_group": 64}


def with_quant(cfg: Config, **quant) -> Config:
    return replace(cfg, quant=replace(cfg.quant, **quant)).validate()


def record_params(cfg: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """The record-shaped checkpoint of the module docstring."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in init_params(cfg.model, seed).items():
        if w.ndim == 2 and w.size > 4096:
            t = rng.standard_t(4, size=w.shape) / np.sqrt(2.0)      # t(4) has variance 2
            row = np.exp(rng.normal(0.0, 0.3, size=(w.shape[0], 1)))
            out[name] = (w + 0.02 * row * t).astype(np.float32)
        else:
            out[name] = (w + rng.normal(0.0, 0.02, size=w.shape)).astype(np.float32)
    return out


def counted(cfg: Config) -> int:
    """The counted code of `cfg`'s train_gpt.py (both backends count the same script)."""
    return code_bytes("torch", cfg)


def widths(params: dict[str, np.ndarray], cfg: Config) -> dict[str, int]:
    """How many tensors take each integer scheme under `cfg` (class rules plus quant.tensor_schemes)."""
    sch = [s for s in artifact.choose_schemes(params, cfg).values() if s.startswith("int")]
    return {s: sch.count(s) for s in sorted(set(sch))}


def rel_error(params: dict[str, np.ndarray], unpacked: dict[str, np.ndarray]) -> float:
    num = sum(float(((unpacked[k].astype(np.float64) - params[k]) ** 2).sum()) for k in params)
    den = sum(float((params[k].astype(np.float64) ** 2).sum()) for k in params)
    return num / den


def pipeline_rows(params, cfg, plain, evaluate=None, hessians=None, only: str | None = None) -> list[dict]:
    """One row per (LQER off/on, pipeline): bytes, pack seconds, error (and BPB when `evaluate`).
    `only` = "LQER_INDEX:PIPELINE_INDEX[,PIPELINE_INDEX...]" computes only those rows (to run rows as parallel
    processes). pack_s is wall seconds, pack_cpu_s the process's CPU seconds (all threads), both with the
    LQER/pruning step; unpack_cpu_s decodes the artifact back."""
    rows = []
    for i, (lq_name, lq) in enumerate((("no LQER", {"lqer_tensors": 0}), ("LQER r4 x3", LQER))):
        if only is not None and int(only.split(":")[0]) != i:
            continue
        c0 = with_quant(cfg, **lq)
        t, cpu = time.perf_counter(), time.process_time()
        qts = artifact.finish_quantized(params, plain, c0, hessians)
        t_finish, cpu_finish = time.perf_counter() - t, time.process_time() - cpu
        deq = {k: dequantize(v) for k, v in qts.items()}
        err = rel_error(params, deq)
        bpb = evaluate(deq) if evaluate else None
        for j, (p_name, p) in enumerate(PIPELINES):
            if only is not None and j not in [int(x) for x in only.split(":")[1].split(",")]:
                continue
            c = with_quant(c0, **p)
            pipelines._MEMO.clear()   # no frame remembered from an earlier row
            pipelines._memo_bytes = 0
            t, cpu = time.perf_counter(), time.process_time()
            blob = artifact.pack_quantized(qts, c)
            dt, dcpu = time.perf_counter() - t + t_finish, time.process_time() - cpu + cpu_finish
            cpu = time.process_time()
            artifact.unpack(blob)
            rows.append({"lqer": lq_name, "pipeline": p_name, "bytes": len(blob), "pack_s": round(dt, 1),
                         "pack_cpu_s": round(dcpu, 1), "unpack_cpu_s": round(time.process_time() - cpu, 1),
                         "rel_err": err, **({"q_val_bpb": bpb} if bpb is not None else {})})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_record(args) -> dict:
    cfg = load_config("configs/record.toml")
    cfg = with_quant(cfg, gptq=False, attn_clip_k=13.0, mlp_clip_k=12.0, embed_clip_k=14.0, gate="int8")
    if args.cache and args.cache.is_file():
        params = dict(np.load(args.cache))
    else:
        params = record_params(cfg)
        if args.cache:
            np.savez(args.cache, **params)
    n = sum(v.size for v in params.values())
    print(f"record-shaped checkpoint: {n:,} params", flush=True)
    t = time.perf_counter()
    plain = artifact.quantize_plain(params, cfg)
    print(f"quantised (round to nearest) in {time.perf_counter() - t:.1f}s", flush=True)
    table = param_table(cfg.model)
    schemes = {}
    for k, v in plain.items():
        schemes.setdefault(f"{table[k].qclass}:{v.scheme}", 0)
        schemes[f"{table[k].qclass}:{v.scheme}"] += int(np.prod(v.shape))
    out = {"params": n, "schemes": schemes,
           "rows": [] if args.no_rows else pipeline_rows(params, cfg, plain, only=args.row)}
    if args.budget:
        c = with_quant(cfg, compressor=args.budget_compressor, **LQER)
        t = time.perf_counter()
        c2 = fit_budget(params, c, args.budget, lambda p: rel_error(params, p), log=print, code_size=counted)
        blob = artifact.pack(params, c2)
        code = counted(c2)
        _, deq = artifact.unpack(blob)
        out["budget"] = {"budget": args.budget, "code_bytes": code, "bytes": len(blob), "total": len(blob) + code,
                         "seconds": round(time.perf_counter() - t, 1), "rel_err": rel_error(params, deq),
                         "lqer_rank": c2.quant.lqer_rank, "prune_values": c2.quant.prune_values,
                         "widths": widths(params, c2)}
        print(json.dumps(out["budget"]), flush=True)
    return out


def run_trained(args) -> dict:
    from shared.artifact.calibration import calibration_batch, calibration_counts
    from shared.data.dataset import open_dataset
    from shared.run.backends import get_backend
    from shared.run.rundir import load_checkpoint

    params, cfg, _ = load_checkpoint(args.checkpoint)
    if args.eval_tokens:
        cfg = replace(cfg, eval=replace(cfg.eval, max_tokens=args.eval_tokens))
    be = get_backend(args.backend)
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)

    def evaluate(p):
        return be.evaluate(p, cfg, ds.val_tokens, ds.tables).val_bpb

    base = evaluate(params)
    x, y = calibration_batch(ds, cfg)
    counts = calibration_counts(x, y, cfg.model.vocab_size)
    hess = be.collect_hessians(params, cfg, x, show_progress=False) if cfg.quant.gptq else None
    plain = artifact.quantize_plain(params, cfg, hess, token_counts=counts)
    rows = [] if args.no_rows else pipeline_rows(params, cfg, plain, evaluate, hess)
    for r in rows:
        r["gap"] = r["q_val_bpb"] - base
    out = {"val_bpb": base, "params": int(sum(v.size for v in params.values())), "rows": rows}
    code = counted(cfg)
    if args.budget_frac:   # a budget that forces trading: a fraction of the config's own zstd artifact
        args.budget = code + int(args.budget_frac * rows[0]["bytes"])
    if args.budget:
        cfg = with_quant(cfg, budget_tokens=args.budget_tokens or cfg.quant.budget_tokens)
        sx, sy = x[: max(1, cfg.quant.budget_tokens // x.shape[1])], y[: max(1, cfg.quant.budget_tokens // x.shape[1])]
        c = with_quant(cfg, compressor=args.budget_compressor, **LQER)
        t = time.perf_counter()
        c2 = fit_budget(params, c, args.budget, lambda p: be.batch_loss(p, cfg, sx, sy), hess, print, counts,
                        code_size=counted)
        blob = artifact.pack(params, c2, hess, token_counts=counts)
        code = counted(c2)
        _, deq = artifact.unpack(blob)
        q = evaluate(deq)
        out["budget"] = {"budget": args.budget, "code_bytes": code, "bytes": len(blob), "total": len(blob) + code,
                         "seconds": round(time.perf_counter() - t, 1), "q_val_bpb": q, "gap": q - base,
                         "lqer_rank": c2.quant.lqer_rank, "prune_values": c2.quant.prune_values,
                         "widths": widths(params, c2)}
        print(json.dumps(out["budget"]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("record")
    r.add_argument("--cache", type=Path, default=None, help="save/load the generated weights here (.npz)")
    r.add_argument("--no-rows", action="store_true", help="only the --budget result")
    r.add_argument("--row", default=None, help="only these rows: LQER_INDEX:PIPELINE_INDEX[,...] (0:0 = no LQER, zstd; 0:0,3,4)")
    t = sub.add_parser("trained")
    t.add_argument("checkpoint", type=Path)
    t.add_argument("--backend", default="torch")
    t.add_argument("--eval-tokens", type=int, default=0, help="validation tokens per evaluation (0: the config's)")
    t.add_argument("--no-rows", action="store_true", help="only the --budget result")
    t.add_argument("--budget-frac", type=float, default=0.0, help="budget = code + this x the zstd artifact")
    t.add_argument("--budget-tokens", type=int, default=0, help="quant.budget_tokens for the budget (0: config's)")
    for p in (r, t):
        p.add_argument("--budget", type=int, default=None)
        p.add_argument("--budget-compressor", default="brotli")
        p.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = run_record(args) if args.mode == "record" else run_trained(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
