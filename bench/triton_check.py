"""``python -m bench.triton_check``: the layer-norm LSTM's Triton kernels, checked compiled and timed.

    python -m bench.triton_check --device cuda --out triton-check.json   # on a GPU: parity, then timings
    python -m bench.triton_check --quick                                 # CPU, TRITON_INTERPRET=1: parity only
    python -m bench.triton_check --compile-only                          # CPU: compile to sm_80/sm_90 cubin

0. **Compiled**, with or without a GPU (``--compile-only``, and first in a GPU run): every kernel
   (forward step, backward step, LayerNorm-gradient reduction) built ahead of time to cubin for
   sm_80 (A100) and sm_90 (H100/H200) by Triton's own compiler and ptxas, at hidden-size blocks
   8, 512 and 1024, in fp32, bf16 and fp16 buffers, with int32 and int64 step offsets. A kernel
   that the interpreter runs but the compiler rejects fails here, on any machine (:mod:`bench.triton_compile`).

1. **Parity** of :class:`rnn.lnlstm.FusedLNLSTM` on the Triton kernels against the PyTorch loop
   (:func:`rnn.lnlstm.ln_lstm_recurrence_reference`) in float64: the outputs ``out``, ``h_T``, ``c_T``
   and the gradient of every input, over B {1, 3, 64, 2048} x T {1, 25, 100} x H {5, 384, 512, 1024},
   in fp32 (IEEE matmuls) and bf16 (autocast, as the trainer runs it). Every buffer the kernels write
   is filled with NaN first (``TritonKernels(fill_nan=True)``), so an element left unwritten shows.
   A case passes when its error, ``max |got - want| / max(1, max |want|)`` per tensor, is within
   ``max(floor, 8 x the PyTorch loop's own error at that precision)``: the kernels may not be less
   accurate than the loop they replace. On CUDA one more case, B 10,600 x T 100 x H 512 (bf16),
   passes 2**31 elements in the gate buffers: the int64 offsets, checked on its first and last rows.
   Also on CUDA, the CUDA-graph path (:mod:`rnn.lnlstm.loop_graphs`) at H 512 over the B x T grid: three
   calls through one layer's graphs with new inputs each (eager warm-up, capture, replay), each
   against the float64 loop, so a graph reading a stale buffer shows.
2. **Timings**, CUDA only: one layer (input E, hidden H), forward + backward, Triton layer-norm LSTM
   against cuDNN ``nn.LSTM`` of the same size, CUDA events, median of the timed iterations, at the seed
   shape (B 2048, T 25, E 192, H 384) and the char-rnn shape (B 64, T 100, E 128, H 512), in fp32 (IEEE
   matmuls, TF32 off for both), tf32 (on for both) and bf16 (autocast). The layer runs as the trainer
   runs it, with its loops in CUDA graphs; ``triton_eager_ms`` is the same layer without graphs.
   ``ratio`` is cuDNN's time over Triton's (with graphs): Triton's speed as a fraction of cuDNN's.

Prints one summary table last and writes JSON (``--out``) with ``device``, ``parity_ok``, ``parity``,
``timings`` and ``ratios`` (keyed ``seed/fp32`` ... ``char-rnn/bf16``). Exit status 1 when a parity case
fails (the timings still run), 0 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

from bench.triton_compile import COMPILE_BLOCKS, COMPILE_PRECISIONS, COMPILE_TARGETS, compile_kernels
from rnn.errors import one_line

#: Parity grid (the full run); ``--quick`` runs QUICK_GRID under the interpreter.
FULL_GRID = {"B": (1, 3, 64, 2048), "T": (1, 25, 100), "H": (5, 384, 512, 1024)}
QUICK_GRID = {"B": (1, 3), "T": (1, 6), "H": (5, 16)}
#: B x T x 4H >= 2**31 at T 100, H 512 (int64 offsets).
INT64_CASE = (10_600, 100, 512)
#: The error floor per precision (fp32: IEEE matmuls against float64; bf16: 8-bit mantissas, and the
#: kernels keep h, the gates and the normalised values in bf16 where the loop keeps them in fp32).
FLOOR = {"fp32": 1e-4, "bf16": 6e-2}
#: How much less accurate than the PyTorch loop at the same precision the kernels may be.
LOOP_FACTOR = 8.0
#: Timing shapes: (B, T, E, H), one layer each.
TIMING_SHAPES = {"seed": (2048, 25, 192, 384), "char-rnn": (64, 100, 128, 512)}
PRECISIONS = ("fp32", "tf32", "bf16")

log = logging.getLogger("bench.triton_check")


@dataclass
class ParityCase:
    B: int
    T: int
    H: int
    precision: str
    ok: bool
    worst: str  # the tensor with the largest error relative to its tolerance
    error: float  # its error
    tolerance: float  # its tolerance
    failure: Optional[str] = None  # an exception, if one was raised
    seconds: float = 0.0
    graphs: bool = False  # run through a layer's CUDA graphs (three calls)


@dataclass
class Timing:
    shape: str
    precision: str
    B: int
    T: int
    E: int
    H: int
    triton_ms: float
    cudnn_ms: float
    triton_eager_ms: float  # the same layer without CUDA graphs
    recurrence: str  # the path the layer-norm layer took (triton, or torch after a failed self-check)

    @property
    def ratio(self) -> float:
        return self.cudnn_ms / self.triton_ms


_NAMES = ("out", "h_T", "c_T", "d xg", "d h0", "d c0", "d W_h", "d LN_h gain", "d LN_h bias", "d b",
          "d LN_c gain", "d LN_c bias")


def _inputs(B: int, T: int, H: int, seed: int) -> list[Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    shapes = [(B, T, 4 * H), (B, H), (B, H), (4 * H, H), (4 * H,), (4 * H,), (4 * H,), (H,), (H,)]
    scales = [1.0, 1.0, 1.0, H**-0.5, 0.1, 0.1, 0.1, 0.1, 0.1]
    out = [torch.randn(s, generator=g, dtype=torch.float64) * k for s, k in zip(shapes, scales, strict=True)]
    out[4] += 1.0  # LayerNorm gains around 1
    out[7] += 1.0
    return out


def _run(kind: str, base: list[Any], proj: list[Any], device: Any, precision: str, kernels: Any,
         graphs: Any = None) -> list[Any]:
    """Outputs and input gradients of the Triton Function (``kind`` triton) or the loop (``loop``)."""
    import torch

    from rnn.lnlstm import FusedLNLSTM, ln_lstm_recurrence_reference
    from rnn.lnlstm.self_check import projected_loss

    dtype = torch.float64 if precision == "fp64" else torch.float32
    args = [t.to(device, dtype).requires_grad_() for t in base]
    xg, h0, c0, w, gh, bh, b, gc, bc = args
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        if kind == "triton":
            out, h, c = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, kernels, graphs)
        else:
            out, (h, c) = ln_lstm_recurrence_reference(xg, h0, c0, w, gh, bh, b, gc, bc, 1e-5)
    outs = [out, h, c]
    grads = torch.autograd.grad(projected_loss(outs, proj), args)
    return [t.detach() for t in (*outs, *grads)]


def parity_case(B: int, T: int, H: int, precision: str, device: Any, kernels: Any, graphs: bool = False) -> ParityCase:
    """One case; with ``graphs``, three calls through one layer's CUDA graphs, each with new inputs."""
    import torch

    from rnn.lnlstm.loop_graphs import LoopGraphs
    from rnn.lnlstm.self_check import max_relative_error

    start = time.perf_counter()
    layer_graphs = LoopGraphs() if graphs else None
    worst, worst_err, worst_tol, worst_frac = "", 0.0, 0.0, -1.0
    for call in range(3 if graphs else 1):
        base = _inputs(B, T, H, seed=B * 7919 + T * 31 + H + 1000 * call)
        g = torch.Generator().manual_seed(H + T + call)
        proj = [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in ((B, T, H), (B, H), (B, H))]
        try:
            want = _run("loop", base, proj, device, "fp64", kernels)
            loop = _run("loop", base, proj, device, precision, kernels)
            got = _run("triton", base, proj, device, precision, kernels, layer_graphs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 (a failure is a result here)
            return ParityCase(B, T, H, precision, False, "", math.inf, 0.0, one_line(e), time.perf_counter() - start,
                              graphs)
        for name, a, ref, lp in zip(_NAMES, got, want, loop, strict=True):
            err = max_relative_error(a, ref)
            tol = max(FLOOR[precision], LOOP_FACTOR * max_relative_error(lp, ref))
            frac = err / tol if math.isfinite(err) else math.inf
            if frac > worst_frac:
                label = f"{name} (call {call + 1})" if graphs else name
                worst, worst_err, worst_tol, worst_frac = label, err, tol, frac
    failure = None
    if layer_graphs is not None and layer_graphs.failed:
        failure, worst_frac = f"graph capture failed: {layer_graphs.failed}", math.inf
    return ParityCase(B, T, H, precision, worst_frac <= 1.0, worst, worst_err, worst_tol, failure,
                      time.perf_counter() - start, graphs)


def int64_case(device: Any, kernels: Any) -> ParityCase:
    """B x T x 4H past 2**31 in bf16: the first and last two batch rows against the float64 loop on
    those rows alone (rows are independent), outputs and their input gradients."""
    import torch

    from rnn.lnlstm import FusedLNLSTM, ln_lstm_recurrence_reference
    from rnn.lnlstm.self_check import max_relative_error

    B, T, H = INT64_CASE
    start = time.perf_counter()
    rows = torch.tensor([0, 1, B - 2, B - 1])
    small = _inputs(4, T, H, seed=64)
    try:
        g = torch.Generator(device=device).manual_seed(0)
        xg = torch.randn((B, T, 4 * H), generator=g, device=device, dtype=torch.float32)
        xg[rows.to(device)] = small[0].to(device, torch.float32)
        h0 = torch.zeros((B, H), device=device)
        c0 = torch.zeros((B, H), device=device)
        h0[rows.to(device)] = small[1].to(device, torch.float32)
        c0[rows.to(device)] = small[2].to(device, torch.float32)
        params = [t.to(device, torch.float32) for t in small[3:]]
        w, gh, bh, b, gc, bc = params
        xg.requires_grad_()
        proj = torch.randn((4, T, H), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, _, _ = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, kernels)
        sel = out[rows.to(device)]
        (dxg,) = torch.autograd.grad((sel.double() * proj.to(device)).sum(), [xg])
        got = [sel.detach(), dxg[rows.to(device)]]
        del out, dxg, xg
        ref_in = [t.to(device).requires_grad_() for t in small]
        ref_out, _ = ln_lstm_recurrence_reference(*ref_in, 1e-5)
        (ref_dxg,) = torch.autograd.grad((ref_out * proj.to(device)).sum(), [ref_in[0]])
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001
        return ParityCase(B, T, H, "bf16", False, "", math.inf, 0.0, one_line(e), time.perf_counter() - start)
    errs = {"out (rows 0, 1, B-2, B-1)": max_relative_error(got[0], ref_out),
            "d xg (same rows)": max_relative_error(got[1], ref_dxg)}
    tol = 2 * FLOOR["bf16"]  # 100 steps in bf16; a wrapped offset reads another row: O(1) off, or NaN
    worst = max(errs, key=lambda k: errs[k])
    return ParityCase(B, T, H, "bf16", errs[worst] <= tol, worst, errs[worst], tol,
                      seconds=time.perf_counter() - start)


def time_layer(shape: str, precision: str, device: Any, iters: int, warmup: int) -> Timing:
    """One layer forward + backward, layer-norm LSTM (Triton) and cuDNN ``nn.LSTM``, interleaved."""
    import torch
    from torch import nn

    from rnn.lnlstm import LayerNormLSTM, LNLSTMPath

    B, T, E, H = TIMING_SHAPES[shape]
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    ln = LayerNormLSTM(E, H, num_layers=1).to(device)
    # The Triton loops launched step by step: a path without CUDA graphs.
    ln_eager = LayerNormLSTM(E, H, num_layers=1, path=replace(LNLSTMPath.from_env(), graphs=False)).to(device)
    ln_eager.load_state_dict(ln.state_dict())
    cudnn = nn.LSTM(E, H, num_layers=1, batch_first=True).to(device)
    x = torch.randn(B, T, E, device=device, requires_grad=True)
    dy = torch.randn(B, T, H, device=device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    recurrence = ln.recurrence_path(device, dtype)

    def step(model: Any) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y, _ = model(x)
        y.backward(dy.to(y.dtype))

    models = {"ln": ln, "ln_eager": ln_eager, "cudnn": cudnn}
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for _ in range(max(warmup, 3)):  # graphs: the first call is eager, the second captures
            step(model)
    torch.cuda.synchronize(device)
    for _ in range(iters):  # interleaved, so drift (clocks, other tenants) hits all alike
        for name, model in models.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step(model)
            b.record()
            b.synchronize()
            times[name].append(a.elapsed_time(b))
    return Timing(shape, precision, B, T, E, H, statistics.median(times["ln"]), statistics.median(times["cudnn"]),
                  statistics.median(times["ln_eager"]), recurrence)


def format_summary(device_name: str, cases: Sequence[ParityCase], timings: Sequence[Timing]) -> str:
    lines = [f"triton_check on {device_name}"]
    by: dict[str, list[ParityCase]] = {}
    for c in cases:
        kind = "int64" if (c.B, c.T, c.H) == INT64_CASE else f"{c.precision}{'+graph' if c.graphs else ''}"
        by.setdefault(kind, []).append(c)
    lines.append(f"{'parity':<10} {'cases':>5} {'failed':>6}  {'worst (error / tolerance)':<50}")
    for prec, cs in by.items():
        failed = [c for c in cs if not c.ok]
        worst = max(cs, key=lambda c: c.error / c.tolerance if c.tolerance else math.inf)
        what = worst.failure or f"{worst.worst} {worst.error:.2e} / {worst.tolerance:.2e}"
        where = f"B{worst.B} T{worst.T} H{worst.H}"
        lines.append(f"{prec:<10} {len(cs):>5} {len(failed):>6}  {where:<18} {what}")
    if timings:
        lines.append(f"{'shape':<9} {'prec':<5} {'path':<7} {'triton ms':>10} {'no graph':>10} {'cuDNN ms':>10} "
                     f"{'ratio':>7}  target")
        for t in timings:
            target = 1.0 if t.shape == "char-rnn" else 0.8
            mark = "ok" if t.ratio >= target else "BELOW"
            lines.append(f"{t.shape:<9} {t.precision:<5} {t.recurrence:<7} {t.triton_ms:>10.3f} "
                         f"{t.triton_eager_ms:>10.3f} {t.cudnn_ms:>10.3f} {t.ratio:>6.2f}x  >={target:.1f} {mark}")
    ok = all(c.ok for c in cases)
    lines.append(f"parity: {'PASS' if ok else 'FAIL'} ({sum(c.ok for c in cases)}/{len(cases)} cases)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.triton_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="parity only, a small grid, on the CPU under TRITON_INTERPRET=1 (what the test suite runs)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per side (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per side (default 3)")
    p.add_argument("--no-timing", action="store_true", help="parity only")
    p.add_argument("--compile-only", action="store_true",
                   help="only build every kernel to cubin for sm_80 and sm_90 (no GPU needed)")
    p.add_argument("--out", type=Path, default=None, help="JSON output")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.compile_only:
        if os.environ.get("TRITON_INTERPRET") == "1":
            p.error("--compile-only builds real kernels: unset TRITON_INTERPRET")
        built = compile_kernels()
        bad = [c for c in built if not c.ok]
        if args.out is not None:
            from bench.common import write_json

            write_json(args.out, {"compiled": [asdict(c) for c in built], "compile_ok": not bad})
        targets = ", ".join(f"sm_{t}" for t in COMPILE_TARGETS)
        print(f"compiled {len(built) - len(bad)}/{len(built)} kernel variants to cubin ({targets}; blocks "
              f"{COMPILE_BLOCKS}; {', '.join(COMPILE_PRECISIONS)}; i32 and i64 offsets)"
              + "".join(f"\nFAILED {c.kernel} sm_{c.target} block {c.block} {c.precision} {c.offsets}: {c.failure}"
                        for c in bad))
        return 1 if bad else 0
    if args.quick:
        args.device = "cpu"
        # Before Triton is imported anywhere: the kernels are decorated at import.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from bench.common import write_json
    from rnn.device import device_report
    from rnn.lnlstm import triton_kernels

    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("on the CPU the kernels run only under TRITON_INTERPRET=1: use --quick")
    if device.type == "cpu":
        torch.set_num_threads(1)
    kernels = triton_kernels.TritonKernels(fill_nan=True)
    name = str(device_report(device).get("device_name"))
    grid = QUICK_GRID if args.quick else FULL_GRID
    # Parity in IEEE fp32: the kernels' arithmetic, not TF32's rounding, is what is checked.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases: list[ParityCase] = []
    t0 = time.perf_counter()
    for precision in ("fp32", "bf16"):
        for H in grid["H"]:
            for T in grid["T"]:
                for B in grid["B"]:
                    case = parity_case(B, T, H, precision, device, kernels)
                    cases.append(case)
                    level = logging.INFO if case.ok else logging.ERROR
                    log.log(level, "parity %s B%d T%d H%d: %s (%s %.2e, tolerance %.2e) %.1fs", precision, B, T, H,
                            "ok" if case.ok else "FAIL", case.failure or case.worst, case.error, case.tolerance,
                            case.seconds)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        for precision in ("fp32", "bf16"):
            for T in grid["T"]:
                for B in grid["B"]:
                    case = parity_case(B, T, 512, precision, device, kernels, graphs=True)
                    cases.append(case)
                    log.log(logging.INFO if case.ok else logging.ERROR, "graphs %s B%d T%d H512: %s (%s %.2e) %.1fs",
                            precision, B, T, "ok" if case.ok else "FAIL", case.failure or case.worst, case.error,
                            case.seconds)
        case = int64_case(device, kernels)
        cases.append(case)
        log.log(logging.INFO if case.ok else logging.ERROR, "int64 B%d T%d H%d: %s (%s %.2e) %.1fs", *INT64_CASE,
                "ok" if case.ok else "FAIL", case.failure or case.worst, case.error, case.seconds)
        torch.cuda.empty_cache()
    log.info("parity: %d cases in %.1fs", len(cases), time.perf_counter() - t0)

    timings: list[Timing] = []
    if device.type == "cuda" and not args.no_timing:
        for shape in TIMING_SHAPES:
            for precision in PRECISIONS:
                t = time_layer(shape, precision, device, args.iters, args.warmup)
                timings.append(t)
                log.info("timing %s %s: triton %.3f ms, cuDNN %.3f ms, %.2fx", shape, precision, t.triton_ms,
                         t.cudnn_ms, t.ratio)
    parity_ok = all(c.ok for c in cases)
    payload = {
        "device": name,
        "interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "torch_version": torch.__version__,
        "triton_version": __import__("triton").__version__,
        "parity_ok": parity_ok,
        "parity": [asdict(c) for c in cases],
        "timings": [{**asdict(t), "ratio": t.ratio} for t in timings],
        "ratios": {f"{t.shape}/{t.precision}": t.ratio for t in timings},
    }
    if args.out is not None:
        write_json(args.out, payload)
    print(format_summary(name, cases, timings), flush=True)
    return 0 if parity_ok else 1


if __name__ == "__main__":
    sys.exit(main())
