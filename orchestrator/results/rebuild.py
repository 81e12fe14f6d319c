"""What ``repair`` rebuilds from a trial's checkpoints once its row or its evaluations are lost.

A checkpoint (``checkpoints/<id>/best.pt``, and ``last.pt`` of a trial paused at a rung) holds
the trial's whole config, the step it was written at, the run's step budget (``total_steps``),
its best step, its training and evaluation time so far, the corpus hash, the vocabulary size
and every evaluation up to that step (:func:`rnn.run_state.checkpoint_state`). It does not hold
how the trial ended, its device, precision, attempts or start and end times. So, and only so:

- **Evaluations** of a trial whose row is kept: the checkpoint's evaluations up to the row's
  last step (a checkpoint can be from a later step than the row: an ASHA segment in flight when
  the driver died). Complete when the checkpoint reaches the row's last step; else those after
  the checkpoint's step are lost, and said so.
- **A row**, only for a trial whose best checkpoint was written at the end of its full step
  budget (step == ``total_steps``, its best evaluation its last): such a trial completed (no
  early stop, time budget or divergence ends a run at the last step of its budget with its best
  evaluation). Its status, best metrics, steps, times, corpus and vocabulary come from the
  checkpoint, its parameter count from the model its config builds (on the meta device: nothing
  allocated); device, precision, attempts, the start and end times and the layer-norm path stay
  empty. Not for a job scheduled by successive halving, whose statuses (pruned, completed) are
  decisions of the run that no checkpoint records.

A checkpoint is trusted only when its config hashes to its folder's trial id. Every other trial
without a row runs again at the next ``run``, from its best checkpoint where one is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Optional

from orchestrator.results.records import TRIAL_FIXED
from orchestrator.results.store import BEST_CHECKPOINT, RESUME_CHECKPOINT, ResultsStore
from orchestrator.results.tables import trial_row
from orchestrator.spec.expand import Trial, config_dict, trial_id_for
from rnn.events import EvalRecord, TrialStatus

__all__ = ["Saved", "evals_by_trial", "read_saved", "rebuild_evals", "rebuild_rows"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Saved:
    """What one of a trial's checkpoints says of it (see the module docstring)."""

    relpath: str
    step: int
    total_steps: Optional[int]
    best_step: Optional[int]
    evals: list[EvalRecord]
    trial: Trial
    train_time_s: Optional[float]
    eval_time_s: Optional[float]
    corpus_sha256: Optional[str]
    vocab_size: Optional[int]


