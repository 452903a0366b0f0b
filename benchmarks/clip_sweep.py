"""Artifact size and quantisation gap of int6 block matrices over clip widths and embedding choices.

    python -m benchmarks.clip_sweep CHECKPOINT --backend torch --clip-k 12 \\
        --embed int8:row int8:frequency int7:frequency --embed-clip-k 16 20 24

Block matrices are int6 with clip `clip_k` x row std. The embedding takes each
`SCHEME:STEPS` of `--embed` (`quant.embed` : `quant.embed_steps`); "row" int8 is the
percentile clip (no `embed_clip_k`), every other choice runs once per `--embed-clip-k`.
Each row is packed with round-to-nearest and with GPTQ (Hessians, and the token counts
of "frequency" steps, from the first `quant.calib_tokens` training tokens). The gap is
against the checkpoint's own BPB on the validation tokens of its `[eval]` section
(or the first `--eval-tokens`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from shared.artifact import format as artifact
from shared.artifact.calibration import calibration_batch, calibration_counts
from shared.core.spec import count_params
from shared.data.dataset import open_dataset
from shared.run.backends import get_backend
from shared.run.rundir import load_checkpoint


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--backend", default="mlx", choices=["mlx", "torch"])
    ap.add_argument("--clip-k", type=float, nargs="+", default=[12.0])
    ap.add_argument("--embed", nargs="+", default=["int8:row", "int8:frequency"], metavar="SCHEME:STEPS")
    ap.add_argument("--embed-clip-k", type=float, nargs="+", default=[16.0])
    ap.add_argument("--eval-tokens", type=int, default=None, help="eval.max_tokens [default: the checkpoint's]")
    args = ap.parse_args(argv)
    params, cfg, _ = load_checkpoint(args.checkpoint)
    if args.eval_tokens:
        cfg = replace(cfg, eval=replace(cfg.eval, max_tokens=args.eval_tokens))
    be = get_backend(args.backend)
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    n = count_params(cfg.model)
    base = be.evaluate(params, cfg, ds.val_tokens, ds.tables).val_bpb
    x, y = calibration_batch(ds, cfg)
    hessians, counts = be.collect_hessians(params, cfg, x), calibration_counts(x, y, cfg.model.vocab_size)
    print("| clip_k | embedding | steps | embed_clip_k | GPTQ | artifact bytes | bytes/param | gap |\n"
          "|---|---|---|---|---|---:|---:|---:|")
    for k in args.clip_k:
        for choice in args.embed:
            embed, steps = choice.split(":")
            for ek in [None] if (embed, steps) == ("int8", "row") else args.embed_clip_k:
                for gptq in (False, True):
                    q = replace(cfg.quant, embed=embed, embed_steps=steps, embed_clip_k=ek or cfg.quant.embed_clip_k,
                                attn="int6", mlp="int6", other="fp16", keep_float_max_numel=0, clip_k=k, gptq=gptq,
                                min_scale=0.0)
                    c = replace(cfg, quant=q).validate()
                    blob = artifact.pack(params, c, hessians if gptq else None, token_counts=counts)
                    q_bpb = be.evaluate(artifact.unpack(blob)[1], cfg, ds.val_tokens, ds.tables).val_bpb
                    print(f"| {k:g} | {embed} | {steps} | {'-' if ek is None else f'{ek:g}'} | "
                          f"{'yes' if gptq else 'no'} | {len(blob):,} | {len(blob) / n:.4f} | {q_bpb - base:+.4f} |",
                          flush=True)


if __name__ == "__main__":
    main()
