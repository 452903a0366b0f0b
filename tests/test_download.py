"""`pgolf data download` against a local fake of the Hugging Face hub (offline).

The server (stdlib http.server) answers what huggingface_hub asks of a hub
(docs/FACTS.md): GET/HEAD /datasets/{repo}/resolve/{rev}/{path} with
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
from tests.conftest import stdlib_docs

REPO = "someone/parameter-golf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Files by repo path; logs every request; can cut one transfer short to force a resume."""

    def __init__(self, files: dict[str, bytes], repos: dict[str, dict[str, bytes]] | None = None):
        self.files = files  # REPO's files; `repos` holds other repos' (repo id -> files)
        self.repos = {REPO: files, **(repos or {})}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut: dict[str, int] = {}  # path -> bytes to send before dropping the connection (once)
        self.cut_always: dict[str, int] = {}  # the same, on every GET of the path
        self.status: dict[str, int] = {}  # path -> an HTTP error status answered to every request ("*": all)
        self.status_get: dict[str, int] = {}  # the same, for GET only (the metadata HEAD succeeds)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _serve(self, body: bool) -> None:
                m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                rng = self.headers.get("Range")
                hub.log.append((self.command, m.group(3) if m else self.path, rng))
                data = hub.repos.get(m.group(1), {}).get(m.group(3)) if m else None
                path = m.group(3) if m else self.path
                code = hub.status.get(path) or hub.status.get("*") or (body and hub.status_get.get(path))
                if code:
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
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
                if path in hub.cut_always or (start == 0 and path in hub.cut):
                    n = hub.cut.pop(path, None) or hub.cut_always[path]
                    self.wfile.write(data[start:start + n])
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


# --- the other variants: other repos, byte260, CaseOps sidecars, sha256 from the manifest -----------
OTHER = "someone-else/parameter-golf-variants"


@pytest.fixture()
def variants_hub(hub, tiny_data, tmp_path_factory):
    """A second repo (as the SP8192/CaseOps/byte260 exports are): byte260, a CaseOps-style dataset with a
    byte sidecar, sha256s in its manifest; rooted at `export/` instead of `datasets/`."""
    from shared.data.bpb import ByteTokenizer
    from shared.data.build import build_dataset

    src = tmp_path_factory.mktemp("variants_src")
    files: dict[str, bytes] = {}
    docs = stdlib_docs(60_000)
    co_dir, co_tok = build_dataset(docs, src, vocab=500, val_docs=3, name="fineweb10B", transform="caseops")
    by_dir, _ = build_dataset(docs, src, vocab=0, val_docs=3, name="fineweb10B", kind="byte")
    co_name, co_files = "fineweb10B_sp500_caseops", {}
    for p in co_dir.glob("*.bin"):
        files[f"export/datasets/{co_name}/{p.name}"] = p.read_bytes()
        co_files[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    for p in by_dir.glob("*.bin"):
        files[f"export/datasets/fineweb10B_byte260/{p.name}"] = p.read_bytes()
    files["export/tokenizers/co_500.model"] = co_tok.read_bytes()
    files["export/tokenizers/fineweb_pure_byte_260.json"] = json.dumps(ByteTokenizer().to_json()).encode()
    manifest = {
        "datasets": [
            {"name": co_name, "tokenizer_name": "co500", "val_bytes_glob": "fineweb_val_bytes_*.bin",
             "stats": {"files_train": 1, "files_val": 1}, "sha256": co_files},
            {"name": "fineweb10B_byte260", "tokenizer_name": "pure_byte_260", "stats": {"files_train": 1, "files_val": 1}},
        ],
        "tokenizers": [
            {"name": "co500", "model_path": "tokenizers/co_500.model",
             "sha256": hashlib.sha256(co_tok.read_bytes()).hexdigest()},
            {"name": "pure_byte_260", "kind": "byte", "path": "tokenizers/fineweb_pure_byte_260.json"},
        ],
    }
    files["export/manifest.json"] = json.dumps(manifest).encode()
    hub.repos[OTHER] = files
    return hub


def test_download_caseops_variant_with_sidecar_from_env_repo(variants_hub, tmp_path, monkeypatch):
    """The challenge script's environment variables pick the repo and its root; the sidecar comes along."""
    from shared.data.audit import audit

    monkeypatch.setenv("HF_ENDPOINT", variants_hub.url)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", OTHER)
    monkeypatch.setenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", "export")
    data_dir, tok = download("sp500_caseops", 1, tmp_path / "data")
    assert data_dir == tmp_path / "data/datasets/fineweb10B_sp500_caseops" and tok.name == "co_500.model"
    assert sorted(p.name for p in data_dir.glob("*.bin")) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin"]
    ds = open_dataset(data_dir, tok, 500)
    assert ds.bytes_source == "sidecar"
    report = audit(data_dir, tok)
    assert report["variant"] == "caseops" and report["exact"] is True


def test_download_byte260_with_repo_id_flag(variants_hub, tmp_path, monkeypatch):
    from shared.data.audit import audit

    monkeypatch.setenv("HF_ENDPOINT", variants_hub.url)
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    main(["data", "download", "--variant", "byte260", "--train-shards", "1", "--out", str(tmp_path / "data"),
          "--repo-id", OTHER, "--remote-root", "export"])
    data_dir = tmp_path / "data/datasets/fineweb10B_byte260"
    tok = tmp_path / "data/tokenizers/fineweb_pure_byte_260.json"
    assert open_dataset(data_dir, tok, 260).bytes_source == "byte_table"
    assert audit(data_dir, tok)["exact"] is True


def test_download_checks_sha256_and_lists_what_the_repo_has(variants_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", variants_hub.url)
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    out = str(tmp_path / "data")
    # A vocabulary the repo does not have: the error lists what it has and where the variant lives.
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "--variant", "sp8192", "--out", out, "--repo-id", OTHER, "--remote-root", "export"])
    assert e.value.code == 2
    err = _error_line(capsys)
    assert "fineweb10B_sp8192" in err and "fineweb10B_byte260" in err and "fineweb10B_sp500_caseops" in err
    assert "kevclark/parameter-golf" in err
    # A hub copy whose bytes differ from the manifest's sha256 (same size, valid header) is refused.
    files = variants_hub.repos[OTHER]
    key = "export/datasets/fineweb10B_sp500_caseops/fineweb_train_000000.bin"
    good = files[key]
    files[key] = good[:-2] + bytes([good[-2] ^ 1, good[-1]])
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "--variant", "sp500_caseops", "--out", out, "--repo-id", OTHER,
              "--remote-root", "export"])
    assert e.value.code == 2
    err = _error_line(capsys)
    assert "fineweb_train_000000.bin" in err and "sha256" in err
    # Fixed on the hub: the rerun replaces the damaged local copy.
    files[key] = good
    data_dir, _ = download("sp500_caseops", 1, out, repo=OTHER, remote_root="export")
    assert (data_dir / "fineweb_train_000000.bin").read_bytes() == good


