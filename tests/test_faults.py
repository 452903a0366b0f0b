"""Fault injection: nothing hangs, nothing is silently wrong, nothing finished is lost.

One section per fault class of docs/RELIABILITY.md; each test injects a real
fault (an empty shard, a file-size limit, a NaN weight, a second process on
the same run folder, a killed torchrun agent) and checks the outcome a user
sees: one `error: ...` line naming the file or field, exit code 2, no
traceback, and the run folder left as it was. To cover a new fault, add a
case to the parametrised list of its class (or a class of its own, and a row
in docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from shared.artifact.format import pack, pack_quantized, quantize_all
from shared.artifact.quant import QTensor
from shared.cli import main
from shared.core.config import to_toml
from shared.core.spec import init_params
from shared.data.bpb import EvalResult
from shared.data.dataset import open_dataset
from shared.data.shards import TokenStream, read_shard, write_shard
from shared.errors import PgolfError
from shared.files import atomic_write_bytes
from shared.run import rundir
from shared.run.finish import finish_run
from shared.run.rundir import (
    ARTIFACT,
    CHECKPOINT,
    CONFIG,
    SUMMARY,
    TRAIN_STATE,
    RunDir,
    save_checkpoint,
    save_train_state,
)
from tests.conftest import stdlib_docs, tiny_config

REPO = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")


def one_error_line(capsys, *argv: str) -> str:
    """Run `pgolf argv` in-process: exit 2, exactly one `error:` line, no traceback. Returns the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def pgolf(*argv: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """`pgolf argv` in a fresh interpreter (a hang becomes a test failure, not a stuck suite)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", "from shared.cli import main; main()", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def assert_one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error:") for x in lines) == 1, proc.stderr
    return lines[-1]


@pytest.fixture()
def data_copy(tiny_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_data.data_dir, dst)
    return dst


def data_args(data_dir, tiny) -> list[str]:
    return ["--data", str(data_dir), "--tokenizer", str(tiny.tokenizer), "--set", "model.vocab_size=512"]


@pytest.fixture()
def tiny_toml(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(to_toml(tiny_config(iterations=2)))
    return path


def checkpoint(tmp_path: Path, scale: float = 1.0, poison: str | None = None, **quant) -> Path:
    """A checkpoint of the tiny model; `scale` multiplies its matrices (2-D tensors)."""
    cfg = tiny_config()
    cfg = replace(cfg, quant=replace(cfg.quant, **quant))
    params = {k: v * np.float32(scale if v.ndim == 2 else 1.0) for k, v in init_params(cfg.model, 1).items()}
    if poison:
        params[poison] = params[poison].copy()
        params[poison].flat[3] = np.nan
    run = tmp_path / "ckpt"
    run.mkdir(exist_ok=True)
    return save_checkpoint(run, params, cfg, step=5)


# ============================================================================ 1. hangs

def test_empty_train_shards_fail_up_front_instead_of_spinning(tiny_data, data_copy, tmp_path, tiny_toml):
    (data_copy / "manifest.json").unlink(missing_ok=True)  # no manifest to catch the changed counts
    for f in data_copy.glob("fineweb_train_*.bin"):
        write_shard(f, np.zeros(0, dtype=np.uint16))
    with pytest.raises(PgolfError, match=r"fineweb_train_000000\.bin holds no tokens"):
        open_dataset(data_copy, tiny_data.tokenizer, 512)
    res = pgolf("train", "--config", str(tiny_toml), *data_args(data_copy, tiny_data), "--out", str(tmp_path / "run"))
    assert "holds no tokens" in assert_one_line(res)
    assert not (tmp_path / "run").exists()


def test_a_token_stream_over_empty_shards_raises(tiny_data, data_copy):
    """The stream's own guard (for callers that skip open_dataset): a lap without a token is an error."""
    for f in data_copy.glob("fineweb_train_*.bin"):
        write_shard(f, np.zeros(0, dtype=np.uint16))
    stream = TokenStream(data_copy, "train")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_take(stream)), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "TokenStream.take spins on empty shards"
    assert isinstance(result[0], PgolfError) and "hold no tokens" in str(result[0])


