"""`pgolf data download`: the published FineWeb exports, manifest-driven, every variant.

A dataset repo on the Hugging Face hub holds everything under a root folder
(`datasets/`, CHALLENGE.md): `datasets/manifest.json` lists the datasets
(`name`, `tokenizer_name`, `stats.files_train`, `stats.files_val`, and
`val_bytes_glob` when validation ships byte sidecars) and the tokenizers
(`model_path`/`vocab_path` for SentencePiece, `path` for byte260, relative to
the root). Where the variants live (the challenge repo's data/ scripts and
records' READMEs):

    sp1024            willdepueoai/parameter-golf         the official export
    sp4096, sp8192    kevclark/parameter-golf             used by the SP4096/SP8192 records
    byte260           willdepueoai/parameter-golf         the challenge's downloader accepts it (unverified here)
    caseops           romeerp/parameter-golf-caseops-v1   = sp8192_lossless_caps_caseops_v1_reserved (PR #1729)

The repo is `--repo-id`, else `MATCHED_FINEWEB_REPO_ID` (the challenge
script's variable), else the table above; the root is `--remote-root`, else
`MATCHED_FINEWEB_REMOTE_ROOT_PREFIX`, else `datasets`. Local layout, the one
the challenge's scripts expect:

    OUT/manifest.json                                   the remote manifest
    OUT/datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin (+ fineweb_val_bytes_NNNNNN.bin)
    OUT/datasets/fineweb10B_<variant>/manifest.json     pgolf's: counts, sha256, tokenizer sha256
    OUT/tokenizers/fineweb_1024_bpe.model (.vocab; byte260: fineweb_pure_byte_260.json)

Every file is verified: shards' and sidecars' headers and sizes, and the
size and sha256 when the remote manifest gives them (a dataset entry's
`files: [{name, bytes, sha256}]` or `sha256: {name: hex}`; a tokenizer
entry's `sha256`). A shard already present and valid is skipped. Files are
fetched with huggingface_hub into OUT/.download (which resumes interrupted
transfers with HTTP Range) and moved into place only when complete.
`HF_ENDPOINT` is honoured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from shared.core.progress import Progress
from shared.data.manifest import sha256_file, write_manifest
from shared.data.shards import shard_count
from shared.errors import PgolfError

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
STAGING = ".download"
REPO_ENV, ROOT_ENV = "MATCHED_FINEWEB_REPO_ID", "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
CASEOPS_VARIANT = "sp8192_lossless_caps_caseops_v1_reserved"
ALIASES = {"caseops": CASEOPS_VARIANT}
DEFAULT_REPOS = {
    "sp1024": REPO_ID,
    "byte260": REPO_ID,
    "sp4096": "kevclark/parameter-golf",
    "sp8192": "kevclark/parameter-golf",
    CASEOPS_VARIANT: "romeerp/parameter-golf-caseops-v1",
}


def resolve_repo(variant: str, repo: str | None = None, remote_root: str | None = None) -> tuple[str, str]:
    """(repo id, remote root) for a variant: the flag, else the environment, else the known default."""
    variant = ALIASES.get(variant, variant)
    repo = repo or os.environ.get(REPO_ENV) or DEFAULT_REPOS.get(variant, REPO_ID)
    root = remote_root if remote_root is not None else os.environ.get(ROOT_ENV, REMOTE_ROOT)
    return repo, root.strip("/")


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
    hint = ""
    if key == "datasets":
        variant = name.removeprefix("fineweb10B_")
        if variant in DEFAULT_REPOS:
            hint = f"; {variant} is published in {DEFAULT_REPOS[variant]} (--repo-id)"
        else:
            hint = "; pass --repo-id for a repo that has it"
    raise PgolfError(f"{where}: no {key[:-1]} named {name!r} (it has: {', '.join(names) or 'none'}){hint}")


def _expected(dataset: dict) -> dict[str, dict]:
    """name -> {"bytes", "sha256"} that the remote manifest promises for a dataset's files (often nothing)."""
    out: dict[str, dict] = {}
    for entry in dataset.get("files") or []:
        if isinstance(entry, dict) and (entry.get("name") or entry.get("path")):
            out[Path(str(entry.get("name") or entry.get("path"))).name] = entry
    sha = dataset.get("sha256")
    if isinstance(sha, dict):
        for name, hexdigest in sha.items():
            out.setdefault(Path(name).name, {})["sha256"] = hexdigest
    return out


def _verify(path: Path, want: dict | None, where: str) -> None:
    """Size and sha256 against the remote manifest, when it gives them; a one-line error naming the file."""
    if not want:
        return
    if want.get("bytes") is not None and path.stat().st_size != int(want["bytes"]):
        raise PgolfError(f"{path} has {path.stat().st_size} bytes but {where} promises {want['bytes']}: "
                         "delete it and download again")
    if want.get("sha256") and sha256_file(path) != str(want["sha256"]).lower():
        raise PgolfError(f"{path} does not match the sha256 in {where} ({str(want['sha256'])[:12]}...): "
                         "the transfer or the hub copy is damaged; delete it and download again")


