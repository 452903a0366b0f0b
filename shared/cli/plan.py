"""`pgolf plan`: what a config will cost before it runs (shared/plan/, docs/PLAN.md).

    pgolf plan configs/record.toml [--set k=v] [--hardware 8xh100] [--profile pgolf|record]
               [--technique NAME=VALUE] [--checkpoint CKPT_OR_PGZ] [--json]
    pgolf plan --hardware list [--json]

Exact: parameters (per class), counted code (the generated train_gpt.py), tokens and FLOPs per
step. Predicted with the stated model: ms/step before and after depth recurrence, steps in the
time cap, peak memory per device by component, eval seconds per mode, pack seconds, the artifact
bytes (or, with --checkpoint, the real packed size). Warnings name what would fail the run.
"""

from __future__ import annotations

import json

import click

from shared.core.config import load_config
from shared.errors import PgolfError


def _hardware_table(as_json: bool) -> None:
    from shared.plan.hardware import get_hardware, names

    rows = [get_hardware(n) for n in names()]
    if as_json:
        click.echo(json.dumps([{**{k: v for k, v in vars(h).items()}} for h in rows], indent=2))
        return
    click.echo(f"{'name':<14}{'chip':<44}{'dev':>4}{'TFLOP/s':>9}{'GB/s':>8}{'GiB':>7}  calibrated")
    for h in rows:
        click.echo(f"{h.name:<14}{h.chip[:43]:<44}{h.devices:>4}{h.tflops:>9.4g}{h.mem_bw_gbs:>8.0f}{h.mem_gib:>7.1f}  "
                   f"{'yes' if h.calibrated else 'no'}")
    click.echo("\nsources: `pgolf plan --hardware list --json` (each figure's source), shared/plan/hardware.py")


def _report(p, cfg) -> None:
    j = p.as_json()
    hw = p.hardware
    cal = "" if hw.calibrated else "  [UNCALIBRATED: rough guide]"
    click.echo(f"plan: {hw.name} ({hw.devices} x {hw.chip}), {p.profile} profile{cal}")
    if p.time["ms_per_step"] is None:   # a model too large to plan: its size and why
        click.echo(f"  params           ~{j['params']:,}")
        for w in p.warnings:
            click.echo(f"warning: {w}")
        for n in p.notes:
            click.echo(f"note: {n}")
        return
    click.echo("exact:")
    by = ", ".join(f"{k} {v:,}" for k, v in j["params_by_class"].items())
    click.echo(f"  params           {j['params']:,} ({by})")
    click.echo(f"  code bytes       {j['code_bytes']:,} (the generated train_gpt.py for this config)")
    click.echo(f"  tokens/step      {j['tokens_per_step']:,}")
    fl = p.flops
    loop = (f"; {fl['per_step_before_loop']:.3e} before / {fl['per_step_after_loop']:.3e} after recurrence"
            if fl["per_step_after_loop"] else "")
    ctx = fl["per_token_before_loop"]["context"]
    click.echo(f"  FLOPs/step       {j['flops_per_step']:.3e} (mean over the run{loop}; attention over "
               f"{ctx:.0f} keys/query{' with the document mask' if p.techniques.get('doc_mask') else ', causal'})")
    click.echo("predicted:")
    click.echo(f"  artifact         {j['artifact_bytes']:,} bytes ({p.artifact['source']}); total "
               f"{j['total_bytes']:,} of 16,000,000")
    t = p.time
    after = f" / {t['ms_per_step_after_loop']:.1f}" if t["ms_per_step_after_loop"] is not None else ""
    click.echo(f"  ms/step          {j['ms_per_step']:.1f} (before{'/after' if after else ''} recurrence "
               f"{t['ms_per_step_before_loop']:.1f}{after})")
    click.echo("                   by term (ms, last segment): " + ", ".join(f"{k} {v:.1f}" for k, v in t["terms"].items()))
    click.echo(f"  steps            {j['steps']:,} in {j['train_seconds']:.0f} s of training")
    click.echo(f"  peak memory      {j['peak_memory_gb']:.2f} GiB per device: " + ", ".join(
        f"{k} {v:.2f}" for k, v in p.memory["components"].items() if v))
    ev = j["eval_seconds"]
    click.echo(f"  eval seconds     flat {ev['flat']:.0f}, sliding {ev['sliding']:.0f}, ttt ({cfg.eval.ttt}) {ev['ttt']:.0f}"
               f"; this config runs {cfg.eval.mode}")
    click.echo(f"  pack seconds     {j['pack_seconds']:.0f} (GPTQ calibration {j['calib_seconds']:.0f})")
    if p.gap:
        click.echo("pgolf vs the records' implementation (--profile record), same config and hardware:")
        for r in p.gap:
            click.echo(f"  {r['term']:<18}{r['pgolf']:>12,.1f} vs {r['record']:>12,.1f}  {r['why']}")
    for w in p.warnings:
        click.echo(f"warning: {w}")
    for n in p.notes:
        click.echo(f"note: {n}")
    click.echo("model: rooflines per op class + per-kernel cost, memory by component, calibrated on the baseline "
               "and #1855 (docs/PLAN.md)")


@click.command("plan")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
@click.option("--hardware", default="8xh100", show_default=True, help="a name from `--hardware list`, or `list`")
@click.option("--profile", type=click.Choice(["pgolf", "record"]), default="pgolf", show_default=True,
              help="pgolf's implementation as it is, or the records' (the calibration's)")
@click.option("--technique", "techniques", multiple=True, metavar="NAME=VALUE",
              help="a records' technique for --profile record (docs/PLAN.md): doc_mask, fused_ce, seq_schedule, "
                   "short_doc_chunks, ngram_tilt (the pgolf profile reads their config keys)")
@click.option("--checkpoint", type=click.Path(exists=True), help="a .pgz artifact or checkpoint: its real packed size")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (docs/PLAN.md lists the keys)")
def plan(config, sets, hardware, profile, techniques, checkpoint, as_json) -> None:
    """Steps, time, memory and bytes of a config on some hardware, before paying for it."""
    from shared.plan import get_hardware, make_plan

    if hardware.strip().lower() == "list":
        _hardware_table(as_json)
        return
    hw = get_hardware(hardware)
    if config is None:
        raise PgolfError("pgolf plan needs a CONFIG (e.g. configs/record.toml), or --hardware list")
    cfg = load_config(config, sets)
    p = make_plan(cfg, hw, profile, tuple(techniques), checkpoint=checkpoint)
    if p.profile == "pgolf" and hw.kind == "gpu" and p.time["ms_per_step"] is not None:
        from shared.plan.predict import gap_to_record

        p.gap = gap_to_record(cfg, hw, p)
    if as_json:
        click.echo(json.dumps(p.as_json(), indent=2))
    else:
        _report(p, cfg)
