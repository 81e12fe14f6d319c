"""The Triton kernels of the layer-norm LSTM (rnn/lnlstm/triton_kernels.py), run on the CPU by Triton's interpreter.

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

from rnn.lnlstm import FusedLNLSTM, ln_lstm_recurrence_reference, triton_kernels  # noqa: E402

# Slow as a whole: every test runs the kernels under the Triton interpreter (about 12 s in all).
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def _args(B: int, T: int, H: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    return [r(B, T, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=H**-0.5),
            r(4 * H), r(4 * H), r(4 * H), r(H), r(H)]


def _triton(args: list[torch.Tensor]):
    xg, h0, c0, w, gh, bh, b, gc, bc = args
    out, h, c = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, triton_kernels.kernels())
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


# --- never fatal: the first-use self-check, the switch ---------------------------------------

import ast  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from rnn.lnlstm import LNLSTMPath  # noqa: E402
from rnn.lnlstm.path import TRITON_SWITCH, CheckedKernels, load_triton  # noqa: E402
from rnn.lnlstm.self_check import self_check  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_self_check_passes_on_correct_kernels(dtype) -> None:
    assert self_check(triton_kernels.TritonKernels(fill_nan=True), CPU, dtype, 12) is None


def test_a_kernel_that_raises_falls_back_to_the_loop_with_one_warning(caplog) -> None:
    """Triton compiles at the first launch; a failure there must leave the process on the torch path."""
    class Broken(triton_kernels.TritonKernels):
        def forward(self, *args, **kwargs):
            raise RuntimeError("PassManager::run failed\nmore lines")

    checked = CheckedKernels(Broken())
    with caplog.at_level(logging.WARNING, logger="rnn.lnlstm.path"):
        assert checked.ready(CPU, torch.float32, 16) is False
        assert checked.ready(CPU, torch.float32, 16) is False  # asked once per key
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "RuntimeError: PassManager::run failed" in warnings[0] and "more lines" not in warnings[0]
    assert "RNN_LNLSTM_TRITON=0" in warnings[0]


def test_a_kernel_that_computes_garbage_is_not_used(caplog) -> None:
    """A mismatch (here: the cell-state gradient left unwritten, NaN) fails the check like an exception."""
    class UnwrittenDc(triton_kernels.TritonKernels):
        def backward(self, *args):
            grads = super().backward(*args)
            return grads._replace(dc0=torch.full_like(grads.dc0, float("nan")))

    with caplog.at_level(logging.WARNING, logger="rnn.lnlstm.path"):
        assert CheckedKernels(UnwrittenDc()).ready(CPU, torch.float32, 8) is False
    assert "grad c0 differs from the PyTorch loop by inf" in caplog.text
    # Another hidden-size block is checked on its own (Triton compiles it separately).
    checked = CheckedKernels(triton_kernels.TritonKernels())
    assert checked.ready(CPU, torch.float32, 40) is True and list(checked.outcomes) == [("cpu", torch.float32, 64)]


def test_the_switch_turns_triton_off_without_running_anything(monkeypatch) -> None:
    monkeypatch.setenv(TRITON_SWITCH, "0")
    path = LNLSTMPath.from_env()
    assert path.triton is None  # so no self-check can run
    # On a CUDA device (none here: nothing may touch it) the path is the loop.
    assert path.resolve(torch.device("cuda"), torch.float32, hidden_size=512) == "torch"
    monkeypatch.delenv(TRITON_SWITCH)
    assert LNLSTMPath.from_env().triton is load_triton


def test_a_model_whose_triton_check_fails_trains_on_the_loop_and_says_so() -> None:
    """The trainer's view: the path it records is the one that runs."""
    from rnn.config import ModelConfig
    from rnn.models import build_model

    class NoKernelImage(triton_kernels.TritonKernels):
        def forward(self, *args, **kwargs):
            raise RuntimeError("no kernel image")

    checked = CheckedKernels(NoKernelImage())
    # Without CUDA here the check fails on its first tensor, with CUDA on the kernels: either way,
    # every call goes to the loop.
    cuda = torch.device("cuda")
    path = LNLSTMPath(triton=lambda: checked)
    model = build_model(ModelConfig(cell="lstm", embedding_dim=8, hidden_size=8, layer_norm=True), 11, path)
    assert model.recurrence_path(cuda, "fp32") == "torch"
    assert model.recurrence_path(cuda, "bf16") == "torch"
    assert len(checked.outcomes) == 2 and None not in checked.outcomes.values()  # fp32 and bf16, both failed


