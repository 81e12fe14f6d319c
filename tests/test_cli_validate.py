"""The ``validate`` and ``plan`` commands: output, exit codes, speed, and no torch/ray imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from orchestrator import cli
from orchestrator.plan import estimate_trial_seconds, local_gpu_count, makespan, prep_seconds
from orchestrator.spec import ResourcesSpec, allowed_concurrency, load_job

QUICKSTART = "jobs/quickstart.yaml"

_PROBE = """
import json, runpy, sys
sys.argv = ["orchestrator", *sys.argv[1:]]
try:
    runpy.run_module("orchestrator", run_name="__main__")
except SystemExit as exit_:
    status = exit_.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ray"))
print(json.dumps({"status": status, "heavy": heavy}))
"""


def probe(*args: str) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    *out, last = proc.stdout.splitlines()
    return json.loads(last), "\n".join(out)


def test_validate_and_plan_import_neither_torch_nor_ray() -> None:
    result, out = probe("validate", QUICKSTART)
    assert result["status"] == 0 and result["heavy"] == []
    assert out == f"{QUICKSTART}: ok (4 trials)"
    result, out = probe("plan", "jobs/architectures.yaml")
    assert result["status"] == 0 and result["heavy"] == []
    assert "18 trials" in out


def test_validate_checks_every_example_job(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    cli.main(["validate", QUICKSTART])
    assert cli.main(["validate", *sorted(str(p.relative_to(REPO)) for p in (REPO / "jobs").glob("*.yaml"))]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(list((REPO / "jobs").glob("*.yaml"))) + 1


def test_only_real_subcommands_are_registered() -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == {"run", "validate", "plan", "report", "best", "devices", "sample", "clean",
                                  "repair", "export"}


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_plan_shows_trials_resources_concurrency_and_time(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["plan", QUICKSTART, "--cpus", "2", "--gpus", "0"]) == 0
    out = capsys.readouterr().out
    for trial in load_job(QUICKSTART).trials:
        assert trial.trial_id in out
    assert "model.cell=gru  train.seed=1" in out
    assert "each trial reserves 1 CPU and 0 GPUs" in out
    assert "this machine: 2 CPUs, 0 GPUs -> 2 trials at a time (max_concurrent 2)" in out
    assert "rough time" in out and "for the job" in out


def _big_corpus_spec(tmp_path: Path, data: str, rest: str) -> Path:
    """A spec over an 8.8 MB corpus file: ``data`` adds to its data section, ``rest`` ends the spec."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200_000)  # 8.8 MB
    spec = tmp_path / "big.yaml"
    spec.write_text(f"name: big\ndata: {{corpus: {corpus}, {data}}}\nmodel: {{hidden_size: 64, num_layers: 1}}\n"
                    + rest)
    return spec


def _plan(spec: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["plan", str(spec), "--cpus", "2", "--gpus", "0"]) == 0
    return capsys.readouterr().out


def test_plan_warns_when_evaluation_would_dominate_and_names_the_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _big_corpus_spec(tmp_path, "seq_len: 64", "train: {max_steps: 200, eval_every: 20, device: cpu}\n")
    out = _plan(spec, capsys)
    assert "evaluation: about" in out and "data.val_max_chars" in out
    spec.write_text(spec.read_text().replace("seq_len: 64}", "seq_len: 64, val_max_chars: 20000}"))
    assert "evaluation: about" not in _plan(spec, capsys)


def test_plan_counts_data_preparation_and_names_a_slow_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _big_corpus_spec(tmp_path, "level: word", "train: {max_steps: 20, device: cpu}\n"
                            "sweep: {grid: {model.hidden_size: [32, 64]}}\n")
    out = _plan(spec, capsys)
    line = next(x for x in out.splitlines() if x.startswith("data preparation:"))
    assert f"{tmp_path / 'corpus.txt'} at word level" in line and "once per machine" in line and "per trial" in line
    assert out.count("data preparation:") == 1  # two trials, one corpus and tokenizer: one encode
    job = load_job(str(spec))
    encode, read = prep_seconds(job.trials[0].run_config)
    assert encode > read > 0  # the first encode costs more than a cached read
    with_prep = estimate_trial_seconds(job.trials[0], job.spec.resources)
    assert with_prep is not None and with_prep >= read
    spec.write_text(spec.read_text().replace("level: word", "level: char"))  # char: too fast to name
    assert "data preparation:" not in _plan(spec, capsys)


def test_plan_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text((REPO / QUICKSTART).read_text())
    monkeypatch.chdir(tmp_path)
    assert cli.main(["plan", "job.yaml", "--cpus", "1"]) == 0
    assert "1 trial at a time" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["job.yaml"]


def test_plan_says_when_no_trial_fits(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["plan", "jobs/char_max_accuracy.yaml", "--cpus", "16", "--gpus", "0"]) == 0
    assert "no trial fits here" in capsys.readouterr().out


def test_plan_of_a_bad_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nmodel: {cell: lstmm}\n")
    assert cli.main(["plan", str(spec)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{spec}: model.cell: should be")


@pytest.mark.parametrize(
    "resources,cpus,gpus,expected",
    [
        ({"cpus_per_trial": 1, "max_concurrent": 4}, 2, 0, 2),
        ({"cpus_per_trial": 1, "max_concurrent": 4}, 16, 0, 4),
        ({"cpus_per_trial": 0.1, "max_concurrent": 100}, 1, 0, 10),
        ({"cpus_per_trial": 3, "max_concurrent": 4}, 2, 0, 0),
        ({"cpus_per_trial": 1, "gpus_per_trial": 0.25, "max_concurrent": 16}, 16, 1, 4),
        ({"cpus_per_trial": 1, "gpus_per_trial": 1, "max_concurrent": 16}, 16, 0, 0),
        ({"cpus_per_trial": 2, "gpus_per_trial": 0.5, "max_concurrent": 16}, 6, 8, 3),
    ],
)
def test_allowed_concurrency(resources: dict, cpus: float, gpus: float, expected: int) -> None:
    assert allowed_concurrency(ResourcesSpec(**resources), cpus, gpus) == expected


def test_makespan() -> None:
    assert makespan([10, 10, 10, 10], 2) == 20
    assert makespan([30, 10, 10, 10], 2) == 30
    assert makespan([5], 4) == 5
    assert makespan([], 2) == 0


def test_time_estimate_is_plausible_for_quickstart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    job = load_job(QUICKSTART)
    seconds = [estimate_trial_seconds(t, job.spec.resources) for t in job.trials]
    assert all(s is not None and 1 < s < 600 for s in seconds)
    lstm, gru = seconds[0], seconds[2]
    assert lstm > gru  # 4 gates cost more than 3


def test_local_gpu_count_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert local_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert local_gpu_count() == 0


def test_one_duration_format_for_plan_and_progress() -> None:
    from orchestrator.durations import format_duration

    assert [format_duration(s) for s in (None, float("nan"), -3, 0.4, 59.6, 61, 3599, 3600, 7325)] == [
        "?", "?", "0s", "0s", "1m00s", "1m01s", "59m59s", "1h00m", "2h02m"]
