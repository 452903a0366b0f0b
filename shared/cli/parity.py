"""`pgolf parity`: prove that MLX and PyTorch agree on one checkpoint.

    pgolf parity runs/small/checkpoint.safetensors [--data DIR --tokenizer MODEL] [--modes] [--json]

Runs the five checks of shared/tools/parity.py (export -> identical artifact bytes,
artifact BPB, forward loss, twenty training steps, cross evaluation) in fp32
on the CPU and exits 1 when one fails, naming it and by how much. `--modes`
adds the sliding-window and both TTT evaluations (the checkpoint's [eval] knobs).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from shared.cli.train import load_weights, with_data
from shared.core.config import apply_overrides
from shared.errors import PgolfError


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path), metavar="CHECKPOINT")
@click.option("--data", type=click.Path(), help="dataset folder (overrides data.dir)")
@click.option("--tokenizer", type=click.Path(), help="SentencePiece .model (overrides data.tokenizer)")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
@click.option("--steps", type=int, default=20, show_default=True, help="training steps to compare")
@click.option("--modes", is_flag=True, help="also compare sliding-window and both TTT evaluations (slower)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def parity(checkpoint, data, tokenizer, sets, steps, modes, as_json) -> None:
    """Check that both backends export, evaluate and train a checkpoint identically."""
    from shared.data.dataset import open_dataset
    from shared.tools.parity import run_parity

    if steps < 1:
        raise PgolfError(f"--steps must be at least 1, got {steps}")
    if as_json:  # stdout is one JSON object and stderr stays quiet
        from shared.core.progress import set_quiet

        set_quiet()
    cfg, params = load_weights(checkpoint)
    if cfg is None:
        raise PgolfError(f"{checkpoint} has no embedded config: pass a checkpoint written by `pgolf train`")
    cfg = apply_overrides(with_data(cfg, data, tokenizer), sets)
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    rep = run_parity(params, cfg, ds, steps=steps, modes=modes)
    if as_json:
        click.echo(json.dumps(rep.to_json(), sort_keys=True))
    else:
        for c in rep.checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:8s} {c.value:.3g} (allowed {c.tol:.2g})"
                       + ("" if c.ok else f": {c.detail}"))
        f = rep.figures
        click.echo(f"artifact sha256 mlx {f['sha256_mlx'][:16]} torch {f['sha256_torch'][:16]}; "
                   f"bpb mlx {f['bpb_mlx']:.6f} torch {f['bpb_torch']:.6f}")
    if not rep.ok:
        click.echo("parity failed: " + "; ".join(rep.failures()), err=True)
        raise SystemExit(1)