def test_every_kernel_offset_is_int64() -> None:
    """``b * 4H`` and the step offsets pass 2**31 elements at B*T*4H >= 2**31 (B 10,487 at T 100, H 512):
    every program id is widened before any offset is formed from it. (bench.triton_check runs such a
    batch on a GPU; here the source is checked, since the interpreter cannot hold 2**31 elements.)"""
    tree = ast.parse(Path(triton_kernels.__file__).read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in ("program_id", "num_programs")]
    assert len(calls) >= 5
    widened = {id(n.func.value) for n in ast.walk(tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute) and n.func.attr == "to"
               and ast.unparse(n.args[0]) == "tl.int64"}
    assert all(id(c) in widened for c in calls), "a program id is used as int32"


# --- precision policy: what reaches the matmuls ----------------------------------------------

class _Recorder(TorchDispatchMode):
    """Records the input dtypes of every mm/addmm and every dtype conversion of a [4H, H] tensor."""

    def __init__(self, w_shape):
        super().__init__()
        self.mm: list[tuple[torch.dtype, ...]] = []
        self.w_casts = 0
        self.w_shape = w_shape

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "_linear_pointwise"):
            self.mm.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        if name in ("_to_copy", "to") and isinstance(args[0], torch.Tensor) and tuple(args[0].shape) == self.w_shape:
            self.w_casts += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("T", [1, 5])
def test_under_autocast_the_matmuls_run_in_its_dtype_and_w_is_cast_once(T) -> None:
    B, H = 3, 8
    args = _args(B, T, H, torch.float32, seed=11)
    xg, h0, c0, w, gh, bh, b, gc, bc = args
    rec = _Recorder((4 * H, H))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with rec:
            out, h, c = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, triton_kernels.kernels())
        forward_casts = rec.w_casts
        assert out.dtype == torch.bfloat16 and c.dtype == torch.float32
        loss = out.float().sum() + h.float().sum() + c.sum()
    with rec:
        grads = torch.autograd.grad(loss, args)
    assert forward_casts == 1, "W_h cast once per forward, not per step"
    # The backward re-uses the saved bf16 W_h; its one cast is dW_h back to the parameter's float32.
    assert rec.w_casts == 2
    # T forward steps, T backward steps and dW_h: every matmul in bf16, none re-cast per step.
    assert len(rec.mm) == 2 * T + 1
    assert all(set(d) == {torch.bfloat16} for d in rec.mm), rec.mm
    # Gradients come back in the parameters' and inputs' own dtypes.
    assert [g.dtype for g in grads] == [a.dtype for a in args]
    assert all(torch.isfinite(g).all() for g in grads)


def test_without_autocast_float32_stays_float32() -> None:
    args = _args(2, 3, 8, torch.float32, seed=5)
    xg, h0, c0, w, gh, bh, b, gc, bc = args
    rec = _Recorder((32, 8))
    with rec:
        out, h, c = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, triton_kernels.kernels())
        torch.autograd.grad(out.sum() + h.sum() + c.sum(), args)
    assert rec.w_casts == 0 and rec.mm and all(set(d) == {torch.float32} for d in rec.mm)


def test_half_precision_saves_gates_and_normalised_values_in_half() -> None:
    B, T, H = 2, 3, 8
    args = [a.detach() for a in _args(B, T, H, torch.float32, seed=2)]
    xg, h0, c0, w, gh, bh, b, gc, bc = args
    s = triton_kernels.kernels().forward(xg, h0.bfloat16(), c0, w.bfloat16(), gh, bh + b, gc, bc, 1e-5)
    assert {t.dtype for t in (s.hs, s.gates, s.ahat, s.chat, s.tc)} == {torch.bfloat16}
    assert {t.dtype for t in (s.cs, s.rstd_a, s.rstd_c)} == {torch.float32}