def read_saved(store: ResultsStore, trial_id: str, name: str = BEST_CHECKPOINT) -> tuple[Optional[Saved], str]:
    """The checkpoint ``name`` of ``trial_id`` read as :class:`Saved`, or None and why not
    (no such file, unreadable, another trial's config)."""
    from rnn.checkpoint import load_checkpoint
    from rnn.config import RunConfig
    from rnn.errors import CheckpointError

    rel = store.checkpoint_relpath(trial_id, name)
    data = store.read_checkpoint_bytes(trial_id, name)
    if data is None:
        return None, f"no {rel}"
    try:
        ckpt = load_checkpoint(data)
        run = RunConfig.from_dict(ckpt["config"])
        if trial_id_for("train", config_dict(run)) != trial_id:
            return None, f"{rel} holds the config of another trial"
        evals = [EvalRecord(**r) for r in ckpt.get("evals") or ()]
        saved = Saved(
            relpath=rel, step=int(ckpt["step"]),
            total_steps=_int(ckpt.get("total_steps")), best_step=_int(ckpt.get("best_step")),
            evals=sorted(evals, key=lambda r: r.step), trial=Trial(trial_id, 0, {}, run, None),
            train_time_s=_float(ckpt.get("train_time_s")), eval_time_s=_float(ckpt.get("eval_time_s")),
            corpus_sha256=ckpt.get("corpus_sha256") if isinstance(ckpt.get("corpus_sha256"), str) else None,
            vocab_size=_int(ckpt.get("vocab_size")),
        )
    except (CheckpointError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        first = str(e).split("\n")[0][:200]
        return None, f"{rel} cannot be read ({first})"
    return saved, ""


def rebuild_evals(store: ResultsStore, rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Commit again each of ``rows`` (trials rows whose evaluations are lost) with the evaluations
    its checkpoints hold; returns one line per trial saying what came back and what did not."""
    lines = []
    for row in rows:
        tid = row["trial_id"]
        candidates = [read_saved(store, tid, name) for name in (BEST_CHECKPOINT, RESUME_CHECKPOINT)]
        found = [s for s, _ in candidates if s is not None]
        if not found:
            lines.append(f"lost: trial {tid}'s evaluations ({candidates[0][1]}); its row is kept")
            continue
        last = row.get("steps")
        saved = max(found, key=lambda s: (len([r for r in s.evals if last is None or r.step <= last]), s.step))
        evals = [r for r in saved.evals if last is None or r.step <= last]
        if not evals:
            lines.append(f"lost: trial {tid}'s evaluations ({saved.relpath} holds none); its row is kept")
            continue
        store.commit_trial(dict(row), evals)  # the row as it was, with these evaluations
        span = f"{len(evals)} evaluation(s), steps {evals[0].step}-{evals[-1].step}"
        if last is None or saved.step >= last:
            lines.append(f"rebuilt trial {tid}'s evaluations from {saved.relpath}: {span}, all of them")
        else:
            lines.append(f"rebuilt trial {tid}'s evaluations from {saved.relpath}: {span}; it trained to step "
                         f"{last}, and its evaluations after step {saved.step} are lost")
    return lines


def rebuild_rows(store: ResultsStore, trial_ids: Iterable[str], evals: Mapping[str, list[EvalRecord]],
                 scheduled: bool) -> tuple[list[str], list[str]]:
    """Rows for the ``trial_ids`` (lost rows) whose best checkpoint shows they completed (see the
    module docstring); ``evals``: each trial's evaluations still on disk (kept over the
    checkpoint's). ``scheduled``: the job ran successive halving (nothing is rebuilt).
    Returns (what was rebuilt, what was lost), one line per trial."""
    rebuilt, lost = [], []
    for tid in sorted(trial_ids):
        saved, why = read_saved(store, tid)
        again = "it runs again at the next run"
        if saved is None:
            lost.append(f"trial {tid}'s row ({why}): {again}, from scratch")
            continue
        again += f", from its best checkpoint (step {saved.step})"
        done = saved.total_steps is not None and saved.step == saved.total_steps and saved.best_step == saved.step
        if scheduled or not done:
            reason = ("successive halving decided how it ended, which no checkpoint records" if scheduled else
                      f"its best checkpoint is from step {saved.step} of {saved.total_steps or 'a time budget'}, "
                      "so how it ended is not known")
            lost.append(f"trial {tid}'s row ({reason}): {again}")
            continue
        kept = evals.get(tid) or []
        history = kept if kept and kept[-1].step >= saved.step else saved.evals
        best = next((r for r in reversed(history) if r.step == saved.step), None)
        if best is None:
            lost.append(f"trial {tid}'s row ({saved.relpath} holds no evaluation at its step {saved.step}): {again}")
            continue
        row = trial_row(saved.trial, status=TrialStatus.COMPLETED, checkpoint=saved.relpath, info={
            "best_val_loss": best.val_loss, "best_val_bpc": best.val_bpc, "best_val_accuracy": best.val_accuracy,
            "best_step": best.step, "steps": saved.step, "params": _params(saved),
            "train_time_s": saved.train_time_s, "eval_time_s": saved.eval_time_s,
            "corpus_sha256": saved.corpus_sha256, "vocab_size": saved.vocab_size})
        row["attempts"] = None
        store.commit_trial(row, history)
        source = "evals.parquet" if history is kept else saved.relpath
        unknown = ", ".join(n for n in TRIAL_FIXED.names if row.get(n) is None and n != "error")
        rebuilt.append(f"rebuilt trial {tid}'s row from {saved.relpath}: completed at step {saved.step}, the end of "
                       f"its step budget, val_loss {best.val_loss:.4f}; {len(history)} evaluation(s) from {source}; "
                       f"unknown, left empty: {unknown}")
    return rebuilt, lost


def _params(saved: Saved) -> Optional[int]:
    """The model's parameter count, built on the meta device (no memory); None if it cannot be built."""
    if saved.vocab_size is None:
        return None
    try:
        import torch

        from rnn.models import build_model

        with torch.device("meta"):
            return build_model(saved.trial.run_config.model, saved.vocab_size).num_parameters()
    except Exception as e:  # noqa: BLE001  (a count is nice to have; the row stands without it)
        log.debug("trial %s: cannot count its parameters: %s", saved.trial.trial_id, e)
        return None


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def evals_by_trial(records: Iterable[Mapping[str, Any]]) -> dict[str, list[EvalRecord]]:
    """Evaluation rows (``evals.parquet``'s, as dicts) grouped by trial, in step order."""
    names = [f.name for f in fields(EvalRecord)]
    out: dict[str, list[EvalRecord]] = {}
    for r in records:
        values: dict[str, Any] = {n: r.get(n) for n in names}
        out.setdefault(r["trial_id"], []).append(EvalRecord(**values))
    for history in out.values():
        history.sort(key=lambda e: e.step)
    return out
