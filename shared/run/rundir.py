"""The run directory both trainers write, and the checkpoint files in it.

    RUN_DIR/config.toml              resolved config
    RUN_DIR/train.log                human-readable log (opens with provenance)
    RUN_DIR/metrics.jsonl            one JSON object per log line
    RUN_DIR/checkpoint.safetensors   weights: canonical names, float32 (shared/core/spec.py)
    RUN_DIR/train_state.safetensors  optimizer buffers + step, data position, clock
    RUN_DIR/model.pgz                packed artifact (shared/artifact/format.py)
    RUN_DIR/summary.json             final figures

    RUN_DIR/.pgolf.lock              the PID of the process that owns the run (while it runs)

Every file is written atomically (temp file + rename), so an interrupted
write never leaves a half file behind; a write that fails (a full disk, a
file-size limit, a read-only folder) is one `PgolfError` naming the file,
whatever the library underneath raised.

One process owns a run folder at a time (`claim_run_dir`): an exclusive
`flock` on `.pgolf.lock`, which holds the owner's PID for the message a
second process gets. The kernel drops the lock when its process dies, so a
lock file left by a dead process is simply taken over. A folder that already
holds a run (`existing_run_files`) is refused unless the caller resumes it or
asks to overwrite it (`--overwrite` removes the old run's files first, so no
log or metric of the old run mixes with the new one). The training loop takes
the same lock (`run_dir_held`) when a trainer is called directly from Python.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from shared.core.config import Config, from_toml_text, to_toml
from shared.errors import PgolfError
from shared.files import _UMASK, atomic_write, atomic_write_bytes, write_failed  # noqa: F401  (re-exported)

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.toml"
TRAIN_STATE = "train_state.safetensors"
ARTIFACT = "model.pgz"
SUMMARY = "summary.json"
LOCK = ".pgolf.lock"
# Set by a launcher (cuda_train/launch.py) for the processes it starts into a folder it owns: its PID.
OWNER_ENV = "PGOLF_RUN_OWNER"
LOG = "train.log"
METRICS = "metrics.jsonl"
# The files one run writes: their presence means the folder holds a (finished or partial) run.
RUN_FILES = (CONFIG, LOG, METRICS, CHECKPOINT, TRAIN_STATE, ARTIFACT, SUMMARY)
SUMMARY_KEYS = (
    "backend", "val_loss", "val_bpb", "q_val_loss", "q_val_bpb", "artifact_bytes", "code_bytes",
    "total_bytes", "artifact_sha256", "params", "steps", "train_tokens", "train_seconds", "tokens_per_second",
)


def save_tensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Path:
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(arrays, str(p), metadata=metadata), (OSError, SafetensorError))


def load_tensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path} not found: pass a checkpoint.safetensors written by `pgolf train`")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise PgolfError(f"{path} is not a readable safetensors file ({e}); re-save or re-train it") from None


def save_checkpoint(run_dir: Path, params: dict[str, np.ndarray], cfg: Config, step: int) -> Path:
    """Weights alone, float32, with the config inside: loadable by either backend."""
    return write_checkpoint(run_dir / CHECKPOINT, params, cfg, step)


def write_checkpoint(path: str | Path, params: dict[str, np.ndarray], cfg: Config, step: int) -> Path:
    """The checkpoint format at any path (`pgolf import` writes one outside a run directory)."""
    meta = {"format": "pgolf-checkpoint", "step": str(step), "config": to_toml(cfg)}
    return save_tensors(path, {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}, meta)


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], Config | None, int]:
    """Weights, the config saved with them (if any) and their step."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    tensors, meta = load_tensors(path)
    cfg = from_toml_text(meta["config"], source=f"{path} (embedded config)") if "config" in meta else None
    return tensors, cfg, int(meta.get("step", 0))


def save_train_state(run_dir: Path, tensors: dict[str, np.ndarray], state: dict[str, Any]) -> Path:
    """Optimizer buffers (any names) plus a JSON-able dict: step, data position, clock, RNG."""
    if not tensors:  # safetensors cannot write an empty file
        tensors = {"__empty__": np.zeros(1, dtype=np.float32)}
    return save_tensors(run_dir / TRAIN_STATE, tensors, {"state": json.dumps(state, sort_keys=True)})


