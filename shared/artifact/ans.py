"""A static-model rANS coder for matrices of one-byte integer codes, vectorised over lanes in numpy.

    side, stream = encode_matrix(mat)           # mat: [rows, cols] int8 (or uint8)
    mat = decode_matrix(side, stream, rows, cols, source)

The matrix is read row-major as n = rows * cols symbols (bytes). Symbol i goes to lane i % lanes and
step i // lanes; every lane is its own rANS state (32 bits, renormalised by 16-bit words into one
shared stream), so encoding and decoding are loops over steps with numpy operations across lanes.
The encoder runs the steps backwards and keeps, per step, the words its lanes shed in lane order;
the stream is those chunks in step order, which is the order the decoder reads them.

The model (chosen by the encoder from the data, by estimated size): rows are put in classes by
their own spread, floor(2 log2(mean |q| + 1/64)) (one class when that does not pay); each class
has a frequency table over the 256 byte values, quantised to a total of 2^15, and optionally a
reference row (the column-wise median of its rows) that its rows are coded relative to, mod 256:
rows that are nearly the same vector (embedding rows of tokens that barely trained) then cost
well under a bit a value. Side information (little-endian, raw: the caller compresses it):

    version u8 (1), classes K u8, lanes u16
    per class: flags u8 (bit 0: has a reference row), freq u16 x 256 (sum 2^15)
    per class with a reference row: cols x i8
    K > 1: rows x u8, each row's class

Stream: lanes x u32 final states, then the 16-bit words (u16 each). Decoding checks every table,
the class ids, the stream length and that every lane ends in the initial state, so a corrupt
frame is an error, not wrong codes. Coding and tables are integer arithmetic; the model choice compares
float size estimates (only an exact tie could depend on a machine's rounding). Encoding peaks at about
16 bytes of memory per code.
"""

from __future__ import annotations

import struct

import numpy as np

from shared.errors import PgolfError

PROB_BITS = 15
TOTAL = 1 << PROB_BITS
LOW = 1 << 16          # lane states live in [LOW, 2^32): one 16-bit word in or out per renormalisation
MAX_CLASSES = 32
VERSION = 1


def lanes_for(n: int) -> int:
    """Lanes for n symbols: a power of two near sqrt(n)/8, at most 1024. Each lane costs ~4 bytes (its final
    state), each step ~10 numpy calls: fewer lanes cost time on big groups, more cost bytes on small ones."""
    k = 1
    while k < 1024 and (2 * k) ** 2 * 64 <= n:
        k *= 2
    return k


