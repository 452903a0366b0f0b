"""What makes a submission a record: the official profile `pgolf record check` judges a folder against.

    profile = load_profile("official.json")          # or OFFICIAL (the challenge's rules, data sums unknown)

A profile names every figure a record must show evidence of, each a field:

- `val_tokens`: the target tokens of the whole validation split of the variant (a log's
  `data_checksums: val_tokens:N`, or a challenge log's `val_tokens: N`); the final
  evaluation must cover them (`eval_ledger: ... eval_tokens:N`, at most
  `val_tokens_slack` fewer: the reference scripts drop the tail that does not fill a sequence);
- `tokenizer_sha256`, `val_sha256`: the official tokenizer file and validation shards
  (shared/data/manifest.py `data_checksums`, logged at the start of every run);
- `hardware`: a regular expression the submission's `hardware` must match (8xH100);
- `min_seeds`: seeds a record claim needs (the README asks for three);
- `train_seconds`, `eval_seconds`: each log's training and evaluation time caps;
- `size_cap`: code + model bytes.

The challenge publishes no checksums in its repository, and this machine has no copy of the
official data, so `OFFICIAL` leaves `val_tokens` and both sums unknown (None): a folder is then
reported as not shown to be a record, naming those fields, until a profile file gives them
(`--profile FILE`, a JSON object with the fields above).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from shared.artifact.format import SIZE_CAP
from shared.errors import PgolfError


@dataclass(frozen=True)
class Profile:
    name: str
    val_tokens: int | None
    tokenizer_sha256: str | None
    val_sha256: str | None
    hardware: str
    min_seeds: int
    train_seconds: float
    eval_seconds: float
    size_cap: int = SIZE_CAP
    val_tokens_slack: int = 2048


# The challenge's 10-minute track (README "Submitting a record"); the data sums are not known here.
OFFICIAL = Profile(name="10min_16mb", val_tokens=None, tokenizer_sha256=None, val_sha256=None,
                   hardware=r"^8\s*x\s*.*H100", min_seeds=3, train_seconds=600.0, eval_seconds=600.0)

_TYPES = {"name": str, "val_tokens": int, "tokenizer_sha256": str, "val_sha256": str, "hardware": str,
          "min_seeds": int, "train_seconds": float, "eval_seconds": float, "size_cap": int, "val_tokens_slack": int}
REQUIRED = ("val_tokens", "tokenizer_sha256", "val_sha256", "hardware", "min_seeds", "train_seconds", "eval_seconds")


def profile_from_dict(data: dict, source: str = "profile") -> Profile:
    """A profile from JSON: every REQUIRED field present and of its type; unknown fields are errors."""
    if not isinstance(data, dict):
        raise PgolfError(f"{source}: expected a JSON object with the fields {', '.join(REQUIRED)}")
    known = {f.name for f in fields(Profile)}
    if extra := sorted(set(data) - known):
        raise PgolfError(f"{source}: unknown field {extra[0]!r} (fields: {', '.join(sorted(known))})")
    for key in REQUIRED:
        if data.get(key) is None:
            raise PgolfError(f"{source}: no {key!r}: a profile names every figure a record must show")
    out = {"name": Path(source).stem}
    for key, value in data.items():
        want = _TYPES[key]
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
        if isinstance(value, bool) or not ok or (want is float and not math.isfinite(value)):
            raise PgolfError(f"{source}: {key} must be {want.__name__}, got {value!r}")
        out[key] = float(value) if want is float else value
    return Profile(**out)


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PgolfError(f"--profile {path} not found: pass a JSON profile (shared/record/profile.py)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PgolfError(f"--profile {path}: unreadable JSON ({e})") from None
    return profile_from_dict(data, str(path))
