"""``plan``: what a job would run, on what, and roughly how long it would take; dispatches nothing.

The time estimate is a deliberately simple heuristic, good to an order of magnitude at best:

- compute: training costs about ``6 * P * tokens`` FLOPs (forward ``2 * P`` per token, backward
  twice that), where ``P`` counts the recurrent stacks and the output head (an embedding lookup
  costs next to nothing). CPUs are assumed to sustain :data:`CPU_FLOPS_PER_CORE` per reserved core,
  a GPU :data:`GPU_FLOPS` (recurrent nets use a GPU poorly: small sequential matmuls);
- recurrence: every timestep of every layer and direction pays a fixed overhead
  (:data:`CPU_STEP_OVERHEAD_S` / :data:`GPU_STEP_OVERHEAD_S`), ten times more for the layer-norm
  LSTM, whose cell runs step by step instead of in a fused kernel; the min cells' parallel scan
  pays it once per layer, not per timestep;
- data preparation: where the corpus size is known, the first trial on a machine trains the
  tokenizer and encodes both splits into the id cache (:data:`PREP_ENCODE_S_PER_MB`, by level), and
  every trial reads, decodes and splits the corpus and maps the cached ids
  (:data:`PREP_READ_S_PER_MB`): each trial's estimate includes the second, the job's the first once
  per distinct corpus and tokenizer;
- evaluation: where the corpus size is known, every evaluation is a forward pass over the
  held-out split (or its first ``data.val_max_chars``) at a third of a training step's cost per
  token; where it is not, evaluation adds :data:`EVAL_OVERHEAD`; ``max_time_s`` caps a trial (with ``schedule_by: time``
  it is the trial's training time, and the steps it buys are estimated); an epoch budget needs the
  corpus size, known for shakespeare and for files (``builtin``'s is not assumed).

Measure a real run before trusting any of these numbers.
"""

from __future__ import annotations

import glob
import heapq
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Optional

from orchestrator.durations import format_duration
from orchestrator.spec import Job, ResourcesSpec, Trial, allowed_concurrency, job_location
from orchestrator.spec.rules import estimate_parameters, vocab_estimate
from orchestrator.spec.rungs import asha_rungs, budget_steps, promotion_caps, worst_budget_steps
from orchestrator.spec.sweep import ChoiceDist
from rnn.config import MIN_CELLS, RunConfig, ThroughputConfig

# nn.LSTM/GRU training measured 24-30 GFLOP/s on one core of the 2-core dev VM (B 32-64, H 128-512);
# linear in cpus_per_trial, which is optimistic past a few cores.
CPU_FLOPS_PER_CORE = 2.5e10
GPU_FLOPS = 2.0e12
CPU_STEP_OVERHEAD_S = 10e-6
GPU_STEP_OVERHEAD_S = 30e-6
LAYER_NORM_OVERHEAD_FACTOR = 10.0
EVAL_OVERHEAD = 0.10
SHAKESPEARE_CHARS = 1_115_394  # tiny-shakespeare
CHARS_PER_TOKEN = {"char": 1.0, "bpe": 3.5, "word": 5.5}
#: Data preparation on the 2-core Intel dev VM, seconds per MB of corpus, by level
#: (``python -m bench.big_corpus --prep --mb 10``; docs/benchmarks.md, "A 100 MB corpus"): the first
#: encode (the tokenizer and the ids, once per machine), and what every later trial pays to read,
#: decode and split the corpus, rebuild or load its tokenizer and map the cached ids.
PREP_ENCODE_S_PER_MB = {"char": 0.028, "bpe": 0.30, "word": 0.67}
PREP_READ_S_PER_MB = {"char": 0.013, "bpe": 0.004, "word": 0.005}
#: ``plan`` names data preparation when its first encode would take at least this long.
PREP_SHOWN_S = 5.0


