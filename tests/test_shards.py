"""The shard format: round trip, every corruption case, the token stream and batch semantics."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data.bpb import ByteTables
from shared.data.shards import (
    HEADER_BYTES,
    MAGIC,
    BatchLoader,
    Prefetcher,
    TokenStream,
    find_shards,
    load_val_tokens,
    read_shard,
    shard_count,
    val_batches,
    val_token_count,
    write_shard,
)
from shared.errors import PgolfError


def _header(path) -> np.ndarray:
    return np.fromfile(path, dtype="<i4", count=256)


def test_round_trip_header_and_memmap(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 65536, size=1000, dtype=np.int64)
    path = write_shard(tmp_path / "fineweb_train_000000.bin", tokens)
    head = _header(path)
    assert (int(head[0]), int(head[1]), int(head[2])) == (MAGIC, 1, 1000)
    assert not head[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * 1000
    got = read_shard(path)
    assert isinstance(got, np.memmap) and got.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(got, tokens)
    with pytest.raises(ValueError):  # read-only map: a trainer cannot scribble on the data
        got[0] = 1
    assert shard_count(path) == 1000
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_shard(tmp_path):
    path = write_shard(tmp_path / "s.bin", np.zeros(0, dtype=np.uint16))
    assert shard_count(path) == 0 and read_shard(path).size == 0


def test_write_rejects_ids_outside_uint16(tmp_path):
    for bad in ([65536], [-1]):
        with pytest.raises(PgolfError, match="uint16"):
            write_shard(tmp_path / "s.bin", np.array(bad))
    assert not (tmp_path / "s.bin").exists()


def _corrupt(tmp_path, how: str):
    path = write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(100))
    raw = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "short_header":
        path.write_bytes(bytes(raw[:500]))
    elif how == "truncated":
        path.write_bytes(bytes(raw[:-2]))
    elif how == "padded":
        path.write_bytes(bytes(raw) + b"\0\0")
    elif how == "magic":
        raw[0:4] = np.array([12345], dtype="<i4").tobytes()
        path.write_bytes(bytes(raw))
    elif how == "version":
        raw[4:8] = np.array([2], dtype="<i4").tobytes()
        path.write_bytes(bytes(raw))
    elif how == "negative":
        raw[8:12] = np.array([-5], dtype="<i4").tobytes()
        path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("how,words", [
    ("missing", "not found"), ("short_header", "truncated"), ("truncated", "truncated"),
    ("padded", "padded"), ("magic", "wrong magic 12345"), ("version", "version 2"), ("negative", "header says -5"),
])
def test_every_corruption_is_a_one_line_error_naming_the_file(tmp_path, how, words):
    path = _corrupt(tmp_path, how)
    for reader in (shard_count, read_shard):
        with pytest.raises(PgolfError) as e:
            reader(path)
        msg = str(e.value)
        assert str(path) in msg and words in msg and "\n" not in msg


def test_find_shards_errors(tmp_path):
    with pytest.raises(PgolfError, match="not found"):
        find_shards(tmp_path / "nope", "train")
    with pytest.raises(PgolfError, match="no fineweb_val_"):
        find_shards(tmp_path, "val")
    for i in (2, 0, 1):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", [i])
    assert [p.name for p in find_shards(tmp_path, "train")] == [f"fineweb_train_{i:06d}.bin" for i in range(3)]


def test_vocab_check(tmp_path):
    write_shard(tmp_path / "fineweb_val_000000.bin", [1, 5, 511])
    write_shard(tmp_path / "fineweb_train_000000.bin", [1, 2, 512])
    assert load_val_tokens(tmp_path, vocab_size=512).size == 3
    with pytest.raises(PgolfError, match="token id 511 is beyond the vocabulary"):
        load_val_tokens(tmp_path, vocab_size=511)
    with pytest.raises(PgolfError, match="fineweb_train_000000.bin: token id 512"):
        TokenStream(tmp_path, "train", vocab_size=512)


def test_token_stream_order_wrap_and_restore(tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(0, 10))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(10, 15))
    s = TokenStream(tmp_path)
    np.testing.assert_array_equal(s.take(7), np.arange(7))
    np.testing.assert_array_equal(s.take(6), np.arange(7, 13))  # across the shard boundary
    state = s.state()
    rest = s.take(8)  # wraps around to the first shard
    np.testing.assert_array_equal(rest, np.r_[13, 14, np.arange(6)])
    t = TokenStream(tmp_path)
    t.restore(state)
    np.testing.assert_array_equal(t.take(8), rest)


def test_batch_loader_ranks_split_one_chunk(tmp_path):
    """N ranks together consume what one rank does, each taking its own contiguous span."""
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(1000))
    xs = []
    for rank in range(2):
        x, y = BatchLoader(TokenStream(tmp_path), rank=rank, world_size=2).next_batch(16, 8)
        assert x.shape == (2, 8) and x.dtype == np.int64
        np.testing.assert_array_equal(y.ravel(), x.ravel() + 1)  # targets are the next tokens
        xs.append(x.ravel())
    np.testing.assert_array_equal(xs[0], np.arange(16))
    np.testing.assert_array_equal(xs[1], np.arange(17, 33))  # rank 1's span starts after rank 0's 17 tokens
    single = BatchLoader(TokenStream(tmp_path))
    single.next_batch(16, 8)
    np.testing.assert_array_equal(single.next_batch(16, 8)[0].ravel(), np.arange(17, 33))


def test_prefetcher_hands_out_the_loaders_batches_and_positions(tmp_path):
    """Built ahead in a thread, yet the same batches in the same order; `state()` is the position before
    the next step handed out (not the thread's), `restore` rewinds; a thread's error reaches the caller."""
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(50))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(50, 77))
    plain = BatchLoader(TokenStream(tmp_path))
    want, states = [], []
    for _ in range(6):
        want.append([plain.next_batch(8, 4) for _ in range(2)])
        states.append(plain.stream.state())
    pre = Prefetcher(BatchLoader(TokenStream(tmp_path)), 8, 4, accum=2, depth=3)
    assert pre.state() == {"file_idx": 0, "pos": 0}
    for i in range(3):
        got = pre.next_step()
        for (gx, gy), (wx, wy) in zip(got, want[i], strict=True):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
        assert pre.state() == states[i]
    pre.restore(states[0])
    np.testing.assert_array_equal(pre.next_step()[0][0], want[1][0][0])
    for i in range(2, 6):   # across the shard boundary and the wrap
        np.testing.assert_array_equal(pre.next_step()[1][1], want[i][1][1])
    pre.close()
    write_shard(tmp_path / "fineweb_train_000000.bin", np.arange(0))
    write_shard(tmp_path / "fineweb_train_000001.bin", np.arange(0))
    empty = Prefetcher(BatchLoader(TokenStream(tmp_path)), 8, 4, accum=1)
    with pytest.raises(PgolfError, match="hold no tokens"):
        empty.next_step()
    empty.close()


def test_val_batches_cover_each_target_once(tiny_data):
    tables = ByteTables.from_tokenizer(tiny_data.tokenizer)
    tokens = load_val_tokens(tiny_data.data_dir)
    seq = 64
    n = val_token_count(tokens, seq)
    whole = tables.target_bytes(tokens, 1, n + 1)
    for world in (1, 3):
        seen, nbytes = [], 0
        for rank in range(world):
            for x, y, b in val_batches(tokens, seq, 256, tables, rank=rank, world_size=world):
                assert x.shape == y.shape and x.shape[1] == seq
                seen.append(y.ravel())
                nbytes += b
        np.testing.assert_array_equal(np.concatenate(seen), np.asarray(tokens[1 : n + 1]))
        assert nbytes == whole
    limited = sum(y.size for _, y, _ in val_batches(tokens, seq, 256, tables, max_tokens=200))
    assert limited == val_token_count(tokens, seq, max_tokens=200) == 192
