"""`pgolf data audit`: do the byte tables add up to the decoded validation text?

The validation stream is split into documents at BOS, each document is
decoded with the tokenizer, and the UTF-8 lengths are summed: that is the
ground truth BPB divides by. Every U+2581 in the decoded text stands for a
space (SentencePiece maps any whitespace, a literal U+2581 included, to it
before encoding; only the byte-fallback triple of a tokenizer without a
standalone U+2581 piece brings it back out of `decode()`), so it counts as
one byte. The tables' total is `ByteTables.target_bytes` over every target
(all tokens after the first). `factor` = lut_bytes / decoded_bytes: BPB
computed with the tables is off by 1 / factor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.core.progress import Progress
from shared.data.bpb import SPACE, ByteTables, load_tokenizer
from shared.data.manifest import BOS_ID, read_manifest
from shared.data.shards import load_val_tokens


def documents(tokens: np.ndarray, bos_id: int = BOS_ID) -> list[tuple[int, int]]:
    """(start, end) of each document's tokens, BOS excluded; text before the first BOS is one too."""
    starts = np.flatnonzero(np.asarray(tokens) == bos_id)
    bounds = [0, *starts.tolist(), int(tokens.size)]
    spans = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        a = a + 1 if a < tokens.size and tokens[a] == bos_id else a
        if b > a:
            spans.append((a, b))
    return spans


def audit(data_dir: str | Path, tokenizer_path: str | Path, chunk_docs: int = 1024) -> dict:
    """Compare the tables' byte total with the decoded validation text; the JSON report."""
    from shared.data.dataset import check_manifest

    data_dir, tokenizer_path = Path(data_dir), Path(tokenizer_path)
    sp = load_tokenizer(tokenizer_path)
    manifest = read_manifest(data_dir)
    if manifest is not None:
        check_manifest(data_dir, tokenizer_path, manifest)
    tables = ByteTables.from_processor(sp)
    tokens = load_val_tokens(data_dir, vocab_size=int(sp.vocab_size()))
    spans = documents(tokens)
    decoded = raw = spaces = 0
    with Progress("decode val", total=len(spans), unit="docs") as bar:
        for i in range(0, len(spans), chunk_docs):
            batch = [np.asarray(tokens[a:b]).tolist() for a, b in spans[i : i + chunk_docs]]
            for text in sp.decode(batch):
                n_sp = text.count(SPACE)
                raw += len(text.encode("utf-8"))
                decoded += len(text.encode("utf-8")) - 2 * n_sp  # U+2581 (3 bytes) stands for " " (1 byte)
                spaces += n_sp
            bar.update(len(batch))
    lut = tables.target_bytes(tokens, 1, int(tokens.size)) if tokens.size > 1 else 0
    return {
        "data_dir": str(data_dir),
        "tokenizer": str(tokenizer_path),
        "tokens": int(tokens.size),
        "documents": len(spans),
        "lut_bytes": int(lut),
        "decoded_bytes": int(decoded),
        "exact": int(lut) == int(decoded),
        "factor": (lut / decoded) if decoded else float("nan"),
        "decode_u2581": int(spaces),
        "raw_decode_bytes": int(raw),
    }


def describe(report: dict) -> str:
    """The human-readable audit."""
    lines = [
        f"validation tokens {report['tokens']:,} in {report['documents']:,} documents",
        f"byte tables       {report['lut_bytes']:,} bytes",
        f"decoded text      {report['decoded_bytes']:,} bytes (UTF-8)",
    ]
    if report["decode_u2581"]:
        lines.append(f"                  {report['decode_u2581']:,} spaces came out of decode() as U+2581 "
                     "(byte-fallback triple: no standalone U+2581 piece); counted as 1 byte each")
    f = report["factor"]
    if report["exact"]:
        lines.append("exact: the byte tables add up to the decoded text (factor 1.000000)")
    else:
        direction = "too low" if f > 1 else "too high"
        lines.append(f"NOT exact: factor {f:.6f}; BPB from these tables would be {abs(1 - 1 / f) * 100:.2f}% {direction}")
    return "\n".join(lines)
