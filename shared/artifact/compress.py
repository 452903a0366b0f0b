"""The artifact's compression pipelines: sections of the body in, one payload out, and back.

A v2 artifact names its pipeline in the header (`PIPELINE_IDS`); the payload is

    n        u8              number of frames
    sizes    n x u32         compressed size of each frame
    frames   concatenated

and each pipeline decides what the frames hold:

    zstd    one zstd-22 frame per body section (meta, codes, scales, floats): v1's scheme
    brotli  one brotli-11 frame per section (floats and scales are already byte-shuffled,
            codes one per byte: the "byte shuffle + brotli" step of the records)
    group   the codes section split by role (q, k, v, out, MLP up, MLP down, embedding, ...:
            the same matrix of every layer together), each group's rows reordered by a
            similarity sort when `quant.group_sort` (the permutation is stored), each group
            its own brotli-11 frame; the rest as in "brotli". The record stack's per-group
            mode (#1855 and later), written from its description.
    group_zpaq  "group" with each code group coded by ZPAQ (level 5, one thread: the `zpaq`
            package, an optional dependency) instead of brotli, as the records run lrzip's
            ZPAQ mode on the big groups; the small frames stay brotli-11.
    group_ans  "group" with each code group coded by pgolf's own static-model rANS coder
            (shared/artifact/ans.py: numpy, lanes interleaved; row classes by spread, a reference
            row per class where it pays); the small frames stay brotli-11. A code-group frame is

                side_len  u32        bytes of the compressed side information
                side      brotli-11  the model (ans.py: classes, frequency tables, reference rows)
                stream    the rest   lanes x u32 final states, then u16 words

            the group's rows and columns come from the tensor table, as in "group".

lrzip itself has no pinned Python binding: its id stays reserved so that such an artifact is
refused with a line naming the missing decompressor. Every step is deterministic (zstd one-shot
with threads=0, brotli and ZPAQ single-threaded, stable sorts), and the reader rebuilds the
exact uncompressed body, which the header's CRC covers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zstandard

from shared.errors import PgolfError

MAX_ZSTD_LEVEL = 22
BROTLI_QUALITY = 11
BROTLI_LGWIN = 24
ZPAQ_LEVEL = 5   # the strongest; minutes on a 36M model's codes (BENCHMARKS.md "Compressors")
PIPELINE_IDS = {"zstd": 0, "brotli": 1, "group": 2, "group_zpaq": 3, "group_ans": 5}
# Known pipelines whose decompressor pgolf does not ship: refused by name.
FOREIGN_IDS = {4: "group+lrzip (needs lrzip, which pgolf does not provide)"}
PIPELINES = tuple(PIPELINE_IDS)


# Budget mode packs the same model 10-20 times, and most frames come back unchanged between packs
# (an LQER rank try changes only the factors' frame, a width step one group of codes): brotli-11 on
# a 36M model's groups takes minutes on 2 cores, so frames are remembered by content. Compression is
# a pure function of (bytes, settings), so this changes no byte; it only bounds repeated work.
_MEMO: OrderedDict[tuple, bytes] = OrderedDict()
_MEMO_MAX_BYTES = 256 << 20   # of compressed frames held
_memo_bytes = 0


_memo_lock = threading.Lock()


def pack_threads() -> int:
    """Threads for packing work that runs outside the GIL (brotli, zstd, numpy): one per usable core,
    or PGOLF_PACK_THREADS. Every result is computed alone and placed in a fixed order, so the bytes
    never depend on it (tests/test_artifact.py packs with 1 and several)."""
    env = os.environ.get("PGOLF_PACK_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def parallel_map(fn, items: list, sizes: list[int] | None = None) -> list:
    """[fn(x) for x in items], the largest items started first on `pack_threads()` threads."""
    threads = min(pack_threads(), len(items))
    if threads <= 1:
        return [fn(x) for x in items]
    order = sorted(range(len(items)), key=lambda i: -(sizes[i] if sizes else 0))
    out: list = [None] * len(items)
    with ThreadPoolExecutor(threads) as ex:
        futures = {i: ex.submit(fn, items[i]) for i in order}
        for i in range(len(items)):
            out[i] = futures[i].result()
    return out


def _memoised(kind: str, setting: int, raw: bytes, compress) -> bytes:
    global _memo_bytes
    if len(raw) < 1 << 16:   # small frames: compressing is cheaper than remembering
        return compress(raw)
    key = (kind, setting, len(raw), hashlib.blake2b(raw, digest_size=20).digest())
    with _memo_lock:
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
            return hit
    out = compress(raw)
    with _memo_lock:
        _MEMO[key] = out
        _memo_bytes += len(out)
        while _memo_bytes > _MEMO_MAX_BYTES and len(_MEMO) > 1:
            _memo_bytes -= len(_MEMO.popitem(last=False)[1])
    return out


def zstd_compress(raw: bytes, level: int) -> bytes:
    """One-shot, single-threaded zstd: the same bytes on every machine (docs/FACTS.md)."""
    return _memoised("zstd", level, raw, lambda r: _zstd_compress(r, level))


def _zstd_compress(raw: bytes, level: int) -> bytes:
    if not 1 <= level <= MAX_ZSTD_LEVEL:
        raise PgolfError(f"quant.zstd_level must be in 1..{MAX_ZSTD_LEVEL}, got {level}")
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(raw), threads=0, write_checksum=0, write_content_size=1, write_dict_id=0)
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def _brotli(source: str = "artifact"):
    try:
        import brotli
    except ImportError:
        raise PgolfError(f"{source}: the brotli pipeline needs the `brotli` package, which is not installed: "
                         "pip install -e . (pyproject.toml pins it) or pack with quant.compressor=zstd") from None
    return brotli


def brotli_compress(raw: bytes) -> bytes:
    if not raw:
        return b""
    return _memoised("brotli", BROTLI_QUALITY, raw,
                     lambda r: _brotli().compress(r, quality=BROTLI_QUALITY, lgwin=BROTLI_LGWIN))


def _zpaq(source: str = "artifact"):
    try:
        import zpaq
    except ImportError:
        raise PgolfError(f"{source}: the group_zpaq pipeline needs the `zpaq` package, which is not installed: "
                         "pip install zpaq==0.3.7 (a pgolf dependency), or pack with quant.compressor=group") from None
    return zpaq


def zpaq_compress(raw: bytes) -> bytes:
    if not raw:
        return b""
    return _memoised("zpaq", ZPAQ_LEVEL, raw,
                     lambda r: _zpaq().compress(r, level=ZPAQ_LEVEL, threads=1, hints=False))


def _ans():
    """shared/artifact/ans.py, imported by name rather than by an import statement: the generated
    train_gpt.py carries a module only where an import statement names it, and format.pack_quantized's
    names it only under `quant.compressor == "group_ans"`, so other configs' scripts stay smaller."""
    return importlib.import_module("shared.artifact.ans")


