"""Bits per byte: the tokenizer's byte tables and the one BPB formula.

Per target token (docs/FACTS.md): its piece's UTF-8 length with a leading
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
counted naively that is 3 bytes for 1 (BPB ~20% too low, docs/FACTS.md). The
tables count such a triple as 1 byte, on its first token, whatever the range
boundaries, so sums over disjoint ranges add up to the whole.

A dataset that ships `fineweb_val_bytes_*.bin` (CaseOps) is charged from
that sidecar instead (`SidecarBytes`, same `target_bytes` interface); the
byte260 variant's table counts one byte per byte id (`ByteTables.for_bytes`).

Backends return (sum of nats, tokens, bytes) per rank; totals are summed
across ranks and turned into BPB here, never averages of averages.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import PgolfError

SPACE = "\u2581"
BYTE_VOCAB = 260  # byte260: 4 specials and the 256 byte values


def load_tokenizer(path: str | Path, bytes_ok: bool = True):
    """A SentencePieceProcessor, or (`bytes_ok`) a `ByteTokenizer` for a byte260 `.json`; a one-line error
    naming the file. A caller that knows its vocabulary is not byte260's passes `bytes_ok=False`, so that a
    train_gpt.py of any other vocabulary leaves the byte tokenizer out."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"tokenizer {path} not found: pass the .model file built with the data (data/tokenizers/)")
    if bytes_ok and path.suffix == ".json":
        return ByteTokenizer.from_file(path)
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise PgolfError(f"tokenizer {path} is not a SentencePiece model ({str(e).splitlines()[0]})") from None


