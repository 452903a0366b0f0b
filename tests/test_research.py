"""The research loop: `pgolf sweep` (resumable), `pgolf ablate`, `pgolf compare`, `pgolf plot`."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from shared.cli import main
from shared.core.config import Config, to_toml
from shared.research.runs import Group, Run, render, rows, verdict
from tests.conftest import tiny_config

pytest.importorskip("torch")


def _cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def tiny_toml(tiny_data, tmp_path_factory) -> Path:
    cfg = tiny_config(iterations=3, checkpoint_every=0)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)))
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(to_toml(cfg))
    return path


def _sweep_args(toml: Path, out: Path) -> list[str]:
    return ["sweep", "--backend", "torch", "--config", str(toml), "--grid", "model.mlp_mult=2,3",
            "--grid", "optim.beta2=0.95,0.99", "--seeds", "1337,1", "--steps", "3", "--out", str(out)]


@pytest.fixture(scope="module")
def sweep_dir(tiny_toml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert _cli(_sweep_args(tiny_toml, out)) == 0
    return out


@pytest.mark.slow
def test_sweep_writes_one_row_per_run_and_a_verdict_per_point(sweep_dir):
    with open(sweep_dir / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8
    assert {(r["point"], r["seed"]) for r in table} == {
        (p, s) for p in ("p00-mlp_mult=2-beta2=0.95", "p01-mlp_mult=2-beta2=0.99", "p02-mlp_mult=3-beta2=0.95",
                         "p03-mlp_mult=3-beta2=0.99") for s in ("1337", "1")}
    assert all(int(r["steps"]) == 3 and float(r["q_val_bpb"]) > 0 and int(r["total_bytes"]) > 0 for r in table)
    lines = (sweep_dir / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["q_val_bpb"] for x in lines] == [float(r["q_val_bpb"]) for r in table]
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["budget"].startswith("budget: equal steps (3 steps")
    assert [r["n"] for r in summary["rows"]] == [2, 2, 2, 2]
    assert summary["rows"][0]["verdict"] == "reference"
    for r in summary["rows"][1:]:
        assert 0.0 <= r["p_better"] <= 1.0 and abs(r["p_better"] + r["p_worse"] - 1.0) < 1e-9
        assert set(r["config"]) == {"model.mlp_mult", "optim.beta2"}
    # a wider MLP has more bytes than the base
    assert summary["rows"][2]["total_bytes_max"] > summary["rows"][0]["total_bytes_max"]


@pytest.mark.slow
def test_sweep_rerun_finishes_only_the_missing_runs(sweep_dir, tiny_toml, tmp_path, capsys):
    out = tmp_path / "s"
    shutil.copytree(sweep_dir, out)
    # three runs interrupted: one killed after its last checkpoint (no summary yet: it resumes), one killed
    # before any checkpoint (it starts over), one never started
    p03 = out / "p03-mlp_mult=3-beta2=0.99" / "seed1"
    score = json.loads((p03 / "summary.json").read_text())["q_val_bpb"]
    (p03 / "summary.json").unlink()
    p02 = out / "p02-mlp_mult=3-beta2=0.95" / "seed1"
    for name in ("summary.json", "train_state.safetensors", "checkpoint.safetensors", "model.pgz"):
        (p02 / name).unlink(missing_ok=True)
    shutil.rmtree(out / "p01-mlp_mult=2-beta2=0.99" / "seed1337")
    kept = {p: p.stat().st_mtime_ns for p in out.glob("p*/seed*/summary.json")}
    assert len(kept) == 5
    capsys.readouterr()
    assert _cli(_sweep_args(tiny_toml, out)) == 0
    err = capsys.readouterr().err
    assert "8 runs; 5 finished, 3 to run" in err
    assert "[3/8] running p01" in err and "[6/8] restarting p02" in err and "[8/8] resuming p03" in err
    assert "ETA" in err and "best so far" in err
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert json.loads((p03 / "summary.json").read_text())["q_val_bpb"] == score
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 8
    # a third run has nothing left to do
    assert _cli(_sweep_args(tiny_toml, out)) == 0
    assert "8 finished, 0 to run" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_refuses_a_folder_holding_another_sweep(sweep_dir, tiny_toml, tmp_path, capsys):
    out = tmp_path / "s"
    shutil.copytree(sweep_dir, out)
    args = _sweep_args(tiny_toml, out)
    args[args.index("--steps") + 1] = "4"
    assert _cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "sweep.json" in err and "budget" in err and "\n" not in err


@pytest.mark.parametrize("bad, words", [
    (["--grid", "model.mlp_mult=2,3"], "--steps"),                                # no budget
    (["--grid", "model.mlp_mult=2,3", "--steps", "2", "--max-seconds", "5"], "exactly one"),
    (["--grid", "mlp_mult=2,3", "--steps", "2"], "section.key"),
    (["--grid", "model.nope=2,3", "--steps", "2"], "nope"),
    (["--grid", "train.seed=1,2", "--steps", "2"], "--seeds"),
])
def test_sweep_bad_input_is_one_line(bad, words, tiny_toml, tmp_path, capsys):
    assert _cli(["sweep", "--config", str(tiny_toml), "--out", str(tmp_path / "x"), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err
    assert not (tmp_path / "x" / "sweep.json").exists()


@pytest.mark.slow
def test_compare_runs_and_sweeps(sweep_dir, capsys):
    a, b = sweep_dir / "p00-mlp_mult=2-beta2=0.95", sweep_dir / "p02-mlp_mult=3-beta2=0.95"
    capsys.readouterr()
    assert _cli(["compare", str(a / "seed1337"), str(a / "seed1"), str(b / "seed1337"), str(b / "seed1"),
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in got["rows"]] == [2, 2]          # seeds of one config are grouped
    assert [r["config"] for r in got["rows"]] == [{"model.mlp_mult": 2.0}, {"model.mlp_mult": 3.0}]
    assert got["rows"][1]["verdict"] in ("better", "worse", "no clear difference")
    assert _cli(["compare", str(sweep_dir)]) == 0
    text = capsys.readouterr().out
    assert text.count("| p0") == 4 and "equal steps" in text
    assert _cli(["compare", str(sweep_dir / "nothing")]) == 2


def _group(label: str, scores: list[float], tok_s: list[float] | None = None, **cfg) -> Group:  # cfg: train=
    tok_s = tok_s or [1.0] * len(scores)
    runs = [Run(Path(f"{label}/{i}"), {"q_val_bpb": s, "val_bpb": s, "total_bytes": 100, "steps": 10,
                                       "tokens_per_second": t, "train_seconds": 1.0},
                replace(Config(), train=replace(cfg.get("train", Config().train), seed=i)))
            for i, (s, t) in enumerate(zip(scores, tok_s, strict=True))]
    return Group(label, runs)


def test_budget_line_says_equal_steps_or_wallclock_and_warns_of_load():
    from shared.research.runs import budget_line

    steps = replace(Config().train, max_seconds=0.0, iterations=50)
    assert budget_line([_group("a", [2.0, 2.1], train=steps)]) == "budget: equal steps (50 steps per run, no wallclock cap)"
    steady = budget_line([_group("a", [2.0, 2.1], [100.0, 110.0])])
    assert steady.startswith("budget: equal wallclock (600 s") and "WARNING" not in steady
    loaded = budget_line([_group("a", [2.0, 2.1], [100.0, 110.0]), _group("b", [2.0, 2.1], [100.0, 250.0])])
    assert "WARNING: the seeds of b ran 2.5x apart" in loaded
    mixed = budget_line([_group("a", [2.0]), _group("b", [2.0], train=steps)])
    assert mixed.startswith("budget: MIXED")


def test_verdict_follows_the_seeds():
    ref = _group("a", [2.00, 2.01, 1.99])
    assert verdict(ref, _group("b", [1.90, 1.91, 1.89]))["verdict"] == "better"
    assert verdict(ref, _group("c", [2.10, 2.11, 2.09]))["verdict"] == "worse"
    assert verdict(ref, _group("d", [1.98, 2.03, 2.00]))["verdict"] == "no clear difference"
    assert verdict(ref, _group("e", [1.5]))["verdict"] == "needs 2+ seeds on both sides"
    table = rows([ref, _group("b", [1.90, 1.91])])
    assert table[1]["delta"] == pytest.approx(1.905 - 2.0)
    assert "| b | (same) | 0,1 | 1.9050 |" in render(table, "budget: x")


def test_ablation_points_turn_each_key_back_to_the_baseline():
    from shared.errors import PgolfError
    from shared.research.ablate import ablation_points

    pts = ablation_points("configs/small-record.toml", ["smear_gate", "optim.muon_row_norm", "weight_decay"], [])
    assert [(p.name, p.sets) for p in pts] == [
        ("base", []), ("off-smear_gate", ["model.smear_gate=false"]),
        ("off-muon_row_norm", ["optim.muon_row_norm=false"]),
        ("off-weight_decay", ["optim.muon_wd=0.0", "optim.embed_wd=0.0", "optim.scalar_wd=0.0"])]
    every = {p.name for p in ablation_points("configs/small-record.toml", None, [])}
    assert {"off-smear_gate", "off-xsa_last_n", "off-ema_decay"} <= every
    assert not {"off-model_dim", "off-iterations", "off-dir"} & every    # size, budget and data are not techniques
    with pytest.raises(PgolfError, match="baseline's value"):
        ablation_points("configs/small-record.toml", ["model.attn_gate"], [])  # small-record leaves it off
    with pytest.raises(PgolfError, match="no such key"):
        ablation_points("configs/small-record.toml", ["nope"], [])


@pytest.mark.slow
def test_ablate_runs_base_and_each_key(tiny_toml, tmp_path, capsys):
    out = tmp_path / "a"
    assert _cli(["ablate", "--backend", "torch", "--config", str(tiny_toml), "--set", "model.smear_gate=true",
                 "--keys", "smear_gate", "--seeds", "1337", "--steps", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| base |" in text and "| off-smear_gate | model.smear_gate=false |" in text and "equal steps" in text
    assert json.loads((out / "sweep.json").read_text())["kind"] == "ablate"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.slow
def test_plot_writes_a_png_of_every_run(sweep_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from shared.research.plot import class_bytes, curves

    out = tmp_path / "curves.png"
    assert _cli(["plot", str(sweep_dir), "-o", str(out)]) == 0
    assert "(8 runs)" in capsys.readouterr().out
    assert _png_size(out) == (1200, 680)
    run = sweep_dir / "p00-mlp_mult=2-beta2=0.95" / "seed1337"
    c = curves(run)
    assert [p[0] for p in c["train_loss"]] == [1.0, 2.0, 3.0] and c["val_bpb"][-1][0] == 3.0
    per_class = class_bytes(run)
    assert {"embed", "attn", "mlp"} <= set(per_class) and all(v > 0 for v in per_class.values())
    wide = class_bytes(sweep_dir / "p02-mlp_mult=3-beta2=0.95" / "seed1337")
    assert wide["mlp"] > per_class["mlp"] and wide["embed"] == pytest.approx(per_class["embed"], rel=0.2)


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert _cli(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "[plot]" in err and "\n" not in err


@pytest.mark.slow
def test_sweep_over_two_corpora_says_where_a_result_holds(tiny_toml, tiny_data, tmp_path, capsys):
    other = tmp_path / "other_corpus"
    shutil.copytree(tiny_data.data_dir, other)
    out = tmp_path / "c"
    args = ["sweep", "--backend", "torch", "--config", str(tiny_toml), "--grid", "model.mlp_mult=2,3",
            "--seeds", "1337,1", "--steps", "2", "--out", str(out),
            "--data", str(tiny_data.data_dir), "--tokenizer", str(tiny_data.tokenizer),
            "--data", str(other), "--tokenizer", str(tiny_data.tokenizer)]
    assert _cli(args) == 0
    text = capsys.readouterr().out
    names = [tiny_data.data_dir.name, "other_corpus"]
    assert all(f"corpus {n} (" in text for n in names) and "where it holds" in text
    summary = json.loads((out / "corpora.json").read_text())
    assert [c["name"] for c in summary["corpora"]] == names
    assert [r["holds"] for r in summary["cross"]][0] == "reference"
    # the same text under two names: every figure, hence every verdict, agrees
    assert summary["cross"][1]["holds"].startswith("same on all 2 corpora: ")
    a, b = (summary["cross"][1]["corpora"][n] for n in names)
    assert a["q_val_bpb_mean"] == b["q_val_bpb_mean"]
    assert all(len(list(csv.DictReader(open(out / n / "results.csv")))) == 4 for n in names)
    assert _cli(["compare", str(out)]) == 2 and "one corpus at a time" in capsys.readouterr().err
    assert _cli(args) == 0 and "4 finished, 0 to run" in capsys.readouterr().err


def test_corpora_need_one_tokenizer_each(tiny_toml, tiny_data, tmp_path, capsys):
    assert _cli(["sweep", "--config", str(tiny_toml), "--grid", "model.mlp_mult=2,3", "--steps", "2",
                 "--out", str(tmp_path / "c"), "--data", str(tiny_data.data_dir), "--data", str(tiny_data.data_dir),
                 "--tokenizer", str(tiny_data.tokenizer)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 2 --data but 1 --tokenizer") and "\n" not in err