def local_gpu_count() -> int:
    """NVIDIA GPUs this process could use, without importing torch: ``CUDA_VISIBLE_DEVICES`` if
    set, else the ``/dev/nvidiaN`` device files (Linux). A cheap guess; ``devices`` asks torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if entries and entries[0].startswith("-"):  # "-1" hides every GPU
            return 0
        return len(entries)
    return len(glob.glob("/dev/nvidia[0-9]*"))


def _corpus_chars(corpus: str) -> Optional[int]:
    if corpus == "shakespeare":
        return SHAKESPEARE_CHARS
    if corpus == "builtin":
        return None
    try:
        return os.path.getsize(os.path.expanduser(corpus))  # bytes ~ characters for mostly-ASCII text
    except OSError:
        return None


def estimate_step_seconds(run: RunConfig, resources: ResourcesSpec, batch_size: int) -> float:
    """Seconds for one training step (forward + backward + update) of ``run`` at ``batch_size``."""
    data, model = run.data, run.model
    vocab = vocab_estimate(data.level, data.vocab_size)
    compute_params = estimate_parameters(asdict(model), vocab) - vocab * model.embedding_dim
    flops = 6.0 * compute_params * batch_size * data.seq_len
    on_gpu = resources.gpus_per_trial > 0
    rate = GPU_FLOPS * min(resources.gpus_per_trial, 1.0) if on_gpu else CPU_FLOPS_PER_CORE * resources.cpus_per_trial
    per_timestep = GPU_STEP_OVERHEAD_S if on_gpu else CPU_STEP_OVERHEAD_S
    if model.layer_norm:
        per_timestep *= LAYER_NORM_OVERHEAD_FACTOR
    directions = 2 if model.bidirectional else 1
    # The min cells' scan runs over all timesteps at once: a handful of ops per layer, not per step.
    timesteps = 1 if model.cell in MIN_CELLS else data.seq_len
    overhead = 3 * timesteps * model.num_layers * directions * per_timestep
    return flops / rate + overhead


def _train_steps(run: RunConfig) -> Optional[int]:
    data, train = run.data, run.train
    candidates = [train.max_steps] if train.max_steps else []
    chars = _corpus_chars(data.corpus)
    if train.max_epochs and chars:
        tokens = chars * (1 - data.val_fraction) / CHARS_PER_TOKEN[data.level]
        candidates.append(math.ceil(train.max_epochs * tokens / (train.batch_size * data.seq_len)))
    return min(candidates) if candidates else None


def _throughput_sizes(tp: ThroughputConfig) -> list[int]:
    if tp.batch_sizes != "auto":
        return list(tp.batch_sizes)
    sizes, size = [], tp.auto_start
    while size <= tp.auto_max_batch_size:
        sizes.append(size)
        size *= 2
    return sizes


def prep_seconds(run: RunConfig) -> tuple[float, float]:
    """Data preparation's seconds: the first encode of the corpus on a machine, and what each
    trial pays to read it and map its ids (both 0 where the corpus size is not known)."""
    chars = _corpus_chars(run.data.corpus)
    mb = chars / 1e6 if chars else 0.0
    return PREP_ENCODE_S_PER_MB[run.data.level] * mb, PREP_READ_S_PER_MB[run.data.level] * mb


def estimate_trial_seconds(trial: Trial, resources: ResourcesSpec) -> Optional[float]:
    """A rough wall-clock estimate for one trial (see the module docstring), None if unknowable."""
    seconds = _trial_seconds(trial, resources)
    return None if seconds is None else seconds + prep_seconds(trial.run_config)[1]


def _trial_seconds(trial: Trial, resources: ResourcesSpec) -> Optional[float]:
    run, tp = trial.run_config, trial.throughput_config
    if tp is not None:
        steps = tp.warmup_steps + tp.measure_steps
        total = sum(steps * estimate_step_seconds(run, resources, b) for b in _throughput_sizes(tp))
        return min(total, tp.auto_time_budget_s) if tp.batch_sizes == "auto" else total
    train_steps = _train_steps(run)
    cap = run.train.max_time_s
    step_s = estimate_step_seconds(run, resources, run.train.batch_size)
    if run.train.schedule_by == "time" and cap is not None:  # training time; evaluations come on top
        evals = eval_seconds(run, resources, int(cap / step_s))
        return cap + evals if evals is not None else cap * (1 + EVAL_OVERHEAD)
    if train_steps is None:
        return cap
    evals = eval_seconds(run, resources, train_steps)
    seconds = train_steps * step_s + evals if evals is not None else train_steps * step_s * (1 + EVAL_OVERHEAD)
    return min(seconds, cap) if cap else seconds


def eval_seconds(run: RunConfig, resources: ResourcesSpec, train_steps: int) -> Optional[float]:
    """All of a trial's evaluations (one every ``eval_every`` steps and one at the end), each a
    forward pass over the validation tokens at a third of a training step's cost per token; None
    where the corpus size is unknown."""
    data = run.data
    chars = _corpus_chars(data.corpus)
    if chars is None or not data.val_fraction:
        return None
    val_chars = chars * data.val_fraction
    if data.val_max_chars is not None:
        val_chars = min(val_chars, data.val_max_chars)
    tokens = val_chars / CHARS_PER_TOKEN[data.level]
    per_token = estimate_step_seconds(run, resources, run.train.batch_size) / (run.train.batch_size * data.seq_len)
    return (train_steps // run.train.eval_every + 1) * tokens * per_token / 3


def makespan(durations: Sequence[float], slots: int) -> float:
    """Wall time to run ``durations`` in order on ``slots`` workers, each taking the next trial when free."""
    if not durations or slots < 1:
        return 0.0
    free_at = [0.0] * min(slots, len(durations))
    for d in durations:
        heapq.heapreplace(free_at, free_at[0] + d)
    return max(free_at)


def _plain(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def render_plan(job: Job, total_cpus: float, total_gpus: float) -> str:
    """The text ``plan`` prints: trials, resources, local concurrency and a rough time estimate.

    Raises:
        UsageError: the results folder could not be used (see :func:`~orchestrator.spec.job_location`).
    """
    spec, trials = job.spec, job.trials
    res = spec.resources
    n = _planned_trials(job)
    count = f"{n} trial{'s' if n != 1 else ''}"
    lines = [f"{job.source}: {spec.name}, kind {spec.kind}, {count} -> {job_location(spec)}"]
    if job.search is not None:
        lines += _search_lines(job)
        estimates = [estimate_trial_seconds(job.search.base_trials[0], res) if job.search.base_trials else None] * n
    else:
        estimates = [estimate_trial_seconds(t, res) for t in trials]
        lines.append(f"  {'#':>4}  {'trial_id':<12}  {'est.':>8}  overrides")
    for trial, seconds in zip(trials, estimates, strict=False):
        swept = "  ".join(f"{path}={_plain(value)}" for path, value in trial.overrides.items())
        lines.append(f"  {trial.index:>4}  {trial.trial_id:<12}  {format_duration(seconds):>8}  {swept}")
    gpus = f"{res.gpus_per_trial:g} GPU" + ("" if res.gpus_per_trial == 1 else "s")
    cpus = f"{res.cpus_per_trial:g} CPU" + ("" if res.cpus_per_trial == 1 else "s")
    lost = (f"retried up to {res.max_retries} time" + ("" if res.max_retries == 1 else "s")
            if res.max_retries else "not retried (max_retries 0)")
    lines.append(f"each trial reserves {cpus} and {gpus}; a trial whose worker is lost (its process or node "
                 f"dies) is {lost}; a trial that fails is not retried, it runs again when the job is run again")
    slots = allowed_concurrency(res, total_cpus, total_gpus)
    machine = f"this machine: {total_cpus:g} CPUs, {total_gpus:g} GPUs -> "
    if slots == 0:
        lines.append(machine + "no trial fits here (each needs more than the machine has)")
        return "\n".join(lines)
    lines.append(machine + f"{slots} trial{'s' if slots != 1 else ''} at a time (max_concurrent {res.max_concurrent})")
    if any(e is None for e in estimates):
        total = "unknown (an epoch budget on a corpus of unknown size)"
    else:
        total = format_duration(makespan([e or 0.0 for e in estimates], slots)
                                + sum(prep_seconds(run)[0] for run in _corpora(job)))
    where = "GPU" if res.gpus_per_trial > 0 else "CPU"
    lines.append(f"rough time ({where} heuristic, see orchestrator/plan.py; measure before trusting): "
                 f"about {total} for the job" + (" without successive halving" if _asha_line(job) else ""))
    lines += _asha_line(job)
    lines += _prep_lines(job)
    lines += _time_budget_lines(job, res)
    lines += _evaluation_lines(job, res)
    return "\n".join(lines)


def _known_trials(job: Job) -> Sequence[Trial]:
    """The trials known before the job runs: the sweep's, or for a search the spec's own config
    (one per seed), which stands for the proposals to come."""
    return job.trials or (job.search.base_trials if job.search is not None else ())


def _planned_trials(job: Job) -> int:
    """The job's trials: the sweep's, or a search's proposals times its seeds."""
    return job.search.total_trials if job.search is not None else len(job.trials)


