"""The entry of a record's train_gpt.py: the challenge's environment variables, then train, pack, evaluate.

shared/record/script.py embeds this module, every pgolf module it reaches and the
run's resolved config into one file, whose last line calls `main`:

    torchrun --standalone --nproc_per_node=8 train_gpt.py      # inside the records folder

The baked-in config holds every setting (checked when the script was generated);
the environment overrides a few, named as in the challenge's reference
train_gpt.py (`ENV_KEYS`): DATA_PATH, TOKENIZER_PATH, SEED, ITERATIONS,
MAX_WALLCLOCK_SECONDS, ... Data defaults to the challenge's layout
(./data/datasets/fineweb10B_sp<V>, ./data/tokenizers/fineweb_<V>_bpe.model).
The run folder is logs/<RUN_ID> (default train_seed<SEED>); one that already
holds a run is refused unless OVERWRITE=1, which removes its files first.

The training is `shared.run.loop.run_loop` with a `TorchSession`, the loop
`pgolf train --backend torch` runs on each rank, so the two train the same
model. A pod run needs none of the command line's comforts, so the script
carries none: no run-folder lock, no resume, no checkpoints, no TOML layer, no
message but this module's (an error elsewhere names the line of pgolf's source
that holds it: `message`). The generator leaves out the code of what the baked
config turns off (`left_out`: key -> baked value); an environment override of
such a key is refused.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from shared.core.config import SECTIONS, Config
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


def resolve_config(baked: dict, environ: Mapping[str, str], left_out: Mapping[str, object] = {}) -> Config:  # noqa: B006
    """The baked-in config (section -> key -> value, where not the default) with the environment's overrides,
    each of the key's type."""
    tree = {section: dict(table) for section, table in baked.items()}
    for name, key in ENV_KEYS.items():
        if name in environ:
            section, field = key.split(".")
            kind = type(getattr(SECTIONS[section](), field))
            try:
                tree.setdefault(section, {})[field] = kind(environ[name])
            except ValueError:
                raise PgolfError(f"{name}={environ[name]!r}: {key} takes a {kind.__name__}") from None
            if key in left_out and tree[section][field] != left_out[key]:
                raise PgolfError(f"{name}={environ[name]}: this train_gpt.py was generated for {key}="
                                 f"{left_out[key]!r} and left out the code of any other value; regenerate it "
                                 "with `pgolf record export` from a run with the value you want")
    return Config(**{section: SECTIONS[section](**table) for section, table in tree.items()})


def train_record(baked: dict, environ: Mapping[str, str], script_bytes: int,
                 left_out: Mapping[str, object] = {}) -> dict | None:  # noqa: B006
    """Train, pack and evaluate one seed as the record's script does; rank 0 returns the summary."""
    from shared.data.dataset import open_dataset
    from shared.run.rundir import existing_run_files

    cfg: Config = resolve_config(baked, environ, left_out)
    run_dir = Path("logs") / (environ.get("RUN_ID") or f"train_seed{cfg.train.seed}")
    rank = int(environ.get("RANK", "0") or 0)
    found = existing_run_files(run_dir) if run_dir.is_dir() else []
    if found and environ.get("OVERWRITE", "0") != "1":
        raise PgolfError(f"{run_dir} already holds a run: set OVERWRITE=1 to replace it, or another RUN_ID")
    # Every input check before the folder is touched (the same checks as `pgolf train`).
    open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size, seq_len=cfg.train.seq_len)
    if rank == 0:
        for name in found:
            (run_dir / name).unlink(missing_ok=True)
    from cuda_train import runtime  # torch loads once the inputs are known good
    from cuda_train.session import TorchSession
    from shared.run.loop import run_loop

    summary = run_loop(TorchSession(cfg, runtime.init()), cfg, run_dir, False, None, script_bytes)
    runtime.shutdown()
    return summary


def message(e: PgolfError) -> str:
    """The error's message; where the script left it out (shared/record/shake.py `terse_raises`: the
    message is the line number), the place in pgolf's source that holds it, from the traceback."""
    text = str(e)
    if not text.isdigit():
        return text
    tb = e.__traceback__
    while tb and tb.tb_next:
        tb = tb.tb_next
    where, here = Path(tb.tb_frame.f_code.co_filename if tb else "?"), Path(os.path.abspath(sys.argv[0])).parent
    if where.is_relative_to(here):  # embedded modules sit (by name) beside train_gpt.py
        where = where.relative_to(here)
    return f"{where.as_posix()}:{text} (train_gpt.py leaves out pgolf's messages: that line of pgolf's source has it)"


def main(baked: dict, script_bytes: int, left_out: Mapping[str, object] = {}) -> None:  # noqa: B006
    """train_gpt.py's `__main__`: user errors are one `error:` line and exit code 2, Ctrl-C 130."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from cuda_train.launch import die_with_parent

        die_with_parent()
    if int(os.environ.get("RANK", "0") or 0) > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for the run; errors still reach stderr
    try:
        train_record(baked, os.environ, script_bytes, left_out)
    except PgolfError as e:
        print(f"error: {message(e)}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr, flush=True)
        sys.exit(2)
