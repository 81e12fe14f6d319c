"""Shared pytest fixtures and builders: tiny configs, result records and rows, real-Ray helpers, test tiers."""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest
import yaml

from rnn.config import DataConfig, ModelConfig, RunConfig, ThroughputConfig, TrainConfig
from rnn.events import EvalRecord
from rnn.throughput_row import ThroughputRow, ThroughputStatus

if TYPE_CHECKING:
    from orchestrator.spec import Trial

REPO = Path(__file__).resolve().parent.parent
#: The virtual environment's scripts (``ray``), beside this interpreter.
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test module of tiny tensors.

    Intra-op threads only add OpenMP spin-waits there, which on a shared CPU made the full
    gradcheck ~10x slower. The previous setting is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shakespeare_path() -> Path:
    """The shared offline copy of Tiny Shakespeare (``<repo>/../shared/data``); skips if absent.

    Tests point ``data_dir`` / ``RNN_DATA_DIR`` here so the network is never touched.
    """
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"Tiny Shakespeare not found at {path}")
    return path


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``RNN_CACHE_DIR`` under ``tmp_path`` and no ``RNN_DATA_DIR``: the test never touches the real
    ``~/.cache`` (tokenizers, corpora) nor a caller's data folder. Returns the cache folder (not created).

    A module whose every test needs it says ``pytestmark = pytest.mark.usefixtures("isolated_cache")``.
    """
    cache = tmp_path / "cache"
    monkeypatch.setenv("RNN_CACHE_DIR", str(cache))
    monkeypatch.delenv("RNN_DATA_DIR", raising=False)
    return cache


# --- tiny configs -------------------------------------------------------------------------------

#: The engine tests' tiny run: a 1-layer char LSTM of 32 units on the builtin corpus, 40 steps.
TINY_RUN = RunConfig(
    data=DataConfig(corpus="builtin", level="char", seq_len=16),
    model=ModelConfig(cell="lstm", embedding_dim=16, hidden_size=32, num_layers=1, dropout=0.0),
    train=TrainConfig(batch_size=8, max_steps=40, eval_every=10, lr=3e-3, scheduler="constant", seed=0),
)


def tiny_run(**train: Any) -> RunConfig:
    """:data:`TINY_RUN` with these ``train`` fields changed."""
    return replace(TINY_RUN, train=replace(TINY_RUN.train, **train))


#: A sweep small enough to finish in seconds: 2 cells x 2 seeds of a tiny char LSTM/GRU.
TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "data": {"corpus": "builtin", "level": "char", "seq_len": 16},
    "model": {"cell": "lstm", "embedding_dim": 16, "hidden_size": 32, "num_layers": 1, "dropout": 0.0},
    "train": {"batch_size": 8, "max_steps": 20, "eval_every": 10, "scheduler": "constant", "device": "cpu"},
    "sweep": {"grid": {"model.cell": ["lstm", "gru"]}, "seeds": [0, 1]},
    "resources": {"cpus_per_trial": 1, "max_concurrent": 2, "max_retries": 1},
}


TPE_SPACE = {
    "train.lr": {"dist": "loguniform", "low": 1.0e-3, "high": 3.0e-2},
    "model.hidden_size": {"dist": "choice", "values": [16, 32]},
    "model.dropout": {"dist": "uniform", "low": 0.0, "high": 0.3},
}


def tpe_spec(tmp_path: Path, name: str = "tpe", samples: int = 6, startup: int = 3, asha: bool = True,
             **tpe: Any) -> dict[str, Any]:
    """TINY_SPEC searched by ``sweep.tpe`` over :data:`TPE_SPACE` (lr, hidden size, dropout), with
    successive halving at 10, 20, ... steps unless ``asha`` is False."""
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name=name, output=str(tmp_path / "results"))
    spec["model"].update(num_layers=2)
    spec["train"].update(max_steps=40, eval_every=10, scheduler="cosine")
    search = {"samples": samples, "seed": 0, "startup": startup, "space": copy.deepcopy(TPE_SPACE), **tpe}
    spec["sweep"] = {"tpe": search, "seeds": [0]}
    if asha:
        spec["sweep"]["scheduler"] = {"type": "asha", "grace_steps": 10, "reduction_factor": 2}
    spec["resources"]["max_concurrent"] = 2
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


# --- records and rows ---------------------------------------------------------------------------


def trial_of(trial_id: str, config: dict[str, Any], index: int = 0) -> Trial:
    """A :class:`~orchestrator.spec.Trial` with ``trial_id`` whose configs are ``config`` (sections as
    mappings) over the engine's defaults: for tests that build rows without a spec."""
    from orchestrator.spec import Trial

    throughput = ThroughputConfig(**config["throughput"]) if "throughput" in config else None
    return Trial(trial_id=trial_id, index=index, overrides={}, run_config=RunConfig.from_dict(config),
                 throughput_config=throughput)