def quantise(counts: np.ndarray) -> np.ndarray:
    """Frequencies summing to TOTAL, at least 1 for every value seen, proportional to counts: floors, the
    remainder to the largest fractional parts, an excess (from the 1s) taken from the largest. Integers only."""
    counts = counts.astype(np.int64)
    n = int(counts.sum())
    f = np.zeros(256, np.int64)
    if n == 0:
        f[0] = TOTAL   # a valid table for an empty matrix
        return f
    seen = counts > 0
    f[seen] = np.maximum(1, counts[seen] * TOTAL // n)
    d = TOTAL - int(f.sum())
    if d > 0:
        frac = np.where(seen, counts * TOTAL % n, -1)
        f[np.argsort(-frac, kind="stable")[:d]] += 1
    while d < 0:
        f[int(np.argmax(f))] -= 1
        d += 1
    return f


def _bits(counts: np.ndarray, f: np.ndarray) -> float:
    m = counts > 0
    return float((counts[m] * (PROB_BITS - np.log2(f[m]))).sum())


def _model(mat: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None], list[np.ndarray]]:
    """(class of each row, reference row or None per class, residual counts per class): the smaller in
    estimated bytes of one class and the spread classes, each class with or without a reference row."""
    rows, cols = mat.shape
    q = mat.astype(np.int16)
    spread = np.abs(q).mean(axis=1) if cols else np.zeros(rows)
    bins = np.floor(2 * np.log2(spread + 1 / 64)).astype(np.int64)
    _, spread_cls = np.unique(bins, return_inverse=True)
    best = None
    for cls in (np.zeros(rows, np.int64), spread_cls.reshape(-1)):
        k = int(cls.max()) + 1 if rows else 1
        if k > MAX_CLASSES:
            continue
        size = rows * np.log2(k) / 8 if k > 1 else 0.0
        refs, counts = [], []
        for c in range(k):
            sub = q[cls == c]
            plain = np.bincount(sub.reshape(-1).astype(np.uint8), minlength=256)
            options = [(None, plain)]
            if len(sub) > 1:
                ref = np.round(np.median(sub, axis=0)).astype(np.int16)
                options.append((ref, np.bincount(((sub - ref) & 255).reshape(-1).astype(np.uint8), minlength=256)))
            # estimated bytes: the coded values, ~1.5 bytes per table entry and ~0.7 per reference value
            est = [_bits(h, quantise(h)) / 8 + 1.5 * int((h > 0).sum()) + (0 if r is None else 0.7 * cols)
                   for r, h in options]
            j = int(np.argmin(est))
            size += est[j]
            refs.append(options[j][0])
            counts.append(options[j][1])
        if best is None or size < best[0]:
            best = (size, cls, refs, counts)
    return best[1], best[2], best[3]


def encode_matrix(mat: np.ndarray) -> tuple[bytes, bytes]:
    """(side information, coded stream) of a [rows, cols] matrix of one-byte codes."""
    mat = np.ascontiguousarray(mat).view(np.int8) if mat.dtype == np.uint8 else np.asarray(mat, dtype=np.int8)
    rows, cols = mat.shape
    cls, refs, counts = _model(mat)
    k = len(refs)
    freqs = np.stack([quantise(h) for h in counts])
    n = rows * cols
    lanes = lanes_for(n)
    side = [struct.pack("<BBH", VERSION, k, lanes)]
    for r, f in zip(refs, freqs, strict=True):
        side.append(struct.pack("<B", r is not None) + f.astype("<u2").tobytes())
    side += [r.astype(np.int8).tobytes() for r in refs if r is not None]
    if k > 1:
        side.append(cls.astype(np.uint8).tobytes())
    ref_rows = np.stack([np.zeros(cols, np.int16) if r is None else r for r in refs])
    sym = ((mat.astype(np.int16) - ref_rows[cls]) & 255).astype(np.int32).reshape(-1)
    sym += np.repeat(cls.astype(np.int32) * 256, cols)   # index into the flat tables: class * 256 + value
    return b"".join(side), _encode(sym, freqs.reshape(-1), lanes)


