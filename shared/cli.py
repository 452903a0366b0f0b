"""The `pgolf` command line: phases a user recognises, knobs in the config.

    pgolf data sample|build|download|audit   datasets and tokenizers
    pgolf train --backend mlx|torch          train, pack, evaluate
    pgolf eval --backend mlx|torch           BPB of an artifact or checkpoint
    pgolf pack / inspect                     the 16 MB artifact
    pgolf parity                             prove both backends agree

Each command lives in its own module; this file only assembles them and
turns a `PgolfError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click

from shared import __version__
from shared.errors import PgolfError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pgolf")
def cli() -> None:
    """pgolf: train Parameter Golf models on a laptop (MLX) or 8xH100 (PyTorch) from one spec."""


def _register() -> None:
    from shared.cli_data import data
    from shared.cli_pack import inspect, pack
    from shared.cli_parity import parity
    from shared.cli_train import evaluate, train

    cli.add_command(data)
    cli.add_command(train)
    cli.add_command(evaluate)
    cli.add_command(pack)
    cli.add_command(inspect)
    cli.add_command(parity)


_register()


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="pgolf", standalone_mode=False)
    except PgolfError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:  # a folder that cannot be written, a full disk: the file and the reason, no traceback
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
