"""`pgolf train` and `pgolf eval`, generic over the backend (`--backend mlx|torch`).

    pgolf train --backend mlx --config configs/small.toml --data DIR --tokenizer MODEL --out runs/small
    pgolf train --backend mlx --resume runs/small            # continue from its last checkpoint
    pgolf train ... --out runs/small --overwrite              # start over in a folder that holds a run
    pgolf eval --backend mlx runs/small/model.pgz --data DIR --tokenizer MODEL [--json]
    pgolf eval --backend torch runs/small/model.pgz --set eval.mode=sliding   # or ttt (README "Evaluation")

Knobs live in the config (`--set section.key=value`); `--data`/`--tokenizer`
override `data.dir`/`data.tokenizer`. `eval` takes an artifact (`.pgz`) or a
checkpoint (`.safetensors`, or a run folder): the model section always comes
from the file itself.

Before the backend trains, `train` claims the run folder (one process at a
time: shared/run/rundir.py `claim_run_dir`), refuses a folder that already
holds a run unless `--resume` or `--overwrite`, and opens the dataset with
the run's sequence length, so a bad split fails before any step. A resume
that fails before it saves leaves config.toml as it was. `eval` refuses
weights that are not finite, scores as `eval.mode` says and reports
`eval_seconds` (with `--json`: the keys val_loss, val_bpb, tokens, bytes,
eval_mode, eval_seconds).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import click

from shared.core.config import Config, apply_overrides, load_config
from shared.errors import PgolfError

BACKEND_OPTION = click.option("--backend", type=click.Choice(["mlx", "torch"]), default="mlx", show_default=True,
                              help="mlx (Apple silicon / CPU) or torch (CUDA / CPU)")


def with_data(cfg: Config, data: str | None, tokenizer: str | None) -> Config:
    d = cfg.data
    return replace(cfg, data=replace(d, dir=data if data is not None else d.dir,
                                     tokenizer=tokenizer if tokenizer is not None else d.tokenizer))


@click.command()
@BACKEND_OPTION
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (e.g. configs/small.toml)")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
@click.option("--data", type=click.Path(), help="dataset folder with fineweb_{train,val}_*.bin (overrides data.dir)")
@click.option("--tokenizer", type=click.Path(), help="SentencePiece .model (overrides data.tokenizer)")
@click.option("--out", type=click.Path(file_okay=False), help="run folder to write")
@click.option("--resume", type=click.Path(file_okay=False), help="continue the run in this folder from its last checkpoint")
@click.option("--nproc", type=int, default=1, show_default=True, help="processes (torch: DDP ranks)")
@click.option("--overwrite", is_flag=True, help="start a new run in an --out folder that already holds one (its files are removed)")
def train(backend, config_path, sets, data, tokenizer, out, resume, nproc, overwrite) -> None:
    """Train a model, pack it into RUN_DIR/model.pgz and evaluate it."""
    from shared.data.dataset import open_dataset
    from shared.run.backends import get_backend
    from shared.run.rundir import (
        claim_run_dir,
        config_restored_on_failure,
        finished_run_message,
        inherited_claim,
        terminate_as_exit,
    )

    if resume:
        run_dir = Path(resume)
        if out and Path(out).resolve() != run_dir.resolve():
            raise PgolfError(f"--out {out} and --resume {resume} differ: a resumed run continues in its own folder")
        saved = run_dir / "config.toml"
        if config_path is None and not saved.is_file():
            raise PgolfError(f"{saved} not found: is {resume} a folder written by `pgolf train`?")
        cfg = load_config(config_path or saved)
    else:
        if not out:
            raise PgolfError("--out RUN_DIR is required (where the checkpoint, logs and model.pgz go)")
        run_dir = Path(out)
        cfg = load_config(config_path)
    cfg = apply_overrides(with_data(cfg, data, tokenizer), sets)
    if nproc < 1:
        raise PgolfError(f"--nproc must be at least 1, got {nproc}")
    if resume and overwrite:
        raise PgolfError("--resume and --overwrite contradict each other: --resume continues the run in the "
                         "folder, --overwrite starts a new one over it; pass one of them")
    # Every input check before the folder is touched: shards, tokenizer, at least one validation sequence.
    open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size, seq_len=cfg.train.seq_len)
    # `pgolf train` (a subcommand of the group), not a backend's `python -m` entry: a run loads only counted code.
    if click.get_current_context().parent is not None and int(os.environ.get("RANK", "0") or 0) == 0 \
            and not inherited_claim(run_dir):
        click.echo(plan_summary(cfg, backend, nproc))
    # One owner per run folder. Under torchrun only rank 0 writes; the workers that
    # `--nproc N` starts run under their launcher's claim.
    if inherited_claim(run_dir) or int(os.environ.get("RANK", "0") or 0) > 0:
        claim = contextlib.nullcontext()
    else:
        claim = claim_run_dir(run_dir, resume=bool(resume), overwrite=overwrite)
    guard = config_restored_on_failure(run_dir) if resume else contextlib.nullcontext()
    with terminate_as_exit(), claim, guard:
        if resume and (finished := finished_run_message(run_dir, cfg, backend)):
            click.echo(finished)  # a finished run stays as it is: no extra step, no second packing
            return
        summary = get_backend(backend).train(cfg, run_dir, resume=bool(resume), nproc=nproc)
    if summary:
        click.echo(
            f"done: val_bpb {summary['val_bpb']:.4f} (packed {summary['q_val_bpb']:.4f}), "
            f"{summary['total_bytes']:,} bytes of 16,000,000; {run_dir / 'summary.json'}"
        )


def plan_summary(cfg: Config, backend: str, nproc: int) -> str:
    """The plan's one-line summary for this run (`pgolf plan`). Loaded by name, so the planner is no part of
    the counted code; it never stops a run: any failure becomes a line saying so."""
    try:
        plan = importlib.import_module("shared.plan")
        hw = plan.get_hardware(importlib.import_module("shared.plan.hardware").detect(backend, nproc))
        line = plan.summary_line(plan.make_plan(cfg, hw, "pgolf"))
        return line + (" (torch's CPU figures: MLX on a CPU is slower)" if hw.kind == "cpu" and backend == "mlx" else "")
    except Exception as e:  # noqa: BLE001 - a forecast must never fail the run it forecasts
        return f"plan: unavailable ({type(e).__name__}: {e})"


def load_weights(path: Path) -> tuple[Config | None, dict]:
    """(embedded config, float32 params) from an artifact or a checkpoint; NaN or infinity is an error."""
    from shared.core.spec import check_finite
    from shared.run.rundir import CHECKPOINT, load_checkpoint

    if path.is_dir() or path.suffix == ".safetensors":
        if path.is_dir() and not (path / CHECKPOINT).is_file():
            raise PgolfError(f"{path} holds no {CHECKPOINT}: pass a model.pgz or checkpoint.safetensors")
        params, cfg, _ = load_checkpoint(path)
        check_finite(params, str(path / CHECKPOINT if path.is_dir() else path))
        return cfg, params
    from shared.artifact.format import read_artifact

    return read_artifact(path)  # unpack checks the decoded weights


def _run_dir_data(cfg: Config, weights: Path) -> Config:
    """An artifact carries no data paths (they are machine-local): inside a run directory, take
    them from the run's config.toml when it describes the same model."""
    from shared.core.config import DataConfig
    from shared.run.rundir import CONFIG

    run_cfg = weights.parent / CONFIG
    if cfg.data != DataConfig() or not run_cfg.is_file():
        return cfg
    run = load_config(run_cfg)
    return replace(cfg, data=run.data) if run.model == cfg.model else cfg


