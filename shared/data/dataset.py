"""Open a dataset for training or evaluation, checking everything up front.

`open_dataset(data_dir, tokenizer_path, vocab_size)` is what trainers and
`pgolf eval` call before any work: the validation and train shards exist and
have valid headers, the tokenizer loads, its vocabulary matches
`model.vocab_size`, the data was built with this tokenizer (when the dataset
folder has a manifest.json, its tokenizer sha256 must match the file), and
every validation token id (and the first train shard's) is in the vocabulary,
no shard is empty (a train stream over empty shards would spin forever), and,
given the run's `seq_len`, the validation split holds at least one sequence.
Each failure is a one-line `PgolfError`.

`byte_counts` is the one place that decides how BPB is charged: from the
byte sidecar `fineweb_val_bytes_*.bin` when the dataset has one (CaseOps), else
from the tokenizer's byte table. A tokenizer that reserves the CaseOps
operators without a sidecar is refused: its byte table would charge the
transformed text (PR #1729's datasets ship the sidecar for this reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared import SCRIPT
from shared.data import caseops
from shared.data.bpb import ByteTables, SidecarBytes, load_tokenizer
from shared.data.manifest import MANIFEST, read_manifest, sha256_file
from shared.data.shards import (
    TokenStream,
    check_vocab,
    find_shards,
    find_sidecars,
    load_val_bytes,
    load_val_tokens,
    read_shard,
    shard_count,
)
from shared.errors import PgolfError


@dataclass(frozen=True)
class Dataset:
    """A validated dataset: shards, tokenizer and its byte tables."""

    data_dir: Path
    tokenizer: Path            # the .model file (byte260: the .json file)
    tables: ByteTables | SidecarBytes  # what val_batches charges bytes with (see byte_counts)
    val_tokens: np.ndarray     # uint16, memory-mapped when there is one val shard
    vocab_size: int
    manifest: dict | None = None

    @property
    def bytes_source(self) -> str:
        """"sidecar" or "byte_table": how this dataset's BPB is charged."""
        return self.tables.source

    def train_stream(self) -> TokenStream:
        """The train shards in order, wrapping around; every shard is vocab-checked when loaded."""
        return TokenStream(self.data_dir, "train", vocab_size=self.vocab_size)

    def processor(self):
        """The SentencePieceProcessor (for decoding samples)."""
        return load_tokenizer(self.tokenizer)


def check_manifest(data_dir: Path, tokenizer_path: Path, manifest: dict) -> None:
    """The manifest's tokenizer sha256 and shard token counts must match what is on disk."""
    where = data_dir / MANIFEST
    tok = manifest.get("tokenizer")
    want = tok.get("sha256") if isinstance(tok, dict) else None
    if want:
        have = sha256_file(tokenizer_path)
        if have != want:
            raise PgolfError(
                f"data and tokenizer come from different builds: {where} expects tokenizer sha256 "
                f"{want[:12]}..., {tokenizer_path} has {have[:12]}...; pass the tokenizer built with this data"
            )
    for entry in manifest.get("files", []) or []:
        if not isinstance(entry, dict) or "name" not in entry or "tokens" not in entry:
            continue
        path = data_dir / str(entry["name"])
        if path.is_file() and shard_count(path) != int(entry["tokens"]):
            raise PgolfError(
                f"shard {path} has {shard_count(path)} tokens but {where} lists {entry['tokens']}: "
                "the folder mixes files from different builds; rebuild or re-download it"
            )


def check_val_length(val_tokens: np.ndarray, seq_len: int, source: str | Path) -> None:
    """Validation needs at least one whole sequence (seq_len inputs + 1 target)."""
    if (val_tokens.size - 1) // seq_len < 1:
        raise PgolfError(f"{source}: the validation split has {val_tokens.size:,} tokens, fewer than one sequence "
                         f"of train.seq_len={seq_len} (+1 target); lower train.seq_len or use a longer split")


def byte_counts(data_dir: str | Path, sp, val_tokens: np.ndarray,
                manifest: dict | None = None) -> ByteTables | SidecarBytes:
    """The dataset's byte sidecar when it has one, else the tokenizer's byte table (module docstring)."""
    data_dir = Path(data_dir)
    counts = load_val_bytes(data_dir)
    if counts is not None:
        if counts.size != val_tokens.size:
            raise PgolfError(f"{data_dir}: the byte sidecars hold {counts.size} entries for {val_tokens.size} "
                             "validation tokens; rebuild or re-download the dataset")
        return SidecarBytes(counts)
    transform = (manifest or {}).get("transform") or "none"
    if transform != "none" or caseops.has_operators(sp):
        raise PgolfError(f"{data_dir} has no fineweb_val_bytes_*.bin byte sidecar but its tokenizer reserves the "
                         "CaseOps operators: BPB would be charged on the transformed text; rebuild it with "
                         "`pgolf data build --transform caseops` or download the sidecar with the data")
    return ByteTables.from_processor(sp)


def open_dataset(data_dir: str | Path, tokenizer_path: str | Path, vocab_size: int,
                 seq_len: int | None = None) -> Dataset:
    """Validate shards, tokenizer and their agreement; return the opened `Dataset`.

    With `seq_len` (a trainer's `train.seq_len`), also check that validation has a whole sequence."""
    data_dir, tokenizer_path = Path(data_dir), Path(tokenizer_path)
    val_files = find_shards(data_dir, "val")
    train_files = find_shards(data_dir, "train")
    for f in (*val_files, *train_files):
        if shard_count(f) == 0:  # header and size of every shard, before any work
            raise PgolfError(f"shard {f} holds no tokens: rebuild or re-download it, or remove it from {data_dir}")
    if vocab_size != 260 and tokenizer_path.suffix == ".json":  # 260: bpb.BYTE_VOCAB, a literal the script folds
        raise PgolfError(f"tokenizer {tokenizer_path} is byte260's (260 ids) but model.vocab_size is {vocab_size}: "
                         "set model.vocab_size = 260 or pass the matching .model tokenizer")
    sp = load_tokenizer(tokenizer_path, bytes_ok=vocab_size == 260)
    n = int(sp.vocab_size())
    if n != vocab_size:
        raise PgolfError(
            f"tokenizer {tokenizer_path} has {n} pieces but model.vocab_size is {vocab_size}: "
            f"set model.vocab_size = {n} or pass the matching tokenizer"
        )
    manifest = None if SCRIPT else read_manifest(data_dir)  # pgolf's own record of the data (train_gpt.py: none)
    if manifest is not None:
        check_manifest(data_dir, tokenizer_path, manifest)
    for f in find_sidecars(data_dir):
        shard_count(f)
    val_tokens = load_val_tokens(data_dir, vocab_size=n)
    if seq_len is not None:
        check_val_length(val_tokens, seq_len, data_dir / "fineweb_val_*.bin")
    check_vocab(read_shard(train_files[0]), n, train_files[0])
    return Dataset(data_dir, tokenizer_path, byte_counts(data_dir, sp, val_tokens, manifest), val_tokens, n, manifest)
