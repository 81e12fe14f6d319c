"""``run``: one validated job from its output folder to its report.

Resolve the output folder → preflight the data → lock the folder → skip finished trials →
connect to Ray → dispatch → report. The job comes in validated and expanded
(:func:`orchestrator.spec.load_job`). Bad input (an output folder that cannot be used, a
corpus too short) raises :class:`UsageError` *before* anything is dispatched or written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from orchestrator.errors import ExitCode, UsageError
from orchestrator.results import (
    TERMINAL_STATUSES,
    JobLock,
    ResultsError,
    ResultsStore,
    fresh_start,
    write_manifest,
)
from orchestrator.run.faults import faults_from_env
from orchestrator.spec import Job, Trial, job_location

log = logging.getLogger(__name__)

#: Trials with these statuses are not run again; ``failed`` ones are (the cause may be fixed).
SKIP_STATUSES = TERMINAL_STATUSES - {"failed"}


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    job_dir: str


def connect(address: Optional[str]) -> bool:
    """Connect to Ray; returns True when an embedded local instance was started.

    ``--address`` wins; otherwise ``RAY_ADDRESS`` (set inside ``ray job submit``) joins that
    cluster; otherwise a single-node Ray starts in this process, bound to loopback.
    """
    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=False, logging_level=logging.WARNING)
        log.info("connected to the Ray cluster at %s", address or os.environ["RAY_ADDRESS"])
        return False
    # Loopback only, and no token auth: a token file left by an embedded Ray would otherwise
    # make a later `ray start` demand a token from every client.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    log.info("started a local Ray instance with %d CPUs", os.cpu_count() or 1)
    return True


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event):
    """SIGINT and SIGTERM set ``stop`` (a second one raises KeyboardInterrupt).

    Installed *after* ``ray.init``, which puts in a handler of its own that aborts the process.
    """

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s received: stopping running trials, keeping what finished (again to force)",
                    signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
) -> RunOutcome:
    """Run every unfinished trial of ``job`` and rebuild the report; ``output`` overrides the
    spec's results root (``run --output``)."""
    from orchestrator.report.render import build_report
    from orchestrator.run.dispatch import Dispatcher

    spec, trials = job.spec, list(job.trials)
    job_dir = job_location(spec, output)
    preflight_data(trials)
    try:
        if fresh:
            moved = fresh_start(job_dir)  # refuses while another run holds the folder
            if moved:
                log.info("--fresh: kept the previous results at %s", moved)
        lock = JobLock(job_dir).acquire()
    except ResultsError as e:
        raise UsageError(str(e)) from e
    try:
        store = ResultsStore(job_dir)
        finished = store.finished_trial_ids(SKIP_STATUSES)
        todo = [t for t in trials if t.trial_id not in finished]
        if finished:
            log.info("skipping %d finished trials (of %d)", len(trials) - len(todo), len(trials))
        manifest = {"name": spec.name, "kind": spec.kind, "trials": len(trials)}
        write_manifest(job_dir, spec_text=job.text, spec_path=job.source, extra=manifest)
        faults = tuple(faults_from_env())
        summary = None
        if todo:
            started_here = connect(address)
            try:
                dispatcher = Dispatcher(
                    todo,
                    spec.resources,
                    store,
                    total=len(trials),
                    faults=faults,
                    data_dir=os.environ.get("RNN_DATA_DIR"),
                    stop=stop,
                    wait_for_resources=not started_here,
                )
                with stop_on_signals(dispatcher.stop):
                    summary = dispatcher.run()
                manifest.update(corpus_sha256=dispatcher.corpora, devices=dispatcher.devices)
                write_manifest(job_dir, spec_text=job.text, spec_path=job.source, extra=manifest)
            finally:
                if started_here:
                    import ray

                    ray.shutdown()
        else:
            log.info("all %d trials are finished; rebuilding the report", len(trials))
        md, html = build_report(job_dir)
        log.info("results: %s", job_dir)
        log.info("report:  %s", html)
    finally:
        lock.release()
    if summary is not None and summary.interrupted:
        return RunOutcome(ExitCode.INTERRUPTED, job_dir)
    # oom and diverged are results; a failed trial is a bug or an environment problem.
    failed = store.finished_trial_ids({"failed"}) & {t.trial_id for t in trials}
    return RunOutcome(ExitCode.FAILED if failed else ExitCode.OK, job_dir)
