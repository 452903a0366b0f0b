"""Bad input gets one line on stderr (`error: ...`) and exit code 2, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from shared.cli import main
from shared.data.build import build_dataset
from shared.data.dataset import open_dataset
from shared.data.shards import read_shard, write_shard
from shared.errors import PgolfError
from tests.conftest import stdlib_docs


def run_cli(capsys, *argv: str) -> str:
    """Run `pgolf argv`; it must exit 2 with exactly one `error:` line. Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0], err
    return lines[0]


@pytest.fixture()
def data_copy(tiny_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_data.data_dir, dst)
    return dst


def _audit(capsys, data_dir, tokenizer) -> str:
    return run_cli(capsys, "data", "audit", "--data", str(data_dir), "--tokenizer", str(tokenizer))


def test_missing_shard(capsys, tiny_data, data_copy):
    (data_copy / "fineweb_val_000000.bin").unlink()
    msg = _audit(capsys, data_copy, tiny_data.tokenizer)
    assert "no fineweb_val_*.bin shards" in msg
    with pytest.raises(PgolfError, match="no fineweb_val_"):
        open_dataset(data_copy, tiny_data.tokenizer, 512)


def test_missing_folder_and_tokenizer(capsys, tiny_data, tmp_path):
    assert "not found" in _audit(capsys, tmp_path / "nowhere", tiny_data.tokenizer)
    assert "tokenizer" in _audit(capsys, tiny_data.data_dir, tmp_path / "none.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    assert "is not a SentencePiece model" in _audit(capsys, tiny_data.data_dir, tmp_path / "junk.model")


def test_truncated_shard(capsys, tiny_data, data_copy):
    shard = data_copy / "fineweb_train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-7])
    msg = _audit(capsys, data_copy, tiny_data.tokenizer)
    assert str(shard) in msg and "truncated" in msg
    with pytest.raises(PgolfError, match="truncated"):
        open_dataset(data_copy, tiny_data.tokenizer, 512)


def test_wrong_magic(capsys, tiny_data, data_copy):
    shard = data_copy / "fineweb_val_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[0:4] = np.array([7], dtype="<i4").tobytes()
    shard.write_bytes(bytes(raw))
    msg = _audit(capsys, data_copy, tiny_data.tokenizer)
    assert str(shard) in msg and "wrong magic 7" in msg


def test_token_beyond_vocabulary(capsys, tiny_data, data_copy):
    for split in ("val", "train"):
        shard = data_copy / f"fineweb_{split}_000000.bin"
        original = shard.read_bytes()
        tokens = np.array(read_shard(shard))
        tokens[5] = 600
        write_shard(shard, tokens)  # same length, so the manifest's counts still agree
        if split == "val":
            assert "token id 600 is beyond the vocabulary (512 ids)" in _audit(capsys, data_copy, tiny_data.tokenizer)
        with pytest.raises(PgolfError, match=f"fineweb_{split}_.*token id 600"):
            open_dataset(data_copy, tiny_data.tokenizer, 512)
        shard.write_bytes(original)


def test_data_and_tokenizer_from_different_builds(capsys, tiny_data, tmp_path):
    docs = stdlib_docs()
    _, other = build_dataset(docs[::-1], tmp_path / "other", vocab=512, val_docs=8, name="other")
    msg = _audit(capsys, tiny_data.data_dir, other)
    assert "data and tokenizer come from different builds" in msg and str(other) in msg
    with pytest.raises(PgolfError, match="different builds"):
        open_dataset(tiny_data.data_dir, other, 512)


def test_vocab_size_mismatch_names_the_field(tiny_data):
    with pytest.raises(PgolfError, match=r"model.vocab_size is 1024.*set model.vocab_size = 512"):
        open_dataset(tiny_data.data_dir, tiny_data.tokenizer, 1024)


def test_malformed_toml(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\niterations = = 3\n")
    msg = run_cli(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert str(bad) in msg and "malformed TOML" in msg


def test_unknown_config_key(capsys, tmp_path):
    bad = tmp_path / "typo.toml"
    bad.write_text("[train]\niteratons = 3\n")
    msg = run_cli(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "run"))
    assert "unknown config key 'train.iteratons'" in msg and "did you mean 'iterations'" in msg


def test_no_traceback_in_a_real_process(tmp_path):
    """The installed entry point's path: a fresh interpreter, exit code 2, one line."""
    proc = subprocess.run(
        [sys.executable, "-c", "from shared.cli import main; main()", "data", "audit",
         "--data", str(tmp_path / "missing"), "--tokenizer", str(tmp_path / "t.model")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,field", [
    ("train.grad_accum=0", "train.grad_accum"), ("model.num_heads=0", "model.num_heads"),
    ("train.batch_tokens=0", "train.batch_tokens"), ("eval.batch_tokens=0", "eval.batch_tokens"),
])
def test_non_positive_sizes_name_the_field(capsys, tmp_path, override, field):
    msg = run_cli(capsys, "train", "--set", override, "--out", str(tmp_path / "run"))
    assert field in msg


def test_unwritable_output_is_one_line(capsys, tiny_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    msg = run_cli(capsys, "train", "--data", str(tiny_data.data_dir), "--tokenizer", str(tiny_data.tokenizer),
                  "--set", "model.vocab_size=512", "--out", str(blocker / "run"))
    assert str(blocker) in msg
