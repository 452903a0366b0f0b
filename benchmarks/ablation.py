"""What each record-stack technique buys at small scale: one run per technique turned off, at equal steps.

    python -m benchmarks.ablation [--backend torch] [--steps 200] [--seeds 1337,1,2] [--only ema,xsa]
                                  [--config configs/small-record.toml] [--data DIR --tokenizer MODEL]

The base is `configs/small-record.toml` with EVERY technique on (ALL_ON below:
the config itself leaves four off at this size, chosen with this table); each
row turns ONE technique back to
the baseline's value (the `--set` overrides in ABLATIONS below) and trains the
same number of steps (`train.max_seconds=0`, so the machine's load changes the
time a row takes, not its result; `train.compile=false` for every row: on a
CPU, torch.compile costs minutes of compilation and buys nothing at this
size). The base row is repeated over `--seeds` so
the table carries its own run-to-run spread: a difference smaller than that
spread is noise, not a finding. Prints a markdown table for BENCHMARKS.md;
every run folder stays under `--out` (summary.json, train.log).
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

# configs/small-record.toml leaves these at the baseline's value (they cost BPB at 2 x 192, BENCHMARKS.md);
# the ablation's base turns them on, as configs/record.toml has them, so that every row below changes something
ALL_ON = ["model.rope_dims=48", "model.qk_gain_init=5.0", "model.attn_gate=true", "optim.muon_ns=polar_express"]

# technique -> the overrides that turn it off (back to configs/small.toml's value), and the record it comes from
ABLATIONS: dict[str, tuple[list[str], str]] = {
    "leaky_relu2": (["model.activation=relu2"], "#1855"),
    "partial_rope": (["model.rope_dims=0"], "#1855"),
    "qk_gain_5": (["model.qk_gain_init=1.5"], "#1855"),
    "ln_scale": (["model.ln_scale=false"], "#1855"),
    "xsa": (["model.xsa_last_n=0"], "#1855"),
    "skip_gates": (["model.skip_gates=false"], "#1855"),
    "smear_gate": (["model.smear_gate=false"], "#1855"),
    "attn_gate": (["model.attn_gate=false"], "#1855"),
    "ortho_init": (["model.ortho_init=false"], "#1855"),
    "ema": (["train.ema_decay=0.0"], "#1855"),
    "warmdown_frac": (["train.warmdown_frac=0.0", "train.min_lr=0.0", "train.warmdown_iters=60"], "#1855"),
    "weight_decay": (["optim.muon_wd=0.0", "optim.embed_wd=0.0", "optim.scalar_wd=0.0"], "#1855"),
    "muon_eq_r": (["optim.muon_row_norm=false"], "#1855"),
    "polar_express": (["optim.muon_ns=quintic"], "#1855"),
    "grad_clip": (["optim.grad_clip_norm=0.0"], "#1855"),
    "beta2_0.99": (["optim.beta2=0.95"], "#1855"),
    # two at once: the pair that cost most at this size in the first table (BENCHMARKS.md)
    "partial_rope+qk_gain_5": (["model.rope_dims=0", "model.qk_gain_init=1.5"], "#1855"),
}


def train(pgolf: list[str], out: Path, config: str, backend: str, sets: list[str]) -> dict:
    if not (out / "summary.json").is_file():
        cmd = [*pgolf, "train", "--backend", backend, "--config", config, "--out", str(out), "--overwrite"]
        cmd += [a for s in sets for a in ("--set", s)]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch", choices=("torch", "mlx"))
    ap.add_argument("--config", default="configs/small-record.toml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", default="1337,1,2", help="seeds of the base row (the spread)")
    ap.add_argument("--only", default="", help="comma-separated techniques (default: all)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    args = ap.parse_args(argv)
    pgolf = [sys.executable, "-m", "shared.cli"]
    common = [f"train.iterations={args.steps}", "train.max_seconds=0", "train.checkpoint_every=0", "train.compile=false",
              *ALL_ON]
    if args.data:
        common += [f"data.dir={args.data}"]
    if args.tokenizer:
        common += [f"data.tokenizer={args.tokenizer}"]
    names = [n for n in args.only.split(",") if n] or list(ABLATIONS)
    out = args.out / args.backend
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus; date {time.strftime('%Y-%m-%d')}; "
          f"{args.backend}, {args.config}, {args.steps} steps\n")
    base = []
    for seed in args.seeds.split(","):
        s = train(pgolf, out / f"base_seed{seed}", args.config, args.backend, [*common, f"train.seed={seed}"])
        base.append((s["val_bpb"], s["q_val_bpb"]))
    mean_v = statistics.fmean(v for v, _ in base)
    mean_q = statistics.fmean(q for _, q in base)
    spread = statistics.stdev(q for _, q in base) if len(base) > 1 else float("nan")
    print("| technique turned off | record | overrides | val_bpb | q_val_bpb | q_val_bpb - base |\n|---|---|---|---|---|---|")
    print(f"| none (base, mean of seeds {args.seeds}) | | | {mean_v:.4f} | {mean_q:.4f} | (std {spread:.4f}) |",
          flush=True)
    for name in names:
        sets, pr = ABLATIONS[name]
        s = train(pgolf, out / name, args.config, args.backend, [*common, *sets])
        print(f"| {name} | {pr} | `{' '.join(sets)}` | {s['val_bpb']:.4f} | {s['q_val_bpb']:.4f} | "
              f"{s['q_val_bpb'] - mean_q:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