def ans_compress(raw: bytes, cols: int, coder=None) -> bytes:
    """A code group ([rows, cols] codes, one byte each) as one group_ans frame (`coder`: ans.py, or loaded)."""
    def make(r: bytes) -> bytes:
        side, stream = (coder or _ans()).encode_matrix(np.frombuffer(r, dtype=np.int8).reshape(-1, cols))
        side = brotli_compress(side)
        return struct.pack("<I", len(side)) + side + stream
    return _memoised("ans", cols, raw, make)


def ans_decompress(frame: bytes, rows: int, cols: int, source: str) -> bytes:
    try:
        (n,) = struct.unpack_from("<I", frame)
    except struct.error:
        raise PgolfError(f"{source}: truncated rANS frame (corrupted); re-copy or repack it") from None
    if 4 + n > len(frame):
        raise PgolfError(f"{source}: rANS frame shorter than its side information (corrupted); re-copy or repack it")
    side = _inflate("brotli", frame[4:4 + n], source)
    return _ans().decode_matrix(side, frame[4 + n:], rows, cols, source).tobytes()


# ----------------------------------------------------------------------------- groups

_LAYER = re.compile(r"^blocks\.\d+\.")


def role(name: str) -> str:
    """A tensor's role: its name without the layer index (`blocks.3.mlp.fc.weight` -> `mlp.fc.weight`)."""
    return _LAYER.sub("", name)


def code_groups(meta: dict) -> tuple[list[list[tuple[int, int, int]]], list[tuple[int, int]]]:
    """Codes-stream ranges by role: ([[ (offset, rows, cols) per tensor ] per group], rest ranges).

    A group holds the tensors of one role and row width, in table order; LQER factors and
    everything else not in a group are the "rest", in stream order."""
    groups: dict[str, list[tuple[int, int, int]]] = {}
    covered = []
    for e in meta["tensors"]:
        if "q" not in e:
            continue
        off, n = (int(v) for v in e["q"])
        rows = int(e["shape"][0])
        cols = n // rows if rows else 0
        if rows * cols != n or n == 0:
            continue
        groups.setdefault(f"{role(e['name'])}:{cols}", []).append((off, rows, cols))
        covered.append((off, n))
    covered.sort()
    rest, pos = [], 0
    for off, n in covered:
        if off > pos:
            rest.append((pos, off - pos))
        pos = max(pos, off + n)
    total = int(meta["streams"]["q"])
    if pos < total:
        rest.append((pos, total - pos))
    return [groups[k] for k in sorted(groups)], rest


