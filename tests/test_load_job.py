"""load_job: one pass from a spec file to trials with typed configs, and the spec defects it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from orchestrator import cli
from orchestrator.errors import SpecError, UsageError
from orchestrator.spec import Job, build_job, job_location, load_job, trial_config
from orchestrator.spec import rules as rules_module
from orchestrator.spec import validate as validate_module
from rnn.config import MIN_VOCAB_SIZE, DataConfig, ModelConfig, RunConfig, TrainConfig

BASE: dict[str, Any] = {"name": "j", "model": {"hidden_size": 32, "embedding_dim": 16}, "train": {"max_steps": 10}}


def write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def lines(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        build_job(raw, "s.yaml")
    return info.value.lines()


# --- one pass ------------------------------------------------------------------------------


def test_load_job_reads_validates_and_expands_once(tmp_path: Path) -> None:
    spec = {**BASE, "sweep": {"grid": {"model.cell": ["lstm", "gru"]}, "seeds": [0, 1, 2]}}
    path = write(tmp_path / "j.yaml", spec)
    job = load_job(path)
    assert isinstance(job, Job) and job.source == str(path)
    assert job.text == path.read_text(encoding="utf-8")  # what the manifest records is what was validated
    assert [t.index for t in job.trials] == list(range(6))
    for trial in job.trials:
        assert isinstance(trial.run_config, RunConfig)
        config = trial_config(trial)
        assert trial.run_config.model.cell == trial.overrides["model.cell"] == config["model"]["cell"]
        assert trial.run_config.train.seed == trial.overrides["train.seed"] == config["train"]["seed"]
        assert RunConfig.from_dict(config) == trial.run_config


def test_each_point_is_validated_once_and_untouched_sections_not_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 grid values x 4 seeds: the model section (where the swept value lands) is validated once per
    grid value; data and train (untouched; seeds do not make a config invalid) not per trial at all.
    Each of the spec's own sections is validated once, as the job's."""
    calls: dict[str, int] = {"data": 0, "model": 0, "train": 0, "points": 0}
    names = {DataConfig: "data", ModelConfig: "model", TrainConfig: "train"}
    real_section = rules_module.validate_section

    def counting_section(cls: Any, raw: Any, prefix: str) -> Any:
        calls[names[cls]] += 1
        return real_section(cls, raw, prefix)

    monkeypatch.setattr(rules_module, "validate_section", counting_section)
    real_points = validate_module.sweep_points

    def counting_points(sweep: Any) -> Any:
        calls["points"] += 1
        return real_points(sweep)

    monkeypatch.setattr(validate_module, "sweep_points", counting_points)
    job = build_job({**BASE, "sweep": {"grid": {"model.num_layers": [1, 2, 3]}, "seeds": [0, 1, 2, 3]}})
    assert len(job.trials) == 12
    assert calls == {"data": 1, "model": 1 + 3, "train": 1, "points": 1}


def test_a_swept_problem_is_pinned_on_the_swept_value() -> None:
    assert lines({**BASE, "sweep": {"grid": {"model.cell": ["lstm", "gru", "transformer"]}}}) == [
        "s.yaml: sweep.grid.model.cell[2]: should be 'lstm', 'gru', 'rnn', 'mingru' or 'minlstm' (got 'transformer')"]


def test_widening_a_sweep_keeps_ids_and_seed_copies_keep_everything_else() -> None:
    one = build_job({**BASE, "sweep": {"seeds": [5]}}).trials[0]
    three = build_job({**BASE, "sweep": {"seeds": [4, 5, 6]}}).trials
    assert three[1].trial_id == one.trial_id
    assert {t.run_config.model for t in three} == {one.run_config.model}


# --- spec defects ---------------------------------------------------------------------------


