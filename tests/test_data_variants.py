"""Every data variant: CaseOps (+ byte sidecars), byte260, sidecar-charged BPB, the held-out split, and
one broken tokenizer or sidecar per known bug class that the audit must catch and name.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from shared.cli import main
from shared.data import build as data_build
from shared.data import caseops
from shared.data.audit import audit
from shared.data.bpb import SPACE, ByteTables, ByteTokenizer, SidecarBytes, load_tokenizer
from shared.data.build import build_dataset, open_docs, sidecar_counts
from shared.data.dataset import open_dataset
from shared.data.manifest import sha256_file
from shared.data.shards import find_shards, read_shard, val_batches, write_shard
from shared.errors import PgolfError
from tests.conftest import stdlib_docs
from tests.test_bpb import drop_piece


def _docs() -> list[str]:
    """Real text with capitals of every kind and a literal operator character (it must be escaped)."""
    docs = stdlib_docs(150_000)
    return [f"NASA and McDonald's: {caseops.TITLE} THE End. " + docs[0], *docs[1:]]


@pytest.fixture(scope="module")
def co(tmp_path_factory):
    out = tmp_path_factory.mktemp("caseops")
    data_dir, tok = build_dataset(_docs(), out, vocab=700, val_docs=6, name="co", transform="caseops")
    return data_dir, tok


def test_caseops_layout_tokenizer_and_sidecar(co):
    data_dir, tok = co
    assert data_dir.name == "co_sp700_caseops" and tok.name == "co_700_bpe_caseops.model"
    sp = load_tokenizer(tok)
    ids = caseops.operator_ids(sp)  # reserved as whole pieces (user_defined_symbols)
    assert len(set(ids)) == 4 and all(i > 3 for i in ids)
    assert sorted(p.name for p in data_dir.glob("*.bin")) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    # The glob fineweb_val_*.bin also matches the sidecar: it is not taken for a token shard.
    assert [p.name for p in find_shards(data_dir, "val")] == ["fineweb_val_000000.bin"]
    val, side = read_shard(data_dir / "fineweb_val_000000.bin"), read_shard(data_dir / "fineweb_val_bytes_000000.bin")
    assert side.size == val.size and (side[np.asarray(val) == 1] == 0).all()
    assert (side[caseops.operator_mask(np.asarray(val), ids)] == 0).all()
    m = json.loads((data_dir / "manifest.json").read_text())
    assert m["transform"] == "caseops" and m["bytes_source"] == "sidecar"
    assert m["tokenizer"]["settings"]["user_defined_symbols"] == list(caseops.OPERATORS)
    entry = next(e for e in m["files"] if e["split"] == "val_bytes")
    assert entry["sha256"] == sha256_file(data_dir / entry["name"]) and entry["tokens"] == val.size
    # Each validation document's sidecar total is the UTF-8 length of its original (decoded, inverted) text.
    starts = [*np.flatnonzero(np.asarray(val) == 1).tolist(), val.size]
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        text = caseops.decode(sp.decode(np.asarray(val[a + 1 : b]).tolist()))
        assert int(side[a:b].sum()) == len(text.replace(SPACE, " ").encode())
    first = caseops.decode(sp.decode(np.asarray(val[1 : starts[1]]).tolist()))
    assert first.startswith(f"NASA and McDonald's: {caseops.TITLE} THE End.")


def test_caseops_audit_exact_and_bpb_from_sidecar(co, capsys):
    data_dir, tok = co
    report = audit(data_dir, tok)
    assert report["variant"] == "caseops" and report["bytes_source"] == "sidecar"
    assert report["exact"] is True and report["lut_bytes"] == report["decoded_bytes"] > 0 and report["bugs"] == []
    # Charging the transformed text would be off: the audit says by how much.
    assert report["naive"]["transform_bytes_in_denominator"] > 1.01
    # Training and eval charge the sidecar: val_batches' byte totals add up to the audited bytes.
    ds = open_dataset(data_dir, tok, 700)
    assert isinstance(ds.tables, SidecarBytes) and ds.bytes_source == "sidecar"
    seq = 64
    total = sum(b for _, _, b in val_batches(ds.val_tokens, seq, 4 * seq, ds.tables))
    n = (ds.val_tokens.size - 1) // seq * seq
    assert total == int(np.asarray(read_shard(data_dir / "fineweb_val_bytes_000000.bin"))[1 : n + 1].sum())
    tables_total = ByteTables.from_processor(ds.processor()).target_bytes(ds.val_tokens, 1, n + 1)
    assert tables_total > total  # the byte table would have charged the operators
    capsys.readouterr()
    main(["data", "audit", "--data", str(data_dir), "--tokenizer", str(tok)])
    out = capsys.readouterr().out
    assert "caseops" in out and "exact" in out and "transform_bytes_in_denominator" in out


def test_no_validation_document_reaches_training(tmp_path):
    """Markers only in validation documents: never a tokenizer piece, never in a decoded training shard."""
    docs = stdlib_docs(120_000)
    val = [f"Zqxjvw{k} marker Zqxjvw{k}. " * 50 + docs[k] for k in range(4)]
    data_dir, tok = build_dataset([*val, *docs[4:]], tmp_path, vocab=600, val_docs=4, name="leak",
                                  transform="caseops", shard_tokens=20_000)
    sp = load_tokenizer(tok)
    assert not any("qxj" in sp.id_to_piece(i) for i in range(sp.vocab_size()))
    train_files = find_shards(data_dir, "train")
    assert len(train_files) > 1
    train = np.concatenate([np.asarray(read_shard(f)) for f in train_files])
    starts = [*np.flatnonzero(train == 1).tolist(), train.size]
    texts = [caseops.decode(sp.decode(train[a + 1 : b].tolist())) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    assert len(texts) == len(docs) - 4 and not any("Zqxjvw" in t for t in texts)
    vtok = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    assert int((vtok == 1).sum()) == 4 and "Zqxjvw0 marker" in caseops.decode(sp.decode(vtok[1:400].tolist()))


def test_streamed_multiprocess_build_is_identical(tmp_path, monkeypatch):
    """A .jsonl stream encoded by 2 worker processes gives the bytes of the in-process build."""
    docs = stdlib_docs(60_000)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    monkeypatch.setattr(data_build, "CHUNK_DOCS", 4)  # many chunks, and over the one-process threshold
    stream, name = open_docs(src)
    assert len(stream) == len(docs) and name == "docs"
    a, _ = build_dataset(stream, tmp_path / "a", vocab=500, val_docs=3, name="s", transform="caseops", workers=2)
    b, _ = build_dataset(docs, tmp_path / "b", vocab=500, val_docs=3, name="s", transform="caseops", workers=1)
    names = sorted(p.name for p in a.glob("*.bin"))
    assert names == sorted(p.name for p in b.glob("*.bin")) and "fineweb_val_bytes_000000.bin" in names
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()


def test_byte260_build_open_and_audit(tmp_path):
    docs = ["Héllo wörld ▁ 東京", *stdlib_docs(30_000)]
    data_dir, tok = build_dataset(docs, tmp_path, vocab=0, val_docs=3, name="b", kind="byte")
    assert data_dir.name == "b_byte260" and tok.name == "b_pure_byte_260.json"
    assert json.loads(tok.read_text())["config"]["byte_offset"] == 4
    val = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    first = docs[0].encode()
    assert val[: len(first) + 1].tolist() == [1, *(b + 4 for b in first)]  # byte b is id b + 4
    ds = open_dataset(data_dir, tok, 260)
    assert ds.bytes_source == "byte_table" and isinstance(ds.processor(), ByteTokenizer)
    report = audit(data_dir, tok)
    assert report["variant"] == "byte260" and report["exact"] is True
    assert report["decoded_bytes"] == sum(len(d.encode()) for d in docs[:3])  # the literal U+2581 is 3 bytes
    with pytest.raises(PgolfError, match="vocab_size"):
        open_dataset(data_dir, tok, 1024)


def test_caseops_without_sidecar_is_refused_and_caught(co, tmp_path):
    """The transform's bytes in the denominator: a CaseOps dataset charged with its byte table."""
    data_dir, tok = co
    bare = tmp_path / "bare"
    for f in ("fineweb_val_000000.bin", "fineweb_train_000000.bin"):
        write_shard(bare / f, read_shard(data_dir / f))
    with pytest.raises(PgolfError, match="no fineweb_val_bytes_.*CaseOps"):
        open_dataset(bare, tok, 700)
    report = audit(bare, tok)
    assert report["exact"] is False and report["factor"] > 1
    assert [b["name"] for b in report["bugs"]] == ["transform_bytes_in_denominator"]


