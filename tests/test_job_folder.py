"""A job folder no one can turn against the tool: links refused before anything is written,
damage found before anything runs (and nothing written on the way out), one exit status per
kind of failure across commands, no scratch folder left behind, and the right words for paths
that are not files."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_SPEC, completed_row, eval_curve, write_spec
from orchestrator.cli import main
from orchestrator.results import JobLock, ResultsStore
from orchestrator.run.actor import SCRATCH_PREFIX, remove_stale_scratch


def _spec(tmp_path: Path) -> Path:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="tiny", output=str(tmp_path / "results"))
    return write_spec(tmp_path / "tiny.yaml", spec)


def _job_folder(tmp_path: Path) -> Path:
    """A finished-looking job folder: two committed trials, compacted, with checkpoints and a manifest."""
    job = tmp_path / "results" / "tiny"
    store = ResultsStore(job)
    for tid, loss in (("aaaaaaaaaaaa", 1.5), ("bbbbbbbbbbbb", 1.7)):
        rel = store.write_checkpoint_bytes(tid, b"not really a checkpoint")
        row = completed_row(tid, loss, {"model": {"cell": "lstm"}}, checkpoint=rel)
        store.commit_trial(row, evals=eval_curve(loss))
    store.compact()
    (job / "manifest.json").write_text('{"format": 2, "runs": []}\n')
    return job


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- links ------------------------------------------------------------------------------------------

ENTRIES = (".lock", "checkpoints", "parts", "search", "trials.parquet", "evals.parquet", "manifest.json",
           "checkpoints/aaaaaaaaaaaa")


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_job_folder_entry_that_is_a_link_is_refused_and_its_target_untouched(
        entry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job_folder(tmp_path)
    spec = _spec(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "precious.txt"
    victim.write_text("somebody else's data")
    stale = outside / ".precious.txt.999999.deadbeef.tmp"  # looks like a killed writer's temporary file
    stale.write_text("also theirs")
    link = job / entry
    if link.is_dir():
        for f in sorted(link.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        link.rmdir()
    elif link.exists():
        link.unlink()
    link.symlink_to(outside if entry in ("checkpoints", "parts", "search", "checkpoints/aaaaaaaaaaaa") else victim)
    before = sorted(p.name for p in outside.iterdir())

    for command in (["run", str(spec), "--local"], ["clean", str(job)], ["clean", str(job), "--keep-top", "0"]):
        assert main(command) == 2, command
        line = _one_line(capsys)
        assert f"{entry} is a symbolic link" in line, line
        assert victim.read_text() == "somebody else's data" and stale.exists()
        assert sorted(p.name for p in outside.iterdir()) == before


# --- damage is found first, and nothing is written on the way out -------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["evals.parquet", "trials.parquet", "a part", "manifest runs"])
def test_a_damaged_folder_is_exit_2_from_every_command_and_run_writes_nothing(
        damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job_folder(tmp_path)
    spec = _spec(tmp_path)
    if damage == "a part":
        store = ResultsStore(job)
        store.commit_trial(completed_row("cccccccccccc", 1.9, {"model": {"cell": "gru"}}), evals=eval_curve(1.9))
        (part,) = (job / "parts").glob("*.arrow")
        _truncate(part)
        named = part.name
    elif damage == "manifest runs":
        (job / "manifest.json").write_text('{"format": 2, "runs": "x"}\n')
        named = "manifest.json"
    else:
        _truncate(job / damage)
        named = damage
    snapshot = {p: p.read_bytes() for p in job.rglob("*") if p.is_file() and p.name != ".lock"}

    assert main(["run", str(spec), "--local"]) == 2
    assert named in _one_line(capsys)
    after = {p: p.read_bytes() for p in job.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == snapshot  # no run record, no compaction, no report
    readers = [["report", str(job)]]
    if damage != "evals.parquet":  # best reads no evaluations
        readers.append(["best", str(job)])
    for command in readers:
        assert main(command) == 2, command
        assert named in _one_line(capsys)


def test_clean_under_a_running_sweep_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job_folder(tmp_path)
    with JobLock(job):
        assert main(["clean", str(job)]) == 2
        assert "another run" in _one_line(capsys)
        assert main(["run", str(_spec(tmp_path)), "--local"]) == 2
        assert "another run" in _one_line(capsys)


# --- scratch folders -----------------------------------------------------------------------------


def test_a_killed_workers_scratch_folder_is_removed_by_the_next_worker(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"{SCRATCH_PREFIX}{int(dead.stdout)}-abc123"
    (gone / "trial").mkdir(parents=True)
    (gone / "trial" / "best.pt").write_bytes(b"x" * 1000)
    alive = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def456"
    alive.mkdir()
    other = tmp_path / "rnn-trial-unrelated"
    other.mkdir()
    assert remove_stale_scratch(str(tmp_path)) == [str(gone)]
    assert not gone.exists() and alive.is_dir() and other.is_dir()


# --- the right words ----------------------------------------------------------------------------------


def test_paths_that_are_not_files_are_named_for_what_they_are(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    cases = {"/dev/zero": "a device, not a file", str(fifo): "a named pipe (FIFO), not a file",
             str(loop): "a symbolic link loop", str(tmp_path / "nope"): "no such file"}
    for path, words in cases.items():
        assert main(["sample", path]) == 2  # never opened: a FIFO would block
        assert words in _one_line(capsys)
        assert main(["validate", path]) == 2
        assert f"cannot read the spec: {words}" in _one_line(capsys)
        spec = copy.deepcopy(TINY_SPEC)
        spec["data"]["corpus"] = path
        assert main(["validate", str(write_spec(tmp_path / "c.yaml", spec))]) == 2
        assert f"data.corpus: {words}" in _one_line(capsys)


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_a_pickle_payload_is_refused_without_advice_to_load_it_unsafely(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "best.pt"
    evil.write_bytes(pickle.dumps(_Payload()))
    assert main(["sample", str(evil)]) == 2
    line = _one_line(capsys)
    assert "refused" in line and "weights_only" not in line and "pwned" not in line


# --- a corpus's content, checked by validate ------------------------------------------------------


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty"),
    (b"text\x00\x01\x02 more", "binary, not text (a NUL byte at offset 4)"),
    ("café au lait, and some more words".encode("latin-1"), "not valid UTF-8: byte 3 (0xe9)"),
    (b"a short text\n", "too short: its validation split"),
])
def test_validate_judges_a_corpus_files_content_as_run_would(
        content: bytes, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"]["corpus"] = str(corpus)
    assert main(["validate", str(write_spec(tmp_path / "c.yaml", spec))]) == 2
    assert words in _one_line(capsys)


def test_a_utf8_character_cut_by_the_first_megabyte_is_not_a_problem(tmp_path: Path) -> None:
    from rnn.corpus import HEAD_BYTES, corpus_file_problem

    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a" * (HEAD_BYTES - 1) + "é".encode() + b"b" * 100)
    assert corpus_file_problem(corpus) is None


def test_a_run_stopped_before_any_trial_was_recorded_writes_no_report(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    from orchestrator.errors import ExitCode
    from orchestrator.run import LocalBackend, run_job
    from orchestrator.spec import load_job

    stop = threading.Event()
    stop.set()  # as a SIGTERM right at the start would
    with caplog.at_level("INFO"):
        outcome = run_job(load_job(_spec(tmp_path)), backend=LocalBackend(), stop=stop, live_report_s=0)
    assert outcome.exit_code == ExitCode.INTERRUPTED
    job = Path(outcome.job_dir)
    assert not (job / "report.md").exists() and not (job / "report.html").exists()
    assert "no report written" in caplog.text and "not a job folder" not in caplog.text


# --- repair -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_repair_sets_a_damaged_table_aside_and_keeps_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job_folder(tmp_path)
    _truncate(job / "evals.parquet")
    assert main(["report", str(job)]) == 2
    assert f"python -m orchestrator repair {job}" in _one_line(capsys)  # the message names the command
    assert main(["repair", str(job)]) == 0
    out = capsys.readouterr().out
    assert "set aside damaged/evals.parquet." in out
    for tid in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):  # their checkpoints are not real ones: nothing to rebuild from
        assert f"lost: trial {tid}'s evaluations (checkpoints/{tid}/best.pt cannot be read" in out
        assert "its row is kept" in out
    (aside,) = (job / "damaged").iterdir()
    assert aside.name.startswith("evals.parquet.")  # kept, never deleted
    assert main(["report", str(job)]) == 0  # usable again, both rows kept
    assert sorted(ResultsStore(job).read_trials()["trial_id"].to_pylist()) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert main(["repair", str(job)]) == 0
    assert "nothing is damaged" in capsys.readouterr().out


def test_repair_says_which_trials_a_damaged_trials_table_loses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job_folder(tmp_path)
    store = ResultsStore(job)
    store.commit_trial(completed_row("cccccccccccc", 1.9, {"model": {"cell": "gru"}}), evals=eval_curve(1.9))
    _truncate(job / "trials.parquet")
    assert main(["repair", str(job)]) == 0
    out = capsys.readouterr().out
    for tid in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        assert f"lost: trial {tid}'s row (checkpoints/{tid}/best.pt cannot be read" in out
        assert "it runs again at the next run, from scratch" in out
    assert ResultsStore(job).read_trials()["trial_id"].to_pylist() == ["cccccccccccc"]  # the part's trial is kept


def test_repair_sets_aside_a_damaged_part_manifest_and_search_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job_folder(tmp_path)
    store = ResultsStore(job)
    store.commit_trial(completed_row("cccccccccccc", 1.9, {"model": {"cell": "gru"}}), evals=eval_curve(1.9))
    (part,) = (job / "parts").glob("*.arrow")
    _truncate(part)
    (job / "manifest.json").write_bytes(b"\xff\xfe not json")
    (job / "search").mkdir()
    for k in range(3):
        record = {"number": k, "params": {}, "values": {}, "from_model": False, "trial_ids": [f"t{k}"]}
        (job / "search" / f"{k:06d}.json").write_text(json.dumps(record))
    (job / "search" / "000001.json").write_text("{not json")
    assert main(["run", str(_spec(tmp_path)), "--local"]) == 2
    capsys.readouterr()
    assert main(["repair", str(job)]) == 0
    out = capsys.readouterr().out
    assert "lost: trial cccccccccccc's completed part" in out
    assert "lost: the manifest" in out
    assert "lost: search proposals 1 and later" in out
    assert sorted(p.name.rsplit(".", 1)[0] for p in (job / "damaged").iterdir()) == [
        "manifest.json", part.relative_to(job).as_posix().replace("/", "_"), "search_000001.json",
        "search_000002.json"]
    assert [p.name for p in (job / "search").iterdir()] == ["000000.json"]
    assert main(["repair", str(job)]) == 0
    assert "nothing is damaged" in capsys.readouterr().out


def test_validate_judges_the_window_for_every_swept_seq_len_and_evaluated_head(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 100)  # 4,400 chars: 440 held out
    spec = copy.deepcopy(TINY_SPEC)
    spec["data"]["corpus"] = str(corpus)
    spec["sweep"] = {"grid": {"data.seq_len": [16, 1000]}}
    assert main(["validate", str(write_spec(tmp_path / "c.yaml", spec))]) == 2
    assert "has at most 440 characters, one window needs seq_len + 1 = 1001" in _one_line(capsys)
    spec["sweep"] = {"grid": {"data.seq_len": [16, 32]}}
    spec["data"]["val_max_chars"] = 20  # the evaluated head is shorter than a window
    assert main(["validate", str(write_spec(tmp_path / "c.yaml", spec))]) == 2
    assert "has at most 20 characters, one window needs seq_len + 1 = 33" in _one_line(capsys)  # 17 fits