def test_ln_affine_gradients_in_one_kernel_match_the_sums() -> None:
    """The reduction over row slices (several slices and a ragged last tile) equals the plain sums."""
    g = torch.Generator().manual_seed(3)
    T, B, H = 7, 9, 5  # 63 rows: two 32-row tiles, the second ragged
    dz = torch.randn(B, T, 4 * H, generator=g)
    ahat, dcn, chat = torch.randn(T, B, 4 * H, generator=g), torch.randn(T, B, H, generator=g), \
        torch.randn(T, B, H, generator=g)
    got = triton_kernels.ln_affine_grads(dz, ahat, dcn, chat)
    dzt = dz.transpose(0, 1)
    want = ((dzt * ahat).sum((0, 1)), dzt.sum((0, 1)), (dcn * chat).sum((0, 1)), dcn.sum((0, 1)))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- bench.triton_check ---------------------------------------------------------------------

def test_triton_check_catches_an_unwritten_element() -> None:
    """The check's NaN-filled buffers make a kernel that skips one element fail its case."""
    from bench.triton_check import parity_case

    class SkipsOne(triton_kernels.TritonKernels):
        def forward(self, *args):
            res = super().forward(*args)
            res.hs[-1, -1, -1] = float("nan")  # as if h_T's last element had not been stored
            return res

    assert parity_case(2, 3, 8, "fp32", CPU, triton_kernels.TritonKernels(fill_nan=True)).ok
    bad = parity_case(2, 3, 8, "fp32", CPU, SkipsOne(fill_nan=True))
    assert not bad.ok and bad.error == float("inf")


@pytest.mark.slow
def test_triton_check_quick_runs_the_parity_grid_in_a_subprocess(tmp_path) -> None:
    """What CI keeps proving of the kernels' arithmetic: ``python -m bench.triton_check --quick``."""
    import json
    import subprocess
    import sys

    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the check sets it itself
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "bench.triton_check", "--quick", "--out", str(out)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("parity: PASS (16/16 cases)")
    result = json.loads(out.read_text())
    assert result["parity_ok"] is True and result["interpret"] is True
    assert len(result["parity"]) == 16 and {c["precision"] for c in result["parity"]} == {"fp32", "bf16"}
    assert all(c["ok"] and c["error"] <= c["tolerance"] for c in result["parity"])


# --- CUDA graphs of the loops: the bookkeeping, with a CPU stand-in for torch.cuda.CUDAGraph ----
# There is no GPU here: the stand-in keeps what matters of a graph (static input copies, static
# outputs written in place at each replay, closures bound at capture), so a graph that would read a
# stale tensor, or a replay that would overwrite saved tensors still in use, gives wrong gradients
# here too. bench.triton_check runs the real graphs on a GPU.

from rnn.lnlstm.loop_graphs import LoopGraphs  # noqa: E402


class _CpuGraph:
    captures = 0

    def __init__(self, fn, inputs):
        type(self).captures += 1
        self.fn = fn
        self.statics = [t.clone() for t in inputs]
        self.outputs = fn(*self.statics)

    def replay(self, inputs):
        for s, t in zip(self.statics, inputs, strict=True):
            if s.data_ptr() != t.data_ptr():
                s.copy_(t)
        for out, new in zip(self.outputs, self.fn(*self.statics), strict=True):
            if out.data_ptr() != new.data_ptr():
                out.copy_(new)
        return self.outputs


@pytest.fixture
def cpu_graphs():
    """A layer's graphs as on CUDA, captured by the CPU stand-in."""
    _CpuGraph.captures = 0
    return LoopGraphs(capture=_CpuGraph, devices=("cpu",))


def _step(args, graphs):
    xg, h0, c0, w, gh, bh, b, gc, bc = args
    out, h, c = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, triton_kernels.kernels(), graphs)
    return [out, h, c]


def _grads(res, args, seed):
    g = torch.Generator().manual_seed(seed)
    loss = sum((r * torch.randn(r.shape, generator=g)).sum() for r in res)
    return [t.detach() for t in (*res, *torch.autograd.grad(loss, args))]


def test_graphed_steps_match_eager_steps_as_the_weights_change(cpu_graphs) -> None:
    graphs = cpu_graphs
    for step in range(4):  # eager warm-up, capture, replay, replay; new inputs and weights each time
        args = _args(2, 3, 8, torch.float32, seed=100 + step)
        got = _grads(_step(args, graphs), args, seed=step)
        want = _grads(_step(args, None), args, seed=step)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert _CpuGraph.captures == 2  # the forward loop and the backward loop, once each
    assert graphs.failed is None and not graphs._busy