@click.command(name="eval")
@BACKEND_OPTION
@click.argument("weights", type=click.Path(exists=True, path_type=Path), metavar="ARTIFACT|CHECKPOINT")
@click.option("--data", type=click.Path(), help="dataset folder (overrides data.dir)")
@click.option("--tokenizer", type=click.Path(), help="SentencePiece .model (overrides data.tokenizer)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config for [eval]/[train] settings")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def evaluate(backend, weights, data, tokenizer, config_path, sets, as_json) -> None:
    """Validation loss and bits per byte of an artifact or checkpoint."""
    from shared.data.dataset import open_dataset
    from shared.eval.driver import EVAL_BUDGET_S, mode_name
    from shared.run.backends import get_backend

    if as_json:  # stdout is one JSON object and stderr stays quiet
        from shared.core.progress import set_quiet

        set_quiet()
    embedded, params = load_weights(weights)
    if config_path is not None:
        cfg = load_config(config_path)
        if embedded is not None and cfg.model != embedded.model:
            raise PgolfError(f"{config_path}: its [model] section differs from the one stored in {weights}")
    elif embedded is not None:
        cfg = embedded
    else:
        raise PgolfError(f"{weights} has no embedded config: pass --config with the [model] it was trained with")
    cfg = apply_overrides(with_data(cfg, data, tokenizer), sets)
    if embedded is not None and cfg.model != embedded.model:
        changed = [k for k in vars(cfg.model) if getattr(cfg.model, k) != getattr(embedded.model, k)]
        raise PgolfError(f"--set {', '.join('model.' + k for k in changed)}: the [model] section comes from "
                         f"{weights} and cannot be changed when evaluating it; drop the model override")
    if data is None and tokenizer is None:
        cfg = _run_dir_data(cfg, Path(weights))
        if not Path(cfg.data.dir).is_dir():
            raise PgolfError(f"{weights}: data folder {cfg.data.dir} not found (artifacts store no data paths; "
                             "checkpoints store the training machine's): pass --data DIR --tokenizer MODEL")
    ds = open_dataset(cfg.data.dir, cfg.data.tokenizer, cfg.model.vocab_size)
    clock = time.perf_counter()
    res = get_backend(backend).evaluate(params, cfg, ds.val_tokens, ds.tables)
    seconds = time.perf_counter() - clock
    if not math.isfinite(res.nats):  # never print a non-finite loss (or a BPB made from one) as a score
        raise PgolfError(f"{weights}: the evaluation diverged (summed loss {res.nats}); no score is reported")
    out = {**res.to_json(), "eval_mode": mode_name(cfg.eval), "eval_seconds": seconds}
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
        return
    scope = f" (first {res.tokens:,} target tokens: eval.max_tokens)" if cfg.eval.max_tokens else " (whole split)"
    click.echo(f"val_loss {out['val_loss']:.6f}\nval_bpb {out['val_bpb']:.6f}\ntokens {out['tokens']}{scope}\nbytes {out['bytes']}")
    # The clock on stderr: stdout keeps its four lines (a contract scripts parse).
    click.echo(f"eval ({out['eval_mode']}): {seconds:.2f}s, {100 * seconds / EVAL_BUDGET_S:.1f}% of the challenge's "
               f"{EVAL_BUDGET_S:.0f} s evaluation budget on this machine", err=True)


def backend_main(backend: str, argv: list[str]) -> None:
    """`python -m mlx_train|cuda_train [train|eval] ...`: the same commands with the backend fixed."""
    from shared.cli import run

    args = list(argv)
    name = args.pop(0) if args and args[0] in ("train", "eval") else "train"
    command = train if name == "train" else evaluate
    run(command, ["--backend", backend, *args], prog_name=f"pgolf {name}")
