"""Command line: ``python -m orchestrator COMMAND ...`` (also installed as ``rnn-orchestrator``).

Each subcommand is a pair of small functions, ``_add_X(subparsers)`` declaring its arguments and
``cmd_X(args) -> int`` running it, registered once in :data:`COMMANDS`. Exit statuses are
:class:`~orchestrator.errors.ExitCode`: 0 success, 1 a trial failed, 2 bad input (a spec, an
argument, a results folder or checkpoint that cannot be read), 130 interrupted. Bad input never
prints a traceback: every problem is one line on stderr, ``FILE: dotted.path: what is wrong (got X)``.

Keep imports of torch and ray inside the commands that need them: ``validate`` and ``plan``
must answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Optional, Union

from orchestrator.errors import ExitCode, SpecError, UsageError

if TYPE_CHECKING:
    from orchestrator.spec import Job


def _one_line(error: BaseException) -> str:
    """An error's message on one line (library messages may carry a cause's newlines)."""
    return " ".join(str(error).split()) or type(error).__name__


def print_error(message: str) -> None:
    """The ``error: ...`` line a command ends with when it fails after its input was accepted."""
    print(f"error: {message}", file=sys.stderr)


def _fail(where: object, message: object) -> ExitCode:
    """Print one ``WHERE: message`` line to stderr; the status of bad input."""
    text = _one_line(message) if isinstance(message, BaseException) else " ".join(str(message).split())
    print(f"{where}: {text}", file=sys.stderr)
    return ExitCode.BAD_INPUT


def results_failure(where: object, error: BaseException) -> ExitCode:
    """Report a results-folder error in one line; its status: 2 for a damaged or hostile folder
    or one another run holds (bad input), 1 for an environment problem (a full disk)."""
    from orchestrator.results import DamagedFolderError, ResultsLockedError

    if isinstance(error, (DamagedFolderError, ResultsLockedError)):
        return _fail(where, error)
    print_error(_one_line(error))
    return ExitCode.FAILED


def load_or_report(path: str) -> Optional[Job]:
    """The validated job, or None after printing every problem to stderr (no traceback)."""
    from orchestrator.spec import load_job

    try:
        return load_job(path)
    except SpecError as e:
        for line in e.lines(path):
            print(line, file=sys.stderr)
    except OSError as e:  # load_job reports unreadable files itself; this is a last guard
        _fail(path, f"cannot read the spec: {e.strerror or e}")
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    """Check specs without running anything: ``FILE: ok (N trials)`` or every problem."""
    status = ExitCode.OK
    for path in args.specs:
        job = load_or_report(path)
        if job is None:
            status = ExitCode.BAD_INPUT
            continue
        if job.search is not None:
            n, seeds = job.search.tpe.samples, len(job.search.seeds)
            print(f"{path}: ok ({n} TPE proposal{'' if n == 1 else 's'} x {seeds} seed{'' if seeds == 1 else 's'}: "
                  f"{n * seeds} trials, chosen as the job runs)")
            continue
        n = len(job.trials)
        print(f"{path}: ok ({n} trial{'' if n == 1 else 's'})")
    return status


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check job specs; run nothing",
                       description="Check job specs (schema, ranges, cross-field rules, sweep) and run nothing.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="job spec YAML file(s)")
    p.set_defaults(func=cmd_validate)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print a job's trials, resources, local concurrency and a rough time estimate."""
    from orchestrator.plan import local_gpu_count, render_plan

    job = load_or_report(args.spec)
    if job is None:
        return ExitCode.BAD_INPUT
    cpus = args.cpus if args.cpus is not None else (os.cpu_count() or 1)
    gpus = args.gpus if args.gpus is not None else local_gpu_count()
    try:
        text = render_plan(job, cpus, gpus)
    except UsageError as e:
        return _fail(args.spec, e)
    print(text)
    return ExitCode.OK


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the trials a job would run; run nothing",
                       description="Show a job's trials (id, swept values), the resources each reserves, how many "
                                   "run at once on this machine, and a rough time estimate. Dispatches nothing.")
    p.add_argument("spec", metavar="SPEC", help="job spec YAML file")
    p.add_argument("--cpus", type=_non_negative, default=None, help="plan for this many CPUs (default: this machine's)")
    p.add_argument("--gpus", type=_non_negative, default=None, help="plan for this many GPUs (default: this machine's)")
    p.set_defaults(func=cmd_plan)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a job spec: every unfinished trial on Ray, then the report."""
    from orchestrator.results import ResultsError
    from orchestrator.run import LocalBackend, run_job
    from orchestrator.run.backend import ClusterLostError

    job = load_or_report(args.spec)
    if job is None:
        return ExitCode.BAD_INPUT
    try:
        backend = LocalBackend() if args.local else None
        outcome = run_job(job, backend=backend, address=args.address, output=args.output, fresh=args.fresh)
    except UsageError as e:
        return _fail(args.spec, e)
    except ResultsError as e:
        return results_failure(args.spec, e)
    except ClusterLostError as e:
        print_error(str(e))
        return ExitCode.FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as e:  # noqa: BLE001  (the driver never dies with a traceback)
        logging.getLogger("orchestrator").debug("unexpected error", exc_info=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print_error(f"unexpected {type(e).__name__}: {first} (every finished trial is on disk; run the same "
                    "command again to resume)")
        return ExitCode.FAILED
    return outcome.exit_code


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a job: every unfinished trial, then the report",
        description="Run a job spec's trials on Ray and write Parquet results and a report under OUTPUT/NAME. "
        "Connects to --address, else to RAY_ADDRESS (set inside `ray job submit`), else starts a local Ray; "
        "--local runs without Ray. "
        "Finished trials are skipped, so running the same command again resumes. Exit status: 0 done, "
        "1 some trial failed, 2 bad input, 130 interrupted.",
    )
    p.add_argument("spec", metavar="SPEC", help="job spec YAML file")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    where.add_argument("--local", action="store_true",
                       help="run the trials one after another in this process, without Ray (debugging, a quick "
                            "look); a hung trainer is not detected there")
    p.add_argument("--output", default=None, help="results root, overriding the spec's `output` "
                   "(must be absolute under `ray job submit`)")
    p.add_argument("--fresh", action="store_true", help="start over: move the job's old results aside first")
    p.set_defaults(func=cmd_run)


def cmd_report(args: argparse.Namespace) -> int:
    """Rebuild report.md and report.html from a job folder's Parquet files."""
    from pathlib import Path

    from orchestrator.report import build_report
    from orchestrator.results import ResultsError, is_job_folder

    root = Path(args.dir)
    # A job folder has trials.parquet, or only trial parts while its first run is live or was killed.
    jobs = [root] if is_job_folder(root) else sorted(p for p in root.glob("*/") if is_job_folder(p))
    if not jobs:
        return _fail(args.dir, "no results here (expected trials.parquet or parts/ in it or in its subfolders)")
    status = ExitCode.OK
    for job in jobs:
        try:
            md, html = build_report(job)
        except ResultsError as e:  # a damaged table or manifest, a full disk: say which, go on with the others
            status = max(status, results_failure(job, e))
            continue
        print(f"{job}: {md} and {html}")
    return status


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild a job's report from its Parquet files",
                       description="Rebuild report.md and report.html from the Parquet files in DIR (a job folder, "
                                   "or a results folder holding several).")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_report)


