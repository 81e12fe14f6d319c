"""Reading trackers back with their own readers (TensorBoard's, MLflow's client), for the tracking tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.results import ResultsStore


def tb_scalars(folder: Path, tag: str = "val_loss") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def tb_hparams(folder: Path) -> dict[str, Any]:
    """The HParams summaries of a run folder: {"start": hparams, "ends": [status, ...]}."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    out: dict[str, Any] = {"start": None, "starts": 0, "ends": []}
    for file in sorted(folder.iterdir()):
        for event in EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    out["starts"] += 1
                    out["start"] = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                                    for k, v in data.session_start_info.hparams.items()}
                elif data.HasField("session_end_info"):
                    out["ends"].append(data.session_end_info.status)
    return out


def evals_by_trial(job: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in ResultsStore(str(job)).read_evals().to_pylist():  # the tables and any trial parts
        out.setdefault(r["trial_id"], []).append((r["step"], r["val_loss"]))
    return {k: sorted(v) for k, v in out.items()}


def same_series(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    if [s for s, _ in a] != [s for s, _ in b]:
        return False
    return all(abs(x - y) < 1e-5 for (_, x), (_, y) in zip(a, b, strict=True))


def mlflow_runs(uri: str, experiment: str) -> tuple[Any, dict[str, Any], Any]:
    """(client, trial runs by trial id, the job's run) of ``experiment``; fails on a trial with two runs."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    trials: dict[str, Any] = {}
    jobs = []
    for run in runs:
        tid = run.data.tags.get("trial_id")
        if tid is None:
            jobs.append(run)
            continue
        assert tid not in trials, f"trial {tid} has two MLflow runs"
        trials[tid] = run
    assert len(jobs) == 1, [r.info.run_name for r in jobs]
    return client, trials, jobs[0]


def metric_history(client: Any, run: Any, key: str = "val_loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