def _take(stream):
    try:
        return stream.take(10)
    except PgolfError as e:
        return e


# ============================================================================ 2. one line, not a traceback

class _FileSizeLimit:
    """A real write failure from the kernel: RLIMIT_FSIZE makes writes past `limit` bytes fail (EFBIG)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self._sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killing signal
        self._old = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self._old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self._old)
        signal.signal(signal.SIGXFSZ, self._sig)


def _write_checkpoint(run: Path):
    cfg = tiny_config()
    save_checkpoint(run, init_params(cfg.model, 0), cfg, 1)


def _write_train_state(run: Path):
    save_train_state(run, {"x": np.ones(4096, np.float32)}, {"step": 1})


def _write_artifact(run: Path):
    atomic_write_bytes(run / ARTIFACT, b"\0" * 4096)


def _write_summary(run: Path):
    from shared.run.rundir import SUMMARY_KEYS

    RunDir(run).write_summary({**{k: 0.0 for k in SUMMARY_KEYS}, "blurb": "x" * 4096})


def _write_log(run: Path):
    RunDir(run).log("x" * 4096, console=False)


def _write_shard(run: Path):
    write_shard(run / "fineweb_train_000000.bin", np.arange(4096, dtype=np.uint16) % 500)


def _write_tokenizer_copy(run: Path):  # what `data build --tokenizer` and the downloader place
    atomic_write_bytes(run / "tok.model", b"\0" * 4096)


# Every writer pgolf has: a row each (a new file type gets a row here).
WRITERS = {CHECKPOINT: _write_checkpoint, TRAIN_STATE: _write_train_state, ARTIFACT: _write_artifact,
           SUMMARY: _write_summary, "train.log": _write_log, "fineweb_train_000000.bin": _write_shard,
           "tok.model": _write_tokenizer_copy}


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("name", list(WRITERS))
def test_a_full_disk_is_one_error_naming_the_file(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_bytes(b"previous")
    with pytest.raises(PgolfError) as err, _FileSizeLimit(1024):
        WRITERS[name](run)
    assert str(run / name) in str(err.value) and "could not write" in str(err.value)
    assert "\n" not in str(err.value)
    if name != "train.log":  # an atomic write leaves the old file whole and no temp file behind
        assert (run / name).read_bytes() == b"previous"
        assert sorted(p.name for p in run.iterdir()) == [name]


@pytest.mark.mlx
@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_disk_full_while_training_saves_is_one_line(tiny_data, tmp_path, tiny_toml):
    """safetensors raises its own SafetensorError (not an OSError) when the disk is full."""
    pytest.importorskip("mlx.core")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run = tmp_path / "run"
    res = pgolf("train", "--backend", "mlx", "--config", str(tiny_toml), *data_args(tiny_data.data_dir, tiny_data),
                "--out", str(run), preexec_fn=limit, timeout=300)
    line = assert_one_line(res)
    assert str(run / TRAIN_STATE) in line and "could not write" in line
    assert not (run / CHECKPOINT).exists() and not (run / SUMMARY).exists()


def test_summary_json_is_strict_json(tmp_path):
    from shared.run.rundir import SUMMARY_KEYS

    RunDir(tmp_path).write_summary({**{k: 1.0 for k in SUMMARY_KEYS}, "val_bpb": float("nan"), "x": [float("inf")]})

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    summary = json.loads((tmp_path / SUMMARY).read_text(), parse_constant=refuse)
    assert summary["val_bpb"] is None and summary["x"] == [None] and summary["val_loss"] == 1.0


# ---------------------------------------------------------------------------- 2c. damaged inputs
# Each row damages one input a command reads; the exception its library raises (safetensors,
# zstandard, sentencepiece, tomllib, json, numpy's fromfile, UTF-8 decoding) must come out as one line
# naming the file. `make(tmp, ckpt, artifact, data)` writes the damaged file and returns the argv.

def _bytes(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def _resume_dir(tmp: Path, ckpt: Path, data: Path, state: bytes | None = None, meta: dict | None = None) -> str:
    run = tmp / "resume"
    shutil.copytree(ckpt.parent, run)
    cfg = tiny_config()
    tok = data.parent.parent / "tokenizers" / "tiny_512_bpe.model"
    (run / CONFIG).write_text(to_toml(replace(cfg, data=replace(cfg.data, dir=str(data), tokenizer=str(tok)))))
    if state is not None:
        (run / TRAIN_STATE).write_bytes(state)
    else:
        from shared.run.rundir import save_tensors
        save_tensors(run / TRAIN_STATE, {"x": np.ones(2, np.float32)}, meta)
    return str(run)


def _data_with(tmp: Path, data: Path, name: str, content: bytes) -> str:
    out = tmp / "damaged"
    shutil.copytree(data, out)
    (out / "manifest.json").unlink(missing_ok=True)
    (out / name).write_bytes(content)
    return str(out)


DAMAGED = {
    "checkpoint truncated": (lambda t, c, a, d: ["eval", _bytes(t / "c.safetensors", c.read_bytes()[:300])],
                             "is not a readable safetensors file"),
    "checkpoint empty": (lambda t, c, a, d: ["pack", _bytes(t / "c.safetensors", b""), "--backend", "torch",
                                             "-o", str(t / "o.pgz")], "is not a readable safetensors file"),
    "artifact truncated": (lambda t, c, a, d: ["eval", _bytes(t / "a.pgz", a.read_bytes()[:200])], "truncated"),
    "artifact body flipped (zstd)": (
        lambda t, c, a, d: ["inspect", _bytes(t / "a.pgz", (lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:])(
            a.read_bytes()))], "corrupted artifact body"),
    "tokenizer not a model (sentencepiece)": (
        lambda t, c, a, d: ["data", "audit", "--data", str(d), "--tokenizer", _bytes(t / "x.model", b"junk")],
        "is not a SentencePiece model"),
    "config not TOML": (lambda t, c, a, d: ["train", "--config", _bytes(t / "x.toml", b"[train\n"), "--out",
                                            str(t / "r")], "malformed TOML"),
    "config not UTF-8": (lambda t, c, a, d: ["train", "--config", _bytes(t / "x.toml", b"\xff\xfe"), "--out",
                                             str(t / "r")], "malformed TOML"),
    "dataset manifest not JSON": (
        lambda t, c, a, d: ["data", "audit", "--data", _data_with(t, d, "manifest.json", b"\xff{"),
                            "--tokenizer", str(d.parent.parent / "tokenizers" / "tiny_512_bpe.model")],
        "is not valid JSON"),
    "validation shard shorter than its header (numpy)": (
        lambda t, c, a, d: ["data", "audit", "--data", _data_with(t, d, "fineweb_val_000000.bin", b"\x01\x02"),
                            "--tokenizer", str(d.parent.parent / "tokenizers" / "tiny_512_bpe.model")],
        "is truncated"),
    "docs .jsonl with a broken line": (
        lambda t, c, a, d: ["data", "build", "--docs", _bytes(t / "d.jsonl", b'{"text": "a"}\n{oops\n'),
                            "--out", str(t / "b"), "--vocab", "400"], "d.jsonl:2: not valid JSON"),
    "resume state not safetensors": (
        lambda t, c, a, d: ["train", "--backend", "torch", "--resume", _resume_dir(t, c, d, state=b"junk")],
        "is not a readable safetensors file"),
    "resume state without its metadata": (
        lambda t, c, a, d: ["train", "--backend", "torch", "--resume", _resume_dir(t, c, d, meta={"other": "1"})],
        "holds no readable resume state"),
    "resume state of another tool": (
        lambda t, c, a, d: ["train", "--backend", "torch", "--resume", _resume_dir(t, c, d, meta={"state": "{}"})],
        "lacks backend, config, step"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_input_is_one_line_naming_the_file(capsys, tiny_data, tmp_path, case):
    make, needle = DAMAGED[case]
    ckpt = checkpoint(tmp_path)
    artifact = tmp_path / "m.pgz"
    artifact.write_bytes(pack(init_params(tiny_config().model, 1), tiny_config()))
    argv = make(tmp_path, ckpt, artifact, tiny_data.data_dir)
    line = one_error_line(capsys, *argv)
    assert needle in line and str(tmp_path) in line, line


# ============================================================================ 3. numeric options range-checked

@pytest.mark.parametrize("argv,needle", [
    (["train", "--nproc", "0"], "--nproc must be at least 1"),
    (["train", "--nproc", "-3"], "--nproc must be at least 1"),
    (["train", "--set", "train.max_seconds=nan"], "train.max_seconds must be a number"),
    (["train", "--set", "optim.matrix_lr=nan"], "optim.matrix_lr must be a number"),
    (["train", "--set", "train.seq_len=-1"], "train.seq_len must be at least 1"),
    (["train", "--resume", "{tmp}", "--overwrite"], "contradict"),
    (["parity", "{ckpt}", "--steps", "0"], "--steps must be at least 1"),
    (["pack", "{ckpt}", "--backend", "torch", "-o", "{tmp}/m.pgz", "--budget", "-5"], "--budget"),
    (["pack", "{ckpt}", "--backend", "torch", "-o", "{tmp}/m.pgz", "--budget", "16MB"], "'16MB' is not a valid integer"),
    (["data", "sample", "--vocab", "abc"], "'abc' is not a valid integer (see `pgolf data sample --help`)"),
    (["data", "sample", "--vocab", "0", "--out", "{tmp}/s"], "--vocab 0: must be above 260"),
    (["data", "build", "--docs", "{docs}", "--out", "{tmp}/b", "--vocab", "400", "--workers", "0"],
     "--workers must be at least 1"),
    (["data", "build", "--docs", "{docs}", "--out", "{tmp}/b", "--vocab", "400", "--val-docs", "0"], "--val-docs 0"),
    (["data", "download", "--train-shards", "-1", "--out", "{tmp}/d"], "--train-shards -1: must be 0 or more"),
    (["train", "--set", "train.seed=-1"], "train.seed must not be negative"),
    (["train", "--set", "optim.matrix_lr=-0.04"], "optim.matrix_lr must not be negative"),
    (["train", "--set", "optim.beta2=1.0"], "optim.beta2 must be in [0, 1)"),
    (["train", "--set", "optim.muon_momentum=1.5"], "optim.muon_momentum must be in [0, 1)"),
    (["train", "--set", "optim.adam_eps=0"], "optim.adam_eps must be positive"),
    (["train", "--set", "model.rope_base=0"], "model.rope_base must be above 1"),
    (["train", "--nproc", "two"], "'two' is not a valid integer"),
    (["train", "--bogus"], "No such option '--bogus'"),
    (["eval", "{ckpt}", "--set", "eval.max_tokens=-1"], "eval.max_tokens must be >= 0"),
    (["parity", "{ckpt}", "--steps", "-2"], "--steps must be at least 1"),
])
def test_out_of_range_options_are_one_line(capsys, tmp_path, argv, needle):
    """Every numeric option of every command, and every `--set` value, is range-checked: one line naming it.
    A new command or option gets a row here."""
    ckpt = checkpoint(tmp_path)
    (tmp_path / CONFIG).write_text(to_toml(tiny_config()))
    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(stdlib_docs(30_000)))
    argv = [a.format(tmp=tmp_path, ckpt=ckpt, docs=docs) for a in argv]
    if argv[0] == "train" and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    assert needle in one_error_line(capsys, *argv)


# ============================================================================ 4. finite or refuse

@pytest.mark.parametrize("command", ["pack", "eval", "parity"])
def test_a_nan_weight_is_refused_at_load(capsys, tmp_path, command):
    ckpt = checkpoint(tmp_path, poison="blocks.0.mlp.fc.weight")
    argv = {"pack": ["pack", str(ckpt), "--backend", "torch", "-o", str(tmp_path / "m.pgz")],
            "eval": ["eval", str(ckpt)], "parity": ["parity", str(ckpt)]}[command]
    line = one_error_line(capsys, *argv)
    assert str(ckpt) in line and "blocks.0.mlp.fc.weight is not finite (1 NaN" in line
    assert not (tmp_path / "m.pgz").exists()


def test_an_artifact_that_decodes_to_nan_is_refused(capsys, tmp_path):
    """An artifact written by another tool (or an older pgolf) with an infinite fp16 scale."""
    cfg = tiny_config()
    cfg = replace(cfg, quant=replace(cfg.quant, keep_float_max_numel=0))
    qts = quantize_all(init_params(cfg.model, 0), cfg)
    name = "blocks.0.attn.c_q.weight"
    scale = qts[name].scale.copy()
    scale[0] = np.float16(np.inf)
    qts[name] = QTensor(qts[name].scheme, qts[name].shape, q=qts[name].q, scale=scale)
    bad = tmp_path / "bad.pgz"
    bad.write_bytes(pack_quantized(qts, cfg))
    line = one_error_line(capsys, "eval", str(bad))
    assert str(bad) in line and name in line and "not finite" in line


@pytest.mark.parametrize("scheme_key,scheme,scale,needle", [
    ("mlp", "int8", 1e8, "beyond the fp16 range of the artifact's scales"),   # int8: percentile clip / 127
    ("mlp", "int6", 1e7, "beyond the fp16 range of the artifact's scales"),   # int6: 12 std / 31
    ("other", "fp16", 1e6, "beyond the fp16 range"),                          # floats stored as fp16
])
def test_weights_beyond_fp16_are_an_error_naming_the_tensor(capsys, tmp_path, scheme_key, scheme, scale, needle):
    ckpt = checkpoint(tmp_path, scale=scale, keep_float_max_numel=0 if scheme != "fp16" else 10**9,
                      **{"other": "fp32", scheme_key: scheme})
    line = one_error_line(capsys, "pack", str(ckpt), "--backend", "torch", "-o", str(tmp_path / "m.pgz"))
    assert needle in line and ".weight" in line
    assert not (tmp_path / "m.pgz").exists()


def test_fp32_floats_hold_what_fp16_cannot(tmp_path):
    """The way out the fp16 error names: quant.other=fp32 packs the same weights finitely."""
    cfg = tiny_config()
    cfg = replace(cfg, quant=replace(cfg.quant, other="fp32", keep_float_max_numel=10**9))
    params = {k: v * np.float32(1e6) for k, v in init_params(cfg.model, 1).items()}
    from shared.artifact.format import unpack

    _, back = unpack(pack(params, cfg))
    assert all(np.isfinite(v).all() for v in back.values())


def _fake_session(val_loss: float) -> SimpleNamespace:
    """A Session whose every evaluation scores `val_loss` (finish_run needs nothing else here)."""
    return SimpleNamespace(backend="torch", rank=0, world_size=1, is_main=True, share_bytes=lambda data: data,
                           evaluate_params=lambda params, tokens, tables: EvalResult(val_loss * 100, 100, 80))


@pytest.mark.parametrize("case", ["overflowing_weights", "nan_weights", "nan_loss_after_packing"])
def test_finish_never_writes_a_nan_artifact_or_summary(tmp_path, case):
    cfg = tiny_config()
    params = init_params(cfg.model, 1)
    if case == "overflowing_weights":
        params = {k: v * np.float32(1e8) for k, v in params.items()}
    if case == "nan_weights":
        params["tok_emb.weight"][0, 0] = np.nan
    loss = float("nan") if case == "nan_loss_after_packing" else 3.0
    run = RunDir(tmp_path)
    stats = {"val_loss": 3.0, "val_bpb": 1.5, "steps": 1, "train_tokens": 10, "train_seconds": 1.0}
    with pytest.raises(PgolfError) as err:
        finish_run(_fake_session(loss), params, cfg, run, SimpleNamespace(val_tokens=None, tables=None), stats,
                   code_bytes=0)
    assert "\n" not in str(err.value)
    if case != "nan_loss_after_packing":
        assert ".weight" in str(err.value)
    assert not (tmp_path / ARTIFACT).exists() and not (tmp_path / SUMMARY).exists()


def test_finish_writes_the_artifact_before_evaluating_it(tmp_path):
    """A long (TTT) evaluation starts with model.pgz on disk: a run stopped during it keeps its artifact."""
    cfg = tiny_config()
    seen = []

    def evaluate(params, tokens, tables):
        seen.append((tmp_path / ARTIFACT).exists())
        return EvalResult(300.0, 100, 80)

    session = SimpleNamespace(backend="torch", rank=0, world_size=1, is_main=True, evaluate_params=evaluate,
                              share_bytes=lambda data: data)
    stats = {"val_loss": 3.0, "val_bpb": 1.5, "steps": 1, "train_tokens": 10, "train_seconds": 1.0}
    finish_run(session, init_params(cfg.model, 1), cfg, RunDir(tmp_path), SimpleNamespace(val_tokens=None, tables=None),
               stats, code_bytes=0)
    assert seen == [True] and (tmp_path / ARTIFACT).exists()


# ============================================================================ 5. validation data up front

@pytest.mark.parametrize("val_tokens", [0, 1, 64])  # 64 tokens = 63 targets < one sequence of 64
def test_a_validation_split_shorter_than_a_sequence_fails_before_training(tiny_data, data_copy, tmp_path, tiny_toml,
                                                                          val_tokens):
    (data_copy / "manifest.json").unlink(missing_ok=True)
    val = data_copy / "fineweb_val_000000.bin"
    write_shard(val, np.array(read_shard(val))[:val_tokens])
    res = pgolf("train", "--config", str(tiny_toml), *data_args(data_copy, tiny_data), "--out", str(tmp_path / "run"))
    line = assert_one_line(res)
    assert "fineweb_val_" in line and ("fewer than one sequence" in line or "holds no tokens" in line)
    assert not (tmp_path / "run").exists()  # no step, no file


# ============================================================================ 6. run ownership

HOLDER = """
import sys, time
from shared.run.rundir import claim_run_dir
claim = claim_run_dir(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(not LINUX and sys.platform != "darwin", reason="flock")
def test_a_live_owner_keeps_the_folder_and_a_dead_one_releases_it(capsys, tiny_data, tmp_path, tiny_toml):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        line = one_error_line(capsys, "train", "--config", str(tiny_toml), *data_args(tiny_data.data_dir, tiny_data),
                              "--out", str(run))
        assert f"process {holder.pid} is training into it" in line and str(run) in line
        with pytest.raises(PgolfError, match="is in use"):
            rundir.claim_run_dir(run, resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert (run / rundir.LOCK).read_text().strip() == str(holder.pid)  # a stale lock file: taken over
    with rundir.claim_run_dir(run) as claim:
        assert (run / rundir.LOCK).read_text().strip() == str(os.getpid()) and claim.lock_file.is_file()
    assert not (run / rundir.LOCK).exists()


def test_without_flock_the_pid_in_the_lock_file_decides(tmp_path, monkeypatch):
    """File systems without flock (ENOLCK): a live PID in the lock file refuses, a dead one is taken over."""
    import errno

    def no_flock(fd):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir, "_flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (run / rundir.LOCK).write_text(f"{live.pid}\n")
        with pytest.raises(PgolfError, match=f"process {live.pid} is training into it"):
            rundir.claim_run_dir(run)
    finally:
        live.kill()
        live.wait()
    with rundir.claim_run_dir(run):
        assert (run / rundir.LOCK).read_text().strip() == str(os.getpid())
    assert not (run / rundir.LOCK).exists()


BACKENDS = [pytest.param("torch", marks=pytest.mark.torch), pytest.param("mlx", marks=pytest.mark.mlx)]


def _backend(name: str):
    pytest.importorskip({"torch": "torch", "mlx": "mlx.core"}[name])
    from shared.run.backends import get_backend

    return get_backend(name)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_direct_backend_train_call_takes_the_run_lock(tiny_data, tmp_path, name):
    """`backend.train(...)` from Python, not only `pgolf train`: refused while another process holds the
    folder, holds it itself while it trains, and lets go at the end."""
    from shared.run.loop import Hooks

    backend = _backend(name)
    cfg = tiny_config(iterations=2)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)))
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(PgolfError, match=f"process {holder.pid} is training into it"):
            backend.train(cfg, run)
        assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    owners: list[str] = []
    backend.train(cfg, run, hooks=Hooks(before_step=lambda at, s: owners.append((run / rundir.LOCK).read_text())))
    assert owners and {o.strip() for o in owners} == {str(os.getpid())}
    assert not (run / rundir.LOCK).exists() and (run / SUMMARY).is_file()


