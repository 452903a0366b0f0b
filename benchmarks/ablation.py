"""What each record-stack technique buys at small scale: one run per technique turned off, at equal steps.

    python -m benchmarks.ablation [--backend torch] [--steps 200] [--seeds 1337,1] [--only ema,xsa]
                                  [--config configs/small-record.toml] [--data DIR --tokenizer MODEL]

The developer's view of `pgolf ablate` (shared/research/ablate.py holds the techniques and the
sweep engine runs them). The base is `configs/small-record.toml` with EVERY technique on (ALL_ON:
the config itself leaves four off at this size, chosen with this table); each row turns ONE named
technique back off (shared/research/ablate.py NAMED) and trains the same number of steps (the
machine's load changes the time a row takes, not its result; `train.compile=false` for every row:
on a CPU, torch.compile costs minutes of compilation and buys nothing at this size). Every row runs
every seed in `--seeds`, so the table carries its own run-to-run spread and a Welch verdict per row.
Prints a markdown table for BENCHMARKS.md; the run folders stay under `--out` (resumable).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from shared.cli.train import train
from shared.research.ablate import ALL_ON, NAMED
from shared.research.runs import render
from shared.research.sweep import Point, budget_sets, run_sweep

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = NAMED  # the name older notes use


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch", choices=("torch", "mlx"))
    ap.add_argument("--config", default="configs/small-record.toml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", default="1337", help="seeds of every row (two or more give a Welch verdict per row)")
    ap.add_argument("--only", default="", help="comma-separated techniques (default: all)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(NAMED)
    unknown = [n for n in names if n not in NAMED]
    if unknown:
        ap.error(f"--only: unknown techniques {unknown}; choose from {list(NAMED)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus; date {time.strftime('%Y-%m-%d')}; "
          f"{args.backend}, {args.config}, {args.steps} steps\n")
    points = [Point("base", [])] + [Point(f"off-{n}", NAMED[n][0]) for n in names]
    summary = run_sweep(args.out / args.backend, kind="ablate", backend=args.backend, config_path=args.config,
                        points=points, seeds=[int(s) for s in args.seeds.split(",")],
                        budget=budget_sets(args.steps, None),
                        sets=["train.checkpoint_every=0", "train.compile=false", *ALL_ON],
                        data=args.data, tokenizer=args.tokenizer, train=train)
    print(render(summary["rows"], summary["budget"]))


if __name__ == "__main__":
    main()