STATE_KEYS = ("backend", "config", "step")


def load_train_state(run_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = run_dir / TRAIN_STATE
    tensors, meta = load_tensors(path)
    tensors.pop("__empty__", None)
    try:
        state = json.loads((meta or {})["state"])
    except (KeyError, TypeError, json.JSONDecodeError):
        state = None
    if not isinstance(state, dict):
        raise PgolfError(f"{path} holds no readable resume state: it was not written by `pgolf train`; "
                         "start a new run with --out")
    return tensors, state


MODEL_PREFIX = "model/"
# What fixes a run's trajectory: a resume must not change any of it.
TRAJECTORY_KEYS = ("seed", "batch_tokens", "seq_len", "grad_accum")


def save_resume_state(run_dir: Path, weights: dict[str, np.ndarray], opt_tensors: dict[str, np.ndarray],
                      state: dict[str, Any], cfg: Config) -> Path:
    """Everything `--resume` needs in ONE atomically written file: weights, optimizer buffers, and
    step / data position / clock / RNG. Written before checkpoint.safetensors, so a crash between
    the two writes leaves a consistent resume point."""
    tensors = {MODEL_PREFIX + k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    tensors.update(opt_tensors)
    return save_train_state(run_dir, tensors, {**state, "config": to_toml(cfg)})


def load_resume_state(run_dir: Path, cfg: Config, backend: str
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(weights, optimizer tensors, state) of the last save, after checking that `cfg` continues it."""
    where = run_dir / TRAIN_STATE
    if not where.is_file():
        raise PgolfError(f"{where} not found: nothing to resume in {run_dir} (no checkpoint was saved yet?); "
                         f"start over with `pgolf train --out {run_dir} --overwrite` (or set train.checkpoint_every)")
    tensors, st = load_train_state(run_dir)
    check_resume_state(run_dir, st, cfg, backend)
    weights = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    opt = {k: v for k, v in tensors.items() if not k.startswith(MODEL_PREFIX)}
    return weights, opt, st


def check_resume_state(run_dir: Path, st: dict[str, Any], cfg: Config, backend: str) -> None:
    """The saved state `st` can be continued by `cfg` on `backend` (or a one-line error saying why not)."""
    where = run_dir / TRAIN_STATE
    if missing := [k for k in STATE_KEYS if k not in st]:
        raise PgolfError(f"{where} lacks {', '.join(missing)} in its resume state: it was not written by "
                         "`pgolf train`; start a new run with --out")
    if st.get("backend") != backend:
        raise PgolfError(f"{where} was written by the {st.get('backend')} backend: resume it with "
                         f"--backend {st.get('backend')} (optimizer state does not carry across backends)")
    saved = from_toml_text(st["config"], source=str(where))
    if saved.model != cfg.model:
        raise PgolfError(f"{where}: the [model] section differs from the run's; resume with its config.toml")
    for key in TRAJECTORY_KEYS:
        if getattr(saved.train, key) != getattr(cfg.train, key):
            raise PgolfError(f"{where}: train.{key} was {getattr(saved.train, key)}, now {getattr(cfg.train, key)}; "
                             "a resumed run must keep it (start a new run to change it)")
    if Path(saved.data.dir).resolve() != Path(cfg.data.dir).resolve():
        raise PgolfError(f"{where}: data.dir was {saved.data.dir}, now {cfg.data.dir}; resume on the same data")


def resume_state_meta(run_dir: Path) -> dict[str, Any] | None:
    """The resume state's JSON (step, clock, config, backend) without reading its tensors; None if unreadable."""
    path = Path(run_dir) / TRAIN_STATE
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            state = json.loads((f.metadata() or {})["state"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a log opens with: code version, libraries, machine."""
    info = {
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info.update(extra or {})
    return info


class RunDir:
    """Logging and files of one run. Only the main rank writes (`is_main`)."""

    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)

    def _append(self, name: str, line: str) -> None:
        where = self.path / name
        try:
            with open(where, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            raise write_failed(where, e) from None

    def log(self, msg: str, console: bool = True) -> None:
        if not self.is_main:
            return
        if console:
            print(msg, flush=True)
        self._append(LOG, msg)

    def metrics(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        self._append(METRICS, strict_json(record, sort_keys=True))

    def log_step(self, step: int, iterations: int, loss: float, lr_scale: float, tokens_per_second: float,
                 elapsed: float, val=None) -> str:
        """One training log line (metrics.jsonl record + train.log line), the same for both trainers."""
        rec = {"step": step, "train_loss": loss, "lr_scale": lr_scale, "tokens_per_second": tokens_per_second,
               "elapsed": elapsed}
        line = (f"step {step}/{iterations} train_loss {loss:.4f} lr_scale {lr_scale:.3f} "
                f"tok/s {tokens_per_second:,.0f} elapsed {elapsed:.1f}s")
        if val is not None:
            rec.update(val_loss=val.val_loss, val_bpb=val.val_bpb)
            line += f" val_loss {val.val_loss:.4f} val_bpb {val.val_bpb:.4f}"
        self.metrics(rec)
        self.log(line, console=False)
        return line

    def write_config(self, cfg: Config) -> None:
        if self.is_main:
            atomic_write_bytes(self.path / CONFIG, to_toml(cfg).encode())

    def write_summary(self, summary: dict[str, Any]) -> None:
        missing = [k for k in SUMMARY_KEYS if k not in summary]
        if missing:
            raise ValueError(f"summary is missing {missing}")
        if self.is_main:
            atomic_write_bytes(self.path / SUMMARY, (strict_json(summary, indent=2, sort_keys=True) + "\n").encode())


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON that every parser reads: a NaN or infinity becomes null (json.dumps would write `NaN`)."""
    return json.dumps(_finite_or_null(obj), allow_nan=False, **kwargs)


# ----------------------------------------------------------------------------- do the run's files agree?

SEGMENT_START = " | git_sha="   # in the first line of each training segment ("training RUN | ..." / "resuming ...")
FINISHED_LINE = "final_pgz_roundtrip_exact "  # the last score line finish_run writes


def saved_step(path: Path) -> int | None:
    """The step recorded in a checkpoint's or resume state's metadata (None when absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
        if "step" in meta:
            return int(meta["step"])
        return int(json.loads(meta["state"])["step"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def read_summary(path: Path) -> dict | None:
    try:
        data = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def last_segment(log_text: str) -> list[str]:
    """The lines of the log's last training segment (from its last start line on)."""
    lines = log_text.splitlines()
    starts = [i for i, line in enumerate(lines) if SEGMENT_START in line]
    return lines[starts[-1]:] if starts else lines


def run_disagreements(path: str | Path) -> list[str]:
    """What keeps `path` from being a finished run whose files describe the same step and artifact:
    summary.json present and scored, model.pgz its artifact (sha256), the checkpoint and resume state at
    its step, and the log's last segment finished with that artifact. Empty: the files agree."""
    import hashlib

    path = Path(path)
    summary = read_summary(path)
    if summary is None:
        return [f"{path / SUMMARY} is missing or unreadable: the run did not finish"]
    problems = []
    steps = summary.get("steps")
    artifact = path / ARTIFACT
    if not artifact.is_file():
        problems.append(f"{artifact} is missing")
    elif hashlib.sha256(artifact.read_bytes()).hexdigest() != summary.get("artifact_sha256"):
        problems.append(f"{artifact} is not the artifact {SUMMARY} describes (its sha256 differs)")
    for name in (CHECKPOINT, TRAIN_STATE):
        at = saved_step(path / name)
        if (path / name).is_file() and at != steps:
            problems.append(f"{path / name} is at step {at}, {SUMMARY} says {steps}")
    try:
        segment = last_segment((path / LOG).read_text(encoding="utf-8", errors="replace"))
    except OSError:
        segment = None
    if segment is None:
        problems.append(f"{path / LOG} is missing")
    elif not any(line.startswith(FINISHED_LINE.strip()) for line in segment):
        problems.append(f"{path / LOG}: its last segment did not finish (no final score after its last start line)")
    else:
        sizes = [line for line in segment if line.startswith("Serialized model pgz:")]
        if sizes and sizes[-1].split(":", 1)[1].split()[0] != str(summary.get("artifact_bytes")):
            problems.append(f"{path / LOG}: its artifact size ({sizes[-1].split(':', 1)[1].strip()}) is not "
                            f"{SUMMARY}'s {summary.get('artifact_bytes')} bytes")
    return problems


def finished_run_message(path: str | Path, cfg: Config, backend: str) -> str | None:
    """For `--resume` of a finished run whose files agree: what `cfg`'s caps leave to do. A message when
    nothing (the caps it stopped at are unchanged); None when a larger cap lets it train on, or when
    the run is not finished (a resume then completes it)."""
    from shared.core.schedule import train_seconds

    path = Path(path)
    if run_disagreements(path):
        return None
    state = resume_state_meta(path)
    try:
        step, elapsed = int(state["step"]), float(state["elapsed"])
    except (KeyError, TypeError, ValueError):
        return None
    t = cfg.train
    budget = train_seconds(t)
    by_steps, by_clock = step >= t.iterations, budget > 0 and elapsed >= budget
    if not (by_steps or by_clock):
        return None  # it trains on: the trainer checks the state (on every rank)
    check_resume_state(path, state, cfg, backend)  # "nothing to do" only for a resume that could run
    raise_ = []
    if by_steps:
        raise_.append(f"--set train.iterations={max(2 * step, step + 1)}")
    if by_clock:
        raise_.append(f"--set train.max_seconds={t.max_seconds + max(budget, 1.0):g}")
    cap = " and ".join(([f"train.iterations={t.iterations}"] if by_steps else [])
                       + ([f"train.max_seconds={t.max_seconds:g} ({elapsed:.1f}s trained)"] if by_clock else []))
    return (f"{path} is a finished run: step {step}, stopped by {cap}; its checkpoint, model.pgz, summary.json and "
            f"log agree. Nothing to do. To train on, resume with a larger cap: {' '.join(raise_)}")


@contextlib.contextmanager
def terminate_as_exit():
    """SIGTERM (and SIGHUP) end the process through Python's exit path, so `with` blocks (the run lock)
    are left properly; the training loop installs its own save-then-exit handler while it trains."""
    import signal

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = {}
    try:
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


# ----------------------------------------------------------------------------- run ownership

def existing_run_files(path: str | Path) -> list[str]:
    """The run files (RUN_FILES) already in `path`: non-empty means it holds a finished or partial run."""
    path = Path(path)
    return [name for name in RUN_FILES if (path / name).exists()] if path.is_dir() else []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _lock_holder(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    return f"process {text}" if text.isdigit() else "another process"


# The run folders this process holds (resolved path -> claim): the loop does not claim them twice.
_HELD: dict[Path, RunClaim] = {}


class RunClaim:
    """An exclusive claim on a run folder; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: Path, fd: int | None):
        self.path, self._fd = path, fd
        _HELD[path.resolve()] = self

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def release(self) -> None:
        if _HELD.get(self.path.resolve()) is self:
            del _HELD[self.path.resolve()]
        if self._fd is None:  # the PID fallback: remove the file while it still names us
            with contextlib.suppress(OSError):
                if self.lock_file.read_text(encoding="utf-8").strip() == str(os.getpid()):
                    self.lock_file.unlink()
            return
        # Unlink while still holding the lock: a process that opened the old file sees on its
        # next look that the path no longer names its inode and retries (see `claim_run_dir`).
        Path(self.lock_file).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _flock(fd: int) -> bool:
    """Try an exclusive, non-blocking flock; False when another process holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _acquire_lock(path: Path) -> int | None:
    """The locked fd of `path/.pgolf.lock` holding our PID, or None when a live process holds it."""
    lock = path / LOCK
    for _ in range(20):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            if not _flock(fd):
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file between our open and our lock: retry
                os.close(fd)
                continue
            previous = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            if previous.isdigit() and int(previous) != os.getpid():  # its owner died without removing it
                print(f"note: {lock}: taking over the lock left by process {previous}, which is no longer running",
                      file=sys.stderr, flush=True)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise PgolfError(f"{lock}: could not take the run lock (the file keeps changing); retry")


def inherited_claim(path: str | Path) -> bool:
    """True in a process started by the owner of `path` on its behalf (the torchrun workers of
    `pgolf train --nproc N`): the launcher put its PID in OWNER_ENV and holds the lock."""
    owner = os.environ.get(OWNER_ENV, "")
    try:
        held = (Path(path) / LOCK).read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return owner.isdigit() and held == owner


def claim_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> RunClaim:
    """Make this process the one owner of run folder `path` before anything is written into it.

    Refused (PgolfError) while another live process holds the folder's lock; a lock left by a dead
    process is taken over. A new run (`resume=False`) into a folder that already holds a run is
    refused unless `overwrite`, which removes the old run's files (RUN_FILES) once the lock is held.
    Where the file system has no flock, the lock falls back to the PID in the file."""
    path = Path(path)
    if resume and overwrite:
        raise PgolfError("--resume and --overwrite contradict each other: --resume continues the run in "
                         "the folder, --overwrite starts a new one over it; pass one of them")
    if path.exists() and not path.is_dir():
        raise PgolfError(f"--out {path} is a file, not a folder: pass a folder for the run")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(path, e) from None
    lock = path / LOCK
    try:
        fd = _acquire_lock(path)
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise write_failed(lock, e) from None
        fd = _pid_lock(lock)
    if fd is None:
        raise PgolfError(f"{path} is in use: {_lock_holder(lock)} is training into it (lock {lock}); wait for it "
                         "to finish or stop it, or choose another --out")
    claim = RunClaim(path, fd if fd >= 0 else None)
    try:
        found = existing_run_files(path)
        if found and not resume and not overwrite:
            raise PgolfError(f"{path} already holds a run ({', '.join(found)}): continue it with --resume {path}, "
                             "replace it with --overwrite, or choose another --out")
        if overwrite:
            for name in found:
                (path / name).unlink(missing_ok=True)
    except BaseException:
        claim.release()
        raise
    return claim


@contextlib.contextmanager
def run_dir_held(path: str | Path, is_main: bool = True):
    """`claim_run_dir`'s lock for a trainer called from Python too, unless this process (or its
    launcher) holds it or this rank does not write; only the lock (--resume/--overwrite are the CLI's)."""
    path = Path(path)
    if not is_main or path.resolve() in _HELD or inherited_claim(path):
        yield
        return
    with claim_run_dir(path, resume=True):
        yield


def _pid_lock(lock: Path) -> int:
    """The fallback without flock: the PID in the file decides; returns -1 (held by us) or raises."""
    text = lock.read_text(encoding="utf-8").strip() if lock.is_file() else ""
    if text.isdigit() and int(text) != os.getpid() and _pid_alive(int(text)):
        raise PgolfError(f"{lock.parent} is in use: process {text} is training into it (lock {lock}); wait for it "
                         "to finish or stop it, or choose another --out")
    if text.isdigit() and int(text) != os.getpid():
        print(f"note: {lock}: taking over the lock left by process {text}, which is no longer running",
              file=sys.stderr, flush=True)
    atomic_write_bytes(lock, f"{os.getpid()}\n".encode())
    return -1


@contextlib.contextmanager
def config_restored_on_failure(path: str | Path):
    """Around a resume: if it fails before saving a new resume point, put config.toml back as it was.

    The trainer rewrites config.toml once its checks pass; a resume that then fails (diverges, a
    bad override, a crash) must not leave the folder describing a config that no save used."""
    path = Path(path)
    config, state = path / CONFIG, path / TRAIN_STATE

    def stamp():
        try:
            st = state.stat()
            return st.st_ino, st.st_mtime_ns, st.st_size
        except OSError:
            return None

    before = config.read_bytes() if config.is_file() else None
    saved = stamp()
    try:
        yield
    except BaseException:
        if before is not None and stamp() == saved:
            with contextlib.suppress(OSError, PgolfError):
                if not config.is_file() or config.read_bytes() != before:
                    atomic_write_bytes(config, before)
        raise
