"""DDP under torchrun on CPU (gloo): 2 ranks equal 1 rank, agreed stops, failures end the run.

Each test launches `python -m torch.distributed.run --standalone --nproc_per_node=2
-m cuda_train` on the tiny config: a few seconds of work, most of it start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from shared.core.config import to_toml
from shared.run.rundir import load_checkpoint
from tests.conftest import tiny_config

pytestmark = [pytest.mark.torch, pytest.mark.slow]
pytest.importorskip("torch")
backend = pytest.importorskip("cuda_train.backend")

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 240  # a hang fails the test instead of blocking the suite


def torchrun(cfg, out: Path, tmp: Path, nproc: int = 2, faults=(), sets=()) -> subprocess.CompletedProcess:
    """`-m cuda_train` under torchrun; with `faults` (tests/fault_entry.py flags) the test entry instead."""
    config = tmp / f"{out.name}.toml"
    config.write_text(to_toml(cfg))
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PGOLF_PG_TIMEOUT_S": "60"}
    entry = ["-m", "tests.fault_entry", *faults] if faults else ["-m", "cuda_train"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *entry, "--config", str(config), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def with_data(cfg, tiny):
    return replace(cfg, data=replace(cfg.data, dir=str(tiny.data_dir), tokenizer=str(tiny.tokenizer)))


def losses(run: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in recs if "train_loss" in r}


def test_two_ranks_equal_one_rank_with_accumulation(tiny_data, tmp_path):
    cfg = with_data(tiny_config(iterations=6, grad_accum=2), tiny_data)
    one = backend.train(cfg, tmp_path / "one")
    res = torchrun(cfg, tmp_path / "two", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, _, _ = load_checkpoint(tmp_path / "one")
    b, _, _ = load_checkpoint(tmp_path / "two")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)
    la, lb = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(la) == sorted(lb) == list(range(1, 7))
    assert all(lb[s] == pytest.approx(la[s], rel=1e-5) for s in la)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["backend"] == "torch"
    assert two["val_bpb"] == pytest.approx(one["val_bpb"], rel=1e-5)
    assert "world_size=2" in (tmp_path / "two" / "train.log").read_text()


def test_wallclock_stop_lands_on_the_same_step_on_every_rank(tiny_data, tmp_path):
    cfg = with_data(tiny_config(iterations=100_000, max_seconds=1.0, warmdown_iters=5), tiny_data)
    report = tmp_path / "ranks"
    res = torchrun(cfg, tmp_path / "run", tmp_path, faults=["--rank-report", str(report)])
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["stop"] == r1["stop"] == "wallclock"
    assert r0["steps"] == r1["steps"] < 100_000
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == r0["steps"] and summary["stop_reason"] == "wallclock"


def test_nan_loss_stops_every_rank_with_one_line(tiny_data, tmp_path):
    cfg = with_data(tiny_config(iterations=8), tiny_data)
    res = torchrun(cfg, tmp_path / "run", tmp_path, sets=["optim.scalar_lr=1e30"])  # finite, diverges
    assert res.returncode != 0
    # Both ranks see the same reduced loss and raise at the same step; torchrun may stop the
    # slower one before it prints, so at least one rank's line is there; no traceback from our code
    # (torchrun's agent prints its own ChildFailedError report).
    assert "error: training diverged: the loss is nan at step 2" in res.stderr
    assert 'cuda_train/session.py", line' not in res.stderr and 'shared/run/loop.py", line' not in res.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_failing_rank_ends_the_run_without_a_hang(tiny_data, tmp_path):
    cfg = with_data(tiny_config(iterations=50), tiny_data)
    res = torchrun(cfg, tmp_path / "run", tmp_path, faults=["--fail-rank", "1", "--fail-step", "2"])
    assert res.returncode != 0
    assert "injected failure on rank 1 at step 2" in res.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_backend_train_launches_torchrun(tiny_data, tmp_path):
    """`pgolf train --backend torch --nproc 2` goes through backend.train(..., nproc=2)."""
    cfg = with_data(tiny_config(iterations=3), tiny_data)
    summary = backend.train(cfg, tmp_path, nproc=2)
    assert summary["world_size"] == 2 and summary["steps"] == 3
    assert (tmp_path / "model.pgz").is_file()


def test_record_evaluation_is_the_same_on_two_ranks(tiny_data, tmp_path):
    """Sliding windows and both TTT flavours sharded over 2 gloo ranks, totals all-reduced: the same
    nats, tokens and bytes as one process (TTT: the same gradient, summed over the ranks' rows)."""
    from cuda_train.session import session_from
    from shared.artifact.format import pack, read_artifact, write_artifact
    from shared.core.spec import init_params
    from shared.data.dataset import open_dataset
    from shared.eval.driver import run_eval

    cfg = tiny_config()
    cfg = replace(cfg, eval=replace(cfg.eval, max_tokens=1024)).validate()
    rng = np.random.default_rng(7)
    params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in init_params(cfg.model, seed=7).items()}
    artifact = write_artifact(tmp_path / "model.pgz", pack(params, cfg))
    modes = [{"mode": "sliding", "stride": 16},
             {"mode": "ttt", "ttt": "sgd", "ttt_chunk_tokens": 256, "ttt_lr": 0.02, "stride": 32},
             {"mode": "ttt", "ttt": "lora", "lora_docs": 1, "lora_chunk": 32, "lora_rank": 2, "lora_alpha": 2.0},
             # global SGD phases on 2 ranks: #1855's order (the scores settled across ranks first), and pgolf's
             {"mode": "ttt", "ttt": "lora", "lora_docs": 1, "lora_chunk": 32, "lora_rank": 2, "lora_alpha": 2.0,
              "lora_phases": 2, "lora_phase_order": "scored", "lora_prefix_docs": 4, "lora_phase_chunk_tokens": 256,
              "lora_phase_rows": 4, "lora_phase_lr": 0.05},
             {"mode": "ttt", "ttt": "lora", "lora_docs": 1, "lora_chunk": 32, "lora_rank": 2, "lora_alpha": 2.0,
              "lora_phases": 1, "lora_phase_docs": 3, "lora_phase_lr": 0.05}]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGOLF_PG_TIMEOUT_S": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "tests.eval_entry", str(artifact), str(tiny_data.data_dir), str(tiny_data.tokenizer),
           *(json.dumps(m) for m in modes)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert res.returncode == 0, res.stderr[-3000:]
    two = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(two) == len(modes)
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, tiny_data.vocab_size)
    _, q = read_artifact(artifact)
    for m, r in zip(modes, two, strict=True):
        c = replace(cfg, eval=replace(cfg.eval, **m)).validate()
        one = run_eval(session_from(c, q), c, ds.val_tokens, ds.tables)
        assert (r["tokens"], r["bytes"]) == (one.result.tokens, one.result.bytes) == (1024, one.result.bytes)
        assert 0 < r["rank0_scored"] < r["tokens"]   # rank 0 scored only its share
        tol = 1e-9 if m["mode"] == "sliding" else 1e-6
        assert abs(r["bpb"] - one.result.val_bpb) < tol, (m, r["bpb"], one.result.val_bpb)