def test_default_repos_per_variant(monkeypatch):
    from shared.data.download import resolve_repo

    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    monkeypatch.delenv("MATCHED_FINEWEB_REMOTE_ROOT_PREFIX", raising=False)
    assert resolve_repo("sp1024") == ("willdepueoai/parameter-golf", "datasets")
    assert resolve_repo("sp8192")[0] == "kevclark/parameter-golf"
    assert resolve_repo("caseops")[0] == "romeerp/parameter-golf-caseops-v1"
    assert resolve_repo("sp8192", "me/mine", "root/") == ("me/mine", "root")
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "env/repo")
    assert resolve_repo("sp8192")[0] == "env/repo"


# --- network and hub failures: one line naming what happened, exit 2, the local manifest untouched ----------
# Each row breaks the fake hub one way (or points HF_ENDPOINT where nothing listens) and names the words the
# one error line must hold. To cover a new failure, add a row (and, if needed, a knob to FakeHub).
SHARD = f"{REMOTE_ROOT}/datasets/fineweb10B_sp512/fineweb_train_000000.bin"
MANIFEST = f"{REMOTE_ROOT}/manifest.json"


def _manifest_json(hub, edit) -> None:
    manifest = json.loads(hub.files[MANIFEST])
    hub.files[MANIFEST] = json.dumps(edit(manifest)).encode()


def _dataset(manifest: dict) -> dict:
    return manifest["datasets"][0]


