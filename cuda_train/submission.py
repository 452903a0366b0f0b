"""The entry of a record's train_gpt.py: the challenge's environment variables, then train, pack, evaluate.

shared/record/script.py embeds this module, every pgolf module it imports and the
run's resolved config into one file, whose last line calls `main`:

    torchrun --standalone --nproc_per_node=8 train_gpt.py      # inside the records folder

The baked-in config holds every setting; the environment overrides a few, named
as in the challenge's reference train_gpt.py (`ENV_KEYS`): DATA_PATH,
TOKENIZER_PATH, SEED, ITERATIONS, MAX_WALLCLOCK_SECONDS, ... Data defaults to
the challenge's layout (./data/datasets/fineweb10B_sp<V>, ./data/tokenizers/
fineweb_<V>_bpe.model). The run folder is logs/<RUN_ID> (default
train_seed<SEED>): train.log, metrics.jsonl, model.pgz, summary.json and the
checkpoint; one that already holds a run is refused unless OVERWRITE=1.

The training is `shared.run.loop.train_loop` with a `TorchSession`, the same call
`pgolf train --backend torch` makes on each rank, so the two train the same model. This path imports torch, numpy,
sentencepiece, zstandard and (brotli/group pipelines) brotli, the artifact's
compressors, and safetensors (the run folder's checkpoint), and no click, tqdm or
huggingface_hub.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from shared.core.config import Config, apply_overrides, from_toml_text
from shared.errors import PgolfError

# The reference script's variable -> our config key.
ENV_KEYS = {
    "DATA_PATH": "data.dir",
    "TOKENIZER_PATH": "data.tokenizer",
    "SEED": "train.seed",
    "ITERATIONS": "train.iterations",
    "MAX_WALLCLOCK_SECONDS": "train.max_seconds",
    "WARMUP_STEPS": "train.warmup_steps",
    "WARMDOWN_ITERS": "train.warmdown_iters",
    "TRAIN_BATCH_TOKENS": "train.batch_tokens",
    "TRAIN_SEQ_LEN": "train.seq_len",
    "VAL_LOSS_EVERY": "train.val_every",
    "TRAIN_LOG_EVERY": "train.log_every",
}


def resolve_config(config_toml: str, environ: Mapping[str, str]) -> Config:
    """The baked-in config with the environment's overrides, type-checked like `--set`."""
    cfg = from_toml_text(config_toml, source="train_gpt.py (baked-in config)")
    sets = []
    for name, key in ENV_KEYS.items():
        if name in environ:
            value = environ[name]
            sets.append(f'{key}="{value}"' if key.startswith("data.") else f"{key}={value}")
    return apply_overrides(cfg, sets, source="environment")


def run_dir_for(cfg: Config, environ: Mapping[str, str]) -> Path:
    return Path("logs") / (environ.get("RUN_ID") or f"train_seed{cfg.train.seed}")


def train_record(config_toml: str, environ: Mapping[str, str], script_bytes: int) -> dict | None:
    """Train, pack and evaluate one seed as the record's script does; rank 0 returns the summary."""
    from shared.data.dataset import open_dataset
    from shared.run.rundir import claim_run_dir, existing_run_files, inherited_claim

    cfg = resolve_config(config_toml, environ)
    run_dir = run_dir_for(cfg, environ)
    overwrite = environ.get("OVERWRITE", "0") == "1"
    if not overwrite and run_dir.is_dir() and existing_run_files(run_dir):
        raise PgolfError(f"{run_dir} already holds a run: set OVERWRITE=1 to replace it, or another RUN_ID")
    # Every input check before the folder is touched (the same checks as `pgolf train`).
    open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size, seq_len=cfg.train.seq_len)
    from cuda_train import runtime  # torch loads once the inputs are known good
    from cuda_train.session import TorchSession
    from shared.run.loop import train_loop

    if inherited_claim(run_dir) or int(environ.get("RANK", "0") or 0) > 0:
        claim = contextlib.nullcontext()
    else:
        claim = claim_run_dir(run_dir, overwrite=overwrite)
    with claim:  # the counted code is this very file
        summary = train_loop(TorchSession(cfg, runtime.init()), cfg, run_dir, code_bytes=script_bytes)
    runtime.shutdown()
    return summary


def main(config_toml: str, script_bytes: int) -> None:
    """train_gpt.py's `__main__`: user errors are one `error:` line and exit code 2, Ctrl-C 130."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from cuda_train.launch import die_with_parent

        die_with_parent()
    if int(os.environ.get("RANK", "0") or 0) > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for the run; errors still reach stderr
    try:
        train_record(config_toml, os.environ, script_bytes)
    except PgolfError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr, flush=True)
        sys.exit(2)
