"""Import a record's own `train_gpt.py` on a CPU, for fidelity comparisons (benchmarks/fidelity.py).

    from benchmarks.record_shim import load_record
    rec = load_record("path/to/train_gpt.py")          # a module; rec.GPT, rec.Hyperparameters, ...
    h = record_hparams(rec, num_layers=6, model_dim=128)

The record is read from the path given and never copied into pgolf. Its GPU-only imports are replaced
before it runs: `flash_attn_interface` by scaled-dot-product attention (the varlen call attends within
each `cu_seqlens` segment, causally, as FlashAttention does), `triton` by inert stand-ins (its kernels are
defined but never launched), and the fused LeakyReLU^2 MLP by its eager formula. With `eager=True`
(default) `torch.compile` is the identity while the file is imported, so its Newton-Schulz runs eagerly.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """FlashAttention's layout [batch, seq, heads, dim] through SDPA (GQA broadcast)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.size(1) != q.size(1))
    return y.transpose(1, 2)


def flash_attn_func(q, k, v, causal=False, **_):
    return _sdpa(q, k, v, causal)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=0, max_seqlen_k=0,
                           causal=False, window_size=(-1, -1), **_):
    """q/k/v [total, heads, dim]; attention never crosses a boundary of cu_seqlens (padded entries repeat
    the total length and give empty segments)."""
    if not torch.equal(cu_seqlens_q, cu_seqlens_k):
        raise NotImplementedError("the shim supports cu_seqlens_q == cu_seqlens_k only")
    bounds = cu_seqlens_q.tolist()
    out = torch.empty_like(q)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            out[a:b] = _sdpa(q[None, a:b], k[None, a:b], v[None, a:b], causal)[0]
    return out


class _Inert:
    """Stands for any triton object: callable, indexable, attribute-rich, and never launched."""

    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        if len(a) == 1 and callable(a[0]) and not k:
            return a[0]  # used as a bare decorator
        return _Inert()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Inert()

    def __getitem__(self, item):
        return _Inert()


def _fake_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    def getattr_(attr: str):
        if attr.startswith("__"):  # module machinery (inspect, pickle) must see a plain module
            raise AttributeError(attr)
        return _Inert()

    mod.__getattr__ = getattr_  # type: ignore[attr-defined]
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _install_fakes() -> dict[str, types.ModuleType]:
    triton = _fake_module("triton", jit=lambda fn=None, **k: fn if fn is not None else (lambda f: f),
                          cdiv=lambda a, b: (a + b - 1) // b)
    tl = _fake_module("triton.language", constexpr=type("constexpr", (), {}))
    tools = _fake_module("triton.tools")
    desc = _fake_module("triton.tools.tensor_descriptor", TensorDescriptor=_Inert)
    triton.language, triton.tools, tools.tensor_descriptor = tl, tools, desc
    fa = _fake_module("flash_attn_interface", flash_attn_func=flash_attn_func,
                      flash_attn_varlen_func=flash_attn_varlen_func)
    fakes = {}
    for name, mod in (("triton", triton), ("triton.language", tl), ("triton.tools", tools),
                      ("triton.tools.tensor_descriptor", desc), ("flash_attn_interface", fa)):
        if name not in sys.modules:
            sys.modules[name] = fakes[name] = mod
    return fakes


def _eager_leaky_mlp(x: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor) -> torch.Tensor:
    return F.linear(F.leaky_relu(F.linear(x, up_w), negative_slope=0.5).square(), down_w)


_LOADED: dict[tuple[str, bool], types.ModuleType] = {}


def load_record(path: str | Path, eager: bool = True) -> types.ModuleType:
    """The record's train_gpt.py as a module (cached per path). Its Hyperparameters read the environment
    when the file is imported: the fused (triton) cross-entropy is switched off here."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"record script not found: {path}")
    key = (str(path), eager)
    if key in _LOADED:
        return _LOADED[key]
    import torch._dynamo  # noqa: F401  (torch looks for triton once, here: before the stand-ins exist)

    fakes = _install_fakes()
    os.environ.setdefault("FUSED_CE_ENABLED", "0")
    spec = importlib.util.spec_from_file_location(f"record_{abs(hash(key))}", path)
    mod = importlib.util.module_from_spec(spec)
    real_compile = torch.compile
    if eager:
        torch.compile = lambda fn=None, **k: fn if fn is not None else (lambda f: f)  # type: ignore[assignment]
    try:
        spec.loader.exec_module(mod)
    finally:
        torch.compile = real_compile
        for name in fakes:  # the record holds its references; nothing else may mistake them for triton
            sys.modules.pop(name, None)
    if hasattr(mod, "FusedLeakyReLUSquareMLP"):
        mod.FusedLeakyReLUSquareMLP = _eager_leaky_mlp
    if getattr(mod, "BOS_ID", 1) is None:
        mod.BOS_ID = 1  # the record sets it when its loader first reads a shard; SentencePiece's BOS id
    _LOADED[key] = mod
    return mod


def record_hparams(mod: types.ModuleType, **overrides):
    """An instance of the record's Hyperparameters with attributes overridden (names as in the record)."""
    h = mod.Hyperparameters()
    for k, v in overrides.items():
        if not hasattr(h, k):
            raise AttributeError(f"the record's Hyperparameters has no {k!r}")
        setattr(h, k, v)
    return h
