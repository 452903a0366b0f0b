"""`pgolf gpu-check`: its CPU dry run end to end, and the pieces a GPU run relies on (FLOP counts,
the GPU peak table, the reference script's log parser and subprocess, failing checks that fail)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.cli import main
from shared.core.config import load_config
from shared.errors import PgolfError

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
gc = pytest.importorskip("cuda_train.gpu_check")

REPO = Path(__file__).resolve().parents[1]

# The record stack on 4 layers (layer 1 run 3 times, lanes from 3, XSA everywhere): every option, small.
TINY_RECORD = ["model.vocab_size=512", "model.num_layers=4", "model.loop_start=1", "model.loop_end=1",
               "model.parallel_from=3", "model.xsa_last_n=4"]


def write_config(path: Path, src: str, sets: list[str], tiny) -> Path:
    cfg = load_config(REPO / "configs" / src, sets)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny.data_dir), tokenizer=str(tiny.tokenizer)))
    from shared.core.config import to_toml

    path.write_text(to_toml(cfg))
    return path


def run_cli(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.slow
def test_dry_run_checks_everything_on_tiny_shapes(tiny_data, tmp_path, capsys):
    cfg = write_config(tmp_path / "rec.toml", "record.toml", TINY_RECORD, tiny_data)
    ref = tmp_path / "train_gpt.py"
    ref.write_text("raise SystemExit('must not run in a dry run')\n")
    out = tmp_path / "report.json"
    code = run_cli(["gpu-check", "--config", str(cfg), "--seconds", "0.2", "--reference", str(ref),
                    "--json", str(out), "--sample-dir", str(tmp_path / "sample")])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err[-3000:]
    rep = json.loads(out.read_text())
    assert rep["dry_run"] is True and rep["ok"] is True and rep["targets"] is None
    env = rep["environment"]
    assert env["gpu_name"] is None and env["torch"] == torch.__version__
    # The attention op was read off the profiler, and forcing the math backend always works.
    assert env["attention"]["sdpa_used"] and set(env["attention"]["sdpa_used"]) <= set(gc.SDPA_OPS.values())
    assert env["attention"]["sdpa_forced"]["math"] == "ok"
    e = rep["configs"]["rec"]
    assert e["data"]["built"] is False and e["data"]["dir"] == str(tiny_data.data_dir)
    c = e["correctness"]
    assert c["dtype"] == "bfloat16" and c["forward"]["rel_diff"] > 0  # bf16 vs fp32: close, not equal
    assert c["step"]["device_loss_after"] < c["step"]["device_loss"]  # the step learned
    sp = e["speed"]
    assert set(sp["orders"]) == {"plain", "looped"} and sp["timed_order"] == "looped"
    assert sp["orders"]["looped"]["flops_per_token"]["layer_applications"] == 6  # 4 layers, layer 1 runs 3 times
    assert sp["ms_per_step_median"] > 0 and sp["tokens_per_second"] > 0 and sp["mfu"] is None
    assert sp["micro_batches"] == 2 and sp["tokens_per_step"] == 256
    assert e["size"]["total_bytes"] == e["size"]["artifact_bytes"] + e["size"]["code_bytes"]
    plan = e["plan"]   # the planner's figures beside the measured ones (docs/PLAN.md)
    assert plan["hardware"] == "cpu" and set(plan["orders"]) == {"plain", "looped"}
    assert plan["orders"]["looped"]["ms_per_step_measured"] == sp["orders"]["looped"]["ms_per_step_median"]
    assert plan["orders"]["looped"]["ms_per_step_predicted"] > plan["orders"]["plain"]["ms_per_step_predicted"] > 0
    assert e["reference"] == {"skipped": "dry run: train_gpt.py needs CUDA"}
    assert rep["resume"]["steps"] == [4, 4] and rep["resume"]["ok"]
    assert rep["resume"]["bitwise_identical"] and rep["resume"]["run_to_run_rel_diff"] == 0.0  # the CPU is deterministic
    assert rep["artifact"]["identical"] and rep["artifact"]["sha256_device"] == rep["artifact"]["sha256_cpu_export"]
    assert set(rep["checks"]) == {"rec.forward", "rec.step", "rec.compiled", "rec.update_cosine", "resume", "artifact"}
    assert "ok   rec.forward" in printed.out


@pytest.mark.slow
def test_a_broken_device_path_fails_the_correctness_check(tiny_data, monkeypatch):
    """A device model that differs from the CPU's (another RoPE base) must fail forward and step."""
    cfg = gc.shrink(load_config(REPO / "configs" / "baseline.toml", ["model.vocab_size=512", "model.num_layers=2"]))
    x = np.random.default_rng(0).integers(0, 512, (2, cfg.train.seq_len))
    batch = (x, np.roll(x, -1, axis=1))
    good = gc.correctness(cfg, batch, torch.device("cpu"), torch.bfloat16)
    assert good["forward"]["ok"] and good["step"]["ok"], good
    real = gc._session

    def skewed(c, dev, dt, compile_):
        if dt == torch.bfloat16:
            c = replace(c, model=replace(c.model, rope_base=10.0, logit_softcap=3.0))
        return real(c, dev, dt, compile_)

    monkeypatch.setattr(gc, "_session", skewed)
    bad = gc.correctness(cfg, batch, torch.device("cpu"), torch.bfloat16)
    assert not bad["forward"]["ok"] and not bad["step"]["ok"]


