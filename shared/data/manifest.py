"""A dataset folder's manifest.json: every shard's token count, size and sha256, and the tokenizer's.

Written by `pgolf data build|sample|download`, read by every command that
opens a dataset (shared/data/dataset.py) to catch missing, damaged or
mismatched files before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shared.data.shards import FILE_MODE, find_shards
from shared.errors import PgolfError

BOS_ID = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "pgolf-dataset"

# The settings of the published tokenizers (docs/FACTS.md).
TOKENIZER_SETTINGS = dict(
    model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3, character_coverage=0.999,
)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_checksums(data_dir: str | Path, tokenizer: str | Path) -> dict[str, str]:
    """What a record's log states about its data (`pgolf record check` compares it with the official
    profile): the tokenizer file's sha256, and one sha256 over the validation shards' bytes in name order."""
    h = hashlib.sha256()
    for f in find_shards(data_dir, "val"):
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
    return {"tokenizer_sha256": sha256_file(tokenizer), "val_sha256": h.hexdigest()}


def write_manifest(data_dir: Path, tok_path: Path, name: str, vocab: int, docs: dict | None = None,
                   source: str = "", transform: str = "none", settings: dict | None = None) -> Path:
    """manifest.json in the dataset folder: every shard's tokens/bytes/sha256 and the tokenizer's sha256.

    `transform` ("none" or "caseops") and the byte sidecars (split "val_bytes")
    are recorded so that a reader knows how BPB must be charged.
    """
    from shared.data.shards import find_sidecars, shard_count
    from shared.files import atomic_write_bytes

    entries, totals = [], {"val": 0, "train": 0}
    for split in ("val", "train"):
        for f in find_shards(data_dir, split):
            n = shard_count(f)
            totals[split] += n
            entries.append({"name": f.name, "split": split, "tokens": n, "bytes": f.stat().st_size,
                            "sha256": sha256_file(f)})
    for f in find_sidecars(data_dir):
        entries.append({"name": f.name, "split": "val_bytes", "tokens": shard_count(f), "bytes": f.stat().st_size,
                        "sha256": sha256_file(f)})
    tok_files = [tok_path, tok_path.with_suffix(".vocab")]
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "name": name,
        "vocab_size": vocab,
        "source": source,
        "transform": transform,
        "bytes_source": "sidecar" if find_sidecars(data_dir) else "byte_table",
        "tokenizer": {
            "file": tok_path.name,
            "sha256": sha256_file(tok_path),
            "settings": TOKENIZER_SETTINGS if settings is None else settings,
        },
        "tokenizer_files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                            for p in tok_files if p.is_file()],
        "docs": docs or {},
        "tokens": totals,
        "files": entries,
    }
    path = atomic_write_bytes(data_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    path.chmod(FILE_MODE)
    return path


def read_manifest(data_dir: str | Path) -> dict | None:
    """The dataset folder's manifest.json, None when absent, an error when unreadable."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PgolfError(f"{path} is not valid JSON ({e}); rebuild the dataset or delete the file") from None
    if not isinstance(manifest, dict):
        raise PgolfError(f"{path} is not a pgolf dataset manifest (expected a JSON object)")
    check_shape(manifest, path)
    return manifest


def check_shape(manifest: dict, path: Path) -> None:
    """The fields readers use have the types `write_manifest` gives them (a hand-edited or foreign file
    would otherwise fail deep inside a reader)."""
    def wrong(field: str, expected: str, found) -> PgolfError:
        return PgolfError(f"{path} has the wrong shape: expected {field} to be {expected}, found "
                          f"{type(found).__name__} {json.dumps(found)[:60]}; rebuild the dataset or delete the file")

    files = manifest.get("files", [])
    if files is not None and not isinstance(files, list):
        raise wrong("files", "a list", files)
    for i, entry in enumerate(files or []):
        if not isinstance(entry, dict):
            raise wrong(f"files[{i}]", "an object", entry)
        if not isinstance(entry.get("name"), str):
            raise wrong(f"files[{i}].name", "a string", entry.get("name"))
        tokens = entry.get("tokens", 0)
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise wrong(f"files[{i}].tokens", "an integer", tokens)
    for key in ("tokens", "docs"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise wrong(key, "an object", manifest[key])
    for split, n in (manifest.get("tokens") or {}).items():
        if isinstance(n, bool) or not isinstance(n, int):
            raise wrong(f"tokens.{split}", "an integer", n)
    tok = manifest.get("tokenizer")
    if tok is not None and not isinstance(tok, dict):
        raise wrong("tokenizer", "an object", tok)
    if isinstance(tok, dict) and tok.get("sha256") is not None and not isinstance(tok["sha256"], str):
        raise wrong("tokenizer.sha256", "a string", tok["sha256"])
    for key in ("transform", "name"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise wrong(key, "a string", manifest[key])
