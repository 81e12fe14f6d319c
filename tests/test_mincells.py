"""minGRU and minLSTM (issue 19): the parallel scan equals the recurrence, the model learns and resumes exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN, tiny_run
from rnn.checkpoint import load_checkpoint
from rnn.config import DataConfig, ModelConfig, RunConfig, ThroughputConfig, TrainConfig
from rnn.memory import estimate_step_memory
from rnn.mincells import MinCell, g, parallel_scan_log, sequential_scan
from rnn.minstack import MinStack
from rnn.models import build_model
from rnn.sample import generate
from rnn.throughput import measure_throughput
from rnn.train import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MIN_CELLS = ["mingru", "minlstm"]
V, B, L = 11, 3, 9


def _reference(cell: MinCell, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """The paper's equations, step by step, written out with nothing shared with rnn.mincells but ``g``."""
    k = cell.proj(x)  # [B, T, G*H]
    h, out = h0, []
    for k_t in k.unbind(1):
        if cell.cell == "mingru":
            k_h, k_z = k_t.chunk(2, dim=-1)
            z = torch.sigmoid(k_z)
            h = (1 - z) * h + z * g(k_h)
        else:
            k_h, k_f, k_i = k_t.chunk(3, dim=-1)
            f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
            h = f / (f + i) * h + i / (f + i) * g(k_h)
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("cell", MIN_CELLS)
@pytest.mark.parametrize("with_h0", [False, True], ids=["h0-zero", "h0-given"])
def test_parallel_scan_equals_the_recurrence_forward_and_gradients(cell: str, with_h0: bool) -> None:
    torch.manual_seed(0)
    layer = MinCell(cell, 5, 7).double()
    x = (3 * torch.randn(B, 13, 5, dtype=torch.float64)).requires_grad_()  # wide pre-activations: both g branches
    h0 = (torch.rand(B, 7, dtype=torch.float64) + 0.1).requires_grad_() if with_h0 else None
    results = {}
    for scan in ("parallel", "sequential", "reference"):
        start = h0 if h0 is not None else torch.zeros(B, 7, dtype=torch.float64)
        h = _reference(layer, x, start) if scan == "reference" else layer(x, h0, scan)
        weights = torch.linspace(-1, 1, h.numel(), dtype=torch.float64).view_as(h)  # a loss that weighs every h_t
        inputs = [x, *layer.parameters(), *([h0] if h0 is not None else [])]
        grads = torch.autograd.grad((h * weights).sum(), inputs)
        results[scan] = (h.detach(), grads)
    h_ref, g_ref = results["reference"]
    for scan in ("parallel", "sequential"):
        h, grads = results[scan]
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
        for got, want in zip(grads, g_ref, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_the_hand_written_backward_passes_gradcheck() -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 6, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sequential_scan, (a, b, h0))


def test_float32_parallel_scan_holds_over_long_sequences() -> None:
    # T 4096 with gates near 0.5: |a*_T| ~ 2800, where float32 still keeps ~1e-4 of log h.
    torch.manual_seed(0)
    log_a = torch.nn.functional.logsigmoid(torch.randn(2, 4096, 8, dtype=torch.float64))
    log_b = torch.nn.functional.logsigmoid(torch.randn(2, 4096, 8, dtype=torch.float64))
    want = sequential_scan(log_a.exp(), log_b.exp())
    got = parallel_scan_log(log_a.float(), log_b.float())
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("cell", MIN_CELLS)
@pytest.mark.parametrize("min_mlp", [False, True], ids=["block", "block+mlp"])
def test_the_model_s_step_by_step_form_equals_its_parallel_forward_with_gradients(cell: str, min_mlp: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, embedding_dim=6, hidden_size=8, num_layers=2, dropout=0.0, min_mlp=min_mlp)
    model = build_model(cfg, V).double()
    model.forward_rnn.scan = "parallel"  # the GPU's training path, here on the CPU
    window = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))
    parallel = model(window).logits  # [B, L-1, V]
    g_parallel = torch.autograd.grad(parallel.square().sum(), list(model.parameters()))
    state, pieces = None, []
    for t in range(L - 1):  # sampling: one token per call, the state carried between calls
        logits, state = model.step(window[:, t : t + 1], state)
        pieces.append(logits)
    stepped = torch.cat(pieces, 1)
    g_stepped = torch.autograd.grad(stepped.square().sum(), list(model.parameters()))
    torch.testing.assert_close(stepped, parallel, rtol=1e-10, atol=1e-12)
    for got, want in zip(g_stepped, g_parallel, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_stack_shapes_state_and_the_path_it_reports(cell: str) -> None:
    model = build_model(ModelConfig(cell=cell, embedding_dim=6, hidden_size=8, num_layers=3, dropout=0.1), V)
    assert isinstance(model.forward_rnn, MinStack)
    assert model.recurrence_path(torch.device("cpu")) == "sequential-scan"
    assert model.recurrence_path(torch.device("cuda")) == "parallel-scan"
    _, state = model.eval().step(torch.zeros(B, 4, dtype=torch.long))
    assert state.shape == (3, B, 8) and bool((state > 0).all())  # h is positive by construction
    with pytest.raises(ValueError, match=r"MinStack state must be h \[3, 3, 8\]"):
        model.forward_rnn(torch.zeros(B, 4, 6), torch.zeros(2, B, 8))


def test_min_cells_have_fewer_parameters_without_the_mlp() -> None:
    small = build_model(ModelConfig(cell="mingru", embedding_dim=8, hidden_size=8, num_layers=1), V)
    big = build_model(ModelConfig(cell="mingru", embedding_dim=8, hidden_size=8, num_layers=1, min_mlp=True), V)
    assert big.num_parameters() - small.num_parameters() == 8 + (8 * 32 + 32) + (32 * 8 + 8)  # RMSNorm, MLP


def test_min_cell_refusals_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"model.weight_drop: cell 'mingru' has no hidden-to-hidden weights"):
        build_model(ModelConfig(cell="mingru", weight_drop=0.2), V)
    with pytest.raises(ValueError, match=r"model.min_mlp: .*min cells' layers only \(got cell 'lstm'\)"):
        build_model(ModelConfig(cell="lstm", min_mlp=True), V)
    with pytest.raises(ValueError, match=r"model.layer_norm: .*only for cell 'lstm' \(got cell 'minlstm'\)"):
        build_model(ModelConfig(cell="minlstm", layer_norm=True), V)


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_resume_continues_the_same_run_exactly(tmp_path: Path, cell: str) -> None:
    cfg = tiny_run(max_steps=30, eval_every=10, scheduler="onecycle")
    cfg = replace(cfg, model=replace(cfg.model, cell=cell, num_layers=2, dropout=0.1, dropout_mode="locked",
                                     embedding_dropout=0.1))
    full = Trainer(cfg, tmp_path / "full").fit()
    part = tmp_path / "part"
    for event in Trainer(cfg, part).iter_fit():
        if event.kind == "checkpoint":
            break
    assert load_checkpoint(part / "best.pt")["step"] == 10
    resumed = Trainer(cfg, tmp_path / "resumed").fit(resume_from=part / "best.pt")
    assert [r.step for r in resumed.evals] == [10, 20, 30]
    for a, b in zip(full.evals, resumed.evals, strict=True):
        assert (b.val_loss, b.train_loss, b.lr) == (a.val_loss, a.train_loss, a.lr)


