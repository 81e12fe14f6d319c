"""``python -m bench.accuracy SPEC``: a one-trial ``kind: train`` spec trained in this process; its best
validation loss as JSON.

    python -m bench.accuracy jobs/char_gpu_4min.yaml --device cuda --out accuracy.json

The spec is read by :mod:`bench.specs` (validated where pydantic is installed, plainly on a bare GPU
image) and its one trial runs in :class:`rnn.train.Trainer`: no Ray, no results folder.

**The schedule fitted to the time.** A cosine (or onecycle, step) schedule is sized in steps
(``train.max_steps``), while ``train.max_time_s`` only stops the run: sized for a slower device the
time cap cuts it off near its peak learning rate, sized for a faster one it ends early and leaves
time unused. With ``--fit-steps`` (the default when the spec sets ``max_time_s`` and such a schedule)
this device's step is timed first (:class:`rnn.step.TrainStep` at the spec's model and batch, after a
warm-up), with one evaluation and one checkpoint write, and ``max_steps`` is replaced by what fits
in :data:`FIT_SAFETY` of the time budget. The JSON records the spec's ``max_steps``, the one used and
the timings behind it.

The JSON is rewritten after every evaluation (``status: running``), so a run killed by a timeout
still leaves its best figure so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

from bench import specs
from rnn.config import DeviceName, RunConfig
from rnn.events import EventKind

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bench.accuracy")

#: nanoGPT's character-level Shakespeare model (10.65M parameters, a GPU run): its best validation
#: loss in nats per character on the same split (the last 10% of the 1,115,394-byte file).
NANOGPT_VAL_LOSS = 1.4697
#: The fitted schedule aims to end at this fraction of ``max_time_s`` (the rest absorbs step-time noise).
FIT_SAFETY = 0.97
#: Schedules stepped per training step, whose length ``max_steps`` sets.
STEP_SIZED_SCHEDULES = ("onecycle", "cosine", "step")
OUT_DIR = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class StepFit:
    """``max_steps`` fitted to ``budget_s`` on this device, and the timings it came from."""

    steps: int
    step_ms: float  # median of the timed training steps
    eval_s: float  # one evaluation of the whole validation split
    save_s: float  # one checkpoint write (model and optimiser state)
    budget_s: float
    seconds: float  # what fitting took


def fit_steps(cfg: RunConfig, device: torch.device, budget_s: float, *, warmup: int = 5, timed: int = 20) -> StepFit:
    """Time ``cfg``'s training step, an evaluation and a checkpoint write on ``device``; the steps
    that fit in ``FIT_SAFETY * budget_s`` counting an evaluation and a write every ``eval_every`` steps.
    """
    import torch

    from rnn.checkpoint import save_checkpoint
    from rnn.data import prepare_data
    from rnn.device import resolve_precision, use_tf32
    from rnn.evaluate import eval_batch_size, evaluate
    from rnn.models import build_model
    from rnn.step import TrainStep
    from rnn.throughput import time_steps

    t0 = time.perf_counter()
    tc = cfg.train
    use_tf32(device)  # as the trainer runs
    data = prepare_data(cfg.data, device)
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, data.vocab_size).to(device)
    model.train()
    step = TrainStep(model, data, tc, resolve_precision(tc.amp, device, batch_size=tc.batch_size), tc.batch_size)
    for _ in range(warmup):
        step()
    step_s = statistics.median(time_steps(step, timed, device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = eval_batch_size(tc.batch_size, cfg.data.seq_len, data.vocab_size)
    # The first call sets up kernels for the evaluation shape.
    evaluate(model, data, step.autocast, rows, cfg.data.val_mode)
    sync()
    start = time.perf_counter()
    evaluate(model, data, step.autocast, rows, cfg.data.val_mode)
    sync()
    eval_s = time.perf_counter() - start
    assert step.optimizer is not None
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-fit-") as tmp:
        start = time.perf_counter()
        save_checkpoint(Path(tmp) / "probe.pt", {"model": model.state_dict(), "optimizer": step.optimizer.state_dict()})
        save_s = time.perf_counter() - start
    del step, model, data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    per_step = step_s + (eval_s + save_s) / tc.eval_every
    steps = max(1, math.floor(FIT_SAFETY * budget_s / per_step))
    fit = StepFit(steps, step_s * 1e3, eval_s, save_s, budget_s, time.perf_counter() - t0)
    log.info("fitted the schedule: %.1f ms/step, evaluation %.2f s, checkpoint %.2f s every %d steps -> "
             "max_steps %d in %.0f s (fitting took %.1f s)", fit.step_ms, eval_s, save_s, tc.eval_every, steps,
             budget_s, fit.seconds)
    return fit


class _Recorder:
    """The trainer's ``on_event``: keeps the JSON payload current and rewrites it after every evaluation."""

    def __init__(self, out: Path, payload: dict[str, Any]) -> None:
        from bench.common import write_json  # torch: imported only where a run happens

        self.out, self.payload, self.write = out, payload, write_json

    def __call__(self, event: Any) -> None:
        p = self.payload
        if event.kind is EventKind.START:
            info = event.info or {}
            for key in ("params", "device", "device_name", "precision", "tf32", "compiled", "corpus", "corpus_sha256",
                        "vocab_size"):
                p[key] = info.get(key)
            p["recurrence"] = info.get("recurrence") or ("cudnn" if info.get("device") == "cuda" else "native")
        elif event.kind is EventKind.EVAL and event.record is not None:
            rec = event.record
            p["evals"].append({k: getattr(rec, k) for k in ("step", "epoch", "train_loss", "val_loss", "val_bpc",
                                                             "val_accuracy", "lr", "samples_per_s", "elapsed_s")})
            best = min(p["evals"], key=lambda e: e["val_loss"] if math.isfinite(e["val_loss"]) else math.inf)
            p.update(val_loss_best=best["val_loss"], val_bpc_best=best["val_bpc"],
                     val_accuracy_best=best["val_accuracy"], best_step=best["step"], steps=rec.step,
                     train_time_s=rec.elapsed_s)
            log.info("step %d: val loss %.4f (best %.4f at step %d), train loss %.4f, %.0f s", rec.step, rec.val_loss,
                     best["val_loss"], best["step"], rec.train_loss, rec.elapsed_s)
            self.write(self.out, p)


