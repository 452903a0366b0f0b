"""Sliding-window planning and the byte accounting of every eval.mode against the flat pass."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import tiny_config

from shared.core.config import load_config
from shared.core.spec import init_params
from shared.data.dataset import open_dataset
from shared.data.shards import val_token_count
from shared.errors import PgolfError
from shared.eval import driver
from shared.eval.windows import documents, plan_windows, target_span


@pytest.mark.parametrize("lo,hi,context,stride", [(1, 1000, 128, 32), (1, 50, 128, 32), (1, 129, 128, 128),
                                                   (300, 777, 64, 7), (1, 2, 8, 1), (5, 500, 100, 100)])
def test_windows_score_every_target_once_with_the_longest_context(lo, hi, context, stride):
    seen = np.zeros(hi, dtype=int)
    for w in plan_windows(lo, hi, context, stride):
        assert 0 <= w.a < w.c <= w.b + 1 and w.length <= context
        seen[w.c : w.b + 1] += 1
        # every scored target sees the whole window before it: >= context - stride tokens, or all since token 0
        assert w.c - 1 - w.a >= min(context - stride, w.c - 1) or w.a == 0
    assert (seen[lo:hi] == 1).all() and seen[:lo].sum() == 0   # once each, the tail included


def test_documents_tile_the_range():
    tokens = np.array([1, 5, 6, 1, 7, 1, 1, 8, 9, 9])
    docs = documents(tokens, 1, 10, bos=1)
    assert docs == [(1, 4), (4, 6), (6, 7), (7, 10)]   # each ends by predicting the next BOS


@pytest.fixture(scope="module")
def tiny(tiny_data):
    cfg = tiny_config()
    ds = open_dataset(tiny_data.data_dir, tiny_data.tokenizer, tiny_data.vocab_size)
    rng = np.random.default_rng(5)
    params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in init_params(cfg.model, seed=5).items()}
    return cfg, ds, params


def evaluate(cfg, ds, params, tokens=None, **eval_keys):
    pytest.importorskip("mlx.core")
    from mlx_train.session import session_from

    c = replace(cfg, eval=replace(cfg.eval, **eval_keys)).validate()
    return driver.run_eval(session_from(c, params), c, ds.val_tokens if tokens is None else tokens, ds.tables)


def test_sliding_scores_the_flat_tokens_and_bytes(tiny):
    cfg, ds, params = tiny
    flat = evaluate(cfg, ds, params).result
    slide = evaluate(cfg, ds, params, mode="sliding", stride=16).result
    assert (slide.tokens, slide.bytes) == (flat.tokens, flat.bytes)   # eval.max_tokens: the same targets
    # stride = context = seq_len: the flat pass's very windows, so the same figure
    same = evaluate(cfg, ds, params, mode="sliding", stride=cfg.train.seq_len).result
    assert abs(same.val_bpb - flat.val_bpb) < 1e-5 and same.nats != 0   # flat sums in fp32 per batch


def test_whole_split_sliding_adds_exactly_the_ragged_tail(tiny):
    """Flat drops the last (len - 1) % seq_len targets (no whole sequence); sliding scores them too."""
    cfg, ds, params = tiny
    tokens = np.asarray(ds.val_tokens[: 64 * 9 + 23]).astype(np.int64)   # 9 sequences + a 22-target tail
    flat = evaluate(cfg, ds, params, tokens, max_tokens=0).result
    slide = evaluate(cfg, ds, params, tokens, max_tokens=0, mode="sliding", stride=16).result
    n = val_token_count(tokens, cfg.train.seq_len)
    assert flat.tokens == n == 576 and slide.tokens == tokens.size - 1 == n + 22
    assert slide.bytes == flat.bytes + ds.tables.target_bytes(tokens, n + 1, tokens.size)
    assert target_span(tokens, cfg.train.seq_len, 0) == (1, tokens.size)


def test_ttt_improves_on_sliding_at_a_high_lr_on_repeated_text(tiny):
    """TTT learns from what it scored: on text that repeats, later chunks score better than without."""
    cfg, ds, params = tiny
    base = np.asarray(ds.val_tokens[:257]).astype(np.int64)
    tokens = np.concatenate([base, base[1:], base[1:], base[1:]])   # the same 256 tokens four times
    keys = {"max_tokens": 0, "stride": 16}
    slide = evaluate(cfg, ds, params, tokens, mode="sliding", **keys).result
    sgd = evaluate(cfg, ds, params, tokens, mode="ttt", ttt_chunk_tokens=256, ttt_lr=0.05, **keys)
    assert sgd.mode == "ttt-sgd" and (sgd.result.tokens, sgd.result.bytes) == (slide.tokens, slide.bytes)
    assert sgd.result.val_bpb < slide.val_bpb - 0.01


@pytest.mark.parametrize("text,message", [
    ('mode = "twopass"', "eval.mode"), ('ttt = "adam"', "eval.ttt"), ("stride = 0", "eval.stride"),
    ("context = 16\nstride = 32", "must not exceed"), ('lora_targets = "q,lm"', "eval.lora_targets"),
    ("lora_phases = 2", "lora_phase_docs"),
])
def test_bad_eval_settings_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[eval]\n{text}\n")
    with pytest.raises(PgolfError, match=message):
        load_config(path)


def test_cli_eval_reports_mode_and_seconds(tiny_data, tiny, tmp_path):
    pytest.importorskip("mlx.core")
    from click.testing import CliRunner

    from shared.artifact.format import pack, write_artifact
    from shared.cli.train import evaluate as eval_cmd

    cfg, ds, params = tiny
    write_artifact(tmp_path / "model.pgz", pack(params, cfg))
    args = ["--backend", "mlx", str(tmp_path / "model.pgz"), "--data", str(tiny_data.data_dir), "--tokenizer",
            str(tiny_data.tokenizer), "--set", "eval.max_tokens=512", "--json"]
    out = {}
    for mode in ("flat", "sliding", "ttt"):
        res = CliRunner().invoke(eval_cmd, [*args, "--set", f"eval.mode={mode}"])
        assert res.exit_code == 0, res.output
        out[mode] = json.loads(res.output)
        assert out[mode]["eval_seconds"] > 0 and out[mode]["tokens"] == 512
    assert [out[m]["eval_mode"] for m in out] == ["flat", "sliding", "ttt-sgd"]
    assert out["sliding"]["bytes"] == out["flat"]["bytes"] and out["sliding"]["val_bpb"] != out["flat"]["val_bpb"]


def test_train_finishes_with_the_configured_mode(tiny_data, tmp_path):
    """The end of `pgolf train`: q_val_* in eval.mode (here sliding), val_* flat, eval_seconds and the
    share of the 600 s budget in the log."""
    pytest.importorskip("mlx.core")
    from shared.run.backends import get_backend

    cfg = tiny_config(iterations=2)
    cfg = replace(cfg, data=replace(cfg.data, dir=str(tiny_data.data_dir), tokenizer=str(tiny_data.tokenizer)),
                  eval=replace(cfg.eval, mode="sliding", stride=16)).validate()
    summary = get_backend("mlx").train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["eval_mode"] == "sliding" and saved["eval_seconds"] > 0
    assert saved["q_val_bpb"] == summary["q_val_bpb"] and saved["eval_tokens"] == 2048
    assert saved["q_val_bpb"] != saved["val_bpb"]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "evaluation (sliding):" in log and "of the challenge's 600 s evaluation budget" in log


# -- per-document LoRA: #1855's adapter options (benchmarks/fidelity_ttt.py holds them to the record's code)
class RecordingSession:
    """A stand-in backend that scores every target 1 nat and records what the LoRA driver asks of it."""

    rank, world_size = 0, 1

    def __init__(self):
        self.calls: list[tuple] = []
        self.a = {"layer0.q": np.zeros((1, 1, 1), np.float32)}

    def token_nats(self, x, y):   # lora_forwards = 2: row r is document r
        self.calls.append(("score", x.copy(), y.copy(), np.arange(x.shape[0]), None))
        return np.ones(x.shape)

    def lora_score(self, rows, x, y, pos, weight, max_tokens=0):   # lora_forwards = 1: the live rows only
        self.calls.append(("score", x.copy(), y.copy(), rows.copy(), weight.copy()))
        return np.ones(pos.shape)

    def lora_train(self, lr, wd, eps=1e-8):
        self.calls.append(("step", None, None, eps))

    def lora_begin(self, a_init, scale, out_dims):
        self.calls.append(("begin", sorted(a_init), dict(out_dims)))

    def lora_reset(self, a=None, keep_a=False):
        self.calls.append(("reset", a is not None, keep_a))

    def lora_a(self):
        return self.a

    def lora_step(self, x, y, mask, lr, wd, eps=1e-8):
        self.calls.append(("step", x.copy(), mask.copy(), eps))

    def lora_end(self):
        self.calls.append(("end",))


def lora_run(tokens, **keys):
    cfg = tiny_config()
    e = replace(cfg.eval, mode="ttt", ttt="lora", max_tokens=0, context=8, stride=4, lora_chunk=4, lora_docs=2, **keys)
    cfg = replace(cfg, eval=e).validate()
    s = RecordingSession()
    driver.run_eval(s, cfg, tokens, type("OneByte", (), {"target_bytes": lambda self, t, a, b: b - a})())
    return s.calls


def test_lora_sites_per_slot_with_a_head_and_the_block_layout():
    cfg = load_config("configs/record.toml")
    m, e = cfg.model, cfg.eval
    shapes = driver.lora_shapes(m, e)
    slots = len(m.layer_order())
    assert slots > m.num_layers   # the looped order repeats layers: one adapter set per position
    assert shapes["head"] == (m.model_dim, m.vocab_size)
    assert {n.split(".")[1] for n in shapes if n != "head"} == {"q", "k", "v", "o_in", "mlp"}
    assert len(shapes) == 5 * slots + 1 and shapes[f"slot{slots - 1}.mlp"] == (m.model_dim, m.model_dim)
    plain = driver.lora_shapes(m, replace(e, lora_per_slot=False, lora_layout="proj", lora_targets="o,mlp"))
    assert set(plain) == {f"layer{i}.{k}" for i in range(m.num_layers) for k in ("o", "fc", "proj")}
    a = driver.lora_init(m, e)["head"]
    assert a.shape == (e.lora_docs, e.lora_rank, m.model_dim) and np.abs(a).max() <= 1 / np.sqrt(m.model_dim)


@pytest.mark.parametrize("forwards", [1, 2])
def test_lora_document_tail_window_and_no_step_on_a_last_chunk(forwards):
    tokens = np.concatenate([[1], np.arange(2, 11), [1], np.arange(20, 25)])   # documents of 10 and 5 targets
    for tail, window in (("chunk", [6, 7, 8, 9, 10, 1, 0, 0]), ("document", [4, 5, 6, 7, 8, 9, 10, 1])):
        calls = lora_run(tokens, lora_tail=tail, lora_train_last=False, lora_forwards=forwards)
        scores = [c for c in calls if c[0] == "score"]
        steps = [c for c in calls if c[0] == "step"]
        # the long document (row 1: sorted by length) scores targets 9, 10 last; context 8, chunk 4:
        # "document" ends its window at the document's end, with all 8 tokens of context
        _, _, y, rows, _ = scores[-1]
        assert list(y[list(rows).index(1)]) == window
        # three chunks of the long document, two of the short one: a step only while a document goes on
        assert len(scores) == 3 and len(steps) == 2
        if forwards == 1:   # the short one's last chunk (the 2nd) is never trained; the last chunk runs 1 row
            assert not scores[1][4][0].any() and scores[1][4][1].any() and list(scores[2][3]) == [1]
        else:
            assert not steps[1][2][0].any() and steps[1][2][1].any()
    assert len([c for c in lora_run(tokens, lora_forwards=forwards) if c[0] == "step"]) == 3   # default: every chunk


def test_lora_warm_a_keeps_a_and_a_short_batch_draws_its_own():
    tokens = np.concatenate([[1], np.arange(2, 7), [1], np.arange(2, 9), [1], np.arange(2, 5)])   # 3 documents
    resets = [c for c in lora_run(tokens, lora_warm_a=True) if c[0] == "reset"]
    # the short batch (the longest document, first) with a fresh A, then the warm A back; the full batch keeps A
    assert resets == [("reset", True, False), ("reset", True, False), ("reset", False, True)]
    assert [c for c in lora_run(tokens) if c[0] == "reset"] == [("reset", False, False)] * 2


def test_lora_batches_are_token_balanced_across_ranks():
    rng = np.random.default_rng(0)
    lengths = np.sort(np.maximum(2, rng.lognormal(6.4, 1.0, 3000).astype(int)))
    docs, s = [], 1
    for n in lengths:
        docs.append((s, s + int(n)))
        s += int(n)
    queue = [b for _, b in driver.length_batches(docs, 16)]
    works = [driver.lora_work(b, 48, 2048) for b in queue]
    owner = driver.partition(works, 8)
    load = np.bincount(owner, weights=works, minlength=8)
    dealt = np.array([sum(works[r::8]) for r in range(8)])   # round robin, for comparison
    assert load.sum() == sum(works) and load.max() / load.mean() < 1.02 < dealt.max() / dealt.mean()
    assert driver.lora_work([(0, 100)], 48, 64) == 48 + 64 + 64   # windows of 48, 64, 64 tokens


def test_lora_short_chunks_pick_each_batch_its_chunk():
    """eval.lora_short_chunks (#2014): a batch whose longest document has at most LIMIT tokens counting its
    BOS (targets + 1) is read in chunks of CHUNK; longer batches in lora_chunk (4 here)."""
    tokens = np.concatenate([[1], np.arange(2, 12), [1], np.arange(2, 5), [1], np.arange(2, 5), [1], [7]])
    # documents of 11, 4, 4 and 1 targets (the last ends the stream); 2 per batch: [1, 4], [4, 11] by length

    def chunks(**keys):
        calls = lora_run(tokens, **keys)
        return [c[4].shape[1] for c in calls if c[0] == "score"]

    assert chunks() == [4, 4, 4, 4]                     # [4, 11] in 3 chunks of 4, then [1, 4] in one
    assert chunks(lora_short_chunks="5:1,12:2") == [2] * 6 + [1] * 4   # 12 tokens >= the long document's
    assert chunks(lora_short_chunks="11:2,5:1") == [4, 4, 4] + [1] * 4   # sorted; 11 < 12: the default
    assert chunks(lora_short_chunks="4:1") == [4, 4, 4, 4]   # 4 targets are 5 tokens: past the limit


@pytest.mark.parametrize("text", ["lora_short_chunks = \"256\"", "lora_short_chunks = \"256:0\"",
                                  "lora_short_chunks = \"a:8\""])
def test_bad_lora_short_chunks_is_a_one_line_error(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(f"[eval]\n{text}\n")
    with pytest.raises(PgolfError, match="eval.lora_short_chunks"):
        load_config(path)


@pytest.mark.torch
def test_lora_short_chunks_change_the_scores_and_both_backends_agree(tiny):
    """The schedule changes the evaluation it claims to (shorter chunks: more adapter steps) and MLX and
    torch give the same scores (the driver is shared; TTT_TOL as the parity suite)."""
    pytest.importorskip("torch")
    from cuda_train.session import session_from as torch_session
    from shared.tools.parity import TTT_TOL

    cfg, ds, params = tiny
    keys = {"mode": "ttt", "ttt": "lora", "max_tokens": 512, "lora_docs": 2, "lora_chunk": 32, "lora_rank": 2,
            "lora_alpha": 2.0, "lora_lr": 0.01}
    plain = evaluate(cfg, ds, params, **keys).result
    short = evaluate(cfg, ds, params, lora_short_chunks="100000:8", **keys).result
    assert (short.tokens, short.bytes) == (plain.tokens, plain.bytes) and short.val_bpb != plain.val_bpb
    c = replace(cfg, eval=replace(cfg.eval, lora_short_chunks="100000:8", **keys)).validate()
    other = driver.run_eval(torch_session(c, params), c, ds.val_tokens, ds.tables).result
    assert abs(other.val_bpb - short.val_bpb) <= TTT_TOL


def test_lora_forwards_hold_at_most_a_training_micro_batch():
    """eval.lora_max_tokens = 0: each LoRA forward takes at most train.batch_tokens / grad_accum input tokens
    (or train.max_microbatch_tokens), so the evaluation holds no more activations than a training step."""
    tokens = np.concatenate([[1], np.arange(2, 12), [1], np.arange(2, 5)])

    def caps(**keys):
        cfg = tiny_config(**keys.pop("train", {}))
        e = replace(cfg.eval, mode="ttt", ttt="lora", max_tokens=0, context=8, stride=4, lora_chunk=4, lora_docs=2,
                    **keys)
        s = RecordingSession()
        seen = []
        s.lora_score = lambda rows, x, y, pos, weight, max_tokens=0: seen.append(max_tokens) or np.ones(pos.shape)
        driver.run_eval(s, replace(cfg, eval=e).validate(), tokens,
                        type("OneByte", (), {"target_bytes": lambda self, t, a, b: b - a})())
        return set(seen)

    assert caps() == {1024 // 2}                                     # tiny_config: 1,024 tokens, grad_accum 2
    assert caps(train={"max_microbatch_tokens": 128}) == {128}
    assert caps(lora_max_tokens=7) == {7}


@pytest.mark.torch
def test_lora_score_in_pieces_gives_the_whole_batch_scores_and_step():
    """Rows in pieces of at most max_tokens input tokens: the same nats, and (each adapter row's gradient
    comes from its own input row only) the same Adam step."""
    pytest.importorskip("torch")
    from cuda_train.session import session_from as torch_session

    cfg = tiny_config()
    cfg = replace(cfg, eval=replace(cfg.eval, lora_docs=3, lora_rank=2, lora_targets="q,v,mlp,head")).validate()
    rng = np.random.default_rng(1)
    params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
              for k, v in init_params(cfg.model, seed=1).items()}
    x = rng.integers(2, cfg.model.vocab_size, (3, 24))
    y = rng.integers(2, cfg.model.vocab_size, (3, 24))
    pos = np.tile(np.arange(16, 24), (3, 1))
    weight = np.full((3, 8), 1 / 8, dtype=np.float32)
    out_dims = {n: o for n, (_, o) in driver.lora_shapes(cfg.model, cfg.eval).items()}
    runs = []
    for cap in (0, 24, 48):   # all 3 rows at once, 1 row per forward, 2 rows then 1
        s = torch_session(cfg, params)
        s.lora_begin(driver.lora_init(cfg.model, cfg.eval), 1.0, out_dims)
        first = s.lora_score(np.array([0, 1, 2]), x, y, pos, weight, cap)
        s.lora_train(0.01, 0.0)
        runs.append((first, s.lora_score(np.array([0, 2, 1]), x, y, pos, weight, cap)))
    for first, second in runs[1:]:
        np.testing.assert_allclose(first, runs[0][0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(second, runs[0][1], rtol=0, atol=1e-6)
    assert not np.allclose(runs[0][1], runs[0][0])   # the step changed the scores


@pytest.mark.torch
@pytest.mark.parametrize("forwards", [1, 2])
def test_fused_adapter_adamw_scores_as_the_foreach_one(tiny, forwards):
    """The adapters' AdamW in torch's fused kernel (#1855 uses AdamW(fused=True)) and in foreach kernels:
    the same per-target scores over a LoRA TTT evaluation with weight decay, to a few float32 ulps (measured:
    9.5e-7 at 4-8 nats), from either path's gradients (autograd.grad's may be strided: lora_forwards = 2)."""
    pytest.importorskip("torch")
    from cuda_train.session import session_from as torch_session

    cfg, ds, params = tiny
    c = replace(cfg, eval=replace(cfg.eval, mode="ttt", ttt="lora", max_tokens=512, lora_docs=2, lora_chunk=32,
                                  lora_rank=2, lora_alpha=2.0, lora_lr=0.01, lora_wd=0.5,
                                  lora_forwards=forwards)).validate()
    nats = []
    for fused in (True, False):
        s = torch_session(c, params)
        s.fused_adam = fused
        nats.append(driver.run_eval(s, c, ds.val_tokens, ds.tables).ledger.nats)
    assert np.abs(nats[0] - nats[1]).max() <= 4e-6
    base = replace(c, eval=replace(c.eval, lora_lr=0.0))
    assert np.abs(driver.run_eval(torch_session(base, params), base, ds.val_tokens, ds.tables).ledger.nats
                  - nats[0]).max() > 1e-3   # the steps moved the scores


@pytest.mark.slow
@pytest.mark.torch
def test_compiled_lora_ttt_traces_one_graph_for_every_width_and_scores_as_eager(tiny):
    """eval.lora_compile's function under torch.compile(dynamic=True): no graph break, one graph for every
    window width (two: dynamo specialises a single row), the eager path's scores. The CPU runs it through the
    aot_eager backend (dynamo's trace and AOT autograd, not inductor's kernels: eval.lora_compile is for CUDA)."""
    torch = pytest.importorskip("torch")
    from torch._dynamo.utils import counters

    from cuda_train import session as ts

    cfg, ds, params = tiny
    c = replace(cfg, eval=replace(cfg.eval, mode="ttt", ttt="lora", max_tokens=256, lora_docs=2, lora_chunk=32,
                                  lora_rank=2, lora_alpha=2.0, lora_lr=0.01, lora_targets="q,k,v,o,mlp,head")).validate()
    tokens = np.asarray(ds.val_tokens[:257]).astype(np.int64)
    tokens[[100, 150]] = 1   # three documents: a batch of two rows, then one of one
    eager = driver.run_eval(ts.session_from(c, params), c, tokens, ds.tables).ledger.nats
    torch._dynamo.reset()
    counters.clear()
    s = ts.session_from(c, params)
    s.ttt_compile = True
    s._ttt_nats = torch.compile(ts.ttt_nats, dynamic=True, backend="aot_eager")
    compiled = driver.run_eval(s, c, tokens, ds.tables).ledger.nats
    assert np.abs(compiled - eager).max() <= 1e-6
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 2
