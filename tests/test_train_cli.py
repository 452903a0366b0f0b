"""`pgolf train` / `pgolf eval` through the CLI (MLX backend): outputs, resume, one-line errors."""

from __future__ import annotations

import json

import pytest

from shared.cli import main
from shared.core.config import to_toml
from tests.conftest import tiny_config

pytestmark = pytest.mark.mlx
pytest.importorskip("mlx.core")


def run_cli(args, capsys):
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def tiny_toml(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(tiny_config(iterations=3)))
    return path


def test_train_then_eval_artifact_and_checkpoint(tiny_data, tiny_toml, tmp_path, capsys):
    run = tmp_path / "run"
    data = ["--data", str(tiny_data.data_dir), "--tokenizer", str(tiny_data.tokenizer)]
    code, out, err = run_cli(["train", "--backend", "mlx", "--config", str(tiny_toml), *data, "--out", str(run),
                              "--set", "train.iterations=4"], capsys)
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["backend"] == "mlx"
    assert "done: val_bpb" in out
    assert "plan (cpu, pgolf profile): ~" in out   # the plan's one-line summary before training

    code, out, err = run_cli(["eval", "--backend", "mlx", str(run / "model.pgz"), *data, "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["val_bpb"] == pytest.approx(summary["q_val_bpb"], rel=1e-6)
    assert res["tokens"] == summary["eval_tokens"] and res["bytes"] > 0

    # Inside its run directory an artifact finds its data through the run's config.toml; a copy
    # elsewhere has no data paths and says which flags to pass.
    code, out, err = run_cli(["eval", "--backend", "mlx", str(run / "model.pgz"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["val_bpb"] == pytest.approx(summary["q_val_bpb"], rel=1e-6)
    (tmp_path / "copy.pgz").write_bytes((run / "model.pgz").read_bytes())
    code, _, err = run_cli(["eval", "--backend", "mlx", str(tmp_path / "copy.pgz")], capsys)
    assert code == 2 and "pass --data DIR --tokenizer MODEL" in err and len(err.strip().splitlines()) == 1

    code, out, err = run_cli(["eval", "--backend", "mlx", str(run / "checkpoint.safetensors"), *data], capsys)
    assert code == 0, err
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert float(lines["val_bpb"]) == pytest.approx(summary["val_bpb"], rel=1e-6)
    assert set(lines) == {"val_loss", "val_bpb", "tokens", "bytes"}


def test_resume_continues_with_more_steps(tiny_data, tiny_toml, tmp_path, capsys):
    run = tmp_path / "run"
    data = ["--data", str(tiny_data.data_dir), "--tokenizer", str(tiny_data.tokenizer)]
    assert run_cli(["train", "--config", str(tiny_toml), *data, "--out", str(run)], capsys)[0] == 0
    code, _, err = run_cli(["train", "--resume", str(run), *data, "--set", "train.iterations=5"], capsys)
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 5


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "train.iterations=oops"], "train.iterations"),
        (["--set", "model.nope=1"], "model.nope"),
        (["--nproc", "2"], "--nproc 2"),
        (["--data", "/nonexistent/pgolf-data"], "/nonexistent/pgolf-data"),
    ],
)
def test_bad_input_is_one_line_error(tiny_data, tiny_toml, tmp_path, capsys, args, needle):
    base = ["train", "--backend", "mlx", "--config", str(tiny_toml), "--data", str(tiny_data.data_dir),
            "--tokenizer", str(tiny_data.tokenizer), "--out", str(tmp_path / "run")]
    code, _, err = run_cli([*base, *args], capsys)
    assert code == 2
    assert err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1


def test_resume_without_run_dir_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(["train", "--resume", str(tmp_path / "missing")], capsys)
    assert code == 2 and "config.toml" in err
