"""The score ledger: what makes an illegal evaluation order impossible rather than merely untested.

Every score goes through `Ledger.record` (a target scored twice is an error:
one pass, no rescoring), and every test-time update gets its tokens only from
`Ledger.scored_tokens`, which refuses any range holding a target whose score
is not yet final (on any rank: `settle` merges the ranks' records first).
Byte counts come from the dataset's `ByteTables`/`SidecarBytes`
(`target_bytes`), summed over exactly the targets scored, so the totals of
every mode are (nats, tokens, bytes) like the flat pass's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from shared.data.bpb import ByteTables, EvalResult, SidecarBytes
from shared.errors import PgolfError


class IllegalOrder(RuntimeError):
    """An evaluation tried to rescore a target or to train on a target not yet scored (a bug, never user input)."""


class Ledger:
    """Per-target scores of one evaluation over the targets [lo, hi) of `tokens`."""

    def __init__(self, tokens: np.ndarray, lo: int, hi: int, tables: ByteTables | SidecarBytes,
                 reduce: Callable[[np.ndarray], np.ndarray] | None = None, ready: Callable[[], None] | None = None):
        self.tokens, self.lo, self.hi, self.tables = tokens, lo, hi, tables
        self.reduce = reduce  # sum over ranks (None: one process)
        self.ready = ready    # waits for every rank before a collective (no timeout while a rank still works)
        self.nats = np.full(hi - lo, np.nan)             # this rank's scores, NaN where it scored none
        self.mine = np.zeros(hi - lo, dtype=np.int64)    # how often this rank scored each target
        self.final = np.zeros(hi - lo, dtype=bool)       # scored by some rank and merged (`settle`)
        self.bytes = 0
        self.on_record: Callable[[int], None] | None = None  # progress: called with each record's target count
        self.tilt = None   # shared/eval/driver.Tilt: how the driver tilts the scores it records (eval.ngram_tilt)

    def record(self, first: int, nats: np.ndarray) -> None:
        """Scores of the targets [first, first + len(nats)), final once written."""
        i = first - self.lo
        j = i + len(nats)
        if i < 0 or j > self.hi - self.lo:
            raise IllegalOrder(f"targets [{first}, {first + len(nats)}) are outside the evaluated [{self.lo}, {self.hi})")
        if self.mine[i:j].any() or self.final[i:j].any():
            raise IllegalOrder(f"targets in [{first}, {first + len(nats)}) were already scored: one pass only")
        self.nats[i:j] = nats
        self.mine[i:j] = 1
        self.bytes += self.tables.target_bytes(self.tokens, first, first + len(nats))
        if self.on_record is not None:
            self.on_record(len(nats))

    def settle(self, lo: int, hi: int, local: bool = False) -> None:
        """Merge the ranks' records of [lo, hi) (a collective: every rank calls it for the same range),
        or with `local` take this rank's own records as final (targets only this rank scores)."""
        i, j = lo - self.lo, hi - self.lo
        reduce = None if local else self.reduce
        if reduce is not None and self.ready is not None:
            self.ready()
        counts = self.mine[i:j] if reduce is None else reduce(self.mine[i:j].astype(np.float64))
        counts = np.rint(counts).astype(np.int64)
        if (counts > 1).any():
            raise IllegalOrder(f"a target in [{lo}, {hi}) was scored by more than one rank")
        self.final[i:j] = counts == 1

    def scored_tokens(self, lo: int, hi: int) -> np.ndarray:
        """The tokens `stream[lo - 1 : hi]` (inputs and targets of [lo, hi)) for an update: only once every
        target in [lo, hi) has a final score."""
        i, j = lo - self.lo, hi - self.lo
        if i < 0 or j > self.hi - self.lo or not self.final[i:j].all():
            raise IllegalOrder(f"an update asked for targets [{lo}, {hi}) before all of them were scored")
        return np.asarray(self.tokens[lo - 1 : hi]).astype(np.int64)

    def result(self) -> EvalResult:
        """(nats, tokens, bytes) summed over ranks; checks that every target was scored exactly once."""
        self.settle(self.lo, self.hi)
        if not self.final.all():
            missing = int((~self.final).sum())
            raise IllegalOrder(f"{missing} of {self.hi - self.lo} targets were never scored")
        # Only this rank's own scores (NaN marks "scored elsewhere"); a NaN or infinite score among them
        # stays in the sum, so every rank sees the same non-finite total and refuses it together.
        local = np.array([float(np.sum(self.nats[self.mine > 0])), float(self.mine.sum()), float(self.bytes)])
        total = local if self.reduce is None else self.reduce(local)
        if self.reduce is not None:   # the sum of every target's score in one order: what one process sums
            total[0] = float(np.sum(self.reduce(np.where(self.mine > 0, self.nats, 0.0))))
        if not np.isfinite(total[0]):
            raise PgolfError(f"the evaluation diverged: the summed loss of {self.hi - self.lo:,} targets is "
                             f"{total[0]} (a target scored NaN or infinity); no score is reported. Lower the "
                             "test-time learning rates (eval.ttt_lr, eval.lora_lr, eval.lora_phase_lr) or check "
                             "the weights with eval.mode = \"flat\"")
        return EvalResult(float(total[0]), int(round(total[1])), int(round(total[2])))
