"""`pgolf gpu-check`: the first command on a fresh GPU pod (environment, correctness, speed, MFU).

    pgolf gpu-check                                   # configs/baseline.toml and configs/record.toml, 15 s each
    pgolf gpu-check --config configs/baseline.toml --seconds 30 --reference ../parameter-golf/train_gpt.py \\
        --json gpu_check.json

A user command rather than a benchmark script: it is what a user runs before
spending a record run's 10 minutes on 8 GPUs, so it ships with the CLI. The
work is in `cuda_train/gpu_check.py` (torch), imported here by name when the
command runs (the CLI loads no framework before). Exit code 0 when every
correctness check passes, 1 when one fails (the report says which), 2 on a
user error. Without a GPU it is a dry run on tiny shapes.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click

from shared.errors import PgolfError

DEFAULT_CONFIGS = ("configs/baseline.toml", "configs/record.toml")


@click.command("gpu-check")
@click.option("--config", "configs", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="config to check (repeatable; default: configs/baseline.toml and configs/record.toml)")
@click.option("--seconds", type=float, default=15.0, show_default=True,
              help="timed training seconds per config (after compilation), and for the reference")
@click.option("--reference", type=click.Path(path_type=Path), metavar="PATH",
              help="the challenge's train_gpt.py: run it on the same shape and data, report the ms/step ratio")
@click.option("--json", "json_out", type=click.Path(path_type=Path), metavar="OUT",
              help="write the report here (rewritten after every section)")
@click.option("--sample-dir", type=click.Path(path_type=Path), default=Path("data/sample"), show_default=True,
              help="where the sample dataset is built when a config's data.dir is absent")
def gpu_check(configs, seconds, reference, json_out, sample_dir) -> None:
    """Environment, correctness, speed and MFU of the PyTorch backend on this machine's GPU."""
    from shared.core.config import load_config
    from shared.files import atomic_write_bytes
    from shared.run.rundir import strict_json

    if not 0 < seconds <= 3600:  # inf or a typo would run until killed
        raise PgolfError(f"--seconds must be in (0, 3600] (timed training per config), got {seconds}")
    paths = list(configs) or [Path(p) for p in DEFAULT_CONFIGS]
    for p in paths:
        if not p.is_file():
            raise PgolfError(f"--config {p}: no such file (run from the pgolf checkout, or pass --config FILE)")
    if reference is not None and not reference.is_file():
        raise PgolfError(f"--reference {reference}: no such file (the challenge's train_gpt.py)")
    if json_out is not None:
        if json_out.exists():
            raise PgolfError(f"--json {json_out} already exists: remove it or choose another path")
        if not json_out.parent.is_dir():
            raise PgolfError(f"--json {json_out}: the folder {json_out.parent} does not exist")
    loaded = []
    for p in paths:
        name = p.stem
        if name in dict(loaded):
            raise PgolfError(f"--config {p}: two configs are named {name!r}; rename one")
        loaded.append((name, load_config(p)))
    try:
        check = importlib.import_module("cuda_train.gpu_check")  # by name: shared/ never imports a backend
    except ImportError as e:
        raise PgolfError(f"gpu-check needs the PyTorch backend: {e} (pip install 'pgolf[torch]')") from None

    def save(report: dict) -> None:
        if json_out is not None:
            atomic_write_bytes(json_out, (strict_json(report, indent=2, sort_keys=True) + "\n").encode())

    report = check.run_check(loaded, seconds, reference, sample_root=sample_dir, save=save,
                             log=lambda s: click.echo(s, err=True))
    failed = [k for k, c in report["checks"].items() if not c["ok"]]
    for k, c in report["checks"].items():
        click.echo(f"{'ok  ' if c['ok'] else 'FAIL'} {k:26s} {c['value']:.3g} (allowed {c['tol']:.0e})")
    for k, t in (report["targets"] or {}).items():
        click.echo(f"{'met ' if t['met'] else 'miss'} target {k}: {t['value']:.4g}")
    if json_out is None:
        click.echo(json.dumps({k: report[k] for k in ("dry_run", "ok", "checks", "targets")}, sort_keys=True))
    if failed:
        click.echo("gpu-check failed: " + ", ".join(failed), err=True)
        raise SystemExit(1)
