"""Budget mode vs uniform int6 GPTQ at the same size, for several sensitivity-token counts.

    python -m benchmarks.budget_tokens CHECKPOINT --backend torch --tokens 8192 32768 65536

The budget is the size of the int6 GPTQ artifact; each row is `pack --budget` with
`quant.budget_tokens` set to that many calibration tokens (training split).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from shared.artifact import format as artifact
from shared.artifact.budget import budget_schemes, sensitivity_batch
from shared.artifact.calibration import calibration_batch, calibration_counts
from shared.data.dataset import open_dataset
from shared.run.backends import get_backend
from shared.run.rundir import load_checkpoint


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--backend", default="torch", choices=["mlx", "torch"])
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 65536])
    args = ap.parse_args(argv)
    params, cfg, _ = load_checkpoint(args.checkpoint)
    be = get_backend(args.backend)
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)

    def gap(blob: bytes) -> float:
        return be.evaluate(artifact.unpack(blob)[1], cfg, ds.val_tokens, ds.tables).val_bpb - base

    base = be.evaluate(params, cfg, ds.val_tokens, ds.tables).val_bpb
    x, y = calibration_batch(ds, cfg)
    hessians, counts = be.collect_hessians(params, cfg, x), calibration_counts(x, y, cfg.model.vocab_size)
    low = replace(cfg.quant, embed="int8", embed_steps="frequency", other="fp16", keep_float_max_numel=0, min_scale=0.0,
                  gptq=True)
    blob6 = artifact.pack(params, replace(cfg, quant=replace(low, attn="int6", mlp="int6")), hessians,
                          token_counts=counts)
    print(f"| scheme | artifact bytes | gap |\n|---|---:|---:|\n| int6 GPTQ | {len(blob6):,} | {gap(blob6):+.4f} |")
    for n in args.tokens:
        bcfg = replace(cfg, quant=replace(low, attn="int8", mlp="int8", budget_tokens=n))
        sx, sy = sensitivity_batch(x, y, bcfg)
        schemes = budget_schemes(params, bcfg, len(blob6), lambda p, c=bcfg, a=sx, b=sy: be.batch_loss(p, c, a, b), hessians,
                                 log=lambda s: None, token_counts=counts)
        blob = artifact.pack(params, bcfg, hessians, schemes, counts)
        print(f"| budget, {n:,} sensitivity tokens | {len(blob):,} | {gap(blob):+.4f} |", flush=True)


if __name__ == "__main__":
    main()
