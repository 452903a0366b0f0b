"""Two record.toml timings for the prepared device check (benchmarks/device_check.sh), each one JSON line.

    python -m benchmarks.device_probe ttt  [--docs 64] [--doc-len 2048] [--tiny] [--json OUT]
    python -m benchmarks.device_probe pack [--tiny] [--json OUT]

ttt:  the config's TTT evaluation (`shared.eval.driver.run_eval`, the production path) of `--docs`
      documents of `--doc-len` tokens each (random tokens, a BOS at each start: one batch of
      eval.lora_docs = docs rows at full context), at the init weights; wall seconds, the number of
      chunks (ceil(doc_len / eval.lora_chunk): one score-and-train step each), seconds per chunk and
      the peak device memory (CUDA) or peak RSS (CPU).
pack: calibration Hessians on the device (`collect_hessians`, quant.calib_tokens random training-like
      tokens) and `artifact.pack` of benchmarks/record_artifact.py's record-shaped weights with them:
      the seconds of each, the artifact's bytes, the pack threads.
--tiny: a CPU dry run of the same code at small sizes (ttt: width 128, 2 documents of 128 tokens; pack:
      4,096 calibration tokens, with device_check.sh's configs/small-record.toml), so the script is
      checked without a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np


def _peak(device) -> dict:
    import torch

    if device.type == "cuda":
        return {"peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def ttt(args) -> dict:
    import torch

    from cuda_train.session import session_from
    from shared.core.config import load_config
    from shared.core.spec import BOS_ID, init_params
    from shared.eval import driver

    sets = [f"eval.max_tokens={args.docs * args.doc_len}", f"eval.lora_docs={args.docs}"]
    if args.tiny:   # every option kept, the width cut (the dry run checks the code, not the numbers)
        sets += ["train.compute_dtype=float32", "model.model_dim=128", "model.num_heads=4", "model.num_kv_heads=2",
                 f"train.seq_len={args.doc_len}"]
    cfg = load_config(args.config, sets)
    rng = np.random.default_rng(0)
    tokens = rng.integers(2, cfg.model.vocab_size, args.docs * args.doc_len + 1)
    tokens[:: args.doc_len] = BOS_ID

    class OneByte:
        def target_bytes(self, t, a, b):
            return b - a

    s = session_from(cfg, init_params(cfg.model, seed=0))
    dev = s.rt.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    res = driver.run_eval(s, cfg, tokens, OneByte())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    chunks = math.ceil(args.doc_len / cfg.eval.lora_chunk)
    return {"probe": "ttt", "device": str(dev), "dtype": str(s.dtype), "docs": args.docs, "doc_len": args.doc_len,
            "lora_chunk": cfg.eval.lora_chunk, "chunks": chunks, "seconds": round(dt, 3),
            "seconds_per_chunk": round(dt / chunks, 4), "tokens_scored": int(res.result.tokens), **_peak(dev)}


def pack(args) -> dict:
    import torch

    from benchmarks.record_artifact import record_params
    from cuda_train.calibrate import collect_hessians
    from shared.artifact import format as artifact
    from shared.artifact.calibration import calibration_counts
    from shared.artifact.compress import pack_threads
    from shared.core.config import load_config

    cfg = load_config(args.config)
    params = record_params(cfg)
    n = 4096 if args.tiny else cfg.quant.calib_tokens
    seq = cfg.train.seq_len if not args.tiny else 512
    rng = np.random.default_rng(0)
    x = rng.integers(2, cfg.model.vocab_size, (max(1, n // seq), seq))
    y = np.roll(x, -1, axis=1)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    hess = collect_hessians(params, cfg, x, show_progress=False)
    t_cal = time.perf_counter() - t0
    counts = calibration_counts(x, y, cfg.model.vocab_size)
    t0 = time.perf_counter()
    blob = artifact.pack(params, cfg, hess, token_counts=counts)
    t_pack = time.perf_counter() - t0
    return {"probe": "pack", "calib_tokens": int(x.size), "calib_seconds": round(t_cal, 2),
            "pack_seconds": round(t_pack, 2), "bytes": len(blob), "pack_threads": pack_threads(),
            "hessians_on": "cuda" if torch.cuda.is_available() else "cpu"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("ttt", "pack"))
    ap.add_argument("--config", default="configs/record.toml")
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--doc-len", type=int, default=2048)
    ap.add_argument("--tiny", action="store_true", help="a CPU dry run at small sizes")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.tiny and args.what == "ttt":
        args.docs, args.doc_len = min(args.docs, 2), min(args.doc_len, 128)
    out = ttt(args) if args.what == "ttt" else pack(args)
    print(json.dumps(out), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
