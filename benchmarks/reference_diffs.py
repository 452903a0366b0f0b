"""The measured effect of each numeric difference between pgolf and the challenge's reference scripts.

    python -m benchmarks.reference_diffs RUN_DIR/checkpoint.safetensors --data DIR --seqs 8

On the checkpoint's weights and the first `--seqs` validation sequences of its
`train.seq_len`, the mean loss (nats, float64 numpy forward of the baseline
architecture: tests/reference_math.py) under:

    pgolf                      fp32 RoPE tables, RMSNorm eps = float32 eps (= train_gpt.py in fp32)
    bf16 RoPE tables           train_gpt.py after `.bfloat16()`: angles from bf16 positions/frequencies
    eps 1e-6                   train_gpt_mlx.py's RMSNorm eps (what an mlx-ref import changes)
    bf16 embedding             the embedding rounded to bf16, as both scripts hold it

and the artifact bytes of the checkpoint packed with configs/baseline.toml's
`[quant]` with `quant.small = "other"` (small matrices fp32, before issue 18) and
`"fp16"` (the reference's export). Paste the printed table into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.artifact.format import pack, write_artifact
from shared.core.config import load_config
from shared.data.shards import read_shard
from shared.run.rundir import load_checkpoint
from tests.reference_math import bf16_round, reference_loss


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="dataset folder (its first validation shard is read)")
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--write", default=None, help="folder to write the two baseline artifacts into (for `pgolf eval`)")
    args = ap.parse_args(argv)

    params, cfg, _ = load_checkpoint(args.checkpoint)
    assert cfg is not None
    m, t = cfg.model, cfg.train.seq_len
    val = read_shard(sorted(Path(args.data).glob("fineweb_val_*.bin"))[0])
    n = args.seqs * t
    tok = np.asarray(val[: n + 1], dtype=np.int64)
    x, y = tok[:-1].reshape(args.seqs, t), tok[1:].reshape(args.seqs, t)

    def loss(p, **kw) -> float:
        return float(np.mean([reference_loss(p, m, x[i:i + 1], y[i:i + 1], "torch-ref", **kw)
                              for i in range(args.seqs)]))

    base = loss(params)
    rows = [("pgolf (fp32 RoPE tables, eps 1.19e-7)", base),
            ("bf16 RoPE tables (train_gpt.py in bf16)", loss(params, bf16_rope_tables=True)),
            ("RMSNorm eps 1e-6 (train_gpt_mlx.py)", loss(params, eps=1e-6)),
            ("embedding rounded to bf16", loss(dict(params, **{"tok_emb.weight": bf16_round(params["tok_emb.weight"])})))]
    print(f"{args.checkpoint}: {args.seqs} x {t} validation tokens")
    print("| forward | loss (nats) | vs pgolf |\n|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.6f} | {100 * (v - base) / base:+.4f}% |")

    # The tables themselves, independent of any weights: the baseline's head dim 64 at seq 1024.
    hd, seq = 64, 1024
    inv = (1.0 / (10000.0 ** (np.arange(0, hd, 2) / hd))).astype(np.float32).astype(np.float64)
    exact = np.outer(np.arange(seq), inv)
    pos16 = bf16_round(np.arange(seq, dtype=np.float32))
    angle16 = bf16_round(np.outer(pos16, bf16_round(inv.astype(np.float32))))
    err = np.abs(np.angle(np.exp(1j * (angle16 - exact))))
    print(f"\nbf16 RoPE tables at head dim {hd}, seq {seq}: {len(np.unique(pos16))} distinct positions; "
          f"angle error > 0.1 rad in {100 * np.mean(err > 0.1):.1f}% of (position, frequency) pairs, "
          f"> 1 rad in {100 * np.mean(err > 1.0):.1f}%; max {err.max():.2f} rad")

    baseline = load_config("configs/baseline.toml").quant
    print("\n| `[quant]` of configs/baseline.toml | artifact bytes |\n|---|---|")
    for small in ("other", "fp16"):
        blob = pack(params, replace(cfg, quant=replace(baseline, small=small)))
        print(f"| quant.small = \"{small}\" | {len(blob):,} |")
        if args.write:
            write_artifact(Path(args.write) / f"baseline_small_{small}.pgz", blob)


if __name__ == "__main__":
    main()