@dataclass(frozen=True)
class ByteTokenizer:
    """The challenge's byte260 tokenizer: ids 0-3 pad/bos/eos/unk, byte b at id b + 4.

    Its file is the challenge's `fineweb_pure_byte_260.json`
    (`{"tokenizer_type": "pure_byte", "config": {...}, "vocab_size": 260}`).
    The methods are the part of SentencePieceProcessor's interface pgolf uses.
    """

    pad: int = 0
    bos: int = 1
    eos: int = 2
    unk: int = 3
    byte_offset: int = 4
    byte_count: int = 256
    pure_bytes = True  # not a field: what `ByteTables.from_processor` recognises it by

    @classmethod
    def from_file(cls, path: str | Path) -> ByteTokenizer:
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("tokenizer_type") != "pure_byte":
                raise ValueError(f"tokenizer_type is {payload.get('tokenizer_type')!r}, not 'pure_byte'")
            c = payload.get("config") or {}
            tok = cls(int(c.get("pad_id", 0)), int(c.get("bos_id", 1)), int(c.get("eos_id", 2)),
                      int(c.get("unk_id", 3)), int(c.get("byte_offset", 4)), int(c.get("byte_count", 256)))
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise PgolfError(f"tokenizer {path} is not a byte260 tokenizer file ({e})") from None
        if tok.byte_count != 256 or "vocab_size" in payload and int(payload["vocab_size"]) != tok.vocab_size():
            raise PgolfError(f"tokenizer {path}: expected 256 byte ids and vocab_size {tok.vocab_size()}")
        return tok

    def to_json(self) -> dict:
        config = {"pad_id": self.pad, "bos_id": self.bos, "eos_id": self.eos, "unk_id": self.unk,
                  "byte_offset": self.byte_offset, "byte_count": self.byte_count}
        return {"tokenizer_type": "pure_byte", "config": config, "vocab_size": self.vocab_size()}

    def vocab_size(self) -> int:
        return self.byte_offset + self.byte_count

    def bos_id(self) -> int:
        return self.bos

    def eos_id(self) -> int:
        return self.eos

    def unk_id(self) -> int:
        return self.unk

    def encode(self, text, num_threads: int = 1, **_):
        if isinstance(text, list):
            return [self.encode(t) for t in text]
        return (np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) + self.byte_offset).tolist()

    def decode_bytes(self, ids) -> bytes:
        a = np.asarray(ids, dtype=np.int64)
        a = a[(a >= self.byte_offset) & (a < self.byte_offset + self.byte_count)] - self.byte_offset
        return a.astype(np.uint8).tobytes()

    def decode(self, ids):
        if ids and isinstance(ids[0], list):
            return [self.decode(x) for x in ids]
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def is_byte(self, i: int) -> bool:
        return self.byte_offset <= i < self.byte_offset + self.byte_count

    def is_control(self, i: int) -> bool:
        return i in (self.pad, self.bos, self.eos)

    def is_unknown(self, i: int) -> bool:
        return i == self.unk

    def is_unused(self, i: int) -> bool:
        return not (self.is_byte(i) or self.is_control(i) or self.is_unknown(i))

    def id_to_piece(self, i: int) -> str:
        return f"<0x{i - self.byte_offset:02X}>" if self.is_byte(i) else {self.pad: "<pad>", self.bos: "<s>",
                                                                            self.eos: "</s>"}.get(i, "<unk>")

    def piece_to_id(self, piece: str) -> int:
        return next((i for i in range(self.vocab_size()) if self.id_to_piece(i) == piece), self.unk)


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
        if getattr(sp, "pure_bytes", False):  # a ByteTokenizer (by attribute: the script may leave the class out)
            return cls.for_bytes(sp)
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
    def for_bytes(cls, tok: ByteTokenizer) -> ByteTables:
        """byte260: every byte id is one byte, the specials none; a U+2581 is its own three bytes."""
        n = tok.vocab_size()
        is_byte = np.array([tok.is_byte(i) for i in range(n)])
        return cls(is_byte.astype(np.int64), np.zeros(n, dtype=bool), ~is_byte, None)

    @classmethod
    def from_tokenizer(cls, path: str | Path) -> ByteTables:
        return cls.from_processor(load_tokenizer(path))

    source = "byte_table"

    def target_bytes(self, stream: np.ndarray, lo: int, hi: int) -> int:
        """Bytes of the targets `stream[lo:hi]`, each preceded by `stream[i - 1]` (lo >= 1)."""
        return int(self.token_bytes(stream, lo, hi).sum())

    def token_bytes(self, stream: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """int64 bytes of each target `stream[lo:hi]` (what `target_bytes` sums)."""
        _check_range(stream, lo, hi)
        tgt = np.asarray(stream[lo:hi]).astype(np.int64)
        prev = np.asarray(stream[lo - 1 : hi - 1]).astype(np.int64)
        out = self.base_bytes[tgt] + (self.has_leading_space[tgt] & ~self.is_boundary[prev])
        if self.space_triple is not None and hi > lo:
            out -= self.triple_tails(stream, lo, hi)
        return out

    def triple_tails(self, stream: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """True for targets in [lo, hi) that are the 2nd or 3rd token of a <0xE2><0x96><0x81> triple (0 bytes each)."""
        a, b, c = self.space_triple  # type: ignore[misc]
        # Two tokens of context before and one after the range; -1 pads beyond the stream.
        win = np.full(hi - lo + 3, -1, dtype=np.int64)
        src_lo, src_hi = max(lo - 2, 0), min(hi + 1, stream.size)
        win[src_lo - (lo - 2) : src_hi - (lo - 2)] = np.asarray(stream[src_lo:src_hi])
        p2, p1, cur, n1 = win[:-3], win[1:-2], win[2:-1], win[3:]
        middle = (cur == b) & (p1 == a) & (n1 == c)
        last = (cur == c) & (p1 == b) & (p2 == a)
        return middle | last


def _check_range(stream: np.ndarray, lo: int, hi: int) -> None:
    if lo < 1 or hi > stream.size or lo > hi:
        raise ValueError(f"target range [{lo}, {hi}) outside the stream of {stream.size} tokens")


@dataclass(frozen=True)
class SidecarBytes:
    """Per-token byte counts shipped with the data (`fineweb_val_bytes_*.bin`, CaseOps records).

    `counts[i]` is the UTF-8 byte count of the original text validation token
    i stands for (BOS and CaseOps operators: 0). It has the same interface as
    `ByteTables`, so `val_batches` and the backends need not know which one a
    dataset uses (shared/data/dataset.py decides, once).
    """

    counts: np.ndarray   # uint16 [val tokens], memory-mapped when there is one sidecar shard
    source = "sidecar"

    def target_bytes(self, stream: np.ndarray, lo: int, hi: int) -> int:
        return int(self.token_bytes(stream, lo, hi).sum())

    def token_bytes(self, stream: np.ndarray, lo: int, hi: int) -> np.ndarray:
        _check_range(stream, lo, hi)
        if stream.size != self.counts.size:
            raise ValueError(f"the byte sidecar has {self.counts.size} entries for a stream of {stream.size} tokens")
        return np.asarray(self.counts[lo:hi]).astype(np.int64)


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
