"""`pgolf import`: weights saved by the challenge's reference scripts -> a pgolf checkpoint.

    pgolf import final_model.pt --from torch-ref --config configs/baseline.toml -o ref/checkpoint.safetensors
    pgolf import logs/RUN_mlx_model.npz --from mlx-ref --config configs/baseline.toml -o ref/checkpoint.safetensors
    pgolf eval --backend torch ref/checkpoint.safetensors --data DIR --tokenizer MODEL

Writes the checkpoint (float32, the config inside, step 0) and the resolved
config as `config.toml` beside it, so `pgolf eval`, `pack` and `parity` take it
like a checkpoint of `pgolf train`. `--config` must describe the reference
run's shape (docs/REFERENCE.md maps the scripts' environment variables to
config keys). The mapping and the mlx-ref reparametrisation live in
shared/tools/reference.py. Existing files are refused unless `--overwrite`.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from shared.errors import PgolfError


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--from", "source", required=True, metavar="torch-ref|mlx-ref",
              help="torch-ref: train_gpt.py's final_model.pt; mlx-ref: train_gpt_mlx.py's <RUN_ID>_mlx_model.npz.")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="TOML config whose [model] is the reference run's shape (e.g. configs/baseline.toml).")
@click.option("--set", "overrides", multiple=True, metavar="section.key=value", help="Override a config key.")
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
              help="Checkpoint to write (e.g. ref/checkpoint.safetensors); config.toml goes beside it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint / config.toml there.")
def import_cmd(path: Path, source: str, config_path: Path, overrides: tuple[str, ...], out: Path,
               overwrite: bool) -> None:
    """Import a reference script's trained weights as a pgolf checkpoint."""
    from shared.core.config import load_config, to_toml
    from shared.files import atomic_write_bytes
    from shared.run.rundir import CONFIG, write_checkpoint
    from shared.tools.reference import MLX_REF_RMS_EPS, check_source, import_reference

    check_source(source)
    if out.suffix != ".safetensors":
        raise PgolfError(f"-o {out}: name the checkpoint file to write, e.g. {out / 'checkpoint.safetensors'}")
    config_out = out.parent / CONFIG
    for target in (out, config_out):
        if target.exists() and not overwrite:
            raise PgolfError(f"{target} already exists: pass --overwrite to replace it, or choose another -o")
    cfg = load_config(config_path, overrides)
    params = import_reference(path, source, cfg)
    write_checkpoint(out, params, cfg, step=0)
    atomic_write_bytes(config_out, to_toml(cfg).encode())
    n = sum(int(np.prod(v.shape)) for v in params.values())
    click.echo(f"wrote {out}: {len(params)} tensors, {n:,} parameters from {path} ({source}); config in {config_out}")
    if source == "mlx-ref":
        click.echo("mlx-ref: negated the second half of every q/k head (train_gpt_mlx.py's RoPE direction -> "
                   f"pgolf's); its RMSNorm eps {MLX_REF_RMS_EPS:g} becomes pgolf's 1.19e-07 (docs/REFERENCE.md)")
