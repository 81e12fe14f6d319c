"""The thin Ray actor around the engine's trainer.

One actor runs one trial at a time and is reused for the next (starting a worker and
importing torch costs seconds). ``run`` and ``throughput`` are streaming generators of the
dataclasses in :mod:`orchestrator.run.events`: the driver sees each event as it happens. An
exception inside the trainer is reported as a ``Raised`` event; only a lost worker (killed
process, dead node) surfaces as a Ray error on the driver.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import traceback
from collections.abc import Generator
from pathlib import Path
from typing import Any, Optional

from orchestrator.processes import pid_alive
from orchestrator.run.events import (
    HEARTBEAT_S,
    Beat,
    Checkpointed,
    Ended,
    Evaluated,
    Event,
    Measured,
    Paused,
    Raised,
    Started,
)
from orchestrator.run.faults import Fault, batch_hook, step_hook
from rnn.config import RunConfig, ThroughputConfig

log = logging.getLogger(__name__)


def format_exception(exc: BaseException) -> str:
    """``Type: message`` on the first line, then the traceback."""
    head = f"{type(exc).__name__}: {exc}".strip()
    return head + "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


#: A worker's scratch folder in the system's temporary folder: ``rnn-trial-<pid>-<random>``.
SCRATCH_PREFIX = "rnn-trial-"
_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"(?P<pid>\d+)-[^/]+")


def remove_stale_scratch(folder: Optional[str] = None) -> list[str]:
    """Remove the scratch folders of workers that are gone (killed: their pid is not running),
    this user's only; returns their paths. Called as each worker starts."""
    folder = folder or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _SCRATCH_RE.fullmatch(entry.name)
        try:
            mine = entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
        except OSError:
            continue
        if m and mine and not pid_alive(int(m["pid"])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    if removed:
        log.info("removed %d scratch folders of workers that were killed", len(removed))
    return removed


class TrainerActor:
    """Runs trials with the engine: wrapped with ``ray.remote`` by the Ray backend, or used as it
    is by the local one.

    Args:
        num_threads: torch intra-op threads, the actor's CPU reservation.
        data_dir: where to look for downloadable corpora on this node.
        own_process: the worker has a process of its own, which an ``exit`` fault ends; False
            in the driver's process, where that fault raises ``WorkerExit`` instead.
        heartbeat_s: how often a training trial sends a ``Beat`` between evaluations.
    """

    def __init__(
        self,
        num_threads: int,
        data_dir: Optional[str] = None,
        own_process: bool = True,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self._num_threads = num_threads
        self._data_dir = data_dir
        self._own_process = own_process
        self._heartbeat_s = heartbeat_s
        remove_stale_scratch()
        self._scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))

    def close(self) -> None:
        """Remove this worker's scratch folder (a worker that is killed leaves it behind, and the
        next worker started on the node removes it)."""
        shutil.rmtree(self._scratch, ignore_errors=True)

    def ready(self) -> str:
        """Answers once the worker is up (torch imported): the driver's signal to hand it a trial."""
        return socket.gethostname()

    def run(
        self,
        trial_id: str,
        config: RunConfig,
        attempt: int = 1,
        resume: Optional[bytes] = None,
        fault: Optional[Fault] = None,
        pause_at: Optional[int] = None,
    ) -> Generator[Event, None, None]:
        """Train one trial, yielding its events (see :mod:`orchestrator.run.events`).

        With ``pause_at`` (successive halving) the trainer stops at that step and the last
        event is ``Paused``, carrying the resume checkpoint, instead of ``Ended``.
        """
        from rnn.errors import is_out_of_memory
        from rnn.events import EventKind, TrialStatus
        from rnn.memory import release_device_memory
        from rnn.train import Trainer

        run_dir = self._scratch / trial_id
        shutil.rmtree(run_dir, ignore_errors=True)
        trainer = Trainer(
            config,
            run_dir,
            num_threads=self._num_threads,
            data_dir=self._data_dir,
            step_hook=step_hook(fault, self._own_process) if fault and fault.applies(trial_id, attempt) else None,
            heartbeat_s=self._heartbeat_s,
        )
        pause: dict[str, Any] = {"pause_at_step": pause_at} if pause_at is not None else {}
        resume_point: Optional[bytes] = None
        try:
            for event in trainer.iter_fit(resume_from=resume, **pause):
                if event.kind is EventKind.START:
                    yield Started({**event.info, "host": socket.gethostname(), "pid": os.getpid()})
                elif event.kind is EventKind.EVAL and event.record is not None:
                    yield Evaluated(event.record)
                elif event.kind is EventKind.CHECKPOINT and event.checkpoint is not None:
                    yield Checkpointed(event.step, Path(event.checkpoint).read_bytes())
                elif event.kind is EventKind.PAUSED and event.checkpoint is not None:
                    resume_point = Path(event.checkpoint).read_bytes()
                elif event.kind is EventKind.HEARTBEAT:
                    info = event.info
                    yield Beat(event.step, str(info.get("phase", "training")), info.get("steps_per_s"),
                               info.get("samples_per_s"), info.get("train_loss"), info.get("trained_s"))
                elif event.kind is EventKind.END:
                    result = event.result
                    if result is not None and result.status is TrialStatus.PAUSED and resume_point is not None:
                        yield Paused(result.steps, resume_point, result)
                    else:
                        yield Ended(result)
        except Exception as exc:  # reported as data; the driver decides what it means
            oom = is_out_of_memory(exc)
            if oom:
                release_device_memory()
            log.warning("trial %s raised %s", trial_id, type(exc).__name__)
            yield Raised(format_exception(exc), oom=oom)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def throughput(
        self,
        trial_id: str,
        config: RunConfig,
        throughput: ThroughputConfig,
        attempt: int = 1,
        fault: Optional[Fault] = None,
    ) -> Generator[Event, None, None]:
        """Measure one throughput trial, yielding a ``Measured`` event per batch size."""
        from rnn.errors import is_out_of_memory
        from rnn.throughput import iter_throughput

        hook = batch_hook(fault, self._own_process) if fault and fault.applies(trial_id, attempt) else None
        try:
            yield Started({"host": socket.gethostname(), "pid": os.getpid()})
            for row in iter_throughput(
                config, throughput, num_threads=self._num_threads, data_dir=self._data_dir,
                batch_hook=hook,
            ):
                yield Measured(row)
            yield Ended(None)
        except Exception as exc:  # set-up failures; per-size errors are rows
            yield Raised(format_exception(exc), oom=is_out_of_memory(exc))
