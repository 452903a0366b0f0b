"""`pgolf data download` against a local fake of the Hugging Face hub (offline).

The server (stdlib http.server) answers what huggingface_hub asks of a hub
(MACHINE-NOTES.md): GET/HEAD /datasets/{repo}/resolve/{rev}/{path} with
X-Repo-Commit, ETag and Content-Length, Range requests with 206, and 404 plus
`X-Error-Code: EntryNotFound` for missing files. It serves a tiny export in
the published layout, built from the session's tiny dataset.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from shared.cli import main
from shared.data.dataset import open_dataset
from shared.data.download import REMOTE_ROOT, download
from shared.data.shards import HEADER_BYTES, read_shard, write_shard
from shared.errors import PgolfError

REPO = "someone/parameter-golf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Files by repo path; logs every request; can cut one transfer short to force a resume."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut: dict[str, int] = {}  # path -> bytes to send before dropping the connection (once)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _serve(self, body: bool) -> None:
                m = re.fullmatch(rf"/datasets/{re.escape(REPO)}/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                rng = self.headers.get("Range")
                hub.log.append((self.command, m.group(2) if m else self.path, rng))
                data = hub.files.get(m.group(2)) if m else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Error-Message", "Entry not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and (r := re.fullmatch(r"bytes=(\d+)-", rng)):
                    start = int(r.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                path = m.group(2)
                if start == 0 and path in hub.cut:
                    n = hub.cut.pop(path)
                    self.wfile.write(data[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data[start:])

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def gets(self, suffix: str) -> list[tuple[str, str, str | None]]:
        return [e for e in self.log if e[0] == "GET" and e[1].endswith(suffix)]


@pytest.fixture()
def hub(tiny_data):
    """A fake export of `fineweb10B_sp512`: 1 val shard, 3 train shards, the tokenizer, the manifest."""
    train = np.asarray(read_shard(next(tiny_data.data_dir.glob("fineweb_train_*.bin"))))
    val = np.asarray(read_shard(next(tiny_data.data_dir.glob("fineweb_val_*.bin"))))
    files: dict[str, bytes] = {}
    tmp = tiny_data.data_dir.parent.parent / "hub_src"
    for name, tokens in [("fineweb_val_000000.bin", val),
                         *[(f"fineweb_train_{i:06d}.bin", part) for i, part in enumerate(np.array_split(train, 3))]]:
        files[f"{REMOTE_ROOT}/datasets/fineweb10B_sp512/{name}"] = write_shard(tmp / name, tokens).read_bytes()
    files[f"{REMOTE_ROOT}/tokenizers/fineweb_512_bpe.model"] = tiny_data.tokenizer.read_bytes()
    files[f"{REMOTE_ROOT}/tokenizers/fineweb_512_bpe.vocab"] = tiny_data.tokenizer.with_suffix(".vocab").read_bytes()
    manifest = {
        "datasets": [{"name": "fineweb10B_sp512", "tokenizer_name": "sp_bpe_512",
                      "stats": {"files_train": 3, "files_val": 1}}],
        "tokenizers": [{"name": "sp_bpe_512", "model_path": "tokenizers/fineweb_512_bpe.model",
                        "vocab_path": "tokenizers/fineweb_512_bpe.vocab"}],
    }
    files[f"{REMOTE_ROOT}/manifest.json"] = json.dumps(manifest).encode()
    fake = FakeHub(files)
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_download_layout_headers_and_skip(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    data_dir, tok = download("sp512", 2, tmp_path / "data", repo=REPO)
    assert data_dir == tmp_path / "data" / "datasets" / "fineweb10B_sp512"
    assert tok == tmp_path / "data" / "tokenizers" / "fineweb_512_bpe.model"
    assert sorted(p.name for p in data_dir.glob("*.bin")) == [
        "fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    for p in data_dir.glob("*.bin"):
        assert p.read_bytes() == hub.files[f"{REMOTE_ROOT}/datasets/fineweb10B_sp512/{p.name}"]
    assert (tmp_path / "data" / "manifest.json").is_file()
    # The downloaded pair opens cleanly (pgolf's manifest pins the tokenizer's sha256).
    ds = open_dataset(data_dir, tok, 512)
    assert ds.val_tokens.size > 0

    # A second run with one more shard fetches only that shard.
    hub.log.clear()
    download("sp512", 3, tmp_path / "data", repo=REPO)
    fetched = {e[1].rsplit("/", 1)[-1] for e in hub.log if e[0] == "GET" and e[1].endswith(".bin")}
    assert fetched == {"fineweb_train_000002.bin"}

    # A shard damaged locally (truncated) is not complete: it is fetched again.
    victim = data_dir / "fineweb_train_000001.bin"
    victim.write_bytes(victim.read_bytes()[: HEADER_BYTES + 10])
    hub.log.clear()
    download("sp512", 3, tmp_path / "data", repo=REPO)
    fetched = {e[1].rsplit("/", 1)[-1] for e in hub.log if e[0] == "GET" and e[1].endswith(".bin")}
    assert fetched == {"fineweb_train_000001.bin"}
    assert victim.read_bytes() == hub.files[f"{REMOTE_ROOT}/datasets/fineweb10B_sp512/{victim.name}"]


def test_download_resumes_a_cut_transfer(hub, tmp_path, monkeypatch):
    """The connection drops mid-shard: the transfer resumes with a Range request, the shard is whole.

    huggingface_hub writes in 10 MiB chunks, so the shard must be bigger than
    that for a partial transfer to be kept: 6M random tokens (12 MB).
    """
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    name = "fineweb_train_000000.bin"
    remote = f"{REMOTE_ROOT}/datasets/fineweb10B_sp512/{name}"
    big = np.random.default_rng(0).integers(0, 512, size=6_000_000, dtype=np.uint16)
    hub.files[remote] = write_shard(tmp_path / "big.bin", big).read_bytes()
    hub.cut[remote] = 11 * 2**20
    try:
        download("sp512", 1, tmp_path / "data", repo=REPO)
    except PgolfError as e:  # the client gave up on the cut transfer: a rerun resumes it
        assert "resume" in str(e)
        download("sp512", 1, tmp_path / "data", repo=REPO)
    starts = [int(r[6:-1]) for _, _, r in hub.gets(name) if r]
    assert starts and 0 < max(starts) <= 11 * 2**20, hub.gets(name)
    dest = tmp_path / "data" / "datasets" / "fineweb10B_sp512" / name
    assert dest.read_bytes() == hub.files[remote]


def _error_line(capsys) -> str:
    """stderr ends with exactly one `error:` line (progress lines may precede it) and has no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1].startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1, err
    return lines[-1]