def cmd_devices(args: argparse.Namespace) -> int:
    """What this machine can run: the engine's device report."""
    import json

    from rnn.device import detect_device, device_report

    report = device_report(detect_device("auto"))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return ExitCode.OK


def _add_devices(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="show the device trials would use here",
                       description="Show the device a trial would use on this machine (MPS, then CUDA, then CPU), "
                                   "its memory, bf16 support and the torch version.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_devices)


def cmd_sample(args: argparse.Namespace) -> int:
    """Generate text from a checkpoint."""
    from orchestrator.results import ResultsError
    from rnn.device import DeviceUnavailableError
    from rnn.errors import CheckpointError
    from rnn.sample import generate

    checkpoint: Union[str, bytes] = args.checkpoint
    if checkpoint == "-":  # the checkpoint's bytes on stdin (how a report samples without importing torch)
        checkpoint = sys.stdin.buffer.read()
    elif os.path.isdir(checkpoint):  # a job folder: its best trial's checkpoint
        try:
            checkpoint = best_checkpoint(args.checkpoint)
        except UsageError as e:
            return _fail(args.checkpoint, e)
        except ResultsError as e:  # a damaged folder
            return results_failure(args.checkpoint, e)
    try:
        text = generate(checkpoint, prompt=args.prompt, length=args.length, temperature=args.temperature,
                        top_k=args.top_k, seed=args.seed, device=args.device)
    except (CheckpointError, DeviceUnavailableError, ValueError) as e:
        return _fail(args.checkpoint, e)
    print(text)
    return ExitCode.OK


def best_checkpoint(job_dir: str) -> str:
    """The checkpoint of a job folder's best trial that kept one (ranked as the report ranks
    trials); said on stderr. Raises :class:`UsageError` when there is none."""
    from orchestrator.results import ResultsStore, is_job_folder
    from orchestrator.results.ranking import rank_trials, ranking_metric

    if not is_job_folder(job_dir):
        raise UsageError("a directory, not a checkpoint: pass a checkpoint file (best.pt) or a job folder")
    store = ResultsStore(job_dir)
    rows = store.read_trials().to_pylist()
    metric = ranking_metric(rows)
    for rank, row in enumerate(rank_trials(rows, metric), start=1):
        if row.get("checkpoint") and os.path.isfile(os.path.join(job_dir, row["checkpoint"])):
            print(f"sampling from trial {row['trial_id']} (rank {rank} by {metric.trials_column}): "
                  f"{os.path.join(job_dir, row['checkpoint'])}", file=sys.stderr)
            return os.path.join(job_dir, row["checkpoint"])
    raise UsageError("no completed trial of this job kept a checkpoint (clean may have removed them)")


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Continue a prompt with text sampled from a trained checkpoint "
                                   "(e.g. results/quickstart/checkpoints/<trial_id>/best.pt), or from a job "
                                   "folder's best trial (e.g. results/quickstart).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file, a job folder, or - (read the "
                   "checkpoint from stdin)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--length", type=int, default=500, help="tokens to generate (default 500)")
    p.add_argument("--temperature", type=_non_negative, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens only")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(func=cmd_sample)


def cmd_clean(args: argparse.Namespace) -> int:
    """Remove temporary files and unneeded checkpoints from a job folder."""
    from pathlib import Path

    from orchestrator.results import ResultsError, is_job_folder
    from orchestrator.results.clean import clean_job

    if args.keep_top is not None and args.keep_top < 0:
        return _fail(args.dir, f"--keep-top should be 0 or more, the number of trials whose checkpoints "
                               f"to keep (got {args.keep_top})")
    if not Path(args.dir).is_dir() or not is_job_folder(args.dir):
        return _fail(args.dir, "not a job folder (no trials.parquet or parts/)")
    try:
        report = clean_job(args.dir, keep_top=args.keep_top, dry_run=args.dry_run)
    except ResultsError as e:
        return results_failure(args.dir, e)
    verb = "would remove" if args.dry_run else "removed"
    for rel in report.removed:
        print(f"{verb} {rel}")
    print(f"{verb} {len(report.removed)} files, {report.freed_bytes / 1e6:.1f} MB")
    return ExitCode.OK


def cmd_repair(args: argparse.Namespace) -> int:
    """Set aside what cannot be read in a job folder and keep the rest."""
    from pathlib import Path

    from orchestrator.results import ResultsError, is_job_folder
    from orchestrator.results.repair import repair_job

    if not Path(args.dir).is_dir() or not (is_job_folder(args.dir) or Path(args.dir, "manifest.json").is_file()):
        return _fail(args.dir, "not a job folder (no trials.parquet, parts/ or manifest.json)")
    try:
        report = repair_job(args.dir)
    except ResultsError as e:
        return results_failure(args.dir, e)
    if not report.changed:
        print(f"{args.dir}: nothing is damaged")
        return ExitCode.OK
    for rel, why in report.set_aside.items():
        print(f"set aside {rel}: {why}")
    for line in report.rebuilt:
        print(line)
    for line in report.lost:
        print(f"lost: {line}")
    print(f"{args.dir}: repaired; the damaged files are kept under {Path(args.dir) / 'damaged'}")
    return ExitCode.OK


def _add_repair(sub: argparse._SubParsersAction) -> None:
    p = _job_dir_command(sub, "repair", "set aside a job folder's damaged files, keep the rest",
                         "Try every table, trial part, the manifest and a search's records of a job folder as the "
                         "commands read them; move what cannot be read to DIR/damaged/ (never deleted), fold the "
                         "trial parts into the tables again, and say what was lost (trials whose rows were lost run "
                         "again at the next run).")
    p.set_defaults(func=cmd_repair)


def cmd_export(args: argparse.Namespace) -> int:
    """Write a job folder's trials to TensorBoard and/or MLflow."""
    from pathlib import Path

    from pydantic import ValidationError

    from orchestrator.results import ResultsError, is_job_folder
    from orchestrator.spec.tracking import TrackingSpec
    from orchestrator.track.export import export_job

    if args.tensorboard is None and args.mlflow is None:
        return _fail(args.dir, "say where to export: --tensorboard [LOGDIR] and/or --mlflow URI")
    if not Path(args.dir).is_dir() or not is_job_folder(args.dir):
        return _fail(args.dir, "not a job folder (no trials.parquet or parts/)")
    try:
        tracking = TrackingSpec(tensorboard=args.tensorboard is not None, mlflow=args.mlflow,
                                mlflow_experiment=args.experiment, mlflow_artifact_max_mb=args.artifact_max_mb)
    except ValidationError as e:
        err = e.errors()[0]
        flag = {"tensorboard": "--tensorboard", "mlflow": "--mlflow", "mlflow_experiment": "--experiment",
                "mlflow_artifact_max_mb": "--artifact-max-mb"}.get(str(err["loc"][0]) if err["loc"] else "", "export")
        return _fail(flag, err["msg"])
    try:
        done = export_job(args.dir, tracking, args.tensorboard or None)
    except ResultsError as e:
        return results_failure(args.dir, e)
    where = []
    if args.tensorboard is not None:
        where.append(f"TensorBoard ({args.tensorboard or Path(args.dir, 'tensorboard')})")
    if args.mlflow is not None:
        where.append(f"MLflow ({args.mlflow})")
    if done.failed:
        print_error(f"{args.dir}: could not write to {', '.join(done.failed)} (see the warning above)")
        return ExitCode.FAILED
    print(f"{args.dir}: {done.trials} trials written to {' and '.join(where)}")
    return ExitCode.OK


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _job_dir_command(sub, "export", "write a job folder's results to TensorBoard and/or MLflow",
                         "Write every trial of a job folder (its config, each evaluation's metrics against the step, "
                         "its final metrics and status; for MLflow also its best checkpoint and the report) to "
                         "TensorBoard event files and/or an MLflow tracking store, as a run with `tracking:` does. "
                         "What a tracker already holds is not written again: an export can be repeated.")
    p.add_argument("--tensorboard", nargs="?", const="", default=None, metavar="LOGDIR",
                   help="write event files, one folder per trial, under LOGDIR (default: DIR/tensorboard)")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="an MLflow tracking URI: http://host:port or sqlite:///path/mlflow.db")
    p.add_argument("--experiment", default=None, metavar="NAME", help="the MLflow experiment (default: the job's name)")
    p.add_argument("--artifact-max-mb", type=float, default=100.0, metavar="MB",
                   help="log a trial's best checkpoint as an MLflow artifact up to this size (0: never; default 100)")
    p.set_defaults(func=cmd_export)


