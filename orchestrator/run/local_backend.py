"""A backend without Ray: trials run in the driver's own process, one event at a time.

In the spirit of submitit's ``local`` and ``debug`` executors: the same dispatch loop, the same
trainer (:class:`~orchestrator.run.actor.TrainerActor`, used as it is), the same job folder,
and nothing to connect to. Useful for a quick run on a laptop, for debugging a trainer under
``pdb``, and for testing the dispatcher's policy (retries, resume, successive halving,
recording) against real training in seconds.

Each worker is a trainer object; :meth:`LocalBackend.poll` takes the next event of each busy
worker in turn, so ``workers > 1`` interleaves trials on one core rather than running them in
parallel. What a process of its own would give is not here: a trainer that hangs between two
events blocks the loop (the stall timeout cannot fire), and the only lost worker is an injected
``exit`` fault (:class:`~orchestrator.run.faults.WorkerExit`). Importing this module imports
neither Ray nor torch; the first worker imports torch.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Generator
from typing import Optional

from orchestrator.run.actor import TrainerActor
from orchestrator.run.backend import Assignment, Notice, NoticeKind
from orchestrator.run.events import Event
from orchestrator.run.faults import WorkerExit
from orchestrator.spec import ResourcesSpec

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)


class LocalBackend:
    """Trainers in this process, behind the :class:`~orchestrator.run.backend.Backend` protocol.

    Args:
        workers: trials in flight at once (interleaved one event at a time), at most the spec's
            ``resources.max_concurrent``.
        num_threads: torch threads (default: ``resources.cpus_per_trial``, at least 1).
        data_dir: where to look for downloadable corpora (default: ``RNN_DATA_DIR``'s rules, as on a worker).
    """

    def __init__(self, workers: int = 1, *, num_threads: Optional[int] = None, data_dir: Optional[str] = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._workers = workers
        self._num_threads = num_threads
        self._data_dir = data_dir
        self._resources: Optional[ResourcesSpec] = None
        self._next_id = 0
        self._trainers: dict[int, TrainerActor] = {}
        self._starting: list[int] = []
        self._streams: dict[int, Generator[Event, None, None]] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def open(self, resources: ResourcesSpec) -> None:
        self._resources = resources

    def shutdown(self) -> None:
        self.close()

    # --- the protocol ---------------------------------------------------------------------

    def capacity(self) -> Optional[int]:
        return self._workers

    def start_worker(self) -> int:
        worker, self._next_id = self._next_id, self._next_id + 1
        threads = self._num_threads
        if threads is None:
            threads = max(1, int(self._resources.cpus_per_trial)) if self._resources is not None else 1
        self._trainers[worker] = TrainerActor(threads, self._data_dir, own_process=False)
        self._starting.append(worker)
        return worker

    def launch(self, worker: int, a: Assignment) -> None:
        trainer = self._trainers[worker]
        previous = self._streams.pop(worker, None)
        if previous is not None:  # its last event was taken: let it finish its clean-up
            previous.close()
        if a.throughput_config is not None:
            stream = trainer.throughput(a.trial_id, a.run_config, a.throughput_config, a.attempt, a.fault)
        else:
            stream = trainer.run(a.trial_id, a.run_config, a.attempt, a.resume, a.fault, a.pause_at)
        self._streams[worker] = stream

    def poll(self, timeout_s: float) -> list[Notice]:
        notices = [Notice(NoticeKind.READY, w, reason=f"{socket.gethostname()} (this process)") for w in self._starting]
        self._starting.clear()
        for worker, stream in list(self._streams.items()):
            try:
                event = next(stream)
            except StopIteration:
                del self._streams[worker]
                notices.append(Notice(NoticeKind.END, worker))
            except WorkerExit as e:
                del self._streams[worker]
                notices.append(Notice(NoticeKind.LOST, worker, reason=f"WorkerExit: {e}"))
            else:
                notices.append(Notice(NoticeKind.EVENT, worker, event=event))
        if not notices:
            time.sleep(min(timeout_s, 0.01))  # nothing runs: do not spin
        return notices

    def kill(self, worker: int) -> None:
        stream = self._streams.pop(worker, None)
        if stream is not None:
            stream.close()  # the trainer's clean-up runs (its run folder is removed)
        trainer = self._trainers.pop(worker, None)
        if trainer is not None:
            trainer.close()
        if worker in self._starting:
            self._starting.remove(worker)

    def unhostable(self) -> Optional[str]:
        return None

    def check(self) -> None:
        return None

    def close(self) -> None:
        for worker in list(self._trainers):
            self.kill(worker)
