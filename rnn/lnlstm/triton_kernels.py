"""Triton kernels for the layer-norm LSTM recurrence on CUDA: one fused kernel per step, each way.

Forward, per step: ``W_h h_{t-1}`` on cuBLAS (``torch.mm``), then one kernel (one program per
batch row) that does LN_h, the bias, the gates, the cell update, LN_c and the output. Backward,
per step: one kernel doing the same in reverse (output gate, LN_c backward, cell, gates, LN_h
backward), then ``da_t W_h`` on cuBLAS. After the loop one kernel reduces the LayerNorm gains'
and biases' gradients over time and batch (haste's design: no atomics in the step kernel), and
:class:`rnn.lnlstm.fused.FusedLNLSTM` does the recurrent weight gradient as one GEMM.

Dtypes. The matmuls run in ``W_h``'s dtype (the caller casts ``W_h`` once per forward: the
autocast dtype under autocast, else the activations'), and so do ``h`` and ``da``, so no step
casts anything. The kernels compute in float32. The cell states ``c`` and the LayerNorm
statistics ``1/std`` are kept in float32; the saved gates and normalised values in bfloat16 or
float16 when the matmuls are, else float32 (half the bytes the backward reads).

Offsets are int64 (``tl.program_id(0).to(tl.int64)``): ``b * 4H`` and the per-step offsets
pass 2**31 elements at B*T*4H >= 2**31 (B 10,487 at T 100, H 512).

Only imported where Triton is installed; :meth:`rnn.lnlstm.LNLSTMPath.resolve` uses it on CUDA
(named ``triton_kernels``, not ``triton``, so that ``import triton`` here is Triton). On the CPU the
kernels run under ``TRITON_INTERPRET=1`` (the tests do this).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rnn.lnlstm.kernels import KernelGrads, SavedTensors

_HALF = (torch.bfloat16, torch.float16)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


#: The per-step offsets vary with t: specialised (Triton keys a compile on each integer's
#: divisibility by 16 and on == 1), they would compile several variants of a kernel in one loop.
_STEP_OFFSETS = ["x_off", "c_off", "g_off", "h_off", "r_off", "do_off", "dz_off"]


@triton.jit(do_not_specialize=[a for a in _STEP_OFFSETS if a not in ("do_off", "dz_off")])
def _fwd_step(raw, x, x_sb, x_off, gh, bh, gc, bc, cs, c_off, ahat, g_off, gates, chat, h_off, tc, hs,
              rstd_a, rstd_c, r_off, H, eps, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    nb = tl.num_programs(0).to(tl.int64)
    j = tl.arange(0, BLOCK)
    m = j < H
    G = 4 * H
    rb = raw + b * G
    # LN_h over all 4H pre-activations, loaded as four H-wide chunks (i, f, g, o).
    a0 = tl.load(rb + j, mask=m, other=0.0).to(tl.float32)
    a1 = tl.load(rb + H + j, mask=m, other=0.0).to(tl.float32)
    a2 = tl.load(rb + 2 * H + j, mask=m, other=0.0).to(tl.float32)
    a3 = tl.load(rb + 3 * H + j, mask=m, other=0.0).to(tl.float32)
    mean = (tl.sum(a0, 0) + tl.sum(a1, 0) + tl.sum(a2, 0) + tl.sum(a3, 0)) / G
    d0 = tl.where(m, a0 - mean, 0.0)
    d1 = tl.where(m, a1 - mean, 0.0)
    d2 = tl.where(m, a2 - mean, 0.0)
    d3 = tl.where(m, a3 - mean, 0.0)
    var = (tl.sum(d0 * d0, 0) + tl.sum(d1 * d1, 0) + tl.sum(d2 * d2, 0) + tl.sum(d3 * d3, 0)) / G
    ra = 1.0 / tl.sqrt(var + eps)
    n0, n1, n2, n3 = d0 * ra, d1 * ra, d2 * ra, d3 * ra
    sty = gates.dtype.element_ty  # the saved values' dtype
    ga = g_off + b * G
    tl.store(ahat + ga + j, n0.to(sty), mask=m)
    tl.store(ahat + ga + H + j, n1.to(sty), mask=m)
    tl.store(ahat + ga + 2 * H + j, n2.to(sty), mask=m)
    tl.store(ahat + ga + 3 * H + j, n3.to(sty), mask=m)
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
    tl.store(gates + ga + j, i.to(sty), mask=m)
    tl.store(gates + ga + H + j, f.to(sty), mask=m)
    tl.store(gates + ga + 2 * H + j, g.to(sty), mask=m)
    tl.store(gates + ga + 3 * H + j, o.to(sty), mask=m)
    c_prev = tl.load(cs + c_off + b * H + j, mask=m, other=0.0)
    c = tl.where(m, f * c_prev + i * g, 0.0)
    tl.store(cs + c_off + (nb + b) * H + j, c, mask=m)  # cs[t + 1]
    mc = tl.sum(c, 0) / H
    dc = tl.where(m, c - mc, 0.0)
    rc = 1.0 / tl.sqrt(tl.sum(dc * dc, 0) / H + eps)
    ch = dc * rc
    t_c = _tanh(ch * tl.load(gc + j, mask=m, other=0.0) + tl.load(bc + j, mask=m, other=0.0))
    tl.store(chat + h_off + b * H + j, ch.to(sty), mask=m)
    tl.store(tc + h_off + b * H + j, t_c.to(sty), mask=m)
    hv = o * t_c
    tl.store(hs + c_off + (nb + b) * H + j, hv.to(hs.dtype.element_ty), mask=m)  # hs[t + 1]
    tl.store(rstd_a + r_off + b, ra)
    tl.store(rstd_c + r_off + b, rc)


@triton.jit(do_not_specialize=[a for a in _STEP_OFFSETS if a != "x_off"])
def _bwd_step(dout, do_sb, do_off, dh, dc, gates, g_off, tc, chat, h_off, cs, c_off, rstd_c, rstd_a, r_off,
              ahat, gh, gc, dz, dz_sb, dz_off, da, dcn, H, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK)
    m = j < H
    G = 4 * H
    ga = g_off + b * G
    hb = h_off + b * H
    dht = tl.load(dout + b * do_sb + do_off + j, mask=m, other=0.0).to(tl.float32) \
        + tl.load(dh + b * H + j, mask=m, other=0.0).to(tl.float32)
    i = tl.load(gates + ga + j, mask=m, other=0.0).to(tl.float32)
    f = tl.load(gates + ga + H + j, mask=m, other=0.0).to(tl.float32)
    g = tl.load(gates + ga + 2 * H + j, mask=m, other=0.0).to(tl.float32)
    o = tl.load(gates + ga + 3 * H + j, mask=m, other=0.0).to(tl.float32)
    t_c = tl.load(tc + hb + j, mask=m, other=0.0).to(tl.float32)
    d_cn = dht * o * (1.0 - t_c * t_c)
    tl.store(dcn + hb + j, d_cn, mask=m)
    dchat = d_cn * tl.load(gc + j, mask=m, other=0.0)
    ch = tl.load(chat + hb + j, mask=m, other=0.0).to(tl.float32)
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
    n0 = tl.load(ahat + ga + j, mask=m, other=0.0).to(tl.float32)
    n1 = tl.load(ahat + ga + H + j, mask=m, other=0.0).to(tl.float32)
    n2 = tl.load(ahat + ga + 2 * H + j, mask=m, other=0.0).to(tl.float32)
    n3 = tl.load(ahat + ga + 3 * H + j, mask=m, other=0.0).to(tl.float32)
    ra = tl.load(rstd_a + r_off + b)
    k1 = (tl.sum(e0, 0) + tl.sum(e1, 0) + tl.sum(e2, 0) + tl.sum(e3, 0)) / G
    k2 = (tl.sum(e0 * n0, 0) + tl.sum(e1 * n1, 0) + tl.sum(e2 * n2, 0) + tl.sum(e3 * n3, 0)) / G
    dty = da.dtype.element_ty  # the matmuls' dtype: da_t W_h and dW_h read it as it is
    tl.store(da + ga + j, (ra * (e0 - k1 - n0 * k2)).to(dty), mask=m)
    tl.store(da + ga + H + j, (ra * (e1 - k1 - n1 * k2)).to(dty), mask=m)
    tl.store(da + ga + 2 * H + j, (ra * (e2 - k1 - n2 * k2)).to(dty), mask=m)
    tl.store(da + ga + 3 * H + j, (ra * (e3 - k1 - n3 * k2)).to(dty), mask=m)


@triton.jit
def _ln_grads(dz, dz_sb, ahat, dcn, chat, part, rows, B, H, rows_per, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """Partial sums of the LayerNorm affine gradients over a slice of the T*B rows.

    Program (n, s) sums rows ``[s * rows_per, (s + 1) * rows_per)`` of one column block: the first
    ``cdiv(4H, BLOCK_N)`` column blocks are LN_h's (``dgh = sum dz * ahat``, ``dbh = sum dz``; dz is
    ``[B, T, 4H]``, the rest time-major), the others LN_c's (``dgc = sum dcn * chat``,
    ``dbc = sum dcn``). ``part[s]`` holds ``[dgh | dbh | dgc | dbc]``; the caller sums over s.
    """
    n = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1).to(tl.int64)
    G = 4 * H
    n_gate = tl.cdiv(G, BLOCK_N)
    r0 = tl.arange(0, BLOCK_R).to(tl.int64)
    width = 2 * G + 2 * H
    out = part + s * width
    start = s * rows_per
    if n < n_gate:
        col = n * BLOCK_N + tl.arange(0, BLOCK_N)
        cm = col < G
        acc_g = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k in range(0, rows_per, BLOCK_R):
            r = start + k + r0  # row r = t * B + b
            rm = (r < rows) & (r < start + rows_per)
            mm = rm[:, None] & cm[None, :]
            t = r // B
            bb = r - t * B
            zd = tl.load(dz + (bb * dz_sb + t * G)[:, None] + col[None, :], mask=mm, other=0.0).to(tl.float32)
            ah = tl.load(ahat + (r * G)[:, None] + col[None, :], mask=mm, other=0.0).to(tl.float32)
            acc_g += tl.sum(zd * ah, 0)
            acc_b += tl.sum(zd, 0)
        tl.store(out + col, acc_g, mask=cm)
        tl.store(out + G + col, acc_b, mask=cm)
    else:
        col = (n - n_gate) * BLOCK_N + tl.arange(0, BLOCK_N)
        cm = col < H
        acc_g = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k in range(0, rows_per, BLOCK_R):
            r = start + k + r0
            rm = (r < rows) & (r < start + rows_per)
            mm = rm[:, None] & cm[None, :]
            off = (r * H)[:, None] + col[None, :]
            dn = tl.load(dcn + off, mask=mm, other=0.0).to(tl.float32)
            chv = tl.load(chat + off, mask=mm, other=0.0).to(tl.float32)
            acc_g += tl.sum(dn * chv, 0)
            acc_b += tl.sum(dn, 0)
        tl.store(out + 2 * G + col, acc_g, mask=cm)
        tl.store(out + 2 * G + H + col, acc_b, mask=cm)


#: The LN-gradient reduction's tile: rows per iteration and columns per program.
_LN_BLOCK_R, _LN_BLOCK_N = 32, 128
#: Programs the LN-gradient reduction aims for (a few per SM on an H100/H200's 132).
_LN_PROGRAMS = 512


def ln_affine_grads(dz: Tensor, ahat: Tensor, dcn: Tensor, chat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dgh, dbh, dgc, dbc)`` in float32: LN_h's and LN_c's gain and bias gradients, summed over
    time and batch (``dz`` ``[B, T, 4H]``; ``ahat`` ``[T, B, 4H]``; ``dcn``, ``chat`` ``[T, B, H]``).
    One kernel writes partial sums over row slices, one ``sum`` adds them."""
    T, B, G = ahat.shape
    H = G // 4
    rows = T * B
    n_blocks = triton.cdiv(G, _LN_BLOCK_N) + triton.cdiv(H, _LN_BLOCK_N)
    slices = max(1, min(triton.cdiv(_LN_PROGRAMS, n_blocks), triton.cdiv(rows, _LN_BLOCK_R)))
    rows_per = triton.cdiv(triton.cdiv(rows, slices), _LN_BLOCK_R) * _LN_BLOCK_R
    slices = triton.cdiv(rows, rows_per)
    part = torch.empty((slices, 2 * G + 2 * H), device=ahat.device, dtype=torch.float32)
    _ln_grads[(n_blocks, slices)](dz, dz.stride(0), ahat, dcn, chat, part, rows, B, H, rows_per,
                                  BLOCK_R=_LN_BLOCK_R, BLOCK_N=_LN_BLOCK_N)
    total = part.sum(0)
    return total[:G], total[G:2 * G], total[2 * G:2 * G + H], total[2 * G + H:]