def _search_lines(job: Job) -> list[str]:
    """A search's proposals: how many, how chosen, from which space (they cannot be listed ahead)."""
    assert job.search is not None
    tpe, seeds = job.search.tpe, len(job.search.seeds)
    startup = min(tpe.startup, tpe.samples)
    out = [f"  TPE search (Optuna's TPESampler, seed {tpe.seed}, minimising {job.search.metric}): {tpe.samples} "
           f"proposals x {seeds} seed{'s' if seeds != 1 else ''}; the first {startup} are random draws, the rest are "
           "chosen from the results so far, so they are made as the job runs and cannot be listed here",
           "  space:"]
    for path, dist in tpe.space.items():
        if isinstance(dist, ChoiceDist):
            what = "one of " + ", ".join(_plain(v) for v in dist.values)
        else:
            what = f"{dist.dist} in [{_plain(dist.low)}, {_plain(dist.high)}]"
        out.append(f"    {path}: {what}")
    base = job.search.base_trials
    if base:
        out.append(f"  the time estimate below takes every trial to cost what the spec's own settings cost "
                   f"(trial {base[0].trial_id}); proposals that change the model's size change it")
    return out


def _corpora(job: Job) -> list[RunConfig]:
    """One trained trial's config per distinct corpus and tokenizer: each is encoded once per machine."""
    seen: dict[tuple[str, str, Optional[int]], RunConfig] = {}
    for trial in _known_trials(job):
        data = trial.run_config.data
        if trial.throughput_config is None:
            seen.setdefault((data.corpus, data.level, data.vocab_size), trial.run_config)
    return list(seen.values())


