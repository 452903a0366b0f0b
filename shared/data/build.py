"""Build a challenge-format dataset from documents: tokenizer, shards, byte sidecars, manifest.

    out/tokenizers/<name>_<vocab>_bpe.model   SentencePiece BPE, the challenge's settings
    out/tokenizers/<name>_<vocab>_bpe.vocab   piece<TAB>score, one per line
    out/datasets/<name>_sp<vocab>/fineweb_val_000000.bin     the first `val_docs` documents
    out/datasets/<name>_sp<vocab>/fineweb_train_000000.bin   the rest, BOS before each document
    out/datasets/<name>_sp<vocab>/manifest.json  counts and sha256 of every file

With `transform="caseops"` (shared/data/caseops.py, PR #1729) the documents
are transformed before the tokenizer sees them, the four operators are
reserved pieces (user_defined_symbols), the names end in `_caseops`, and each
validation shard gets a byte sidecar `fineweb_val_bytes_NNNNNN.bin`: one
uint16 per token, the UTF-8 bytes of the original text it stands for
(BOS and operators 0). With `kind="byte"` the tokenizer is the challenge's
byte260 (`<name>_pure_byte_260.json`, dataset `<name>_byte260`), nothing to train.

The canonical split: validation is the first `val_docs` documents of the
stream; the tokenizer is trained on the training documents only and the
training shards hold only those, so validation text is never seen by
either. Everything is deterministic for a given document stream.

Memory stays bounded: documents are streamed from the source (`open_docs`),
the tokenizer trainer gets at most `max_chars` characters (every k-th
training document), and encoding runs in `workers` processes over chunks of
documents, in order, writing each shard as it fills.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from shared.core.progress import Progress
from shared.data import caseops
from shared.data.manifest import BOS_ID, TOKENIZER_SETTINGS, write_manifest
from shared.data.shards import FILE_MODE, sidecar_name, write_shard
from shared.errors import PgolfError

SHARD_TOKENS = 100_000_000  # the published export's train shard size
KINDS = ("sp", "byte")
CHUNK_DOCS = 256            # documents per encoding task


def dataset_paths(out: str | Path, name: str, vocab: int, transform: str = "none",
                  kind: str = "sp") -> tuple[Path, Path]:
    """(data_dir, tokenizer_path) in the layout users expect."""
    out = Path(out)
    if kind == "byte":
        return out / "datasets" / f"{name}_byte260", out / "tokenizers" / f"{name}_pure_byte_260.json"
    tail = "" if transform == "none" else f"_{transform}"
    return out / "datasets" / f"{name}_sp{vocab}{tail}", out / "tokenizers" / f"{name}_{vocab}_bpe{tail}.model"


def tokenizer_settings(transform: str = "none") -> dict:
    """The SentencePiece trainer settings: the challenge's, plus the reserved operators for CaseOps."""
    if transform == caseops.NAME:
        return {**TOKENIZER_SETTINGS, "user_defined_symbols": list(caseops.OPERATORS)}
    return dict(TOKENIZER_SETTINGS)