class TritonKernels:
    """The :class:`rnn.lnlstm.kernels.Kernels` contract on Triton + cuBLAS (see csrc/lnlstm_cpu.cpp).

    ``fill_nan``: fill every buffer the kernels write with NaN before they run, so an element a
    kernel leaves unwritten shows in a comparison (``bench.triton_check`` and the tests use it;
    the trainer's instance does not pay for it).
    """

    def __init__(self, fill_nan: bool = False) -> None:
        self.fill_nan = fill_nan

    def _empty(self, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype) -> Tensor:
        t = torch.empty(shape, device=like.device, dtype=dtype)
        return t.fill_(float("nan")) if self.fill_nan else t

    def forward(self, xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor,
                gc: Tensor, bc: Tensor, eps: float) -> SavedTensors:
        B, T, G = xgb.shape
        H = G // 4
        save = w.dtype if w.dtype in _HALF else torch.float32  # gates and normalised values
        hs = self._empty((T + 1, B, H), xgb, w.dtype)  # h in the matmuls' dtype
        cs = self._empty((T + 1, B, H), xgb, torch.float32)
        hs[0], cs[0] = h0, c0
        gates, ahat = self._empty((T, B, G), xgb, save), self._empty((T, B, G), xgb, save)
        chat, tc = self._empty((T, B, H), xgb, save), self._empty((T, B, H), xgb, save)
        rstd_a, rstd_c = self._empty((T, B), xgb, torch.float32), self._empty((T, B), xgb, torch.float32)
        gh, bh, gc, bc = (p.float() for p in (gh, bh, gc, bc))
        block = triton.next_power_of_2(H)
        w_t = w.t()
        for t in range(T):
            raw = torch.mm(hs[t], w_t)  # [B, 4H] on cuBLAS, in w's dtype
            _fwd_step[(B,)](raw, xgb, xgb.stride(0), t * G, gh, bh, gc, bc, cs, t * B * H, ahat, t * B * G,
                            gates, chat, t * B * H, tc, hs, rstd_a, rstd_c, t * B, H, eps, BLOCK=block)
        return SavedTensors(hs=hs, cs=cs, gates=gates, ahat=ahat, rstd_a=rstd_a, chat=chat, rstd_c=rstd_c, tc=tc)

    def backward(self, dout: Tensor, dhT: Tensor, dcT: Tensor, w: Tensor, gh: Tensor, gc: Tensor,
                 saved: SavedTensors) -> KernelGrads:
        s = saved
        T, B, G = s.gates.shape
        H = G // 4
        dz = self._empty((B, T, G), dout, dout.dtype)
        # da in the matmuls' dtype (float32 for float64 checks, whose kernels compute in float32).
        da = self._empty((T, B, G), s.gates, w.dtype if w.dtype in _HALF else torch.float32)
        dcn = self._empty((T, B, H), s.tc, torch.float32)
        dh, dc = dhT.contiguous(), dcT.float().clone().contiguous()
        ghf, gcf = gh.float(), gc.float()
        block = triton.next_power_of_2(H)
        for t in range(T - 1, -1, -1):
            _bwd_step[(B,)](dout, dout.stride(0), t * H, dh, dc, s.gates, t * B * G, s.tc, s.chat, t * B * H, s.cs,
                            t * B * H, s.rstd_c, s.rstd_a, t * B, s.ahat, ghf, gcf, dz, dz.stride(0), t * G, da, dcn,
                            H, BLOCK=block)
            dh = torch.mm(da[t].to(w.dtype), w)  # dL/dh_{t-1} = da_t W_h, on cuBLAS (no cast unless float64)
        dgh, dbh, dgc, dbc = ln_affine_grads(dz, s.ahat, dcn, s.chat)
        return KernelGrads(dz=dz, da=da, dh0=dh, dc0=dc, dgh=dgh, dbh=dbh, dgc=dgc, dbc=dbc)


_KERNELS = TritonKernels()


def kernels() -> TritonKernels:
    """The Triton kernels (a stateless object)."""
    return _KERNELS