def test_a_yaml_set_is_refused_so_choices_cannot_depend_on_hash_order(tmp_path: Path) -> None:
    path = tmp_path / "set.yaml"
    path.write_text("name: s\nsweep:\n  random:\n    samples: 3\n    space:\n      model.cell:\n"
                    "        dist: choice\n        values: !!set {lstm, gru, rnn}\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_job(path)
    (line,) = info.value.lines()
    assert line.startswith(f"{path}: line 8: !!set is not allowed") and "write a list" in line


def test_the_same_spec_gives_the_same_trial_ids_in_every_process(tmp_path: Path) -> None:
    """Hash randomisation differs per process: ids must not (resume matches them)."""
    path = write(tmp_path / "c.yaml", {**BASE, "sweep": {"random": {"samples": 4, "space": {
        "model.cell": {"dist": "choice", "values": ["lstm", "gru", "rnn"]}}}}})
    code = ("import sys; from orchestrator.spec import load_job; "
            "print([t.trial_id for t in load_job(sys.argv[1]).trials])")
    outs = {
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, timeout=60,
                       env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1


def test_corpus_under_the_home_folder_is_accepted_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus.txt").write_text("to be or not to be\n" * 100, encoding="utf-8")
    job = build_job({**BASE, "data": {"corpus": "~/corpus.txt"}})
    assert job.trials[0].run_config.data.corpus == "~/corpus.txt"
    from rnn.corpus import load_corpus  # what the trial's worker will do with it

    assert load_corpus(job.trials[0].run_config.data.corpus).text.startswith("to be")
    missing = lines({**BASE, "data": {"corpus": "~/nope.txt"}})
    assert missing[0].startswith(f"s.yaml: data.corpus: no such file ({tmp_path / 'nope.txt'};")


@pytest.mark.parametrize("output", ["mock:///x", "memory://x", "az://container/x", "ftp://host/x"])
def test_output_on_a_filesystem_that_does_not_keep_files_is_refused(output: str) -> None:
    (line,) = lines({**BASE, "output": output})
    scheme = output.split("://")[0]
    assert line.startswith("s.yaml: output: should be a local path or a URI of a filesystem that keeps its files: ")
    assert "file://, s3://, gs://, gcs://, hdfs://" in line and "abfs://" in line
    assert f"({scheme}:// is not one of them) (got '{output}')" in line


@pytest.mark.parametrize("output", ["results", "~/results", "file:///tmp/r", "s3://bucket/p", "gs://b/p", "gcs://b/p",
                                    "hdfs://namenode/p", "abfs://c@a.dfs.core.windows.net/p"])
def test_output_on_a_persistent_filesystem_validates(output: str) -> None:
    assert build_job({**BASE, "output": output}).spec.output == output


def test_job_location_is_one_answer_for_plan_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = build_job(BASE).spec
    assert job_location(spec, environ={}) == str(tmp_path / "results" / "j")
    assert job_location(spec, "~/r", environ={}) == str(tmp_path / "home" / "r" / "j")
    assert job_location(spec, f"file://{tmp_path}/f", environ={}) == str(tmp_path / "f" / "j")
    assert job_location(spec, "s3://bucket/runs/", environ={}) == "s3://bucket/runs/j"
    with pytest.raises(UsageError, match=r"--output should be .*mock:// is not one of them"):
        job_location(spec, "mock:///x", environ={})


def test_bpe_vocabulary_below_the_byte_alphabet_is_refused() -> None:
    (line,) = lines({**BASE, "data": {"level": "bpe", "vocab_size": 10}})
    assert line == ("s.yaml: data.vocab_size: a bpe vocabulary has at least 256 entries (the 256 byte values are "
                    "its base alphabet); use vocab_size >= 256, or leave it out for 2048 (got 10)")
    assert build_job({**BASE, "data": {"level": "bpe", "vocab_size": 256}}).trials
    assert build_job({**BASE, "data": {"level": "char", "vocab_size": 10}}).trials  # ignored for char
    swept = lines({**BASE, "data": {"level": "bpe"}, "sweep": {"grid": {"data.vocab_size": [100, 512]}}})
    assert swept == ["s.yaml: sweep.grid.data.vocab_size[0]: a bpe vocabulary has at least 256 entries (the 256 "
                     "byte values are its base alphabet); use vocab_size >= 256, or leave it out for 2048 (got 100)"]
    level_swept = lines({**BASE, "data": {"vocab_size": 100}, "sweep": {"grid": {"data.level": ["char", "bpe"]}}})
    assert level_swept[0].startswith("s.yaml: sweep.grid.data.level[1]: makes data.vocab_size invalid: "
                                     "a bpe vocabulary")


def test_the_vocabulary_floor_is_the_tokenizers_own() -> None:
    from rnn.tokenizer import build_tokenizer

    text = "the quick brown fox jumps over the lazy dog. " * 40
    assert build_tokenizer("bpe", text, MIN_VOCAB_SIZE["bpe"]).vocab_size == MIN_VOCAB_SIZE["bpe"]
    assert build_tokenizer("word", text, MIN_VOCAB_SIZE["word"]).vocab_size == MIN_VOCAB_SIZE["word"]
    with pytest.raises(ValueError, match="at least 256"):
        build_tokenizer("bpe", text, MIN_VOCAB_SIZE["bpe"] - 1)


def test_plan_says_what_is_retried_and_what_runs_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "p.yaml", {**BASE, "resources": {"max_retries": 2}})
    assert cli.main(["plan", str(path), "--cpus", "2", "--gpus", "0"]) == 0
    out = capsys.readouterr().out
    assert ("a trial whose worker is lost (its process or node dies) is retried up to 2 times; "
            "a trial that fails is not retried, it runs again when the job is run again") in out
    assert "a failed trial is retried" not in out
    path = write(tmp_path / "p0.yaml", {**BASE, "resources": {"max_retries": 0}})
    assert cli.main(["plan", str(path), "--cpus", "2"]) == 0
    assert "is not retried (max_retries 0)" in capsys.readouterr().out


def test_run_refuses_an_output_override_that_loses_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "r.yaml", {**BASE, "output": str(tmp_path / "results")})
    assert cli.main(["run", str(path), "--output", "mock:///x"]) == 2  # before Ray is started or anything written
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: --output should be a local path or a URI") and "mock:// is not one of them" in line
    assert not (tmp_path / "results").exists()