def _with_sidecar(tmp_path, src_dir, counts):
    out = tmp_path / "broken"
    for f in ("fineweb_val_000000.bin", "fineweb_train_000000.bin"):
        write_shard(out / f, read_shard(src_dir / f))
    write_shard(out / "fineweb_val_bytes_000000.bin", counts)
    return out


def test_bug_transform_bytes_in_sidecar(co, tmp_path):
    data_dir, tok = co
    sp = load_tokenizer(tok)
    val = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    broken = sidecar_counts(val, ByteTables.from_processor(sp), None)  # operators not zeroed
    report = audit(_with_sidecar(tmp_path, data_dir, broken), tok)
    assert report["bytes_source"] == "sidecar" and report["exact"] is False
    assert {b["name"] for b in report["bugs"]} == {"transform_bytes_in_denominator"}
    assert report["factor"] == pytest.approx(report["naive"]["transform_bytes_in_denominator"])


def test_bug_leading_space_double_count_sidecar(co, tmp_path):
    data_dir, tok = co
    sp = load_tokenizer(tok)
    t = ByteTables.from_processor(sp)
    val = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    good = np.asarray(read_shard(data_dir / "fineweb_val_bytes_000000.bin")).astype(np.int64)
    broken = good + t.has_leading_space[val.astype(np.int64)]  # the space counted in the piece and again
    report = audit(_with_sidecar(tmp_path, data_dir, broken), tok)
    assert report["exact"] is False and {b["name"] for b in report["bugs"]} == {"leading_space_double_count"}


