"""``run``: one job spec from validation to report.

Validate → expand → resolve the output folder → preflight the data → check the Ray address →
lock the folder → skip finished trials → connect → dispatch → report. Bad input (a bad spec,
an output folder that cannot be used, an address that does not answer) raises
:class:`UsageError` *before* anything is dispatched or written. A cluster lost mid-run raises
:class:`~orchestrator.run.backend.ClusterLostError` after what finished is on disk.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from orchestrator.errors import ExitCode, UsageError
from orchestrator.results import (
    TERMINAL_STATUSES,
    JobLock,
    ResultsError,
    ResultsStore,
    fresh_start,
    new_run_id,
    write_manifest,
)
from orchestrator.run.asha import load_asha
from orchestrator.run.backend import ClusterLostError
from orchestrator.run.cluster_watch import ClusterWatch
from orchestrator.run.connect import cluster_address, connect, probe_address, stop_on_signals
from orchestrator.run.faults import faults_from_env
from orchestrator.spec import Job, Trial, job_location

log = logging.getLogger(__name__)

#: Trials with these statuses are not run again; ``failed`` ones are (the cause may be fixed).
SKIP_STATUSES = TERMINAL_STATUSES - {"failed"}

@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    job_dir: str


def preflight_data(trials: Sequence[Trial]) -> None:
    """Load, split and tokenize every distinct corpus once, before anything is dispatched.

    A missing, empty, non-UTF-8 or too-short corpus is a :class:`UsageError` here rather than
    N failed trials later; trained tokenizers land in the cache the workers on this node share.
    """
    from rnn.corpus import CorpusError
    from rnn.data import DataError, prepare_data

    seen = set()
    for trial in trials:
        cfg = trial.run_config.data
        if cfg in seen:
            continue
        seen.add(cfg)
        try:
            prepare_data(cfg, "cpu", data_dir=os.environ.get("RNN_DATA_DIR"))
        except (CorpusError, DataError) as e:
            where = "data.corpus" if isinstance(e, CorpusError) else "data"
            raise UsageError(f"{where}: {e} (trial {trial.trial_id})") from e


def run_job(
    job: Job,
    *,
    address: Optional[str] = None,
    output: Optional[str] = None,
    fresh: bool = False,
    stop: Optional[threading.Event] = None,
    live_report_s: Optional[float] = None,
) -> RunOutcome:
    """Run every unfinished trial of ``job`` (from :func:`orchestrator.spec.load_job`) and rebuild
    the report; ``output`` overrides the spec's results root (``run --output``).

    While trials run, the report is rebuilt in the background as they finish, at most every
    ``live_report_s`` seconds (default :data:`~orchestrator.run.live_report.LIVE_REPORT_S`; 0 turns it off).
    """
    from orchestrator.run.dispatch import Dispatcher
    from orchestrator.run.live_report import LIVE_REPORT_S, LiveReport
    from orchestrator.run.ray_backend import RayBackend

    spec, trials = job.spec, list(job.trials)
    job_dir = job_location(spec, output)
    try:
        finished = ResultsStore(job_dir).finished_trial_ids(SKIP_STATUSES) if not fresh else set()
    except ResultsError as e:
        raise UsageError(str(e)) from e
    todo = [t for t in trials if t.trial_id not in finished]
    # Ray's start-up and the data preflight overlap: neither writes to the job folder, and a bad
    # corpus or an unreachable address is still refused before anything is locked or written.
    preflight = _Background(preflight_data, todo)
    started_here, connected = False, False
    try:
        target = cluster_address(address)
        if todo and target is not None:
            probe_address(target)
        if todo:
            started_here, connected = connect(address), True
        preflight.join()
    except BaseException:
        preflight.join(reraise=False)
        if connected:
            _shutdown_ray()
        raise
    try:
        if fresh:
            moved = fresh_start(job_dir)  # refuses while another run holds the folder
            if moved:
                log.info("--fresh: kept the previous results at %s", moved)
        lock = JobLock(job_dir).acquire()
    except ResultsError as e:
        if connected:
            _shutdown_ray()
        raise UsageError(str(e)) from e
    summary = None
    cluster_lost = False
    watch: Optional[ClusterWatch] = None
    try:
        store = ResultsStore(job_dir)
        store.compact()  # parts a killed run left: fold them in, so resume reads one table
        finished = store.finished_trial_ids(SKIP_STATUSES)  # under the lock: what is on disk now
        todo = [t for t in trials if t.trial_id not in finished]
        if finished:
            log.info("skipping %d finished trials (of %d)", len(trials) - len(todo), len(trials))
        manifest = {"name": spec.name, "kind": spec.kind, "trials": len(trials)}
        run_id = new_run_id()  # this invocation's record in the manifest's history
        write_manifest(job_dir, spec_text=job.text, spec_path=job.source, extra=manifest, run_id=run_id)
        if todo:
            if not connected:  # the folder changed under us: a trial to run after all
                started_here, connected = connect(address), True
            watch = ClusterWatch.for_connected_ray()
            backend = RayBackend(
                spec.resources,
                num_threads=max(1, int(spec.resources.cpus_per_trial)),
                data_dir=os.environ.get("RNN_DATA_DIR"),
                elastic=not started_here,
                placement_timeout_s=spec.resources.placement_timeout_s,
                watch=watch,
            )
            scheduler = spec.sweep.scheduler if spec.sweep is not None else None
            dispatcher = Dispatcher(
                todo, spec.resources, store, backend,
                total=len(trials), faults=tuple(faults_from_env()), stop=stop,
                asha=load_asha(scheduler, trials, store) if scheduler is not None else None,
            )
            interval = LIVE_REPORT_S if live_report_s is None else live_report_s
            live = LiveReport(job_dir, interval) if interval > 0 else None
            try:
                with stop_on_signals(dispatcher.stop):
                    if live is not None:
                        live.start()
                    summary = dispatcher.run()
            except ClusterLostError:
                cluster_lost = True
                raise
            finally:
                if live is not None:
                    live.close()  # before compaction and the final report: never two writers
                _compact(store)  # finished, interrupted or failed: fold this run's parts in
                manifest.update(corpus_sha256=dispatcher.corpora, devices=dispatcher.devices)
                write_manifest(job_dir, spec_text=job.text, spec_path=job.source, extra=manifest, run_id=run_id)
        else:
            log.info("all %d trials are finished; rebuilding the report", len(trials))
        ran = sum(summary.statuses.values()) if summary is not None else 0
        manifest.update(trials_run=ran, trials_skipped=len(trials) - len(todo),
                        interrupted=bool(summary is not None and summary.interrupted))
        write_manifest(job_dir, spec_text=job.text, spec_path=job.source, extra=manifest, run_id=run_id, finished=True)
        # The report is built while Ray shuts down: it reads only the job folder. Its import
        # (matplotlib, scipy: about a second) happens in that thread too, off the critical path.
        report = _Background(_build_report, job_dir)
        if watch is not None:
            watch.stop()  # before the shutdown ends an embedded Ray's GCS
        if connected and not cluster_lost:
            _shutdown_ray()
            connected = False
        md, html = report.join()
        log.info("results: %s", job_dir)
        log.info("report:  %s", html)
    finally:
        lock.release()
        if watch is not None:
            watch.stop()
        # With the head gone, ray.shutdown() would wait on it: the process exit cleans up.
        if connected and not cluster_lost:
            _shutdown_ray()
    if summary is not None and summary.interrupted:
        return RunOutcome(ExitCode.INTERRUPTED, job_dir)
    # oom, diverged and timeout are results; a failed trial is a bug or an environment problem.
    failed = store.finished_trial_ids({"failed"}) & {t.trial_id for t in trials}
    return RunOutcome(ExitCode.FAILED if failed else ExitCode.OK, job_dir)


def _build_report(job_dir: str) -> tuple[Path, Path]:
    from orchestrator.report.render import build_report

    return build_report(job_dir)


def _compact(store: ResultsStore) -> None:
    """Compact after dispatch; a failure here (a full disk) loses nothing: the parts stay and the
    next run, or ``report``, compacts them."""
    try:
        store.compact()
    except ResultsError as e:
        log.warning("could not compact the results (%s); they are safe as trial parts under %s/parts", e,
                    store.job_dir)


class _Background:
    """``fn(*args)`` in a thread; :meth:`join` returns its value or raises its exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._work, args=(fn, args), name=fn.__name__, daemon=True)
        self._thread.start()

    def _work(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:  # noqa: BLE001  (handed to the joining thread)
            self._error = e

    def join(self, reraise: bool = True) -> Any:
        self._thread.join()
        if self._error is not None and reraise:
            raise self._error
        return self._value


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()