def eval_record(step: int, val_loss: float, **fields: Any) -> EvalRecord:
    """An :class:`~rnn.events.EvalRecord` at ``step`` with ``val_loss``; every other metric is a
    plausible value (the training loss equal to the validation loss, bpc and perplexity derived
    from it) unless ``fields`` gives it."""
    values: dict[str, Any] = {
        "epoch": step / 100, "train_loss": val_loss, "val_bpc": val_loss / math.log(2),
        "val_perplexity": math.exp(val_loss), "val_accuracy": 0.5, "lr": 1e-3, "grad_norm": 1.0,
        "samples_per_s": 100.0, "tokens_per_s": 1600.0, "elapsed_s": step / 10,
    }
    return EvalRecord(step=step, val_loss=val_loss, **{**values, **fields})


def eval_curve(final: float, train_gap: float = -0.1, steps: Sequence[int] = (10, 20, 40)) -> list[EvalRecord]:
    """A finished trial's evaluations at ``steps``: the validation loss falls as ``final + 1 / step``,
    the training loss runs ``train_gap`` from it."""
    return [eval_record(s, final + 1 / s, train_loss=final + train_gap + 1 / s) for s in steps]


def completed_row(trial_id: str, loss: float, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A trials row as ``ResultsStore.commit_trial`` takes it: ``trial_id`` completed at step 40 with
    best validation loss ``loss`` and ``config`` (sections as mappings); ``fields`` change or add columns."""
    return {"trial_id": trial_id, "status": "completed", "best_val_loss": loss, "best_val_bpc": loss / math.log(2),
            "best_val_accuracy": 0.5, "best_step": 40, "params": 100, "steps": 40, "train_time_s": 1.0,
            "config": config, **fields}


def throughput_row(batch_size: int, samples_per_s: Optional[float],
                   status: ThroughputStatus = ThroughputStatus.OK, **fields: Any) -> ThroughputRow:
    """One batch size's throughput measurement: ``samples_per_s`` with step times and memory when
    ``status`` is ok, no measurements and an error otherwise; ``fields`` change the rest (device, ...)."""
    ok = status is ThroughputStatus.OK
    values: dict[str, Any] = {
        "samples_per_s": samples_per_s if ok else None,
        "tokens_per_s": samples_per_s * 64 if ok and samples_per_s else None,
        "step_time_ms": 2.0 if ok else None, "step_time_ms_max": 3.0 if ok else None,
        "peak_mem_mb": 12.5 if ok else None, "device": "cpu", "device_name": "x86", "precision": "fp32",
        "torch_version": "2.13", "error": None if ok else "out of memory",
    }
    return ThroughputRow(batch_size=batch_size, status=status, **{**values, **fields})


# --- real-Ray end-to-end helpers --------------------------------------------------------------


def local_env(tmp_path: Path, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Environment for a driver subprocess that runs without Ray (``run --local``): private caches,
    no ``RAY_ADDRESS`` inherited."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(RNN_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def ray_env(tmp_path: Path, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Environment for a real-Ray subprocess: loopback only, no token auth, private caches.

    Only a test marked ``ray`` or ``cluster`` may call it (see :func:`pytest_runtest_setup`): the fast tier
    (``-m "not ray and not cluster and not browser"``) must not start Ray.
    """
    if not _TIER.ray_allowed:
        pytest.fail(f"{_TIER.test} starts Ray: mark it @pytest.mark.ray (or cluster)", pytrace=False)
    return local_env(tmp_path, {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                                **(extra or {})})



def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ray_head(tmp: Path, extra: Optional[dict[str, str]] = None) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A Ray head on loopback (``ray start --head --block`` in a session of its own, so stopping it
    stops exactly its processes); yields (GCS address, job server URL, its environment).

    ``extra`` is added to the head's environment (``RAY_AUTH_MODE=token`` and a token, say). Only
    a test marked ``ray`` may start one (:func:`ray_env`).
    """
    from ray.job_submission import JobSubmissionClient

    port, dash = free_port(), free_port()
    env = ray_env(tmp, {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})})
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:  # until the job server answers
            try:
                JobSubmissionClient(address, headers=_auth_header(env)).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    pytest.fail(f"the Ray head did not come up: {(tmp / 'head.log').read_text()[-2000:]}")
                time.sleep(1)
        yield f"127.0.0.1:{port}", address, env
    finally:
        # `ray start --block` stops the head's processes on SIGTERM; it may linger over its own
        # shutdown, so the group we own gets SIGKILL after a short grace.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def _auth_header(env: dict[str, str]) -> Optional[dict[str, str]]:
    token = env.get("RAY_AUTH_TOKEN") or (Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
                                          if env.get("RAY_AUTH_TOKEN_PATH") else "")
    return {"Authorization": f"Bearer {token}"} if token else None

def eventually(condition: Callable[[], bool], within_s: float, every_s: float = 0.05) -> bool:
    """Whether ``condition()`` holds within ``within_s`` seconds, asked every ``every_s``: for what
    another thread, process or Ray itself brings about a moment later."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)
    return True


def run_cli(args: list[str], env: dict[str, str], timeout: float = 240,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m orchestrator ARGS`` in a subprocess; output is captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def sigkill_driver_when(spec_path: Path, env: dict[str, str], ready: Callable[[], bool], what: str,
                        timeout: float = 180, args: Sequence[str] = ()) -> None:
    """Run ``python -m orchestrator run SPEC ARGS`` and SIGKILL it, with every Ray process it started,
    as soon as ``ready()`` holds; the test fails with "no WHAT in time" if it never does.

    The driver gets a session of its own: it and the Ray processes it starts form one process
    group this test owns, so killing the group touches nothing else on the machine.
    """
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec_path), *args],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        if not eventually(ready, timeout, every_s=0.1):
            pytest.fail(f"no {what} in time")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


