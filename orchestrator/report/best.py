"""``best``: the best configuration of a finished job, as a runnable spec.

- A train job: the best trial by the report's ranking (:mod:`orchestrator.results.ranking`:
  bits per character when the tokenization varies, else validation loss; ``metric`` overrides
  it), its full resolved config written out as a spec with no sweep.
- A throughput job: the fastest ``ok`` measurement (highest samples/s), as a ``kind: train``
  spec of that trial's config with its batch size, its precision (``train.amp``) and its
  device (``train.device``).

The spec the trials came from is read from ``manifest.json`` (its name, resources and output).
A trial's exact config is its trials row's ``config_json`` (the resolved config, stored at
commit). A job folder written before that column existed has it null; there the config comes
from expanding the manifest's spec again (the trial id is the hash of the config), else from the
trials table's flattened config columns. The output is validated with :func:`build_job` before
it is returned, so what ``best`` prints, ``validate`` accepts and ``run`` runs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Optional

import yaml

from orchestrator.errors import SpecError, UsageError
from orchestrator.results import ResultsError, ResultsStore, is_job_folder, read_manifest
from orchestrator.results.ranking import RankingMetric, rank_trials, ranking_metric
from orchestrator.results.records import config_from_json
from orchestrator.spec import build_job, trial_config
from orchestrator.spec.yamlio import parse_yaml
from rnn.config import set_path

__all__ = ["BEST_FILE", "METRICS", "best_spec", "write_best_spec"]

log = logging.getLogger(__name__)

#: The spec of the best configuration, written beside the final report.
BEST_FILE = "best.yaml"

#: ``--metric`` choices: the trials column and whether higher is better.
METRICS: dict[str, tuple[str, bool]] = {
    "val_loss": ("best_val_loss", False),
    "val_bpc": ("best_val_bpc", False),
    "val_accuracy": ("best_val_accuracy", True),
}
_SECTIONS = ("data", "model", "train")
#: A throughput row's precision as the ``train.amp`` that asks for it.
_AMP = {"fp32": "off", "fp16": "fp16", "bf16": "bf16"}


def best_spec(job_dir: str | os.PathLike[str] | ResultsStore, metric: Optional[str] = None) -> str:
    """The YAML text of a runnable spec of ``job_dir``'s best configuration (see the module doc).

    ``job_dir`` is the job folder, or a store open on it (read through, not opened again).

    Raises:
        UsageError: not a job folder, no manifest, an unknown metric, nothing ranked, a
            damaged table (one line, without the folder's name: the caller adds it).
    """
    if metric is not None and metric not in METRICS:
        raise UsageError(f"--metric should be one of {', '.join(METRICS)} (got {metric!r})")
    folder = job_dir.job_dir if isinstance(job_dir, ResultsStore) else job_dir
    if not os.path.isdir(folder) or not is_job_folder(folder):
        raise UsageError("not a job folder (no trials.parquet or parts/)")
    try:
        manifest = read_manifest(folder)
        store = job_dir if isinstance(job_dir, ResultsStore) else ResultsStore(folder)
        rows = store.read_trials().to_pylist()
        raw = _spec_of(manifest)
        if store.is_local:  # where the job ran (run --output may have moved it from the spec's output)
            raw = {**raw, "output": os.path.dirname(os.path.abspath(folder))}
        configs = _Configs(rows, raw)
        if raw.get("kind", "train") == "throughput":
            if metric is not None:
                raise UsageError("--metric applies to train jobs; a throughput job's best is its fastest setting")
            header, config = _fastest(store.read_throughput().to_pylist(), configs)
            resources = dict(raw.get("resources") or {})
            if config["train"]["device"] == "cuda" and not resources.get("gpus_per_trial"):
                raw = {**raw, "resources": {**resources, "gpus_per_trial": 1}}  # cuda needs a GPU reserved
                header.append("resources.gpus_per_trial set to 1: a trial on cuda must reserve a GPU")
        else:
            header, config = _best_trial(rows, configs, metric)
    except ResultsError as e:
        raise UsageError(str(e)) from e
    return _render(raw, config, header)


def write_best_spec(store: ResultsStore) -> Optional[str]:
    """Write :func:`best_spec` of the store's job to ``best.yaml`` beside the report; returns that
    name, or None (said at INFO) when there is nothing to write: no manifest, nothing ranked."""
    try:
        text = best_spec(store)
    except UsageError as e:
        log.info("no %s in the report: %s", BEST_FILE, e)
        return None
    store.write_text(BEST_FILE, text)
    return BEST_FILE


def _spec_of(manifest: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The spec the job last ran with, parsed (the manifest keeps each run's text when it changed)."""
    if manifest is None:
        raise UsageError("no manifest.json: the spec these trials came from is unknown")
    texts = [r.get("spec_text") for r in manifest.get("runs") or [] if r.get("spec_text")]
    text = texts[-1] if texts else manifest.get("spec_text")
    if not isinstance(text, str):
        raise UsageError("manifest.json holds no spec_text")
    try:
        return parse_yaml(text, "manifest.json spec_text")
    except SpecError as e:
        raise UsageError(f"the spec in manifest.json does not parse: {e}") from e


class _Configs:
    """Trial id -> exact config: the trials rows' ``config_json``, else (a job folder written
    before that column) the manifest's spec expanded again, expanded only when first needed."""

    def __init__(self, trials: list[dict[str, Any]], raw: Mapping[str, Any]) -> None:
        self._stored = {r["trial_id"]: r.get("config_json") for r in trials}
        self._raw = raw
        self._expanded: Optional[dict[str, dict[str, Any]]] = None

    def get(self, trial_id: str) -> Optional[dict[str, Any]]:
        text = self._stored.get(trial_id)
        if text is not None:
            try:
                config = config_from_json(text)
            except ValueError as e:
                log.warning("trial %s: config_json does not parse (%s); expanding the spec again", trial_id, e)
            else:
                return config
        if self._expanded is None:
            self._expanded = _trial_configs(self._raw)
        return self._expanded.get(trial_id)


def _trial_configs(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Trial id -> exact config, from expanding the job's spec again (empty if it no longer validates)."""
    try:
        return {t.trial_id: trial_config(t) for t in build_job(raw, source="manifest.json").trials}
    except SpecError:
        return {}


def _unflatten(row: Mapping[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    """A nested config from a row's dotted columns (a fallback: lists come back from JSON text)."""
    config: dict[str, Any] = {name: {} for name in sections}
    for key in sorted(row):
        if key.split(".")[0] not in sections or "." not in key:
            continue
        value = row[key]
        if isinstance(value, float) and math.isnan(value):
            value = None
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        set_path(config, key, value)
    # a column another trial had (train.early_stopping.patience) is None here: drop such mappings
    for section in config.values():
        for name, value in list(section.items()):
            if isinstance(value, dict) and all(v is None for v in value.values()):
                section[name] = None
    return config


def _config_of(row: Mapping[str, Any], configs: _Configs) -> dict[str, Any]:
    exact = configs.get(row["trial_id"])
    config = copy.deepcopy(exact) if exact is not None else _unflatten(row, _SECTIONS)
    return {name: config.get(name) or {} for name in _SECTIONS}


def _best_trial(rows: list[dict[str, Any]], configs: _Configs,
                metric: Optional[str]) -> tuple[list[str], dict[str, Any]]:
    if metric is None:
        ranking = ranking_metric(rows)
        higher = False
    else:
        column, higher = METRICS[metric]
        ranking = RankingMetric(column, metric, f"Ranked by {column} (--metric {metric}).")
    ranked = rank_trials(rows, ranking)
    if higher:
        ranked.reverse()
    if not ranked:
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        seen = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "no trials"
        raise UsageError(f"no completed trial with a finite {ranking.trials_column} to rank ({seen})")
    best = ranked[0]
    col = ranking.trials_column
    header = [
        f"trial {best['trial_id']} ({best['status']}): {col} {best[col]:.4f} at step {best.get('best_step')} "
        f"of {best.get('steps')}, the best of {len(ranked)} ranked trials",
        ranking.why,
    ]
    return header, _config_of(best, configs)


def _fastest(rows: list[dict[str, Any]], configs: _Configs) -> tuple[list[str], dict[str, Any]]:
    ok = [r for r in rows if r.get("status") == "ok" and r.get("samples_per_s") is not None]
    if not ok:
        raise UsageError("no throughput measurement ran ok (every batch size failed or ran out of memory)")
    best = max(ok, key=lambda r: r["samples_per_s"])
    config = _config_of(best, configs)
    config["train"] = {**config["train"], "batch_size": int(best["batch_size"]),
                       "amp": _AMP.get(str(best.get("precision")), "auto"), "device": _device(best.get("device"))}
    header = [
        f"the fastest setting that fit: trial {best['trial_id']}, batch size {best['batch_size']}, "
        f"{best['samples_per_s']:,.0f} samples/s, {best.get('precision')} on "
        f"{best.get('device_name') or best.get('device')}",
        "as a kind: train spec on that device (train.batch_size, train.amp, train.device)",
    ]
    return header, config


def _device(device: Any) -> str:
    """``cuda:0`` -> ``cuda``: the spec names a device type."""
    name = str(device or "auto").split(":")[0]
    return name if name in ("cpu", "cuda", "mps") else "auto"


def _render(raw: Mapping[str, Any], config: Mapping[str, Any], header: list[str]) -> str:
    spec: dict[str, Any] = {"name": f"{raw.get('name', 'job')}-best", "kind": "train"}
    spec.update({name: config[name] for name in _SECTIONS})
    for key in ("resources", "output"):
        if key in raw:
            spec[key] = copy.deepcopy(raw[key])
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
    try:  # what best prints must validate: a failure here is a bug in best, said in one line
        build_job(yaml.safe_load(text), source="best.yaml")
    except SpecError as e:
        raise UsageError(f"the best configuration does not validate as a spec: {' '.join(str(e).split())}") from e
    comments = "".join(f"# {line}\n" for line in [
        "Written by `python -m orchestrator best`: the best configuration of a job, runnable as it is.",
        *header,
        "Run it: python -m orchestrator run FILE (this file; results go to <output>/" + spec["name"] + ")",
    ])
    return comments + text
