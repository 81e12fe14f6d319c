"""The real CUDA out-of-memory path of a throughput sweep (a GPU check, not a test).

Fills all but ``--leave-gb`` of the GPU with one tensor, then measures batch sizes of which some
cannot fit. Expected: the sizes that fit are ``ok``, the first that does not is ``oom`` (a real
``torch.OutOfMemoryError``, caught), larger ones after it are skipped as ``oom``, and a smaller
size measured *after* the OOM runs ``ok`` again (the cache was emptied and the sweep went on)::

    python -m bench.oom_check            # on a CUDA machine
"""

from __future__ import annotations

import argparse
import sys

import torch

from rnn.config import DataConfig, ModelConfig, RunConfig, ThroughputConfig, TrainConfig
from rnn.throughput import measure_throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leave-gb", type=float, default=6.0, help="GPU memory left free for the sweep")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU", file=sys.stderr)
        return 2
    free, total = torch.cuda.mem_get_info()
    blocker = torch.empty(int(free - args.leave_gb * 2**30), dtype=torch.uint8, device="cuda")
    print(f"{torch.cuda.get_device_name()}: {total / 2**30:.1f} GiB, blocked {blocker.numel() / 2**30:.1f} GiB, "
          f"left {args.leave_gb} GiB; torch {torch.__version__}")
    cfg = RunConfig(
        data=DataConfig(corpus="builtin", level="char", seq_len=25),
        model=ModelConfig(cell="lstm", embedding_dim=192, hidden_size=384, num_layers=2, dropout=0.0),
        train=TrainConfig(amp="off", device="cuda"),
    )
    tp = ThroughputConfig(batch_sizes=(1024, 16384, 65536, 4096), warmup_steps=2, measure_steps=5)
    rows = measure_throughput(cfg, tp, device="cuda")
    print(f"{'B':>6} {'status':<6} {'samples/s':>12} {'peak MB':>9}  error")
    for r in rows:
        speed = f"{r.samples_per_s:,.0f}" if r.samples_per_s else "-"
        peak = f"{r.peak_mem_mb:,.0f}" if r.peak_mem_mb else "-"
        error = r.error.splitlines()[0][:90] if r.error else ""
        print(f"{r.batch_size:>6} {r.status:<6} {speed:>12} {peak:>9}  {error}")
    statuses = [r.status for r in rows]
    ok = statuses == ["ok", "oom", "oom", "ok"]
    print("real OOM path:", "as expected" if ok else f"UNEXPECTED {statuses}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
