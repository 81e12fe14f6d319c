"""Triton kernels for the layer-norm LSTM recurrence on CUDA: one fused kernel per step, each way.

Forward, per step: ``W_h h_{t-1}`` on cuBLAS (``torch.mm``), then one kernel (one program per
batch row) that does LN_h, the bias, the gates, the cell update, LN_c and the output. Backward,
per step: one kernel doing the same in reverse (output gate, LN_c backward, cell, gates, LN_h
backward), then ``da_t W_h`` on cuBLAS. After the loop the LayerNorm affine gradients are
reductions over time and batch (haste's design: no atomics in the step kernel), and
:class:`rnn.lnlstm_fused.FusedLNLSTM` does the recurrent weight gradient as one GEMM.

Activations may be float32, bfloat16 or float16: the matmuls run in that dtype, the kernels
compute in float32, and the saved statistics, gates and cell states are kept in float32.

Only imported where Triton is installed; :func:`rnn.lnlstm_fused.recurrence_path` uses it on
CUDA. On the CPU the kernels run under ``TRITON_INTERPRET=1`` (the tests do this).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _fwd_step(raw, x, x_sb, x_off, gh, bh, gc, bc, cs, c_off, ahat, g_off, gates, chat, h_off, tc, hs,
              rstd_a, rstd_c, r_off, H, eps, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < H
    G = 4 * H
    # LN_h over all 4H pre-activations, loaded as four H-wide chunks (i, f, g, o).
    a0 = tl.load(raw + b * G + j, mask=m, other=0.0).to(tl.float32)
    a1 = tl.load(raw + b * G + H + j, mask=m, other=0.0).to(tl.float32)
    a2 = tl.load(raw + b * G + 2 * H + j, mask=m, other=0.0).to(tl.float32)
    a3 = tl.load(raw + b * G + 3 * H + j, mask=m, other=0.0).to(tl.float32)
    mean = (tl.sum(a0, 0) + tl.sum(a1, 0) + tl.sum(a2, 0) + tl.sum(a3, 0)) / G
    d0 = tl.where(m, a0 - mean, 0.0)
    d1 = tl.where(m, a1 - mean, 0.0)
    d2 = tl.where(m, a2 - mean, 0.0)
    d3 = tl.where(m, a3 - mean, 0.0)
    var = (tl.sum(d0 * d0, 0) + tl.sum(d1 * d1, 0) + tl.sum(d2 * d2, 0) + tl.sum(d3 * d3, 0)) / G
    ra = 1.0 / tl.sqrt(var + eps)
    n0, n1, n2, n3 = d0 * ra, d1 * ra, d2 * ra, d3 * ra
    ga = g_off + b * G
    tl.store(ahat + ga + j, n0, mask=m)
    tl.store(ahat + ga + H + j, n1, mask=m)
    tl.store(ahat + ga + 2 * H + j, n2, mask=m)
    tl.store(ahat + ga + 3 * H + j, n3, mask=m)
    xr = x + b * x_sb + x_off
    zi = tl.load(xr + j, mask=m, other=0.0).to(tl.float32) + n0 * tl.load(gh + j, mask=m, other=0.0) \
        + tl.load(bh + j, mask=m, other=0.0)
    zf = tl.load(xr + H + j, mask=m, other=0.0).to(tl.float32) + n1 * tl.load(gh + H + j, mask=m, other=0.0) \
        + tl.load(bh + H + j, mask=m, other=0.0)
    zg = tl.load(xr + 2 * H + j, mask=m, other=0.0).to(tl.float32) \
        + n2 * tl.load(gh + 2 * H + j, mask=m, other=0.0) + tl.load(bh + 2 * H + j, mask=m, other=0.0)
    zo = tl.load(xr + 3 * H + j, mask=m, other=0.0).to(tl.float32) \
        + n3 * tl.load(gh + 3 * H + j, mask=m, other=0.0) + tl.load(bh + 3 * H + j, mask=m, other=0.0)
    i = tl.sigmoid(zi)
    f = tl.sigmoid(zf)
    g = _tanh(zg)
    o = tl.sigmoid(zo)
    tl.store(gates + ga + j, i, mask=m)
    tl.store(gates + ga + H + j, f, mask=m)
    tl.store(gates + ga + 2 * H + j, g, mask=m)
    tl.store(gates + ga + 3 * H + j, o, mask=m)
    c_prev = tl.load(cs + c_off + b * H + j, mask=m, other=0.0)
    c = tl.where(m, f * c_prev + i * g, 0.0)
    tl.store(cs + c_off + (tl.num_programs(0) + b) * H + j, c, mask=m)  # cs[t + 1]
    mc = tl.sum(c, 0) / H
    dc = tl.where(m, c - mc, 0.0)
    rc = 1.0 / tl.sqrt(tl.sum(dc * dc, 0) / H + eps)
    ch = dc * rc
    t_c = _tanh(ch * tl.load(gc + j, mask=m, other=0.0) + tl.load(bc + j, mask=m, other=0.0))
    tl.store(chat + h_off + b * H + j, ch, mask=m)
    tl.store(tc + h_off + b * H + j, t_c, mask=m)
    hv = o * t_c
    tl.store(hs + c_off + (tl.num_programs(0) + b) * H + j, hv.to(hs.dtype.element_ty), mask=m)  # hs[t + 1]
    tl.store(rstd_a + r_off + b, ra)
    tl.store(rstd_c + r_off + b, rc)


@triton.jit
def _bwd_step(dout, do_sb, do_off, dh, dc, gates, g_off, tc, chat, h_off, cs, c_off, rstd_c, rstd_a, r_off,
              ahat, gh, gc, dz, dz_sb, dz_off, da, dcn, H, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    m = j < H
    G = 4 * H
    ga = g_off + b * G
    hb = h_off + b * H
    dht = tl.load(dout + b * do_sb + do_off + j, mask=m, other=0.0).to(tl.float32) \
        + tl.load(dh + b * H + j, mask=m, other=0.0).to(tl.float32)
    i = tl.load(gates + ga + j, mask=m, other=0.0)
    f = tl.load(gates + ga + H + j, mask=m, other=0.0)
    g = tl.load(gates + ga + 2 * H + j, mask=m, other=0.0)
    o = tl.load(gates + ga + 3 * H + j, mask=m, other=0.0)
    t_c = tl.load(tc + hb + j, mask=m, other=0.0)
    d_cn = dht * o * (1.0 - t_c * t_c)
    tl.store(dcn + hb + j, d_cn, mask=m)
    dchat = d_cn * tl.load(gc + j, mask=m, other=0.0)
    ch = tl.load(chat + hb + j, mask=m, other=0.0)
    rc = tl.load(rstd_c + r_off + b)
    m1 = tl.sum(dchat, 0) / H
    m2 = tl.sum(dchat * ch, 0) / H
    dct = tl.load(dc + b * H + j, mask=m, other=0.0) + rc * (dchat - m1 - ch * m2)
    c_prev = tl.load(cs + c_off + b * H + j, mask=m, other=0.0)
    dzi = dct * g * i * (1.0 - i)
    dzf = dct * c_prev * f * (1.0 - f)
    dzg = dct * i * (1.0 - g * g)
    dzo = dht * t_c * o * (1.0 - o)
    tl.store(dc + b * H + j, dct * f, mask=m)  # dL/dc_{t-1}
    zr = dz + b * dz_sb + dz_off
    ty = dz.dtype.element_ty
    tl.store(zr + j, dzi.to(ty), mask=m)
    tl.store(zr + H + j, dzf.to(ty), mask=m)
    tl.store(zr + 2 * H + j, dzg.to(ty), mask=m)
    tl.store(zr + 3 * H + j, dzo.to(ty), mask=m)
    # LN_h backward: d(ahat) = dz * gamma_h.
    e0 = dzi * tl.load(gh + j, mask=m, other=0.0)
    e1 = dzf * tl.load(gh + H + j, mask=m, other=0.0)
    e2 = dzg * tl.load(gh + 2 * H + j, mask=m, other=0.0)
    e3 = dzo * tl.load(gh + 3 * H + j, mask=m, other=0.0)
    n0 = tl.load(ahat + ga + j, mask=m, other=0.0)
    n1 = tl.load(ahat + ga + H + j, mask=m, other=0.0)
    n2 = tl.load(ahat + ga + 2 * H + j, mask=m, other=0.0)
    n3 = tl.load(ahat + ga + 3 * H + j, mask=m, other=0.0)
    ra = tl.load(rstd_a + r_off + b)
    k1 = (tl.sum(e0, 0) + tl.sum(e1, 0) + tl.sum(e2, 0) + tl.sum(e3, 0)) / G
    k2 = (tl.sum(e0 * n0, 0) + tl.sum(e1 * n1, 0) + tl.sum(e2 * n2, 0) + tl.sum(e3 * n3, 0)) / G
    tl.store(da + ga + j, ra * (e0 - k1 - n0 * k2), mask=m)
    tl.store(da + ga + H + j, ra * (e1 - k1 - n1 * k2), mask=m)
    tl.store(da + ga + 2 * H + j, ra * (e2 - k1 - n2 * k2), mask=m)
    tl.store(da + ga + 3 * H + j, ra * (e3 - k1 - n3 * k2), mask=m)


class TritonKernels:
    """The :class:`rnn.lnlstm_fused.Kernels` contract on Triton + cuBLAS (see rnn/csrc/lnlstm_cpu.cpp)."""

    def forward(self, xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor,
                gc: Tensor, bc: Tensor, eps: float) -> list[Tensor]:
        B, T, G = xgb.shape
        H = G // 4
        def f32(*shape: int) -> Tensor:
            return torch.empty(shape, device=xgb.device, dtype=torch.float32)

        hs = xgb.new_empty((T + 1, B, H))
        cs = f32(T + 1, B, H)
        hs[0], cs[0] = h0, c0
        gates, ahat = f32(T, B, G), f32(T, B, G)
        chat, tc = f32(T, B, H), f32(T, B, H)
        rstd_a, rstd_c = f32(T, B), f32(T, B)
        gh, bh, gc, bc = (p.float() for p in (gh, bh, gc, bc))
        block = triton.next_power_of_2(H)
        w_t = w.t()
        for t in range(T):
            raw = torch.mm(hs[t], w_t)  # [B, 4H] on cuBLAS
            _fwd_step[(B,)](raw, xgb, xgb.stride(0), t * G, gh, bh, gc, bc, cs, t * B * H, ahat, t * B * G,
                            gates, chat, t * B * H, tc, hs, rstd_a, rstd_c, t * B, H, eps, BLOCK=block)
        return [hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc]

    def backward(self, dout: Tensor, dhT: Tensor, dcT: Tensor, w: Tensor, gh: Tensor, gc: Tensor,
                 cs: Tensor, gates: Tensor, ahat: Tensor, rstd_a: Tensor, chat: Tensor,
                 rstd_c: Tensor, tc: Tensor) -> list[Tensor]:
        T, B, G = gates.shape
        H = G // 4
        dz = dout.new_empty((B, T, G))
        da = torch.empty_like(gates)
        dcn = torch.empty_like(tc)
        dh, dc = dhT.float().contiguous(), dcT.float().clone().contiguous()
        ghf, gcf = gh.float(), gc.float()
        block = triton.next_power_of_2(H)
        for t in range(T - 1, -1, -1):
            _bwd_step[(B,)](dout, dout.stride(0), t * H, dh, dc, gates, t * B * G, tc, chat, t * B * H, cs,
                            t * B * H, rstd_c, rstd_a, t * B, ahat, ghf, gcf, dz, dz.stride(0), t * G, da, dcn,
                            H, BLOCK=block)
            dh = torch.mm(da[t].to(w.dtype), w).float()  # dL/dh_{t-1} = da_t W_h, on cuBLAS
        # After the loop: the LayerNorm affine gradients, reductions over (T, B).
        dzt = dz.transpose(0, 1).float()
        dgh, dbh = (dzt * ahat).sum((0, 1)), dzt.sum((0, 1))
        dgc, dbc = (dcn * chat).sum((0, 1)), dcn.sum((0, 1))
        return [dz, da, dh, dc, dgh, dbh, dgc, dbc]


_KERNELS = TritonKernels()


def kernels() -> TritonKernels:
    """The Triton kernels (a stateless object)."""
    return _KERNELS