def _encode(sym: np.ndarray, freq: np.ndarray, lanes: int) -> bytes:
    """rANS-code `sym` (flat indices into `freq`, class * 256 + value) on `lanes` lanes."""
    bias = np.zeros_like(freq)
    f2 = freq.reshape(-1, 256)
    bias.reshape(-1, 256)[:, 1:] = np.cumsum(f2, axis=1)[:, :-1]
    n = len(sym)
    steps = -(-n // lanes)
    state = np.full(lanes, LOW, np.int64)
    chunks: list[np.ndarray] = [None] * steps
    for t in range(steps - 1, -1, -1):
        s = sym[t * lanes:(t + 1) * lanes]
        a = len(s)
        x = state[:a]
        f = freq[s]
        big = x >= f << (32 - PROB_BITS)
        chunks[t] = x[big] & 0xFFFF
        x = np.where(big, x >> 16, x)
        state[:a] = ((x // f) << PROB_BITS) + x % f + bias[s]
    words = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return state.astype("<u4").tobytes() + words.astype("<u2").tobytes()


def _corrupt(source: str, what: str) -> PgolfError:
    return PgolfError(f"{source}: corrupted rANS frame ({what}); re-copy or repack it")


def decode_matrix(side: bytes, stream: bytes, rows: int, cols: int, source: str = "artifact") -> np.ndarray:
    """The [rows, cols] int8 matrix that `encode_matrix` coded into (side, stream)."""
    try:
        version, k, lanes = struct.unpack_from("<BBH", side)
    except struct.error:
        raise _corrupt(source, "side information truncated") from None
    if version != VERSION or not 1 <= k <= MAX_CLASSES or lanes != lanes_for(rows * cols):
        raise _corrupt(source, f"header version {version}, {k} classes, {lanes} lanes")
    pos, flags, freqs = 4, [], []
    for _ in range(k):
        if pos + 513 > len(side):
            raise _corrupt(source, "frequency tables truncated")
        flags.append(side[pos] & 1)
        freqs.append(np.frombuffer(side, "<u2", 256, pos + 1).astype(np.int64))
        pos += 513
    ref_rows = np.zeros((k, cols), np.int16)
    for c in range(k):
        if flags[c]:
            ref_rows[c] = np.frombuffer(side, np.int8, cols, pos) if pos + cols <= len(side) else 0
            pos += cols
    cls = np.zeros(rows, np.int64)
    if k > 1:
        if pos + rows <= len(side):
            cls = np.frombuffer(side, np.uint8, rows, pos).astype(np.int64)
        pos += rows
    if pos != len(side) or int(cls.max(initial=0)) >= k:
        raise _corrupt(source, "side information does not match the matrix")
    freq = np.stack(freqs)
    if (freq.sum(axis=1) != TOTAL).any():
        raise _corrupt(source, "a frequency table does not sum to 2^15")
    sym = _decode(stream, freq, np.repeat(cls.astype(np.int32), cols), lanes, rows * cols, source)
    return ((sym.astype(np.int16) + ref_rows[cls].reshape(-1)) & 255).astype(np.uint8).view(np.int8).reshape(rows, cols)


def _decode(stream: bytes, freq: np.ndarray, ctx: np.ndarray, lanes: int, n: int, source: str) -> np.ndarray:
    k = len(freq)
    if len(stream) < 4 * lanes or (len(stream) - 4 * lanes) % 2:
        raise _corrupt(source, "stream length")
    state = np.frombuffer(stream, "<u4", lanes).astype(np.int64)
    words = np.frombuffer(stream, "<u2", offset=4 * lanes).astype(np.int64)
    # slot -> value, and the value's frequency and start, per class: one gather each per step
    cum = np.concatenate([np.zeros((k, 1), np.int64), np.cumsum(freq, axis=1)], axis=1)
    slot_sym = np.stack([np.repeat(np.arange(256), f) for f in freq]).reshape(-1)
    slot_freq = freq.reshape(-1)[slot_sym + np.repeat(np.arange(k) * 256, TOTAL)]
    slot_bias = cum[:, :-1].reshape(-1)[slot_sym + np.repeat(np.arange(k) * 256, TOTAL)]
    off = ctx * np.int32(TOTAL)
    out = np.empty(n, np.uint8)
    p = 0
    for t in range(-(-n // lanes)):
        lo = t * lanes
        a = min(lanes, n - lo)
        x = state[:a]
        slot = x & (TOTAL - 1)
        i = off[lo:lo + a] + slot
        out[lo:lo + a] = slot_sym[i]
        x = slot_freq[i] * (x >> PROB_BITS) + slot - slot_bias[i]
        small = np.flatnonzero(x < LOW)
        m = len(small)
        if p + m > len(words):
            raise _corrupt(source, "stream ends early")
        x[small] = (x[small] << 16) | words[p:p + m]
        p += m
        state[:a] = x
    if p != len(words) or (state != LOW).any():
        raise _corrupt(source, "lane states do not return to the start")
    return out
