"""Fidelity of the optimizer: pgolf's Muon + Adam step against the record's own code (PR #1855).

    python -m benchmarks.fidelity_optim --record /path/to/train_gpt.py
    rows = compare("/path/to/train_gpt.py")      # [{what, max_abs_diff, max_rel_diff, ok}, ...]

Both sides start from the same weights (the record's initialisation of a small record-shaped model:
6 layers x 128, layers 2-3 looped, lanes from layer 4, every gate on) and receive the same random
gradients for 3 steps (norms large enough that the 0.3 clip acts, learning rates and Muon momentum
from the record's schedule). pgolf runs its `Optimizers` with `configs/record.toml`'s [optim]; the
record runs its `Optimizers.step` after `clip_grad_norm_` over every parameter, as its `step_fn`.
pgolf's per-layer matrices are the record's bank slices (`shared.core.spec.record_banks`).

- bf16: the record's precision as trained (`.bfloat16()` then `restore_fp32_params`: the token
  embedding stays bf16, everything else fp32; Muon in bf16). pgolf's embedding weight is cast
  to bf16 likewise and its Newton-Schulz runs in bf16. Expected: bitwise equal.
- fp32: every weight fp32; the record's two hard-coded bf16 casts (gradient and Newton-Schulz
  input) are redirected to fp32 during its step, pgolf runs `optim.muon_momentum_dtype =
  "float32"` with fp32 Newton-Schulz. Expected: within 1e-6 relative.

Both eager on the CPU (the shim's `torch.compile` is the identity). The record's `Optimizers`
creates and waits on CUDA streams; those calls are made inert here, around the record only.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import replace
from pathlib import Path

import torch

from shared.core.config import load_config
from shared.core.spec import param_table, record_banks

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
LR_SCALES = (1.0, 0.8, 0.5)
RENAMES = {"lane_route": "parallel_post_lambdas", "lane_scale": "parallel_resid_lambdas",
           "smear.weight": "smear_gate.weight", "smear.lam": "smear_lambda"}

# The small record-shaped model (the record's Hyperparameters names) and the same model in pgolf's config.
RECORD_SHAPE = dict(vocab_size=256, num_layers=6, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
                    rope_dims=16, xsa_last_n=6, loop_start=2, loop_end=3, num_loops=2, parallel_start_layer=4,
                    train_seq_len=64, rope_train_seq_len=64)
PGOLF_SHAPE = dict(vocab_size=256, num_layers=6, model_dim=128, num_heads=4, num_kv_heads=2, mlp_mult=4.0,
                   rope_dims=16, xsa_last_n=6, loop_start=2, loop_end=3, num_loops=2, parallel_from=4)


def logged_hparams(record_path: str) -> dict:
    """The record's hyperparameters as run: the `Hyperparameters:` block at the top of a train_seed*.log
    beside the script (these override the script's defaults). Values stay strings; see `_typed`."""
    logs = sorted(Path(record_path).resolve().parent.glob("train_seed*.log"))
    if not logs:
        return {}
    out, inside = {}, False
    for line in logs[0].read_text(errors="replace").splitlines():
        if line.startswith("Hyperparameters:"):
            inside = True
        elif inside and line.startswith("  ") and ":" in line:
            k, _, v = line.strip().partition(":")
            out[k] = v.strip()
        elif inside and out:
            break
    return out


def _typed(h, logged: dict, keys) -> dict:
    """Logged values of `keys`, typed after the record's defaults."""
    out = {}
    for k in keys:
        if k in logged and hasattr(h, k):
            d = getattr(h, k)
            v = logged[k]
            out[k] = (v == "True") if isinstance(d, bool) else type(d)(v) if isinstance(d, (int, float)) else v
    return out


# What the optimizer comparison takes from the record's run: its optimizer and the model options that add
# parameters (the shape is RECORD_SHAPE's).
LOGGED_KEYS = ("matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "muon_momentum", "muon_momentum_warmup_start",
               "muon_momentum_warmup_steps", "muon_backend_steps", "muon_row_normalize", "muon_wd", "embed_wd",
               "adam_wd", "adam_eps", "beta1", "beta2", "grad_clip_norm", "tie_embeddings", "smear_gate_enabled",
               "sparse_attn_gate_enabled", "skip_gates_enabled", "gate_window", "ln_scale", "qk_gain_init",
               "parallel_final_lane")


def record_views(rec_model: torch.nn.Module, m) -> dict[str, torch.Tensor]:
    """pgolf's parameter names -> the record's tensors (bank slices are views), in pgolf's table order."""
    named = dict(rec_model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for bank, names in record_banks(m).items():
        for j, n in enumerate(names):
            out[n] = named[bank].data[j]
    for n in param_table(m):
        if n in out:
            continue
        r = RENAMES.get(n) or re.sub(r"^(blocks\.\d+\.attn)\.gate$", r"\1.attn_gate_w", n)
        out[n] = named[r].data
    return {n: out[n] for n in param_table(m)}


@contextlib.contextmanager
def _inert_cuda_streams():
    """The record's Optimizers runs Adam on a side CUDA stream: on the CPU the stream calls do nothing."""
    class _Stream:
        def wait_stream(self, other):
            pass

    saved = torch.cuda.Stream, torch.cuda.stream, torch.cuda.current_stream
    torch.cuda.Stream = lambda *a, **k: _Stream()
    torch.cuda.stream = lambda s: contextlib.nullcontext()
    torch.cuda.current_stream = lambda *a, **k: _Stream()
    try:
        yield
    finally:
        torch.cuda.Stream, torch.cuda.stream, torch.cuda.current_stream = saved


@contextlib.contextmanager
def _bf16_casts_are_fp32():
    """Redirects `Tensor.bfloat16()` to fp32 (the record's Muon hard-codes its bf16 casts)."""
    saved = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *a, **k: self.float()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = saved


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|): relative to the tensor's scale, not element by element
    (zero-initialised projections hold values near 0)."""
    a, b = a.double(), b.double()
    d = float((a - b).abs().max())
    return d, d / max(float(b.abs().max()), 1e-30)


def _run(record_path: str, precision: str, **optim_changes) -> list[dict]:
    import torch._dynamo  # noqa: F401  (before the shim's stand-in triton: torch's optimizers import dynamo)

    from benchmarks.record_shim import load_record, record_hparams
    from cuda_train.model import GPT
    from cuda_train.optim import Optimizers

    rec = load_record(record_path)
    h0 = rec.Hyperparameters()
    h = record_hparams(rec, **{**_typed(h0, logged_hparams(record_path), LOGGED_KEYS), **RECORD_SHAPE})
    cfg = load_config(REPO / "configs" / "record.toml")
    m = replace(cfg.model, **PGOLF_SHAPE)
    o = cfg.optim if precision == "bf16" else replace(cfg.optim, muon_momentum_dtype="float32")
    o = replace(o, **optim_changes)
    # The schedule of the record's step_fn at its first steps (pgolf: shared.core.schedule.muon_momentum).
    ours = (o.matrix_lr, o.scalar_lr, o.tied_embed_lr, o.muon_momentum, o.muon_momentum_warmup_start,
            o.muon_momentum_warmup_steps, o.muon_wd, o.embed_wd, o.scalar_wd, o.adam_eps, o.beta1, o.beta2,
            o.grad_clip_norm, o.muon_row_norm)
    theirs = (h.matrix_lr, h.scalar_lr, h.tied_embed_lr, h.muon_momentum, h.muon_momentum_warmup_start,
              h.muon_momentum_warmup_steps, h.muon_wd, h.embed_wd, h.adam_wd, h.adam_eps, h.beta1, h.beta2,
              h.grad_clip_norm, h.muon_row_normalize)
    if ours != theirs:
        raise ValueError(f"configs/record.toml's [optim] {ours} is not the record's {theirs}")

    torch.manual_seed(0)
    r_model = rec.GPT(h)
    if precision == "bf16":
        r_model = r_model.bfloat16()
        rec.restore_fp32_params(r_model)
    views = record_views(r_model, m)
    p_model = GPT(m)
    p_named = dict(p_model.named_parameters())
    with torch.no_grad():
        for n, p in p_named.items():
            if views[n].dtype != p.dtype:  # the record's bf16 embedding weight
                p.data = p.data.to(views[n].dtype)
            p.copy_(views[n])
    with _inert_cuda_streams():
        r_opt = rec.Optimizers(h, r_model)
    p_opt = Optimizers(p_model, o, m.tie_embeddings, ns_dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                       fused=True)
    r_clip = [p for p in r_model.parameters() if p.requires_grad]
    r_named = dict(r_model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    table = param_table(m)
    for k in range(STEPS):
        grads = {n: torch.randn(p.shape, generator=gen) * (0.02 if table[n].group == "matrix" else 0.5)
                 for n, p in p_named.items()}
        for n, p in p_named.items():
            p.grad = grads[n].to(p.dtype, copy=True)
        for bank, names in record_banks(m).items():
            r_named[bank].grad = torch.stack([grads[n] for n in names]).to(r_named[bank].dtype)
        for n in table:
            if not any(n in names for names in record_banks(m).values()):
                t = views[n]
                owner = next(p for p in r_named.values() if p.data.data_ptr() == t.data_ptr())
                owner.grad = grads[n].to(owner.dtype, copy=True)
        frac = min(k / h.muon_momentum_warmup_steps, 1.0)
        momentum = (1 - frac) * h.muon_momentum_warmup_start + frac * h.muon_momentum
        scale = LR_SCALES[k]
        # the record: step_fn's schedule and clip, then Optimizers.step
        for g in r_opt.optimizer_muon.param_groups:
            g["momentum"] = momentum
        for opt in r_opt:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
        torch.nn.utils.clip_grad_norm_(r_clip, h.grad_clip_norm)
        with _inert_cuda_streams(), (_bf16_casts_are_fp32() if precision == "fp32" else contextlib.nullcontext()):
            r_opt.step(distributed=False)
        p_opt.set_schedule(scale, momentum)
        p_opt.step()
        p_opt.zero_grad()

    rows = []
    tol = 0.0 if precision == "bf16" else 1e-6
    for group, label in (("matrix", "Muon matrices"), ("embed", "Adam embedding"), ("scalar", "Adam vectors")):
        names = [n for n in table if table[n].group == group]
        diffs = [_diff(p_named[n].detach(), views[n]) for n in names]
        a, r = max(d[0] for d in diffs), max(d[1] for d in diffs)
        rows.append({"what": f"{precision}: {label} after {STEPS} steps", "max_abs_diff": a, "max_rel_diff": r,
                     "ok": a == 0.0 if tol == 0.0 else r <= tol})
    # Muon's momentum: the record's buffers are per bank (state of the bank parameter)
    diffs = []
    for bank, names in record_banks(m).items():
        r_buf = r_opt.optimizer_muon.state[r_named[bank]]["momentum_buffer"]
        for j, n in enumerate(names):
            diffs.append(_diff(p_opt.muon.state[p_named[n]]["momentum_buffer"].float(), r_buf[j].float()))
    a, r = max(d[0] for d in diffs), max(d[1] for d in diffs)
    rows.append({"what": f"{precision}: Muon momentum after {STEPS} steps", "max_abs_diff": a, "max_rel_diff": r,
                 "ok": a == 0.0 if tol == 0.0 else r <= tol})
    return rows


def compare(record_path: str) -> list[dict]:
    """One table: pgolf's optimizer steps against the record's, bf16 (bitwise) and fp32 (1e-6 relative)."""
    return _run(record_path, "bf16") + _run(record_path, "fp32")


# Each of pgolf's record-numerics options set back to pgolf's default, one at a time: what it changes. The row
# norm's eps is lost in bf16 rounding (norm + 1e-7 rounds to norm), so that option is shown in fp32.
ABLATIONS = (("bf16", "muon_momentum_dtype", "float32"), ("bf16", "muon_ns_form", "baseline"),
             ("bf16", "grad_clip_banks", False), ("fp32", "muon_row_norm_eps", "add"),
             ("bf16", "muon_row_norm_eps", "add"))


def ablation(record_path: str) -> list[dict]:
    """The comparison with one option at pgolf's default each (the Muon matrices' row)."""
    rows = []
    for precision, key, value in ABLATIONS:
        r = _run(record_path, precision, **{key: value})[0]
        rows.append({**r, "what": f"{precision}, {key}={value!r}: Muon matrices"})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'what':<56} {'max_abs_diff':>13} {'max_rel_diff':>13}  ok", "-" * 90]
    lines += [f"{r['what']:<56} {r['max_abs_diff']:>13.3e} {r['max_rel_diff']:>13.3e}  {'yes' if r['ok'] else 'NO'}"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", required=True, help="the record's train_gpt.py (read, never copied)")
    ap.add_argument("--ablate", action="store_true", help="also show each record option set back to pgolf's default")
    args = ap.parse_args(argv)
    if not Path(args.record).is_file():
        print(f"error: --record {args.record}: no such file; give the path of the record's train_gpt.py",
              file=sys.stderr)
        return 2
    try:
        rows = compare(args.record)
    except ValueError as e:  # record.toml's [optim] is not what the record ran
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.ablate:
        print("\n" + format_table(ablation(args.record)))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