def test_flops_per_token_of_the_baseline_and_the_record():
    base = load_config(REPO / "configs" / "baseline.toml")
    f = gc.flops_per_token(base, looped=False)
    per_layer = 512 * 512 * 2 + 2 * 512 * 256 + 2 * 512 * 1024  # q, out; k, v; MLP up, down
    assert f["matmul_params"] == 9 * per_layer + 1024 * 512       # + the tied head
    assert f["attention"] == 6 * 9 * 1024 * 512
    assert f["total"] == 6 * f["matmul_params"] + f["attention"]
    rec = load_config(REPO / "configs" / "record.toml")
    plain, looped = gc.flops_per_token(rec, looped=False), gc.flops_per_token(rec, looped=True)
    assert (plain["layer_applications"], looped["layer_applications"]) == (11, 17)
    per_layer = 512 * 512 * 2 + 2 * 512 * 256 + 2 * 512 * 2048 + 8 * 12  # + the attention gate
    assert looped["matmul_params"] == 17 * per_layer + 8192 * 512 + 12  # + head, SmearGate
    assert looped["attention"] == 6 * 17 * 2048 * 512


@pytest.mark.parametrize(("name", "tflops"), [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H200", 989.4),
                                               ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
                                               ("NVIDIA A100-SXM4-80GB", 312.0), ("Some Future GPU", None),
                                               (None, None)])
def test_peak_table(name, tflops):
    peak, source = gc.peak_tflops(name)
    assert peak == tflops
    assert (f"{tflops:g} TFLOP/s" in source) if tflops else ("MFU not computed" in source or "not in the table" in source)


REF_LOG = """val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=x.model
warmup_step:1/3
step:1/1000000 train_loss:6.9400 train_time:500ms step_avg:500.00ms
step:2/1000000 train_loss:6.9000 train_time:860ms step_avg:430.00ms
step:3/1000000 train_loss:6.8000 train_time:1220ms step_avg:406.67ms
step:4/1000000 train_loss:6.7000 train_time:1582ms step_avg:395.50ms
step:5/1000000 train_loss:6.6000 train_time:1940ms step_avg:388.00ms
step:5/1000000 val_loss:6.5 val_bpb:3.1 train_time:1940ms step_avg:388.00ms
"""


def test_parse_reference_log():
    r = gc.parse_reference_log(REF_LOG)
    assert r["steps"] == 5 and r["step_avg_ms"] == 388.0
    assert r["ms_per_step_median"] == 360.0                 # steps 2->3, 3->4, 4->5: 360, 362, 358
    assert r["ms_per_step_mean_after_skip"] == pytest.approx((1940 - 860) / 3)
    assert (r["first_loss"], r["last_loss"]) == (6.94, 6.6)
    with pytest.raises(PgolfError, match="fewer than two"):
        gc.parse_reference_log("Traceback (most recent call last):\n")


def test_reference_runs_as_a_subprocess_with_the_configs_shape(tmp_path):
    """A stand-in script that logs like train_gpt.py from the environment pgolf gives it."""
    script = tmp_path / "fake_train_gpt.py"
    script.write_text(
        "import os, pathlib\n"
        "tok = int(os.environ['TRAIN_BATCH_TOKENS']); seq = int(os.environ['TRAIN_SEQ_LEN'])\n"
        "assert 'RANK' not in os.environ and pathlib.Path(os.environ['DATA_PATH']).name == 'd'\n"
        "for s in range(1, 6):\n"
        "    print(f'step:{s}/9 train_loss:{7 - s / 10:.4f} train_time:{s * (tok // seq)}ms step_avg:{tok // seq:.2f}ms')\n")
    cfg = load_config(REPO / "configs" / "baseline.toml")
    assert gc.reference_supports(cfg) is None
    assert "record stack" in gc.reference_supports(load_config(REPO / "configs" / "record.toml"))
    r = gc.run_reference(script, cfg, tmp_path / "d", tmp_path / "t.model", 3.0, tmp_path, timeout_s=60,
                         log=lambda s: None)
    assert r["returncode"] == 0, r["log_tail"]
    assert r["ms_per_step_median"] == 512.0  # 524288 / 1024 from the environment
    assert r["env"]["TRAIN_BATCH_TOKENS"] == "524288" and r["env"]["MAX_WALLCLOCK_SECONDS"] == "3"


def test_shrink_keeps_every_option():
    rec = load_config(REPO / "configs" / "record.toml")
    tiny = gc.shrink(rec)
    assert tiny.model.model_dim == 64 and tiny.train.seq_len == 64 and not tiny.train.compile
    for key in ("num_layers", "activation", "ln_scale", "xsa_last_n", "skip_gates", "num_loops", "parallel_from",
                "smear_gate", "attn_gate", "ortho_init", "vocab_size"):
        assert getattr(tiny.model, key) == getattr(rec.model, key), key


@pytest.mark.parametrize(("argv", "message"), [
    (["--config", "nope.toml"], "--config nope.toml: no such file"),
    (["--seconds", "0"], "--seconds must be in (0, 3600]"),
    (["--reference", "missing_train_gpt.py"], "--reference missing_train_gpt.py: no such file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert run_cli(["gpu-check", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_an_existing_report_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("{}")
    assert run_cli(["gpu-check", "--config", str(REPO / "configs" / "baseline.toml"), "--json", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "{}"


def test_the_device_script_is_valid_bash():
    import subprocess

    script = REPO / "benchmarks" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "gpu-check" in text and "--json" in text and 'carry=[".whl", "data/sample"]' in text
    for probe in ("benchmarks.pod_env", "device_probe ttt", "device_probe pack", "configs/record.toml"):
        assert probe in text, probe


def test_gpu_check_help_loads_no_framework():
    from tests.test_boundaries import FRAMEWORKS, _loaded_after

    code = ("from shared.cli import main\n"
            "try:\n"
            "    main(['gpu-check', '--help'])\n"
            "except SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\n")
    assert _loaded_after(code) == {f: False for f in FRAMEWORKS}
