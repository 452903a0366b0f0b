"""The packed artifact (`model.pgz`): the only writer and reader of the format.

Format v2 (docs/ARTIFACT.md has the full description):

    outer header, 14 bytes, little-endian, uncompressed
        magic    4s   b"PGLF"
        version  u8   2
        pipeline u8   compression pipeline id (shared/artifact/compress.py: zstd, brotli, group)
        length   u32  bytes of the compressed payload that follow
        crc32    u32  CRC-32 of the *uncompressed* body
    payload: the pipeline's frames of the body's sections:
        meta_len u32 + meta (compact sorted JSON: config TOML + tensor table, LQER factors' offsets)
        integer codes | fp16 scales | floats

Every byte is a pure function of (params, config, Hessians, calibration token
counts for "frequency" embedding steps): no timestamps,
no dict-order or thread-count dependence (zstd runs single-threaded and
one-shot, see docs/FACTS.md; brotli is single-threaded; LQER and pruning
use no BLAS), so both backends write identical files from
identical weights. The reader checks magic, version, length and checksum and
refuses anything else with a one-line `PgolfError`.

Backends hand in and get back `dict[str, np.ndarray]` with canonical names
(shared/core/spec.py); `unpack` returns float32 dequantised weights.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shared.artifact import compress as pipelines
from shared.artifact.awq import select_groups
from shared.artifact.lqer import Lqer, error_score, fit
from shared.artifact.prune import prune
from shared.artifact.quant import (
    FLOAT_SCHEMES,
    INT_BITS,
    Awq,
    QTensor,
    dequantize,
    quantize,
    scheme_bits,
    token_weights,
)
from shared.core.config import Config, from_toml_text, to_toml
from shared.core.spec import check_finite, check_params, param_table
from shared.errors import PgolfError

SIZE_CAP = 16_000_000  # code bytes + compressed model bytes (decimal), docs/FACTS.md
MAGIC = b"PGLF"
VERSION = 2
HEADER = struct.Struct("<4sBBII")     # magic, version, pipeline, length, crc32
# Config sections stored in the artifact: everything except `data` (machine-local paths),
# so the same weights packed on two machines give the same bytes.
CONFIG_SECTIONS = ("model", "train", "optim", "quant", "eval")
MAX_ZSTD_LEVEL = pipelines.MAX_ZSTD_LEVEL


# ----------------------------------------------------------------------------- scheme choice

def class_schemes(params: dict[str, np.ndarray], cfg: Config) -> dict[str, str]:
    """The scheme of every tensor by its class alone: small tensors as `quant.other` (or, outside the
    `other` class, as `quant.small` when that names a float scheme); gate tensors, all small, take
    `quant.gate` whatever their size."""
    q = cfg.quant
    table = param_table(cfg.model)
    out: dict[str, str] = {}
    for name in sorted(params):
        w = params[name]
        cls = table[name].qclass
        if w.ndim < 2 or (w.size <= q.keep_float_max_numel and cls != "gate"):
            # train_gpt.py keeps control tensors fp32 but stores other small matrices as fp16.
            out[name] = q.small if cls != "other" and q.small != "other" else q.other
            continue
        out[name] = getattr(q, cls)
    return out


def choose_schemes(params: dict[str, np.ndarray], cfg: Config) -> dict[str, str]:
    """The scheme of every tensor from `[quant]`: the class rules (`class_schemes`), then the per-tensor
    overrides of `quant.tensor_schemes` (what budget mode fits; names checked when the config loads)."""
    out = class_schemes(params, cfg)
    for name, scheme in cfg.quant.tensor_scheme_map().items():
        if name in out:   # `params` may be a subset (budget mode quantises one tensor at a time)
            out[name] = scheme
    return out


def with_tensor_schemes(params: dict[str, np.ndarray], cfg: Config, schemes: dict[str, str]) -> Config:
    """`cfg` whose `quant.tensor_schemes` states `schemes` (over any it had): only the tensors whose scheme
    differs from their class rule, in sorted-name order, so the config (and the script that bakes it)
    stays as short as the choice allows and the same choice always gives the same text."""
    chosen = choose_schemes(params, cfg)
    unknown = sorted(set(schemes) - set(chosen))
    if unknown:
        raise PgolfError(f"scheme override for unknown tensor(s) {unknown[:3]}")
    chosen.update(schemes)
    base = class_schemes(params, cfg)
    text = ",".join(f"{n}={chosen[n]}" for n in sorted(chosen) if chosen[n] != base[n])
    return replace(cfg, quant=replace(cfg.quant, tensor_schemes=text)).validate()


# ----------------------------------------------------------------------------- byte transforms

def shuffle_bytes(a: np.ndarray) -> bytes:
    """Byte shuffle: all first bytes of the elements, then all second bytes, ...

    fp16/fp32 high bytes (sign, exponent) are far more repetitive than low
    mantissa bytes; grouping them lets the entropy coder see that."""
    b = np.ascontiguousarray(a).view(np.uint8).reshape(-1, a.dtype.itemsize)
    return np.ascontiguousarray(b.T).tobytes()


def unshuffle_bytes(raw: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8).reshape(np.dtype(dtype).itemsize, count)
    return np.ascontiguousarray(b.T).view(dtype).reshape(count)


# ----------------------------------------------------------------------------- body

@dataclass
class _Stream:
    """Bytes of one kind (codes, scales, floats), appended in tensor order."""

    chunks: list[bytes]
    size: int = 0

    def add(self, raw: bytes) -> tuple[int, int]:
        off = self.size
        self.chunks.append(raw)
        self.size += len(raw)
        return off, len(raw)


def _config_text(cfg: Config) -> str:
    lines = to_toml(cfg).split("\n")
    keep, out = False, []
    for line in lines:
        if line.startswith("["):
            keep = line.strip("[]") in CONFIG_SECTIONS
        if keep:
            out.append(line)
    return "\n".join(out)


def class_clip_k(cfg: Config, qclass: str) -> float:
    """The std-based clip of a quantizer class: per-class sigmas where set (the records': attention
    13.0, MLP 11.5-12.85, embedding 14-20), else `quant.clip_k`."""
    q = cfg.quant
    if qclass == "embed":
        return q.embed_clip_k
    k = {"attn": q.attn_clip_k, "mlp": q.mlp_clip_k}.get(qclass, 0.0)
    return k if k > 0 else q.clip_k


def quantize_all(params: dict[str, np.ndarray], cfg: Config, hessians: dict | None = None,
                 schemes: dict[str, str] | None = None, token_counts: np.ndarray | None = None) -> dict[str, QTensor]:
    """Quantise every tensor (sorted by name) with its scheme; GPTQ where asked and possible; then
    prune `quant.prune_values` +-1 codes and add the LQER corrections (`finish_quantized`).

    `token_counts` [vocab]: how often each token occurs among the calibration tokens (inputs
    and targets); needed when `quant.embed_steps = "frequency"`."""
    qts = quantize_plain(params, cfg, hessians, schemes, token_counts)
    return finish_quantized(params, qts, cfg, hessians)


def quantize_plain(params: dict[str, np.ndarray], cfg: Config, hessians: dict | None = None,
                   schemes: dict[str, str] | None = None, token_counts: np.ndarray | None = None) -> dict[str, QTensor]:
    """Every tensor with its scheme (and GPTQ), before pruning and LQER."""
    q = cfg.quant
    chosen = choose_schemes(params, cfg)
    if schemes:
        unknown = sorted(set(schemes) - set(params))
        if unknown:
            raise PgolfError(f"scheme override for unknown tensor(s) {unknown[:3]}")
        chosen.update(schemes)
    if q.gptq and hessians is None:
        raise PgolfError("quant.gptq = true needs Hessians: pack with `pgolf pack --data DIR --tokenizer MODEL` "
                         "(calibration tokens from the training split) or set quant.gptq=false")
    table = param_table(cfg.model)
    protect = select_groups(params, chosen, hessians or {}, cfg) if q.gptq else {}
    from shared.core.progress import active

    bar = active()  # a pack's progress (finish_run, `pgolf pack`), not the budget search's many trial packs
    bar_lock = threading.Lock()
    jobs = []
    for name in sorted(params):
        w = np.asarray(params[name], dtype=np.float32)
        scheme = chosen[name]
        scheme_bits(scheme)
        h, clip_k, row_weights = None, class_clip_k(cfg, table[name].qclass), None
        if q.gptq and scheme in INT_BITS and w.ndim == 2 and name in (hessians or {}):
            h = hessians[name]
        if table[name].qclass == "embed" and scheme in INT_BITS and w.ndim == 2:
            clip_k = q.embed_clip_k
            if q.embed_steps == "frequency":
                if token_counts is None:
                    raise PgolfError('quant.embed_steps = "frequency" needs calibration token counts: pack with '
                                     '`pgolf pack --data DIR --tokenizer MODEL` (training split) or set '
                                     'quant.embed_steps=row')
                if len(token_counts) != w.shape[0]:
                    raise PgolfError(f"{name}: {w.shape[0]} rows but {len(token_counts)} token counts: count the "
                                     "calibration tokens with shared.artifact.budget.calibration_counts(x, y, vocab_size)")
                row_weights = token_weights(token_counts, q.embed_freq_floor)
        jobs.append((name, w, scheme, h, clip_k, row_weights))

    def one(job) -> QTensor:
        name, w, scheme, h, clip_k, row_weights = job
        t = quantize(w, scheme, percentile=q.clip_percentile, clip_k=clip_k, min_scale=q.min_scale, hessian=h,
                     gptq_block=q.gptq_block, gptq_damp=q.gptq_damp, row_weights=row_weights, name=name,
                     protect=protect.get(name))
        if bar is not None:
            with bar_lock:
                bar.update(1)
        return t

    # Tensors in parallel threads (GPTQ's numpy and BLAS work releases the GIL); each tensor's codes are
    # computed alone, so the result does not depend on the thread count.
    cost = [j[1].size * (j[1].shape[-1] if j[3] is not None else 1) for j in jobs]
    return dict(zip([j[0] for j in jobs], pipelines.parallel_map(one, jobs, cost), strict=True))


def lqer_candidates(qts: dict[str, QTensor], cfg: Config) -> list[str]:
    """Tensors LQER may correct: integer-coded block matrices and embedding/head."""
    table = param_table(cfg.model)
    return [n for n in sorted(qts) if qts[n].q is not None and table[n].qclass in ("attn", "mlp", "embed")]


def lqer_ranking(params: dict[str, np.ndarray], qts: dict[str, QTensor], cfg: Config,
                 hessians: dict | None = None) -> list[tuple[str, float]]:
    """LQER candidates by quantisation error, largest first (ties: name order). Diag-Hessian-weighted
    when every candidate has a Hessian (the same units for all), plain squared error otherwise."""
    names = lqer_candidates(qts, cfg)
    weighted = bool(hessians) and all(n in hessians for n in names)
    scores = [(n, error_score(params[n], dequantize(qts[n]), hessians[n] if weighted else None)) for n in names]
    return sorted(scores, key=lambda t: -t[1])


def finish_quantized(params: dict[str, np.ndarray], qts: dict[str, QTensor], cfg: Config,
                     hessians: dict | None = None) -> dict[str, QTensor]:
    """Prune `quant.prune_values` +-1 codes (shared/artifact/prune.py), then fit LQER corrections
    (shared/artifact/lqer.py) on the `quant.lqer_tensors` tensors with the largest error."""
    q = cfg.quant
    out = prune(params, qts, q.prune_values, hessians) if q.prune_values > 0 else qts
    if q.lqer_tensors > 0 and q.lqer_rank > 0:
        for name, _ in lqer_ranking(params, out, cfg, hessians)[:q.lqer_tensors]:
            t = out[name]
            w = np.asarray(params[name], dtype=np.float32).reshape(t.q.shape)
            err = w.astype(np.float64) - dequantize(t).reshape(t.q.shape).astype(np.float64)
            f = fit(err, q.lqer_rank, q.lqer_a_bits, q.lqer_b_bits, q.lqer_group)
            out[name] = replace(t, lqer=f)
    return out


def build_sections(qts: dict[str, QTensor], cfg: Config) -> list[bytes]:
    """The uncompressed body in sections: meta JSON (config + tensor table), then the three streams."""
    codes, scales, floats = _Stream([]), _Stream([]), _Stream([])
    table = []
    for name in sorted(qts):
        t = qts[name]
        entry: dict = {"name": name, "shape": list(t.shape), "scheme": t.scheme, "bits": t.bits}
        if t.q is not None:
            entry["q"] = codes.add(np.ascontiguousarray(t.q, dtype=np.int8).tobytes())
            entry["s"] = scales.add(shuffle_bytes(t.scale.astype("<f2")))
            if t.awq is not None:
                a = t.awq
                entry["awq"] = {"start": a.start, "size": a.size, "bits": a.bits,
                                "s": scales.add(shuffle_bytes(a.scale.astype("<f2")))}
            if t.lqer is not None:
                f = t.lqer
                entry["lqer"] = {"rank": f.rank, "a_bits": f.a_bits, "b_bits": f.b_bits, "group": f.group,
                                 "a": codes.add(np.ascontiguousarray(f.a, dtype=np.int8).tobytes()),
                                 "as": scales.add(shuffle_bytes(f.a_scale.astype("<f2"))),
                                 "b": codes.add(np.ascontiguousarray(f.b, dtype=np.int8).tobytes()),
                                 "bs": scales.add(shuffle_bytes(f.b_scale.astype("<f2").reshape(-1)))}
        else:
            dtype = "<f4" if t.scheme == "fp32" else "<f2"
            entry["f"] = floats.add(shuffle_bytes(t.data.astype(dtype).reshape(-1)))
        table.append(entry)
    meta = {
        "config": _config_text(cfg),
        "streams": {"q": codes.size, "s": scales.size, "f": floats.size},
        "tensors": table,
    }
    meta_raw = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return [struct.pack("<I", len(meta_raw)) + meta_raw, b"".join(codes.chunks), b"".join(scales.chunks),
            b"".join(floats.chunks)]


def tensor_payload(t: QTensor) -> bytes:
    """A tensor's stored bytes (codes + shuffled scales (+ LQER factors), or shuffled floats), as in the body."""
    if t.q is not None:
        raw = np.ascontiguousarray(t.q, dtype=np.int8).tobytes() + shuffle_bytes(t.scale.astype("<f2"))
        if t.awq is not None:
            raw += shuffle_bytes(t.awq.scale.astype("<f2"))
        if t.lqer is not None:
            f = t.lqer
            raw += (f.a.astype(np.int8).tobytes() + f.b.astype(np.int8).tobytes()
                    + shuffle_bytes(f.a_scale.astype("<f2")) + shuffle_bytes(f.b_scale.astype("<f2").reshape(-1)))
        return raw
    return shuffle_bytes(t.data.astype("<f4" if t.scheme == "fp32" else "<f2").reshape(-1))


