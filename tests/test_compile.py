"""``train.compile``: the auto rule, a real compile on the CPU, the fallback to eager, checkpoints across settings."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import tiny_run, trial_of
from orchestrator.results.tables import trial_row
from orchestrator.spec import build_job, trial_config
from orchestrator.spec.expand import trial_id_for
from orchestrator.spec.yamlio import parse_yaml
from rnn.checkpoint import load_checkpoint
from rnn.compile import AUTO_MIN_SECONDS, AUTO_MIN_STEPS, decide
from rnn.config import ThroughputConfig, TrainConfig
from rnn.throughput import measure_throughput
from rnn.train import LAST_CHECKPOINT, Trainer

CPU = torch.device("cpu")
#: 8 steps of the tiny LSTM, paused at 4: enough to compile, train, save and resume.
STEPS, PAUSE = 8, 4


def test_auto_compiles_only_the_torch_loop_of_a_long_run() -> None:
    long = AUTO_MIN_STEPS
    assert decide("off", CPU, "torch", total_steps=long, max_time_s=None)[0] is False
    assert decide("on", CPU, None, total_steps=1, max_time_s=None)[0] is True
    for recurrence in (None, "fused-cpu", "triton"):
        assert decide("auto", CPU, recurrence, total_steps=10 * long, max_time_s=None)[0] is False
    assert decide("auto", CPU, "torch", total_steps=long, max_time_s=None)[0] is True
    assert decide("auto", torch.device("cuda"), "torch", total_steps=long, max_time_s=None)[0] is True
    assert decide("auto", torch.device("mps"), "torch", total_steps=long, max_time_s=None)[0] is False
    compiles, why = decide("auto", CPU, "torch", total_steps=long - 1, max_time_s=None)
    assert not compiles and str(AUTO_MIN_STEPS) in why
    assert decide("auto", CPU, "torch", total_steps=None, max_time_s=AUTO_MIN_SECONDS / 2)[0] is False
    assert decide("auto", CPU, "torch", total_steps=10 * long, max_time_s=AUTO_MIN_SECONDS / 2)[0] is False
    assert decide("auto", CPU, "torch", total_steps=None, max_time_s=AUTO_MIN_SECONDS)[0] is True
    assert decide("auto", CPU, "torch", total_steps=None, max_time_s=None)[0] is True  # throughput: unbounded
    with pytest.raises(ValueError, match="train.compile"):
        decide("sometimes", CPU, None, total_steps=1, max_time_s=None)


def test_yaml_off_and_on_are_the_settings_and_each_value_is_its_own_trial() -> None:
    raw = parse_yaml("name: x\ntrain:\n  compile: off\n")  # YAML 1.1: a bare off is False
    off = build_job(raw, "s.yaml").trials[0]
    assert off.run_config.train.compile == "off"
    raw["train"]["compile"] = True
    on = build_job(raw, "s.yaml").trials[0]
    assert on.run_config.train.compile == "on"
    assert TrainConfig(compile=False).compile == "off"  # type: ignore[arg-type]  (a notebook's bool)
    # The default is left out of the id (jobs written before the setting keep their ids); other
    # values are other trials, so a sweep over train.compile runs each.
    auto = build_job({"name": "x"}, "s.yaml").trials[0]
    assert auto.run_config.train.compile == "auto"
    assert auto.trial_id == trial_id_for("train", {**trial_config(auto), "train": {
        k: v for k, v in trial_config(auto)["train"].items() if k != "compile"}})
    assert len({auto.trial_id, on.trial_id, off.trial_id}) == 3
    swept = build_job({"name": "x", "sweep": {"grid": {"train.compile": [False, True, "auto"]}}}, "s.yaml")
    assert [t.run_config.train.compile for t in swept.trials] == ["off", "on", "auto"]
    assert [t.overrides["train.compile"] for t in swept.trials] == ["off", "on", "auto"]  # the log's tags


def _fit(tmp: Path, compile: str, resume: Path | None = None, pause: int | None = None):  # noqa: ANN202
    cfg = tiny_run(device="cpu", max_steps=STEPS, eval_every=PAUSE, compile=compile)
    events = list(Trainer(cfg, tmp, num_threads=1).iter_fit(resume, pause_at_step=pause))
    return events[0], events[-1].result


@pytest.mark.slow
def test_compile_on_trains_compiled_and_checkpoints_resume_across_settings(tmp_path: Path) -> None:
    # on -> off: a checkpoint written while compiled holds the plain module's keys and resumes eagerly.
    start, paused = _fit(tmp_path / "a", "on", pause=PAUSE)
    assert start.info["compiled"] is True and start.info["compile_s"] > 0
    assert paused.status.value == "paused" and math.isfinite(paused.evals[-1].train_loss)
    row = trial_row(trial_of("t", {}), status="completed", info=start.info)
    assert row["compiled"] is True and row["compile_s"] == start.info["compile_s"]
    ckpt = load_checkpoint(tmp_path / "a" / LAST_CHECKPOINT)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    start, on_off = _fit(tmp_path / "a", "off", resume=tmp_path / "a" / LAST_CHECKPOINT)
    assert start.info["compiled"] is False and start.info["compile_s"] == 0.0
    assert on_off.steps == STEPS and math.isfinite(on_off.best_val_loss)

    # off -> on: an eager checkpoint resumes compiled.
    _, paused = _fit(tmp_path / "b", "off", pause=PAUSE)
    start, off_on = _fit(tmp_path / "b", "on", resume=tmp_path / "b" / LAST_CHECKPOINT)
    assert start.info["compiled"] is True and start.info["resumed_from_step"] == PAUSE
    assert off_on.steps == STEPS
    # The same run either way: the compile's warm-up drew no batch from the run's generator and
    # left the RNG as it was (other batches would give another loss, far beyond this tolerance).
    assert [e.train_loss for e in off_on.evals] == pytest.approx([e.train_loss for e in on_off.evals], rel=1e-4)
    assert off_on.best_val_loss == pytest.approx(on_off.best_val_loss, rel=1e-4)


@pytest.mark.slow
def test_the_fused_layer_norm_lstm_compiles_around_its_kernels(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    # The C++ kernels and the oneDNN projection stay eager (graph breaks, rnn.lnlstm.
    # eager_under_compile); compiled as they stood, Inductor failed on the oneDNN op.
    from rnn.config import ModelConfig
    from rnn.lnlstm import cpu

    if cpu.load() is None:
        pytest.skip("the layer-norm LSTM's C++ kernels cannot be built here")
    cfg = tiny_run(device="cpu", max_steps=2, eval_every=2, compile="on")
    cfg = replace(cfg, model=ModelConfig(cell="lstm", embedding_dim=8, hidden_size=8, num_layers=1, dropout=0.0,
                                         layer_norm=True))
    events = list(Trainer(cfg, tmp_path, num_threads=1).iter_fit())
    assert events[0].info["recurrence"] == "fused-cpu" and events[0].info["compiled"] is True
    assert math.isfinite(events[-1].result.best_val_loss)
    # Dynamo was never asked to trace the extension (it warns, then breaks the graph, when it is).
    assert not [w for w in recwarn if "does not know how to trace" in str(w.message)]


@pytest.mark.slow
def test_a_failed_compile_warns_once_and_trains_eagerly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A machine without a working C++ compiler: Inductor's CPU code cannot be built. (Caches off:
    # a kernel cached by another test would need no compiler.) Inductor's own config patch undoes it.
    import torch._inductor.config as inductor

    no_compiler = {"cpp.cxx": (None, str(tmp_path / "no-such-compiler")), "force_disable_caches": True}
    with inductor.patch(no_compiler), caplog.at_level(logging.WARNING, logger="rnn.compile"):
        start, done = _fit(tmp_path / "run", "on")
    assert start.info["compiled"] is False and start.info["compile_s"] == 0.0
    warnings = [r for r in caplog.records if r.name == "rnn.compile"]
    assert len(warnings) == 1 and "training eagerly" in warnings[0].getMessage()
    assert done.status.value == "completed" and done.steps == STEPS and math.isfinite(done.best_val_loss)


@pytest.mark.slow
def test_throughput_rows_say_whether_the_step_was_compiled(tmp_path: Path) -> None:
    cfg = tiny_run(device="cpu", compile="on")
    rows = measure_throughput(cfg, ThroughputConfig(batch_sizes=[4], warmup_steps=1, measure_steps=1),
                              num_threads=1, cache_dir=tmp_path)
    assert [(r.status.value, r.compiled) for r in rows] == [("ok", True)]
    assert rows[0].compile_s is not None and rows[0].compile_s > 0
    rows = measure_throughput(tiny_run(device="cpu", compile="auto"),
                              ThroughputConfig(batch_sizes=[4], warmup_steps=1, measure_steps=1),
                              num_threads=1, cache_dir=tmp_path)
    assert [(r.compiled, r.compile_s) for r in rows] == [(False, 0.0)]  # a plain LSTM: auto is off
