"""The Triton kernels of the layer-norm LSTM (rnn/triton_lnlstm.py), run on the CPU by Triton's interpreter.

TRITON_INTERPRET=1 must be set before the kernels are decorated, so it is set here, before the
import; the kernels then run with numpy on CPU tensors. Shapes are tiny (a few seconds in all).
The kernels compute in float32, so float64 inputs match the reference loop to ~1e-6, not 1e-12.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
pytest.importorskip("numpy")

from rnn import triton_lnlstm  # noqa: E402
from rnn.lnlstm import ln_lstm_recurrence_reference  # noqa: E402
from rnn.lnlstm_fused import FusedLNLSTM  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _args(B: int, T: int, H: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    return [r(B, T, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=H**-0.5),
            r(4 * H), r(4 * H), r(4 * H), r(H), r(H)]


def _triton(args: list[torch.Tensor]):
    xg, h0, c0, w, gh, bh, b, gc, bc = args
    out, h, c = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, triton_lnlstm.kernels())
    return out, (h, c)


@pytest.mark.parametrize("B,T,H,dtype", [(3, 4, 5, torch.float64), (2, 3, 8, torch.float32), (1, 2, 3, torch.float32)])
def test_forward_and_backward_match_the_loop(B, T, H, dtype) -> None:
    args = _args(B, T, H, dtype, seed=B * 100 + H)
    got = _triton(args)
    want = ln_lstm_recurrence_reference(*args, 1e-5)
    proj = [torch.randn(t.shape, dtype=dtype) for t in (want[0], *want[1])]

    def loss(res):
        out, (h, c) = res
        return sum((a.to(dtype) * p).sum() for a, p in zip((out, h, c), proj, strict=True))

    for a, b in zip((got[0], *got[1]), (want[0], *want[1]), strict=True):
        torch.testing.assert_close(a.to(dtype), b, rtol=1e-5, atol=1e-5)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(loss(got), args), torch.autograd.grad(loss(want), args),
                                   strict=True)):
        assert a.dtype == b.dtype, f"argument {i}"
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=f"argument {i}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_stays_close(dtype) -> None:
    args32 = [a.detach() for a in _args(2, 3, 8, torch.float32, seed=7)]
    xg, h0, c0, w = (a.to(dtype).requires_grad_() for a in args32[:4])
    params = [a.clone().requires_grad_() for a in args32[4:]]  # LayerNorm affines stay float32
    out, (h, c) = _triton([xg, h0, c0, w, *params])
    assert out.dtype == dtype
    ref, _ = ln_lstm_recurrence_reference(*args32, 1e-5)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=3e-2)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == t.dtype and torch.isfinite(t.grad).all()
               for t in (xg, h0, c0, w, *params))
