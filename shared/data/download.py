"""`pgolf data download`: the published FineWeb export, manifest-driven.

The Hugging Face dataset repo `willdepueoai/parameter-golf` holds everything
under `datasets/` (CHALLENGE.md): `datasets/manifest.json` lists the datasets
(`name`, `tokenizer_name`, `stats.files_train`, `stats.files_val`) and the
tokenizers (`model_path`, `vocab_path`, relative to `datasets/`). Local layout:

    OUT/manifest.json                                   the remote manifest
    OUT/datasets/fineweb10B_sp1024/fineweb_{val,train}_NNNNNN.bin
    OUT/datasets/fineweb10B_sp1024/manifest.json        pgolf's: counts, sha256, tokenizer sha256
    OUT/tokenizers/fineweb_1024_bpe.model (.vocab)

A shard already present with a valid header and size is skipped. Files are
fetched with huggingface_hub into OUT/.download (which resumes interrupted
transfers with HTTP Range) and moved into place only when complete, then
their headers and sizes are checked. `HF_ENDPOINT` is honoured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from shared.core.progress import Progress
from shared.data.manifest import write_manifest
from shared.data.shards import shard_count
from shared.errors import PgolfError

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
STAGING = ".download"


def _fetch(repo: str, remote_path: str, out: Path, endpoint: str | None) -> Path:
    """Download one repo file into the staging folder; returns the staged path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo, filename=remote_path, repo_type="dataset",
                                    local_dir=out / STAGING, endpoint=endpoint))
    except EntryNotFoundError:
        raise PgolfError(f"{remote_path} is not in the dataset repo {repo} at {endpoint or 'huggingface.co'}") from None
    except RepositoryNotFoundError:
        raise PgolfError(f"dataset repo {repo} not found at {endpoint or 'huggingface.co'}") from None
    except (HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PgolfError(f"downloading {remote_path} from {endpoint or 'huggingface.co'} failed ({first}); "
                         "run the command again to resume") from None


def _place(staged: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, dest)
    return dest


def _shard_complete(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        shard_count(path)
        return True
    except PgolfError:
        return False


def _entry(manifest: dict, key: str, name: str, where: str) -> dict:
    entries = manifest.get(key)
    if not isinstance(entries, list):
        raise PgolfError(f"{where}: no `{key}` list; is this the parameter-golf export?")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    names = sorted(str(e.get("name")) for e in entries if isinstance(e, dict))
    raise PgolfError(f"{where}: no {key[:-1]} named {name!r} (available: {', '.join(names) or 'none'})")


def download(variant: str, train_shards: int, out: str | Path = "data", repo: str = REPO_ID,
             endpoint: str | None = None) -> tuple[Path, Path]:
    """Fetch the validation shards, `train_shards` train shards and the tokenizer; returns (data_dir, tokenizer)."""
    if not re.fullmatch(r"sp\d+|byte\d+", variant):
        raise PgolfError(f"--variant {variant!r}: expected sp<VOCAB> (sp1024, sp4096, sp8192) or byte260")
    if train_shards < 0:
        raise PgolfError(f"--train-shards {train_shards}: must be 0 or more")
    out = Path(out)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if not sys.stderr.isatty():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()

    remote_manifest = f"{REMOTE_ROOT}/manifest.json"
    manifest_path = _place(_fetch(repo, remote_manifest, out, endpoint), out / "manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PgolfError(f"{remote_manifest} from {repo} is not valid JSON ({e})") from None
    name = f"fineweb10B_{variant}"
    dataset = _entry(manifest, "datasets", name, remote_manifest)
    stats = dataset.get("stats") or {}
    try:
        n_train, n_val = int(stats["files_train"]), int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        raise PgolfError(f"{remote_manifest}: dataset {name} lacks stats.files_train / stats.files_val") from None
    if train_shards > n_train:
        raise PgolfError(f"--train-shards {train_shards}: {name} has only {n_train} train shards")
    tokenizer = _entry(manifest, "tokenizers", str(dataset.get("tokenizer_name")), remote_manifest)
    tok_files = [str(tokenizer[k]) for k in ("model_path", "vocab_path") if tokenizer.get(k)]
    if not tok_files or not tok_files[0].endswith(".model"):
        raise PgolfError(f"{remote_manifest}: tokenizer {tokenizer.get('name')!r} has no SentencePiece model_path; "
                         "pgolf trains on the sp<VOCAB> variants")

    data_dir = out / "datasets" / name
    shards = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)]
    shards += [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    todo = [s for s in shards if not _shard_complete(data_dir / s)]
    print(f"{name}: {len(shards)} shards wanted, {len(shards) - len(todo)} already complete", file=sys.stderr)
    with Progress(f"download {name}", total=len(todo), unit="shards") as bar:
        for shard in todo:
            dest = _place(_fetch(repo, f"{REMOTE_ROOT}/datasets/{name}/{shard}", out, endpoint), data_dir / shard)
            shard_count(dest)  # header and size, or a one-line error naming the file
            bar.update(1)
    tok_paths = []
    for rel in tok_files:
        dest = out / "tokenizers" / Path(rel).name
        if not dest.is_file():
            _place(_fetch(repo, f"{REMOTE_ROOT}/{rel}", out, endpoint), dest)
        tok_paths.append(dest)

    from shared.data.bpb import load_tokenizer

    vocab = int(load_tokenizer(tok_paths[0]).vocab_size())
    write_manifest(data_dir, tok_paths[0], name=name, vocab=vocab, source=f"{endpoint or 'https://huggingface.co'} {repo}")
    shutil.rmtree(out / STAGING, ignore_errors=True)  # kept only while a transfer may need resuming
    return data_dir, tok_paths[0]
