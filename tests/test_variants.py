"""``sweep.variants``: override mappings that multiply with grid, random and seeds."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from conftest import TINY_SPEC
from orchestrator.errors import SpecError
from orchestrator.spec import build_job, load_job


def _with(sweep: dict[str, Any], **sections: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY_SPEC)
    raw["sweep"] = sweep
    for name, values in sections.items():
        raw[name].update(values)
    return raw


def _problems(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as e:
        build_job(raw, source="s.yaml")
    return str(e.value)


def test_trial_ids_without_variants_are_unchanged() -> None:
    # computed on main before variants existed (commit 001d89b): ids are the config's hash
    assert [t.trial_id for t in build_job(TINY_SPEC).trials] == [
        "504e374fb66c", "2e21b346137c", "43e8ddf113ce", "d57022c09166"]
    assert [t.trial_id for t in load_job("jobs/architectures.yaml").trials][:4] == [
        "7b6e49d4b0ca", "32b995edd134", "22444cbafd58", "b0edc15a2c75"]


def test_variants_multiply_with_grid_random_and_seeds() -> None:
    raw = _with({
        "variants": [{"model.cell": "lstm", "model.layer_norm": True}, {"model.cell": "gru"}],
        "grid": {"train.lr": [0.001, 0.002]},
        "random": {"samples": 2, "seed": 0, "space": {"model.dropout": {"dist": "uniform", "low": 0.0, "high": 0.5}}},
        "seeds": [0, 1],
    })
    trials = build_job(raw).trials
    assert len(trials) == 2 * 2 * 2 * 2
    # variants are the outermost loop; an LN-LSTM and a GRU share one job
    cells = [(t.run_config.model.cell, t.run_config.model.layer_norm) for t in trials]
    assert cells[:8] == [("lstm", True)] * 8 and cells[8:] == [("gru", False)] * 8
    assert trials[0].overrides == {"model.cell": "lstm", "model.layer_norm": True, "train.lr": 0.001,
                                   "model.dropout": trials[0].overrides["model.dropout"], "train.seed": 0}
    assert len({t.trial_id for t in trials}) == 16


def test_a_variants_trial_has_the_id_of_the_same_config_written_out() -> None:
    raw = _with({"variants": [{"model.cell": "gru", "train.lr": 0.004}, {}]})
    by_variant = build_job(raw).trials
    plain = build_job(_with({"grid": {"model.cell": ["gru"]}}, train={"lr": 0.004})).trials
    assert by_variant[0].trial_id == plain[0].trial_id
    assert by_variant[1].trial_id == build_job(_with({"grid": {"model.cell": ["lstm"]}})).trials[0].trial_id


def test_each_variant_is_validated_with_its_own_path() -> None:
    text = _problems(_with({
        "variants": [{"model.cell": "lstm", "model.layer_norm": True}, {"model.cell": "transformer"},
                     {"model.cell": "gru", "model.layer_norm": True}, {"model.cel": "gru"}],
    }))
    assert ("s.yaml: sweep.variants[1].model.cell: should be 'lstm', 'gru', 'rnn', 'mingru' or 'minlstm' "
            "(got 'transformer')") in text
    assert "s.yaml: sweep.variants[2].model.layer_norm: the layer-norm cell exists for lstm only" in text
    assert "s.yaml: sweep.variants[3].model.cel: no such setting; did you mean model.cell?" in text
    assert "variants[0]" not in text
    assert len(text.splitlines()) == 3  # each once, not once per seed


def test_variant_structure_problems() -> None:
    text = _problems(_with({"variants": [{"model.cell": "gru"}, {"model.cell": "gru"}],
                            "grid": {"model.cell": ["lstm"]}}))
    assert "sweep.variants[0].model.cell: also swept by sweep.grid" in text
    assert "sweep.variants[1]: repeats sweep.variants[0]" in text
    assert "sweep.variants: " in _problems(_with({"variants": []}))
    assert "sweep.variants[0].name: cannot be swept" in _problems(_with({"variants": [{"name": "x"}]}))
    text = _problems(_with({"variants": [{"train.seed": 3}], "seeds": [0, 1]}))
    assert "sweep.seeds: train.seed is also swept by grid, random or variants" in text
