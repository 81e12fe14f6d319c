"""bench/gpu.sh and its parts, on the CPU: the dry run end to end, the summary, and the plain spec reader.

The dry run (``GPU_DRY_RUN=1``) runs every step with tiny settings and hides pydantic and Ray, as on
the bare GPU image, so it also checks that steps 1-4 need neither.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import gpu_summary, specs
from conftest import REPO

JOBS = REPO / "jobs"
SUMMARY_KEYS = {"device", "parity_ok", "ratios", "val_loss_4min", "environment", "steps"}


def dry_run(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "GPU_DRY_RUN": "1", "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], env=full, capture_output=True, text=True,
                          timeout=120, check=False)


def last_block(text: str) -> list[str]:
    """The lines after the last blank line."""
    return text.rstrip("\n").split("\n\n")[-1].splitlines()


@pytest.mark.slow
def test_dry_run_runs_every_step_and_ends_with_the_summary_table(tmp_path: Path) -> None:
    # Step 1 runs where bench.triton_check exists (--quick: the interpreter, a small grid).
    steps = "1 2 3 4" if importlib.util.find_spec("bench.triton_check") else "2 3 4"
    result = dry_run(tmp_path, GPU_STEPS=steps)
    assert result.returncode == 0, result.stdout[-3000:]
    summary = json.loads((tmp_path / f"gpu-{dt.date.today().isoformat()}.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert isinstance(summary["val_loss_4min"], float) and summary["val_loss_4min"] > 0
    ran = {k: s["status"] for k, s in summary["steps"].items()}
    assert ran == {"triton": "ok" if steps.startswith("1") else "skipped", "bench-fp32": "ok", "bench-bf16": "ok",
                   "throughput": "ok", "accuracy": "ok"}
    assert summary["parity_ok"] is steps.startswith("1")
    accuracy = json.loads((tmp_path / "accuracy.json").read_text())
    assert accuracy["status"] == "completed" and not accuracy["validated"]  # pydantic was hidden
    assert accuracy["step_fit"]["steps"] == accuracy["max_steps"] != accuracy["max_steps_spec"]
    assert "pydantic NO, ray NO" in result.stdout

    table = last_block(result.stdout)
    assert table[0].startswith(gpu_summary.TITLE)
    assert [line.split()[1] for line in table[2:7]] == ["triton", "bench", "bench", "throughput", "accuracy"]
    assert table[-1].startswith("val loss in 4 min: ") and "nanoGPT 1.4697" in table[-1]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "gpu-log.txt" in files and len(files) <= 8
    assert table[0] in (tmp_path / "gpu-log.txt").read_text()


@pytest.mark.slow
def test_dry_run_stops_at_the_first_failure_and_still_prints_the_summary(tmp_path: Path) -> None:
    result = dry_run(tmp_path, GPU_STEPS="3 4", BENCH_SPEC=str(tmp_path / "missing.yaml"))
    assert result.returncode == 2  # bench.jobs' status for a spec it cannot read
    summary = json.loads((tmp_path / f"gpu-{dt.date.today().isoformat()}.json").read_text())
    assert {k: s["status"] for k, s in summary["steps"].items()} == {
        "triton": "skipped", "bench-fp32": "skipped", "bench-bf16": "skipped", "throughput": "failed(2)",
        "accuracy": "not-run"}
    assert summary["val_loss_4min"] is None and summary["parity_ok"] is False
    table = last_block(result.stdout)
    assert table[0].startswith(gpu_summary.TITLE) and "not measured" in table[-1]


# --- the summary on its own --------------------------------------------------------------------


def write(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload))


def test_summary_reads_what_ran_and_marks_the_rest(tmp_path: Path) -> None:
    ratios = {f"{s}/{p}": 0.5 for s in ("seed", "char-rnn") for p in ("fp32", "tf32", "bf16")}
    write(tmp_path / "triton-check.json", {"device": "NVIDIA H200", "parity_ok": True, "triton_version": "3.5",
                                           "parity": [{"ok": True}, {"ok": True}], "timings": [], "ratios": ratios})
    write(tmp_path / "accuracy.json", {"status": "running", "val_loss_best": 1.45, "best_step": 500, "steps": 750,
                                       "train_time_s": 120.0, "config": {"model": {"num_layers": 3,
                                                                                    "hidden_size": 1024}}})
    (tmp_path / "bench-fp32.json").write_text('{"truncated')  # a step killed mid-write
    s = gpu_summary.summarize(tmp_path, gpu_summary.parse_steps(["triton=ok:70", "bench-fp32=timeout:45",
                                                                 "accuracy=timeout:265"]))
    assert (s["device"], s["parity_ok"], s["ratios"], s["val_loss_4min"]) == ("NVIDIA H200", True, ratios, 1.45)
    assert s["environment"]["triton"] == "3.5"
    steps = s["steps"]
    assert (steps["triton"]["status"], steps["triton"]["seconds"]) == ("ok", 70.0)
    assert steps["bench-fp32"]["status"] == "timeout" and steps["bench-fp32"]["figures"] is None
    assert steps["throughput"]["status"] == "skipped"
    table = gpu_summary.format_summary(s)
    assert "[running: so far]" in table and "0.50x" in table
    assert table.splitlines()[-1] == "val loss in 4 min: 1.4500 vs nanoGPT 1.4697 (-0.0197, better)"


def test_summary_parity_needs_every_case(tmp_path: Path) -> None:
    write(tmp_path / "triton-check.json", {"parity_ok": True, "parity": [{"ok": True}, {"ok": False}]})
    assert gpu_summary.summarize(tmp_path, {})["parity_ok"] is False
    write(tmp_path / "triton-check.json", {"parity_ok": True, "parity": []})
    assert gpu_summary.summarize(tmp_path, {})["parity_ok"] is False
    assert gpu_summary.summarize(tmp_path, {})["steps"]["triton"]["status"] == "kept"  # an earlier run's file


# --- specs without the spec layer ---------------------------------------------------------------

PLAIN_SPECS = [p for p in sorted(JOBS.glob("*.yaml"))
               if set(yaml.safe_load(p.read_text()).get("sweep") or {}) <= set(specs.PLAIN_SWEEP_KEYS)]


def validated_and_plain(path: Path, kind: str) -> tuple[list[specs.BenchTrial], list[specs.BenchTrial]]:
    return specs.load_trials(str(path), kind), specs.plain_trials(specs.read_plain(str(path)), str(path))


@pytest.mark.parametrize("path", PLAIN_SPECS, ids=[p.name for p in PLAIN_SPECS])
def test_plain_reader_expands_the_same_trials_as_the_spec_layer(path: Path) -> None:
    kind = yaml.safe_load(path.read_text()).get("kind", "train")
    validated, plain = validated_and_plain(path, kind)
    assert [(t.run_config, t.throughput_config, t.overrides) for t in plain] == [
        (t.run_config, t.throughput_config, t.overrides) for t in validated]
    assert {t.trial_id for t in plain} == {specs.UNVALIDATED}


def test_plain_reader_follows_the_orchestrators_order_with_variants(tmp_path: Path) -> None:
    spec = tmp_path / "v.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "v", "train": {"max_steps": 10, "lr": 1e-3},
        "sweep": {"variants": [{"model.cell": "lstm", "model.layer_norm": True}, {"model.cell": "gru"}],
                  "grid": {"model.hidden_size": [32, 64], "train.lr": [1e-3, 3e-3]}, "seeds": [0, 1]},
    }))
    spec.write_text(spec.read_text().replace("0.001", "1e-3"))  # an exponent-only float, as users write it
    validated, plain = validated_and_plain(spec, "train")
    assert len(plain) == 16
    assert [(t.run_config, t.overrides) for t in plain] == [(t.run_config, t.overrides) for t in validated]


def test_plain_reader_refuses_what_needs_the_spec_layer(tmp_path: Path) -> None:
    doc = specs.read_plain(str(JOBS / "asha_builtin.yaml"))
    with pytest.raises(specs.SpecReadError, match="needs the spec layer"):
        specs.plain_trials(doc, "asha_builtin.yaml")


def test_the_4_minute_recipe_is_the_nanogpt_split_and_fits_its_budget() -> None:
    [trial] = specs.load_trials(str(JOBS / "char_gpu_4min.yaml"), "train")
    cfg = trial.run_config
    assert (cfg.data.corpus, cfg.data.level, cfg.data.val_fraction) == ("shakespeare", "char", 0.1)
    assert (cfg.model.cell, cfg.model.layer_norm) == ("lstm", False)  # cuDNN
    assert cfg.train.max_time_s == 240 and cfg.train.scheduler == "cosine" and cfg.train.compile == "off"
