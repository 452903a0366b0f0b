"""`pgolf pack` and `pgolf inspect`: make and audit the 16 MB artifact.

    pgolf pack RUN_DIR/checkpoint.safetensors --backend mlx -o model.pgz \\
        [--config FILE] [--set quant.mlp=int6 --set quant.gptq=true] \\
        [--budget 16000000 [--write-config FIT.toml [--overwrite]]] [--data DIR --tokenizer MODEL]
    pgolf inspect model.pgz [--json] [--backend torch]

`pack` quantises a checkpoint with the `[quant]` section saved in it (plus
`--set quant.*` overrides). GPTQ (`quant.gptq = true`), "frequency"
embedding steps (`quant.embed_steps`) and `--budget` need calibration
tokens, read from the *training* split of `--data` (default: the
checkpoint's `data.dir`). `--budget BYTES` makes the artifact plus the
counted code (the generated train_gpt.py, the same for both backends) fit: per-tensor
bit widths, then the LQER rank, then pruning of +-1 codes, whichever costs
the least measured loss (shared/artifact/budget.py); it prints what it did.
The code counted is that of the config that states the fit (the script bakes
it), so artifact + code <= BYTES for the config actually chosen.
`--write-config FIT.toml` writes that config (the checkpoint's, with the fit
in `quant.tensor_schemes`, `quant.lqer_rank` and `quant.prune_values`):
`pgolf pack --config FIT.toml` (no --budget) rebuilds the same bytes, and
`pgolf train --config FIT.toml` / the exported train_gpt.py pack that way.
`--config FILE` takes the `[quant]` section of FILE (its `[model]` must be
the checkpoint's); `--set quant.*` applies after it.

`-o RUN/model.pgz` onto a finished run's artifact (the folder holds summary.json) is refused
unless `--overwrite`, which also updates summary.json (artifact size and sha256; the packed
scores, which measured the old artifact, become null until `pgolf eval` measures the new one).
Both targets' folders are checked for writing before any packing.

`inspect` prints one row per tensor (scheme, bits, parameters and the bytes
of its payload compressed alone: the parts do not add up exactly to the
whole), the totals, bytes per parameter, the counted code bytes and the
headroom against the 16,000,000-byte cap; it exits with code 2 when over.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from shared.artifact.format import SIZE_CAP
from shared.core.config import Config, apply_overrides, parse_override
from shared.errors import PgolfError

BACKEND_CHOICE = click.Choice(["mlx", "torch"])


def _quant_overrides(cfg: Config, overrides: tuple[str, ...]) -> Config:
    for text in overrides:
        if parse_override(text)[0] != "quant":
            raise PgolfError(f"--set {text!r}: pack only takes quant.* overrides (the weights fix the rest)")
    return apply_overrides(cfg, overrides)


@click.command("pack")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--backend", required=True, type=BACKEND_CHOICE, help="Backend for calibration, loss and counted code.")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Artifact to write (e.g. model.pgz).")
@click.option("--set", "overrides", multiple=True, metavar="quant.KEY=VALUE", help="Override a [quant] setting.")
@click.option("--budget", type=int, default=None, help="Byte budget for artifact + counted code (e.g. 16000000).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (training split gives calibration tokens) [default: the checkpoint's data.dir].")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="SentencePiece .model [default: the checkpoint's data.tokenizer].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Take [quant] from this TOML (e.g. one --write-config wrote); its [model] must match.")
@click.option("--write-config", "write_config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --budget: write the fitted config here (atomic).")
@click.option("--overwrite", is_flag=True, help="Let --write-config replace an existing file, and -o replace a finished "
              "run's model.pgz (its summary.json is updated, the packed scores cleared).")
def pack_cmd(checkpoint: Path, backend: str, out: Path, overrides: tuple[str, ...], budget: int | None,
             data_dir: Path | None, tokenizer: Path | None, config_path: Path | None, write_config: Path | None,
             overwrite: bool) -> None:
    """Quantise and pack a checkpoint into an artifact."""
    from shared.artifact.format import pack, unpack, write_artifact
    from shared.core.spec import check_finite, check_params
    from shared.record.script import code_bytes
    from shared.run.rundir import load_checkpoint

    if write_config is not None:   # refuse before minutes of fitting, not after
        if budget is None:
            raise PgolfError("--write-config writes what --budget fits: add --budget BYTES")
        if write_config.exists() and not overwrite:
            raise PgolfError(f"{write_config} exists: pass --overwrite to replace it, or choose another file")
    for target, flag in ((out, "-o"), (write_config, "--write-config")):
        if target is not None:
            _check_writable(target, flag)
    run_summary = out.parent / "summary.json"
    replaces_run = out.exists() and run_summary.is_file()
    if replaces_run and not overwrite:
        raise PgolfError(f"{out} is the artifact of the run in {out.parent} (its summary.json describes it): pass "
                         "--overwrite to replace it (the summary's packed scores are then cleared until `pgolf eval` "
                         "measures the new artifact), or write elsewhere with -o")
    params, cfg, step = load_checkpoint(checkpoint)
    if cfg is None:
        raise PgolfError(f"{checkpoint} has no embedded config: pack a checkpoint written by `pgolf train`")
    check_params(params, cfg.model, str(checkpoint))
    check_finite(params, str(checkpoint))
    if config_path is not None:
        cfg = _quant_from_file(cfg, config_path, checkpoint)
    cfg = _quant_overrides(cfg, overrides)

    def counted(c: Config) -> int:
        # Both backends count the same generated train_gpt.py (shared/record/script.py; tests/test_record.py)
        return code_bytes(backend, c)

    if budget is not None and budget <= counted(cfg):
        raise PgolfError(f"--budget {budget:,} does not even cover the {counted(cfg):,} bytes of counted code")

    hessians = counts = None
    if cfg.quant.calibrates or budget is not None:
        from shared.artifact.budget import fit_budget, sensitivity_batch
        from shared.artifact.calibration import calibration_batch, calibration_counts
        from shared.data.dataset import open_dataset
        from shared.run.backends import get_backend

        be = get_backend(backend)
        ds = open_dataset(data_dir or cfg.data.dir, tokenizer or cfg.data.tokenizer, cfg.model.vocab_size)
        x, y = calibration_batch(ds, cfg)
        counts = calibration_counts(x, y, cfg.model.vocab_size)
        click.echo(f"calibration: {x.size:,} tokens from the training split of {ds.data_dir}")
        if cfg.quant.gptq:
            hessians = be.collect_hessians(params, cfg, x)
        if budget is not None:
            sx, sy = sensitivity_batch(x, y, cfg)
            click.echo(f"budget: {budget:,} bytes for the artifact plus the counted code of the fitted config "
                       f"({counted(cfg):,} bytes before fitting, the larger backend's)")
            base = cfg
            cfg = fit_budget(params, cfg, budget, lambda p: be.batch_loss(p, base, sx, sy), hessians=hessians,
                             log=click.echo, token_counts=counts, code_size=counted)
            click.echo(_fit_summary(cfg))
    from shared.core.progress import Progress, activate

    with Progress("pack: quantise", total=len(params), unit="tensors", min_s=5.0) as bar, activate(bar):
        blob = pack(params, cfg, hessians, token_counts=counts)
    unpack(blob, source=str(out))  # the reader must accept what we wrote
    if budget is not None and len(blob) + counted(cfg) > budget:   # fit_budget measured exactly this: a bug if so
        raise PgolfError(f"internal: the fitted artifact ({len(blob):,}) + code ({counted(cfg):,}) exceeds {budget:,}")
    code = code_bytes(backend, cfg)   # of the config packed (the fit changes the script it bakes)
    if replaces_run:
        from shared.run.rundir import claim_run_dir

        with claim_run_dir(out.parent, resume=True):  # not while a run trains into the folder
            write_artifact(out, blob)
            _repacked_summary(run_summary, blob, code, step)
        click.echo(f"{run_summary}: artifact fields updated, q_val_loss/q_val_bpb cleared (they scored the "
                   f"replaced artifact); measure the new one with `pgolf eval {out}`")
    else:
        write_artifact(out, blob)
    if write_config is not None:
        from shared.core.config import to_toml
        from shared.files import atomic_write_bytes

        head = (f"# Written by `pgolf pack --budget {budget}` from {checkpoint} (step {step}): the checkpoint's\n"
                f"# config with the fit in [quant] (tensor_schemes, lqer_rank, prune_values). `pgolf pack --config`\n"
                f"# of this file rebuilds {out.name} ({len(blob):,} bytes + {counted(cfg):,} bytes of code).\n\n")
        atomic_write_bytes(write_config, (head + to_toml(cfg)).encode("utf-8"))
        click.echo(f"wrote {write_config}: the fitted config")
    if counts is not None and cfg.quant.embed_steps == "frequency":
        from shared.artifact.format import read_quantized
        from shared.core.spec import param_table

        table = param_table(cfg.model)
        for name, t in read_quantized(blob, str(out))[1].items():
            if t.scale is not None and table[name].qclass == "embed":
                steps = t.scale.astype(np.float64)
                click.echo(f"{name}: frequency steps {steps.min():.3g} (most frequent token) to {steps.max():.3g} "
                           f"({int((counts == 0).sum())} of {len(counts)} tokens unseen in calibration)")
    total = len(blob) + code
    from shared.artifact.format import pipeline_of

    click.echo(f"compression: {pipeline_of(blob)} (quant.compressor={cfg.quant.compressor}); "
               f"LQER on {sum(1 for t in read_quantized_lqer(blob))} tensors; {cfg.quant.prune_values:,} +-1 codes pruned")
    click.echo(f"wrote {out}: {len(blob):,} artifact bytes + {code:,} code bytes ({backend}) = {total:,} "
               f"of {SIZE_CAP:,} ({'within' if total <= SIZE_CAP else 'OVER'} the cap), checkpoint step {step}")


def _check_writable(path: Path, flag: str) -> None:
    """A target in a folder this process cannot write is refused before any packing or fitting."""
    import os

    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PgolfError(f"{flag} {path}: the folder {folder} cannot be written; choose a writable location")


def _repacked_summary(path: Path, blob: bytes, code: int, step: int) -> None:
    """A run's summary.json after `pack --overwrite` replaced its model.pgz: the artifact's figures are the new
    file's; the packed scores belonged to the old one, so they are cleared (null), never left stale."""
    import hashlib

    from shared.artifact.format import SIZE_CAP
    from shared.files import atomic_write_bytes
    from shared.run.rundir import strict_json

    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PgolfError(f"{path}: unreadable JSON ({e}); the new artifact was written") from None
    summary.update(artifact_bytes=len(blob), code_bytes=code, total_bytes=len(blob) + code,
                   artifact_sha256=hashlib.sha256(blob).hexdigest(), within_cap=len(blob) + code <= SIZE_CAP,
                   q_val_loss=None, q_val_bpb=None, repacked_from_step=step)
    atomic_write_bytes(path, (strict_json(summary, indent=2, sort_keys=True) + "\n").encode())


