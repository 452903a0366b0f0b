"""Ablation points: each technique of a config turned back to the baseline's value, one at a time.

A technique is a config key (`smear_gate`, `optim.muon_row_norm`: its baseline value is configs/baseline.toml's,
or the dataclass default where baseline.toml does not set it) or a named group of keys (`NAMED` below: a
technique spread over several keys, e.g. weight decay). `--all` takes every key where the config differs
from the baseline, except the model's size, the run's budget and shape, data and evaluation settings.
"""

from __future__ import annotations

from pathlib import Path

from shared.core.config import Config, load_config, to_dict
from shared.errors import PgolfError
from shared.research.sweep import Point

BASELINE = Path(__file__).resolve().parents[2] / "configs" / "baseline.toml"

# configs/small-record.toml leaves these at the baseline's value (they cost BPB at 2 x 192, BENCHMARKS.md); the
# benchmark's base turns them on, as configs/record.toml has them, so that every row changes something
ALL_ON = ["model.rope_dims=48", "model.qk_gain_init=5.0", "model.attn_gate=true", "optim.muon_ns=polar_express"]

# technique -> the overrides that turn it off (back to configs/small.toml's value), and the record it comes from
NAMED: dict[str, tuple[list[str], str]] = {
    "leaky_relu2": (["model.activation=relu2"], "#1855"),
    "partial_rope": (["model.rope_dims=0"], "#1855"),
    "qk_gain_5": (["model.qk_gain_init=1.5"], "#1855"),
    "ln_scale": (["model.ln_scale=false"], "#1855"),
    "xsa": (["model.xsa_last_n=0"], "#1855"),
    "skip_gates": (["model.skip_gates=false"], "#1855"),
    "smear_gate": (["model.smear_gate=false"], "#1855"),
    "attn_gate": (["model.attn_gate=false"], "#1855"),
    "ortho_init": (["model.ortho_init=false"], "#1855"),
    "ema": (["train.ema_decay=0.0"], "#1855"),
    "warmdown_frac": (["train.warmdown_frac=0.0", "train.min_lr=0.0", "train.warmdown_iters=60"], "#1855"),
    "weight_decay": (["optim.muon_wd=0.0", "optim.embed_wd=0.0", "optim.scalar_wd=0.0"], "#1855"),
    "muon_eq_r": (["optim.muon_row_norm=false"], "#1855"),
    "polar_express": (["optim.muon_ns=quintic"], "#1855"),
    "grad_clip": (["optim.grad_clip_norm=0.0"], "#1855"),
    "beta2_0.99": (["optim.beta2=0.95"], "#1855"),
    # two at once: the pair that cost most at this size in the first table (BENCHMARKS.md)
    "partial_rope+qk_gain_5": (["model.rope_dims=0", "model.qk_gain_init=1.5"], "#1855"),
}

# not techniques: the model's size, the run's budget and shape, bookkeeping
NOT_TECHNIQUES = {
    "model.vocab_size", "model.num_layers", "model.model_dim", "model.num_heads", "model.num_kv_heads",
    "model.mlp_mult", "train.iterations", "train.max_seconds", "train.batch_tokens", "train.seq_len",
    "train.grad_accum", "train.seed", "train.val_every", "train.log_every", "train.checkpoint_every",
    "train.compile", "train.compute_dtype", "train.calib_reserve_s",
}
SKIP_SECTIONS = {"data", "eval"}


def baseline() -> Config:
    return load_config(BASELINE) if BASELINE.is_file() else Config()


def _flat(cfg: Config) -> dict[str, object]:
    return {f"{s}.{k}": v for s, t in to_dict(cfg).items() for k, v in t.items()}


def _toml(v: object) -> str:
    from shared.core.config import _toml_value  # noqa: PLC2701 - the one TOML spelling of a value

    return _toml_value(v)


def resolve_key(name: str, keys: list[str]) -> str:
    """`smear_gate` -> `model.smear_gate`; a dotted key is taken as it is."""
    if "." in name:
        if name not in keys:
            raise PgolfError(f"--keys {name}: no such config key (section.key, e.g. model.smear_gate)")
        return name
    hits = [k for k in keys if k.split(".", 1)[1] == name]
    if len(hits) != 1:
        why = f"in several sections ({', '.join(hits)}): write section.key" if hits else "no such key or named technique"
        raise PgolfError(f"--keys {name}: {why} (named techniques: {', '.join(NAMED)})")
    return hits[0]


def ablation_points(config_path: str, names: list[str] | None, sets: list[str]) -> list[Point]:
    """The base (the config as it is) and one point per technique turned back to the baseline's value."""
    cfg = _flat(load_config(config_path, sets))
    base = _flat(baseline())
    keys = list(cfg)
    if names is None:
        names = [k for k in keys if cfg[k] != base[k] and k not in NOT_TECHNIQUES and k.split(".")[0] not in SKIP_SECTIONS]
        if not names:
            raise PgolfError(f"{config_path}: no technique differs from the baseline: nothing to ablate")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise PgolfError("--keys: give at least one key, e.g. --keys smear_gate,muon_row_norm")
    points = [Point("base", [])]
    for name in names:
        if name in NAMED:
            overrides = NAMED[name][0]
            after = _flat(load_config(config_path, [*sets, *overrides]))
            if after == cfg:
                raise PgolfError(f"--keys {name}: {config_path} already has {' '.join(overrides)}: nothing to turn off")
        else:
            key = resolve_key(name, keys)
            if cfg[key] == base[key]:
                raise PgolfError(f"--keys {name}: {config_path} already has {key} = {_toml(base[key])}, the "
                                 "baseline's value: nothing to turn off")
            overrides = [f"{key}={_toml(base[key])}"]
            name = key.split(".", 1)[1]
        if any(p.name == f"off-{name}" for p in points):
            raise PgolfError(f"--keys {name}: listed twice")
        points.append(Point(f"off-{name}", overrides))
    return points
