"""The `pgolf` command line: phases a user recognises, knobs in the config.

    pgolf data sample|build|download|audit   datasets and tokenizers   (shared/cli/data.py)
    pgolf train --backend mlx|torch          train, pack, evaluate     (shared/cli/train.py)
    pgolf eval --backend mlx|torch           BPB of an artifact or checkpoint
    pgolf pack / inspect                     the 16 MB artifact        (shared/cli/pack.py)
    pgolf parity                             prove both backends agree (shared/cli/parity.py)
    pgolf plan                               time, memory, bytes before a run (shared/cli/plan.py)
    pgolf import --from torch-ref|mlx-ref    the reference scripts' weights (shared/cli/interop.py)
    pgolf record export|check / seeds        a record submission       (shared/cli/record.py)
    pgolf sweep / ablate / compare / plot    the research loop         (shared/cli/research.py)

Each command lives in its own module, imported only when that command runs
(as mlx-lm's CLI does), so a training run loads none of the tools' code and
`pgolf --help` loads no framework. `run` turns a `PgolfError` into one line
on stderr and exit code 2; the backends' `python -m` entry points use it too.
"""

from __future__ import annotations

import importlib
import sys

import click

from shared import __version__
from shared.errors import PgolfError

# command name -> (module, attribute, one-line help shown by `pgolf --help` without importing it)
COMMANDS = {
    "data": ("shared.cli.data", "data", "Datasets and tokenizers: sample, build, download, audit."),
    "train": ("shared.cli.train", "train", "Train a model, pack it into RUN_DIR/model.pgz and evaluate it."),
    "eval": ("shared.cli.train", "evaluate", "Validation loss and bits per byte of an artifact or checkpoint."),
    "pack": ("shared.cli.pack", "pack", "Quantize and pack a checkpoint into an artifact."),
    "inspect": ("shared.cli.pack", "inspect", "Per-tensor bytes of an artifact and its headroom under the cap."),
    "parity": ("shared.cli.parity", "parity", "Check that both backends export, evaluate and train a checkpoint identically."),
    "import": ("shared.cli.interop", "import_cmd", "Import train_gpt.py / train_gpt_mlx.py weights as a pgolf checkpoint."),
    "plan": ("shared.cli.plan", "plan", "Steps, time, memory and bytes of a config on some hardware, before paying for it."),
    "gpu-check": ("shared.cli.gpu", "gpu_check", "First command on a GPU pod: environment, correctness, speed and MFU."),
    "record": ("shared.cli.record", "record", "Records: export runs as a submission folder, check one as a reviewer would."),
    "seeds": ("shared.cli.record", "seeds", "Train one config for several seeds, then mean, std and significance."),
    "sweep": ("shared.cli.research", "sweep", "Train a grid of configs over seeds (resumable): one table, Welch verdicts."),
    "ablate": ("shared.cli.research", "ablate", "Turn each technique back to its baseline value, one at a time, and compare."),
    "compare": ("shared.cli.research", "compare", "Side-by-side table of runs and sweeps, with a seed-aware verdict."),
    "plot": ("shared.cli.research", "plot", "Loss and BPB curves, LR scale and bytes per tensor class as a PNG (extra [plot])."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported when they are invoked (or their --help is asked)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pgolf")
def cli() -> None:
    """pgolf: train Parameter Golf models on a laptop (MLX) or 8xH100 (PyTorch) from one spec."""


def run(command: click.Command, argv: list[str] | None, prog_name: str = "pgolf") -> None:
    """Invoke a click command; user errors become one `error: ...` line and exit code 2."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except PgolfError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # a bad flag or value: one line too, naming the command's help
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `pgolf data`: the help is the answer
            e.show()
            sys.exit(2)
        where = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        click.echo(f"error: {e.format_message().rstrip('.')}{where}", err=True)
        sys.exit(2)
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
    finally:  # a `--json` command silenced progress for itself only (tests run many commands in one process)
        from shared.core.progress import set_quiet

        set_quiet(False)


def main(argv: list[str] | None = None) -> None:
    run(cli, argv)