@pytest.mark.parametrize("present", [[SUMMARY, ARTIFACT, CHECKPOINT, CONFIG], [CONFIG, "train.log"], [TRAIN_STATE]])
def test_out_on_a_folder_that_holds_a_run_is_refused(capsys, tiny_data, tmp_path, tiny_toml, present):
    run = tmp_path / "run"
    run.mkdir()
    for name in present:
        (run / name).write_bytes(b"old " + name.encode())
    (run / "notes.txt").write_text("mine")
    line = one_error_line(capsys, "train", "--config", str(tiny_toml), *data_args(tiny_data.data_dir, tiny_data),
                          "--out", str(run))
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert all((run / n).read_bytes() == b"old " + n.encode() for n in present)
    with rundir.claim_run_dir(run, overwrite=True):  # --overwrite: the old run's files go, the user's stay
        assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK, "notes.txt"]


@pytest.mark.mlx
def test_overwrite_replaces_the_run_and_a_failed_resume_keeps_config_toml(capsys, tiny_data, tmp_path, tiny_toml):
    pytest.importorskip("mlx.core")
    run = tmp_path / "run"
    base = ["train", "--backend", "mlx", "--config", str(tiny_toml), *data_args(tiny_data.data_dir, tiny_data)]
    main([*base, "--out", str(run)])
    first = json.loads((run / SUMMARY).read_text())
    main([*base, "--out", str(run), "--overwrite", "--set", "train.iterations=3"])
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and max(steps) == 3  # no record of the first run is left
    assert json.loads((run / SUMMARY).read_text())["steps"] == 3 != first["steps"]
    assert not (run / rundir.LOCK).exists()
    config = (run / CONFIG).read_bytes()
    state = (run / TRAIN_STATE).read_bytes()
    line = one_error_line(capsys, "train", "--backend", "mlx", "--resume", str(run), "--set", "train.iterations=6",
                          "--set", "optim.scalar_lr=1e30")  # finite, diverges
    assert "diverged" in line
    assert (run / CONFIG).read_bytes() == config and (run / TRAIN_STATE).read_bytes() == state


