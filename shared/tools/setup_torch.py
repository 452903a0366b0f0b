"""Install the right PyTorch build for this machine (`make setup` runs it with the virtualenv's python).

    python shared/tools/setup_torch.py [--dry-run] [--version 2.13.0]

- Linux without an NVIDIA GPU: the CPU build from PyTorch's CPU wheel index
  (a plain `pip install torch` there pulls several GB of CUDA libraries). When
  that index cannot be reached (a machine with only a local package mirror),
  the default index instead, and it says so.
- Linux with a GPU (`nvidia-smi` on the PATH), macOS, anything else: the
  default index's build (CUDA on Linux, Metal/CPU on macOS).

It prints what it chose and why, then runs pip; `--dry-run` only prints the
commands. Standard library only: it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_VERSION = "2.13.0"  # the CPU build the project is tested with (Linux without a GPU)


@dataclass(frozen=True)
class Plan:
    kind: str                   # "linux-cpu" | "linux-gpu" | "macos" | "other"
    commands: list[list[str]]   # tried in order until one succeeds
    notes: list[str]            # what each command means, for the user


def machine_kind(system: str | None = None, has_gpu: bool | None = None) -> str:
    system = system or platform.system()
    if has_gpu is None:
        has_gpu = shutil.which("nvidia-smi") is not None
    if system == "Linux":
        return "linux-gpu" if has_gpu else "linux-cpu"
    return "macos" if system == "Darwin" else "other"


def index_reachable(url: str = CPU_INDEX, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/torch/", timeout=timeout) as r:  # noqa: S310 (a fixed https URL)
            return 200 <= r.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def plan(python: str, kind: str, cpu_index_reachable: bool, version: str = CPU_VERSION) -> Plan:
    """The pip commands for this machine kind, first choice first."""
    pip = [python, "-m", "pip", "install", "--quiet"]
    default = pip + [f"torch=={version}" if kind == "linux-cpu" else "torch"]
    if kind != "linux-cpu":
        return Plan(kind, [default], [f"{kind}: torch from the default package index"])
    if not cpu_index_reachable:
        return Plan(kind, [default], [f"linux-cpu: PyTorch's CPU index {CPU_INDEX} is unreachable: torch=={version} "
                                      "from the default package index (a local mirror's CPU wheel here; elsewhere "
                                      "check that it is not the CUDA build)"])
    return Plan(kind, [pip + [f"torch=={version}", "--index-url", CPU_INDEX], default],
                [f"linux-cpu: the CPU build of torch=={version} from PyTorch's CPU index {CPU_INDEX}",
                 f"linux-cpu: the CPU index failed: torch=={version} from the default package index instead"])


def install(p: Plan, run: Callable[[list[str]], int] = lambda cmd: subprocess.call(cmd),
            say: Callable[[str], None] = print) -> int:
    """Run the plan's commands until one succeeds; say which. Returns pip's exit code."""
    code = 1
    for cmd, note in zip(p.commands, p.notes, strict=True):
        say(f"setup: {note}")
        say("setup: " + " ".join(cmd[2:] if cmd[1:3] == ["-m", "pip"] else cmd))
        code = run(cmd)
        if code == 0:
            return 0
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the pip commands, install nothing")
    ap.add_argument("--version", default=CPU_VERSION, help="torch version of the Linux CPU build")
    args = ap.parse_args(argv)
    kind = machine_kind()
    p = plan(sys.executable, kind, index_reachable() if kind == "linux-cpu" else False, args.version)
    if args.dry_run:
        return install(p, run=lambda cmd: 0)
    return install(p)


if __name__ == "__main__":
    sys.exit(main())