class Driver:
    """``python -m orchestrator run`` in the background, its output in a file we can watch."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], env=env, cwd=REPO,
                                     stdout=self._out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; output:\n{self.text()}")

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            self._out.close()


# --- test tiers ---------------------------------------------------------------------------------


class _Tier:
    """The running test and whether it may start Ray (set by :func:`pytest_runtest_setup`, read by :func:`ray_env`)."""

    test: str = ""
    ray_allowed: bool = True


_TIER = _Tier()
_RAY_MARKERS = ("ray", "cluster")


@pytest.fixture(autouse=True)
def _logger_levels() -> Iterator[None]:
    """``cli.main`` sets the ``orchestrator`` and ``rnn`` loggers' levels (WARNING for a quiet
    command): put them back after each test, so a later test's ``caplog`` sees INFO lines
    whatever ran before it in this process."""
    loggers = [logging.getLogger(name) for name in ("orchestrator", "rnn")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    """The test process (not an xdist worker) ends with pytest's exit status once the exit
    handlers registered after this one have run (Ray's among them; logging's, registered before,
    is called here), skipping the interpreter's finalisation (module teardown, the native
    libraries' static destructors). One CI run crashed there (SIGSEGV) after all 1,014 tests had
    passed and been reported: this process alone loads torch, Triton, Ray, MLflow, TensorBoard and
    pyarrow together, and their teardown order is not ours to fix."""
    if not hasattr(config, "workerinput"):
        atexit.register(_exit_with_status, config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def _exit_with_status(config: pytest.Config) -> None:
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:  # the session never finished: let the interpreter end as it would
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that starts Ray must say so with a marker, so the fast tier never does: checked where
    a Ray subprocess is set up (:func:`ray_env`) and, in process, by :func:`pytest_runtest_call`.

    Set here, before any fixture of the test is set up: a module-scoped fixture (a Ray head shared
    by a module's tests) is set up for the module's first test and must see that test's markers.
    """
    _TIER.test = item.nodeid
    _TIER.ray_allowed = any(item.get_closest_marker(m) for m in _RAY_MARKERS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Fails an unmarked test that leaves Ray running in this process when its body returns (before
    its fixtures' teardown, which may shut Ray down)."""
    result = yield
    if "ray" in sys.modules and not any(item.get_closest_marker(m) for m in _RAY_MARKERS):
        import ray

        if ray.is_initialized():
            pytest.fail(f"{item.nodeid} runs in-process Ray and is not marked ray", pytrace=False)
    return result
