"""`pgolf compare`, `pgolf sweep`, `pgolf ablate`, `pgolf plot`: the research loop on a laptop.

    pgolf sweep --config configs/small.toml --grid model.mlp_mult=2,3 --grid optim.beta2=0.95,0.99 \\
        --seeds 1337,1 --max-seconds 20 --out runs/sweep --backend torch
    pgolf ablate --config configs/small-record.toml --keys smear_gate,muon_row_norm --seeds 1337,1 \\
        --steps 200 --out runs/ablate --backend torch
    pgolf compare runs/sweep [RUN ...] [--json]
    pgolf plot runs/sweep [RUN ...] -o curves.png

A sweep or an ablation writes OUT/sweep.json (what it runs), one `pgolf train` run folder per point and
seed (OUT/<point>/seed<S>), OUT/results.csv and OUT/results.jsonl (one row per finished run) and
OUT/summary.json (per point: mean, std, Welch test against the first point). Running the same command
again finishes only what is missing. The table says whether the runs had equal steps or equal wallclock.
Several `--data` run the sweep once per corpus (OUT/<corpus>) and add OUT/corpora.json: where each result holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from shared.cli.train import BACKEND_OPTION
from shared.errors import PgolfError

PATHS = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN|SWEEP...")


def _quiet_if(as_json: bool) -> None:
    if as_json:
        from shared.core.progress import set_quiet

        set_quiet()


@click.command("compare")
@PATHS
@click.option("--json", "as_json", is_flag=True, help="print the table as one JSON object")
def compare(paths: tuple[Path, ...], as_json: bool) -> None:
    """Side-by-side table of runs and sweeps: keys that differ, BPB, bytes, steps, tok/s, Welch verdict."""
    from shared.research.runs import budget_line, load_groups, render, rows

    groups = load_groups(list(paths))
    table, budget = rows(groups), budget_line(groups)
    if as_json:
        click.echo(json.dumps({"budget": budget, "rows": table}, indent=2, sort_keys=True))
    else:
        click.echo(render(table, budget))


def budget_options(f):
    f = click.option("--steps", type=int, default=None, help="equal steps: train.iterations=N, no wallclock cap")(f)
    f = click.option("--max-seconds", type=float, default=None,
                     help="equal wallclock: train.max_seconds=S (steps unbounded)")(f)
    return f


def common_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")(f)
    f = click.option("--tokenizer", "tokenizer", multiple=True, type=click.Path(),
                     help="SentencePiece .model (overrides data.tokenizer); one per --data, in the same order")(f)
    f = click.option("--data", "data", multiple=True, type=click.Path(),
                     help="dataset folder (overrides data.dir); repeat it to run the sweep on each corpus and "
                          "see where a result holds")(f)
    f = click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="override one config value in every run (repeatable)")(f)
    f = click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="sweep folder: OUT/<point>/seed<S>, results.csv, results.jsonl, summary.json")(f)
    f = click.option("--seeds", default="1337", show_default=True, help="comma-separated seeds, e.g. 1337,1")(f)
    f = budget_options(f)
    f = click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML config")(f)
    return BACKEND_OPTION(f)


def _run(kind, backend, config_path, points, seeds, steps, max_seconds, out, sets, data, tokenizer, as_json) -> None:
    from shared.cli.record import parse_seeds
    from shared.cli.train import train
    from shared.research.sweep import budget_sets, run_sweep

    _quiet_if(as_json)
    kw = dict(train=train, kind=kind, backend=backend, config_path=config_path, points=points, seeds=parse_seeds(seeds),
              budget=budget_sets(steps, max_seconds), sets=list(sets))
    if len(data) > 1:
        from shared.research.corpora import render_cross, run_corpora
        from shared.research.runs import render

        summary = run_corpora(out, list(data), list(tokenizer), **kw)
        if as_json:
            click.echo(json.dumps(summary, indent=2, sort_keys=True))
            return
        for c in summary["corpora"]:
            name, d = c["name"], c["data"]
            click.echo(f"corpus {name} ({d}):\n")
            click.echo(render(summary["per_corpus"][name]["rows"], summary["per_corpus"][name]["budget"]) + "\n")
        click.echo(render_cross(summary))
        click.echo(f"results: {out}/<corpus>/results.csv, {out / 'corpora.json'}")
        return
    if len(tokenizer) > 1:
        raise PgolfError(f"{len(tokenizer)} --tokenizer for {len(data)} --data: give one tokenizer per dataset")
    summary = run_sweep(out, data=data[0] if data else None, tokenizer=tokenizer[0] if tokenizer else None, **kw)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        from shared.research.runs import render

        click.echo(render(summary["rows"], summary["budget"]))
        click.echo(f"results: {out / 'results.csv'}, {out / 'results.jsonl'}, {out / 'summary.json'}")


@click.command("sweep")
@common_options
@click.option("--grid", "grids", multiple=True, required=True, metavar="SECTION.KEY=V1,V2",
              help="values of one key (repeatable: every combination runs); the first values are the base point")
def sweep(backend, config_path, steps, max_seconds, seeds, out, sets, data, tokenizer, as_json, grids) -> None:
    """Train every grid point for every seed (resumable), then one table with a verdict per point."""
    from shared.research.sweep import grid_points

    _run("sweep", backend, config_path, grid_points(list(grids)), seeds, steps, max_seconds, out, sets, data,
         tokenizer, as_json)


@click.command("ablate")
@common_options
@click.option("--keys", default=None, help="comma-separated techniques: config keys (smear_gate, optim.muon_wd) or "
                                           "named groups of keys (weight_decay, warmdown_frac, partial_rope, ...: "
                                           "an unknown name lists them)")
@click.option("--all", "all_keys", is_flag=True, help="every technique key where the config differs from the baseline")
def ablate(backend, config_path, steps, max_seconds, seeds, out, sets, data, tokenizer, as_json, keys,
           all_keys) -> None:
    """Turn each technique back to its baseline value, one at a time, and compare with the config as it is."""
    from shared.research.ablate import ablation_points

    if bool(keys) == all_keys:
        raise PgolfError("pass exactly one of --keys k1,k2 and --all")
    points = ablation_points(config_path, keys.split(",") if keys else None, list(sets))
    _run("ablate", backend, config_path, points, seeds, steps, max_seconds, out, sets, data, tokenizer, as_json)


@click.command("plot")
@PATHS
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write")
def plot(paths: tuple[Path, ...], output: Path) -> None:
    """Train loss and val BPB against steps and seconds, the LR scale, and bytes per tensor class."""
    from shared.research.plot import plot_runs

    n = plot_runs(list(paths), output)
    click.echo(f"wrote {output} ({n} runs)")


__all__ = ["ablate", "compare", "plot", "sweep"]
