"""Entry point for `python -m cuda_train` and torchrun (the 8xH100 record run).

    torchrun --standalone --nproc_per_node=8 -m cuda_train \\
        --config configs/baseline.toml --data data/datasets/fineweb10B_sp1024 \\
        --tokenizer data/tokenizers/fineweb_1024_bpe.model --out runs/record

Options mirror `pgolf train` (--config, --set, --data, --tokenizer, --out,
--resume). Each rank runs this; rank 0 alone prints and writes. A user
error prints one line and exits 2 on every rank, Ctrl-C saves and exits 130.
"""

from __future__ import annotations

import os
import sys

import click

from shared.config import load_config


def _apply_paths(cfg, data, tokenizer):
    from dataclasses import replace

    if data or tokenizer:
        cfg = replace(cfg, data=replace(cfg.data, dir=data or cfg.data.dir, tokenizer=tokenizer or cfg.data.tokenizer))
    return cfg


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (configs/*.toml).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one config value.")
@click.option("--data", type=click.Path(file_okay=False), help="Dataset folder (wins over data.dir).")
@click.option("--tokenizer", type=click.Path(dir_okay=False), help="SentencePiece .model (wins over data.tokenizer).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
def main(config_path, overrides, data, tokenizer, out, resume) -> None:
    """Train with the PyTorch backend on this rank (torchrun sets RANK/WORLD_SIZE)."""
    from cuda_train.train import train

    cfg = _apply_paths(load_config(config_path, overrides), data, tokenizer)
    train(cfg, out, resume=resume)


def run(argv: list[str] | None = None) -> None:
    from cuda_train import runtime
    from shared.errors import PgolfError

    rank = int(os.environ.get("RANK", "0"))
    code = 0
    try:
        main.main(args=argv, prog_name="python -m cuda_train", standalone_mode=False)
    except PgolfError as e:
        # Every rank reaches the same errors (NaN loss, bad config): rank 0 speaks for all.
        prefix = "error" if rank == 0 else f"error (rank {rank})"
        print(f"{prefix}: {e}", file=sys.stderr, flush=True)
        code = e.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        if rank == 0:
            print("interrupted", file=sys.stderr, flush=True)
        code = 130
    except click.ClickException as e:
        e.show()
        code = 2
    if code == 0:
        runtime.shutdown()
    # On failure skip destroy_process_group: it can wait on peers that are gone.
    sys.exit(code)


if __name__ == "__main__":
    run()