def run(spec: str, *, device: Optional[str], out: Path, max_time_s: Optional[float] = None, fit: Optional[bool] = None,
        run_dir: Optional[Path] = None) -> dict[str, Any]:
    """Train the spec's one trial and return (and write to ``out``) the payload described in the module doc."""
    import torch

    from rnn.device import detect_device
    from rnn.train import Trainer

    trials = specs.load_trials(spec, "train")
    if len(trials) != 1:
        raise specs.SpecReadError(f"{spec}: bench.accuracy runs a spec of one trial (it expands to {len(trials)})")
    trial = trials[0]
    cfg = trial.run_config
    dev = detect_device(device or cfg.train.device)
    tc = dataclasses.replace(cfg.train, device=cast(DeviceName, dev.type),
                             max_time_s=max_time_s or cfg.train.max_time_s)
    # A schedule_by: time spec already ends its schedule with the time budget: nothing to fit.
    can_fit = tc.max_time_s is not None and tc.scheduler in STEP_SIZED_SCHEDULES and tc.schedule_by == "steps"
    if fit is None:
        fit = can_fit
    if fit and not can_fit:
        raise specs.SpecReadError(f"{spec}: --fit-steps needs train.max_time_s, a step-sized scheduler "
                                  f"({', '.join(STEP_SIZED_SCHEDULES)}) and schedule_by: steps; got scheduler "
                                  f"{tc.scheduler!r}, schedule_by {tc.schedule_by!r}")
    payload: dict[str, Any] = {
        "spec": spec, "trial_id": trial.trial_id, "validated": trial.trial_id != specs.UNVALIDATED,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "fitting" if fit else "running",
        "val_loss_best": None, "val_bpc_best": None, "val_accuracy_best": None, "best_step": None,
        "steps": 0, "train_time_s": 0.0, "max_time_s": tc.max_time_s,
        "max_steps_spec": cfg.train.max_steps, "max_steps": tc.max_steps, "step_fit": None,
        "reference": {"model": "nanoGPT shakespeare_char", "val_loss": NANOGPT_VAL_LOSS},
        "config": dataclasses.replace(cfg, train=tc).to_dict(), "torch_version": torch.__version__,
        "evals": [], "error": None,
    }
    recorder = _Recorder(out, payload)
    recorder.write(out, payload)  # from here on a killed run leaves a file saying how far it got
    if fit:
        assert tc.max_time_s is not None
        fitted = fit_steps(dataclasses.replace(cfg, train=tc), dev, tc.max_time_s)
        tc = dataclasses.replace(tc, max_steps=fitted.steps)
        payload.update(status="running", max_steps=tc.max_steps, step_fit=dataclasses.asdict(fitted))
    cfg = dataclasses.replace(cfg, train=tc)
    payload["config"] = cfg.to_dict()
    recorder.write(out, payload)
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        result = Trainer(cfg, run_dir or tmp, device=dev).fit(on_event=recorder)
    payload.update(status=result.status.value, steps=result.steps, train_time_s=result.train_time_s,
                   error=result.error)
    recorder.write(out, payload)
    return payload


