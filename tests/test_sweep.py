"""Sweep expansion: order, determinism, stable trial ids, and the engine configs trials build."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from orchestrator.spec import Job, Trial, build_job, trial_config
from orchestrator.spec.expand import canonical_json, sample_space, trial_id_for
from rnn.config import EarlyStopping, RunConfig, ThroughputConfig

BASE: dict[str, Any] = {"name": "s", "model": {"hidden_size": 64}, "train": {"max_steps": 100}}


def spec_with(**sections: Any) -> Job:
    return build_job({**copy.deepcopy(BASE), **sections})


def expand(job: Job) -> tuple[Trial, ...]:
    return job.trials


def test_no_sweep_is_one_trial_with_the_train_seed() -> None:
    (trial,) = expand(spec_with(train={"max_steps": 100, "seed": 7}))
    assert trial.index == 0
    assert trial.overrides == {"train.seed": 7}
    assert trial_config(trial)["train"]["seed"] == 7
    assert set(trial_config(trial)) == {"data", "model", "train"}


def test_grid_is_cartesian_in_written_order_then_seeds() -> None:
    spec = spec_with(sweep={"grid": {"model.cell": ["lstm", "gru", "rnn"], "model.bidirectional": [False, True]},
                            "seeds": [0, 1]})
    trials = expand(spec)
    assert len(trials) == 12
    assert [t.index for t in trials] == list(range(12))
    assert [tuple(t.overrides.values()) for t in trials[:5]] == [
        ("lstm", False, 0), ("lstm", False, 1), ("lstm", True, 0), ("lstm", True, 1), ("gru", False, 0)]
    assert list(trials[0].overrides) == ["model.cell", "model.bidirectional", "train.seed"]
    for t in trials:
        assert trial_config(t)["model"]["cell"] == t.overrides["model.cell"]
        assert trial_config(t)["train"]["seed"] == t.overrides["train.seed"]
        assert trial_config(t)["model"]["hidden_size"] == 64
    assert len({t.trial_id for t in trials}) == 12


def test_random_samples_are_deterministic_and_within_bounds() -> None:
    sweep = {"random": {"samples": 6, "seed": 3, "space": {
        "train.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2},
        "model.dropout": {"dist": "uniform", "low": 0.0, "high": 0.5},
        "model.num_layers": {"dist": "int", "low": 1, "high": 3},
        "model.cell": {"dist": "choice", "values": ["lstm", "gru"]}}}}
    first, again = expand(spec_with(sweep=sweep)), expand(spec_with(sweep=copy.deepcopy(sweep)))
    assert [t.trial_id for t in first] == [t.trial_id for t in again]
    assert [t.overrides for t in first] == [t.overrides for t in again]
    for t in first:
        assert 1e-4 <= t.overrides["train.lr"] <= 1e-2
        assert 0.0 <= t.overrides["model.dropout"] <= 0.5
        assert t.overrides["model.num_layers"] in (1, 2, 3)
        assert t.overrides["model.cell"] in ("lstm", "gru")
    other_seed = copy.deepcopy(sweep)
    other_seed["random"]["seed"] = 4
    assert [t.overrides for t in expand(spec_with(sweep=other_seed))] != [t.overrides for t in first]


def test_random_draws_are_pinned() -> None:
    """Resume relies on the same draws: a change in sampling must be deliberate."""
    spec = spec_with(sweep={"random": {"samples": 2, "seed": 0, "space": {
        "train.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2},
        "model.num_layers": {"dist": "int", "low": 1, "high": 4}}}})
    assert sample_space(spec.spec.sweep.random) == [
        {"train.lr": pytest.approx(0.004884765313390349, rel=1e-12), "model.num_layers": 4},
        {"train.lr": pytest.approx(0.00012049492518354385, rel=1e-12), "model.num_layers": 4},
    ]


def test_grid_times_random_times_seeds() -> None:
    lr = {"dist": "uniform", "low": 0.001, "high": 0.01}
    spec = spec_with(sweep={"grid": {"model.cell": ["lstm", "gru"]}, "seeds": [0, 1, 2],
                            "random": {"samples": 2, "space": {"train.lr": lr}}})
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 3
    assert list(trials[0].overrides) == ["model.cell", "train.lr", "train.seed"]
    assert trials[0].overrides["train.lr"] == trials[1].overrides["train.lr"]  # seeds innermost


def test_repeated_random_draws_are_dropped() -> None:
    cell = {"dist": "choice", "values": ["lstm", "gru"]}
    spec = spec_with(sweep={"random": {"samples": 20, "space": {"model.cell": cell}}})
    trials = expand(spec)
    assert sorted(t.overrides["model.cell"] for t in trials) == ["gru", "lstm"]
    assert [t.index for t in trials] == [0, 1]


def test_trial_id_is_pinned() -> None:
    """Hard-coded: if this changes, every stored result stops matching its trial on resume."""
    assert trial_id_for("train", {"b": [1, 2.5], "a": {"z": None, "y": True}}) == "9d46c5e5f0f6"
    assert expand(spec_with())[0].trial_id == "3afb2d1441b7"


def test_settings_added_later_keep_the_ids_of_jobs_that_do_not_use_them() -> None:
    base_id = expand(spec_with())[0].trial_id
    train = copy.deepcopy(BASE["train"])
    assert expand(spec_with(train={**train, "schedule_by": "steps"}))[0].trial_id == base_id  # the default
    timed = spec_with(train={**train, "schedule_by": "time", "max_steps": None, "max_time_s": 60.0})
    assert trial_config(expand(timed)[0])["train"]["schedule_by"] == "time" and expand(timed)[0].trial_id != base_id
    cosine = {**train, "scheduler": "cosine"}
    cosine_id = expand(spec_with(train=cosine))[0].trial_id
    assert expand(spec_with(train={**cosine, "min_lr_fraction": 0.1}))[0].trial_id == cosine_id  # the default
    assert expand(spec_with(train={**cosine, "min_lr_fraction": 0.35}))[0].trial_id != cosine_id


def test_a_cosine_floor_is_refused_for_a_schedule_without_one() -> None:
    from orchestrator.errors import SpecError

    with pytest.raises(SpecError, match="train.min_lr_fraction: is the lr a cosine schedule ends at; scheduler "
                                        "onecycle does not decay to one"):
        spec_with(train={"scheduler": "onecycle", "min_lr_fraction": 0.35})
    ok = spec_with(train={"scheduler": "cosine", "min_lr_fraction": 0.35})
    assert ok.trials[0].run_config.train.min_lr_fraction == 0.35


def test_a_time_schedule_is_checked_where_it_is_written() -> None:
    from orchestrator.errors import SpecError

    with pytest.raises(SpecError) as e:
        spec_with(train={"schedule_by": "time", "scheduler": "plateau"})
    lines = str(e.value).splitlines()
    assert any("train.schedule_by: time needs train.max_time_s" in line for line in lines)
    assert any("set max_steps to null" in line for line in lines)
    assert any("plateau has no length to stretch" in line for line in lines)
    ok = spec_with(train={"schedule_by": "time", "max_steps": None, "max_time_s": 30.0, "scheduler": "onecycle"})
    assert ok.trials[0].run_config.train.schedule_by == "time"


def test_trial_id_ignores_dict_order_name_resources_output() -> None:
    config = trial_config(expand(spec_with())[0])
    reordered = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(config.items()))}
    assert trial_id_for("train", reordered) == trial_id_for("train", config)
    base_id = expand(spec_with())[0].trial_id
    elsewhere = spec_with(name="other", output="s3://b/x", resources={"cpus_per_trial": 4, "max_concurrent": 9})
    assert expand(elsewhere)[0].trial_id == base_id


def test_trial_id_depends_on_seed_kind_and_values() -> None:
    base_id = expand(spec_with())[0].trial_id
    assert expand(spec_with(train={"max_steps": 100, "seed": 1}))[0].trial_id != base_id
    assert expand(spec_with(train={"max_steps": 101}))[0].trial_id != base_id
    assert expand(build_job({**BASE, "kind": "throughput"}))[0].trial_id != base_id


def test_equal_values_written_differently_give_one_id() -> None:
    assert expand(spec_with(train={"max_steps": 100, "lr": 1}))[0].trial_id == \
        expand(spec_with(train={"max_steps": 100, "lr": 1.0}))[0].trial_id


def test_wider_grid_keeps_the_old_ids() -> None:
    narrow = expand(spec_with(sweep={"grid": {"model.cell": ["lstm", "gru"]}, "seeds": [0]}))
    wide = expand(spec_with(sweep={"grid": {"model.cell": ["rnn", "lstm", "gru"]}, "seeds": [0, 1]}))
    assert {t.trial_id for t in narrow} < {t.trial_id for t in wide}
    assert len(wide) == 6


def test_sweeping_a_setting_to_its_base_value_matches_the_unswept_trial() -> None:
    unswept = expand(spec_with())[0]
    swept = expand(spec_with(sweep={"grid": {"model.cell": ["lstm", "gru"]}}))[0]
    assert swept.trial_id == unswept.trial_id
    assert swept.overrides == {"model.cell": "lstm", "train.seed": 0}


def test_canonical_json_is_compact_sorted_and_uses_float_repr() -> None:
    assert canonical_json({"b": 0.1, "a": [1, 1e-5]}) == '{"a":[1,1e-05],"b":0.1}'


def test_run_config_builds_the_engine_config() -> None:
    spec = spec_with(train={"max_steps": 100, "early_stopping": {"patience": 2}},
                     sweep={"grid": {"model.cell": ["gru"], "data.seq_len": [32]}})
    (trial,) = expand(spec)
    run = trial.run_config
    assert isinstance(run, RunConfig)
    assert run.model.cell == "gru" and run.data.seq_len == 32 and run.model.hidden_size == 64
    assert run.train.early_stopping == EarlyStopping(patience=2, min_delta=0.0)
    assert RunConfig.from_dict(run.to_dict()) == run
    assert RunConfig.from_dict(trial_config(trial)) == run  # the plain config crossing Ray rebuilds the same object
    assert trial.throughput_config is None


def test_throughput_trials_carry_their_section() -> None:
    spec = build_job({**BASE, "kind": "throughput", "throughput": {"batch_sizes": [8, 16]},
                          "sweep": {"grid": {"throughput.measure_steps": [2, 4]}}})
    trials = expand(spec)
    assert [trial_config(t)["throughput"]["measure_steps"] for t in trials] == [2, 4]
    tp = trials[0].throughput_config
    assert tp == ThroughputConfig(batch_sizes=(8, 16), measure_steps=2)


def test_trial_is_hashable_by_id() -> None:
    trial = expand(spec_with())[0]
    assert isinstance(trial, Trial)
    assert len({trial, expand(spec_with())[0]}) == 1