def similarity_order(rows: np.ndarray) -> np.ndarray:
    """A stable row order putting rows of similar code statistics next to each other.

    The key is (sum |q|, sum q) per row, integers, sorted stably: rows with the same spread and
    balance become neighbours, so the entropy coder's block statistics are more uniform. (The
    records use an L1 nearest-neighbour chain; that is quadratic in the rows, minutes for the
    22,528 MLP-up rows of the record model on numpy, so this cheaper key stands in for it and
    `quant.group_sort` lets measurement switch it off.)"""
    r = rows.astype(np.int64)
    spread, balance = np.abs(r).sum(axis=1), r.sum(axis=1)
    return np.lexsort((balance, spread)).astype(np.int64)


def _perm_dtype(n: int) -> str:
    return "<u2" if n <= 0xFFFF else "<u4"


def _group_split(meta: dict, codes: bytes, sort: bool) -> tuple[bytes, list[bytes], bytes]:
    groups, rest = code_groups(meta)
    perms, parts = [], []
    buf = np.frombuffer(codes, dtype=np.int8)
    for g in groups:
        mat = np.concatenate([buf[off:off + rows * cols].reshape(rows, cols) for off, rows, cols in g])
        if sort:
            order = similarity_order(mat)
            perms.append(order.astype(_perm_dtype(len(order))).tobytes())
            mat = mat[order]
        parts.append(np.ascontiguousarray(mat).tobytes())
    rest_raw = b"".join(codes[off:off + n] for off, n in rest)
    return b"".join(perms), parts, rest_raw


def _group_join(meta: dict, perms: bytes, parts: list[bytes], rest_raw: bytes, source: str) -> bytes:
    groups, rest = code_groups(meta)
    total = int(meta["streams"]["q"])
    out = np.zeros(total, dtype=np.int8)
    if len(parts) != len(groups):
        raise PgolfError(f"{source}: {len(parts)} code groups stored but the table makes {len(groups)} (corrupted)")
    p = 0
    for g, raw in zip(groups, parts, strict=True):
        cols = g[0][2]
        n_rows = sum(rows for _, rows, _ in g)
        mat = np.frombuffer(raw, dtype=np.int8).reshape(n_rows, cols)
        if perms:
            dt = np.dtype(_perm_dtype(n_rows))
            order = np.frombuffer(perms, dtype=dt, count=n_rows, offset=p).astype(np.int64)
            p += n_rows * dt.itemsize
            if not np.array_equal(np.sort(order), np.arange(n_rows)):
                raise PgolfError(f"{source}: a stored row permutation is not a permutation (corrupted)")
            un = np.empty_like(mat)
            un[order] = mat
            mat = un
        r0 = 0
        for off, rows, c in g:
            out[off:off + rows * c] = mat[r0:r0 + rows].reshape(-1)
            r0 += rows
    rb = np.frombuffer(rest_raw, dtype=np.int8)
    r0 = 0
    for off, n in rest:
        out[off:off + n] = rb[r0:r0 + n]
        r0 += n
    if r0 != len(rb) or (perms and p != len(perms)):
        raise PgolfError(f"{source}: code groups do not add up to the codes stream (corrupted)")
    return out.tobytes()


# ----------------------------------------------------------------------------- frames

def _frames(frames: list[bytes]) -> bytes:
    return struct.pack("<B", len(frames)) + struct.pack(f"<{len(frames)}I", *map(len, frames)) + b"".join(frames)


def _unframe(payload: bytes, source: str) -> list[bytes]:
    try:
        (n,) = struct.unpack_from("<B", payload)
        sizes = struct.unpack_from(f"<{n}I", payload, 1)
    except struct.error:
        raise PgolfError(f"{source}: truncated frame table (corrupted); re-copy or repack it") from None
    pos, out = 1 + 4 * n, []
    for s in sizes:
        out.append(payload[pos:pos + s])
        pos += s
    if pos != len(payload):
        raise PgolfError(f"{source}: frame sizes do not add up to the payload (corrupted); re-copy or repack it")
    return out


