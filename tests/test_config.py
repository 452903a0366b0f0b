"""The config tree: strict TOML, nearest-key hints, typed overrides, cross-field checks, round trip."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from shared.core.config import (
    Config,
    apply_overrides,
    from_toml_text,
    load_config,
    parse_override,
    to_dict,
    to_toml,
)
from shared.errors import PgolfError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_baseline():
    cfg = load_config()
    assert (cfg.model.num_layers, cfg.model.model_dim, cfg.model.vocab_size) == (9, 512, 1024)
    assert cfg.train.batch_tokens == 524288 and cfg.optim.matrix_lr == 0.04
    with pytest.raises(FrozenInstanceError):
        cfg.model.num_layers = 3  # type: ignore[misc]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    assert from_toml_text(to_toml(cfg)) == cfg


def test_round_trip_of_every_value_type(tmp_path):
    cfg = load_config(overrides=["train.max_seconds=1.5", "train.compile=false",
                                 'data.dir="we\\"ird\\\\path"', "model.num_layers=3"])
    text = to_toml(cfg)
    again = load_config(_write(tmp_path, text))
    assert again == cfg and to_dict(again) == to_dict(cfg)
    assert again.data.dir == 'we"ird\\path'


def test_unknown_key_names_the_nearest(tmp_path):
    with pytest.raises(PgolfError, match=r"unknown config key 'quant.foo' \(valid: attn, attn_clip_k, awq_bits, awq_group_size, awq_groups, budget_measure, "):
        apply_overrides(Config(), ["quant.foo=1"])
    with pytest.raises(PgolfError, match=r"unknown config key 'model.num_layer' \(did you mean 'num_layers'\?\)"):
        load_config(_write(tmp_path, "[model]\nnum_layer = 3\n"))
    with pytest.raises(PgolfError, match=r"unknown config section 'optimizer' \(did you mean 'optim'\?\)"):
        load_config(_write(tmp_path, "[optimizer]\nmatrix_lr = 0.1\n"))
    with pytest.raises(PgolfError, match=r"--set: unknown config key 'train.lr'"):
        load_config(overrides=["train.lr=0.1"])
    with pytest.raises(PgolfError, match="must be a \\[section\\] table"):
        load_config(_write(tmp_path, "seed = 3\n"))


@pytest.mark.parametrize("text,words", [
    ("[model]\nnum_layers = 2.5\n", "model.num_layers must be int, got float 2.5"),
    ("[model]\nnum_layers = true\n", "model.num_layers must be int, got bool"),
    ("[train]\ncompile = 1\n", "train.compile must be bool, got int"),
    ('[train]\nmax_seconds = "10"\n', "train.max_seconds must be float, got str"),
    ("[data]\ndir = 3\n", "data.dir must be str, got int"),
])
def test_wrong_types(tmp_path, text, words):
    with pytest.raises(PgolfError) as e:
        load_config(_write(tmp_path, text))
    assert words in str(e.value) and str(tmp_path / "c.toml") in str(e.value)


def test_int_is_accepted_for_float():
    assert load_config(overrides=["optim.matrix_lr=1"]).optim.matrix_lr == 1.0
    assert isinstance(load_config(overrides=["optim.matrix_lr=1"]).optim.matrix_lr, float)


def test_malformed_toml_and_missing_file(tmp_path):
    path = _write(tmp_path, "[train\niterations = 3\n")
    with pytest.raises(PgolfError, match="malformed TOML") as e:
        load_config(path)
    assert "\n" not in str(e.value)
    with pytest.raises(PgolfError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_overrides_apply_after_the_file_in_order(tmp_path):
    path = _write(tmp_path, "[train]\niterations = 10\nseq_len = 128\nbatch_tokens = 1024\ngrad_accum = 1\n")
    cfg = load_config(path, ["train.iterations=20", "train.iterations=30", "train.compute_dtype=bfloat16"])
    assert cfg.train.iterations == 30 and cfg.train.seq_len == 128
    assert cfg.train.compute_dtype == "bfloat16"  # a bare word is taken as a string
    assert parse_override("data.dir = data/x") == ("data", "dir", "data/x")
    with pytest.raises(PgolfError, match="expected section.key=value"):
        load_config(overrides=["iterations=3"])
    with pytest.raises(PgolfError, match="train.iterations must be int"):
        load_config(overrides=["train.iterations=many"])


def test_cross_field_checks():
    with pytest.raises(PgolfError, match="model.model_dim=100 must be divisible by model.num_heads=8"):
        load_config(overrides=["model.model_dim=100"])
    with pytest.raises(PgolfError, match="train.batch_tokens"):
        load_config(overrides=["train.batch_tokens=1000"])
    with pytest.raises(PgolfError, match="train.compute_dtype"):
        load_config(overrides=["train.compute_dtype=float16"])
    with pytest.raises(PgolfError, match="uint16"):
        load_config(overrides=["model.vocab_size=70000"])


def test_sections_are_separate_subtrees():
    cfg = Config()
    assert set(to_dict(cfg)) == {"model", "train", "optim", "data", "quant", "eval"}


def test_fused_kernels_key_is_checked():
    cfg = load_config()
    assert cfg.train.fused_kernels == "off"  # the default: eager everywhere, the numbers unchanged
    assert apply_overrides(cfg, ["train.fused_kernels=auto"]).train.fused_kernels == "auto"
    with pytest.raises(PgolfError, match="train.fused_kernels must be auto or off, got 'on'"):
        apply_overrides(cfg, ["train.fused_kernels=on"])