def test_grad_clip_local_and_warmup_momentum_on_two_ranks(tmp_path):
    """optim.grad_clip_local: with no clip acting, the hand-made average equals DDP's; with the clip acting,
    clipping each rank's own gradient first (#1855's order) moves the weights elsewhere. optim.
    warmup_muon_momentum = keep_multi_rank keeps Muon's momentum through the rollback on two ranks."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGOLF_PG_TIMEOUT_S": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.clip_entry", str(tmp_path)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert res.returncode == 0, res.stderr[-3000:]
    w = {n: dict(np.load(tmp_path / f"{n}.npz")) for n in ("ddp", "local", "clip_avg", "clip_local")}

    def same(a, b):
        return all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)

    assert same(w["ddp"], w["local"])
    assert not same(w["clip_avg"], w["clip_local"])
    for name in w:  # train.grad_sync: the sharded Muon (no DDP) gives the DDP wrapper's weights and state
        ddp = dict(np.load(tmp_path / f"{name}_ddp.npz"))
        for k in ddp:
            np.testing.assert_allclose(w[name][k], ddp[k], rtol=1e-6, atol=0, err_msg=f"{name} {k}")
        sa, sb = (dict(np.load(tmp_path / f"{name}_state{t}.npz")) for t in ("", "_ddp"))
        assert sorted(sa) == sorted(sb) and any(k.startswith("muon.momentum") for k in sa)
        for k in sb:
            np.testing.assert_allclose(sa[k], sb[k], rtol=1e-6, atol=0, err_msg=f"{name} state {k}")
    assert json.loads((tmp_path / "kept.json").read_text()) == {"kept": True, "adam_reset": True}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_equal_one_node_of_the_same_world_size(tiny_data, tmp_path):
    """Multi-node torchrun (docs/MULTINODE.md): two "nodes" on 127.0.0.1, one rank each, c10d rendezvous,
    train the same steps to the same losses and weights as one node with two ranks."""
    cfg = with_data(tiny_config(iterations=4, grad_accum=2), tiny_data)
    res = torchrun(cfg, tmp_path / "one_node", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    config = tmp_path / "nodes.toml"
    config.write_text(to_toml(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PGOLF_PG_TIMEOUT_S": "60", "GLOO_SOCKET_IFNAME": "lo"}
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1",
         "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=pgolf-test", "-m", "cuda_train",
         "--config", str(config), "--out", str(tmp_path / "two_nodes")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    la, lb = losses(tmp_path / "one_node"), losses(tmp_path / "two_nodes")
    assert sorted(lb) == list(range(1, 5)) and all(lb[s] == pytest.approx(la[s], rel=1e-6) for s in la)
    a, _, _ = load_checkpoint(tmp_path / "one_node")
    b, _, _ = load_checkpoint(tmp_path / "two_nodes")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-8, err_msg=k)
    summary = json.loads((tmp_path / "two_nodes" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_an_uneven_rank_never_times_out_and_scores_what_one_rank_scores(tiny_data, tmp_path):
    """8 gloo ranks with a 5 s process-group timeout, one rank's work 10 s longer: the others wait for it
    without a collective (wait_all), and the evaluation scores exactly what one process scores. Global SGD
    phases (#1855's) on 8 ranks give one process's score within 1e-6 where each chunk's 8 rows of 64 tokens make
    one step on both (the record's steps take lora_phase_rows per rank: elsewhere they depend on the ranks)."""
    from shared.artifact.format import pack, write_artifact
    from shared.core.spec import init_params

    cfg = tiny_config()
    cfg = replace(cfg, eval=replace(cfg.eval, max_tokens=0)).validate()   # 8 documents, 8,716 targets
    rng = np.random.default_rng(7)
    params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in init_params(cfg.model, seed=7).items()}
    artifact = write_artifact(tmp_path / "model.pgz", pack(params, cfg))
    lora = {"mode": "ttt", "ttt": "lora", "lora_docs": 1, "lora_chunk": 32, "lora_rank": 2, "lora_alpha": 2.0}
    modes = [lora, {**lora, "lora_phases": 2, "lora_phase_order": "scored", "lora_prefix_docs": 4,
                    "lora_phase_chunk_tokens": 512, "lora_phase_rows": 8, "lora_phase_lr": 0.05}]
    args = ["-m", "tests.eval_entry", str(artifact), str(tiny_data.data_dir), str(tiny_data.tokenizer),
            *(json.dumps(m) for m in modes)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=HANG_GUARD_S)
    assert one.returncode == 0, one.stderr[-3000:]
    env.update(PGOLF_PG_TIMEOUT_S="5", PGOLF_TEST_DELAY="3:10")
    eight = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8",
                            *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert eight.returncode == 0, eight.stderr[-3000:]
    a, b = ([json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")] for r in (one, eight))
    assert [r["world_size"] for r in a] == [1, 1] and [r["world_size"] for r in b] == [8, 8]
    assert (b[0]["nats"], b[0]["tokens"], b[0]["bytes"]) == (a[0]["nats"], a[0]["tokens"], a[0]["bytes"])
    assert b[0]["bpb"] == a[0]["bpb"] and 0 < b[0]["rank0_scored"] < b[0]["tokens"]
    assert (b[1]["tokens"], b[1]["bytes"]) == (a[1]["tokens"], a[1]["bytes"])
    assert abs(b[1]["bpb"] - a[1]["bpb"]) < 1e-6 and b[1]["bpb"] != b[0]["bpb"]

def test_sharded_muon_gives_the_ddp_losses_over_20_steps(tiny_data, tmp_path):
    """train.grad_sync = sharded (no DDP wrapper, reduce-scatter, Newton-Schulz on each rank's matrices,
    all-gather) against the DDP wrapper with every momentum on every rank: the same losses, on 1 and 2 ranks."""
    cfg = with_data(tiny_config(iterations=20, grad_accum=2), tiny_data)
    for nproc in (1, 2):
        runs = {}
        for sync in ("ddp", "sharded"):
            out = tmp_path / f"{sync}{nproc}"
            res = torchrun(cfg, out, tmp_path, nproc=nproc, sets=[f"train.grad_sync={sync}"])
            assert res.returncode == 0, res.stderr[-3000:]
            runs[sync] = losses(out)
        assert sorted(runs["ddp"]) == sorted(runs["sharded"]) and len(runs["ddp"]) == 20
        for s, v in runs["ddp"].items():
            assert abs(runs["sharded"][s] - v) <= 1e-6 * abs(v), (nproc, s, runs["sharded"][s], v)


def test_sharded_optimizer_state_resumes_on_another_world_size(tiny_data, tmp_path):
    """Interrupted on 2 sharded ranks, resumed on 1: the gathered momentum carries on as an uninterrupted
    2-rank run does (1 and 2 ranks agree to 1e-5: test_two_ranks_equal_one_rank_with_accumulation)."""
    cfg = with_data(tiny_config(iterations=8, grad_accum=2, warmup_steps=0), tiny_data)
    res = torchrun(cfg, tmp_path / "straight", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    torchrun(cfg, tmp_path / "cut", tmp_path, faults=["--interrupt-step", "4"])   # each rank: SIGINT
    _, _, saved = load_checkpoint(tmp_path / "cut")
    assert saved == 4
    backend.train(cfg, tmp_path / "cut", resume=True)
    la, lb = losses(tmp_path / "straight"), losses(tmp_path / "cut")
    assert sorted(lb) == list(range(1, 9))
    assert all(lb[s] == pytest.approx(la[s], rel=1e-5) for s in range(5, 9)), (la, lb)