@pytest.mark.torch
@pytest.mark.slow
def test_torchrun_workers_run_under_the_launchers_claim_and_a_failed_resume_keeps_config(capsys, tiny_data, tmp_path,
                                                                                       tiny_toml):
    """`--nproc 2`: the pgolf process owns the folder, its workers write into it; the launcher's
    config for the workers is not config.toml, so a resume its workers refuse leaves that alone."""
    pytest.importorskip("torch")
    run = tmp_path / "run"
    base = ["train", "--backend", "torch", "--nproc", "2", *data_args(tiny_data.data_dir, tiny_data)]
    main([*base, "--config", str(tiny_toml), "--out", str(run)])
    assert json.loads((run / SUMMARY).read_text())["world_size"] == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no lock, no launch config left
    config = (run / CONFIG).read_bytes()
    # A finished run: the launcher itself refuses the change, before starting any worker.
    line = one_error_line(capsys, *base, "--resume", str(run), "--set", "train.seq_len=32")
    assert "train.seq_len was 64, now 32" in line
    # With a new cap the workers run the resume and refuse it; config.toml stays.
    line = one_error_line(capsys, *base, "--resume", str(run), "--set", "train.seq_len=32",
                          "--set", "train.iterations=4")
    assert "torchrun with 2 ranks failed" in line
    assert (run / CONFIG).read_bytes() == config


