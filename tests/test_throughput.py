"""rnn.throughput: rows per batch size, OOM and errors as data, the CPU memory guard, auto sizes."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rnn import device as rnn_device
from rnn.config import DataConfig, ModelConfig, RunConfig, ThroughputConfig, TrainConfig
from rnn.throughput import (
    SKIPPED_AFTER_OOM,
    ThroughputRow,
    available_memory_bytes,
    estimate_step_memory,
    iter_throughput,
    mark_best,
    measure_throughput,
)

SEQ_LEN = 8
THROUGHPUT_COLUMNS = (
    "batch_size", "status", "samples_per_s", "tokens_per_s", "step_time_ms", "step_time_ms_max",
    "peak_mem_mb", "device", "device_name", "precision", "torch_version", "error", "is_best", "recurrence",
    "compiled", "compile_s", "tf32",
)


def tiny_config(**model: object) -> RunConfig:
    return RunConfig(
        data=DataConfig(corpus="builtin", level="char", seq_len=SEQ_LEN),
        model=ModelConfig(**{"embedding_dim": 8, "hidden_size": 16, "num_layers": 1, "dropout": 0.0, **model}),
        train=TrainConfig(device="cpu", seed=0),
    )


def tp(batch_sizes: object, **kw: object) -> ThroughputConfig:
    return ThroughputConfig(batch_sizes=batch_sizes, **{"warmup_steps": 1, "measure_steps": 2, **kw})


def run(tmp_path: Path, cfg: ThroughputConfig, run_config: RunConfig | None = None, hook=None) -> list[ThroughputRow]:
    return measure_throughput(run_config or tiny_config(), cfg, cache_dir=tmp_path, batch_hook=hook)


def max_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def test_row_fields_match_the_results_schema() -> None:
    # THROUGHPUT_FIXED is trial_id followed by exactly these columns, in this order.
    pytest.importorskip("pyarrow")
    from orchestrator.results import THROUGHPUT_FIXED

    assert THROUGHPUT_FIXED.names[1:] == list(ThroughputRow.__dataclass_fields__)
    assert tuple(ThroughputRow.__dataclass_fields__) == THROUGHPUT_COLUMNS


def test_explicit_sizes_give_sane_rows_and_one_best(tmp_path: Path) -> None:
    rows = run(tmp_path, tp((4, 16, 8)))
    assert [r.batch_size for r in rows] == [4, 16, 8]  # the order given
    for r in rows:
        assert r.status == "ok" and r.error is None
        assert r.samples_per_s == pytest.approx(r.batch_size / (r.step_time_ms / 1e3))
        assert r.tokens_per_s == pytest.approx(r.samples_per_s * SEQ_LEN)
        assert 0 < r.step_time_ms <= r.step_time_ms_max
        assert r.peak_mem_mb is not None and r.peak_mem_mb > 0
        assert (r.device, r.precision, r.torch_version) == ("cpu", "fp32", torch.__version__)
        assert r.device_name
    best = [r for r in rows if r.is_best]
    assert len(best) == 1
    assert best[0].samples_per_s == max(r.samples_per_s for r in rows)
    assert set(rows[0].to_dict()) == set(THROUGHPUT_COLUMNS)


def test_fake_oom_is_a_row_and_larger_sizes_are_skipped(tmp_path: Path) -> None:
    seen: list[int] = []

    def hook(batch_size: int) -> None:
        seen.append(batch_size)
        if batch_size == 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (fake)")

    rows = run(tmp_path, tp((4, 8, 16, 2)), hook=hook)
    by_size = {r.batch_size: r for r in rows}
    assert [r.batch_size for r in rows] == [4, 8, 16, 2]
    assert by_size[4].status == "ok"
    assert by_size[8].status == "oom" and "OutOfMemoryError" in by_size[8].error
    assert by_size[8].samples_per_s is None and by_size[8].step_time_ms is None
    assert by_size[16].status == "oom" and by_size[16].error == SKIPPED_AFTER_OOM
    # A smaller size after the OOM still runs, on a model whose state the OOM did not corrupt.
    assert by_size[2].status == "ok" and by_size[2].samples_per_s > 0
    assert seen == [4, 8, 2]  # 16 was skipped, not attempted
    assert sum(r.is_best for r in rows) == 1
    assert next(r for r in rows if r.is_best).status == "ok"


def test_other_exceptions_are_error_rows_and_the_sweep_continues(tmp_path: Path) -> None:
    def hook(batch_size: int) -> None:
        if batch_size == 8:
            raise ValueError("a broken kernel at batch 8")

    rows = run(tmp_path, tp((4, 8, 16)), hook=hook)
    assert [r.status for r in rows] == ["ok", "error", "ok"]
    assert rows[1].error == "ValueError: a broken kernel at batch 8"
    assert not rows[1].is_best


@pytest.mark.parametrize(
    ("amp", "error"),
    [("fp16", "ValueError: amp 'fp16' is not supported on the CPU"),
     ("bf16", "DeviceUnavailableError: amp 'bf16' requested but this CPU")],
)
def test_a_precision_the_cpu_refuses_is_an_error_row_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: str, error: str
) -> None:
    """fp16 is refused on every CPU; bf16 on one without native bf16 (the probe is patched here;
    tests/test_device.py runs it for real under oneDNN held to AVX2)."""
    monkeypatch.setattr(rnn_device, "_cpu_bf16_supported", lambda: False)
    config = tiny_config()
    config = RunConfig(data=config.data, model=config.model, train=TrainConfig(device="cpu", seed=0, amp=amp))
    rows = run(tmp_path, tp((4, 8)), run_config=config)
    assert [(r.status, r.precision) for r in rows] == [("error", amp), ("error", amp)]
    assert all(r.error is not None and r.error.startswith(error) for r in rows)
    assert not any(r.is_best for r in rows)


def test_cpu_memory_guard_skips_an_absurd_batch_without_allocating(tmp_path: Path) -> None:
    huge = 2**24
    cfg = tiny_config(hidden_size=256)
    attempted: list[int] = []
    before = max_rss_mb()
    rows = run(tmp_path, tp((4, huge)), run_config=cfg, hook=attempted.append)
    assert rows[0].status == "ok"
    assert rows[1].status == "oom"
    assert rows[1].error.startswith("estimated ") and "exceeds available" in rows[1].error
    assert attempted == [4]  # refused before the hook, i.e. before anything ran
    # One real step at 2**24 x 8 tokens would need tens of GB; the process barely grew.
    assert max_rss_mb() - before < 512


def test_memory_estimate_scales_with_batch_and_cell() -> None:
    def est(batch: int, **model: object) -> int:
        cfg = ModelConfig(**{"embedding_dim": 192, "hidden_size": 384, "num_layers": 2, **model})
        return estimate_step_memory(cfg, vocab_size=65, batch_size=batch, seq_len=25, num_params=3_000_000)

    params_only = 20 * 3_000_000
    assert est(2048) - params_only == pytest.approx(2 * (est(1024) - params_only), rel=1e-6)
    assert est(512, cell="lstm", layer_norm=True) > est(512) > est(512, cell="gru") > est(512, cell="rnn")
    assert est(512, bidirectional=True) > est(512)
    # The seed's shape (layer-norm LSTM, B=2048) fits a few GB; B=2**20 never fits any machine.
    assert est(2048, layer_norm=True) < 8 * 2**30
    assert est(2**20) > 1 * 2**40


def test_available_memory_is_positive_here() -> None:
    free = available_memory_bytes()
    assert free is not None and free > 0


def test_auto_stops_at_the_max_batch_size(tmp_path: Path) -> None:
    rows = run(tmp_path, tp("auto", auto_start=4, auto_max_batch_size=16, auto_min_gain=-1.0))
    assert [r.batch_size for r in rows] == [4, 8, 16]
    assert all(r.status == "ok" for r in rows)
    assert sum(r.is_best for r in rows) == 1


def test_auto_stops_when_the_gain_is_too_small(tmp_path: Path) -> None:
    # A 1000% gain per doubling is impossible: the second and third sizes miss, and that stops it.
    rows = run(tmp_path, tp("auto", auto_start=4, auto_max_batch_size=1024, auto_min_gain=10.0))
    assert [r.batch_size for r in rows] == [4, 8, 16]
    assert sum(r.is_best for r in rows) == 1


def test_auto_is_not_stopped_by_one_noisy_measurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Samples/s by batch size as a noisy machine measures them: 64 dips below 32 by chance."""
    import dataclasses

    import rnn.throughput as T

    speed = {32: 2330.0, 64: 2252.0, 128: 3100.0, 256: 3150.0, 512: 3120.0, 1024: 3000.0}
    real = T._Session.measure

    def measured(self: Any, b: int, hook: Any) -> ThroughputRow:
        row = real(self, 4, hook)  # a real (tiny) measurement, then the speed this test is about
        return dataclasses.replace(row, batch_size=b, samples_per_s=speed[b])

    monkeypatch.setattr(T._Session, "measure", measured)
    rows = run(tmp_path, tp("auto", auto_start=32, auto_max_batch_size=4096, auto_min_gain=0.03))
    assert [r.batch_size for r in rows] == [32, 64, 128, 256, 512]  # 256 and 512 miss 3,100 by 3%: stop
    assert [r.batch_size for r in rows if r.is_best] == [256]

    speed.update({64: 2000.0, 128: 2100.0})  # smaller is faster: say that the optimum may be below
    with caplog.at_level(logging.INFO, logger="rnn"):
        rows = run(tmp_path, tp("auto", auto_start=32, auto_max_batch_size=4096, auto_min_gain=0.03))
    assert [r.batch_size for r in rows] == [32, 64, 128]
    assert any("the optimum may lie below it; lower throughput.auto_start" in r.getMessage() for r in caplog.records)


