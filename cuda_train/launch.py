"""`pgolf train --backend torch --nproc N`: start torchrun on this machine and wait for it.

    python -m torch.distributed.run --standalone --nproc_per_node=N -m cuda_train --config RUN/.torchrun.toml --out RUN

The resolved config goes to a file of its own in the run directory, which every
rank reads; rank 0 writes config.toml itself once its checks pass (so a resume
that fails its checks leaves config.toml alone). The calling process owns the
run folder (shared/run/rundir.py `claim_run_dir`) and tells its workers so
(`OWNER_ENV`).

Nothing outlives its launcher: torchrun's agent and every worker ask the kernel
for SIGKILL when their parent dies (Linux `prctl(PR_SET_PDEATHSIG)`,
`die_with_parent`), so killing this process or the agent ends the workers
instead of leaving them training into a run reported as failed. torchrun
starts workers in sessions of their own, so a process-group kill would not
reach them; elsewhere than Linux this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.core.config import Config, to_toml
from shared.errors import PgolfError
from shared.files import atomic_write_bytes
from shared.run.rundir import OWNER_ENV, SUMMARY

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_CONFIG = ".torchrun.toml"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(expected_parent: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """`parent_death_signal`, closing the race where the parent is already gone when it is set:
    then this process sends `sig` to itself. `expected_parent`: the PID the parent should have
    (known before a fork); without it, being re-parented to PID 1 counts as orphaned."""
    ok = parent_death_signal(sig)
    parent = os.getppid()
    if ok and (parent != expected_parent if expected_parent is not None else parent == 1):
        os.kill(os.getpid(), sig)
    return ok


def torchrun(cfg: Config, run_dir: str | Path, resume: bool, nproc: int) -> dict:
    """Run `python -m cuda_train` under torchrun with `nproc` ranks on this machine; return its summary."""
    if cfg.train.grad_accum % nproc:
        raise PgolfError(f"train.grad_accum={cfg.train.grad_accum} is not divisible by --nproc {nproc}: "
                         f"set train.grad_accum to a multiple of {nproc}")
    run_dir = Path(run_dir)
    config_file = atomic_write_bytes(run_dir / LAUNCH_CONFIG, to_toml(cfg).encode())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cuda_train", "--config", str(config_file), "--out", str(run_dir)]
    if resume:
        cmd += ["--resume", str(run_dir)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env[OWNER_ENV] = str(os.getpid())  # the workers run under this process's claim on run_dir
    me = os.getpid()
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: die_with_parent(me))
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached torchrun and its workers too: let them save and exit instead of killing them.
        code = proc.wait()
        raise KeyboardInterrupt from None
    finally:
        config_file.unlink(missing_ok=True)
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise PgolfError(f"torchrun with {nproc} ranks failed (exit code {code}); the rank errors are above "
                         f"and the log is {run_dir / 'train.log'}")
    return json.loads((run_dir / SUMMARY).read_text())
