"""Fused Triton kernels for the training step (train.fused_kernels = "auto"), ideas from the record PR #1855.

    leaky_mlp(x, w_fc, w_proj, slope)   # proj(leaky_relu(fc(x), slope) ** 2); slope 0 is relu ** 2
    softcap_cross_entropy(z, y, cap)    # cross_entropy(cap * tanh(z / cap), y), z the head's raw logits

Both are `torch.autograd.Function`s around `torch.library.custom_op`s with fake impls, so
`torch.compile(fullgraph=True)` keeps them as opaque calls. They compute the eager path's numbers
(cuda_train/model.py `MLP`, `GPT.softcap` + `F.cross_entropy`) up to the order of float sums (and,
in bf16, a softcap kept in float32 where eager rounds it to bf16): the MLP's up-projection writes its pre-activation and the squared activation from the same rounded
value the eager path would hold, and its backward applies the activation's derivative to the
down-projection's input gradient inside that matmul; the loss applies the softcap in registers and
never stores softcapped logits (the backward recomputes them). Plain pointer loads only, so
`TRITON_INTERPRET=1` runs every kernel on CPU tensors (benchmarks/kernel_check.py, tests/test_kernels.py).
A training run imports this module only from cuda_train/session.py, on CUDA with triton present.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

_LIB = "pgolf_kernels"
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # the Triton interpreter runs the kernels on CPU tensors


def _act_grad_scale(slope: float) -> float:
    """d/dh of leaky_relu(h, slope)**2 for h <= 0 is 2 * slope**2 * h."""
    return 2.0 * slope * slope


# --- LeakyReLU(slope)^2 MLP ------------------------------------------------------------------------------------

@triton.jit
def _mlp_kernel(a_ptr, b_ptr, pre_ptr, out_ptr, M, N, K,
                s_am, s_ak, s_bk, s_bn, s_pm, s_pn, s_om, s_on, slope, grad_scale,
                FORWARD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """acc = A[M, K] @ B[K, N] (any strides), then per element
    FORWARD:  pre = acc (rounded to pre's dtype), out = leaky_relu(pre, slope) ** 2
    backward: out = acc (rounded) * d/dh leaky_relu(h, slope)**2 at h = pre (pre_ptr: the saved
              pre-activation, only read)."""
    # row-major over tiles: the weight matrix (a few MB) stays in L2 whatever the order
    pid_m, pid_n = tl.program_id(0) // tl.cdiv(N, BN), tl.program_id(0) % tl.cdiv(N, BN)
    rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
    rk = tl.arange(0, BK).to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * s_am + kk[None, :] * s_ak, mask=(rm[:, None] < M) & (kk[None, :] < K),
                    other=0.0)
        b = tl.load(b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn, mask=(kk[:, None] < K) & (rn[None, :] < N),
                    other=0.0)
        if UPCAST:  # the interpreter multiplies bf16 as raw integers; products of bf16 are exact in float32
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        elif IEEE:  # float32 inputs: full-precision products, as the eager float32 matmul
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    pre_at = pre_ptr + rm[:, None] * s_pm + rn[None, :] * s_pn
    out_at = out_ptr + rm[:, None] * s_om + rn[None, :] * s_on
    dtype = out_ptr.dtype.element_ty
    # the activation reads the value rounded to the compute dtype, as the eager path's separate ops do
    c = acc.to(dtype).to(tl.float32)
    if FORWARD:
        tl.store(pre_at, c.to(dtype), mask=mask)
        h = tl.where(c > 0, c, slope * c)
        tl.store(out_at, (h * h).to(dtype), mask=mask)
    else:
        pre = tl.load(pre_at, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_at, (c * tl.where(pre > 0, 2.0 * pre, grad_scale * pre)).to(dtype), mask=mask)


def _mlp_launch(a: Tensor, b: Tensor, pre: Tensor, out: Tensor, slope: float, forward: bool) -> None:
    M, K = a.shape
    N = b.shape[1]
    ieee = a.dtype == torch.float32
    bm, bn, bk = (64, 64, 32) if ieee else (128, 128, 64)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _mlp_kernel[grid](a, b, pre, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                      pre.stride(0), pre.stride(1), out.stride(0), out.stride(1), float(slope),
                      _act_grad_scale(slope), FORWARD=forward, IEEE=ieee, UPCAST=_INTERPRET and not ieee,
                      BM=bm, BN=bn, BK=bk, num_warps=4 if ieee else 8, num_stages=3)


@torch.library.custom_op(f"{_LIB}::mlp_up", mutates_args=())
def mlp_up(x: Tensor, w_fc: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    """(pre, post) of x [M, D] and w_fc [H, D]: pre = x @ w_fc.T, post = leaky_relu(pre, slope) ** 2."""
    pre = x.new_empty((x.size(0), w_fc.size(0)))
    post = torch.empty_like(pre)
    _mlp_launch(x, w_fc.t(), pre, post, slope, forward=True)
    return pre, post


@mlp_up.register_fake
def _(x: Tensor, w_fc: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    return x.new_empty((x.size(0), w_fc.size(0))), x.new_empty((x.size(0), w_fc.size(0)))


@torch.library.custom_op(f"{_LIB}::mlp_up_grad", mutates_args=())
def mlp_up_grad(g: Tensor, w_proj: Tensor, pre: Tensor, slope: float) -> Tensor:
    """The gradient at pre of g [M, D] (the MLP output's gradient) through proj (w_proj [D, H]) and the activation."""
    dpre = torch.empty_like(pre)
    _mlp_launch(g, w_proj, pre, dpre, slope, forward=False)
    return dpre


@mlp_up_grad.register_fake
def _(g: Tensor, w_proj: Tensor, pre: Tensor, slope: float) -> Tensor:
    return torch.empty_like(pre)


def _activation(pre: Tensor, slope: float) -> Tensor:
    return torch.where(pre > 0, pre, pre * slope).square()


class _LeakyMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float) -> Tensor:
        x2 = x.reshape(-1, x.size(-1))
        pre, post = mlp_up(x2, w_fc, slope)
        ctx.save_for_backward(x2, w_fc, w_proj, pre)  # post is recomputed from pre (one elementwise pass)
        ctx.slope = slope
        return (post @ w_proj.t()).view(*x.shape[:-1], w_proj.size(0))

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, w_fc, w_proj, pre = ctx.saved_tensors
        g = grad.reshape(-1, grad.size(-1)).to(pre.dtype)
        dpre = mlp_up_grad(g, w_proj, pre, ctx.slope)
        dw_proj = g.t() @ _activation(pre, ctx.slope)
        dw_fc = dpre.t() @ x2
        dx = (dpre @ w_fc).view(*grad.shape[:-1], x2.size(-1))
        return dx, dw_fc, dw_proj, None


def leaky_mlp(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float) -> Tensor:
    """proj(leaky_relu(fc(x), slope) ** 2) for x [..., D], w_fc [H, D], w_proj [D, H], all of one dtype."""
    return _LeakyMLP.apply(x, w_fc, w_proj, float(slope))


# --- softcapped cross-entropy ----------------------------------------------------------------------------------

@triton.jit
def _softcap(z, cap):
    """cap * tanh(z / cap) in float32, from exp (tanh is not in every triton, nor in its interpreter)."""
    e = tl.exp(-2.0 * tl.abs(z) / cap)
    t = (1.0 - e) / (1.0 + e)
    return cap * tl.where(z < 0, -t, t)


@triton.jit
def _ce_fwd_kernel(z_ptr, y_ptr, loss_ptr, lse_ptr, V, s_row, s_col, cap, BV: tl.constexpr):
    """One row per program: logsumexp of the softcapped logits in one streaming pass (running max and
    rescaled sum), then loss = lse - softcapped target logit."""
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * s_row
    m = -float("inf")
    s = 0.0
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        c = _softcap(tl.load(base + cols * s_col, mask=cols < V, other=0.0).to(tl.float32), cap)
        c = tl.where(cols < V, c, -float("inf"))
        m_new = tl.maximum(m, tl.max(c, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(c - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(y_ptr + row).to(tl.int64)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, lse - _softcap(tl.load(base + target * s_col).to(tl.float32), cap))


@triton.jit
def _ce_bwd_kernel(z_ptr, y_ptr, lse_ptr, g_ptr, dz_ptr, V, s_row, s_col, cap, BV: tl.constexpr):
    """d loss / d z = g * (softmax(c) - onehot(y)) * (1 - (c / cap) ** 2), c = softcap(z) recomputed."""
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * s_row
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row).to(tl.float32)
    target = tl.load(y_ptr + row).to(tl.int64)
    for v0 in range(0, V, BV):
        cols = v0 + tl.arange(0, BV)
        c = _softcap(tl.load(base + cols * s_col, mask=cols < V, other=0.0).to(tl.float32), cap)
        p = tl.exp(c - lse) - tl.where(cols == target, 1.0, 0.0)
        t = c / cap
        dz = g * p * (1.0 - t * t)
        tl.store(dz_ptr + row * V + cols, dz.to(dz_ptr.dtype.element_ty), mask=cols < V)


_CE_BLOCK = 1024


@torch.library.custom_op(f"{_LIB}::softcap_ce", mutates_args=())
def softcap_ce(z: Tensor, y: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """(per-row loss, per-row logsumexp), float32, of raw logits z [N, V] and targets y [N]."""
    losses = torch.empty(z.size(0), device=z.device, dtype=torch.float32)
    lse = torch.empty_like(losses)
    if z.size(0):
        _ce_fwd_kernel[(z.size(0),)](z, y, losses, lse, z.size(1), z.stride(0), z.stride(1), float(cap),
                                     BV=_CE_BLOCK, num_warps=4)
    return losses, lse


@softcap_ce.register_fake
def _(z: Tensor, y: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    return z.new_empty(z.size(0), dtype=torch.float32), z.new_empty(z.size(0), dtype=torch.float32)


@torch.library.custom_op(f"{_LIB}::softcap_ce_grad", mutates_args=())
def softcap_ce_grad(z: Tensor, y: Tensor, lse: Tensor, g: Tensor, cap: float) -> Tensor:
    """The gradient at z of sum(g * loss), z [N, V] (contiguous result in z's dtype)."""
    dz = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    if z.size(0):
        _ce_bwd_kernel[(z.size(0),)](z, y, lse, g.contiguous(), dz, z.size(1), z.stride(0), z.stride(1), float(cap),
                                     BV=_CE_BLOCK, num_warps=4)
    return dz


@softcap_ce_grad.register_fake
def _(z: Tensor, y: Tensor, lse: Tensor, g: Tensor, cap: float) -> Tensor:
    return z.new_empty(z.shape)


class _SoftcapCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, y: Tensor, cap: float) -> Tensor:
        losses, lse = softcap_ce(z, y, cap)
        ctx.save_for_backward(z, y, lse)
        ctx.cap = cap
        return losses

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, y, lse = ctx.saved_tensors
        return softcap_ce_grad(z, y, lse, grad.float(), ctx.cap), None, None


def softcap_cross_entropy(z: Tensor, y: Tensor, cap: float, reduction: str = "mean") -> Tensor:
    """F.cross_entropy(cap * tanh(z / cap), y) in float32 for raw logits z [N, V] (any float dtype) and
    targets y [N] (valid ids: no ignore_index); reduction "mean", "sum" or "none"."""
    losses = _SoftcapCE.apply(z, y.to(torch.int64), float(cap))
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
