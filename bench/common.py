"""Shapes, result records, the machine description and the printed table."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from rnn.device import device_report


@dataclass(frozen=True)
class Shape:
    """A model and batch shape. ``cpu_batch_size`` replaces ``batch_size`` on the CPU unless
    ``--full-shapes``: at the full batch one CPU step takes 10-20 s on 2 cores."""

    name: str
    batch_size: int
    seq_len: int
    embedding_dim: int
    hidden_size: int
    num_layers: int
    cpu_batch_size: int

    def on(self, device: torch.device, full: bool) -> Shape:
        """The shape as run on ``device``."""
        if device.type == "cpu" and not full:
            return Shape(self.name, self.cpu_batch_size, self.seq_len, self.embedding_dim,
                         self.hidden_size, self.num_layers, self.cpu_batch_size)
        return self

    def describe(self) -> str:
        return (f"B={self.batch_size} T={self.seq_len} E={self.embedding_dim} "
                f"H={self.hidden_size} L={self.num_layers}")


#: The seed project's shape, and a classic char-rnn shape (Karpathy's defaults, 2 x 512).
SHAPES: tuple[Shape, ...] = (
    Shape("seed", batch_size=2048, seq_len=25, embedding_dim=192, hidden_size=384, num_layers=2, cpu_batch_size=64),
    Shape("char-rnn", batch_size=64, seq_len=100, embedding_dim=128, hidden_size=512, num_layers=2, cpu_batch_size=8),
)
#: ``--quick``: checks that the harness runs end to end; its figures mean nothing.
QUICK_SHAPES: tuple[Shape, ...] = (
    Shape("tiny", batch_size=8, seq_len=16, embedding_dim=16, hidden_size=32, num_layers=2, cpu_batch_size=8),
)


@dataclass
class Ratio:
    """One line of the table: ``engine / baseline`` samples/s, timed alternately."""

    measure: str
    shape: str
    shape_detail: str
    engine_samples_per_s: float
    baseline_samples_per_s: float
    target: Optional[float]
    precision: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.engine_samples_per_s / self.baseline_samples_per_s

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["meets_target"] = None if self.target is None else self.ratio >= self.target
        return d


def machine(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: device, CPU, torch version and date."""
    report = device_report(device)
    cpu = device_report(torch.device("cpu"))["device_name"]
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": report.get("device_name"),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": report.get("cudnn_version"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def format_table(ratios: Sequence[Ratio]) -> str:
    """A fixed-width table of the ratios."""
    head = (f"{'measure':<34} {'shape':<9} {'B':>5} {'prec':<5} {'engine/s':>11} {'baseline/s':>11} "
            f"{'ratio':>6} {'target':>7}")
    lines = [head, "-" * len(head)]
    for r in ratios:
        target = "" if r.target is None else f">={r.target:.2f}"
        mark = "" if r.target is None else ("  ok" if r.ratio >= r.target else "  BELOW")
        lines.append(
            f"{r.measure:<34} {r.shape:<9} {r.shape_detail.split()[0][2:]:>5} {r.precision:<5} "
            f"{r.engine_samples_per_s:>11,.1f} {r.baseline_samples_per_s:>11,.1f} {r.ratio:>5.2f}x {target:>7}{mark}"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the folder; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
