"""Flat vs sliding vs both TTT flavours on one checkpoint, both backends, the same validation tokens.

    python -m benchmarks.eval_modes runs/eval_small/model.pgz [--max-tokens 32768] [--backends torch,mlx]
        [--set eval.KEY=VALUE ...]   # applied to every row after the row's own keys

Each row is `pgolf eval --json` on the artifact (the packed model a submission evaluates); the
table goes into BENCHMARKS.md "Record-grade evaluation". Rows: flat; sliding stride 32 and 16
(context = seq_len); TTT-SGD; TTT-LoRA (the [eval] defaults unless --set says otherwise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

ROWS = {
    "flat": ["eval.mode=flat"],
    "sliding s32": ["eval.mode=sliding", "eval.stride=32"],
    "sliding s16": ["eval.mode=sliding", "eval.stride=16"],
    "ttt-sgd": ["eval.mode=ttt", "eval.ttt=sgd", "eval.stride=32"],
    "ttt-lora": ["eval.mode=ttt", "eval.ttt=lora"],
}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--max-tokens", type=int, default=32768)
    ap.add_argument("--backends", default="torch,mlx")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args(argv)
    print("| backend | mode | val_bpb | val_loss | tokens | bytes | eval s |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        for row in args.rows.split(","):
            cmd = [sys.executable, "-m", "shared.cli", "eval", "--backend", backend, args.artifact, "--json",
                   "--set", f"eval.max_tokens={args.max_tokens}"]
            for s in ROWS[row] + args.sets:
                cmd += ["--set", s]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f"| {backend} | {row} | error: {out.stderr.strip()[-200:]} |", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {backend} | {row} | {r['val_bpb']:.4f} | {r['val_loss']:.4f} | {r['tokens']:,} | "
                  f"{r['bytes']:,} | {r['eval_seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
