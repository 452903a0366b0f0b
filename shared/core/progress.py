"""Progress of every long phase, the one module every command prints it through.

`Progress`: data build and download, calibration, budget search, packing, evaluation (sliding/TTT
through the score ledger, flat through `val_batches` while `active` holds the bar). A tqdm bar when
stderr is a terminal (and tqdm is installed); otherwise plain lines on stderr at most every few
seconds, each with the rate and ETA, and a final line (once). `Phases`: one line per step of a
multi-step command (`pgolf parity`). `set_quiet(True)` (`--json`) silences all of it.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time

from shared import SCRIPT

_QUIET = False
_ACTIVE: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("pgolf_progress", default=None)


def set_quiet(quiet: bool = True) -> None:
    """Silence every progress line and bar (a command printing machine-readable output)."""
    global _QUIET
    _QUIET = quiet


def active() -> Progress | None:
    """The bar a deep loop (`val_batches`) should advance, if a caller opened one with `activate`."""
    return _ACTIVE.get()


@contextlib.contextmanager
def activate(bar: Progress):
    token = _ACTIVE.set(bar)
    try:
        yield bar
    finally:
        _ACTIVE.reset(token)


def _seconds(s: float) -> str:
    return f"{s:.0f}s" if s < 600 else f"{s / 60:.1f}min"


class Progress:
    """`with Progress("encode train", total=n, unit="docs") as p: p.update(k)`."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", every_s: float = 5.0,
                 unit_scale: bool = False, stream=None, enabled: bool = True, min_s: float = 0.0):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and not _QUIET  # False: count silently (e.g. every rank but the first)
        self.min_s = min_s        # a phase shorter than this prints nothing at all (periodic, fast phases)
        self.n = 0
        self._shown: int | None = None  # the count the last plain line showed
        self._bar = None
        self._t0 = self._last = time.monotonic()
        if not SCRIPT and self.enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm
            except ImportError:  # a record's train_gpt.py has plain lines only
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=self.stream,
                                 dynamic_ncols=True, leave=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
            return
        now = time.monotonic()
        if self.enabled and now - self._last >= self.every_s:
            self._last = now
            self._line()

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        of = f"/{self.total:,}" if self.total else ""
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {self.n:,}{of} {self.unit}{pct}, {elapsed:.1f}s"
        if elapsed > 0 and self.n:
            rate = self.n / elapsed
            text += f", {rate:,.0f} {self.unit}/s"
            if self.total and self.n < self.total:
                text += f", ETA {_seconds((self.total - self.n) / rate)}"
        return text

    def _line(self) -> None:
        self._shown = self.n
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._shown != self.n:  # the final line, once (not again after the last update's)
            if self._shown is not None or time.monotonic() - self._t0 >= self.min_s:
                self._line()
        self.enabled = False  # a second close prints nothing

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Phases:
    """One line per step of a command made of several long steps: `phases.start("validation BPB")` prints
    `parity [2/6]: validation BPB (12.3s so far)` on stderr."""

    def __init__(self, desc: str, total: int, stream=None, enabled: bool = True):
        self.desc, self.total, self.k = desc, total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and not _QUIET
        self._t0 = time.monotonic()

    def start(self, what: str) -> None:
        self.k += 1
        if self.enabled:
            print(f"{self.desc} [{self.k}/{self.total}]: {what} ({time.monotonic() - self._t0:.1f}s so far)",
                  file=self.stream, flush=True)


class TrainProgress:
    """The training status line both trainers show: step, loss, tokens/s, ETA.

    On a terminal one line on stderr is rewritten in place (at most a few
    times a second); elsewhere (a pipe, CI, a log file) nothing is redrawn and
    only the trainer's own log lines appear, via `write`, as plain lines.
    """

    def __init__(self, total_steps: int, max_seconds: float, batch_tokens: int, start_step: int = 0,
                 start_elapsed: float = 0.0, stream=None, every_s: float = 0.25):
        self.total, self.max_seconds, self.batch_tokens = total_steps, max_seconds, batch_tokens
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self._start = (start_step, start_elapsed)
        self._shown = False
        self._last = 0.0

    def eta(self, step: int, elapsed: float) -> float:
        """Seconds left: the sooner of the step budget and the wallclock cap."""
        s0, e0 = self._start
        per_step = (elapsed - e0) / max(step - s0, 1)
        left = max(self.total - step, 0) * per_step
        if self.max_seconds > 0:
            left = min(left, max(self.max_seconds - elapsed, 0.0))
        return left

    def status(self, step: int, loss: float, elapsed: float) -> str:
        s0, e0 = self._start
        tok_s = (step - s0) * self.batch_tokens / max(elapsed - e0, 1e-9)
        return (f"step {step}/{self.total} loss {loss:.4f} {tok_s:,.0f} tok/s "
                f"elapsed {elapsed:.0f}s ETA {self.eta(step, elapsed):.0f}s")

    def update(self, step: int, loss: float, elapsed: float) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        self.stream.write("\r\033[K" + self.status(step, loss, elapsed))
        self.stream.flush()
        self._shown = True

    def write(self, line: str) -> None:
        """Print a log line (on stdout) without tearing the status line."""
        self._clear()
        print(line, flush=True)

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False

    def close(self) -> None:
        self._clear()
