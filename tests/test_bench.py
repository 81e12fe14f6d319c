"""Smoke tests of the benchmark harness (bench/): tiny settings, CPU, no timing assertions.

The sweep-dispatch part starts Ray, which alone takes longer than this file's budget, so it is
covered here only through the functions that turn ``trials.parquet`` rows into figures.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# bench/ is a script folder, not an installed package: `python -m pytest` from the repo root
# finds it, plain `pytest` needs the root on the path.

from bench.__main__ import main as bench_main  # noqa: E402
from bench.common import Shape  # noqa: E402
from bench.dispatch import format_dispatch, overheads_in_start_order  # noqa: E402
from bench.end_to_end import format_end_to_end  # noqa: E402
from bench.engine import BareLM, bare_step, run_config  # noqa: E402
from bench.jobs import format_rows, load_trials, run_spec  # noqa: E402

SMALL_THROUGHPUT_SPEC = """\
name: bench-smoke
kind: throughput
data: {corpus: builtin, level: char, seq_len: 8}
model: {cell: lstm, embedding_dim: 8, hidden_size: 16, num_layers: 1, dropout: 0.0}
train: {device: cpu}
throughput: {batch_sizes: [4, 8], warmup_steps: 1, measure_steps: 1}
"""


@pytest.fixture
def keep_threads():
    """``python -m bench`` sets torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_quick_run_prints_the_table_and_writes_json(tmp_path: Path, capsys, keep_threads) -> None:
    out = tmp_path / "bench.json"
    assert bench_main(["--quick", "--device", "cpu", "--skip", "dispatch", "--skip", "end-to-end",
                       "--skip", "via-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("engine LSTM / bare nn.LSTM", "engine LN-LSTM / bare nn.LSTM", "Trainer / bare loop (same model)"):
        assert line in printed
    assert "torch " + torch.__version__ in printed

    payload = json.loads(out.read_text())
    assert payload["machine"]["device"] == "cpu"
    assert payload["machine"]["torch_version"] == torch.__version__
    assert payload["machine"]["torch_threads"] == 1  # the CPU default, see bench/__main__.py
    assert payload["dispatch"] is None and payload["end_to_end"] is None and payload["via_run"] is None
    assert payload["machine"]["allocator"]  # what malloc ran with (bench/alloc.py)
    ratios = payload["ratios"]
    assert [r["measure"] for r in ratios] == [
        "engine LSTM / bare nn.LSTM", "engine LN-LSTM / bare nn.LSTM", "Trainer / bare loop (same model)",
        "Trainer, beat each step / none", "LSTM weight_drop 0.5 / none",
        *(["minGRU / nn.GRU", "minLSTM / nn.GRU", "minGRU+MLP / nn.GRU"] * 2),
    ]
    assert [r["shape"] for r in ratios[-6:]] == ["T8"] * 3 + ["T16"] * 3  # --quick: T 8 and 16 for 100 and 256
    assert [r["target"] for r in ratios[-6:]] == [None] * 3 + [2.0, 2.0, None]  # the target is at the longest T
    beat = ratios[3]
    assert beat["target"] is None and 0 <= beat["extra"]["cost_at_15s"] == pytest.approx(
        beat["extra"]["heartbeat_added_s"] / 15.0)
    for r in ratios:
        assert r["engine_samples_per_s"] > 0 and r["baseline_samples_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["engine_samples_per_s"] / r["baseline_samples_per_s"])
        assert r["meets_target"] is None if r["target"] is None else isinstance(r["meets_target"], bool)


@pytest.mark.slow
def test_bare_baseline_learns_a_fixed_batch() -> None:
    # The baseline must be a real training step, or ratio 1 would compare against nothing.
    torch.manual_seed(0)
    small = Shape("t", batch_size=4, seq_len=8, embedding_dim=8, hidden_size=16, num_layers=1, cpu_batch_size=4)
    window = torch.randint(0, 12, (4, 9))  # (B, T+1)
    train = replace(run_config(small, torch.device("cpu"), layer_norm=False, amp="off").train, lr=1e-2)
    step = bare_step(BareLM(12, small), window, train)
    losses = [float(step()) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]


def _row(start: float, end: float, train: float | None) -> dict:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return {"started_at": t0 + dt.timedelta(seconds=start), "finished_at": t0 + dt.timedelta(seconds=end),
            "train_time_s": train}


def test_overheads_are_in_start_order_and_skip_rows_without_times() -> None:
    rows = [_row(10, 15, 4.5), _row(0, 8, 5.0), _row(1, 9, 6.0), _row(2, 3, None)]
    assert overheads_in_start_order(rows) == pytest.approx([3.0, 2.0, 0.5])


def test_dispatch_summary_names_the_figures_and_targets() -> None:
    d = {"trials": 8, "steps_per_trial": 150, "max_concurrent": 2, "serial_s": 40.0, "sweep_window_s": 22.0,
         "sweep_end_to_end_s": 30.0, "speedup": 40 / 22, "speedup_end_to_end": 40 / 30, "speedup_target": 1.7,
         "overhead_s": 0.1, "overhead_max_s": 0.2, "serial_setup_s": 0.05, "net_overhead_s": 0.05,
         "overhead_target_s": 0.3, "warm_trials": 6, "cold_overhead_s": 3.0, "speedup_excluding_startup": 40 / 19,
         "serial_train_s": 5.0, "sweep_train_s": 5.2}
    text = format_dispatch(d)
    assert "speedup 1.82x (target >= 1.7x: ok)" in text
    assert "dispatch overhead 0.05s (target <= 0.3s: ok)" in text
    cold = format_dispatch({**d, "warm_trials": 0, "overhead_s": math.nan, "net_overhead_s": math.nan})
    assert "n/a (no trial reused an actor" in cold


def test_end_to_end_summary_gives_each_side_per_pass_and_the_ratio_of_medians() -> None:
    d = {"trials": 8, "steps_per_trial": 800, "passes": 2,
         "times_s": {"serial": [60.0, 62.0], "bare": [40.0, 38.0], "run": [41.0, 43.0]},
         "median_s": {"serial": 61.0, "bare": 39.0, "run": 42.0}, "ratio_per_pass": [40 / 41, 38 / 43],
         "ratio": 39 / 42, "serial_over_run": 61 / 42, "target": 0.95}
    text = format_end_to_end(d)
    assert "bare (2 reused Ray actors)      40.0 / 38.0 s" in text
    assert "python -m orchestrator run      41.0 / 43.0 s" in text
    assert "bare / run 0.93x over the medians (per pass 0.98, 0.88; target >= 0.95: BELOW TARGET)" in text
    assert "serial / run 1.45x" in text
    ok = format_end_to_end({**d, "times_s": {k: v for k, v in d["times_s"].items() if k != "serial"},
                            "ratio": 0.97, "serial_over_run": None})
    assert "target >= 0.95: ok" in ok and "serial" not in ok


def test_jobs_runs_a_throughput_spec_through_the_engine(tmp_path: Path, keep_threads) -> None:
    spec = tmp_path / "tp.yaml"
    spec.write_text(SMALL_THROUGHPUT_SPEC)
    rows = run_spec(str(spec), "cpu")
    assert [(r["batch_size"], r["status"]) for r in rows] == [(4, "ok"), (8, "ok")]
    assert sum(r["is_best"] for r in rows) == 1
    assert all(r["estimate_mb"] > 0 for r in rows)
    table = format_rows(rows)
    assert "samples/s" in table and len(table.splitlines()) == 4


def test_jobs_reads_a_spec_without_pydantic(tmp_path: Path, monkeypatch) -> None:
    spec = tmp_path / "tp.yaml"
    spec.write_text(SMALL_THROUGHPUT_SPEC)
    monkeypatch.setitem(sys.modules, "orchestrator.spec", None)  # import raises ImportError
    [(trial_id, overrides, cfg, tp)] = load_trials(str(spec))
    assert trial_id == "unvalidated" and overrides == {"train.seed": 0}  # as the spec layer records it
    assert (cfg.model.hidden_size, cfg.data.seq_len, cfg.train.device) == (16, 8, "cpu")
    assert tp.batch_sizes == (4, 8) and tp.measure_steps == 1


def test_gpu_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu.sh")], check=True)


def test_via_run_line_names_the_ratio_and_target() -> None:
    from bench.via_run import format_via_run

    d = {"batch_sizes": [64], "rounds": 3, "cpus_per_trial": 2, "target": 0.9,
         "median": {"via_run": {64: 850.0}, "in_process": {64: 1000.0}}, "ratio": {64: 0.85}}
    text = format_via_run(d)
    assert "throughput via run / in-process" in text
    assert "0.85x (target >= 0.9x: BELOW TARGET)" in text


def test_allocator_reexec_is_skipped_when_tunables_are_set(monkeypatch) -> None:
    from bench import alloc

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0")
    monkeypatch.setattr(alloc.os, "execve", lambda *a: pytest.fail("re-executed"))
    alloc.reexec_with_tunables([])
    assert alloc.allocator_settings() in ("glibc.malloc.check=0",) or not alloc._glibc()
    assert alloc.minor_faults() > 0


def test_compile_figures_give_the_ratio_and_break_even() -> None:
    from bench.compile import CompileFigure, format_compile

    paid = CompileFigure("ln-torch", "B=8", "torch", True, compile_s=30.0, eager_ms=400.0, compiled_ms=300.0,
                         timed_steps_each=12)
    assert paid.ratio == pytest.approx(4 / 3) and paid.break_even_steps == pytest.approx(300)
    never = replace(paid, case="ln-fused", recurrence="fused-cpu", compiled_ms=450.0)
    assert never.break_even_steps is None and never.to_dict()["break_even_steps"] is None
    table = format_compile([paid, never])
    assert "| ln-torch | torch | yes | 30.0 | 400.0 | 300.0 | 1.33x | 300 |" in table
    assert table.splitlines()[-1].endswith("| never |")


@pytest.mark.slow
def test_end_of_run_times_compaction_and_report_in_fresh_processes(tmp_path: Path, capsys) -> None:
    from bench.end_of_run import main as end_of_run

    assert end_of_run(["--trials", "30", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "end of run over 30 trials:" in out
    assert "compact(): " in out and "report:    " in out and "report.html" in out
    assert not list(tmp_path.iterdir())  # the temporary job folder is gone


def test_big_corpus_writes_its_corpus_and_reads_first_steps_from_the_log(tmp_path: Path) -> None:
    from bench.big_corpus import first_step_s, spec, write_corpus

    source = tmp_path / "lines.txt"
    source.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n")
    corpus = tmp_path / "big.txt"
    chars = write_corpus(corpus, 1, source)
    text = corpus.read_text(encoding="utf-8")
    assert len(text) == chars >= 1_000_000
    assert set(text) == set(source.read_text())  # the source's characters, nothing else
    assert write_corpus(tmp_path / "again.txt", 1, source) == chars and (tmp_path / "again.txt").read_text() == text
    log = tmp_path / "run.log"
    log.write_text("23:59:50 INFO    [1/2 aaaaaaaaaaaa seed=0] started (attempt 1)\n"
                   "23:59:52 INFO    [2/2 bbbbbbbbbbbb seed=1] started (attempt 1)\n"
                   "23:59:58 INFO    [1/2 aaaaaaaaaaaa seed=0] running on vm (pid 1, cpu, fp32, 10 params)\n"
                   "00:00:03 INFO    [2/2 bbbbbbbbbbbb seed=1] running on vm (pid 2, cpu, fp32, 10 params)\n")
    assert first_step_s(log) == [8.0, 11.0]  # across midnight too
    s = spec("warm", str(corpus), 250, tmp_path / "results")
    assert s["sweep"] == {"seeds": [0, 1]} and s["resources"]["max_concurrent"] == 2


@pytest.mark.slow
def test_eval_modes_scores_one_checkpoint_both_ways(tmp_path: Path, capsys, keep_threads) -> None:
    from bench.eval_modes import main as eval_modes_main
    from conftest import tiny_run
    from rnn.train import Trainer

    cfg = tiny_run(max_steps=20, eval_every=20)
    cfg = replace(cfg, data=replace(cfg.data, val_mode="stream"))
    result = Trainer(cfg, tmp_path).fit()
    assert eval_modes_main([str(tmp_path / "best.pt"), "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{tmp_path / 'best.pt'}:"
    assert out[1].lstrip().startswith("windows  val loss ") and out[2].lstrip().startswith("stream   val loss ")
    stream = float(out[2].split("val loss ")[1].split()[0])
    windows = float(out[1].split("val loss ")[1].split()[0])
    assert stream == pytest.approx(result.best_val_loss, abs=1e-4)  # the trial was scored as streams
    assert out[3] == f"  stream - windows: {stream - windows:+.4f} nats/token"
