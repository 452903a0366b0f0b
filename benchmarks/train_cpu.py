"""Training throughput and BPB at a fixed wallclock for configs/small.toml on this machine.

    python -m benchmarks.train_cpu [--seconds 120] [--rows mlx,mlx-noblas,torch,torch-bf16]

Each row is one `pgolf train` run (a subprocess, so the BLAS choice is made
before MLX loads) on the sample dataset; it prints a markdown table with the
machine, date and command of every row, ready for BENCHMARKS.md. The
reference-BLAS row only measures tokens/s: it trains for a few steps and
scores a small slice of the validation split, so its BPB is not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "mlx": ("mlx", {}, []),
    "mlx-noblas": ("mlx", {"PGOLF_MLX_BLAS": "off"}, ["eval.max_tokens=8192", "train.val_every=0"]),
    "torch": ("torch", {}, []),
    "torch-bf16": ("torch", {}, ["train.compute_dtype=bfloat16"]),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--rows", default="mlx,mlx-noblas,torch,torch-bf16")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_train")
    args = ap.parse_args(argv)
    pgolf = [sys.executable, "-m", "shared.cli"]
    if not (ROOT / "data/sample/tokenizers/sample_1024_bpe.model").is_file():
        subprocess.run([*pgolf, "data", "sample"], check=True, cwd=ROOT)
    print(f"machine: {platform.platform()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"date {time.strftime('%Y-%m-%d')}\n")
    print("| row | steps | train tokens | tokens/s | val_bpb | q_val_bpb | command |\n|---|---|---|---|---|---|---|")
    for name in args.rows.split(","):
        backend, env, sets = ROWS[name]
        run = args.out / name
        if run.exists():
            subprocess.run(["rm", "-rf", str(run)], check=True)
        cmd = [*pgolf, "train", "--backend", backend, "--config", "configs/small.toml", "--out", str(run),
               "--set", f"train.max_seconds={args.seconds}"] + [a for s in sets for a in ("--set", s)]
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        s = json.loads((run / "summary.json").read_text())
        shown = " ".join(f"{k}={v}" for k, v in env.items()) + " pgolf " + " ".join(cmd[3:])
        print(f"| {name} | {s['steps']} | {s['train_tokens']:,} | {s['tokens_per_second']:,.0f} | {s['val_bpb']:.4f} | "
              f"{s['q_val_bpb']:.4f} | `{shown.strip()}` |", flush=True)


if __name__ == "__main__":
    main()
