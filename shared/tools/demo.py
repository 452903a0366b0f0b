"""`make demo`: the whole workflow on a laptop in a few minutes, no download.

    python -m shared.tools.demo --out runs/demo [--backend mlx] [--seconds 120]

1. builds the sample dataset (`pgolf data sample`, skipped when present);
2. trains configs/small.toml for about two minutes of training steps;
3. packs the weights into the artifact, evaluates the unpacked artifact;
4. prints a short report: BPB before and after packing, next to what a
   unigram model scores on the same tokens, and the artifact's bytes against
   the 16,000,000-byte cap.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from shared.core.config import Config, load_config
from shared.errors import PgolfError

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "configs" / "small.toml"


def unigram_bpb(train_tokens: np.ndarray, val_tokens: np.ndarray, tables, n_targets: int, vocab: int) -> float:
    """BPB of the best context-free model (train token frequencies, add-1/2) on the first validation targets."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab).astype(np.float64) + 0.5
    logp = np.log(counts / counts.sum())
    targets = np.asarray(val_tokens[1 : n_targets + 1]).astype(np.int64)
    return float(-logp[targets].sum() / math.log(2) / tables.target_bytes(val_tokens, 1, n_targets + 1))


def ensure_sample(root: Path) -> tuple[Path, Path]:
    data = root / "datasets" / "sample_sp1024"
    tok = root / "tokenizers" / "sample_1024_bpe.model"
    if data.is_dir() and tok.is_file() and any(data.glob("fineweb_val_*.bin")):
        print(f"sample dataset: {data} (present, not rebuilt)")
        return data, tok
    from shared.data.sample import build_sample

    print(f"building the sample dataset under {root} ...", flush=True)
    return build_sample(root)


def demo_config(data: Path, tok: Path, seconds: float | None) -> Config:
    cfg = load_config(SMALL)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(data), tokenizer=str(tok)))
    if seconds is not None:
        cfg = replace(cfg, train=replace(cfg.train, max_seconds=float(seconds)))
    return cfg.validate()


def report(summary: dict, q_check: float, unigram: float) -> str:
    ok = "within" if summary["total_bytes"] <= 16_000_000 else "OVER"
    return "\n".join([
        "",
        "== pgolf demo ==",
        f"trained   {summary['steps']} steps, {summary['train_tokens']:,} tokens in {summary['train_seconds']:.0f}s "
        f"({summary['tokens_per_second']:,.0f} tok/s, {summary['backend']})",
        f"val BPB   {summary['val_bpb']:.4f} before packing, {summary['q_val_bpb']:.4f} after "
        f"(re-evaluated from model.pgz: {q_check:.4f}); a unigram model scores {unigram:.4f}",
        f"artifact  {summary['artifact_bytes']:,} model bytes + {summary['code_bytes']:,} code bytes = "
        f"{summary['total_bytes']:,} of 16,000,000 ({ok} the cap)",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    ap.add_argument("--data-root", default="data/sample", help="where the sample dataset lives / is built")
    ap.add_argument("--backend", default="mlx", choices=["mlx", "torch"])
    ap.add_argument("--seconds", type=float, default=None, help="training wallclock (default: configs/small.toml)")
    args = ap.parse_args(argv)
    try:
        from shared.artifact.format import read_artifact
        from shared.data.dataset import open_dataset
        from shared.run.backends import get_backend

        data, tok = ensure_sample(Path(args.data_root))
        cfg = demo_config(data, tok, args.seconds)
        backend = get_backend(args.backend)
        out = Path(args.out)
        if (out / "summary.json").exists() or (out / "checkpoint.safetensors").exists():
            raise PgolfError(f"{out} already holds a run: remove it or pass --out NEW_DIR")
        summary = backend.train(cfg, out)
        art_cfg, params = read_artifact(out / "model.pgz")
        ds = open_dataset(data, tok, cfg.model.vocab_size)
        q = backend.evaluate(params, replace(art_cfg, data=cfg.data, eval=cfg.eval), ds.val_tokens, ds.tables)
        from shared.data.shards import find_shards, read_shard

        train_tokens = read_shard(find_shards(data, "train")[0])[:4_000_000]
        uni = unigram_bpb(train_tokens, ds.val_tokens, ds.tables, q.tokens, cfg.model.vocab_size)
        print(report(summary, q.val_bpb, uni))
    except PgolfError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