def _training_lines(docs: Iterable[str], max_chars: int, total_chars: int | None = None) -> Iterator[str]:
    """Non-empty lines of the documents, every k-th document when there is more text than `max_chars`.

    Lines, not whole documents: the trainer drops sentences longer than its
    limit, and its pieces never cross whitespace, so nothing is lost.
    """
    if total_chars is None:
        docs = list(docs)
        total_chars = sum(len(d) for d in docs)
    step = max(1, -(-total_chars // max_chars)) if max_chars > 0 else 1
    for k, d in enumerate(docs):
        if k % step == 0:
            yield from (line for line in d.splitlines() if line.strip())


def train_tokenizer(train_docs: Iterable[str], vocab: int, path: Path, max_chars: int = 400_000_000,
                    transform: str = "none", total_chars: int | None = None) -> Path:
    """Train a SentencePiece BPE tokenizer with the challenge's settings; write .model and .vocab.

    `train_docs` are the training documents as they are (the transform, if
    any, is applied here); `total_chars` spares a pass to count them.
    """
    import sentencepiece as spm

    from shared.files import atomic_write_bytes

    fn = caseops.encode if transform == caseops.NAME else None
    lines = _training_lines((fn(d) for d in train_docs) if fn else train_docs, max_chars, total_chars)
    first = next(lines, None)
    if first is None:
        raise PgolfError("no training text to train the tokenizer on: the documents after --val-docs are empty")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_chain(first, lines), model_writer=model, vocab_size=vocab, minloglevel=2,
            max_sentence_length=1 << 16, num_threads=2, **tokenizer_settings(transform),
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


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def write_byte_tokenizer(path: Path) -> Path:
    """The challenge's byte260 tokenizer file (`fineweb_pure_byte_260.json` format)."""
    from shared.data.bpb import ByteTokenizer
    from shared.files import atomic_write_bytes

    text = json.dumps(ByteTokenizer().to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8")).chmod(FILE_MODE)
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


def sidecar_counts(tokens: np.ndarray, tables, op_ids: list[int] | None) -> np.ndarray:
    """Original UTF-8 bytes of each token of a BOS-led stream (BOS 0, acting operators 0), as uint16.

    A token's transformed-text bytes come from the tokenizer's byte table (the
    exact rules of shared/data/bpb.py); the inverse transform changes only
    operators (0 bytes each; an escaped operator character is 3 bytes of text)
    and the case of ASCII letters (1 byte either way), so the rest is equal.
    """
    tokens = np.asarray(tokens)
    out = np.zeros(tokens.size, dtype=np.int64)
    if tokens.size > 1:
        out[1:] = tables.token_bytes(tokens, 1, tokens.size)
    if op_ids is not None:
        out[caseops.operator_mask(tokens, op_ids)] = 0
    if out.size and out.max() > 65535:
        raise PgolfError("a token stands for more than 65,535 bytes: it cannot be stored in a uint16 byte sidecar")
    return out.astype(np.uint16)


# --- encoding workers: one tokenizer per process, chunks of documents in order --------------
_WORKER: dict = {}


def _init_worker(tok_path: str, transform: str) -> None:
    from shared.data.bpb import ByteTables, load_tokenizer

    sp = load_tokenizer(tok_path)
    _WORKER.update(sp=sp, transform=transform, tables=ByteTables.from_processor(sp),
                   op_ids=caseops.operator_ids(sp) if transform == caseops.NAME else None)


def _encode_chunk(task: tuple[list[str], bool]) -> tuple[np.ndarray, np.ndarray | None]:
    """(tokens, sidecar or None) of a chunk of documents, BOS before each."""
    docs, with_bytes = task
    sp, transform = _WORKER["sp"], _WORKER["transform"]
    if transform == caseops.NAME:
        docs = [caseops.encode(d) for d in docs]
    ids = sp.encode(docs, num_threads=1) if docs else []
    parts = [np.array([BOS_ID, *x], dtype=np.uint16) for x in ids]
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    counts = sidecar_counts(tokens, _WORKER["tables"], _WORKER["op_ids"]) if with_bytes else None
    return tokens, counts


def _chunks(docs: Iterable[str], val_docs: int, bytes_for_val: bool) -> Iterator[tuple[list[str], bool]]:
    """Chunks never straddle the split, so each chunk belongs to one split."""
    buf: list[str] = []
    for k, d in enumerate(docs):
        if k == val_docs and buf:
            yield buf, bytes_for_val
            buf = []
        buf.append(d)
        if len(buf) == CHUNK_DOCS:
            yield buf, bytes_for_val and k < val_docs
            buf = []
    if buf:
        yield buf, bytes_for_val and (k < val_docs)


class _SplitWriter:
    """Writes `fineweb_{split}_NNNNNN.bin` (and the sidecar) every `shard_tokens` tokens."""

    def __init__(self, data_dir: Path, split: str, shard_tokens: int):
        self.data_dir, self.split, self.shard_tokens = data_dir, split, shard_tokens
        self.tokens: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.n = 0
        self.written = 0
        self.total = 0

    def add(self, tokens: np.ndarray, counts: np.ndarray | None) -> None:
        self.tokens.append(tokens)
        if counts is not None:
            self.counts.append(counts)
        self.n += tokens.size
        self.total += tokens.size
        while self.n >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        tokens = np.concatenate(self.tokens) if self.tokens else np.zeros(0, dtype=np.uint16)
        path = write_shard(self.data_dir / f"fineweb_{self.split}_{self.written:06d}.bin", tokens[:n])
        self.tokens = [tokens[n:]] if tokens.size > n else []
        if self.counts:
            counts = np.concatenate(self.counts)
            write_shard(self.data_dir / sidecar_name(path), counts[:n])
            self.counts = [counts[n:]] if counts.size > n else []
        self.n -= n
        self.written += 1

    def close(self) -> None:
        if self.n > 0 or self.written == 0:
            self._flush(self.n)


def _scan(docs: Iterable[str], val_docs: int) -> tuple[int, int]:
    """(documents, characters of the training documents): one pass over a streamed source."""
    if isinstance(docs, list):
        return len(docs), sum(len(d) for d in docs[val_docs:])
    n = chars = 0
    for n, d in enumerate(docs, 1):
        if n > val_docs:
            chars += len(d)
    return n, chars


def check_vocab(vocab: int, kind: str = "sp", tokenizer: Path | None = None) -> None:
    """A SentencePiece vocabulary a build can train: above the 260 fixed pieces, at most uint16's range."""
    if kind == "sp" and tokenizer is None and not 260 < vocab <= 65536:
        raise PgolfError(f"--vocab {vocab}: must be above 260 (256 byte pieces + 4 specials) and at most 65536")


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def build_dataset(
    docs: Iterable[str],
    out: str | Path,
    vocab: int,
    val_docs: int,
    name: str,
    shard_tokens: int = SHARD_TOKENS,
    source: str = "",
    transform: str = "none",
    kind: str = "sp",
    workers: int = 1,
    max_chars: int = 400_000_000,
    tokenizer: str | Path | None = None,
) -> tuple[Path, Path]:
    """Tokenizer + val/train shards (+ byte sidecars) + manifest under `out`; returns (data_dir, tokenizer_path).

    `docs` is a list or a re-iterable stream (`open_docs`): it is read once to
    count, once to train the tokenizer and once to encode. `tokenizer`: reuse
    this SentencePiece model (copied into out/tokenizers/) instead of training
    one, e.g. a record's CaseOps tokenizer on the challenge's docs.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PgolfError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-'")
    if transform not in caseops.TRANSFORMS:
        raise PgolfError(f"--transform {transform!r}: expected one of {', '.join(caseops.TRANSFORMS)}")
    if kind not in KINDS:
        raise PgolfError(f"--kind {kind!r}: expected sp (SentencePiece BPE) or byte (byte260)")
    if kind == "byte" and transform != "none":
        raise PgolfError("--transform caseops needs a SentencePiece tokenizer (--kind sp): byte260 has no operator ids")
    check_vocab(vocab, kind, tokenizer)  # before the documents are read: a bad flag costs nothing
    n_docs, train_chars = _scan(docs, val_docs)
    if not 1 <= val_docs < n_docs:
        raise PgolfError(f"--val-docs {val_docs}: need at least 1 validation document and 1 training document "
                         f"({n_docs} documents found)")
    # Everything is built in a staging folder beside the datasets and swapped in at the end, so an
    # interrupted or failed rebuild leaves the previous dataset and tokenizer whole.
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    except OSError as e:
        raise PgolfError(f"{out}: cannot create the dataset folder ({e.strerror or e}); choose a writable --out") from None
    try:
        staged = _build(docs, stage, vocab, val_docs, name, shard_tokens, source, transform, kind, workers, max_chars,
                        tokenizer, n_docs, train_chars)
        return _swap_in(stage, out, *staged)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, out: Path, data_dir: Path, tok_path: Path) -> tuple[Path, Path]:
    """Move the staged dataset folder and tokenizer files to their places under `out` (signals held off)."""
    final_data, final_tok = out / data_dir.relative_to(stage), out / tok_path.relative_to(stage)
    blocked = {signal.SIGINT, signal.SIGTERM}
    held = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        final_data.parent.mkdir(parents=True, exist_ok=True)
        final_tok.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if final_data.exists():
            old = final_data.with_name(f".{final_data.name}.old-{os.getpid()}")
            os.replace(final_data, old)
        os.replace(data_dir, final_data)
        for src in (tok_path, tok_path.with_suffix(".vocab")):
            if src.is_file():
                os.replace(src, final_tok.parent / src.name)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise PgolfError(f"{final_data}: could not move the rebuilt dataset into place ({e.strerror or e})") from None
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    return final_data, final_tok


def _build(docs, out: Path, vocab: int, val_docs: int, name: str, shard_tokens: int, source: str, transform: str,
           kind: str, workers: int, max_chars: int, tokenizer, n_docs: int, train_chars: int) -> tuple[Path, Path]:
    """`build_dataset`'s work, under the staging root `out`."""
    data_dir, tok_path = dataset_paths(out, name, vocab, transform, kind)

    if kind == "byte":
        write_byte_tokenizer(tok_path)
        vocab, settings = 260, {"tokenizer_type": "pure_byte"}
    elif tokenizer is not None:
        tok_path, vocab, settings = _reuse_tokenizer(Path(tokenizer), Path(out), transform)
        data_dir = dataset_paths(out, name, vocab, transform, kind)[0]
    else:
        print(f"training a {vocab}-piece BPE tokenizer on {n_docs - val_docs:,} documents "
              f"({train_chars:,} characters{', caseops' if transform != 'none' else ''}) ...",
              file=sys.stderr, flush=True)
        train_docs = docs[val_docs:] if isinstance(docs, list) else (d for k, d in enumerate(docs) if k >= val_docs)
        train_tokenizer(train_docs, vocab, tok_path, max_chars=max_chars, transform=transform,
                        total_chars=train_chars)
        settings = tokenizer_settings(transform)

    data_dir.mkdir(parents=True, exist_ok=True)  # a fresh folder: no shard of an earlier build mixes in
    writers = {split: _SplitWriter(data_dir, split, shard_tokens) for split in ("val", "train")}
    if n_docs <= 4 * CHUNK_DOCS:
        workers = 1  # starting processes costs more than it saves
    tasks = _chunks(docs, val_docs, bytes_for_val=transform != "none")
    done = 0
    with Progress(f"encode {data_dir.name}", total=n_docs, unit="docs") as bar:
        for tokens, counts in _map_chunks(tasks, str(tok_path), transform, workers):
            split = "val" if done < val_docs else "train"
            writers[split].add(tokens, counts)
            docs_in_chunk = int((tokens == BOS_ID).sum())
            done += docs_in_chunk
            bar.update(docs_in_chunk)
    for w in writers.values():
        w.close()

    write_manifest(data_dir, tok_path, name=data_dir.name, vocab=vocab,
                   docs={"val": val_docs, "train": n_docs - val_docs}, source=source, transform=transform,
                   settings=settings)
    return data_dir, tok_path


def _reuse_tokenizer(src: Path, out: Path, transform: str) -> tuple[Path, int, dict]:
    """Copy an existing SentencePiece model (and its .vocab) into out/tokenizers/; (path, vocab, settings)."""
    from shared.data.bpb import ByteTokenizer, load_tokenizer
    from shared.files import atomic_write_bytes

    sp = load_tokenizer(src)
    if isinstance(sp, ByteTokenizer):
        raise PgolfError(f"--tokenizer {src}: a byte260 tokenizer; use --kind byte instead")
    if transform == caseops.NAME:
        caseops.operator_ids(sp)  # the sidecar needs the operators as pieces
    elif caseops.has_operators(sp):
        raise PgolfError(f"--tokenizer {src} reserves the CaseOps operators: pass --transform caseops")
    dest = out / "tokenizers" / src.name
    for a, b in ((src, dest), (src.with_suffix(".vocab"), dest.with_suffix(".vocab"))):
        if a.is_file() and a.resolve() != b.resolve():
            atomic_write_bytes(b, a.read_bytes()).chmod(FILE_MODE)
    return dest, int(sp.vocab_size()), {"reused": str(src)}


def _map_chunks(tasks, tok_path: str, transform: str, workers: int):
    """`_encode_chunk` over the tasks, in order: in this process, or in a pool of `workers` processes."""
    if workers <= 1:
        _init_worker(tok_path, transform)
        try:
            yield from map(_encode_chunk, tasks)
        finally:
            _WORKER.clear()
        return
    import multiprocessing as mp
    from collections import deque

    # Pool.imap would read the whole task stream ahead; a window of 2 tasks per worker bounds memory.
    with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(tok_path, transform)) as pool:
        window: deque = deque()
        for task in tasks:
            window.append(pool.apply_async(_encode_chunk, (task,)))
            if len(window) >= 2 * workers:
                yield window.popleft().get()
        while window:
            yield window.popleft().get()


def _doc_name(src: str) -> str:
    stem = Path(src.rstrip("/*")).stem or "custom"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "custom"


class DocSource:
    """The documents of `--docs`, read again on every iteration (streamed: one document in memory at a time).

    Kinds: "jsonl" (one document per line, its `text` field), "files" (one
    document per file), "paragraphs" (one .txt file, documents separated by
    blank lines; that file is read whole).
    """

    def __init__(self, kind: str, paths: list[Path]):
        self.kind, self.paths = kind, paths
        self._len: int | None = None

    def __iter__(self) -> Iterator[str]:
        if self.kind == "files":
            yield from (_read_text(f) for f in self.paths)
        elif self.kind == "paragraphs":
            text = _read_text(self.paths[0])
            yield from (d.strip("\n") for d in re.split(r"\n\s*\n", text) if d.strip())
        else:
            yield from _jsonl_docs(self.paths[0])

    def __len__(self) -> int:
        if self._len is None:
            self._len = len(self.paths) if self.kind == "files" else sum(1 for _ in self)
        return self._len


def _jsonl_docs(path: Path) -> Iterator[str]:
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
            yield row["text"]


def open_docs(src: str | Path) -> tuple[DocSource, str]:
    """The documents of `--docs` as a re-iterable stream, and a default dataset name.

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
        return DocSource("files", files), _doc_name(src.split("*")[0] or "custom")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise PgolfError(f"--docs {src}: the folder holds no .txt files")
        return DocSource("files", files), _doc_name(src)
    if not path.is_file():
        raise PgolfError(f"--docs {src} not found: pass a .jsonl file, a folder of .txt files or a glob")
    return DocSource("jsonl" if path.suffix == ".jsonl" else "paragraphs", [path]), _doc_name(src)


def read_docs(src: str | Path) -> tuple[list[str], str]:
    """Documents from `--docs` (all in memory) and a default dataset name; see `open_docs`."""
    source, name = open_docs(src)
    return list(source), name


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PgolfError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