def test_bug_leading_space_double_count_tables(tiny_data, monkeypatch, capsys):
    """Byte tables that put the leading space in the piece's length and add it again."""
    from shared.data import audit as data_audit

    good = ByteTables.from_processor(load_tokenizer(tiny_data.tokenizer))
    bad = replace(good, base_bytes=good.base_bytes + good.has_leading_space)
    monkeypatch.setattr(data_audit.ByteTables, "from_processor", classmethod(lambda cls, proc: bad))
    report = audit(tiny_data.data_dir, tiny_data.tokenizer)
    assert report["exact"] is False and report["factor"] > 1.05
    assert [b["name"] for b in report["bugs"]] == ["leading_space_double_count"]


@pytest.fixture(scope="module")
def nospace(tiny_data, tmp_path_factory):
    """A tokenizer without a standalone U+2581 piece and a validation split encoded with it."""
    root = tmp_path_factory.mktemp("nospace_data")
    tok = root / "nospace_512_bpe.model"
    tok.write_bytes(drop_piece(tiny_data.tokenizer.read_bytes(), SPACE))
    sp = load_tokenizer(tok)
    docs = stdlib_docs(40_000)
    val = data_build.encode_docs(sp, docs, "encode")
    write_shard(root / "data" / "fineweb_val_000000.bin", val)
    write_shard(root / "data" / "fineweb_train_000000.bin", data_build.encode_docs(sp, docs[:1], "encode"))
    return root / "data", tok, sp, val


def test_bug_missing_u2581_piece_sidecar(nospace, tmp_path):
    data_dir, tok, sp, val = nospace
    good = audit(data_dir, tok)
    assert good["exact"] is True and good["naive"]["missing_u2581_piece"] > 1.01  # the risk is reported
    naive = replace(ByteTables.from_processor(sp), space_triple=None)  # the triple counted as 3 bytes
    report = audit(_with_sidecar(tmp_path, data_dir, sidecar_counts(val, naive, None)), tok)
    assert report["exact"] is False and {b["name"] for b in report["bugs"]} == {"missing_u2581_piece"}
    assert report["factor"] == pytest.approx(good["naive"]["missing_u2581_piece"])
    # The correct sidecar for the same tokenizer is exact.
    fixed = audit(_with_sidecar(tmp_path / "ok", data_dir, sidecar_counts(val, ByteTables.from_processor(sp), None)), tok)
    assert fixed["exact"] is True and fixed["bytes_source"] == "sidecar"


def test_sidecar_must_pair_with_val(co, tmp_path):
    data_dir, tok = co
    side = np.asarray(read_shard(data_dir / "fineweb_val_bytes_000000.bin"))
    broken = _with_sidecar(tmp_path, data_dir, side[:-1])
    with pytest.raises(PgolfError, match="fineweb_val_bytes_000000.bin has .* entries"):
        open_dataset(broken, tok, 700)


def test_reuse_tokenizer_reexports_the_same_shards(co, tmp_path, capsys):
    """`pgolf data build --tokenizer MODEL`: a record's tokenizer on the same documents gives the same shards."""
    data_dir, tok = co
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs()), encoding="utf-8")
    main(["data", "build", "--docs", str(src), "--out", str(tmp_path / "out"), "--val-docs", "6",
          "--transform", "caseops", "--tokenizer", str(tok), "--name", "co", "--workers", "1"])
    again = tmp_path / "out/datasets/co_sp700_caseops"
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "fineweb_train_000000.bin"):
        assert (again / name).read_bytes() == (data_dir / name).read_bytes()
    assert (tmp_path / "out/tokenizers" / tok.name).read_bytes() == tok.read_bytes()
    with pytest.raises(SystemExit) as e:  # the CaseOps tokenizer without the transform: refused
        main(["data", "build", "--docs", str(src), "--out", str(tmp_path / "o2"), "--tokenizer", str(tok)])
    assert e.value.code == 2 and "--transform caseops" in capsys.readouterr().err


@pytest.mark.slow
def test_sp8192_build_and_audit_exact(tmp_path):
    """The record vocabulary: SP8192 with the challenge's settings on ~1.5 MB of real text audits exact."""
    from shared.data.sample import stdlib_documents

    docs, total = [], 0
    for d in stdlib_documents():
        docs.append(d)
        total += len(d)
        if total > 1_500_000:
            break
    data_dir, tok = build_dataset(docs, tmp_path, vocab=8192, val_docs=40, name="big")
    assert data_dir.name == "big_sp8192" and load_tokenizer(tok).vocab_size() == 8192
    report = audit(data_dir, tok)
    assert report["variant"] == "sp" and report["bytes_source"] == "byte_table"
    assert report["exact"] is True and report["documents"] == 40 and report["decoded_bytes"] > 50_000
    assert open_dataset(data_dir, tok, 8192).val_tokens.size == report["tokens"]
