"""Bits per byte: the tokenizer's byte tables and the one BPB formula.

Per target token (CHALLENGE.md): its piece's UTF-8 length with a leading
U+2581 stripped; byte-fallback pieces `<0xNN>` are 1 byte; control, unknown
and unused pieces are 0 bytes and count as boundaries; a leading U+2581 adds
one byte (a space) only when the previous token is not a boundary. The
tables must add up to the UTF-8 length of the decoded text: `pgolf data
audit` checks exactly that.

One case needs context. SentencePiece turns every whitespace into U+2581
before encoding (a literal U+2581 in the input becomes a space too), so a
U+2581 in the decoded text always stands for one space. A vocabulary without
a standalone U+2581 piece encodes a lone space as the byte-fallback triple
<0xE2><0x96><0x81>, which `decode()` returns as the 3-byte character U+2581:
counted naively that is 3 bytes for 1 (BPB ~20% too low, CHALLENGE.md). The
tables count such a triple as 1 byte, on its first token, whatever the range
boundaries, so sums over disjoint ranges add up to the whole.

Backends return (sum of nats, tokens, bytes) per rank; totals are summed
across ranks and turned into BPB here, never averages of averages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import PgolfError

SPACE = "\u2581"


def load_tokenizer(path: str | Path):
    """A SentencePieceProcessor, or a one-line error naming the file."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"tokenizer {path} not found: pass the .model file built with the data (data/tokenizers/)")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise PgolfError(f"tokenizer {path} is not a SentencePiece model ({str(e).splitlines()[0]})") from None


@dataclass(frozen=True)
class ByteTables:
    """Per-token byte counts of a SentencePiece vocabulary."""

    base_bytes: np.ndarray         # int64 [vocab]: UTF-8 bytes without the leading space
    has_leading_space: np.ndarray  # bool [vocab]: piece starts with U+2581
    is_boundary: np.ndarray        # bool [vocab]: control / unknown / unused
    space_triple: tuple[int, int, int] | None = None  # ids of <0xE2> <0x96> <0x81>: one space, 1 byte

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.size)

    @classmethod
    def from_processor(cls, sp) -> ByteTables:
        n = int(sp.vocab_size())
        base = np.zeros(n, dtype=np.int64)
        space = np.zeros(n, dtype=bool)
        boundary = np.ones(n, dtype=bool)
        for i in range(n):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith(SPACE):
                space[i] = True
                piece = piece[1:]
            # Any further U+2581 inside a piece (e.g. "▁▁") decodes to a plain space: 1 byte, not 3.
            base[i] = len(piece.replace(SPACE, " ").encode("utf-8"))
        triple = tuple(int(sp.piece_to_id(f"<0x{b:02X}>")) for b in SPACE.encode("utf-8"))
        has_triple = all(sp.is_byte(t) for t in triple)
        return cls(base, space, boundary, triple if has_triple else None)  # type: ignore[arg-type]

    @classmethod
    def from_tokenizer(cls, path: str | Path) -> ByteTables:
        return cls.from_processor(load_tokenizer(path))

    def target_bytes(self, stream: np.ndarray, lo: int, hi: int) -> int:
        """Bytes of the targets `stream[lo:hi]`, each preceded by `stream[i - 1]` (lo >= 1)."""
        if lo < 1 or hi > stream.size or lo > hi:
            raise ValueError(f"target range [{lo}, {hi}) outside the stream of {stream.size} tokens")
        tgt = np.asarray(stream[lo:hi]).astype(np.int64)
        prev = np.asarray(stream[lo - 1 : hi - 1]).astype(np.int64)
        total = int(self.base_bytes[tgt].sum()) + int((self.has_leading_space[tgt] & ~self.is_boundary[prev]).sum())
        if self.space_triple is not None and hi > lo:
            total -= self._triple_tail_count(stream, lo, hi)
        return total

    def _triple_tail_count(self, stream: np.ndarray, lo: int, hi: int) -> int:
        """Targets in [lo, hi) that are the 2nd or 3rd token of a <0xE2><0x96><0x81> triple (0 bytes each)."""
        a, b, c = self.space_triple  # type: ignore[misc]
        # Two tokens of context before and one after the range; -1 pads beyond the stream.
        win = np.full(hi - lo + 3, -1, dtype=np.int64)
        src_lo, src_hi = max(lo - 2, 0), min(hi + 1, stream.size)
        win[src_lo - (lo - 2) : src_hi - (lo - 2)] = np.asarray(stream[src_lo:src_hi])
        p2, p1, cur, n1 = win[:-3], win[1:-2], win[2:-1], win[3:]
        middle = (cur == b) & (p1 == a) & (n1 == c)
        last = (cur == c) & (p1 == b) & (p2 == a)
        return int(middle.sum() + last.sum())


@dataclass(frozen=True)
class EvalResult:
    """Summed validation figures; add results from ranks or batches with `+`."""

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def __add__(self, other: EvalResult) -> EvalResult:
        return EvalResult(self.nats + other.nats, self.tokens + other.tokens, self.bytes + other.bytes)

    @property
    def val_loss(self) -> float:
        return self.nats / max(self.tokens, 1)

    @property
    def val_bpb(self) -> float:
        return bits_per_byte(self.nats, self.bytes)

    def to_json(self) -> dict:
        return {"val_loss": self.val_loss, "val_bpb": self.val_bpb, "tokens": self.tokens, "bytes": self.bytes}


def bits_per_byte(sum_nats: float, sum_bytes: int) -> float:
    if sum_bytes <= 0:
        raise PgolfError("no validation bytes were scored: is the validation split empty?")
    return sum_nats / math.log(2.0) / sum_bytes
