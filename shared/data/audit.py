"""`pgolf data audit`: does the byte accounting add up to the decoded validation text?

The validation stream is split into documents at BOS, each document is
decoded with the tokenizer and the UTF-8 lengths are summed: that is the
ground truth BPB divides by. Per variant:

- sp<VOCAB>: SentencePiece decode. Every U+2581 in the decoded text stands
  for a space (SentencePiece maps any whitespace, a literal U+2581 included,
  to it before encoding; only the byte-fallback triple of a tokenizer without
  a standalone U+2581 piece brings it back out of `decode()`): one byte.
- CaseOps: decode, then invert the transform (shared/data/caseops.py): the
  original text, whose UTF-8 length the sidecar must add up to.
- byte260: the bytes the byte ids stand for.

What is counted is what training and `pgolf eval` charge (the choice of
shared/data/dataset.py: the sidecar when the dataset has one, else the byte
table), over every target (all tokens after the first). `factor` =
lut_bytes / decoded_bytes: BPB computed that way is off by 1 / factor.

When the two disagree, each document that is off is matched against the
known bug classes (docs/FACTS.md): its excess bytes equal
twice its U+2581 byte triples (`missing_u2581_piece`: a space counted as 3
bytes), its leading-space pieces (`leading_space_double_count`), or three
times its CaseOps operators (`transform_bytes_in_denominator`), or a sum of
these. `naive` gives, for the classes this dataset is exposed to, the factor
a count with that bug would have.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np

from shared.core.progress import Progress
from shared.data import caseops
from shared.data.bpb import SPACE, ByteTables, ByteTokenizer, SidecarBytes, load_tokenizer
from shared.data.manifest import BOS_ID, read_manifest
from shared.data.shards import load_val_bytes, load_val_tokens
from shared.errors import PgolfError

BUG_CLASSES = {
    "missing_u2581_piece": "no standalone U+2581 piece: a space is the byte triple <0xE2><0x96><0x81>, "
                           "counted as 3 bytes instead of 1",
    "leading_space_double_count": "the space of a leading-U+2581 piece counted twice (in the piece and as "
                                  "the leading space)",
    "transform_bytes_in_denominator": "the transformed text's bytes charged: each CaseOps operator counted as "
                                      "3 bytes instead of 0",
}


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


def _variant(sp, transform: str) -> str:
    if isinstance(sp, ByteTokenizer):
        return "byte260"
    return "caseops" if transform == caseops.NAME else "sp"


class _Signatures:
    """Per-document counts that each known bug class would add to the bytes."""

    def __init__(self, sp, tables: ByteTables, op_ids: list[int] | None):
        self.op_ids = op_ids
        self.lead = tables.has_leading_space & ~tables.is_boundary
        # The space triple from the tokenizer itself, whatever the tables being audited think.
        triple = None
        if not isinstance(sp, ByteTokenizer) and sp.id_to_piece(int(sp.piece_to_id(SPACE))) != SPACE:
            ids = tuple(int(sp.piece_to_id(f"<0x{b:02X}>")) for b in SPACE.encode("utf-8"))
            triple = ids if all(sp.is_byte(i) for i in ids) else None
        self.triples = replace(tables, space_triple=triple)

    def of(self, tokens: np.ndarray, a: int, b: int) -> dict[str, int]:
        """Excess bytes per class for the document tokens[a:b] (tokens[a - 1] is its BOS or context)."""
        doc = np.asarray(tokens[a:b]).astype(np.int64)
        sig = {"missing_u2581_piece": 0, "leading_space_double_count": int(self.lead[doc].sum()),
               "transform_bytes_in_denominator": 0}
        if self.triples.space_triple is not None and b > a:
            sig["missing_u2581_piece"] = int(self.triples.triple_tails(tokens, a, b).sum())  # 2 per triple
        if self.op_ids is not None:
            ctx = np.asarray(tokens[a - 1 : b]) if a >= 1 else doc
            sig["transform_bytes_in_denominator"] = 3 * int(caseops.operator_mask(ctx, self.op_ids).sum())
        return sig


def _explain(diff: int, sig: dict[str, int]) -> tuple[str, ...]:
    """The smallest set of bug classes whose excess bytes add up to `diff` (empty: unexplained)."""
    names = [k for k, v in sig.items() if v > 0]
    for r in range(1, len(names) + 1):
        for combo in combinations(names, r):
            if sum(sig[k] for k in combo) == diff:
                return combo
    return ()


def audit(data_dir: str | Path, tokenizer_path: str | Path, chunk_docs: int = 1024) -> dict:
    """Compare the charged byte total with the decoded validation text; the JSON report."""
    from shared.data.dataset import check_manifest

    data_dir, tokenizer_path = Path(data_dir), Path(tokenizer_path)
    sp = load_tokenizer(tokenizer_path)
    manifest = read_manifest(data_dir)
    if manifest is not None:
        check_manifest(data_dir, tokenizer_path, manifest)
    tokens = load_val_tokens(data_dir, vocab_size=int(sp.vocab_size()))
    transform = (manifest or {}).get("transform") or ("caseops" if caseops.has_operators(sp) else "none")
    variant = _variant(sp, transform)
    tables = ByteTables.from_processor(sp)
    sidecar = load_val_bytes(data_dir)
    if sidecar is not None and sidecar.size != tokens.size:
        raise PgolfError(f"{data_dir}: the byte sidecars hold {sidecar.size} entries for {tokens.size} validation tokens")
    # What training and eval charge (dataset.byte_counts), except that a CaseOps dataset without its
    # sidecar is audited with its byte table (and shown to be off) instead of refused.
    counter = SidecarBytes(sidecar) if sidecar is not None else tables
    op_ids = caseops.operator_ids(sp) if variant == "caseops" else None
    sigs = _Signatures(sp, tables, op_ids)
    spans = documents(tokens)

    decoded = raw = spaces = counted_docs = table_docs = 0
    bug_docs: dict[tuple[str, ...], list[int]] = {}
    with Progress("decode val", total=len(spans), unit="docs") as bar:
        for i in range(0, len(spans), chunk_docs):
            chunk = spans[i : i + chunk_docs]
            lo, hi = max(chunk[0][0], 1), chunk[-1][1]
            per_tok = counter.token_bytes(tokens, lo, hi) if hi > lo else np.zeros(0, np.int64)
            tab_tok = tables.token_bytes(tokens, lo, hi) if hi > lo else per_tok
            for (a, b), text in zip(chunk, _decode(sp, tokens, chunk, variant), strict=True):
                n_sp = 0 if variant == "byte260" else text.count(SPACE)
                nbytes = len(text.encode("utf-8", errors="surrogateescape")) if isinstance(text, str) else len(text)
                truth = nbytes - 2 * n_sp  # U+2581 (3 bytes) stands for " " (1 byte)
                raw += nbytes
                decoded += truth
                spaces += n_sp
                a0 = max(a, 1)
                got = int(per_tok[a0 - lo : b - lo].sum())
                counted_docs += got
                table_docs += int(tab_tok[a0 - lo : b - lo].sum())
                if got != truth:
                    key = _explain(got - truth, sigs.of(tokens, a0, b))
                    bug_docs.setdefault(key, [0, 0])
                    bug_docs[key][0] += 1
                    bug_docs[key][1] += got - truth
            bar.update(len(chunk))
    lut = counter.target_bytes(tokens, 1, int(tokens.size)) if tokens.size > 1 else 0
    bugs = []
    for key, (n_docs, excess) in sorted(bug_docs.items()):
        bugs += [{"name": name, "documents": n_docs, "excess_bytes": excess, "explains": "+".join(key),
                  "what": BUG_CLASSES[name]} for name in key] or [
            {"name": "unexplained", "documents": n_docs, "excess_bytes": excess, "explains": "",
             "what": "matches no known bug class"}]
    if lut != counted_docs:
        bugs.append({"name": "bytes_on_boundaries", "documents": 0, "excess_bytes": int(lut - counted_docs),
                     "explains": "", "what": "bytes charged to BOS tokens or to tokens before the first BOS"})
    return {
        "data_dir": str(data_dir),
        "tokenizer": str(tokenizer_path),
        "variant": variant,
        "transform": transform,
        "bytes_source": counter.source,
        "tokens": int(tokens.size),
        "documents": len(spans),
        "lut_bytes": int(lut),
        "decoded_bytes": int(decoded),
        "exact": int(lut) == int(decoded),
        "factor": (lut / decoded) if decoded else float("nan"),
        "decode_u2581": int(spaces),
        "raw_decode_bytes": int(raw),
        "bugs": bugs,
        "naive": _naive(tokens, tables, table_docs, decoded, sigs, variant),
    }


def _naive(tokens, tables: ByteTables, table_total: int, decoded: int, sigs: _Signatures,
           variant: str) -> dict[str, float]:
    """Factor (counted / true bytes) of a count with each bug this dataset is exposed to."""
    if not decoded or variant == "byte260":
        return {}
    out = {}
    n = int(tokens.size)
    lead = int(sigs.lead[np.asarray(tokens).astype(np.int64)].sum())
    out["leading_space_double_count"] = (decoded + lead) / decoded
    if sigs.triples.space_triple is not None and n > 1:
        out["missing_u2581_piece"] = (decoded + int(sigs.triples.triple_tails(tokens, 1, n).sum())) / decoded
    if variant == "caseops":
        out["transform_bytes_in_denominator"] = table_total / decoded  # the table charges the transformed text
    return out


def _decode(sp, tokens: np.ndarray, chunk: list[tuple[int, int]], variant: str):
    """The documents' ground-truth text: str (sp, CaseOps: inverted) or bytes (byte260)."""
    batch = [np.asarray(tokens[a:b]).tolist() for a, b in chunk]
    if variant == "byte260":
        return [sp.decode_bytes(ids) for ids in batch]
    texts = sp.decode(batch)
    if variant != "caseops":
        return texts
    out = []
    for (a, _), text in zip(chunk, texts, strict=True):
        try:
            out.append(caseops.decode(text))
        except caseops.CaseOpsError as e:
            raise PgolfError(f"validation document at token {a} does not invert the CaseOps transform ({e}): "
                             "was it built with this tokenizer?") from None
    return out