def test_download_cli_errors(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = str(tmp_path / "data")
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "--variant", "sp4096", "--train-shards", "1", "--out", out, "--repo", REPO])
    assert e.value.code == 2
    err = _error_line(capsys)
    assert "fineweb10B_sp4096" in err and "fineweb10B_sp512" in err

    with pytest.raises(SystemExit) as e:
        main(["data", "download", "--variant", "sp512", "--train-shards", "9", "--out", out, "--repo", REPO])
    assert e.value.code == 2
    assert "only 3 train shards" in _error_line(capsys)

    # A file the manifest promises but the hub lacks: a one-line error naming it.
    del hub.files[f"{REMOTE_ROOT}/datasets/fineweb10B_sp512/fineweb_train_000000.bin"]
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "--variant", "sp512", "--train-shards", "1", "--out", out, "--repo", REPO])
    assert e.value.code == 2
    assert "fineweb_train_000000.bin" in _error_line(capsys)


def test_download_default_layout(hub, tmp_path, monkeypatch):
    """Default --out is `data`: data/datasets/fineweb10B_<variant>/ and data/tokenizers/."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.chdir(tmp_path)
    main(["data", "download", "--variant", "sp512", "--train-shards", "1", "--repo", REPO])
    assert (tmp_path / "data/datasets/fineweb10B_sp512/fineweb_val_000000.bin").is_file()
    assert (tmp_path / "data/tokenizers/fineweb_512_bpe.model").is_file()
    assert not (tmp_path / "data" / ".download").exists()