def _job_dir_command(
    sub: argparse._SubParsersAction, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose one positional argument is a job folder."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("dir", metavar="DIR", help="a job folder, e.g. results/quickstart")
    return p


def _add_clean(sub: argparse._SubParsersAction) -> None:
    p = _job_dir_command(sub, "clean", "remove temporary files and unneeded checkpoints",
                         "Remove temporary files left by killed writers and the checkpoints of failed, diverged and "
                         "out-of-memory trials from a job folder; with --keep-top N, also every checkpoint but those "
                         "of the N best trials.")
    p.add_argument("--keep-top", type=int, default=None, metavar="N",
                   help="also remove the checkpoints of every trial but the N best (ranked as the report ranks; "
                        "pruned trials are never among them); paused trials keep theirs")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed")
    p.set_defaults(func=cmd_clean)


def cmd_best(args: argparse.Namespace) -> int:
    """Print a runnable spec of a job's best configuration (``> best.yaml``)."""
    from orchestrator.report.best import best_spec

    try:
        text = best_spec(args.dir, metric=args.metric)
    except UsageError as e:
        return _fail(args.dir, e)
    sys.stdout.write(text)
    return ExitCode.OK


#: ``best --metric`` choices: ``orchestrator.report.best.METRICS`` (not imported here: it reads Parquet).
BEST_METRICS = ("val_loss", "val_bpc", "val_accuracy")


def _add_best(sub: argparse._SubParsersAction) -> None:
    p = _job_dir_command(sub, "best", "print a runnable spec of a job's best configuration",
                         "Print, as a runnable job spec, the best configuration of the job folder DIR: for a train "
                         "job the best trial (ranked as the report ranks them), for a throughput job the fastest "
                         "setting that fit, as a kind: train spec on that device. Redirect it to a file: best DIR > "
                         "best.yaml.")
    p.add_argument("--metric", choices=BEST_METRICS, default=None,
                   help="rank by this instead (default: the report's ranking, bits per character when the "
                        "tokenization varies, else validation loss)")
    p.set_defaults(func=cmd_best)


#: Every subcommand's parser builder, in the order ``--help`` lists them.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_run, _add_validate, _add_plan, _add_report, _add_best, _add_devices, _add_sample, _add_clean, _add_repair,
    _add_export,
]
#: Commands whose progress lines are their output: they log at INFO by default.
_CHATTY = {"run", "report", "clean", "export"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Run recurrent language-model experiments from YAML job specs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def entry(argv: Optional[Sequence[str]] = None) -> int:
    """The process entry point (``python -m orchestrator``, ``rnn-orchestrator``).

    ``run`` goes through :func:`orchestrator.supervise.supervise`: the driver is a forked child,
    so a driver that Ray ends without unwinding still gets its error line. Everything else, and
    every in-process caller of :func:`main`, runs in this process.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if build_parser().parse_args(argv).command == "run":
        from orchestrator.supervise import supervise

        return supervise(lambda: main(argv), say=print_error)
    return main(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit status."""
    args = build_parser().parse_args(argv)
    verbosity = args.verbose + (1 if args.command in _CHATTY else 0)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)]
    # best's output is a spec on stdout (``> best.yaml``): its log lines go to stderr
    stream = sys.stderr if args.command == "best" else sys.stdout
    logging.basicConfig(level=logging.WARNING, stream=stream, force=True,
                        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    # Our own loggers speak at the chosen level; third-party libraries stay at WARNING.
    for name in ("orchestrator", "rnn"):
        logging.getLogger(name).setLevel(level)
    return int(args.func(args))