def describe(report: dict) -> str:
    """The human-readable audit."""
    source = {"sidecar": "byte sidecar", "byte_table": "byte tables"}.get(report.get("bytes_source"), "byte tables")
    lines = [
        f"variant           {report.get('variant', 'sp')} (BPB charged from the {source})",
        f"validation tokens {report['tokens']:,} in {report['documents']:,} documents",
        f"{source:<17} {report['lut_bytes']:,} bytes",
        f"decoded text      {report['decoded_bytes']:,} bytes (UTF-8"
        f"{', transform inverted' if report.get('variant') == 'caseops' else ''})",
    ]
    if report["decode_u2581"]:
        lines.append(f"                  {report['decode_u2581']:,} spaces came out of decode() as U+2581 "
                     "(byte-fallback triple: no standalone U+2581 piece); counted as 1 byte each")
    f = report["factor"]
    if report["exact"]:
        verb = "adds" if source == "byte sidecar" else "add"
        lines.append(f"exact: the {source} {verb} up to the decoded text (factor 1.000000)")
    else:
        direction = "too low" if f > 1 else "too high"
        lines.append(f"NOT exact: factor {f:.6f}; BPB from the {source} would be {abs(1 - 1 / f) * 100:.2f}% {direction}")
    for bug in report.get("bugs", []):
        lines.append(f"  bug: {bug['name']} in {bug['documents']:,} documents ({bug['excess_bytes']:+,} bytes): "
                     f"{bug['what']}")
    for name, factor in report.get("naive", {}).items():
        lines.append(f"  risk: {name} would give factor {factor:.6f} (BPB {abs(1 - 1 / factor) * 100:.2f}% too low)")
    return "\n".join(lines)
