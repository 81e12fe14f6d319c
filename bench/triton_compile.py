"""The layer-norm LSTM's Triton kernels built ahead of time to cubin, with or without a GPU.

    python -m bench.triton_check --compile-only

Every kernel of :mod:`rnn.lnlstm.triton_kernels` (forward step, backward step, LayerNorm-gradient reduction)
is built by Triton's own compiler and ptxas for sm_80 (A100) and sm_90 (H100/H200), at hidden-size
blocks 8, 512 and 1024, in fp32, bf16 and fp16 buffers, with int32 and int64 step offsets: a kernel
the interpreter runs but the compiler rejects fails here, on any machine. Not under
``TRITON_INTERPRET=1`` (that replaces the kernels with interpreted functions).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from rnn.errors import one_line

log = logging.getLogger("bench.triton_check")

#: Targets (compute capability), hidden-size blocks, buffer precisions.
COMPILE_TARGETS = (80, 90)
COMPILE_BLOCKS = (8, 512, 1024)
COMPILE_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class CompiledKernel:
    kernel: str
    target: int
    block: Optional[int]
    precision: str
    offsets: str  # i32 or i64
    ok: bool
    cubin_bytes: int = 0
    failure: Optional[str] = None


def _signatures(precision: str, offsets: str) -> dict[str, dict[str, str]]:
    """The argument types the kernels get at run time for ``precision`` (the matmul dtype under
    autocast; the activations ``x`` and the cell states stay float32)."""
    mm = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}[precision]
    save = mm  # gates and normalised values: half under half, else float32
    f, off, i = "*fp32", offsets, "i32"
    fwd = dict(raw=f"*{mm}", x=f, x_sb=i, x_off=off, gh=f, bh=f, gc=f, bc=f, cs=f, c_off=off, ahat=f"*{save}",
               g_off=off, gates=f"*{save}", chat=f"*{save}", h_off=off, tc=f"*{save}", hs=f"*{mm}", rstd_a=f,
               rstd_c=f, r_off=off, H=i, eps="fp32")
    bwd = dict(dout=f"*{mm}", do_sb=i, do_off=off, dh=f"*{mm}", dc=f, gates=f"*{save}", g_off=off, tc=f"*{save}",
               chat=f"*{save}", h_off=off, cs=f, c_off=off, rstd_c=f, rstd_a=f, r_off=off, ahat=f"*{save}", gh=f,
               gc=f, dz=f"*{mm}", dz_sb=i, dz_off=off, da=f"*{save}", dcn=f, H=i)
    ln = dict(dz=f"*{mm}", dz_sb=i, ahat=f"*{save}", dcn=f, chat=f"*{save}", part=f, rows=i, B=i, H=i, rows_per=i)
    return {"_fwd_step": fwd, "_bwd_step": bwd, "_ln_grads": ln}


def compile_kernels(targets: Sequence[int] = COMPILE_TARGETS, blocks: Sequence[int] = COMPILE_BLOCKS,
                    precisions: Sequence[str] = COMPILE_PRECISIONS) -> list[CompiledKernel]:
    """Build every kernel ahead of time to cubin (no GPU needed; not under TRITON_INTERPRET)."""
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset; 1 is its default
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rnn.lnlstm import triton_kernels

    results = []
    for target in targets:
        for precision in precisions:
            for offsets in ("i32", "i64"):
                sigs = _signatures(precision, offsets)
                for name, types in sigs.items():
                    fn = getattr(triton_kernels, name)
                    if name == "_ln_grads":
                        if offsets == "i64":
                            continue  # no step offsets: its row offsets are int64 inside
                        variants: list[tuple[Optional[int], dict[str, int]]] = [
                            (None, {"BLOCK_R": triton_kernels._LN_BLOCK_R, "BLOCK_N": triton_kernels._LN_BLOCK_N})]
                    else:
                        variants = [(b, {"BLOCK": b}) for b in blocks]
                    for block, const in variants:
                        sig = {a: ("constexpr" if a in const else types[a]) for a in fn.arg_names}
                        try:
                            ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const),
                                                target=GPUTarget("cuda", target, 32))
                            results.append(CompiledKernel(name, target, block, precision, offsets, True,
                                                          len(ck.asm["cubin"])))
                        except Exception as e:  # noqa: BLE001 (a failure is a result here)
                            results.append(CompiledKernel(name, target, block, precision, offsets, False,
                                                          failure=one_line(e)))
                            log.error("compile %s sm_%d block %s %s %s: %s", name, target, block, precision,
                                      offsets, results[-1].failure)
    return results


