"""Progress display for long data work (build, download).

A tqdm bar when stderr is a terminal; otherwise plain lines on stderr at most
every few seconds (and at the end), so logs and CI output stay readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """`with Progress("encode train", total=n, unit="docs") as p: p.update(k)`."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", every_s: float = 5.0,
                 unit_scale: bool = False, stream=None):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self._bar = None
        self._t0 = self._last = time.monotonic()
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=self.stream,
                             dynamic_ncols=True, leave=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self._t0
        of = f"/{self.total:,}" if self.total else ""
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        print(f"{self.desc}: {self.n:,}{of} {self.unit}{pct}, {elapsed:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