def format_result(p: dict[str, Any]) -> str:
    """A few lines: the model, the best validation loss against nanoGPT's, the budget used."""
    m, t = p["config"]["model"], p["config"]["train"]
    kind = f"{m['num_layers']}x{m['hidden_size']} {'LN-' if m['layer_norm'] else ''}{m['cell']}"
    lines = [f"{p['spec']} on {p.get('device')} ({p.get('device_name')}): {kind} (E {m['embedding_dim']}, "
             f"{p.get('params') or 0:,} params, {p.get('recurrence')}, {p.get('precision')}), "
             f"B {t['batch_size']} x T {p['config']['data']['seq_len']}"]
    fit = p.get("step_fit")
    if fit:
        lines.append(f"schedule fitted: {fit['step_ms']:.1f} ms/step -> max_steps {p['max_steps']} "
                     f"(spec {p['max_steps_spec']})")
    best = p.get("val_loss_best")
    if best is None:
        lines.append(f"no evaluation finished ({p['status']})")
    else:
        diff = best - NANOGPT_VAL_LOSS
        lines.append(f"best val loss {best:.4f} nats/char ({p['val_bpc_best']:.3f} bpc) at step {p['best_step']} "
                     f"of {p['steps']}; {p['train_time_s']:.0f} s of training; status {p['status']}")
        verdict = "better" if diff < 0 else "worse"
        lines.append(f"nanoGPT (same split): {NANOGPT_VAL_LOSS}; {verdict} by {abs(diff):.4f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="a kind: train job spec of one trial")
    p.add_argument("--device", default=None, help="auto | cpu | cuda[:N] | mps (default: the spec's train.device)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default bench/out/accuracy-<date>.json)")
    p.add_argument("--max-time-s", type=float, default=None, help="override train.max_time_s (a quick run)")
    p.add_argument("--fit-steps", action=argparse.BooleanOptionalAction, default=None,
                   help="fit max_steps to max_time_s on this device first (default: on where the spec allows)")
    p.add_argument("--run-dir", type=Path, default=None, help="keep the checkpoint here (default: a temporary folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or OUT_DIR / f"accuracy-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    try:
        payload = run(args.spec, device=args.device, out=out, max_time_s=args.max_time_s, fit=args.fit_steps,
                      run_dir=args.run_dir)
    except Exception as e:
        # orchestrator.errors' SpecError is matched by name: it may be absent without pydantic.
        if not isinstance(e, specs.SpecReadError) and type(e).__name__ != "SpecError":
            raise
        print(e, file=sys.stderr)
        return 2
    print(format_result(payload))
    print(f"wrote {out}")
    return 0 if payload["status"] in ("completed", "early_stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