def _quant_from_file(cfg: Config, path: Path, checkpoint: Path) -> Config:
    """`cfg` with the [quant] section of the config file at `path` (whose model must be the checkpoint's)."""
    from dataclasses import replace

    from shared.core.config import load_config

    other = load_config(path)
    if other.model != cfg.model:
        diff = [k for k in vars(cfg.model) if getattr(cfg.model, k) != getattr(other.model, k)]
        raise PgolfError(f"{path}: its [model] differs from {checkpoint}'s (model.{diff[0]}): pass the config "
                         "that was fitted for this checkpoint")
    return replace(cfg, quant=other.quant).validate()


def _fit_summary(cfg: Config) -> str:
    """What budget mode chose, as the config states it."""
    from collections import Counter

    q = cfg.quant
    per = q.tensor_scheme_map()
    widths = ", ".join(f"{s} x{c}" for s, c in sorted(Counter(per.values()).items())) or "none (the class schemes)"
    return (f"budget: fit: quant.tensor_schemes overrides {len(per)} tensors ({widths}); "
            f"quant.lqer_rank={q.lqer_rank} on {q.lqer_tensors} tensors; quant.prune_values={q.prune_values:,}")


def read_quantized_lqer(blob: bytes) -> list[str]:
    """Names of the tensors that carry an LQER correction."""
    from shared.artifact.format import read_quantized

    return [n for n, t in read_quantized(blob)[1].items() if t.lqer is not None]