def _prep_lines(job: Job) -> list[str]:
    """Data preparation, where encoding a corpus takes long enough to notice."""
    out = []
    for run in _corpora(job):
        encode, read = prep_seconds(run)
        if encode >= PREP_SHOWN_S:
            out.append(f"data preparation: {run.data.corpus} at {run.data.level} level, about "
                       f"{format_duration(encode)} to train the tokenizer and encode it, once per machine (the ids "
                       f"are cached), then about {format_duration(read)} per trial to read it and map them")
    return out


def _evaluation_lines(job: Job, res: ResourcesSpec) -> list[str]:
    """A warning when evaluation would take over a third of a trial's time (a big held-out split
    evaluated often), with the setting that caps it."""
    for trial in _known_trials(job):
        if trial.throughput_config is not None:
            continue
        run = trial.run_config
        steps = _train_steps(run)
        step_s = estimate_step_seconds(run, res, run.train.batch_size)
        if steps is None and run.train.max_time_s:
            steps = int(run.train.max_time_s / step_s)
        evals = eval_seconds(run, res, steps) if steps else None
        if evals is None or not steps or evals < 0.5 * steps * step_s:
            continue
        share = evals / (evals + steps * step_s)
        return [f"evaluation: about {share:.0%} of trial {trial.trial_id}'s time by the heuristic (every "
                f"{run.train.eval_every} steps over the whole held-out split); evaluate less often "
                "(train.eval_every) or on its head only (data.val_max_chars)"]
    return []


def _time_budget_lines(job: Job, res: ResourcesSpec) -> list[str]:
    """For trials whose schedule spans ``max_time_s`` (``schedule_by: time``): the budget as time,
    and the steps it buys here by the heuristic (a trial's steps depend on the machine's speed)."""
    out = []
    seen: set[tuple[float, float]] = set()
    for trial in _known_trials(job):
        train = trial.run_config.train
        if train.schedule_by != "time" or train.max_time_s is None:
            continue
        step_s = estimate_step_seconds(trial.run_config, res, train.batch_size)
        if (train.max_time_s, step_s) in seen:
            continue
        seen.add((train.max_time_s, step_s))
        out.append(f"schedule by time (trial {trial.trial_id}{' and others like it' if len(job.trials) > 1 else ''}): "
                   f"{format_duration(train.max_time_s)} of training (evaluations and checkpoints not counted), "
                   f"its {train.scheduler} schedule ending with it; at the heuristic's {step_s:.3g} s a step, about "
                   f"{int(train.max_time_s / step_s):,} steps on this machine")
    return out


def _asha_line(job: Job) -> list[str]:
    """Successive halving's rungs and step budget against the full sweep's, or nothing."""
    sweep = job.spec.sweep
    asha = sweep.scheduler if sweep is not None else None
    n = _planned_trials(job)
    if asha is None or asha.max_steps is None or not n:
        return []
    rungs = asha_rungs(asha.grace_steps, asha.reduction_factor, asha.max_steps)
    rf = asha.reduction_factor
    full = n * asha.max_steps
    usual, worst = budget_steps(n, rungs, rf), worst_budget_steps(n, rungs, rf)
    reaching = [n, *promotion_caps(n, len(rungs) - 1, rf)]
    return [f"successive halving (asha, {asha.metric}): rungs at steps {', '.join(map(str, rungs))}; about "
            f"{usual:,} training steps ({usual / full:.0%} of the full sweep's {full:,}; trials reaching each rung: "
            f"{', '.join(map(str, reaching))}), at most {worst:,} ({worst / full:.0%}) if trials arrive at "
            f"the rungs from worst to best"]