HUB_FAULTS = {
    "nothing listening at HF_ENDPOINT": (None, ["connection refused at http://127.0.0.1:", "after 5 retries",
                                                "nothing is listening"]),
    "HTTP 500 for the manifest": (lambda hub: hub.status.update({MANIFEST: 500}),
                                  [f"server error 500 for {MANIFEST} at http://127.0.0.1:", "after 5 retries"]),
    "HTTP 503 for every request": (lambda hub: hub.status.update({"*": 503}), ["server error 503 for"]),
    "HTTP 500 on a shard's GET only": (lambda hub: hub.status_get.update({SHARD: 500}),
                                       [f"server error 500 for {SHARD}"]),
    "HTTP 403 for a shard": (lambda hub: hub.status.update({SHARD: 403}), [f"access to {SHARD}", "HTTP 403"]),
    "a transfer cut short every time": (lambda hub: hub.cut_always.update({SHARD: 100}),
                                        [f"transfer of {SHARD} cut short after 5 retries", "run the command again"]),
    "manifest not JSON": (lambda hub: hub.files.update({MANIFEST: b"<html>gateway</html>"}),
                          [f"manifest {MANIFEST} of {REPO} is not valid JSON"]),
    "manifest a list": (lambda hub: hub.files.update({MANIFEST: b"[1, 2]"}),
                        [f"manifest {MANIFEST} of {REPO} has the wrong shape: expected the file to be an object",
                         "found a list"]),
    "datasets an object": (lambda hub: _manifest_json(hub, lambda m: {**m, "datasets": {"a": 1}}),
                           ["has the wrong shape: expected `datasets` to be a list of objects, found an object"]),
    "a dataset without a name": (lambda hub: _manifest_json(hub, lambda m: {**m, "datasets": [{"stats": {}}]}),
                                 ["expected `datasets[0].name` to be a string, found nothing"]),
    "stats a string": (lambda hub: _manifest_json(hub, lambda m: (_dataset(m).update(stats="3"), m)[1]),
                       ["expected `fineweb10B_sp512`.stats to be an object", "found a string '3'"]),
    "files_train not a count": (
        lambda hub: _manifest_json(hub, lambda m: (_dataset(m)["stats"].update(files_train="3"), m)[1]),
        ["expected `fineweb10B_sp512`.stats.files_train to be a count"]),
    "a file's bytes not a count": (
        lambda hub: _manifest_json(hub, lambda m: (_dataset(m).update(files=[{"name": "x", "bytes": "9"}]), m)[1]),
        ["expected `fineweb10B_sp512`.files[0].bytes to be a byte count"]),
    "sha256 a list": (lambda hub: _manifest_json(hub, lambda m: (_dataset(m).update(sha256=["ab"]), m)[1]),
                      ["expected `fineweb10B_sp512`.sha256 to be an object of file name -> hex string"]),
    "tokenizer path a number": (
        lambda hub: _manifest_json(hub, lambda m: (m["tokenizers"][0].update(model_path=7), m)[1]),
        ["expected tokenizer `sp_bpe_512`.model_path to be a string, found the number 7"]),
}


@pytest.fixture()
def fast_retries(monkeypatch):
    """The hub client's own retries, without their waits (about 23 s of backoff per file): a test stays short.

    Replaces the `time` module that huggingface_hub's HTTP helpers sleep through; the waits asked for are kept.
    """
    import time
    import types

    import huggingface_hub.file_download as file_download
    import huggingface_hub.utils._http as http

    waits: list[float] = []
    fake = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fake.sleep = waits.append
    monkeypatch.setattr(http, "time", fake)
    monkeypatch.setattr(file_download, "time", fake)
    return waits


@pytest.mark.parametrize("fault", list(HUB_FAULTS))
def test_hub_failures_are_one_line_naming_what_happened(hub, tmp_path, monkeypatch, capsys, fast_retries, fault):
    setup, needles = HUB_FAULTS[fault]
    if setup is None:  # a port nobody listens on: the fake hub is shut, its port freed
        hub.server.shutdown()
        hub.server.server_close()
    else:
        setup(hub)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = tmp_path / "data"
    out.mkdir()
    (out / "manifest.json").write_bytes(b'{"a good": "manifest"}')  # from an earlier, complete download
    with pytest.raises(SystemExit) as e:
        main(["data", "download", "--variant", "sp512", "--train-shards", "1", "--out", str(out), "--repo", REPO])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1, err
    # Quiet retries: one note at most (the client's own dozen warnings are swallowed), the progress lines, the error.
    assert sum("retry" in x.lower() for x in lines[:-1]) <= 1 and len(lines) <= 4, f"retries are not quiet:\n{err}"
    assert all(n in lines[-1] for n in needles), lines[-1]
    assert "not in the dataset repo" not in lines[-1]
    # The local manifest is the earlier one, or (when the failure came after it) the hub's good one.
    local = (out / "manifest.json").read_bytes()
    assert local == b'{"a good": "manifest"}' or (local == hub.files[MANIFEST] and "manifest" not in lines[-1])
    assert not (out / "datasets" / "fineweb10B_sp512" / "fineweb_train_000000.bin").exists()  # nothing half-done


def test_a_bad_remote_manifest_leaves_the_last_good_download_whole(hub, tmp_path, monkeypatch, capsys):
    """A complete download, then the hub's manifest turns bad: the next download fails before touching
    anything, and the first download's files are as they were."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = tmp_path / "data"
    data_dir, _ = download("sp512", 1, out, repo=REPO)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    hub.files[MANIFEST] = json.dumps({"datasets": "gone", "tokenizers": []}).encode()
    with pytest.raises(PgolfError, match="has the wrong shape"):
        download("sp512", 2, out, repo=REPO)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".download" not in p.parts}
    assert after == before
    assert open_dataset(data_dir, out / "tokenizers" / "fineweb_512_bpe.model", 512).val_tokens.size > 0
