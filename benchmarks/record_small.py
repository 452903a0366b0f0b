"""configs/small.toml against configs/small-record.toml at equal wallclock, robust to a busy machine.

    python -m benchmarks.record_small --backend torch --small-steps 456 [--seeds 1337,1] [--data DIR --tokenizer MODEL]

A wallclock-capped run on a shared 2-core machine measures the other jobs as
much as the config. So the comparison is made in two parts:

1. speed: short fixed-step runs of both configs, interleaved (A B A B ...), give
   the tokens/s ratio of small-record to small under the same load;
2. quality: `--small-steps` is what small.toml reaches in the wallclock budget
   on an idle machine (BENCHMARKS.md: torch ~456 steps and MLX ~231 in 120 s);
   small-record gets `round(small_steps * ratio)` steps, its equal-wallclock
   share; both train exactly that many steps (`train.max_seconds=0`) and are
   packed and evaluated as usual.

Prints a markdown table (steps, tok/s under load, val_bpb, q_val_bpb) for
BENCHMARKS.md; run folders stay under `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"small": "configs/small.toml", "small-record": "configs/small-record.toml"}


def train(out: Path, config: str, backend: str, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "shared.cli", "train", "--backend", backend, "--config", config, "--out", str(out),
           "--overwrite"] + [a for s in sets for a in ("--set", s)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch", choices=("torch", "mlx"))
    ap.add_argument("--small-steps", type=int, required=True, help="small.toml's steps in the idle wallclock budget")
    ap.add_argument("--speed-steps", type=int, default=40)
    ap.add_argument("--speed-rounds", type=int, default=2)
    ap.add_argument("--seeds", default="1337", help="comma-separated seeds of the quality runs (the margin's spread)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "record_small")
    args = ap.parse_args(argv)
    data = ([f"data.dir={args.data}"] if args.data else []) + ([f"data.tokenizer={args.tokenizer}"] if args.tokenizer else [])
    fixed = ["train.max_seconds=0", "train.checkpoint_every=0", *data]
    out = args.out / args.backend

    tps: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for r in range(args.speed_rounds):
        for name, config in CONFIGS.items():
            s = train(out / f"speed_{name}_{r}", config, args.backend,
                      [*fixed, f"train.iterations={args.speed_steps}", "train.val_every=0", "eval.max_tokens=8192",
                       "quant.gptq=false", "quant.embed_steps=row"])
            tps[name].append(s["tokens_per_second"])
    speed = {k: statistics.median(v) for k, v in tps.items()}
    ratio = speed["small-record"] / speed["small"]
    steps = {"small": args.small_steps, "small-record": round(args.small_steps * ratio)}

    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus; date {time.strftime('%Y-%m-%d')}; {args.backend}; "
          f"data {args.data or 'pgolf data sample'}; tok/s ratio small-record/small = {ratio:.3f} "
          f"(median of {args.speed_rounds} interleaved {args.speed_steps}-step runs each)\n")
    print("| config | seed | steps (equal wallclock) | tok/s (same load) | val_bpb | q_val_bpb | artifact bytes |\n"
          "|---|---|---|---|---|---|---|")
    margins = []
    for seed in args.seeds.split(","):
        q = {}
        for name, config in CONFIGS.items():
            s = train(out / f"{name}_seed{seed}", config, args.backend,
                      [*fixed, f"train.iterations={steps[name]}", f"train.seed={seed}"])
            q[name] = s["q_val_bpb"]
            print(f"| {name}.toml | {seed} | {steps[name]} | {speed[name]:,.0f} | {s['val_bpb']:.4f} | "
                  f"{s['q_val_bpb']:.4f} | {s['artifact_bytes']:,} |", flush=True)
        margins.append(q["small"] - q["small-record"])
    print("\nq_val_bpb margin of small-record over small (positive = small-record better), per seed: "
          + ", ".join(f"{m:+.4f}" for m in margins)
          + (f"; mean {statistics.fmean(margins):+.4f}, min {min(margins):+.4f}" if len(margins) > 1 else ""))

if __name__ == "__main__":
    main()