# ============================================================================ 7. processes

def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG and /proc are Linux")
def test_killing_the_torchrun_agent_kills_its_workers(tiny_data, tmp_path):
    pytest.importorskip("torch")
    cfg = tiny_config(iterations=100_000, max_seconds=120.0, log_every=1)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)))
    config, run = tmp_path / "cfg.toml", tmp_path / "run"
    config.write_text(to_toml(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGOLF_PG_TIMEOUT_S": "60"}
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "cuda_train", "--config", str(config), "--out", str(run)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not (run / "metrics.jsonl").is_file():  # both ranks are past start-up and training
            assert agent.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        workers = _children(agent.pid)
        assert len(workers) == 2, workers
        agent.kill()
        agent.wait()
        deadline = time.monotonic() + 5
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "a worker outlived its agent by more than 5 s"
        assert not (run / SUMMARY).exists()
    finally:
        for w in [*workers, agent.pid]:
            try:
                os.kill(w, signal.SIGKILL)
            except OSError:
                pass


# ============================================================================ 8. determinism and kill -9

KILLED_RUN = """
import os, signal, sys
from shared.run.backends import get_backend
from shared.core.config import load_config
from shared.run.loop import Hooks

backend, config, run, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def kill(step, session):
    if step == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no save: the power goes out

get_backend(backend).train(load_config(config), run, hooks=Hooks(after_step=kill))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_kill_9_and_resume_is_bit_exact(tiny_data, tmp_path, name):
    """The bar of docs/RELIABILITY.md "Determinism", the same on both backends: a run killed with
    SIGKILL after step 5 (last save: step 4) and resumed ends with the weights, losses and BPB of the
    uninterrupted run, bit for bit. With `train.compile = true`, which on a CPU resolves to eager."""
    backend = _backend(name)
    cfg = tiny_config(iterations=8, warmup_steps=1, checkpoint_every=2, compile=True)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)))
    config = tmp_path / "cfg.toml"
    config.write_text(to_toml(cfg))
    straight = backend.train(cfg, tmp_path / "a")
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, name, str(config), str(tmp_path / "b"), "5"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert rundir.load_checkpoint(tmp_path / "b")[2] == 4
    resumed = backend.train(cfg, tmp_path / "b", resume=True)  # takes over the dead process's lock
    a, _, _ = rundir.load_checkpoint(tmp_path / "a")
    b, _, step = rundir.load_checkpoint(tmp_path / "b")
    assert step == 8 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a), [k for k in a if not np.array_equal(a[k], b[k])]

    def losses(run):
        return {r["step"]: r["train_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "train_loss" in r}

    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(lb[s] == la[s] for s in la)
    assert resumed["val_bpb"] == straight["val_bpb"] and resumed["q_val_bpb"] == straight["q_val_bpb"]
    assert resumed["artifact_sha256"] == straight["artifact_sha256"]
    if name == "torch":
        assert "compile=off_on_cpu" in (tmp_path / "a" / "train.log").read_text()
