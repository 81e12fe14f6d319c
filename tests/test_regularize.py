"""AWD-LSTM's regularisation (issue 19): weight drop, locked dropout, embedding dropout; defaults change nothing."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from orchestrator.errors import SpecError
from orchestrator.spec import build_job
from orchestrator.spec.expand import trial_id_for
from rnn.config import ModelConfig
from rnn.lnlstm import LayerNormLSTM, LNLSTMPath
from rnn.models import LanguageModel, build_model
from rnn.regularize import drop_connect, embedding_dropout, fused_rnn_forward, sequence_dropout

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V, B, L = 11, 3, 8
TINY = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=2, dropout=0.3)
FUSED = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _x(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(B, L, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- the functions ------------------------------------------------------------------------------


def test_locked_dropout_keeps_one_mask_per_sequence() -> None:
    torch.manual_seed(0)
    out = sequence_dropout(torch.ones(4, 50, 16), 0.5, training=True, locked=True)  # [B, T, C]
    assert torch.equal(out, out[:, :1].expand_as(out))  # the same at every step
    assert set(out.unique().tolist()) == {0.0, 2.0}  # survivors scaled by 1 / (1 - p)
    standard = sequence_dropout(torch.ones(4, 50, 16), 0.5, training=True, locked=False)
    assert not torch.equal(standard, standard[:, :1].expand_as(standard))
    x = torch.randn(2, 3, 4)
    assert sequence_dropout(x, 0.5, training=False, locked=True) is x


def test_embedding_dropout_drops_whole_tokens_in_training_only() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(V, 6)
    tokens = torch.arange(V).repeat(4, 3)  # every token several times per row
    out = embedding_dropout(emb, tokens, 0.5, training=True)  # [4, 3V, 6]
    dropped = (out == 0).all(-1)  # [4, 3V]
    assert dropped.any() and not dropped.all()
    for v in range(V):  # a token is dropped everywhere or nowhere
        assert dropped[tokens == v].unique().numel() == 1
    kept = ~dropped
    torch.testing.assert_close(out[kept], 2.0 * emb(tokens)[kept])
    assert torch.equal(embedding_dropout(emb, tokens, 0.5, training=False), emb(tokens))
    out.sum().backward()  # the gradient reaches the table through the mask
    assert emb.weight.grad is not None


def test_drop_connect_is_one_scaled_mask_and_the_gradient_reaches_the_weight() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.ones(20, 20, dtype=torch.float64))
    dropped = drop_connect(w, 0.25, training=True)
    assert set(dropped.unique().tolist()) == {0.0, 1 / 0.75}
    dropped.sum().backward()
    assert torch.equal(w.grad, dropped.detach())  # d(sum)/dw: the mask, scaled
    assert drop_connect(w, 0.25, training=False) is w


# --- nn.LSTM / nn.GRU / nn.RNN through the fused op -------------------------------------------


@pytest.mark.parametrize("cell", list(FUSED))
def test_the_fused_functional_call_is_the_module_when_nothing_is_dropped(cell: str) -> None:
    rnn = FUSED[cell](8, 12, num_layers=2, batch_first=True, dropout=0.3).train()
    torch.manual_seed(5)
    want, want_state = rnn(_x())
    torch.manual_seed(5)  # the same between-layer dropout draws: the same op, called the same way
    got, got_state = fused_rnn_forward(rnn, _x(), None, weight_drop=0.0, locked=False)
    assert torch.equal(got, want)
    for a, b in zip(got_state if cell == "lstm" else [got_state], want_state if cell == "lstm" else [want_state],
                    strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", list(FUSED))
def test_weight_drop_is_the_module_run_with_dropped_recurrent_weights(cell: str) -> None:
    rnn = FUSED[cell](8, 12, num_layers=2, batch_first=True, dropout=0.0).double().train()
    torch.manual_seed(7)
    got, _ = fused_rnn_forward(rnn, _x(dtype=torch.float64), None, weight_drop=0.5, locked=False)
    got.square().sum().backward()
    torch.manual_seed(7)  # the same masks, in the same order (layer 0's weight_hh, then layer 1's)
    masked = copy.deepcopy(rnn)
    masks = []
    with torch.no_grad():
        for k in range(2):
            w = getattr(masked, f"weight_hh_l{k}")
            dropped = drop_connect(w, 0.5, training=True)
            masks.append(dropped != 0)
            w.copy_(dropped)
    want, _ = masked(_x(dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for k in range(2):  # dropped entries get no gradient; the others get the masked model's, scaled
        grad = getattr(rnn, f"weight_hh_l{k}").grad
        assert bool((grad[~masks[k]] == 0).all()) and bool((grad[masks[k]] != 0).any())
    # the same mask at every step, once per forward: the next forward draws another
    torch.manual_seed(8)
    other, _ = fused_rnn_forward(rnn, _x(dtype=torch.float64), None, weight_drop=0.5, locked=False)
    assert not torch.allclose(other, got)


@pytest.mark.parametrize("cell", list(FUSED))
def test_locked_dropout_between_fused_layers_runs_a_layer_at_a_time(cell: str) -> None:
    rnn = FUSED[cell](8, 12, num_layers=2, batch_first=True, dropout=0.5).double().train()
    x = _x(dtype=torch.float64)
    torch.manual_seed(3)
    got, state = fused_rnn_forward(rnn, x, None, weight_drop=0.0, locked=True)
    layers = [FUSED[cell](8 if k == 0 else 12, 12, batch_first=True).double() for k in range(2)]
    for k, layer in enumerate(layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{kind}_l0").data.copy_(getattr(rnn, f"{kind}_l{k}"))
    torch.manual_seed(3)
    out, first = layers[0](x)
    out = sequence_dropout(out, 0.5, training=True, locked=True)
    want, second = layers[1](out)
    torch.testing.assert_close(got, want)
    h = state[0] if cell == "lstm" else state
    torch.testing.assert_close(h, torch.cat([(first[0] if cell == "lstm" else first),
                                             (second[0] if cell == "lstm" else second)]))


# --- the layer-norm LSTM, on every CPU path -----------------------------------------------------


def test_ln_lstm_weight_drop_is_the_same_on_the_fused_and_torch_paths() -> None:
    runs: dict[str, Any] = {}
    for recurrence in ("auto", "torch"):
        torch.manual_seed(0)
        stack = LayerNormLSTM(8, 12, num_layers=2, recurrence=recurrence, weight_drop=0.4, locked=True,
                              dropout=0.3).double().train()
        torch.manual_seed(1)
        out, _ = stack(_x(dtype=torch.float64))
        out.square().sum().backward()
        runs[recurrence] = (out.detach(), [p.grad for p in stack.parameters()], stack)
    assert runs["auto"][2].recurrence_path(torch.device("cpu"), torch.float64) in ("fused-cpu", "torch")
    torch.testing.assert_close(runs["auto"][0], runs["torch"][0], rtol=1e-10, atol=1e-12)
    for a, b in zip(runs["auto"][1], runs["torch"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    w_grad = runs["torch"][2].layers[0].w_h.weight.grad
    assert bool((w_grad == 0).any())  # dropped entries of W_h got no gradient


def test_ln_lstm_weight_drop_reaches_the_fused_kernel_s_gradient() -> None:
    path = LNLSTMPath.from_env()
    if path.resolve(torch.device("cpu"), torch.float32, 12) != "fused-cpu":
        pytest.skip("the C++ kernels are not built here")
    torch.manual_seed(0)
    stack = LayerNormLSTM(8, 12, num_layers=1, weight_drop=0.5, path=path).train()
    torch.manual_seed(2)
    stack(_x())[0].sum().backward()
    grad = stack.layers[0].w_h.weight.grad
    assert bool((grad == 0).any()) and bool((grad != 0).any())


# --- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "layer_norm"), [("lstm", False), ("gru", False), ("rnn", False), ("lstm", True)],
                         ids=["lstm", "gru", "rnn", "ln-lstm"])
def test_defaults_compute_what_they_always_did(cell: str, layer_norm: bool) -> None:
    # A default model calls its stack as a module (no functional call), draws the same dropout
    # masks, and is equal to a model built with every new field spelled out at its default.
    cfg = replace(TINY, cell=cell, layer_norm=layer_norm)
    spelled = replace(cfg, weight_drop=0.0, dropout_mode="standard", embedding_dropout=0.0, min_mlp=False)
    outs = []
    for c in (cfg, spelled):
        torch.manual_seed(0)
        model = build_model(c, V).train()
        torch.manual_seed(1)
        outs.append(model(torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(2))).logits)
    assert torch.equal(outs[0], outs[1])


def _awd(cell: str, layer_norm: bool = False, **fields: Any) -> LanguageModel:
    torch.manual_seed(0)
    cfg = replace(TINY, cell=cell, layer_norm=layer_norm, dropout_mode="locked", embedding_dropout=0.2,
                  weight_drop=0.0 if cell.startswith("min") else 0.3, **fields)
    return build_model(cfg, V).double()


@pytest.mark.parametrize(("cell", "layer_norm"), [("lstm", False), ("gru", False), ("rnn", False), ("lstm", True),
                                                  ("mingru", False), ("minlstm", False)],
                         ids=["lstm", "gru", "rnn", "ln-lstm", "mingru", "minlstm"])
def test_no_leak_of_the_future_in_training_with_every_regulariser(cell: str, layer_norm: bool) -> None:
    # The masks (locked, embedding, weight drop) are drawn from the RNG, not from the data: with
    # the same seed, perturbing tokens after t moves no forward logit at or before t.
    model = _awd(cell, layer_norm, bidirectional=True).train()
    window = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))

    def run(w: torch.Tensor) -> Any:
        torch.manual_seed(9)
        return model(w)

    base = run(window)
    for t in range(L - 2):
        after = window.clone()
        after[:, t + 1 :] = (after[:, t + 1 :] + 1) % V
        moved = run(after)
        torch.testing.assert_close(moved.logits[:, : t + 1], base.logits[:, : t + 1], rtol=0, atol=1e-12)
        assert (moved.logits[:, t + 1 :] - base.logits[:, t + 1 :]).abs().amax() > 1e-9
        before = window.clone()
        before[:, : t + 1] = (before[:, : t + 1] + 1) % V
        moved = run(before)
        torch.testing.assert_close(moved.backward_logits[:, t:], base.backward_logits[:, t:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru"])
def test_regularisers_are_off_in_evaluation(cell: str) -> None:
    model = _awd(cell)
    window = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))
    model.train()
    assert not torch.equal(model(window).logits, model(window).logits)
    model.eval()
    plain = build_model(replace(model.cfg, dropout_mode="standard", embedding_dropout=0.0, weight_drop=0.0), V)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(model(window).logits, plain.double().eval()(window).logits)


def test_locked_mode_uses_one_mask_on_the_embedding_output() -> None:
    model = build_model(replace(TINY, dropout=0.5, dropout_mode="locked"), V).train()
    tokens = torch.zeros(B, 20, dtype=torch.long)  # the same token throughout: the output differs only by the mask
    emb = model._embed(tokens)
    assert torch.equal(emb, emb[:, :1].expand_as(emb))


@pytest.mark.parametrize(("fields", "needle"), [
    ({"weight_drop": 1.0}, r"model.weight_drop: must be in \[0, 1\)"),
    ({"embedding_dropout": -0.1}, r"model.embedding_dropout: must be in \[0, 1\)"),
    ({"dropout_mode": "zoneout"}, r"model.dropout_mode: unknown mode 'zoneout'; expected one of standard, locked"),
])
def test_the_engine_refuses_what_it_cannot_run_naming_the_field(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        build_model(replace(TINY, **fields), V)


# --- the spec -----------------------------------------------------------------------------------


def test_new_fields_at_their_defaults_keep_every_trial_id() -> None:
    config = {"data": {"corpus": "builtin"}, "model": {"cell": "lstm", "dropout": 0.1}, "train": {"seed": 0}}
    spelled = copy.deepcopy(config)
    spelled["model"].update(weight_drop=0.0, dropout_mode="standard", embedding_dropout=0.0, min_mlp=False)
    assert trial_id_for("train", spelled) == trial_id_for("train", config)
    for field, value in (("weight_drop", 0.5), ("dropout_mode", "locked"), ("embedding_dropout", 0.1),
                         ("min_mlp", True)):
        changed = copy.deepcopy(config)
        changed["model"][field] = value
        assert trial_id_for("train", changed) != trial_id_for("train", config), field


def _spec_lines(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        build_job(raw, "s.yaml")
    return info.value.lines()


def test_the_spec_refuses_what_a_cell_cannot_do_naming_the_field() -> None:
    base: dict[str, Any] = {"name": "j", "model": {"hidden_size": 32, "embedding_dim": 16}, "train": {"max_steps": 10}}
    assert _spec_lines({**base, "model": {**base["model"], "cell": "mingru", "weight_drop": 0.3}}) == [
        "s.yaml: model.weight_drop: cell mingru has no hidden-to-hidden weights to drop (its gates read the input "
        "only); set weight_drop: 0 or use lstm, gru or rnn (got 0.3)"]
    # swept: the problem is pinned on the swept value that causes it
    swept = {**base, "model": {**base["model"], "weight_drop": 0.3},
             "sweep": {"grid": {"model.cell": ["lstm", "minlstm"]}}}
    assert _spec_lines(swept) == [
        "s.yaml: sweep.grid.model.cell[1]: makes model.weight_drop invalid: cell minlstm has no hidden-to-hidden "
        "weights to drop (its gates read the input only); set weight_drop: 0 or use lstm, gru or rnn (got 0.3)"]
    lines = _spec_lines({**base, "model": {**base["model"], "min_mlp": True, "dropout_mode": "zoneout",
                                           "embedding_dropout": 1.0}})
    assert any("model.dropout_mode: should be 'standard' or 'locked' (got 'zoneout')" in line for line in lines), lines
    assert any(line.startswith("s.yaml: model.embedding_dropout: ") for line in lines), lines
    job = build_job({**base, "model": {"cell": "minlstm", "min_mlp": True, "dropout_mode": "locked",
                                       "embedding_dropout": 0.1}, "sweep": {"grid": {"model.cell": ["mingru"]}}})
    assert job.trials[0].run_config.model.min_mlp and job.trials[0].run_config.model.cell == "mingru"
