"""`pgolf data download`: the published FineWeb exports, manifest-driven, every variant.

A dataset repo on the Hugging Face hub holds everything under a root folder
(`datasets/`, docs/FACTS.md): `datasets/manifest.json` lists the datasets
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
    """Download one repo file into the staging folder; returns the staged path (failures: shared/data/hub.py)."""
    from shared.data.hub import fetch

    return fetch(repo, remote_path, out / STAGING, endpoint)


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
    entries = manifest[key]  # a list of objects with a string `name`: _check_shape saw to it
    for entry in entries:
        if entry["name"] == name:
            return entry
    names = sorted(e["name"] for e in entries)
    hint = ""
    if key == "datasets":
        variant = name.removeprefix("fineweb10B_")
        if variant in DEFAULT_REPOS:
            hint = f"; {variant} is published in {DEFAULT_REPOS[variant]} (--repo-id)"
        else:
            hint = "; pass --repo-id for a repo that has it"
    raise PgolfError(f"{where}: no {key[:-1]} named {name!r} (it has: {', '.join(names) or 'none'}){hint}")


def _kind(value) -> str:
    """How a JSON value reads in an error: `a list`, `a string "x"`, `nothing`."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, str):
        return f"a string {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _shape_error(where: str, field: str, expected: str, found) -> PgolfError:
    return PgolfError(f"manifest {where} has the wrong shape: expected {field} to be {expected}, "
                      f"found {_kind(found)}; is this a parameter-golf export (--repo-id, --remote-root)?")


def _check_shape(manifest, variant: str, where: str) -> None:
    """The remote manifest is the shape the code below indexes into, or one line saying where it is not.

    Checked before anything is placed: a wrong manifest never replaces a good local one.
    """
    if not isinstance(manifest, dict):
        raise _shape_error(where, "the file", "an object with `datasets` and `tokenizers` lists", manifest)
    for key in ("datasets", "tokenizers"):
        entries = manifest.get(key)
        if not isinstance(entries, list):
            raise _shape_error(where, f"`{key}`", "a list of objects", entries)
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                found = entry.get("name") if isinstance(entry, dict) else entry
                raise _shape_error(where, f"`{key}[{i}].name`" if isinstance(entry, dict) else f"`{key}[{i}]`",
                                   "a string" if isinstance(entry, dict) else "an object with a `name`", found)
    name = f"fineweb10B_{variant}"
    dataset = next((d for d in manifest["datasets"] if d["name"] == name), None)
    if dataset is None:
        return  # _entry names what the repo has instead
    field = f"`{name}`"
    stats = dataset.get("stats")
    if not isinstance(stats, dict):
        raise _shape_error(where, f"{field}.stats", "an object with files_train and files_val", stats)
    for key in ("files_train", "files_val"):
        n = stats.get(key)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise _shape_error(where, f"{field}.stats.{key}", "a count (an integer, 0 or more)", n)
    if not isinstance(dataset.get("tokenizer_name"), str):
        raise _shape_error(where, f"{field}.tokenizer_name", "a string", dataset.get("tokenizer_name"))
    files = dataset.get("files", [])
    if not isinstance(files, list):
        raise _shape_error(where, f"{field}.files", "a list of {name, bytes, sha256} objects", files)
    for i, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise _shape_error(where, f"{field}.files[{i}]", "an object {name, bytes, sha256}", entry)
        for key, ok, what in (("bytes", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                               "a byte count"), ("sha256", lambda v: isinstance(v, str), "a hex string"),
                              ("name", lambda v: isinstance(v, str), "a file name")):
            if entry.get(key) is not None and not ok(entry[key]):
                raise _shape_error(where, f"{field}.files[{i}].{key}", what, entry[key])
    sha = dataset.get("sha256", {})
    if not isinstance(sha, dict) or not all(isinstance(v, str) for v in sha.values()):
        raise _shape_error(where, f"{field}.sha256", "an object of file name -> hex string", sha)
    tokenizer = next((t for t in manifest["tokenizers"] if t["name"] == dataset["tokenizer_name"]), None)
    for key in ("model_path", "vocab_path", "path", "sha256"):
        if tokenizer is not None and tokenizer.get(key) is not None and not isinstance(tokenizer[key], str):
            raise _shape_error(where, f"tokenizer `{tokenizer['name']}`.{key}", "a string", tokenizer[key])


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


def _verify(path: Path, want: dict | None, where: str, dest: Path | None = None) -> None:
    """Size and sha256 against the remote manifest, when it gives them; a one-line error naming the file.

    `path` is what is checked (a staged download, or a local copy); `dest` is where it goes, named in the error.
    """
    if not want:
        return
    dest = dest or path
    if want.get("bytes") is not None and path.stat().st_size != want["bytes"]:
        raise PgolfError(f"{dest} has {path.stat().st_size} bytes but {where} promises {want['bytes']}: "
                         "the transfer or the hub copy is damaged; run the command again")
    if want.get("sha256") and sha256_file(path) != want["sha256"].lower():
        raise PgolfError(f"{dest} does not match the sha256 in {where} ({want['sha256'][:12]}...): "
                         "the transfer or the hub copy is damaged; run the command again")


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
    staged = _fetch(repo, remote_manifest, out, endpoint)
    try:  # checked in the staging folder: a bad manifest never replaces a good local one
        manifest = json.loads(staged.read_text(encoding="utf-8"))
        _check_shape(manifest, variant, where)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        staged.unlink(missing_ok=True)
        raise PgolfError(f"manifest {where} is not valid JSON ({e})") from None
    except PgolfError:
        staged.unlink(missing_ok=True)
        raise
    _place(staged, out / "manifest.json")
    name = f"fineweb10B_{variant}"
    dataset = _entry(manifest, "datasets", name, where)
    stats = dataset["stats"]
    n_train, n_val = stats["files_train"], stats["files_val"]
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
            staged = _fetch(repo, f"{prefix}datasets/{name}/{shard}", out, endpoint)
            try:  # header, size and sha256 before the file goes where a reader would take it
                shard_count(staged)
                _verify(staged, expected.get(shard), where, data_dir / shard)
            except PgolfError:
                staged.unlink(missing_ok=True)
                raise
            _place(staged, data_dir / shard)
            bar.update(1)
    tok_paths = []
    tok_sha = tokenizer.get("sha256")
    for k, rel in enumerate(tok_files):
        dest = out / "tokenizers" / Path(rel).name
        want = {"sha256": tok_sha} if (k == 0 and isinstance(tok_sha, str)) else None
        if not dest.is_file() or (want and sha256_file(dest) != tok_sha.lower()):
            staged = _fetch(repo, f"{prefix}{rel}", out, endpoint)
            try:
                _verify(staged, want, where, dest)
            except PgolfError:
                staged.unlink(missing_ok=True)
                raise
            _place(staged, dest)
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
