"""The example jobs in jobs/: every one validates, and each says what it claims to."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.spec import load_job

JOBS = Path(__file__).resolve().parents[1] / "jobs"
JOB_FILES = sorted(JOBS.glob("*.yaml"))


def test_the_example_jobs_exist() -> None:
    names = {p.name for p in JOB_FILES}
    assert {"quickstart.yaml", "char_shakespeare.yaml", "char_max_accuracy.yaml", "tokens_bpe.yaml",
            "architectures.yaml", "throughput_sweep.yaml", "throughput_cells.yaml"} <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.name for p in JOB_FILES])
def test_every_job_validates_and_is_commented(path: Path) -> None:
    job = load_job(path)
    assert job.trials or (job.search is not None and job.search.base_trials)  # a search proposes its trials
    assert path.read_text().startswith("# ")  # each file says what it is for


def test_quickstart_is_small_offline_and_on_cpu() -> None:
    job = load_job(JOBS / "quickstart.yaml")
    spec = job.spec
    assert spec.data.corpus == "builtin" and spec.data.level == "char"
    assert spec.train.device == "cpu" and spec.resources.gpus_per_trial == 0
    assert spec.model.hidden_size <= 128 and spec.model.num_layers == 1
    assert 150 <= spec.train.max_steps <= 300 and spec.train.eval_every == 50
    assert spec.resources.cpus_per_trial == 1 and spec.resources.max_concurrent == 2
    trials = job.trials
    assert sorted((t.overrides["model.cell"], t.overrides["train.seed"]) for t in trials) == [
        ("gru", 0), ("gru", 1), ("lstm", 0), ("lstm", 1)]


def test_char_shakespeare_is_the_seed_model() -> None:
    spec = load_job(JOBS / "char_shakespeare.yaml").spec
    data = spec.data
    assert (data.corpus, data.level, data.seq_len, spec.train.batch_size) == ("shakespeare", "char", 100, 64)
    m = spec.model
    assert (m.cell, m.layer_norm, m.embedding_dim, m.hidden_size, m.num_layers) == ("lstm", True, 128, 512, 2)


def test_max_accuracy_is_larger_and_stops_early() -> None:
    spec = load_job(JOBS / "char_max_accuracy.yaml").spec
    assert spec.model.hidden_size >= 1024 and spec.model.num_layers >= 3
    assert spec.train.scheduler == "cosine" and spec.train.early_stopping is not None


def test_tokens_bpe() -> None:
    spec = load_job(JOBS / "tokens_bpe.yaml").spec
    assert (spec.data.level, spec.data.vocab_size, spec.data.corpus) == ("bpe", 2048, "shakespeare")


def test_architectures_cover_lstm_bilstm_gru_rnn_with_three_seeds() -> None:
    trials = load_job(JOBS / "architectures.yaml").trials
    arms = {(t.run_config.model.cell, t.run_config.model.bidirectional) for t in trials}
    assert {("lstm", False), ("lstm", True), ("gru", False), ("rnn", False)} <= arms
    assert {t.run_config.train.seed for t in trials} == {0, 1, 2}
    assert len(trials) == len(arms) * 3


def test_throughput_jobs() -> None:
    spec = load_job(JOBS / "throughput_sweep.yaml").spec
    assert spec.kind == "throughput" and spec.data.seq_len == 25
    assert spec.throughput.batch_sizes[0] == 512 and spec.throughput.batch_sizes[-1] == 8192
    m = spec.model
    assert (m.embedding_dim, m.hidden_size, m.num_layers, m.layer_norm) == (192, 384, 2, True)
    cells = load_job(JOBS / "throughput_cells.yaml").trials
    assert [t.run_config.model.cell for t in cells] == ["lstm", "gru", "rnn", "mingru", "minlstm"]
    assert all(not t.run_config.model.layer_norm for t in cells)
