"""The fused layer-norm LSTM recurrence (rnn.lnlstm.fused, C++ kernels on the CPU) against the PyTorch loop.

float64 equality and gradcheck of the whole module on both paths are in test_lnlstm.py; here:
the float32 path (oneDNN matmuls, the vectorised exp), shapes with tails that do not fill a
vector, which path a model reports, a checkpoint moving between paths, the fallback when
the kernels cannot be built, and the path object a layer holds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, trial_of
from rnn.config import ModelConfig
from rnn.lnlstm import (
    KernelGrads,
    LayerNormLSTM,
    LNLSTMPath,
    SavedTensors,
    cpu,
    ln_lstm_recurrence,
    ln_lstm_recurrence_reference,
)
from rnn.lnlstm.once import Once
from rnn.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fused() -> None:
    if cpu.load() is None:
        pytest.skip("the C++ kernels could not be built here")


def _args(B: int, T: int, H: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    # xg, h0, c0, W_h, LN_h gain/bias, b, LN_c gain/bias
    return [r(B, T, 4 * H), r(B, H), r(B, H), r(4 * H, H, scale=H**-0.5),
            r(4 * H), r(4 * H), r(4 * H), r(H), r(H)]


@pytest.mark.parametrize("B,T,H", [(3, 5, 4), (2, 7, 37), (8, 4, 64)])
def test_float32_path_matches_the_loop(fused, B, T, H) -> None:
    args = _args(B, T, H, torch.float32)
    got = ln_lstm_recurrence(*args, 1e-5)
    want = ln_lstm_recurrence_reference(*args, 1e-5)
    proj = [torch.randn_like(t) for t in (want[0], *want[1])]

    def loss(res):
        out, (h, c) = res
        return sum((a * p).sum() for a, p in zip((out, h, c), proj, strict=True))

    for a, b in zip((got[0], *got[1]), (want[0], *want[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)
    g_got = torch.autograd.grad(loss(got), args)
    g_want = torch.autograd.grad(loss(want), args)
    for i, (a, b) in enumerate(zip(g_got, g_want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=f"argument {i}")


def test_only_the_state_may_be_used(fused) -> None:
    """A loss on h_T alone (no gradient for the outputs) and one on the outputs alone both work."""
    args = _args(2, 5, 6, torch.float64, seed=3)
    for pick in (lambda r: r[1][0].sum(), lambda r: r[0].sum()):
        g1 = torch.autograd.grad(pick(ln_lstm_recurrence(*args, 1e-5)), args)
        g2 = torch.autograd.grad(pick(ln_lstm_recurrence_reference(*args, 1e-5)), args)
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_paths_reported(fused) -> None:
    cpu = torch.device("cpu")
    ln = build_model(ModelConfig(cell="lstm", embedding_dim=8, hidden_size=8, layer_norm=True), 11)
    plain = build_model(ModelConfig(cell="lstm", embedding_dim=8, hidden_size=8), 11)
    assert ln.recurrence_path(cpu, "fp32") == "fused-cpu"
    assert ln.recurrence_path(cpu, "bf16") == "torch"  # CPU autocast runs the loop
    assert plain.recurrence_path(cpu, "fp32") is None
    assert LayerNormLSTM(4, 4, recurrence="torch").recurrence_path(cpu) == "torch"
    with pytest.raises(ValueError, match="recurrence must be one of auto, torch"):
        LayerNormLSTM(4, 4, recurrence="cuda")


def test_checkpoint_moves_between_paths(fused, tmp_path: Path) -> None:
    """Trained a few steps on the fused path, saved, loaded into a torch-path model: same
    parameters, same outputs; and the other way round."""
    torch.manual_seed(0)
    a = LayerNormLSTM(6, 8, num_layers=2, recurrence="auto")
    opt = torch.optim.AdamW(a.parameters(), lr=1e-2)
    x = torch.randn(4, 9, 6)
    for _ in range(3):
        out, _ = a(x)
        out.square().mean().backward()
        opt.step()
        opt.zero_grad()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    b = LayerNormLSTM(6, 8, num_layers=2, recurrence="torch")
    b.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))
    assert a.state_dict().keys() == b.state_dict().keys()
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=1e-4, atol=1e-5)
    a.load_state_dict(b.state_dict())  # and back
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=1e-4, atol=1e-5)


def _path_in_subprocess(env_extra: dict[str, str]) -> str:
    code = ("import torch; from rnn.lnlstm import LayerNormLSTM; m = LayerNormLSTM(4, 4); "
            "m(torch.randn(2, 3, 4))[0].sum().backward(); print(m.recurrence_path(torch.device('cpu')))")
    import os

    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env_extra}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_switched_off_runs_the_loop() -> None:
    assert _path_in_subprocess({cpu.CPP_SWITCH: "0"}) == "torch"


def test_the_switches_are_read_once_when_the_layer_is_built(monkeypatch) -> None:
    monkeypatch.setenv(cpu.CPP_SWITCH, "0")
    off = LayerNormLSTM(4, 4)
    assert off.layers[0].path.cpu is None and off.recurrence_path(torch.device("cpu")) == "torch"
    monkeypatch.setenv("RNN_LNLSTM_GRAPHS", "0")
    monkeypatch.setenv("RNN_LNLSTM_TRITON", "0")
    assert LNLSTMPath.from_env() == LNLSTMPath(cpu=None, triton=None, graphs=False)
    assert LayerNormLSTM(4, 4).layers[0].loop_graphs is None
    monkeypatch.delenv(cpu.CPP_SWITCH)
    assert off.layers[0].path.cpu is None  # built before: unchanged
    assert LNLSTMPath.from_env("torch") == LNLSTMPath(cpu=None, triton=None, graphs=False)
    with pytest.raises(ValueError, match="give recurrence or path, not both"):
        LayerNormLSTM(4, 4, recurrence="torch", path=LNLSTMPath())


def test_each_checkout_builds_into_a_cache_folder_of_its_own(tmp_path: Path) -> None:
    """Two checkouts on one machine sharing torch's extension cache would rebuild each other's
    kernels (ninja sees another compiler command) in every process: 30-40 s each time."""
    other = tmp_path / "lnlstm_cpu.cpp"
    other.write_bytes(cpu.SOURCE.read_bytes())
    assert cpu._build_tag(cpu.SOURCE) == cpu._build_tag(cpu.SOURCE)
    assert cpu._build_tag(other) != cpu._build_tag(cpu.SOURCE)


def test_a_failed_build_falls_back_with_one_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    broken = tmp_path / "lnlstm_cpu.cpp"
    broken.write_text("this is not C++\n", encoding="utf-8")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    load = Once(lambda: cpu.build(broken))  # as cpu.load, over the broken source
    with caplog.at_level("WARNING", logger="rnn.lnlstm.cpu"):
        assert load() is None
        assert load() is None  # remembered: one attempt per process
    assert [r.message for r in caplog.records if "unavailable" in r.message][:1], caplog.text
    assert sum("unavailable" in r.message for r in caplog.records) == 1
    m = LayerNormLSTM(4, 4, path=LNLSTMPath(cpu=load))
    assert m.recurrence_path(torch.device("cpu")) == "torch"
    out, _ = m(torch.randn(2, 3, 4))
    assert out.shape == (2, 3, 4)


def test_start_event_trial_row_and_throughput_row_name_the_path(fused, tmp_path: Path) -> None:
    from orchestrator.results.tables import trial_row
    from rnn.config import DataConfig, RunConfig, ThroughputConfig, TrainConfig
    from rnn.throughput import measure_throughput
    from rnn.train import Trainer

    cfg = RunConfig(
        data=DataConfig(corpus="builtin", level="char", seq_len=8),
        model=ModelConfig(cell="lstm", embedding_dim=8, hidden_size=8, num_layers=1, dropout=0.0, layer_norm=True),
        train=TrainConfig(device="cpu", seed=0, batch_size=4, max_steps=2, eval_every=2),
    )
    start = next(iter(Trainer(cfg, tmp_path / "run").iter_fit()))
    assert start.kind == "start" and start.info["recurrence"] == "fused-cpu"
    row = trial_row(trial_of("t1", {}), status="completed", info=start.info)
    assert row["recurrence"] == "fused-cpu"
    rows = measure_throughput(cfg, ThroughputConfig(batch_sizes=[2], warmup_steps=1, measure_steps=1),
                              cache_dir=tmp_path)
    assert [r.recurrence for r in rows] == ["fused-cpu"]


def test_the_cpp_kernels_name_what_they_return(fused) -> None:
    """The extension returns a plain list; cpu.CppKernels names it as SavedTensors / KernelGrads, and
    each name holds what it says (values that tell the same-shaped fields apart)."""
    B, T, H = 2, 3, 5
    xg, h0, c0, w, gh, bh, b, gc, bc = (a.detach() for a in _args(B, T, H, torch.float64, seed=9))
    kernels = cpu.load()
    assert kernels is not None
    s = kernels.forward(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5)
    assert isinstance(s, SavedTensors)
    assert s.hs.shape == s.cs.shape == (T + 1, B, H) and torch.equal(s.hs[0], h0) and torch.equal(s.cs[0], c0)
    assert s.gates.shape == s.ahat.shape == (T, B, 4 * H)
    assert s.chat.shape == s.tc.shape == (T, B, H) and s.rstd_a.shape == s.rstd_c.shape == (T, B)
    torch.testing.assert_close(s.ahat.mean(-1), torch.zeros(T, B, dtype=torch.float64))
    torch.testing.assert_close(s.chat.mean(-1), torch.zeros(T, B, dtype=torch.float64))
    torch.testing.assert_close(s.tc, torch.tanh(s.chat * gc + bc))
    torch.testing.assert_close(s.rstd_a[0], 1 / torch.sqrt((h0 @ w.t()).var(-1, unbiased=False) + 1e-5))
    torch.testing.assert_close(s.rstd_c[0], 1 / torch.sqrt(s.cs[1].var(-1, unbiased=False) + 1e-5))
    g = kernels.backward(torch.randn(B, T, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64),
                         torch.zeros(B, H, dtype=torch.float64), w, gh, gc, s)
    assert isinstance(g, KernelGrads)
    assert g.dz.shape == (B, T, 4 * H) and g.da.shape == (T, B, 4 * H) and g.dh0.shape == g.dc0.shape == (B, H)
    torch.testing.assert_close(g.dbh, g.dz.sum((0, 1)))
    torch.testing.assert_close(g.dgh, (g.dz.transpose(0, 1) * s.ahat).sum((0, 1)))
    assert g.dgc.shape == g.dbc.shape == (H,)


def test_a_model_copies_and_pickles_with_its_path(fused) -> None:
    """The path holds the process's loaders (and, prepared for a compile, its graph breaks): a copy
    shares them, it does not copy them."""
    import copy
    import pickle

    from rnn.lnlstm import eager_under_compile

    m = LayerNormLSTM(4, 4, num_layers=2)
    eager_under_compile(m)
    x = torch.randn(2, 3, 4)
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert twin.layers[0].path == m.layers[0].path and twin.layers[0].path.cpu is cpu.load
        assert twin.recurrence_path(torch.device("cpu")) == "fused-cpu"
        torch.testing.assert_close(twin(x)[0], m(x)[0])


@pytest.mark.parametrize("use_onednn", [True, False])
def test_tuned_gemms_give_the_same_product_either_way(use_onednn) -> None:
    """rnn.lnlstm.onednn times oneDNN against aten::mm once per shape and keeps the faster: both must
    be the same product (here each forced in turn, by a tuner whose timing always says so)."""
    from rnn.lnlstm import onednn

    if not onednn.available():
        pytest.skip("no oneDNN op in this torch build")

    class Forced(onednn.Tuner):
        def faster(self, onednn, mm):
            return use_onednn

    tuner = Forced()
    g = torch.Generator().manual_seed(0)
    x, w, a, b = (torch.randn(s, generator=g) for s in ((37, 24), (40, 24), (37, 40), (37, 9)))
    torch.testing.assert_close(tuner.linear(x, w), x @ w.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tuner.matmul(a, w), a @ w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tuner.matmul_tn(a, b), a.t() @ b, rtol=1e-5, atol=1e-5)
    assert set(tuner.choice.values()) == {use_onednn}


def test_the_tuned_choice_is_timed_once_per_shape() -> None:
    from rnn.lnlstm import onednn

    if not onednn.available():
        pytest.skip("no oneDNN op in this torch build")
    timed = []

    class Counting(onednn.Tuner):
        def faster(self, onednn, mm):
            timed.append(1)
            return super().faster(onednn, mm)

    tuner = Counting()
    a, b = torch.randn(30, 16), torch.randn(30, 8)
    for _ in range(3):
        tuner.matmul_tn(a, b)
    tuner.matmul_tn(torch.randn(31, 16), b[:1].expand(31, 8).contiguous())
    assert len(timed) == 2 and len(tuner.choice) == 2
    assert onednn.tuner() is onednn.tuner()  # the process's, shared by every layer
