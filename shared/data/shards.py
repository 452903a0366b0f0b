"""The challenge's token shard format, and the training token stream.

A shard is 256 little-endian int32 (magic 20240520, version 1, token count,
then zeros) followed by `count` little-endian uint16 token ids; the file size
must be exactly 1024 + 2 * count. This module is the only writer and reader.
A byte sidecar `fineweb_val_bytes_NNNNNN.bin` (CaseOps datasets) has the
same format: one uint16 per token of `fineweb_val_NNNNNN.bin`, the UTF-8 byte
count of the original text that token stands for.

`TokenStream` reads train shards in order and wraps around; `BatchLoader`
takes, per micro-batch, one contiguous chunk of `world_size` spans and gives
rank r the r-th span, so N ranks see the same tokens as one rank that
accumulates over N times as many micro-batches (the reference's semantics).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import PgolfError

if TYPE_CHECKING:
    from shared.data.bpb import ByteTables, SidecarBytes

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would have given a new file


def write_shard(path: str | Path, tokens: np.ndarray) -> Path:
    """Write tokens atomically (temp file + rename)."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
        raise PgolfError(f"{path}: token ids must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    from shared.files import atomic_write  # temp file + rename; one wording for every failed write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())

    return atomic_write(path, write)


def shard_count(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise PgolfError(f"shard {path} not found: build it with `pgolf data build` or `pgolf data download`")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise PgolfError(f"shard {path} is truncated ({size} bytes, smaller than the 1024-byte header): rebuild or re-download it")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise PgolfError(f"shard {path} has wrong magic {int(header[0])} (expected {MAGIC}): not a challenge shard")
    if int(header[1]) != VERSION:
        raise PgolfError(f"shard {path} has version {int(header[1])}, this pgolf reads version {VERSION}")
    count = int(header[2])
    if count < 0 or size != HEADER_BYTES + 2 * count:
        raise PgolfError(
            f"shard {path} is truncated or padded: header says {count} tokens "
            f"({HEADER_BYTES + 2 * count} bytes) but the file has {size} bytes; rebuild or re-download it"
        )
    return count


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map a validated shard as a read-only uint16 array (no copy)."""
    count = shard_count(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


def find_shards(data_dir: str | Path, split: str) -> list[Path]:
    """Sorted `fineweb_{split}_NNNNNN.bin` files in a dataset folder; an error when there are none.

    The byte sidecars `fineweb_val_bytes_*.bin` match the challenge's
    `fineweb_val_*.bin` glob too: they are not token shards, so they are left out.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PgolfError(f"data folder {data_dir} not found: run `pgolf data sample` or `pgolf data download` first")
    files = sorted(p for p in data_dir.glob(f"fineweb_{split}_*.bin") if p.name[len(f"fineweb_{split}_"):-4].isdigit())
    if not files:
        raise PgolfError(f"no fineweb_{split}_*.bin shards in {data_dir}: is --data the dataset folder?")
    return files


SIDECAR_PREFIX = "fineweb_val_bytes_"


def sidecar_name(val_shard: str | Path) -> str:
    """`fineweb_val_000003.bin` -> `fineweb_val_bytes_000003.bin`."""
    return Path(val_shard).name.replace("fineweb_val_", SIDECAR_PREFIX, 1)


def find_sidecars(data_dir: str | Path) -> list[Path]:
    """Sorted `fineweb_val_bytes_NNNNNN.bin` byte sidecars (one uint16 per validation token); [] when none."""
    return sorted(p for p in Path(data_dir).glob(f"{SIDECAR_PREFIX}*.bin") if p.name[len(SIDECAR_PREFIX):-4].isdigit())


def load_val_bytes(data_dir: str | Path) -> np.ndarray | None:
    """The byte sidecar, concatenated, checked shard by shard against the validation shards; None when absent."""
    sidecars = find_sidecars(data_dir)
    if not sidecars:
        return None
    vals = find_shards(data_dir, "val")
    want = [sidecar_name(v) for v in vals]
    if [p.name for p in sidecars] != want:
        raise PgolfError(f"{data_dir}: byte sidecars {[p.name for p in sidecars]} do not pair with the validation "
                         f"shards (expected {want}); rebuild or re-download the dataset")
    for v, b in zip(vals, sidecars, strict=True):
        if shard_count(b) != shard_count(v):
            raise PgolfError(f"byte sidecar {b} has {shard_count(b)} entries but {v.name} has {shard_count(v)} tokens: "
                             "one uint16 per validation token is required; rebuild or re-download it")
    parts = [read_shard(p) for p in sidecars]
    return np.asarray(parts[0]) if len(parts) == 1 else np.concatenate(parts)


def check_vocab(tokens: np.ndarray, vocab_size: int, source: str | Path) -> None:
    """Token ids must index the tokenizer's vocabulary."""
    if tokens.size:
        top = int(tokens.max())
        if top >= vocab_size:
            raise PgolfError(
                f"{source}: token id {top} is beyond the vocabulary ({vocab_size} ids); "
                "the data and tokenizer come from different builds"
            )


def load_val_tokens(data_dir: str | Path, vocab_size: int | None = None) -> np.ndarray:
    """All validation tokens, concatenated (the split is small enough to hold)."""
    files = find_shards(data_dir, "val")
    tokens = np.concatenate([read_shard(f) for f in files]) if len(files) > 1 else np.asarray(read_shard(files[0]))
    if vocab_size is not None:
        check_vocab(tokens, vocab_size, files[0].parent / "fineweb_val_*.bin")
    return tokens


class TokenStream:
    """Train shards in order, wrapping around forever. Its position is (file, offset)."""

    def __init__(self, data_dir: str | Path, split: str = "train", vocab_size: int | None = None):
        self.files = find_shards(data_dir, split)
        self.vocab_size = vocab_size
        self.file_idx = 0
        self.pos = 0
        self._tokens = self._load(0)

    def _load(self, idx: int) -> np.ndarray:
        tokens = read_shard(self.files[idx])
        if self.vocab_size is not None:
            check_vocab(tokens, self.vocab_size, self.files[idx])
        return tokens

    def state(self) -> dict[str, int]:
        return {"file_idx": self.file_idx, "pos": self.pos}

    def restore(self, state: dict[str, int]) -> None:
        self.file_idx = int(state["file_idx"]) % len(self.files)
        self._tokens = self._load(self.file_idx)
        self.pos = int(state["pos"])

    def take(self, n: int) -> np.ndarray:
        chunks, empty = [], 0
        while n > 0:
            avail = self._tokens.size - self.pos
            if avail <= 0:
                empty += 1
                if empty > len(self.files):  # a full lap without a token: every shard is empty
                    raise PgolfError(f"the {len(self.files)} train shard(s) in {self.files[0].parent} hold no tokens: "
                                     "rebuild or re-download them")
                self.file_idx = (self.file_idx + 1) % len(self.files)
                self._tokens = self._load(self.file_idx)
                self.pos = 0
                continue
            empty = 0
            k = min(n, avail)
            chunks.append(np.asarray(self._tokens[self.pos : self.pos + k]))
            self.pos += k
            n -= k
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


class BatchLoader:
    """Micro-batches for one rank: (x, y) int64 arrays of shape [tokens // seq_len, seq_len]."""

    def __init__(self, stream: TokenStream, rank: int = 0, world_size: int = 1):
        self.stream, self.rank, self.world_size = stream, rank, world_size

    def next_batch(self, microbatch_tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        span = microbatch_tokens + 1
        chunk = self.stream.take(span * self.world_size)
        local = chunk[self.rank * span : (self.rank + 1) * span].astype(np.int64)
        return local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)


class Prefetcher:
    """A step's micro-batches built ahead by a background thread while the device runs the step before.

    The batches and their order are exactly `BatchLoader`'s; `state()` is the stream position before the
    next step not yet handed out (what a checkpoint must record), `restore` rewinds to one. Errors of
    the thread (an empty shard) are raised by the `next_step` that would have received its batches."""

    def __init__(self, loader: BatchLoader, microbatch_tokens: int, seq_len: int, accum: int, depth: int = 2):
        self.loader, self.args, self.accum, self.depth = loader, (microbatch_tokens, seq_len), accum, depth
        self._state = loader.stream.state()
        self._start()

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._queue, self._stop), daemon=True,
                                        name="pgolf-prefetch")
        self._thread.start()

    def _run(self, q: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batches = [self.loader.next_batch(*self.args) for _ in range(self.accum)]
                item = (batches, self.loader.stream.state(), None)
            except Exception as e:  # noqa: BLE001 - handed to the consumer, raised there
                item = (None, None, e)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def next_step(self) -> list[tuple[np.ndarray, np.ndarray]]:
        batches, after, err = self._queue.get()
        if err is not None:
            raise err
        self._state = after
        return batches

    def state(self) -> dict[str, int]:
        return dict(self._state)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def restore(self, state: dict[str, int]) -> None:
        self.close()
        self.loader.stream.restore(state)
        self._state = self.loader.stream.state()
        self._start()


def chunk_count(rows: int, seq_len: int, cap_tokens: int) -> int:
    """Smallest split of `rows` sequences into equal chunks of at most `cap_tokens` tokens (0 = no cap).

    Both backends split a micro-batch this way (`train.max_microbatch_tokens`, a memory cap): the
    loss is the mean over equal chunks, so the gradient is the same; equal shapes keep one compiled graph."""
    if not cap_tokens:
        return 1
    return next(n for n in range(1, rows + 1) if rows % n == 0 and rows // n * seq_len <= cap_tokens)


def as_sequences(x: np.ndarray, seq_len: int) -> np.ndarray:
    """Tokens as int64 rows of `seq_len` (a flat array is cut to whole sequences)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[: (x.size // seq_len) * seq_len].reshape(-1, seq_len)
    return x.astype(np.int64)


def val_batches(
    tokens: np.ndarray,
    seq_len: int,
    batch_tokens: int,
    tables: ByteTables | SidecarBytes,
    rank: int = 0,
    world_size: int = 1,
    max_tokens: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """This rank's validation batches `(x, y, target_bytes)`: whole sequences, each rank a contiguous share.

    The byte count comes from the shared byte tables, so a backend only sums
    nats. `max_tokens` > 0 limits evaluation to the first sequences covering
    that many target tokens (rounded down to whole sequences, at least one).
    """
    total_seqs = (tokens.size - 1) // seq_len
    if max_tokens > 0:
        total_seqs = min(total_seqs, max(1, max_tokens // seq_len))
    if total_seqs <= 0:
        raise PgolfError(f"validation split has {tokens.size} tokens, fewer than one sequence of {seq_len}")
    start, end = total_seqs * rank // world_size, total_seqs * (rank + 1) // world_size
    per_batch = max(1, batch_tokens // (world_size * seq_len))
    from shared.core.progress import active

    bar = active()  # an evaluation's progress (shared/eval/driver.py run_eval), not periodic validation
    for s in range(start, end, per_batch):
        e = min(s + per_batch, end)
        local = np.asarray(tokens[s * seq_len : e * seq_len + 1]).astype(np.int64)
        nbytes = tables.target_bytes(tokens, s * seq_len + 1, e * seq_len + 1)
        yield local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len), nbytes
        if bar is not None:
            bar.update((e - s) * seq_len * world_size)


def val_token_count(tokens: np.ndarray, seq_len: int, max_tokens: int = 0) -> int:
    """How many target tokens `val_batches` scores over all ranks (an error when not one sequence)."""
    total_seqs = (tokens.size - 1) // seq_len
    if total_seqs <= 0:
        raise PgolfError(f"validation split has {tokens.size} tokens, fewer than one sequence of {seq_len}")
    if max_tokens > 0:
        total_seqs = min(total_seqs, max(1, max_tokens // seq_len))
    return total_seqs * seq_len
