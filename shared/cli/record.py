"""`pgolf record export|check` and `pgolf seeds`: from runs to a record submission.

    pgolf seeds --config configs/record.toml --seeds 42,0,1234 --out runs/rec --backend torch --nproc 8
    pgolf record export runs/rec/seed42 runs/rec/seed0 runs/rec/seed1234 --name MyRecord \\
        --author "A. Person" --github-id aperson [--track 10min_16mb|non_record_16mb] [--out records]
    pgolf record check records/track_10min_16mb/2026-12-02_MyRecord [--against 1.0810 | --against OTHER_DIR]

`export` writes the folder a pull request adds (shared/record/export.py);
`check` reviews one (shared/record/check.py): exit 0 for a record (or a
structurally valid non_record_16mb folder), 1 with the failed checks or the
reasons it is not a record, 2 on unreadable input. `seeds` trains one config for each
seed in turn (`pgolf train` per seed, into OUT/seed<S>), then prints the mean,
std and, with --against, the significance report (shared/record/stats.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from shared.cli.train import BACKEND_OPTION
from shared.errors import PgolfError

AGAINST_HELP = "the current best: a val_bpb number, or its records folder (Welch t-test of the seeds against it)"


@click.group()
def record() -> None:
    """Records: export runs as a submission folder, check one as a reviewer would."""


@record.command("export")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR [RUN_DIR ...]")
@click.option("--name", required=True, help="the record's name (also the folder name, after the date)")
@click.option("--author", required=True, help="author, as in submission.json")
@click.option("--github-id", "github_id", required=True, help="GitHub user name")
@click.option("--track", type=click.Choice(["10min_16mb", "non_record_16mb"]), default="10min_16mb", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("records"), show_default=True,
              help="writes OUT/track_<track>/<date>_<name>/")
@click.option("--blurb", default=None, help="one paragraph for submission.json (default: generated from the runs)")
@click.option("--date", default=None, metavar="YYYY-MM-DD", help="the record's date (default: today, UTC)")
@click.option("--overwrite", is_flag=True, help="replace a records folder of the same date and name")
def export_cmd(runs, name, author, github_id, track, out, blurb, date, overwrite) -> None:
    """Write records/<track>/<date>_<name>/ from finished runs: train_gpt.py, submission.json, logs, README."""
    from shared.core.config import load_config
    from shared.record.check import check_folder
    from shared.record.export import export_record
    from shared.record.script import generate

    dest = export_record(list(runs), name=name, author=author, github_id=github_id, track=track, out=out,
                         blurb=blurb, date=date, overwrite=overwrite)
    sub = json.loads((dest / "submission.json").read_text())
    gen = generate(load_config(Path(runs[0]) / "config.toml"))  # cached: the script just written
    click.echo(f"wrote {dest}")
    click.echo(f"train_gpt.py: {gen.raw_bytes:,} bytes of source -> {gen.minified_bytes:,} minified -> "
               f"{sub['bytes_code']:,} counted ({gen.form}, {len(gen.modules)} modules)")
    click.echo(f"val_bpb {sub['val_bpb']:.8f} (std {sub['val_bpb_std']:.8f}) over seeds {sub['seeds']}; "
               f"largest total {sub['bytes_total']:,} bytes")
    rep = check_folder(dest)
    for line in rep.lines()[1:]:
        click.echo(line)


@record.command("check")
@click.argument("folder", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--against", default=None, metavar="BPB_OR_DIR", help=AGAINST_HELP)
@click.option("--profile", "profile_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="the official profile as JSON (val_tokens, tokenizer_sha256, val_sha256, hardware, "
                                   "min_seeds, train_seconds, eval_seconds); default: the challenge's rules, data "
                                   "checksums unknown")
def check_cmd(folder: Path, against: str | None, profile_path: Path | None) -> None:
    """Review a records folder: structure (files, sizes, logs vs submission.json), then whether it is a record
    (whole validation, official data, seeds and significance, time caps, hardware, legality evidence).
    Exit 0: a record (or a structurally valid non_record_16mb submission); 1: not; 2: unreadable input."""
    from shared.record.check import check_folder
    from shared.record.profile import OFFICIAL, load_profile

    profile = load_profile(profile_path) if profile_path is not None else OFFICIAL
    if against is not None:
        check_against(against)
    rep = check_folder(folder, against, profile=profile)
    for line in rep.lines():
        click.echo(line)
    if not rep.passes:
        sys.exit(1)


@click.command()
@BACKEND_OPTION
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML config")
@click.option("--seeds", required=True, help="comma-separated seeds, e.g. 42,0,1234")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="one run folder per seed: OUT/seed<S>")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
@click.option("--data", type=click.Path(), help="dataset folder (overrides data.dir)")
@click.option("--tokenizer", type=click.Path(), help="SentencePiece .model (overrides data.tokenizer)")
@click.option("--nproc", type=int, default=1, show_default=True, help="processes (torch: DDP ranks)")
@click.option("--overwrite", is_flag=True, help="start over in seed folders that already hold a run")
@click.option("--against", default=None, metavar="BPB_OR_DIR", help=AGAINST_HELP)
def seeds(backend, config_path, seeds, out, sets, data, tokenizer, nproc, overwrite, against) -> None:
    """Train one config for several seeds in turn, then report mean, std and significance."""
    from shared.cli.train import train
    from shared.core.config import apply_overrides, load_config
    from shared.record.check import significance_against
    from shared.record.stats import mean_std
    from shared.run.rundir import existing_run_files

    seed_list = parse_seeds(seeds)
    if any(s.split("=", 1)[0].strip() == "train.seed" for s in sets):
        raise PgolfError("--set train.seed=... contradicts --seeds: pass the seeds with --seeds")
    if nproc < 1:
        raise PgolfError(f"--nproc must be at least 1, got {nproc}")
    # Everything that can be checked is checked before the first seed trains: the config with each seed,
    # --against, and the seed folders.
    base = load_config(config_path, sets)
    for seed in seed_list:
        apply_overrides(base, [f"train.seed={seed}"], source="--seeds")
    if against is not None:
        check_against(against)
    if not overwrite:
        for seed in seed_list:
            if found := existing_run_files(out / f"seed{seed}"):
                raise PgolfError(f"{out / f'seed{seed}'} already holds a run ({', '.join(found)}): pass --overwrite "
                                 "to train every seed again, or choose another --out (a single seed's run continues "
                                 f"with `pgolf train --resume {out / f'seed{seed}'}`)")
    bpb, loss = [], []
    for seed in seed_list:
        run = out / f"seed{seed}"
        click.echo(f"== seed {seed} -> {run}")
        args = ["--backend", backend, "--config", config_path, "--out", str(run), "--nproc", str(nproc),
                "--set", f"train.seed={seed}"]
        for s in sets:
            args += ["--set", s]
        args += ["--data", data] if data else []
        args += ["--tokenizer", tokenizer] if tokenizer else []
        args += ["--overwrite"] if overwrite else []
        train.main(args=args, prog_name="pgolf train", standalone_mode=False)
        summary = json.loads((run / "summary.json").read_text())
        bpb.append(float(summary["q_val_bpb"]))
        loss.append(float(summary["q_val_loss"]))
    mb, sb = mean_std(bpb)
    ml, sl = mean_std(loss)
    click.echo(f"seeds {','.join(map(str, seed_list))}: val_bpb {' '.join(f'{b:.8f}' for b in bpb)}")
    click.echo(f"mean val_bpb {mb:.8f} std {sb:.8f}; mean val_loss {ml:.8f} std {sl:.8f}")
    if against is not None:
        for line in significance_against(bpb, loss, against).lines():
            click.echo(line)
    click.echo("next: pgolf record export " + " ".join(str(out / f"seed{s}") for s in seed_list)
               + " --name NAME --author A --github-id G")


def parse_seeds(text: str) -> list[int]:
    """`--seeds 42,0,1234`: distinct integers that fit train.seed, no empty items."""
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(not s for s in items):
        raise PgolfError(f"--seeds {text!r}: expected comma-separated integers without empty items, e.g. 42,0,1234")
    try:
        seed_list = [int(s) for s in items]
    except ValueError:
        raise PgolfError(f"--seeds {text!r}: expected comma-separated integers, e.g. 42,0,1234") from None
    if len(set(seed_list)) != len(seed_list):
        raise PgolfError(f"--seeds {text!r}: give distinct integers, e.g. 42,0,1234")
    for s in seed_list:
        if not 0 <= s < 2**63:
            raise PgolfError(f"--seeds: {s} is out of range (a seed is an integer in 0..2**63-1)")
    return seed_list


def check_against(against: str) -> None:
    """`--against`: a finite, positive BPB or an existing records folder (checked before any training)."""
    import math

    try:
        value = float(against)
    except ValueError:
        if not Path(against).is_dir():
            raise PgolfError(f"--against {against}: neither a BPB number nor a records folder") from None
        return
    if not math.isfinite(value) or value <= 0:
        raise PgolfError(f"--against {against}: the best score must be a positive, finite BPB")


__all__ = ["record", "seeds"]