def encode(pipeline: str, sections: list[bytes], zstd_level: int, group_sort: bool = False, coder=None) -> bytes:
    """The payload of `sections` ([meta, codes, scales, floats]) with `pipeline` (group_ans: `coder` is
    shared/artifact/ans.py, passed where the caller imported it, else loaded here)."""
    # Frames are compressed independently, in parallel threads (both compressors release the GIL).
    if pipeline == "zstd":
        return _frames(parallel_map(lambda s: zstd_compress(s, zstd_level) if s else b"", sections,
                                    [len(s) for s in sections]))
    if pipeline == "brotli":
        return _frames(parallel_map(brotli_compress, sections, [len(s) for s in sections]))
    if pipeline in ("group", "group_zpaq", "group_ans"):
        meta_sec, codes, scales, floats = sections
        meta = json.loads(meta_sec[4:].decode("utf-8"))
        perms, parts, rest = _group_split(meta, codes, group_sort)
        # the code groups: ZPAQ in group_zpaq, rANS in group_ans, brotli-11 otherwise; the small frames brotli-11
        if pipeline == "group_ans":
            def part(g, raw):
                return ans_compress(raw, g[0][2], coder)
        elif pipeline == "group_zpaq":
            def part(g, raw):
                return zpaq_compress(raw)
        else:
            def part(g, raw):
                return brotli_compress(raw)
        raws = [meta_sec, perms, *parts, rest, scales, floats]
        coders = [brotli_compress] * 2 + [lambda raw, g=g: part(g, raw) for g in code_groups(meta)[0]] + \
            [brotli_compress] * 3
        return _frames(parallel_map(lambda i: coders[i](raws[i]), list(range(len(raws))), [len(x) for x in raws]))
    raise PgolfError(f"unknown compression pipeline {pipeline!r}: choose one of {', '.join(PIPELINES)}")


def _inflate(kind: str, raw: bytes, source: str) -> bytes:
    if not raw:
        return b""
    try:
        if kind == "zstd":
            return zstandard.ZstdDecompressor().decompress(raw)
        if kind == "zpaq":
            return _zpaq(source).decompress(raw)
        return _brotli(source).decompress(raw)
    except PgolfError:
        raise
    except Exception as e:   # zstandard.ZstdError, brotli.error
        raise PgolfError(f"{source}: corrupted artifact body ({type(e).__name__}: {e}); re-copy or repack it") from None


def pipeline_name(pid: int, source: str) -> str:
    for name, i in PIPELINE_IDS.items():
        if i == pid:
            return name
    if pid in FOREIGN_IDS:
        raise PgolfError(f"{source}: compressed with pipeline {FOREIGN_IDS[pid]}; repack it with "
                         f"quant.compressor = {' / '.join(PIPELINES)}")
    raise PgolfError(f"{source}: unknown compression pipeline id {pid} (written by a newer pgolf?); "
                     "repack it with this version")


def decode(name: str, payload: bytes, source: str) -> list[bytes]:
    """The uncompressed sections [meta, codes, scales, floats] of a v2 payload written by pipeline `name`."""
    frames = _unframe(payload, source)
    if name in ("zstd", "brotli"):
        if len(frames) != 4:
            raise PgolfError(f"{source}: {len(frames)} frames, expected 4 (corrupted)")
        return [_inflate(name, f, source) for f in frames]
    if len(frames) < 5:
        raise PgolfError(f"{source}: {len(frames)} frames, too few for the group pipeline (corrupted)")
    meta_sec = _inflate("brotli", frames[0], source)
    try:
        (mlen,) = struct.unpack_from("<I", meta_sec)
        meta = json.loads(meta_sec[4:4 + mlen].decode("utf-8"))
        perms = _inflate("brotli", frames[1], source)
        if name == "group_ans":
            groups = code_groups(meta)[0]
            if len(groups) != len(frames) - 5:
                raise PgolfError(f"{source}: {len(frames) - 5} code groups stored but the table makes "
                                 f"{len(groups)} (corrupted)")
            parts = [ans_decompress(f, sum(r for _, r, _ in g), g[0][2], source)
                     for f, g in zip(frames[2:-3], groups, strict=True)]
        else:
            parts = [_inflate("zpaq" if name == "group_zpaq" else "brotli", f, source) for f in frames[2:-3]]
        codes = _group_join(meta, perms, parts, _inflate("brotli", frames[-3], source), source)
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise PgolfError(f"{source}: unreadable grouped codes ({type(e).__name__}: {e}); repack it") from None
    return [meta_sec, codes, _inflate("brotli", frames[-2], source), _inflate("brotli", frames[-1], source)]
