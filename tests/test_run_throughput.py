"""`kind: throughput` end to end on local Ray: rows per batch size, a fake OOM as data, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ray_env, run_cli, write_spec

pytestmark = pytest.mark.ray

SPEC = {
    "name": "tp",
    "kind": "throughput",
    "data": {"corpus": "builtin", "level": "char", "seq_len": 8},
    "model": {"cell": "lstm", "embedding_dim": 8, "hidden_size": 16, "num_layers": 1, "dropout": 0.0},
    "train": {"device": "cpu"},
    "throughput": {"batch_sizes": [4, 8, 16, 32], "warmup_steps": 1, "measure_steps": 3},
    "sweep": {"grid": {"model.cell": ["lstm", "gru"]}},
    "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
}


def test_throughput_job_records_rows_and_oom_as_data(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "tp.yaml", dict(SPEC, output=str(tmp_path / "results")))
    faults = [{"trial": "*", "kind": "oom", "at_batch_size": 16}]
    proc = run_cli(["run", str(spec_path)], ray_env(tmp_path, {"RNN_ORCH_FAULTS": json.dumps(faults)}))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "batch 16: oom" in out and "best batch 8" in out

    job = tmp_path / "results" / "tp"
    rows = pq.read_table(job / "throughput.parquet").to_pylist()
    assert len(rows) == 8
    for cell in ("lstm", "gru"):
        mine = {r["batch_size"]: r for r in rows if r["model.cell"] == cell}
        assert [mine[b]["status"] for b in (4, 8, 16, 32)] == ["ok", "ok", "oom", "oom"]
        assert "OutOfMemoryError" in mine[16]["error"] and "skipped" in mine[32]["error"]
        for b in (4, 8):
            r = mine[b]
            assert r["samples_per_s"] > 0 and r["tokens_per_s"] == r["samples_per_s"] * 8
            assert r["step_time_ms_max"] >= r["step_time_ms"] > 0 and r["device"] == "cpu"
            assert r["precision"] == "fp32" and r["torch_version"]
        assert sum(r["is_best"] for r in mine.values()) == 1
        best = max((mine[4], mine[8]), key=lambda r: r["samples_per_s"])
        assert best["is_best"]
    trials = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}
    html = (job / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html and "samples/s" in html