def test_a_min_cell_trains_and_records_its_recurrence(tmp_path: Path) -> None:
    cfg = replace(TINY_RUN, model=replace(TINY_RUN.model, cell="minlstm", bidirectional=True))
    events = list(Trainer(cfg, tmp_path).iter_fit())
    assert events[0].info["recurrence"] == "sequential-scan"
    result = events[-1].result
    assert result.status.is_success() and result.evals[-1].val_loss < result.evals[0].val_loss
    # sampling from its checkpoint runs the step-by-step form, the state carried from call to call
    text = generate(result.best_checkpoint, prompt="The ", length=20, temperature=0.8, seed=1)
    assert text.startswith("The ") and len(text) == 24
    assert text == generate(result.best_checkpoint, prompt="The ", length=20, temperature=0.8, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("cell", MIN_CELLS)
def test_learns_shakespeare(tmp_path: Path, shakespeare_path: Path, cell: str) -> None:
    """The other cells' bar: 300 AdamW steps on Tiny Shakespeare reach 3.0 bits per character or less."""
    cfg = RunConfig(
        data=DataConfig(corpus=str(shakespeare_path), level="char", seq_len=64),
        model=ModelConfig(cell=cell, embedding_dim=64, hidden_size=128, num_layers=2, dropout=0.0),
        train=TrainConfig(batch_size=32, max_steps=300, eval_every=300, lr=3e-3, scheduler="onecycle", seed=0),
    )
    result = Trainer(cfg, tmp_path).fit()
    assert result.evals[-1].val_bpc <= 3.0, result.evals[-1]


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_a_throughput_sweep_measures_a_min_cell_and_names_its_scan(tmp_path: Path, cell: str) -> None:
    cfg = replace(TINY_RUN, model=replace(TINY_RUN.model, cell=cell, min_mlp=True),
                  train=replace(TINY_RUN.train, device="cpu"))
    rows = measure_throughput(cfg, ThroughputConfig(batch_sizes=(4, 8), warmup_steps=1, measure_steps=2),
                              cache_dir=tmp_path)
    assert [r.status for r in rows] == ["ok", "ok"] and {r.recurrence for r in rows} == {"sequential-scan"}
    # the memory estimate has a per-layer figure for it, above the plain GRU's
    plain = replace(cfg.model, cell="gru", min_mlp=False)
    assert estimate_step_memory(cfg.model, 65, 64, 100, 10**6) > estimate_step_memory(plain, 65, 64, 100, 10**6)


@pytest.mark.parametrize("scan", ["parallel", "sequential"])
def test_the_scan_runs_in_float32_under_bf16_autocast(scan: str) -> None:
    torch.manual_seed(0)
    layer = MinCell("mingru", 8, 16)
    x = torch.randn(2, 300, 8)
    want = layer(x, None, scan)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x, None, scan)
    assert got.dtype == torch.float32  # only the projection ran in bfloat16
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.02)
