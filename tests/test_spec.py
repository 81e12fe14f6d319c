"""The job spec schema: defaults, strictness, cross-field rules; the sections are rnn.config's dataclasses."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.errors import Problem, SpecError
from orchestrator.spec import JobSpec, build_job, load_job, trial_config
from orchestrator.spec.rules import estimate_parameters, sweepable_paths
from orchestrator.spec.sections import validate_section
from rnn import config as engine


def spec_of(raw: dict[str, Any]) -> JobSpec:
    return build_job(raw, "s.yaml").spec


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        build_job(raw, "s.yaml")
    return info.value.lines()


@pytest.mark.parametrize(
    "engine_cls,key,bad,message",
    [(engine.DataConfig, "seq_len", 0, "should be greater than or equal to 1"),
     (engine.ModelConfig, "num_layers", 65, "should be less than or equal to 64"),
     (engine.TrainConfig, "warmup_fraction", 1.0, "should be less than 1"),
     (engine.EarlyStopping, "patience", 0, "should be greater than or equal to 1"),
     (engine.ThroughputConfig, "auto_time_budget_s", 0, "should be greater than 0")],
)
def test_sections_are_the_engine_dataclasses_with_their_limits(engine_cls: type, key: str, bad: Any,
                                                               message: str) -> None:
    """No mirror schema: a section is validated straight into the engine's dataclass, whose fields
    carry their own limits."""
    section, _, found = validate_section(engine_cls, {}, "s")
    assert section == engine_cls() and found == []
    section, values, found = validate_section(engine_cls, {key: bad}, "s")
    assert section is None and [(p.path, p.message, p.got) for p in found] == [(f"s.{key}", message, bad)]


def test_a_section_refuses_unknown_keys_strings_for_numbers_and_nan() -> None:
    _, values, found = validate_section(engine.TrainConfig, {"lr": "0.1", "batch": 3, "clip_grad_norm": float("nan")},
                                        "train")
    assert [(p.path, p.message) for p in found] == [
        ("train.lr", "should be a valid number"),
        ("train.clip_grad_norm", "should be a finite number"),
        ("train.batch", "unknown key; did you mean 'batch_size'? (valid keys: " + ", ".join(
            f.name for f in dataclasses.fields(engine.TrainConfig)) + ")"),
    ]
    assert values["batch_size"] == 64  # the defaults of the fields it did not refuse, for the cross-field rules


def test_a_yaml_date_is_named_where_it_was_written() -> None:
    import datetime

    _, _, found = validate_section(engine.DataConfig, {"corpus": datetime.date(2020, 1, 2)}, "data")
    assert [p.path for p in found] == ["data.corpus"]
    assert "YAML read this as a date" in found[0].message


def test_minimal_spec_gets_engine_defaults() -> None:
    spec = spec_of({"name": "tiny"})
    assert spec.kind == "train"
    assert spec.data == engine.DataConfig() and spec.model == engine.ModelConfig()
    assert spec.train == engine.TrainConfig()
    assert spec.throughput is None and spec.sweep is None and spec.output == "results"


def test_sections_build_engine_configs() -> None:
    spec = spec_of({"name": "x", "train": {"early_stopping": {"patience": 2, "min_delta": 0.01}, "lr": 1}})
    train = spec.train
    assert isinstance(train, engine.TrainConfig)
    assert train.early_stopping == engine.EarlyStopping(patience=2, min_delta=0.01)
    assert train.lr == 1.0 and isinstance(train.lr, float)  # an int is fine where a float is expected


def test_null_section_means_defaults() -> None:
    assert spec_of({"name": "x", "model": None, "sweep": None}).model == engine.ModelConfig()


def test_throughput_job_gets_default_throughput_section() -> None:
    spec = spec_of({"name": "t", "kind": "throughput"})
    assert spec.throughput == engine.ThroughputConfig()
    (trial,) = build_job({"name": "t", "kind": "throughput"}).trials
    assert trial_config(trial)["throughput"]["batch_sizes"] == [512, 1024, 2048]
    assert trial.throughput_config == engine.ThroughputConfig()
    assert "throughput" not in trial_config(build_job({"name": "x"}).trials[0])


def test_throughput_batch_sizes_auto_or_list() -> None:
    def sizes(value: Any) -> Any:
        section, _, found = validate_section(engine.ThroughputConfig, {"batch_sizes": value}, "throughput")
        return section.batch_sizes if section is not None else [p.message for p in found]

    assert sizes("auto") == "auto"
    assert sizes([8, 16]) == (8, 16)
    for bad in ([], [8, 8], [True], "big", [0]):
        (message,) = sizes(bad)
        assert message.startswith("should be 'auto' or a non-empty list of distinct integers"), bad


def test_spec_is_immutable() -> None:
    spec = spec_of({"name": "x"})
    with pytest.raises(ValidationError, match="Instance is frozen"):
        spec.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize("output", ["results", "/abs/dir", "s3://bucket/prefix", "gs://b", "file:///tmp/x"])
def test_output_local_path_or_uri(output: str) -> None:
    assert spec_of({"name": "x", "output": output}).output == output


@pytest.mark.parametrize("gpus", [0, 0.25, 1, 2])
def test_gpu_fractions_and_whole_numbers(gpus: float) -> None:
    assert spec_of({"name": "x", "resources": {"gpus_per_trial": gpus}}).resources.gpus_per_trial == gpus


def test_budget_may_be_time_or_epochs_alone() -> None:
    assert spec_of({"name": "x", "train": {"max_steps": None, "max_time_s": 60}}).train.max_time_s == 60
    assert spec_of({"name": "x", "train": {"max_steps": None, "max_epochs": 0.5}}).train.max_epochs == 0.5


def test_throughput_job_needs_no_training_budget() -> None:
    assert spec_of({"name": "t", "kind": "throughput", "train": {"max_steps": None}}).kind == "throughput"


def test_corpus_file_is_resolved_against_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "text.txt").write_text("hello " * 500)
    (tmp_path / "text.txt").write_text("hello " * 500)
    spec_file = tmp_path / "specs" / "job.yaml"
    spec_file.write_text("name: x\ndata: {corpus: text.txt}\n")
    monkeypatch.chdir(tmp_path)
    assert load_job(spec_file).spec.data.corpus == "text.txt"
    (tmp_path / "text.txt").unlink()  # next to the spec is not where it is looked for
    with pytest.raises(SpecError) as info:
        load_job(spec_file)
    assert f"data.corpus: no such file ({tmp_path / 'text.txt'};" in str(info.value)


def test_vocab_size_is_ignored_for_char_but_validated(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        assert spec_of({"name": "x", "data": {"vocab_size": 300}}).data.vocab_size == 300
    assert [r.getMessage() for r in caplog.records] == [
        "x: data.vocab_size (300) is ignored at level char (its vocabulary is the training split's characters)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="orchestrator"):  # swept levels: said by the sweep itself
        spec_of({"name": "x", "data": {"vocab_size": 300}, "sweep": {"grid": {"data.level": ["char", "bpe"]}}})
    assert not caplog.records
    assert problems({"name": "x", "data": {"vocab_size": 10**7}}) == [
        "s.yaml: data.vocab_size: should be less than or equal to 1048576 (got 10000000)"]


def test_an_evaluation_interval_beyond_the_step_budget_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        spec_of({"name": "x", "train": {"max_steps": 100}, "sweep": {"seeds": [0, 1, 2]}})
    assert [r.getMessage() for r in caplog.records] == [
        "x: train.eval_every (250) is more than max_steps (100): each trial is evaluated once, at its end (no "
        "checkpoint, early stopping or rung before it); set eval_every <= max_steps to evaluate along the way"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        spec_of({"name": "x", "train": {"max_steps": 100, "eval_every": 100}})
    assert not caplog.records


def test_cross_field_rules_are_reported_alongside_field_errors() -> None:
    lines = problems({"name": "x", "model": {"cell": "gru", "layer_norm": True, "hidden_size": 0,
                                             "tie_weights": True, "embedding_dim": 64},
                      "train": {"max_steps": None}})
    assert lines == [
        "s.yaml: model.hidden_size: should be greater than or equal to 1 (got 0)",
        "s.yaml: model.layer_norm: the layer-norm cell exists for lstm only (got cell 'gru'); "
        "set layer_norm: false or cell: lstm",
        "s.yaml: train: no budget: set at least one of max_steps, max_epochs, max_time_s",
    ]  # tie_weights is not judged: hidden_size itself is wrong


def test_tie_weights_with_equal_sizes_is_fine() -> None:
    spec = spec_of({"name": "x", "model": {"tie_weights": True, "embedding_dim": 256, "hidden_size": 256}})
    assert spec.model.tie_weights


def test_sweepable_paths() -> None:
    paths = sweepable_paths("train")
    assert "model.cell" in paths and "train.early_stopping.patience" in paths and "data.seq_len" in paths
    assert not any(p.startswith(("throughput.", "resources.", "sweep.")) or p in ("name", "kind") for p in paths)
    assert "throughput.batch_sizes" in sweepable_paths("throughput")


def test_spec_error_renders_one_line_per_problem() -> None:
    error = SpecError([Problem("train.lr", "should be greater than 0", got=0), Problem("", "bad YAML", line=3),
                       Problem("train.lr", "should be greater than 0", got=0)], file="a.yaml")
    assert error.lines() == ["a.yaml: train.lr: should be greater than 0 (got 0)", "a.yaml: line 3: bad YAML"]
    assert error.lines("b.yaml")[0].startswith("b.yaml: ")
    assert str(error) == "\n".join(error.lines())


def test_parameter_estimate_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    for cell, module in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU), ("rnn", torch.nn.RNN)):
        model = {"cell": cell, "embedding_dim": 24, "hidden_size": 40, "num_layers": 3}
        layers = [torch.nn.Embedding(50, 24), module(24, 40, 3), torch.nn.Linear(40, 50)]
        actual = sum(p.numel() for layer in layers for p in layer.parameters())
        assert estimate_parameters(model, 50) == actual, cell
    tied = {"cell": "lstm", "embedding_dim": 40, "hidden_size": 40, "num_layers": 1, "tie_weights": True}
    untied_count = sum(p.numel() for m in (torch.nn.Embedding(50, 40), torch.nn.LSTM(40, 40)) for p in m.parameters())
    assert estimate_parameters(tied, 50) == untied_count + 50  # the head adds only its bias