def test_auto_stops_on_the_time_budget(tmp_path: Path) -> None:
    rows = run(tmp_path, tp("auto", auto_start=4, auto_max_batch_size=1024, auto_min_gain=-1.0,
                            auto_time_budget_s=1e-3))
    assert [r.batch_size for r in rows] == [4]
    assert rows[0].is_best


def test_auto_stops_at_an_oom_and_records_it(tmp_path: Path) -> None:
    def hook(batch_size: int) -> None:
        if batch_size >= 16:
            raise torch.OutOfMemoryError("out of memory (fake)")

    rows = run(tmp_path, tp("auto", auto_start=4, auto_max_batch_size=1024, auto_min_gain=-1.0), hook=hook)
    assert [(r.batch_size, r.status) for r in rows] == [(4, "ok"), (8, "ok"), (16, "oom")]
    assert sum(r.is_best for r in rows) == 1


@pytest.mark.slow
def test_iter_throughput_streams_rows_as_they_are_measured(tmp_path: Path) -> None:
    attempted: list[int] = []
    rows = iter_throughput(tiny_config(), tp((4, 8)), cache_dir=tmp_path, batch_hook=attempted.append)
    first = next(rows)
    assert first.batch_size == 4 and attempted == [4]  # batch 8 not started yet
    assert not first.is_best  # provisional: the best is known only at the end
    rest = list(rows)
    assert [r.batch_size for r in rest] == [8] and attempted == [4, 8]
    assert sum(r.is_best for r in mark_best([first, *rest])) == 1


def test_layer_norm_and_bidirectional_models_are_measured(tmp_path: Path) -> None:
    rows = run(tmp_path, tp((4,)), run_config=tiny_config(layer_norm=True, bidirectional=True))
    assert rows[0].status == "ok" and rows[0].is_best


def test_mark_best_without_ok_rows_marks_nothing() -> None:
    row = ThroughputRow(4, "oom", None, None, None, None, None, "cpu", "cpu", "fp32", torch.__version__, "x")
    assert mark_best([row]) == [row]
    assert not mark_best([row])[0].is_best