def test_a_second_forward_before_the_backward_runs_eagerly(cpu_graphs) -> None:
    graphs = cpu_graphs
    for step in range(2):
        args = _args(2, 3, 8, torch.float32, seed=step)
        _grads(_step(args, graphs), args, seed=0)
    a1, a2 = _args(2, 3, 8, torch.float32, seed=7), _args(2, 3, 8, torch.float32, seed=8)
    r1 = _step(a1, graphs)  # replayed: its saved tensors are the graph's buffers
    r2 = _step(a2, graphs)  # must not overwrite them
    g2, g1 = _grads(r2, a2, seed=2), _grads(r1, a1, seed=1)
    for got, args, seed in ((g1, a1, 1), (g2, a2, 2)):
        want = _grads(_step(args, None), args, seed=seed)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_a_forward_dropped_without_backward_frees_the_graphs_and_a_new_shape_recaptures(cpu_graphs) -> None:
    graphs = cpu_graphs
    for step in range(2):
        args = _args(2, 3, 8, torch.float32, seed=step)
        _grads(_step(args, graphs), args, seed=0)
    res = _step(_args(2, 3, 8, torch.float32, seed=5), graphs)
    assert graphs._busy
    del res  # the autograd graph goes, its backward never ran
    assert not graphs._busy
    for step in range(3):  # another batch size: eager once, then captured anew
        args = _args(4, 3, 8, torch.float32, seed=20 + step)
        got = _grads(_step(args, graphs), args, seed=step)
        want = _grads(_step(args, None), args, seed=step)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert _CpuGraph.captures == 4


def test_a_path_runs_its_triton_kernels_through_the_layers_graphs_in_training_only(cpu_graphs) -> None:
    """LNLSTMPath.run_fused on the triton path: the path's kernels, and the layer's graphs where
    autograd records (an evaluation under no_grad leaves them alone)."""
    checked = CheckedKernels(triton_kernels.TritonKernels())
    path = LNLSTMPath(cpu=None, triton=lambda: checked)
    assert path.kernels("triton") is checked.kernels
    with pytest.raises(ValueError, match="no fused kernels for path 'fused-cpu'"):
        path.kernels("fused-cpu")

    def run(args):
        xg, h0, c0, w, gh, bh, b, gc, bc = args
        out, (h, c) = path.run_fused("triton", xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, cpu_graphs)
        return [out, h, c]

    for step in range(3):  # eager warm-up, capture, replay
        args = _args(2, 3, 8, torch.float32, seed=200 + step)
        got = _grads(run(args), args, seed=step)
        want = _grads(_step(args, None), args, seed=step)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert _CpuGraph.captures == 2
    with torch.no_grad():
        run(_args(3, 3, 8, torch.float32, seed=9))  # another shape, but no graphs: nothing dropped
    assert cpu_graphs._fwd is not None and _CpuGraph.captures == 2


def test_a_failed_capture_leaves_the_layer_eager_with_one_warning(caplog) -> None:
    def refuse(fn, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphs = LoopGraphs(capture=refuse, devices=("cpu",))
    with caplog.at_level(logging.WARNING, logger="rnn.lnlstm.loop_graphs"):
        for step in range(3):
            args = _args(2, 3, 8, torch.float32, seed=step)
            got = _grads(_step(args, graphs), args, seed=step)
            want = _grads(_step(args, None), args, seed=step)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b)
    assert graphs.failed == "RuntimeError: operation not permitted when stream is capturing"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.slow
def test_the_kernels_compile_to_cubin_for_hopper(tmp_path) -> None:
    """Not only interpreted: Triton's compiler and ptxas build every kernel for sm_90 (no GPU needed),
    in fp32 and bf16 buffers, int32 and int64 step offsets, at the blocks of H 5 and H 384/512.
    (``python -m bench.triton_check --compile-only`` builds the whole set, sm_80 too: 78 variants.)"""
    import json
    import subprocess
    import sys

    code = ("import json, sys; from dataclasses import asdict; from bench.triton_compile import compile_kernels; "
            "json.dump([asdict(c) for c in compile_kernels((90,), (8, 512), ('fp32', 'bf16'))], sys.stdout)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    built = json.loads(proc.stdout)
    assert len(built) == 18 and {b["kernel"] for b in built} == {"_fwd_step", "_bwd_step", "_ln_grads"}
    assert [b for b in built if not b["ok"]] == []
    assert all(b["cubin_bytes"] > 1000 for b in built)