def inspect_report(blob: bytes, backend: str, source: str) -> dict:
    """The inspect figures as a JSON-able dict (keys are a contract, see the module docstring)."""
    from shared.artifact.format import pipeline_of, read_quantized, tensor_bytes
    from shared.record.script import code_bytes

    cfg, qts = read_quantized(blob, source)
    tensors = []
    for name, t in qts.items():
        n = int(np.prod(t.shape)) if t.shape else 1
        tensors.append({"name": name, "shape": list(t.shape), "scheme": t.scheme, "bits": t.bits, "params": n,
                        "compressed_bytes": tensor_bytes(t, cfg.quant.zstd_level),
                        "lqer_rank": t.lqer.rank if t.lqer is not None else 0})
    params = sum(t["params"] for t in tensors)
    code = code_bytes(backend, cfg)  # the train_gpt.py of this config
    total = len(blob) + code
    return {
        "artifact_bytes": len(blob),
        "code_bytes": code,
        "code_backend": backend,
        "total_bytes": total,
        "params": params,
        "bytes_per_param": len(blob) / max(params, 1),
        "headroom": SIZE_CAP - total,
        "size_cap": SIZE_CAP,
        "tensor_bytes_note": "compressed_bytes: each tensor's payload compressed alone with the artifact's zstd level",
        "format_version": int(blob[4]),
        "pipeline": pipeline_of(blob),
        "prune_values": cfg.quant.prune_values,
        "tensors": tensors,
    }