def tensor_bytes(t: QTensor, level: int) -> int:
    """Bytes of one tensor's payload compressed alone: an estimate of its share of the artifact
    (the whole body compresses somewhat better than the sum of its parts)."""
    return len(compress(tensor_payload(t), level))


def compress(body: bytes, level: int) -> bytes:
    """One-shot, single-threaded zstd: the same bytes on every machine (docs/FACTS.md)."""
    return pipelines.zstd_compress(body, level)


def pack(params: dict[str, np.ndarray], cfg: Config, hessians: dict | None = None,
         schemes: dict[str, str] | None = None, token_counts: np.ndarray | None = None) -> bytes:
    """Quantise and pack `params` (canonical names) into artifact bytes.

    `hessians` maps a 2-D weight's name to its [in, in] float64 input Hessian
    (used when `quant.gptq`); `schemes` overrides the scheme of named tensors
    (the budget mode's per-tensor choice); `token_counts` feeds "frequency"
    embedding steps (`quantize_all`). Weights holding a NaN or an infinity are refused (the
    error names the tensor), and so is a tensor whose values or scales overflow fp16."""
    check_finite(params, "weights to pack")
    return pack_quantized(quantize_all(params, cfg, hessians, schemes, token_counts), cfg)


def pack_quantized(qts: dict[str, QTensor], cfg: Config) -> bytes:
    """Artifact bytes of already-quantised tensors with `quant.compressor`."""
    sections = build_sections(qts, cfg)
    q = cfg.quant
    name = q.compressor
    coder = None
    if q.compressor == "group_ans":   # decided by the baked config: train_gpt.py carries ans.py only then
        from shared.artifact import ans as coder
    # One frame per section: each stream gets its own entropy statistics, which measured
    # ~1% smaller than one frame over the whole body (BENCHMARKS.md, artifact section).
    payload = pipelines.encode(name, sections, q.zstd_level, q.group_sort, coder)
    crc = zlib.crc32(b"".join(sections))
    return HEADER.pack(MAGIC, VERSION, pipelines.PIPELINE_IDS[name], len(payload), crc) + payload


