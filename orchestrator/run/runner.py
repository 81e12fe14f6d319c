"""``run``: one job spec from validation to report.

Validate → expand → resolve the output folder → preflight the data → open the backend (Ray:
check the address, connect) → lock the folder → skip finished trials → dispatch → report. Bad input (a bad spec,
an output folder that cannot be used, an address that does not answer) raises
:class:`UsageError` *before* anything is dispatched or written. A cluster lost mid-run raises
:class:`~orchestrator.run.backend.ClusterLostError` after what finished is on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from orchestrator.errors import ExitCode, UsageError
from orchestrator.results import (
    TERMINAL_STATUSES,
    DamagedFolderError,
    JobLock,
    ResultsError,
    ResultsLockedError,
    ResultsStore,
    fresh_start,
    is_job_folder,
    new_run_id,
    read_manifest,
    write_manifest,
)
from orchestrator.run.backend import Backend
from orchestrator.run.connect import SignalCounts, stop_on_signals
from orchestrator.run.faults import faults_from_env
from orchestrator.run.scheduler import load_scheduler
from orchestrator.spec import Job, Trial, job_location
from rnn.events import TrialStatus

if TYPE_CHECKING:
    from orchestrator.run.dispatch import SweepSummary
    from orchestrator.track import Tracker

log = logging.getLogger(__name__)

#: Trials with these statuses are not run again; ``failed`` ones are (the cause may be fixed).
SKIP_STATUSES = TERMINAL_STATUSES - {TrialStatus.FAILED}

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
    from rnn.data_check import DataError, check_data

    seen = set()
    for trial in trials:
        cfg, train = trial.run_config.data, trial.run_config.train
        streams = train.batch_size if train.stateful else 1  # train.stateful: that many windows side by side
        if (cfg, streams) in seen:
            continue
        seen.add((cfg, streams))
        try:
            check_data(cfg, data_dir=os.environ.get("RNN_DATA_DIR"), streams=streams)
        except (CorpusError, DataError) as e:
            where = "data.corpus" if isinstance(e, CorpusError) else "data"
            raise UsageError(f"{where}: {e} (trial {trial.trial_id})") from e


def check_folder(store: ResultsStore) -> set[str]:
    """Read every table (with the parts), the manifest and a search's records of a job folder, so
    that damage is found before anything runs or is written; returns the trials not to run again.

    Raises:
        DamagedFolderError: a file that cannot be read as what it should be (named).
    """
    from orchestrator.results.proposals import read_proposals

    store.read_evals()
    store.read_throughput()
    read_manifest(store.job_dir)
    read_proposals(store)
    return store.finished_trial_ids(SKIP_STATUSES)


def run_job(
    job: Job,
    *,
    backend: Optional[Backend] = None,
    address: Optional[str] = None,
    output: Optional[str] = None,
    fresh: bool = False,
    stop: Optional[threading.Event] = None,
    live_report_s: Optional[float] = None,
) -> RunOutcome:
    """Run every unfinished trial of ``job`` (from :func:`orchestrator.spec.load_job`) and rebuild
    the report; ``output`` overrides the spec's results root (``run --output``).

    ``backend`` runs the trials: by default a :class:`~orchestrator.run.ray_backend.RayBackend`
    on ``address`` (``--address``; None: ``RAY_ADDRESS`` or an embedded Ray); a
    :class:`~orchestrator.run.local_backend.LocalBackend` runs them in this process without Ray.
    While trials run, the report is rebuilt in the background as they finish, at most every
    ``live_report_s`` seconds (default :data:`~orchestrator.run.live_report.LIVE_REPORT_S`; 0 turns it off).
    """
    if backend is None:
        from orchestrator.run.ray_backend import RayBackend

        backend = RayBackend(address)
    elif address is not None:
        raise ValueError("address is the default Ray backend's: pass backend=RayBackend(address) instead")
    spec, trials = job.spec, list(job.trials)
    job_dir = job_location(spec, output)
    try:  # before anything starts: a folder another run holds, a hostile link, a damaged file
        JobLock(job_dir).check()
        finished = check_folder(ResultsStore(job_dir)) if not fresh else set()
    except (DamagedFolderError, ResultsLockedError) as e:
        raise UsageError(str(e)) from e
    if spec.tracking is not None and spec.tracking.tensorboard and not ResultsStore(job_dir).is_local:
        raise UsageError(f"tracking.tensorboard: its event files go into the job folder, which must be local "
                         f"(it is {job_dir}); run with a local --output, then `export DIR --mlflow URI` if need be")
    todo = [t for t in trials if t.trial_id not in finished]
    if job.search is not None:  # its trials are proposed as it runs: check the spec's own data
        todo += job.search.base_trials[:1]
    with _opened(backend), _trackers_started(job) as trackers:
        # The data preflight first, then the backend's start-up (Ray's): a bad corpus is refused
        # before Ray starts or anything is written, and what the check reads (a 100 MB corpus: about
        # 200 MB while it is decoded and split, freed when it returns) never adds to Ray's share of
        # this process (docs/benchmarks.md, "A 100 MB corpus"). It costs Ray's start-up's overlap:
        # under 0.1 s on Tiny Shakespeare, about 1.6 s on 100 MB.
        preflight_data(todo)
        if todo:
            backend.open(spec.resources)
        signals = SignalCounts()  # the sweep's signal handlers, then the report's: one count
        with _locked(job_dir, fresh) as store, _tracking(trackers, job, store) as tracker:
            summary = _run_locked(job, job_dir, store, backend, stop, live_report_s, tracker, signals)
            # The report is built while the backend shuts down (Ray's takes seconds): it reads
            # only the job folder. Its import (matplotlib, scipy: about a second) happens in that
            # thread too, off the critical path.
            if not is_job_folder(job_dir):  # stopped before any trial was recorded: nothing to report
                backend.shutdown()
                log.info("no trial was recorded in %s: no report written", job_dir)
            else:
                # A first SIGINT/SIGTERM here lets the report finish (seconds); a second, or one after
                # the sweep was already stopped by a signal, ends the run at once.
                ending = threading.Event()
                if summary is not None and summary.interrupted:
                    ending.set()
                with stop_on_signals(ending, doing="the sweep has ended: finishing its report first", counts=signals):
                    report = _Background(_build_report, store)
                    backend.shutdown()
                    md, html = report.join()
                log.info("results: %s", job_dir)
                log.info("report:  %s", html)
                if tracker is not None:
                    tracker.finish([Path(md), Path(html)])
    if summary is not None and summary.interrupted:
        return RunOutcome(ExitCode.INTERRUPTED, job_dir)
    # oom, diverged and timeout are results; a failed trial is a bug or an environment problem.
    failed = store.finished_trial_ids({TrialStatus.FAILED}) & {t.trial_id for t in trials}
    return RunOutcome(ExitCode.FAILED if failed else ExitCode.OK, job_dir)


def _run_locked(
    job: Job,
    job_dir: str,
    store: ResultsStore,
    backend: Backend,
    stop: Optional[threading.Event],
    live_report_s: Optional[float],
    tracker: Optional[Tracker] = None,
    signals: Optional[SignalCounts] = None,
) -> Optional[SweepSummary]:
    """With the folder locked: fold in what a killed run left, skip what is finished, dispatch the
    rest, and keep this invocation's run record in the manifest. Returns the sweep's summary
    (None when nothing was left to run)."""
    from orchestrator.run.dispatch import Dispatcher
    from orchestrator.run.live_report import LIVE_REPORT_S, LiveReport

    spec = job.spec
    store.compact()  # parts a killed run left: fold them in, so resume reads one table
    if tracker is not None:  # what the trackers lack of earlier runs (a killed driver's queue, no tracking then)
        from orchestrator.track import sync_folder

        sync_folder(tracker, store)
    trials, search = list(job.trials), None
    if job.search is not None:  # the trials proposed so far, and the search as they left it
        from orchestrator.run.search import load_search  # Optuna: imported by a searching driver only

        search, trials = load_search(job.search, spec.sweep, store)
    unproposed = search.remaining * len(job.search.seeds) if search is not None and job.search is not None else 0
    total = len(trials) + unproposed
    finished = store.finished_trial_ids(SKIP_STATUSES)  # under the lock: what is on disk now
    todo = [t for t in trials if t.trial_id not in finished]
    if finished:
        log.info("skipping %d finished trials (of %d)", len(trials) - len(todo), total)
    summary: Optional[SweepSummary] = None
    with RunRecord(job_dir, job, name=spec.name, kind=spec.kind, trials=total) as record:
        if todo or unproposed:
            backend.open(spec.resources)  # a no-op unless the folder changed since the first look
            scheduler = load_scheduler(spec.sweep.scheduler if spec.sweep is not None else None, trials, store)
            if search is not None and job.search is not None:
                from orchestrator.run.search import SearchScheduler

                scheduler = SearchScheduler(search, job.search, store, scheduler)
            dispatcher = Dispatcher(
                todo, spec.resources, store, backend,
                total=total, faults=tuple(faults_from_env()), stop=stop, scheduler=scheduler, tracker=tracker,
            )
            interval = LIVE_REPORT_S if live_report_s is None else live_report_s
            live = LiveReport(store, interval, board=dispatcher.recorder.board) if interval > 0 else None
            try:
                with stop_on_signals(dispatcher.stop, counts=signals):
                    if live is not None:
                        live.start()
                    summary = dispatcher.run()
            finally:
                if live is not None:
                    live.close()  # before compaction and the final report: never two writers
                _compact(store)  # finished, interrupted or failed: fold this run's parts in
                record.update(corpus_sha256=dispatcher.corpora, devices=dispatcher.devices)
        else:
            log.info("all %d trials are finished; rebuilding the report", len(trials))
        record.finish(trials_run=sum(summary.statuses.values()) if summary is not None else 0,
                      trials_skipped=len(trials) - len(todo),
                      interrupted=bool(summary is not None and summary.interrupted))
    return summary


@contextlib.contextmanager
def _opened(backend: Backend) -> Iterator[None]:
    """``backend.shutdown()`` once the run is over, however it ends (the one shutdown path)."""
    try:
        yield
    finally:
        backend.shutdown()


@contextlib.contextmanager
def _trackers_started(job: Job) -> Iterator[Optional[Tracker]]:
    """The trackers' process for the spec's ``tracking`` (None without), started before the data
    preflight and Ray's start-up so that the sinks' libraries are imported meanwhile (MLflow's:
    1.5-2.5 s of CPU, otherwise taken from the sweep's first seconds); given its sinks once the job
    folder is locked (:func:`_tracking`). Ended at once if the run stops before that."""
    tracking = job.spec.tracking
    if tracking is None or not tracking.enabled:
        yield None
        return
    from orchestrator.track import Tracker, sink_modules

    tracker = Tracker(preload=sink_modules(tracking))
    try:
        yield tracker
    finally:
        tracker.close()  # nothing to do once _tracking has closed it


@contextlib.contextmanager
def _tracking(tracker: Optional[Tracker], job: Job, store: ResultsStore) -> Iterator[Optional[Tracker]]:
    """``tracker`` given the spec's sinks for this job folder, and closed once the run is over:
    what is queued is written first, for up to a minute."""
    if tracker is None or job.spec.tracking is None:
        yield None
        return
    from orchestrator.track import sink_openers

    tracker.open(sink_openers(job.spec.tracking, job.spec.name, store))
    try:
        yield tracker
    finally:
        tracker.close()


@contextlib.contextmanager
def _locked(job_dir: str, fresh: bool) -> Iterator[ResultsStore]:
    """The job folder, locked for this run (after ``--fresh`` moved the old results aside)."""
    try:
        if fresh:
            fresh_start(job_dir)  # refuses while another run holds the folder; logs where they went
        lock = JobLock(job_dir).acquire()
    except (DamagedFolderError, ResultsLockedError) as e:
        raise UsageError(str(e)) from e
    try:
        yield ResultsStore(job_dir)
    finally:
        lock.release()


class RunRecord:
    """This invocation's record in ``manifest.json``, as a context manager.

    Entering writes it (started, the spec's hash, versions, host); :meth:`update` adds fields,
    written by :meth:`finish` (which stamps ``finished_at``) or, if the block raises, on the way
    out, so a crashed run still records what it learnt (corpora, devices) but not that it finished.
    """

    def __init__(self, job_dir: str, job: Job, **fields: Any) -> None:
        self._job_dir, self._job = job_dir, job
        self._fields: dict[str, Any] = dict(fields)
        self._run_id = new_run_id()
        self._unwritten = False

    def __enter__(self) -> RunRecord:
        self._write(finished=False)
        return self

    def update(self, **fields: Any) -> None:
        self._fields.update(fields)
        self._unwritten = True

    def finish(self, **fields: Any) -> None:
        self._fields.update(fields)
        self._write(finished=True)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self._unwritten:
            self._write(finished=False)

    def _write(self, finished: bool) -> None:
        write_manifest(self._job_dir, spec_text=self._job.text, spec_path=self._job.source, extra=self._fields,
                       run_id=self._run_id, finished=finished)
        self._unwritten = False


def _build_report(store: ResultsStore) -> tuple[Path, Path]:
    from orchestrator.report.render import build_report, end_live_report

    # First the live page loses its "still running" banner: a run killed during the final report
    # (SIGKILL, the OOM killer) must not leave a page that says the sweep runs and reloads forever.
    end_live_report(store)
    return build_report(store)


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
