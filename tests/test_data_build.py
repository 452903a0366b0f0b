"""`pgolf data build` / `sample`: layout, manifest, BOS per document, train-only tokenizer, exact audit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.cli import main
from shared.data.bpb import load_tokenizer
from shared.data.build import build_dataset, read_docs
from shared.data.dataset import open_dataset
from shared.data.manifest import sha256_file
from shared.data.shards import read_shard
from shared.errors import PgolfError
from tests.conftest import SHAKESPEARE, stdlib_docs


def _audit_json(capsys, data_dir, tokenizer) -> dict:
    capsys.readouterr()
    main(["data", "audit", "--data", str(data_dir), "--tokenizer", str(tokenizer), "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs")
    for i, doc in enumerate(stdlib_docs(300_000)):
        (folder / f"doc_{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder


def test_build_folder_then_audit_exact(text_folder, tmp_path, capsys):
    out = tmp_path / "out"
    main(["data", "build", "--docs", str(text_folder), "--out", str(out), "--vocab", "400", "--val-docs", "5"])
    name = text_folder.name
    data_dir, tok = out / "datasets" / f"{name}_sp400", out / "tokenizers" / f"{name}_400_bpe.model"
    report = _audit_json(capsys, data_dir, tok)
    assert set(report) >= {"tokens", "lut_bytes", "decoded_bytes", "exact", "factor"}
    assert report["exact"] is True and report["lut_bytes"] == report["decoded_bytes"] > 0

    # One BOS before each document, val first K documents.
    val = np.asarray(read_shard(data_dir / "fineweb_val_000000.bin"))
    train = np.asarray(read_shard(data_dir / "fineweb_train_000000.bin"))
    n_docs = len(list(text_folder.glob("*.txt")))
    assert val[0] == 1 and train[0] == 1
    assert int((val == 1).sum()) == 5 and int((train == 1).sum()) == n_docs - 5
    sp = load_tokenizer(tok)
    first = val[1 : np.flatnonzero(val == 1)[1]].tolist()
    assert sp.decode(first) == sp.decode(sp.encode((text_folder / "doc_000.txt").read_text()))

    # The manifest: counts and sha256 of every file.
    m = json.loads((data_dir / "manifest.json").read_text())
    assert m["vocab_size"] == 400 and m["docs"] == {"val": 5, "train": n_docs - 5}
    assert m["tokens"] == {"val": val.size, "train": train.size}
    assert m["tokenizer"]["sha256"] == sha256_file(tok)
    for entry in m["files"]:
        assert entry["sha256"] == sha256_file(data_dir / entry["name"])
    assert {e["name"] for e in m["tokenizer_files"]} == {tok.name, tok.with_suffix(".vocab").name}
    assert open_dataset(data_dir, tok, 400).val_tokens.size == val.size


def test_tokenizer_sees_training_documents_only(tmp_path):
    docs = stdlib_docs(120_000)
    marker = "zqxjvw"
    val_only = [f"{marker} " * 2000 + docs[0], *docs[1:]]
    _, tok = build_dataset(val_only, tmp_path / "a", vocab=800, val_docs=1, name="a")
    sp = load_tokenizer(tok)
    assert not any("qxj" in sp.id_to_piece(i) for i in range(sp.vocab_size()))
    # Control: the same text among the training documents does give the tokenizer such pieces.
    in_train = [docs[0], *val_only[:1], *docs[1:]]
    _, tok = build_dataset(in_train, tmp_path / "b", vocab=800, val_docs=1, name="b")
    sp = load_tokenizer(tok)
    assert any("qxj" in sp.id_to_piece(i) for i in range(sp.vocab_size()))


def test_build_is_deterministic_and_shards(tmp_path):
    docs = stdlib_docs(100_000)
    d1, t1 = build_dataset(docs, tmp_path / "one", vocab=400, val_docs=3, name="d", shard_tokens=5000)
    d2, t2 = build_dataset(docs, tmp_path / "two", vocab=400, val_docs=3, name="d", shard_tokens=5000)
    assert sha256_file(t1) == sha256_file(t2)
    files = sorted(p.name for p in d1.glob("*.bin"))
    assert len(files) > 3 and files == sorted(p.name for p in d2.glob("*.bin"))
    for name in files:
        assert sha256_file(d1 / name) == sha256_file(d2 / name)
    # A rebuild with bigger shards leaves no stale shard behind.
    build_dataset(docs, tmp_path / "one", vocab=400, val_docs=3, name="d")
    assert sorted(p.name for p in d1.glob("*.bin")) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin"]


def test_read_docs_sources(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 3}\n')
    assert read_docs(tmp_path / "d.jsonl") == (["one", "two"], "d")
    (tmp_path / "p.txt").write_text("first para\nline two\n\n\nsecond\n")
    assert read_docs(tmp_path / "p.txt") == (["first para\nline two", "second"], "p")
    (tmp_path / "g").mkdir()
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / "g" / name).write_text(name)
    assert read_docs(tmp_path / "g")[0] == ["a.txt", "b.txt"]
    assert read_docs(str(tmp_path / "g" / "*.md"))[0] == ["c.md"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(PgolfError, match=r"bad.jsonl:2: expected an object with a string `text` field"):
        read_docs(tmp_path / "bad.jsonl")
    with pytest.raises(PgolfError, match="matches no files"):
        read_docs(str(tmp_path / "*.nothing"))
    with pytest.raises(PgolfError, match="not found"):
        read_docs(tmp_path / "missing")


def test_build_input_errors(tmp_path):
    docs = stdlib_docs(20_000)
    with pytest.raises(PgolfError, match="--val-docs"):
        build_dataset(docs, tmp_path, vocab=400, val_docs=len(docs), name="x")
    with pytest.raises(PgolfError, match="--vocab"):
        build_dataset(docs, tmp_path, vocab=100, val_docs=1, name="x")
    with pytest.raises(PgolfError, match="SentencePiece could not train"):
        build_dataset(["tiny text", "b c"], tmp_path, vocab=4000, val_docs=1, name="x")
    with pytest.raises(PgolfError, match=r"--vocab 280 is below the \d+ pieces this text needs"):
        build_dataset(docs, tmp_path, vocab=280, val_docs=1, name="x")


@pytest.mark.skipif(SHAKESPEARE is None or not SHAKESPEARE.is_file(), reason="PGOLF_SHAKESPEARE (a Tiny Shakespeare text file) is not set")
def test_tinyshakespeare_audit_exact(tmp_path, capsys):
    main(["data", "build", "--docs", str(SHAKESPEARE), "--out", str(tmp_path), "--vocab", "1024"])
    report = _audit_json(capsys, tmp_path / "datasets/tinyshakespeare_sp1024",
                         tmp_path / "tokenizers/tinyshakespeare_1024_bpe.model")
    assert report["exact"] is True and report["tokens"] > 10_000


@pytest.mark.slow
def test_sample_layout_and_audit(tmp_path, capsys):
    """`pgolf data sample`: the paths configs/small.toml points at, real text, exact."""
    from shared.core.config import load_config

    main(["data", "sample", "--out", str(tmp_path / "data/sample")])
    cfg = load_config("configs/small.toml")
    data_dir, tok = tmp_path / cfg.data.dir, tmp_path / cfg.data.tokenizer
    assert data_dir.is_dir() and tok.is_file()
    ds = open_dataset(data_dir, tok, cfg.model.vocab_size)
    train = int(sum(read_shard(p).size for p in data_dir.glob("fineweb_train_*.bin")))
    assert ds.val_tokens.size > 100_000 and train > 1_000_000
    assert _audit_json(capsys, data_dir, tok)["exact"] is True