def _complete(path: Path, want: dict | None, where: str) -> bool:
    if not _shard_complete(path):
        return False
    try:
        _verify(path, want, where)
        return True
    except PgolfError:
        return False


def download(variant: str, train_shards: int, out: str | Path = "data", repo: str | None = None,
             endpoint: str | None = None, remote_root: str | None = None) -> tuple[Path, Path]:
    """Fetch the validation shards (+ byte sidecars), `train_shards` train shards and the tokenizer.

    Returns (data_dir, tokenizer path).
    """
    variant = ALIASES.get(variant, variant)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", variant):
        raise PgolfError(f"--variant {variant!r}: expected sp1024, sp4096, sp8192, byte260, caseops "
                         "or the <name> of a fineweb10B_<name> dataset")
    if train_shards < 0:
        raise PgolfError(f"--train-shards {train_shards}: must be 0 or more")
    repo, root = resolve_repo(variant, repo, remote_root)
    prefix = f"{root}/" if root else ""
    out = Path(out)
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if not sys.stderr.isatty():
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()

    remote_manifest = f"{prefix}manifest.json"
    where = f"{remote_manifest} of {repo}"
    manifest_path = _place(_fetch(repo, remote_manifest, out, endpoint), out / "manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PgolfError(f"{where} is not valid JSON ({e})") from None
    name = f"fineweb10B_{variant}"
    dataset = _entry(manifest, "datasets", name, where)
    stats = dataset.get("stats") or {}
    try:
        n_train, n_val = int(stats["files_train"]), int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        raise PgolfError(f"{where}: dataset {name} lacks stats.files_train / stats.files_val") from None
    if train_shards > n_train:
        raise PgolfError(f"--train-shards {train_shards}: {name} has only {n_train} train shards in {repo}")
    tokenizer = _entry(manifest, "tokenizers", str(dataset.get("tokenizer_name")), where)
    tok_files = [str(tokenizer[k]) for k in ("model_path", "vocab_path", "path") if tokenizer.get(k)]
    if not tok_files or not tok_files[0].endswith((".model", ".json")):
        raise PgolfError(f"{where}: tokenizer {tokenizer.get('name')!r} has neither a SentencePiece model_path "
                         "nor a byte260 .json path")

    data_dir = out / "datasets" / name
    shards = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)]
    if dataset.get("val_bytes_glob") or stats.get("files_val_bytes"):
        shards += [f"fineweb_val_bytes_{i:06d}.bin" for i in range(n_val)]  # CaseOps byte sidecars
    shards += [f"fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    expected = _expected(dataset)
    todo = [s for s in shards if not _complete(data_dir / s, expected.get(s), where)]
    print(f"{name} from {repo}: {len(shards)} files wanted, {len(shards) - len(todo)} already complete",
          file=sys.stderr)
    with Progress(f"download {name}", total=len(todo), unit="files") as bar:
        for shard in todo:
            dest = _place(_fetch(repo, f"{prefix}datasets/{name}/{shard}", out, endpoint), data_dir / shard)
            try:
                shard_count(dest)  # header and size, or a one-line error naming the file
                _verify(dest, expected.get(shard), where)
            except PgolfError:
                dest.unlink()  # never leave a bad file where a reader would take it
                raise
            bar.update(1)
    tok_paths = []
    tok_sha = tokenizer.get("sha256")
    for k, rel in enumerate(tok_files):
        dest = out / "tokenizers" / Path(rel).name
        want = {"sha256": tok_sha} if (k == 0 and isinstance(tok_sha, str)) else None
        if not dest.is_file() or (want and sha256_file(dest) != tok_sha.lower()):
            _place(_fetch(repo, f"{prefix}{rel}", out, endpoint), dest)
            _verify(dest, want, where)
        tok_paths.append(dest)

    from shared.data.bpb import load_tokenizer
    from shared.data.shards import load_val_bytes

    load_val_bytes(data_dir)  # sidecars pair with the val shards, entry for entry
    from shared.data.caseops import has_operators

    proc = load_tokenizer(tok_paths[0])
    transform = "caseops" if has_operators(proc) else "none"
    write_manifest(data_dir, tok_paths[0], name=name, vocab=int(proc.vocab_size()), transform=transform,
                   source=f"{endpoint or 'https://huggingface.co'} {repo}")
    shutil.rmtree(out / STAGING, ignore_errors=True)  # kept only while a transfer may need resuming
    return data_dir, tok_paths[0]
