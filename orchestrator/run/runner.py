"""``run``: one job spec from validation to report.

Validate → expand → resolve the output folder → lock it → skip finished trials → connect to
Ray → dispatch → report. Bad input (a bad spec, an output folder that cannot be used) raises
:class:`UsageError` *before* anything is dispatched or written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from orchestrator.errors import UsageError
from orchestrator.run.faults import faults_from_env
from orchestrator.results import (
    TERMINAL_STATUSES,
    JobLock,
    ResultsError,
    ResultsStore,
    fresh_start,
    new_run_id,
    write_manifest,
)
from orchestrator.spec.schema import JobSpec, load_spec
from orchestrator.spec.sweep import expand

log = logging.getLogger(__name__)

#: Set by Ray's job manager in the entrypoint's environment under ``ray job submit``.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: Trials with these statuses are not run again; ``failed`` ones are (the cause may be fixed).
SKIP_STATUSES = TERMINAL_STATUSES - {"failed"}

EXIT_OK, EXIT_TRIALS_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    job_dir: str


def resolve_job_dir(spec: JobSpec, output_override: Optional[str], environ: Optional[dict] = None) -> str:
    """``<output>/<name>`` as an absolute path or URI.

    Under ``ray job submit --working-dir .`` the working directory is Ray's temporary copy on
    the head node, so a relative output would vanish with it: there it must be absolute.
    """
    env = os.environ if environ is None else environ
    output = output_override or spec.output
    if "://" in output:
        return output.rstrip("/") + "/" + spec.name
    path = Path(output).expanduser()
    if not path.is_absolute() and RAY_JOB_ENV in env:
        raise UsageError(
            f"output {output!r} is relative, but this runs under `ray job submit`, whose working directory "
            "is a temporary copy on the head node; pass an absolute folder, e.g. "
            "`-- python -m orchestrator run SPEC --output /shared/results`, or set an absolute `output:`"
        )
    return str((Path.cwd() / path / spec.name).resolve())


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


def preflight_data(trials: list) -> None:
    """Load, split and tokenize every distinct corpus once, before anything is dispatched.

    A missing, empty, non-UTF-8 or too-short corpus is a :class:`UsageError` here rather than
    N failed trials later; trained tokenizers land in the cache the workers on this node share.
    """
    from rnn.corpus import CorpusError
    from rnn.data import DataError, prepare_data

    seen = set()
    for trial in trials:
        cfg = trial.run_config().data
        if cfg in seen:
            continue
        seen.add(cfg)
        try:
            prepare_data(cfg, "cpu", data_dir=os.environ.get("RNN_DATA_DIR"))
        except (CorpusError, DataError) as e:
            where = "data.corpus" if isinstance(e, CorpusError) else "data"
            raise UsageError(f"{where}: {e} (trial {trial.trial_id})") from e


def _compact(store: ResultsStore) -> None:
    """Compact after dispatch; a failure here (a full disk) loses nothing: the parts stay and the
    next run, or ``report``, compacts them."""
    try:
        store.compact()
    except ResultsError as e:
        log.warning("could not compact the results (%s); they are safe as trial parts under %s/parts", e,
                    store.job_dir)


def run_job(
    spec_path: str,
    *,
    address: Optional[str] = None,
    output: Optional[str] = None,
    fresh: bool = False,
    stop: Optional[threading.Event] = None,
) -> RunOutcome:
    """Run every unfinished trial of the spec at ``spec_path`` and rebuild the report."""
    from orchestrator.run.dispatch import Dispatcher
    from orchestrator.report.render import build_report

    spec = load_spec(spec_path)  # SpecError: the CLI reports it with exit status 2
    trials = expand(spec)
    job_dir = resolve_job_dir(spec, output)
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
        store.compact()  # parts a killed run left: fold them in, so resume reads one table
        finished = store.finished_trial_ids(SKIP_STATUSES)
        todo = [t for t in trials if t.trial_id not in finished]
        if finished:
            log.info("skipping %d finished trials (of %d)", len(trials) - len(todo), len(trials))
        manifest = {"name": spec.name, "kind": spec.kind, "trials": len(trials)}
        spec_text = Path(spec_path).read_text(encoding="utf-8")
        run_id = new_run_id()  # this invocation's record in the manifest's history
        write_manifest(job_dir, spec_text=spec_text, spec_path=spec_path, extra=manifest, run_id=run_id)
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
                try:
                    with stop_on_signals(dispatcher.stop):
                        summary = dispatcher.run()
                finally:
                    _compact(store)  # finished, interrupted or failed: fold this run's parts in
                manifest.update(corpus_sha256=dispatcher.corpora, devices=dispatcher.devices)
            finally:
                if started_here:
                    import ray

                    ray.shutdown()
        else:
            log.info("all %d trials are finished; rebuilding the report", len(trials))
        ran = sum(summary.statuses.values()) if summary is not None else 0
        manifest.update(trials_run=ran, trials_skipped=len(trials) - len(todo),
                        interrupted=bool(summary is not None and summary.interrupted))
        write_manifest(job_dir, spec_text=spec_text, spec_path=spec_path, extra=manifest, run_id=run_id, finished=True)
        md, html = build_report(job_dir)
        log.info("results: %s", job_dir)
        log.info("report:  %s", html)
    finally:
        lock.release()
    if summary is not None and summary.interrupted:
        return RunOutcome(EXIT_INTERRUPTED, job_dir)
    # oom and diverged are results; a failed trial is a bug or an environment problem.
    failed = store.finished_trial_ids({"failed"}) & {t.trial_id for t in trials}
    return RunOutcome(EXIT_TRIALS_FAILED if failed else EXIT_OK, job_dir)
