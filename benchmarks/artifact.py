"""Artifact benchmark: size and quantisation gap of each packing scheme on one checkpoint.

    python -m benchmarks.artifact --checkpoint RUN/checkpoint.safetensors --backend torch \\
        --data DIR --tokenizer MODEL [--json OUT.json]

Without --checkpoint it builds the sample dataset (`pgolf data sample`) and
trains configs/small.toml into runs/bench_small/ first (minutes on a CPU).

Rows (the table in BENCHMARKS.md):
    int8 + zlib      the challenge baseline's export: per-row int8, 99.99984th-percentile
                     clip, step floored at 1/127, fp16 scales, control tensors fp32, other
                     tensors of <= 65,536 values kept fp16, zlib level 9
                     (here: our body layout compressed with zlib instead of zstd)
    int8 + zstd      the same quantisation, our format (zstd-22)
    int6 RTN         int6 for every block matrix, std clip (quant.clip_k), round to nearest;
                     int8 embedding with "frequency" steps (quant.embed_steps, embed_clip_k)
    int6 GPTQ        the same with GPTQ (Hessians from calibration tokens of the train split,
                     for the block matrices and the tied head)
    int6 GPTQ, row-step embedding
                     the same with the embedding's per-row percentile int8 (no frequency steps)
    int5 GPTQ        int5 block matrices
    budget           per-tensor widths chosen by `--budget` at the size of the int6 GPTQ row
Each row reports artifact bytes, bytes per parameter and the gap `q_val_bpb - val_bpb`
measured on the validation tokens of the checkpoint's `[eval]` section.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.artifact import format as artifact
from shared.artifact.budget import budget_schemes, sensitivity_batch
from shared.artifact.calibration import calibration_batch, calibration_counts
from shared.core.config import Config
from shared.core.spec import count_params
from shared.data.dataset import open_dataset
from shared.record.script import code_bytes
from shared.run.backends import get_backend
from shared.run.rundir import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def ensure_checkpoint(backend: str) -> tuple[Path, Path, Path]:
    data = ROOT / "data" / "sample"
    ds_dir, tok = data / "datasets" / "sample_sp1024", data / "tokenizers" / "sample_1024_bpe.model"
    run = ROOT / "runs" / "bench_small"
    pgolf = [sys.executable, "-m", "shared.cli"]
    if not tok.is_file():
        subprocess.run([*pgolf, "data", "sample", "--out", str(data)], check=True, cwd=ROOT)
    if not (run / "checkpoint.safetensors").is_file():
        subprocess.run([*pgolf, "train", "--backend", backend, "--config", "configs/small.toml", "--data", str(ds_dir),
                        "--tokenizer", str(tok), "--out", str(run), "--overwrite"], check=True, cwd=ROOT)
    return run / "checkpoint.safetensors", ds_dir, tok


def with_quant(cfg: Config, **kw) -> Config:
    return replace(cfg, quant=replace(cfg.quant, **kw)).validate()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--backend", default="torch", choices=["mlx", "torch"])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--tokenizer", type=Path)
    ap.add_argument("--clip-k", type=float, default=None, help="quant.clip_k for the int<8 rows [default: config]")
    ap.add_argument("--eval-tokens", type=int, default=None, help="eval.max_tokens [default: the checkpoint's]")
    ap.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = ap.parse_args(argv)
    if args.checkpoint is None:
        args.checkpoint, data, tok = ensure_checkpoint(args.backend)
        args.data, args.tokenizer = args.data or data, args.tokenizer or tok

    params, cfg, step = load_checkpoint(args.checkpoint)
    if args.eval_tokens:
        cfg = replace(cfg, eval=replace(cfg.eval, max_tokens=args.eval_tokens))
    be = get_backend(args.backend)
    ds = open_dataset(args.data or cfg.data.dir, args.tokenizer or cfg.data.tokenizer, cfg.model.vocab_size)
    n_params = count_params(cfg.model)
    code = code_bytes(args.backend)

    def bpb(p) -> float:
        return be.evaluate(p, cfg, ds.val_tokens, ds.tables).val_bpb

    t0 = time.time()
    val_bpb = bpb(params)
    print(f"checkpoint {args.checkpoint} (step {step}, {n_params:,} params): val_bpb {val_bpb:.4f} "
          f"({time.time() - t0:.0f}s); counted code {code:,} bytes ({args.backend})", flush=True)

    # The challenge baseline's export rule: per-row int8, step floored at 1/127, control tensors fp32.
    base = with_quant(cfg, embed="int8", attn="int8", mlp="int8", other="fp32", keep_float_max_numel=65536,
                      min_scale=1 / 127, gptq=False, embed_steps="row", zstd_level=22)
    low = with_quant(cfg, embed="int8", other="fp16", keep_float_max_numel=0, zstd_level=22, min_scale=0.0,
                     embed_steps="frequency", **({"clip_k": args.clip_k} if args.clip_k else {}))
    x, y = calibration_batch(ds, cfg)
    counts = calibration_counts(x, y, cfg.model.vocab_size)
    t = time.time()
    hessians = be.collect_hessians(params, cfg, x)
    print(f"hessians: {len(hessians)} matrices from {x.size:,} training tokens ({time.time() - t:.0f}s)", flush=True)

    rows = []

    def add(name: str, blob_len: int, q_params: dict, seconds: float, note: str = "") -> None:
        q = bpb(q_params)
        rows.append({"scheme": name, "artifact_bytes": blob_len, "bytes_per_param": blob_len / n_params,
                     "total_bytes": blob_len + code, "val_bpb": val_bpb, "q_val_bpb": q, "gap": q - val_bpb,
                     "pack_seconds": seconds, "note": note})
        print(f"{name:14s} {blob_len:>10,} B  {blob_len / n_params:.4f} B/param  q_val_bpb {q:.4f}  "
              f"gap {q - val_bpb:+.4f}  ({seconds:.1f}s)", flush=True)

    # Baseline: identical quantisation, zlib-9 instead of zstd-22.
    t = time.time()
    qts = artifact.quantize_all(params, base)
    body = b"".join(artifact.build_sections(qts, base))
    zlib_len = artifact.HEADER.size + len(zlib.compress(body, 9))
    deq = {k: artifact.dequantize(v) for k, v in qts.items()}
    add("int8 + zlib", zlib_len, deq, time.time() - t, "baseline rule, zlib-9")

    def packed(name: str, c: Config, h=None, schemes=None, note="") -> int:
        t = time.time()
        blob = artifact.pack(params, c, h, schemes, counts)
        seconds = time.time() - t
        add(name, len(blob), artifact.unpack(blob)[1], seconds, note)
        return len(blob)

    packed("int8 + zstd", base, note="baseline rule, zstd-22")
    q = low.quant
    packed("int6 RTN", with_quant(low, attn="int6", mlp="int6", gptq=False),
           note=f"clip_k {q.clip_k}; int8 embedding, frequency steps (embed_clip_k {q.embed_clip_k}, "
                f"floor {q.embed_freq_floor})")
    size6 = packed("int6 GPTQ", with_quant(low, attn="int6", mlp="int6", gptq=True), hessians)
    packed("int6 GPTQ, row-step embedding", with_quant(low, attn="int6", mlp="int6", gptq=True, embed_steps="row"),
           hessians, note="int8 embedding with per-row percentile clip")
    packed("int5 GPTQ", with_quant(low, attn="int5", mlp="int5", gptq=True), hessians)
    bcfg = with_quant(low, attn="int8", mlp="int8", gptq=True)
    sx, sy = sensitivity_batch(x, y, bcfg)
    t = time.time()
    schemes = budget_schemes(params, bcfg, size6, lambda p: be.batch_loss(p, bcfg, sx, sy), hessians,
                             log=lambda s: None, token_counts=counts)
    search = time.time() - t
    per_scheme = {s: sum(1 for v in schemes.values() if v == s) for s in sorted(set(schemes.values()))}
    packed("budget", bcfg, hessians, schemes,
           note=f"budget = int6 GPTQ size; {', '.join(f'{c} {s}' for s, c in per_scheme.items())}; search {search:.0f}s")

    print("\n| scheme | artifact bytes | bytes/param | q_val_bpb | gap (q - val) | note |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['scheme']} | {r['artifact_bytes']:,} | {r['bytes_per_param']:.4f} | {r['q_val_bpb']:.4f} | "
              f"{r['gap']:+.4f} | {r['note']} |")
    result = {"checkpoint": str(args.checkpoint), "step": step, "params": n_params, "code_bytes": code,
              "backend": args.backend, "val_bpb": val_bpb, "eval_tokens": int(cfg.eval.max_tokens), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
