"""Test-only torchrun entry: `python -m cuda_train` with faults injected through the loop's hooks.

    torchrun ... -m tests.fault_entry [--fail-rank R --fail-step S] [--interrupt-step S]
                 [--rank-report DIR] --config CFG --out RUN

--fail-rank R: rank R raises before step S runs (default 1). --interrupt-step S:
each rank sends itself SIGINT before step S runs. --rank-report DIR: each rank
writes DIR/rank<r>.json with its step count and stop reason. Product code reads
none of this: the hooks are handed to `cuda_train.backend.train`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from pathlib import Path

import cuda_train.backend as backend
from shared.cli.train import backend_main
from shared.run.loop import Hooks


def hooks_from(opts: argparse.Namespace) -> Hooks:
    def before_step(step: int, session) -> None:
        if opts.fail_rank is not None and session.rank == opts.fail_rank and step + 1 == opts.fail_step:
            raise RuntimeError(f"injected failure on rank {session.rank} at step {step + 1}")
        if opts.interrupt_step is not None and step + 1 == opts.interrupt_step:
            os.kill(os.getpid(), signal.SIGINT)

    def on_stop(step: int, reason: str, session) -> None:
        if opts.rank_report:
            out = Path(opts.rank_report)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"rank{session.rank}.json").write_text(json.dumps({"rank": session.rank, "steps": step,
                                                                      "stop": reason}))

    return Hooks(before_step=before_step, on_stop=on_stop)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fail-rank", type=int)
    p.add_argument("--fail-step", type=int, default=1)
    p.add_argument("--interrupt-step", type=int)
    p.add_argument("--rank-report")
    opts, rest = p.parse_known_args(argv)
    backend.train = functools.partial(backend.train, hooks=hooks_from(opts))
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")
    backend_main("torch", rest)


if __name__ == "__main__":
    main(sys.argv[1:])