@click.command("inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--backend", type=BACKEND_CHOICE, default="torch", show_default=True,
              help="Kept for compatibility: both backends count the same generated train_gpt.py.")
def inspect_cmd(artifact: Path, as_json: bool, backend: str) -> None:
    """Per-tensor sizes, totals and headroom of an artifact (exit 2 when over 16,000,000 bytes)."""
    if not artifact.is_file():
        raise PgolfError(f"{artifact} not found: pass an artifact written by `pgolf pack` or `pgolf train`")
    r = inspect_report(artifact.read_bytes(), backend, str(artifact))
    if as_json:
        click.echo(json.dumps(r, indent=2, sort_keys=True))
    else:
        click.echo(f"{'tensor':34s} {'scheme':6s} {'bits':>4s} {'shape':>12s} {'params':>10s} {'bytes*':>10s} {'B/param':>7s}")
        for t in r["tensors"]:
            shape = "x".join(str(s) for s in t["shape"])
            click.echo(f"{t['name']:34s} {t['scheme']:6s} {t['bits']:>4d} {shape:>12s} {t['params']:>10,} "
                       f"{t['compressed_bytes']:>10,} {t['compressed_bytes'] / t['params']:>7.3f}")
        click.echo("* each tensor's payload compressed alone; the artifact compresses them together")
        click.echo(f"params          {r['params']:>12,}")
        click.echo(f"artifact bytes  {r['artifact_bytes']:>12,}  ({r['bytes_per_param']:.4f} bytes/param; format "
                   f"v{r['format_version']}, {r['pipeline']} pipeline)")
        lq = [t["name"] for t in r["tensors"] if t["lqer_rank"]]
        if lq:
            click.echo(f"LQER            {', '.join(lq)}")
        click.echo(f"code bytes      {r['code_bytes']:>12,}  ({backend} backend)")
        click.echo(f"total bytes     {r['total_bytes']:>12,}  of {SIZE_CAP:,}")
        click.echo(f"headroom        {r['headroom']:>12,}")
    if r["headroom"] < 0:
        click.echo(f"error: {artifact} is {-r['headroom']:,} bytes over the {SIZE_CAP:,}-byte cap", err=True)
        sys.exit(2)


pack = pack_cmd
inspect = inspect_cmd

__all__ = ["pack", "inspect", "inspect_report"]
