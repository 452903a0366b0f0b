"""Document-isolated attention through FlashAttention's varlen entry: segment starts from the host.

No FA3 runs on this CPU, so a stand-in with the kernel's contract (packed q/k/v [tokens, heads, dim],
int32 `cu_seqlens` padded with empty segments, causal within each segment) is registered as a custom op,
as FA3 registers its own, and put where the model looks for FA3."""

from __future__ import annotations

import numpy as np
import pytest

from shared.core.spec import BOS_ID, doc_segments, init_params, segment_starts
from tests.conftest import tiny_config

torch = pytest.importorskip("torch")
F = torch.nn.functional


def test_segment_starts_are_where_doc_segments_begin_padded_to_the_bucket():
    rng = np.random.default_rng(0)
    for rows, t, cap in [(1, 64, 0), (3, 40, 7), (2, 33, 16), (4, 8, 3)]:
        idx = rng.integers(0, 20, size=(rows, t))
        idx[rng.random(idx.shape) < 0.1] = BOS_ID
        cu = segment_starts(idx, cap, bucket=16)
        seg = doc_segments(idx, cap)
        starts = [r * t + c for r in range(rows) for c in range(t) if c == 0 or seg[r, c] != seg[r, c - 1]]
        assert cu.dtype == np.int32 and cu.size % 16 == 0
        assert cu[: len(starts)].tolist() == starts
        assert (cu[len(starts):] == rows * t).all()   # the padding: empty segments at the end
        assert np.diff(cu).min() >= 0 and np.diff(cu[: len(starts) + 1]).max() <= (cap or t)


def _varlen_reference(q, k, v, cu):
    parts = []
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            qs, ks, vs = (z[a:b].transpose(0, 1)[None] for z in (q, k, v))
            parts.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                        enable_gqa=k.size(1) != q.size(1))[0].transpose(0, 1))
    return torch.cat(parts)


@torch.library.custom_op("pgolf_test::varlen", mutates_args=())
def _varlen_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    return _varlen_reference(q, k, v, cu)


@_varlen_op.register_fake
def _(q, k, v, cu):
    return torch.empty_like(q)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


@torch.library.custom_op("pgolf_test::varlen_bwd", mutates_args=())
def _varlen_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    raise NotImplementedError("traced only: the compiled test runs no backward")


@_varlen_bwd.register_fake
def _(q, k, v, cu, grad):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _backward(ctx, grad):
    return (*_varlen_bwd(*ctx.saved_tensors, grad), None)


_varlen_op.register_autograd(_backward, setup_context=_setup)


def fake_fa3_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
    assert causal and cu_q is cu_k and cu_q.dtype == torch.int32
    # traced as one opaque op (as FA3's registered op is); eager autograd runs through SDPA itself
    return _varlen_op(q, k, v, cu_q) if torch.compiler.is_compiling() else _varlen_reference(q, k, v, cu_q)


@pytest.fixture
def cfg():
    c = tiny_config()
    from dataclasses import replace
    return replace(c, model=replace(c.model, doc_attention=True, doc_max_len=6)).validate()


@pytest.fixture
def fa3(monkeypatch):
    """The model's FA3 varlen path switched on, with the stand-in kernel."""
    from cuda_train import model as M
    from cuda_train import session as S

    monkeypatch.setattr(M, "_fa3_varlen", fake_fa3_varlen)
    monkeypatch.setattr(M, "varlen_ready", lambda device, dtype: True)
    monkeypatch.setattr(S, "varlen_ready", lambda device, dtype: True)


def _batch(cfg, rows=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(4, cfg.model.vocab_size, size=(rows, 24))
    x[rng.random(x.shape) < 0.15] = BOS_ID
    y = np.roll(x, -1, axis=1)
    return x, y


def _params(cfg):
    """Init weights plus noise: zero-initialised projections would make attention contribute nothing."""
    rng = np.random.default_rng(0)
    return {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in init_params(cfg.model, 0).items()}


def _model(cfg):
    from cuda_train.model import build_model
    return build_model(cfg.model, _params(cfg))


def test_varlen_with_host_starts_equals_the_masked_sdpa_path(cfg, monkeypatch):
    x, y = _batch(cfg)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = _model(cfg)
    with torch.no_grad():
        masked = [float(model(xt, yt)), float(model(xt.reshape(1, -1), yt.reshape(1, -1)))]
    from cuda_train import model as M
    monkeypatch.setattr(M, "_fa3_varlen", fake_fa3_varlen)
    monkeypatch.setattr(M, "varlen_ready", lambda device, dtype: True)
    with torch.no_grad():
        rows = float(model(xt, yt, cu=torch.from_numpy(segment_starts(x, 6))))              # evaluation's layout
        stream = float(model(xt.reshape(1, -1), yt.reshape(1, -1),                           # training's: one row
                             cu=torch.from_numpy(segment_starts(x.reshape(1, -1), 6))))
        on_device = float(model(xt, yt))                                                      # cu found by nonzero()
    assert masked[0] != pytest.approx(masked[1], abs=1e-6)   # the two layouts do differ
    assert [rows, stream, on_device] == pytest.approx([masked[0], masked[1], masked[0]], abs=1e-5)


def test_compiled_forward_with_host_starts_has_no_data_dependent_op(cfg, fa3):
    """With `cu` from the host the forward compiles as one graph (fullgraph) without nonzero(), a
    data-dependent shape that waits for the GPU in every layer; without it, the graph holds one."""
    import torch._dynamo

    x, y = _batch(cfg)
    xt, yt = torch.from_numpy(x).reshape(1, -1), torch.from_numpy(y).reshape(1, -1)
    model = _model(cfg)
    cu = torch.from_numpy(segment_starts(x.reshape(1, -1), 6))
    eager = model(xt, yt, cu=cu).item()
    graphs: list[str] = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    for kwargs in ({"cu": cu}, {}):
        torch._dynamo.reset()
        graphs.clear()
        got = torch.compile(model, fullgraph=True, backend=backend, dynamic=False)(xt, yt, **kwargs).item()
        assert got == pytest.approx(eager, abs=1e-5)
        assert len(graphs) == 1
        assert ("nonzero" in graphs[0]) == (not kwargs)
    torch._dynamo.reset()


def test_training_steps_with_host_starts_equal_the_masked_path(cfg, monkeypatch):
    """The session cuts a micro-batch into chunks (train.max_microbatch_tokens) and passes each chunk's
    starts: the same losses as the SDPA path over 3 steps."""
    from dataclasses import replace

    from cuda_train import runtime
    from cuda_train import session as S

    cfg = replace(cfg, train=replace(cfg.train, seq_len=24, batch_tokens=96, max_microbatch_tokens=48)).validate()
    batches = [[_batch(cfg, rows=4, seed=s)] for s in range(3)]

    def losses():
        s = S.TorchSession(cfg, runtime.Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
        s.load_weights(_params(cfg))
        return s.host_cu, [s.step(b, 1.0, 0.95) for b in batches]

    host_off, masked = losses()
    from cuda_train import model as M
    monkeypatch.setattr(M, "_fa3_varlen", fake_fa3_varlen)
    monkeypatch.setattr(M, "varlen_ready", lambda device, dtype: True)
    monkeypatch.setattr(S, "varlen_ready", lambda device, dtype: True)
    host_on, varlen = losses()
    assert (host_off, host_on) == (False, True)
    assert varlen == pytest.approx(masked, abs=1e-5)
