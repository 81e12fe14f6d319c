"""The report answers the question: conclusion, best configuration, train/val curves, parameter
importance, a text sample, scheduler statuses, and the live refresh while a sweep runs."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, completed_row, eval_curve, eventually, tiny_run
from orchestrator.report.importance import importance_section, parameter_importance
from orchestrator.report.render import build_report
from orchestrator.report.training import curves, summarize
from orchestrator.results import ResultsStore
from orchestrator.run.live_report import BUILD_SHARE, LiveReport
from rnn.events import TrialStatus
from rnn.sample import generate
from rnn.train import Trainer

HAS_PRUNED = "pruned" in {s.value for s in TrialStatus}


def _commit(store: ResultsStore, tid: str, loss: float, config: dict, status: str = "completed",
            checkpoint: bytes | None = None) -> None:
    rel = store.write_checkpoint_bytes(tid, checkpoint) if checkpoint else None
    store.commit_trial(completed_row(tid, loss, config, status=status, checkpoint=rel), eval_curve(loss))


def _cfg(cell: str, seed: int, bidir: bool = False) -> dict:
    return {"data": {"level": "char"}, "model": {"cell": cell, "bidirectional": bidir}, "train": {"seed": seed}}


def _conclusion(md: str) -> str:
    return md.split("## Conclusion", 1)[1].split("##", 1)[0]


def test_one_seed_claims_no_significance(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _commit(store, "a", 1.0, _cfg("gru", 0))
    _commit(store, "b", 1.2, _cfg("lstm", 0))
    md = build_report(tmp_path)[0].read_text()
    text = _conclusion(md)
    assert "Best: model.cell=gru, with a mean validation loss of 1.0000 nats/token over 1 seed." in text
    assert "The runner-up, model.cell=lstm, is 0.2000 higher (16.7%)." in text
    assert "With one seed per configuration, no significance can be claimed" in text
    assert "significant at" not in text
    # the conclusion comes before the evidence
    assert md.index("## Conclusion") < md.index("## Trials") < md.index("## Validation curves")
    assert f"python -m orchestrator best {tmp_path} > best.yaml" in md


def test_an_unsupported_difference_is_called_not_significant(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    # means: gru 1.1, lstm 1.1167; lstm - gru per seed: +0.2, -0.1, -0.05: t = 0.180, p = 0.874 (ttest_rel)
    for seed, (g, lstm) in enumerate(((1.0, 1.2), (1.2, 1.1), (1.1, 1.05))):
        _commit(store, f"g{seed}", g, _cfg("gru", seed))
        _commit(store, f"l{seed}", lstm, _cfg("lstm", seed))
    text = _conclusion(build_report(tmp_path)[0].read_text())
    assert "Best: model.cell=gru" in text and "The runner-up, model.cell=lstm, is 0.0167 higher (1.5%)." in text
    assert ("not significant at the 5% level on the 3 seeds both ran (paired t-test on 2 degrees of freedom, "
            "p = 0.874)") in text
    assert "With 3 seeds this is weak evidence either way" in text


def test_models_that_learned_nothing_beyond_token_frequencies_are_not_ranked_as_if_they_had(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for seed, (g, lstm) in enumerate(((3.245, 3.286), (3.250, 3.280))):  # all near the unigram 3.30
        store.commit_trial(completed_row(f"g{seed}", g, _cfg("gru", seed), unigram_loss=3.30), eval_curve(g))
        store.commit_trial(completed_row(f"l{seed}", lstm, _cfg("lstm", seed), unigram_loss=3.30), eval_curve(lstm))
    md, html = build_report(tmp_path)
    text = _conclusion(md.read_text())
    assert text.index("No configuration has learned much beyond how often each token occurs") < text.index("Best:")
    assert "within 1.6% of the unigram baseline 3.3000" in text and "train longer" in text
    assert "dotted: the unigram baseline, 3.3000" in md.read_text()  # drawn beside the curves it dwarfs
    assert "unigram baseline (token frequencies alone)" in html.read_text()  # the plot's legend
    learned = tmp_path / "learned"
    store = ResultsStore(learned)
    for seed in (0, 1):
        store.commit_trial(completed_row(f"g{seed}", 1.5, _cfg("gru", seed), unigram_loss=3.30), eval_curve(1.5))
        store.commit_trial(completed_row(f"l{seed}", 1.6, _cfg("lstm", seed), unigram_loss=3.30), eval_curve(1.6))
    assert "unigram" not in _conclusion(build_report(learned)[0].read_text())


def test_validation_on_part_of_the_held_out_split_is_said_plainly(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for seed in (0, 1):
        store.commit_trial(completed_row(f"g{seed}", 1.5, _cfg("gru", seed), val_coverage=0.0498), eval_curve(1.5))
    text = build_report(tmp_path)[0].read_text()
    assert "Validation figures are measured on the first 5.0% of the held-out split, not all of it" in text
    assert "set data.val_max_chars to null to evaluate all of it" in text
    whole = tmp_path / "whole"
    store = ResultsStore(whole)
    for seed in (0, 1):
        store.commit_trial(completed_row(f"g{seed}", 1.5, _cfg("gru", seed), val_coverage=1.0), eval_curve(1.5))
    assert "held-out split, not all of it" not in build_report(whole)[0].read_text()


def test_the_validation_mode_is_said_and_a_mix_of_modes_is_called_incomparable(tmp_path: Path) -> None:
    def job(folder: Path, modes: tuple[str, ...]) -> str:
        store = ResultsStore(folder)
        for seed, mode in enumerate(modes):
            cfg = {**_cfg("gru", seed), "data": {"level": "char", "val_mode": mode}}
            store.commit_trial(completed_row(f"g{seed}", 1.5, cfg), eval_curve(1.5))
        return build_report(folder)[0].read_text()

    assert "data.val_mode" not in job(tmp_path / "windows", ("windows", "windows"))
    assert "(data.val_mode: stream), as recurrent language models are usually reported" in job(
        tmp_path / "stream", ("stream", "stream"))
    assert "scored in two validation modes (data.val_mode: windows and stream), and their figures do not compare" in (
        job(tmp_path / "mixed", ("windows", "stream")))


def test_importance_is_the_between_group_share_of_variance() -> None:
    # 2 x 2 grid, 2 seeds: cell moves the loss by 1.0, bidirectional by 0.2, seeds by ±0.05.
    rows = [{"model.cell": c, "model.bidirectional": b, "m": 1.0 + (c == "rnn") + 0.2 * b + s}
            for c in ("gru", "rnn") for b in (False, True) for s in (-0.05, 0.05)]
    found, within = parameter_importance(rows, ["model.cell", "model.bidirectional"], "m")
    # SS_total = 8 * (0.25 + 0.01 + 0.0025) = 2.1; cell: 8 * 0.25 = 2.0; bidir: 8 * 0.01 = 0.08; seeds 0.02
    assert [(i.parameter, i.levels) for i in found] == [("model.cell", 2), ("model.bidirectional", 2)]
    assert found[0].share == pytest.approx(2.0 / 2.1) and found[1].share == pytest.approx(0.08 / 2.1)
    assert within == pytest.approx(0.02 / 2.1)


def test_parameters_set_together_by_variants_are_named_as_confounded() -> None:
    from orchestrator.report.importance import confounded_pairs

    # variants LSTM / LN-LSTM / GRU / RNN: layer norm exists for the LSTM only
    variants = [("lstm", False), ("lstm", True), ("gru", False), ("rnn", False)]
    rows = [{"model.cell": c, "model.layer_norm": ln, "train.lr": 0.001 * (i + 1), "m": 1.0 + i}
            for i, (c, ln) in enumerate(variants * 2)]
    assert confounded_pairs(rows, ["model.cell", "model.layer_norm", "train.lr"]) == [
        ("model.cell", "model.layer_norm", 4, 6)]  # lr has 8 values: a search's draws, not a pair to cross
    crossed = [{"model.cell": c, "model.bidirectional": b} for c in ("gru", "rnn") for b in (False, True)]
    assert confounded_pairs(crossed, ["model.cell", "model.bidirectional"]) == []
    blocks = importance_section(rows, ["model.cell", "model.layer_norm"], "m")
    section = "\n".join(getattr(b, "text", "") for b in blocks)
    assert "Not varied independently: model.cell and model.layer_norm (4 of their 6 combinations ran)" in section


def test_a_many_valued_number_is_binned_by_rank() -> None:
    rows = [{"train.lr": 10 ** (-4 + i / 4), "model.cell": "gru", "m": float(i)} for i in range(12)]
    found, within = parameter_importance(rows, ["train.lr", "model.cell"], "m")
    lr = next(i for i in found if i.parameter == "train.lr")
    assert lr.levels == 4 and 0.9 < lr.share < 1.0  # 4 bins of 3 ranks each
    assert within is None  # no configuration repeats


def test_two_swept_parameters_get_parallel_coordinates_and_importance(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for cell, base in (("gru", 1.0), ("rnn", 2.0)):
        for bidir in (False, True):
            for seed in (0, 1):
                _commit(store, f"{cell}{int(bidir)}{seed}", base + 0.1 * bidir + 0.01 * seed, _cfg(cell, seed, bidir))
    md_path, html_path = build_report(tmp_path)
    md, html = md_path.read_text(), html_path.read_text()
    assert "## Parameters: parallel coordinates and importance" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| model.cell | 2 |"))
    assert float(row.split("|")[3].strip().rstrip("%")) > 95
    assert "(between seeds of one configuration)" in md
    assert html.count("<svg") == 4  # curves, train/val panels, configuration CIs, parallel coordinates
    assert "data:" not in html and "<image" not in html  # the colour bar is vector, not an embedded PNG
    # one swept parameter: no such section
    one = tmp_path / "one"
    store = ResultsStore(one)
    _commit(store, "a", 1.0, _cfg("gru", 0))
    _commit(store, "b", 1.1, _cfg("lstm", 0))
    assert "parallel coordinates" not in build_report(one)[0].read_text()


def test_train_and_validation_curves_are_drawn_together() -> None:
    rows = [{"trial_id": "a", "status": "completed", "best_val_loss": 1.0, "train.seed": 0},
            {"trial_id": "b", "status": "pruned", "best_val_loss": 1.5, "train.seed": 0}]
    label = {"a": "model.cell=gru", "b": "model.cell=lstm"}
    evals = [{"trial_id": t, "step": s, "train_loss": 2.0 / s, "val_loss": 3.0 / s}
             for t in ("a", "b") for s in (10, 20)]
    stats = summarize(rows, label, "best_val_loss")
    assert [(s.name, s.n, s.pruned) for s in stats] == [("model.cell=gru", 1, 0), ("model.cell=lstm", 0, 1)]
    blocks = curves(evals, label, "val_loss", {"model.cell=gru": "C0", "model.cell=lstm": "C1"},
                    {r["trial_id"]: r["status"] for r in rows}, [s.name for s in stats])
    svgs = [b for b in blocks if hasattr(b, "svg")]
    assert len(svgs) == 2 and "pruned" in svgs[0].caption  # type: ignore[attr-defined]
    panels = svgs[1].svg  # type: ignore[attr-defined]
    assert "model.cell=gru" in panels and "model.cell=lstm" in panels and "stroke-dasharray" in panels


@pytest.mark.skipif(not HAS_PRUNED, reason="needs TrialStatus.PRUNED (the successive-halving branch)")
def test_pruned_trials_show_their_curves_and_are_not_failures(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _commit(store, "a", 1.0, _cfg("gru", 0))
    _commit(store, "b", 1.1, _cfg("gru", 1))
    _commit(store, "p", 1.9, _cfg("lstm", 0), status="pruned")
    md = build_report(tmp_path)[0].read_text()
    assert "## Failures (0)" in md
    assert "| model.cell=lstm | 0 | — | — | — | — | 0 | 1 |" in md
    assert "1 trial(s) were stopped early by the scheduler" in md
    assert "✕ ends a trial the scheduler pruned" in md


@pytest.mark.skipif(not HAS_PRUNED, reason="needs TrialStatus.PRUNED (the successive-halving branch)")
def test_successive_halving_is_concluded_and_compared_at_the_common_step(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _commit(store, "win", 1.0, {"model": {"hidden_size": 64}, "train": {"lr": 0.01, "seed": 0}})
    for i, (hidden, lr) in enumerate(((32, 0.001), (64, 0.001), (32, 0.01), (128, 0.1))):
        evals = eval_curve(2.0 + i)[:1]  # stopped at the first rung, step 10
        store.commit_trial({"trial_id": f"p{i}", "status": "pruned", "best_val_loss": evals[0].val_loss,
                            "config": {"model": {"hidden_size": hidden}, "train": {"lr": lr, "seed": 0}}}, evals)
    md = build_report(tmp_path)[0].read_text()
    assert "Successive halving ran model.hidden_size=64, train.lr=0.01 to the full budget" in _conclusion(md)
    assert "no significance can be claimed" in _conclusion(md)
    assert "compared here on val_loss at step 10, the last evaluation all of them reached" in md
    assert "across these 5 trials" in md


TINY = tiny_run(max_steps=10)


@pytest.mark.slow  # a sampler child process per report: seconds of torch import each
def test_a_text_sample_comes_from_the_best_checkpoint(tmp_path: Path) -> None:
    result = Trainer(TINY, tmp_path / "run").fit()
    data = Path(str(result.best_checkpoint)).read_bytes()
    store = ResultsStore(tmp_path / "job")
    _commit(store, "best", 1.0, _cfg("gru", 0), checkpoint=data)
    _commit(store, "other", 1.5, _cfg("lstm", 0), checkpoint=data)

    def section() -> str:
        md = build_report(tmp_path / "job")[0].read_text()
        return md.split("## Text sample from the best checkpoint", 1)[1].split("\n## ", 1)[0]

    first = section()
    assert re.search(r"Trial best: \d+ characters generated on the CPU \(seed 0", first)
    assert "--length 200 --temperature 0.8 --top-k 20 --seed 0" in first
    assert section() == first  # the same text on a rebuild: fixed seed, CPU
    # generated in a child process, it is the text the engine gives in this one
    text = generate(data, prompt="\n", length=200, temperature=0.8, top_k=20, seed=0, device="cpu")
    assert f"```\n{text.lstrip()[:400]}\n```" in first
    # a damaged checkpoint: the child's reason, in one line
    damaged = tmp_path / "damaged"
    _commit(ResultsStore(damaged), "d", 1.0, _cfg("gru", 0), checkpoint=data[: len(data) // 2])
    said = build_report(damaged)[0].read_text()
    assert re.search(r"No sample: the checkpoint of d could not be used \(checkpoint \\?<bytes\\?> cannot be loaded "
                     r"safely \([^\n]*\); it is truncated, corrupted or not a checkpoint written by this tool\)\.",
                     said), said
    # no checkpoint: one line, no crash
    bare = tmp_path / "bare"
    _commit(ResultsStore(bare), "x", 1.0, _cfg("gru", 0))
    assert "No sample: trial x has no checkpoint" in build_report(bare)[0].read_text()


@pytest.mark.slow  # a sampler child process per report: seconds of torch import each
def test_the_final_report_never_imports_torch_in_the_driver(tmp_path: Path) -> None:
    """The driver checks the corpus and writes the final report, its text sample included, without
    importing torch (about 270 MB of resident memory for the rest of the process's life)."""
    result = Trainer(TINY, tmp_path / "run").fit()
    _commit(ResultsStore(tmp_path / "job"), "best", 1.0, _cfg("gru", 0),
            checkpoint=Path(str(result.best_checkpoint)).read_bytes())
    probe = ("import sys\n"
             "from orchestrator.report.render import build_report\n"
             "from orchestrator.run.runner import preflight_data\n"
             "from orchestrator.spec import load_job\n"
             "preflight_data(load_job('jobs/quickstart.yaml').trials)\n"
             f"md = build_report({str(tmp_path / 'job')!r})[0].read_text()\n"
             "assert 'Trial best: ' in md and 'characters generated on the CPU' in md, md\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_live_report_refreshes_as_trials_finish_and_stops(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _commit(store, "a", 1.0, _cfg("gru", 0))
    built = threading.Event()

    def build(job_dir: Path, live: bool) -> None:
        build_report(job_dir, live=live)
        built.set()

    with LiveReport(tmp_path, interval_s=0.2, poll_s=0.05, build=build) as live:
        time.sleep(0.5)
        assert live.builds == 0  # nothing finished since it started: nothing to rebuild
        _commit(store, "b", 1.2, _cfg("lstm", 0))
        assert built.wait(10)
        html = (tmp_path / "report.html").read_text()
        assert "Live: the sweep is still running" in html and '<meta http-equiv="refresh" content="30">' in html
        assert "model.cell=lstm" in html and "generated when the sweep ends" in html
    builds = live.builds
    _commit(store, "c", 1.3, _cfg("rnn", 0))
    time.sleep(0.4)
    assert live.builds == builds == 1  # closed: no more rebuilds
    final = build_report(tmp_path)[1].read_text()
    assert "Live:" not in final and "http-equiv" not in final


@pytest.mark.slow
def test_live_report_throttles_rebuilds(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    calls: list[float] = []
    with LiveReport(tmp_path, interval_s=0.6, poll_s=0.02, build=lambda d, live: calls.append(time.monotonic())):
        for i in range(12):  # a commit every 0.1 s for 1.2 s
            _commit(store, f"t{i}", 1.0 + i, _cfg("gru", i))
            time.sleep(0.1)
        eventually(lambda: bool(calls), 10)  # a loaded machine may be slow to get to it
    assert 1 <= len(calls) <= 3
    assert all(b - a >= 0.6 for a, b in zip(calls, calls[1:], strict=False))


@pytest.mark.slow
def test_live_report_waits_longer_after_a_slow_build(tmp_path: Path) -> None:
    # A build over thousands of trials takes seconds: the next one waits BUILD_SHARE times as
    # long, so rebuilding never takes more than a bounded share of the driver's time.
    store = ResultsStore(tmp_path)
    calls: list[tuple[float, float]] = []

    def slow_build(job_dir: Path, live: bool) -> None:
        start = time.monotonic()
        time.sleep(0.15)
        calls.append((start, time.monotonic()))

    began = time.monotonic()
    with LiveReport(tmp_path, interval_s=0.05, poll_s=0.01, build=slow_build):
        for i in range(25):  # a commit every 0.1 s for 2.5 s (longer on a loaded machine)
            _commit(store, f"t{i}", 1.0 + i, _cfg("gru", i))
            time.sleep(0.1)
    took = time.monotonic() - began
    assert calls
    # Builds of at least 0.15 s, each followed by a wait of BUILD_SHARE times that: starts at
    # least 1.65 s apart (3 builds in the 2.5 s of a quiet machine; at 0.05 s they would be 12).
    assert len(calls) <= 1 + took / (0.15 * (1 + BUILD_SHARE))
    assert all(b[0] - a[1] >= BUILD_SHARE * 0.15 for a, b in zip(calls, calls[1:], strict=False))


@pytest.mark.slow
def test_a_random_sweep_over_a_learning_rate_and_a_size(tmp_path: Path) -> None:
    """16 single-seed configurations: a log axis for lr, lr binned into 4 levels, no significance."""
    store = ResultsStore(tmp_path)
    for i in range(16):
        lr, hidden = 10 ** (-4 + i / 5), (32, 64)[i % 2]
        config = {"data": {"level": "char", "vocab_size": None}, "model": {"hidden_size": hidden},
                  "train": {"lr": lr, "seed": 0}}
        _commit(store, f"t{i:02d}", 2.0 - 0.05 * i + 0.01 * (hidden == 64), config)
    md_path, html_path = build_report(tmp_path)
    md, html = md_path.read_text(), html_path.read_text()
    assert "With one seed per configuration, no significance can be claimed" in _conclusion(md)
    assert "| train.lr | 4 |" in md and "| model.hidden_size | 2 |" in md
    assert "(between seeds of one configuration)" not in md  # no configuration repeats
    assert "train.lr (log)" in html  # the parallel-coordinates axis of a rate spanning 10x or more


def test_float_labels_are_short_unless_that_merges_configurations() -> None:
    from orchestrator.report.stats import config_labels

    rows = [{"trial_id": "a", "train.lr": 0.02586552182709658}, {"trial_id": "b", "train.lr": 0.001}]
    assert config_labels(rows, ["train.lr"]) == {"a": "train.lr=0.02587", "b": "train.lr=0.001"}
    close = [{"trial_id": "a", "train.lr": 0.0100001}, {"trial_id": "b", "train.lr": 0.0100002}]
    assert config_labels(close, ["train.lr"]) == {"a": "train.lr=0.0100001", "b": "train.lr=0.0100002"}


def test_the_recorder_keeps_each_running_trials_latest_heartbeat_and_forgets_it_when_it_ends(tmp_path: Path) -> None:
    from conftest import TINY_SPEC
    from orchestrator.run.attempt import Attempt
    from orchestrator.run.events import Beat, Evaluated, Started
    from orchestrator.run.progress import Progress
    from orchestrator.run.recorder import Recorder
    from orchestrator.spec import build_job

    trial = build_job(TINY_SPEC).trials[0]
    recorder = Recorder(ResultsStore(tmp_path), Progress(1, 1))
    attempt = Attempt(trial=trial, tag="[1/1 t]", started_at=None)
    recorder.on_event(attempt, Started({"host": "h", "pid": 1}))
    recorder.on_event(attempt, Beat(12, "training", steps_per_s=4.0, train_loss=2.5))
    version, (now,) = recorder.board.snapshot()
    assert (now.label, now.step, now.total, now.phase, now.train_loss) == ("[1/1 t]", 12, 20, "training", 2.5)
    assert now.eta_s == pytest.approx(2.0)  # 8 steps left at 4 steps/s
    recorder.on_event(attempt, Evaluated(eval_curve(2.0, steps=(10,))[0]))
    later, (now,) = recorder.board.snapshot()
    assert later > version and now.step == 10 and now.val_loss == pytest.approx(2.1)
    recorder.finish(attempt, TrialStatus.FAILED, error="boom")
    assert recorder.board.snapshot()[1] == []


def test_a_live_report_shows_the_running_trials_and_rebuilds_on_their_heartbeats(tmp_path: Path) -> None:
    from orchestrator.run.board import Board

    store = ResultsStore(tmp_path)
    _commit(store, "a", 1.0, _cfg("gru", 0))
    board = Board()
    seen: list[list] = []

    def build(job_dir: object, live: bool, running: list) -> None:
        seen.append(running)
        build_report(job_dir, live=live, running=running)  # type: ignore[arg-type]

    with LiveReport(tmp_path, interval_s=0.05, poll_s=0.01, build=build, board=board):
        board.update("b", "[2/3 b model.cell=lstm]", step=120, total=600, phase="training", train_loss=2.25,
                     steps_per_s=4.0, eta_s=120.0)  # no trial finished: the heartbeat alone rebuilds
        assert eventually(lambda: bool(seen), 10)
    md = (tmp_path / "report.md").read_text()
    assert "## Running now" in md
    row = next(line for line in md.splitlines() if "[2/3 b model.cell=lstm]" in line)
    assert "120 / 600" in row and "2.2500" in row and "4.0" in row and "2m00s" in row, row
    assert "Running now" not in build_report(tmp_path)[0].read_text()  # the final report has none


@pytest.mark.parametrize(("pruned_values", "verdict"), [((2.05, 2.30), "within seed noise"),
                                                        ((3.0, 3.1), "beyond seed noise")])
def test_a_rung_cut_smaller_than_the_seed_spread_is_called_undecided(pruned_values: tuple, verdict: str) -> None:
    from orchestrator.report.rung_noise import rung_decisions

    rows = [{"trial_id": t, "status": "completed", "steps": 40} for t in ("a0", "a1")]
    rows += [{"trial_id": t, "status": "pruned", "steps": 10} for t in ("b0", "b1")]
    label = {"a0": "lr=0.01", "a1": "lr=0.01", "b0": "lr=0.1", "b1": "lr=0.1"}
    at_10 = {"a0": 2.0, "a1": 2.2, "b0": pruned_values[0], "b1": pruned_values[1]}
    evals = [{"trial_id": t, "step": 10, "val_loss": v} for t, v in at_10.items()]
    evals += [{"trial_id": t, "step": 40, "val_loss": 1.5} for t in ("a0", "a1")]
    blocks = rung_decisions(rows, evals, label, "val_loss")
    table = next(b for b in blocks if hasattr(b, "rows"))
    (row,) = table.rows
    assert row[:4] == ["10", "4", "2", "2"] and row[-1] == verdict
    assert float(row[4]) == pytest.approx(pruned_values[0] - 2.2)
    said = " ".join(b.text for b in blocks if hasattr(b, "text"))
    assert ("a different seed could have promoted a pruned trial" in said) == (verdict == "within seed noise")
    assert rung_decisions([{**r, "status": "completed"} for r in rows], evals, label, "val_loss") == []