def pipeline_of(blob: bytes) -> str:
    """The compression pipeline an artifact was written with."""
    if len(blob) >= HEADER.size and blob[:4] == MAGIC and blob[4] == VERSION:
        return pipelines.pipeline_name(blob[5], "artifact")
    return "zstd"


# ----------------------------------------------------------------------------- reader

def _decode_body(blob: bytes, source: str, pipeline: str | None = None) -> tuple[dict, memoryview]:
    if len(blob) < 5:
        raise PgolfError(f"{source}: {len(blob)} bytes is too short to be a pgolf artifact (truncated?)")
    magic, version = blob[:4], blob[4]
    if magic != MAGIC:
        raise PgolfError(f"{source}: not a pgolf artifact (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:  # v1 (no pipeline byte) was only ever written by pre-release pgolf: repack those
        raise PgolfError(f"{source}: artifact format version {version} is not read by this pgolf "
                         f"(it reads version {VERSION}); repack the checkpoint with `pgolf pack`")
    header = HEADER
    if len(blob) < header.size:
        raise PgolfError(f"{source}: {len(blob)} bytes is too short to be a pgolf artifact (truncated?)")
    _, _, pid, length, crc = HEADER.unpack_from(blob)
    # an unknown or foreign pipeline is refused by name, first; a reader that knows the pipeline (a run reading
    # back what it wrote: train_gpt.py then carries that pipeline's decoder only) refuses any other
    name = pipeline or pipelines.pipeline_name(pid, source)
    if pipelines.PIPELINE_IDS[name] != pid:
        raise PgolfError(f"{source}: compressed with pipeline id {pid}, not {name} ({pipelines.PIPELINE_IDS[name]})")
    if len(blob) != header.size + length:
        raise PgolfError(f"{source}: artifact is {len(blob)} bytes but its header says {header.size + length} "
                         "(truncated or trailing bytes); re-copy or repack it")
    body = b"".join(pipelines.decode(name, bytes(blob[header.size:]), source))
    if zlib.crc32(body) != crc:
        raise PgolfError(f"{source}: artifact checksum mismatch (corrupted); re-copy or repack it")
    try:
        (meta_len,) = struct.unpack_from("<I", body)
        meta = json.loads(bytes(body[4:4 + meta_len]).decode("utf-8"))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise PgolfError(f"{source}: unreadable artifact table ({e})") from None
    return meta, memoryview(body)[4 + meta_len:]


def read_quantized(blob: bytes, source: str = "artifact", pipeline: str | None = None
                   ) -> tuple[Config, dict[str, QTensor]]:
    """The config and the packed tensors (codes and scales, not yet dequantised); `pipeline`: the one the
    artifact must have been written with (default: the one its header names)."""
    meta, data = _decode_body(blob, source, pipeline)
    try:
        cfg, out = _read_table(meta, data, source)
    except (KeyError, TypeError, ZeroDivisionError, IndexError) as e:  # a well-formed checksum over a bad table
        raise PgolfError(f"{source}: malformed artifact table ({type(e).__name__}: {e}); repack it") from None
    check_params(out, cfg.model, source)
    return cfg, out


def _read_table(meta: dict, data: memoryview, source: str) -> tuple[Config, dict[str, QTensor]]:
    cfg = from_toml_text(meta["config"], source=f"{source} (embedded config)")
    sizes = meta["streams"]
    base = {"q": 0, "s": sizes["q"], "f": sizes["q"] + sizes["s"]}
    if len(data) != sizes["q"] + sizes["s"] + sizes["f"]:
        raise PgolfError(f"{source}: artifact payload length does not match its table (corrupted)")

    def part(kind: str, ref: list[int]) -> bytes:
        off, n = ref
        if off < 0 or n < 0 or off + n > sizes[kind]:
            raise PgolfError(f"{source}: tensor offsets out of range (corrupted)")
        return bytes(data[base[kind] + off: base[kind] + off + n])

    out: dict[str, QTensor] = {}
    for e in meta["tensors"]:
        shape = tuple(int(s) for s in e["shape"])
        scheme = e["scheme"]
        numel = int(np.prod(shape)) if shape else 1
        try:
            if scheme in FLOAT_SCHEMES:
                dtype = np.dtype("<f4" if scheme == "fp32" else "<f2")
                data_f = unshuffle_bytes(part("f", e["f"]), dtype, numel)
                out[e["name"]] = QTensor(scheme, shape, data=data_f.reshape(shape))
            elif scheme in INT_BITS:
                rows = shape[0]
                q = np.frombuffer(part("q", e["q"]), dtype=np.int8).reshape(rows, numel // rows)
                scale = unshuffle_bytes(part("s", e["s"]), np.dtype("<f2"), rows)
                out[e["name"]] = QTensor(scheme, shape, q=q, scale=scale, lqer=_read_lqer(e, q.shape, part),
                                         awq=_read_awq(e, q.shape, part))
            else:
                raise PgolfError(f"{source}: tensor {e['name']} has unknown scheme {scheme!r}")
        except ValueError as err:
            raise PgolfError(f"{source}: tensor {e['name']} does not match its table entry ({err})") from None
    return cfg, out


def _read_awq(e: dict, shape: tuple[int, int], part) -> Awq | None:
    a = e.get("awq")
    if a is None:
        return None
    start, size, bits = int(a["start"]), int(a["size"]), int(a["bits"])
    if not (0 <= start and start + size <= shape[1] and 2 <= bits <= 8):
        raise ValueError("its AWQ column group is out of range")
    return Awq(start, size, bits, unshuffle_bytes(part("s", a["s"]), np.dtype("<f2"), shape[0]))


def _read_lqer(e: dict, shape: tuple[int, int], part) -> Lqer | None:
    f = e.get("lqer")
    if f is None:
        return None
    rank, group = int(f["rank"]), int(f["group"])
    out_f, in_f = shape
    ng = -(-in_f // group)
    a = np.frombuffer(part("q", f["a"]), dtype=np.int8).reshape(out_f, rank)
    b = np.frombuffer(part("q", f["b"]), dtype=np.int8).reshape(rank, in_f)
    a_s = unshuffle_bytes(part("s", f["as"]), np.dtype("<f2"), 1)
    b_s = unshuffle_bytes(part("s", f["bs"]), np.dtype("<f2"), rank * ng).reshape(rank, ng)
    return Lqer(a=a, a_scale=a_s, b=b, b_scale=b_s, a_bits=int(f["a_bits"]), b_bits=int(f["b_bits"]), group=group)


def unpack(blob: bytes, source: str = "artifact", pipeline: str | None = None
           ) -> tuple[Config, dict[str, np.ndarray]]:
    """The config and float32 dequantised weights with canonical names (all finite, or an error)."""
    cfg, qts = read_quantized(blob, source, pipeline)
    params = {name: dequantize(t) for name, t in qts.items()}
    check_finite(params, source, "the artifact is broken: repack it from a finite checkpoint with this pgolf")
    return cfg, params


def write_artifact(path: str | Path, blob: bytes) -> Path:
    from shared.files import atomic_write_bytes

    return atomic_write_bytes(path, blob)


def read_artifact(path: str | Path) -> tuple[Config, dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"{path} not found: pass an artifact written by `pgolf pack` or `pgolf train`")
    return unpack(path.read_bytes(), source=str(path))
