"""Artifact size and quantisation gap of int6 block matrices over clip widths and embedding widths.

    python -m benchmarks.clip_sweep CHECKPOINT --backend mlx --clip-k 12 16

For each k: the embedding int8 or int6, round-to-nearest or GPTQ (Hessians from the
first `quant.calib_tokens` training tokens). The gap is against the checkpoint's own BPB
on the validation tokens of its `[eval]` section.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from shared import artifact
from shared.backends import get_backend
from shared.budget import calibration_batch
from shared.dataset import open_dataset
from shared.rundir import load_checkpoint
from shared.spec import count_params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--backend", default="mlx", choices=["mlx", "torch"])
    ap.add_argument("--clip-k", type=float, nargs="+", default=[12.0, 16.0])
    args = ap.parse_args(argv)
    params, cfg, _ = load_checkpoint(args.checkpoint)
    be = get_backend(args.backend)
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    n = count_params(cfg.model)
    base = be.evaluate(params, cfg, ds.val_tokens, ds.tables).val_bpb
    hessians = be.collect_hessians(params, cfg, calibration_batch(ds, cfg)[0])
    print("| clip_k | embedding | GPTQ | artifact bytes | bytes/param | gap |\n|---|---|---|---:|---:|---:|")
    for k in args.clip_k:
        for embed in ("int8", "int6"):
            for gptq in (False, True):
                q = replace(cfg.quant, embed=embed, attn="int6", mlp="int6", other="fp16", keep_float_max_numel=0,
                            clip_k=k, gptq=gptq, min_scale=0.0)
                blob = artifact.pack(params, replace(cfg, quant=q), hessians if gptq else None)
                q_bpb = be.evaluate(artifact.unpack(blob)[1], cfg, ds.val_tokens, ds.tables).val_bpb
                print(f"| {k:g} | {embed} | {'yes' if gptq else 'no'} | {len(blob):,} | {len(blob) / n:.4f} | "
                      f"{q_bpb - base:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
