"""Byte tables on hand-checkable strings, the no-U+2581 tokenizer case, and the audit.

The decoded text is the ground truth: every count below is compared with the
UTF-8 length of what SentencePiece's `decode()` gives back (U+2581 in it
standing for a space), or with a number worked out by hand.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from shared.data.audit import audit
from shared.data.bpb import SPACE, ByteTables, EvalResult, bits_per_byte, load_tokenizer
from shared.data.build import encode_docs
from shared.data.shards import write_shard
from shared.errors import PgolfError
from tests.conftest import stdlib_docs


# --- a minimal protobuf wire-format editor: drop one piece from a ModelProto -------------
# (protobuf is not a dependency; ModelProto field 1 is the repeated SentencePiece, whose
# field 1 is the piece string.)
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            i += n
        else:
            raise ValueError(f"wire type {wire}")
        yield key >> 3, buf[start:i]


def _payload(raw: bytes) -> bytes:
    _, i = _varint(raw, 0)
    n, i = _varint(raw, i)
    return raw[i : i + n]


def drop_piece(model: bytes, piece: str) -> bytes:
    kept = []
    for field, raw in _fields(model):
        if field == 1 and any(f == 1 and _payload(r) == piece.encode() for f, r in _fields(_payload(raw))):
            continue
        kept.append(raw)
    return b"".join(kept)


@pytest.fixture(scope="module")
def sp(tiny_data):
    return load_tokenizer(tiny_data.tokenizer)


@pytest.fixture(scope="module")
def sp_nospace(tiny_data, tmp_path_factory):
    """The same tokenizer without its standalone U+2581 piece: lone spaces become <0xE2><0x96><0x81>."""
    path = tmp_path_factory.mktemp("nospace") / "nospace_512_bpe.model"
    path.write_bytes(drop_piece(tiny_data.tokenizer.read_bytes(), SPACE))
    proc = load_tokenizer(path)
    assert proc.piece_to_id(SPACE) == proc.unk_id()  # really gone
    return proc


def _stream(proc, *texts: str) -> np.ndarray:
    return np.array([t for s in texts for t in [1, *proc.encode(s)]], dtype=np.uint16)


def _truth(proc, *texts: str) -> int:
    """UTF-8 bytes of each text as decoded, U+2581 standing for one space."""
    return sum(len(proc.decode(proc.encode(s)).replace(SPACE, " ").encode()) for s in texts)


def _count(tables, stream) -> int:
    return tables.target_bytes(stream, 1, stream.size)


HAND = [
    ("12345", 5),                 # split_digits: five 1-byte pieces
    ("a b", 3),                   # "a" + "▁b": the space is a byte
    ("é", 2),                     # two bytes, whether a piece or byte fallback
    ("東京", 6),                  # CJK: byte-fallback pieces count 1 byte each
    ("x = 1 + 2", 9),
    ("  leading spaces", 14),     # normalization drops leading whitespace
    ("tab\tand\nnewline", 15),    # nmt_nfkc turns whitespace into one space
]


@pytest.mark.parametrize("text,expected", HAND)
def test_hand_checked_strings(sp, sp_nospace, text, expected):
    for proc in (sp, sp_nospace):
        stream = _stream(proc, text)
        assert _count(ByteTables.from_processor(proc), stream) == expected == _truth(proc, text)


def test_table_entries(sp):
    t = ByteTables.from_processor(sp)
    for i in range(4):  # pad, bos, eos, unk
        assert t.is_boundary[i] and t.base_bytes[i] == 0
    byte = sp.piece_to_id("<0xC3>")
    assert sp.is_byte(byte) and t.base_bytes[byte] == 1 and not t.is_boundary[byte]  # not 3 (U+FFFD)
    spaced = next(i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith(SPACE) and len(sp.id_to_piece(i)) > 1)
    piece = sp.id_to_piece(spaced)
    assert t.has_leading_space[spaced] and t.base_bytes[spaced] == len(piece[1:].encode())
    # The space byte counts after a normal token and not after BOS, matching decode().
    a = sp.piece_to_id("a")
    with_prev = np.array([1, a, spaced], dtype=np.uint16)
    assert t.target_bytes(with_prev, 2, 3) == len(piece[1:].encode()) + 1
    assert t.target_bytes(with_prev, 1, 3) == len(sp.decode([a, spaced]).encode())
    after_bos = np.array([1, spaced], dtype=np.uint16)
    assert t.target_bytes(after_bos, 1, 2) == len(sp.decode([spaced]).encode()) == len(piece[1:].encode())


class FakeProcessor:
    """A hand-made vocabulary with the pieces no small training run produces ("▁▁x")."""

    pieces = ["<pad>", "<s>", "</s>", "<unk>", "<0xE2>", "<0x96>", "<0x81>", "▁▁x", "▁", "é", "a▁b"]

    def vocab_size(self):
        return len(self.pieces)

    def is_control(self, i):
        return i in (0, 1, 2)

    def is_unknown(self, i):
        return i == 3

    def is_unused(self, i):
        return False

    def is_byte(self, i):
        return self.pieces[i].startswith("<0x")

    def id_to_piece(self, i):
        return self.pieces[i]

    def piece_to_id(self, p):
        return self.pieces.index(p) if p in self.pieces else 3


def test_pieces_with_inner_spaces():
    t = ByteTables.from_processor(FakeProcessor())
    assert t.space_triple == (4, 5, 6)
    assert list(t.base_bytes) == [0, 0, 0, 0, 1, 1, 1, 2, 0, 2, 3]  # "▁▁x" -> " x" after the lead: 2, not 4
    assert list(t.has_leading_space) == [False] * 7 + [True, True, False, False]
    # "é ▁▁x" after BOS: é(2) + space-lead(1) + " x"(2)
    assert t.target_bytes(np.array([1, 9, 7]), 1, 3) == 5


def test_missing_space_piece_triple_counts_one_byte(sp_nospace):
    text = "x = (1, 2) ; y"
    stream = _stream(sp_nospace, text, text)
    ids = [sp_nospace.id_to_piece(int(i)) for i in stream]
    assert ids.count("<0xE2>") >= 4  # the case under test really happens
    t = ByteTables.from_processor(sp_nospace)
    truth = _truth(sp_nospace, text, text)
    assert _count(t, stream) == truth
    # Additive over any split, even through the middle of a triple.
    assert sum(t.target_bytes(stream, i, i + 1) for i in range(1, stream.size)) == truth
    for cut in range(2, stream.size):
        assert t.target_bytes(stream, 1, cut) + t.target_bytes(stream, cut, stream.size) == truth
    # The public-submission bug: counting the triple as 3 bytes inflates the bytes.
    naive = replace(t, space_triple=None)
    assert _count(naive, stream) == truth + 2 * ids.count("<0xE2>")


def test_target_bytes_range_checks(sp):
    t = ByteTables.from_processor(sp)
    stream = _stream(sp, "hello")
    for lo, hi in ((0, 2), (2, 1), (1, stream.size + 1)):
        with pytest.raises(ValueError):
            t.target_bytes(stream, lo, hi)
    assert t.target_bytes(stream, 3, 3) == 0


def test_bits_per_byte_and_eval_result():
    r = EvalResult(nats=100.0, tokens=50, bytes=80) + EvalResult(nats=38.6, tokens=20, bytes=20)
    assert r.tokens == 70 and r.bytes == 100
    assert r.val_loss == pytest.approx(138.6 / 70)
    assert r.val_bpb == pytest.approx(138.6 / math.log(2) / 100)
    assert set(r.to_json()) == {"val_loss", "val_bpb", "tokens", "bytes"}
    with pytest.raises(PgolfError):
        bits_per_byte(1.0, 0)


def test_audit_exact_on_tiny_data(tiny_data):
    report = audit(tiny_data.data_dir, tiny_data.tokenizer)
    assert report["exact"] is True and report["factor"] == 1.0
    assert report["lut_bytes"] == report["decoded_bytes"] > 0
    assert report["documents"] == 8


def test_audit_exact_without_space_piece(sp_nospace, tmp_path):
    """A dataset encoded with the no-U+2581 tokenizer audits exact, and says what a naive count would do."""
    path = tmp_path / "nospace.model"
    path.write_bytes(sp_nospace.serialized_model_proto())
    docs = stdlib_docs(60_000)
    data = tmp_path / "data"
    write_shard(data / "fineweb_val_000000.bin", encode_docs(sp_nospace, docs, "encode"))
    write_shard(data / "fineweb_train_000000.bin", encode_docs(sp_nospace, docs[:1], "encode"))
    report = audit(data, path)
    assert report["decode_u2581"] > 100
    assert report["raw_decode_bytes"] == report["decoded_bytes"] + 2 * report["decode_u2581"]
    assert report["exact"] is True and report["lut_bytes"] == report["decoded_bytes"]


def test_audit_reports_the_factor_when_tables_are_wrong(sp_nospace, tmp_path, monkeypatch, capsys):
    """With the triple counted as 3 bytes (the public bug) the audit says how far off BPB would be."""
    from shared.cli import main
    from shared.data import audit as data_audit

    path = tmp_path / "nospace.model"
    path.write_bytes(sp_nospace.serialized_model_proto())
    data = tmp_path / "data"
    write_shard(data / "fineweb_val_000000.bin", encode_docs(sp_nospace, stdlib_docs(30_000), "encode"))
    write_shard(data / "fineweb_train_000000.bin", [1, 5])
    naive = replace(ByteTables.from_processor(sp_nospace), space_triple=None)
    monkeypatch.setattr(data_audit.ByteTables, "from_processor", classmethod(lambda cls, proc: naive))
    report = audit(data, path)
    assert report["exact"] is False
    assert report["lut_bytes"] == report["decoded_bytes"] + 2 * report["decode_u2581"]
    assert report["factor"] == pytest.approx(report["lut_bytes"] / report["decoded_bytes"]) and report["factor"] > 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["data", "audit", "--data", str(data), "--tokenizer", str(path)])
    assert e.value.code == 1
    out = capsys.readouterr().out
    assert f"factor {report['factor']:.6f}" in out and "too low" in out
