"""Build a challenge-format dataset from documents: tokenizer, shards, manifest.

    out/tokenizers/<name>_<vocab>_bpe.model   SentencePiece BPE, the challenge's settings
    out/tokenizers/<name>_<vocab>_bpe.vocab   piece<TAB>score, one per line
    out/datasets/<name>_sp<vocab>/fineweb_val_000000.bin     the first `val_docs` documents
    out/datasets/<name>_sp<vocab>/fineweb_train_000000.bin   the rest, BOS before each document
    out/datasets/<name>_sp<vocab>/manifest.json  counts and sha256 of every file

The tokenizer is trained on the training documents only, so validation text
is never seen by it. Everything is deterministic for a given document list.
`read_docs` turns the `--docs` argument of `pgolf data build` into documents.
"""

from __future__ import annotations

import glob
import io
import json
import re
import sys
from pathlib import Path

import numpy as np

from shared.core.progress import Progress
from shared.data.manifest import BOS_ID, TOKENIZER_SETTINGS, write_manifest
from shared.data.shards import FILE_MODE, write_shard
from shared.errors import PgolfError

SHARD_TOKENS = 100_000_000  # the published export's train shard size

def dataset_paths(out: str | Path, name: str, vocab: int) -> tuple[Path, Path]:
    """(data_dir, tokenizer_path) in the layout users expect."""
    out = Path(out)
    return out / "datasets" / f"{name}_sp{vocab}", out / "tokenizers" / f"{name}_{vocab}_bpe.model"


def _training_lines(docs: list[str], max_chars: int) -> list[str]:
    """Non-empty lines of the documents, every k-th document when there is more text than `max_chars`.

    Lines, not whole documents: the trainer drops sentences longer than its
    limit, and its pieces never cross whitespace, so nothing is lost.
    """
    total = sum(len(d) for d in docs)
    step = max(1, -(-total // max_chars)) if max_chars > 0 else 1
    return [line for d in docs[::step] for line in d.splitlines() if line.strip()]


def train_tokenizer(train_docs: list[str], vocab: int, path: Path, max_chars: int = 400_000_000) -> Path:
    """Train a SentencePiece BPE tokenizer with the challenge's settings; write .model and .vocab."""
    import sentencepiece as spm

    from shared.core.rundir import atomic_write_bytes

    lines = _training_lines(train_docs, max_chars)
    if not lines:
        raise PgolfError("no training text to train the tokenizer on: the documents after --val-docs are empty")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab, minloglevel=2,
            max_sentence_length=1 << 16, num_threads=2, **TOKENIZER_SETTINGS,
        )
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if m := re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg):
            raise PgolfError(f"--vocab {vocab} is below the {m.group(1)} pieces this text needs "
                             "(its characters, 256 byte pieces, 4 specials): raise --vocab") from None
        raise PgolfError(f"SentencePiece could not train a {vocab}-piece tokenizer ({msg}); "
                         "use a smaller --vocab or more text") from None
    atomic_write_bytes(path, model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab_text = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    atomic_write_bytes(path.with_suffix(".vocab"), vocab_text.encode("utf-8"))
    for written in (path, path.with_suffix(".vocab")):
        written.chmod(FILE_MODE)  # atomic writes start as 0600
    return path


def encode_docs(sp, docs: list[str], desc: str, chunk: int = 512) -> np.ndarray:
    """Token ids of the documents, BOS before each, as one uint16 array."""
    parts: list[np.ndarray] = []
    with Progress(desc, total=len(docs), unit="docs") as bar:
        for i in range(0, len(docs), chunk):
            batch = docs[i : i + chunk]
            for ids in sp.encode(batch, num_threads=2):
                parts.append(np.array([BOS_ID, *ids], dtype=np.uint16))
            bar.update(len(batch))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def _write_split(data_dir: Path, split: str, tokens: np.ndarray, shard_tokens: int) -> list[Path]:
    files = []
    for k, start in enumerate(range(0, max(tokens.size, 1), shard_tokens)):
        files.append(write_shard(data_dir / f"fineweb_{split}_{k:06d}.bin", tokens[start : start + shard_tokens]))
    return files


def build_dataset(
    docs: list[str],
    out: str | Path,
    vocab: int,
    val_docs: int,
    name: str,
    shard_tokens: int = SHARD_TOKENS,
    source: str = "",
) -> tuple[Path, Path]:
    """Tokenizer + val/train shards + manifest under `out`; returns (data_dir, tokenizer_path)."""
    import sentencepiece as spm

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PgolfError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-'")
    if not 1 <= val_docs < len(docs):
        raise PgolfError(f"--val-docs {val_docs}: need at least 1 validation document and 1 training document "
                         f"({len(docs)} documents found)")
    if not 260 < vocab <= 65536:
        raise PgolfError(f"--vocab {vocab}: must be above 260 (256 byte pieces + 4 specials) and at most 65536")
    data_dir, tok_path = dataset_paths(out, name, vocab)
    val, train = docs[:val_docs], docs[val_docs:]

    print(f"training a {vocab}-piece BPE tokenizer on {len(train):,} documents ...", file=sys.stderr, flush=True)
    train_tokenizer(train, vocab, tok_path)
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))

    # A rebuild with fewer shards must not leave old ones behind.
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob("fineweb_*.bin"):
        stale.unlink()
    files = []
    for split, group in (("val", val), ("train", train)):
        tokens = encode_docs(sp, group, f"encode {split}")
        files += _write_split(data_dir, split, tokens, shard_tokens)

    write_manifest(data_dir, tok_path, name=f"{name}_sp{vocab}", vocab=vocab,
                   docs={"val": len(val), "train": len(train)}, source=source)
    return data_dir, tok_path


def _doc_name(src: str) -> str:
    stem = Path(src.rstrip("/*")).stem or "custom"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "custom"


def read_docs(src: str | Path) -> tuple[list[str], str]:
    """Documents from `--docs` and a default dataset name.

    A `.jsonl` file: one document per line, its `text` field. A folder: each
    `.txt` file (sorted by path, recursively) is one document. A glob: each
    matching file is one document. A single `.txt` file: documents separated
    by blank lines.
    """
    src = str(src)
    path = Path(src)
    if any(ch in src for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(src, recursive=True) if Path(p).is_file())
        if not files:
            raise PgolfError(f"--docs {src}: the glob matches no files")
        return [_read_text(f) for f in files], _doc_name(src.split("*")[0] or "custom")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise PgolfError(f"--docs {src}: the folder holds no .txt files")
        return [_read_text(f) for f in files], _doc_name(src)
    if not path.is_file():
        raise PgolfError(f"--docs {src} not found: pass a .jsonl file, a folder of .txt files or a glob")
    if path.suffix == ".jsonl":
        docs = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PgolfError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise PgolfError(f"{path}:{lineno}: expected an object with a string `text` field")
                docs.append(row["text"])
        return docs, _doc_name(src)
    text = _read_text(path)
    return [d.strip("\n") for d in re.split(r"\n\s*\n", text) if d.strip()], _doc_name(src)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PgolfError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
