"""Language models: shapes, initialisation, the causal contract (no leak of the future), step()."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from rnn.config import ModelConfig
from rnn.lnlstm import LayerNormLSTM
from rnn.minstack import MinStack
from rnn.models import LanguageModel, LMOutput, build_model

V, B, L = 11, 3, 7
TINY = ModelConfig(embedding_dim=8, hidden_size=12, num_layers=2, dropout=0.1)

#: (cell, layer_norm) pairs the engine can build.
VARIANTS = [("lstm", False), ("gru", False), ("rnn", False), ("lstm", True), ("mingru", False), ("minlstm", False)]
VARIANT_IDS = ["lstm", "gru", "rnn", "ln-lstm", "mingru", "minlstm"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(
    cell: str = "lstm", layer_norm: bool = False, seed: int = 0, **overrides
) -> LanguageModel:
    torch.manual_seed(seed)
    return build_model(replace(TINY, cell=cell, layer_norm=layer_norm, **overrides), V)


def _window(seed: int = 0, length: int = L) -> torch.Tensor:
    return torch.randint(0, V, (B, length), generator=torch.Generator().manual_seed(seed))


# --- shapes and parameters -------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "layer_norm"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_output_shapes(cell, layer_norm, bidirectional):
    model = _model(cell, layer_norm, bidirectional=bidirectional)
    out = model(_window())
    assert isinstance(out, LMOutput)
    assert out.logits.shape == (B, L - 1, V)
    if bidirectional:
        assert out.backward_logits is not None and out.backward_logits.shape == (B, L - 1, V)
    else:
        assert out.backward_logits is None
    stack = LayerNormLSTM if layer_norm else {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "mingru": MinStack,
                                              "minlstm": MinStack}[cell]
    assert type(model.forward_rnn) is stack
    if cell == "rnn":
        assert model.forward_rnn.nonlinearity == "tanh"
    logits, state = model.step(_window()[:, :4])
    assert logits.shape == (B, 4, V)


@pytest.mark.parametrize(("cell", "layer_norm"), VARIANTS, ids=VARIANT_IDS)
def test_bidirectional_is_two_separate_unidirectional_stacks(cell, layer_norm):
    model = _model(cell, layer_norm, bidirectional=True)
    assert model.backward_rnn is not None and model.backward_rnn is not model.forward_rnn
    for stack in (model.forward_rnn, model.backward_rnn):
        assert not getattr(stack, "bidirectional", False)
    uni = _model(cell, layer_norm)
    stack_params = sum(p.numel() for p in uni.forward_rnn.parameters())
    assert model.num_parameters() == uni.num_parameters() + stack_params  # shared embedding, head


@pytest.mark.parametrize("bidirectional", [False, True])
def test_num_parameters_counts_every_parameter_once(bidirectional):
    model = _model(bidirectional=bidirectional)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    # Hand count: embedding + head + per layer 4H x (in + H) weights and two 4H biases.
    E, H = TINY.embedding_dim, TINY.hidden_size
    stack = sum(4 * H * (inp + H) + 8 * H for inp in (E, H))
    expected = V * E + H * V + V + stack * (2 if bidirectional else 1)
    assert model.num_parameters() == expected


def test_tied_weights_share_storage_and_reduce_the_count():
    untied = _model(embedding_dim=12)
    tied = _model(embedding_dim=12, tie_weights=True)
    assert tied.head.weight is tied.embedding.weight
    assert tied.head.weight.data_ptr() == tied.embedding.weight.data_ptr()
    assert tied.num_parameters() == untied.num_parameters() - V * 12
    # A gradient step through the head moves the embedding too.
    tied(_window()).logits.sum().backward()
    assert tied.embedding.weight.grad is not None
    assert torch.count_nonzero(tied.embedding.weight.grad) > 0


# --- config errors ---------------------------------------------------------------------------


def test_unknown_cell_lists_the_options():
    with pytest.raises(ValueError, match=r"unknown cell 'tcn'; expected one of lstm, gru, rnn"):
        build_model(replace(TINY, cell="tcn"), V)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_layer_norm_is_lstm_only(cell):
    needle = rf"model.layer_norm: .*only for cell 'lstm' \(got cell '{cell}'\)"
    with pytest.raises(ValueError, match=needle):
        build_model(replace(TINY, cell=cell, layer_norm=True), V)


def test_tie_weights_needs_equal_sizes():
    needle = r"need embedding_dim == hidden_size \(got embedding_dim=8, hidden_size=12\)"
    with pytest.raises(ValueError, match=needle):
        build_model(replace(TINY, tie_weights=True), V)


@pytest.mark.parametrize(
    ("overrides", "vocab", "needle"),
    [({"num_layers": 0}, V, "model.num_layers"), ({"dropout": 1.0}, V, "model.dropout"),
     ({}, 0, "vocab_size must be >= 1")],
)
def test_unrunnable_values_are_refused(overrides, vocab, needle):
    with pytest.raises(ValueError, match=needle):
        build_model(replace(TINY, **overrides), vocab)


def test_window_must_have_two_tokens():
    with pytest.raises(ValueError, match=r"length >= 2"):
        _model()(_window(length=1))


# --- initialisation --------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_forget_bias_sums_to_one_in_every_layer(bidirectional):
    model = _model("lstm", bidirectional=bidirectional)
    H = TINY.hidden_size
    stacks = [model.forward_rnn] + ([model.backward_rnn] if bidirectional else [])
    for stack in stacks:
        for k in range(TINY.num_layers):
            b_ih, b_hh = getattr(stack, f"bias_ih_l{k}"), getattr(stack, f"bias_hh_l{k}")
            expected = torch.zeros(4 * H)
            expected[H : 2 * H] = 1.0  # (i, f, g, o)
            assert torch.equal(b_ih.detach(), expected)
            assert torch.equal(b_hh.detach(), torch.zeros(4 * H))
            for kind, fan_in in (("ih", TINY.embedding_dim if k == 0 else H), ("hh", H)):
                w = getattr(stack, f"weight_{kind}_l{k}")
                bound = math.sqrt(6.0 / (fan_in + 4 * H))  # Xavier-uniform, not PyTorch's default
                assert 0.5 * bound < w.abs().max() <= bound


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_other_cells_have_zero_biases(cell):
    model = _model(cell)
    for name, p in model.forward_rnn.named_parameters():
        if name.startswith("bias"):
            assert torch.count_nonzero(p) == 0, name


def test_ln_lstm_forget_bias_is_the_post_norm_bias():
    model = _model("lstm", layer_norm=True, bidirectional=True)
    H = TINY.hidden_size
    for stack in (model.forward_rnn, model.backward_rnn):
        for layer in stack.layers:
            assert torch.equal(layer.bias[H : 2 * H].detach(), torch.ones(H))
            assert torch.count_nonzero(layer.bias[:H]) == 0
            assert torch.count_nonzero(layer.bias[2 * H :]) == 0


def test_embedding_and_head_init():
    torch.manual_seed(0)
    model = build_model(replace(TINY, embedding_dim=64), 500)
    assert abs(model.embedding.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(model.head.bias) == 0


@pytest.mark.parametrize("layer_norm", [False, True], ids=["lstm", "ln-lstm"])
def test_forget_gate_preactivation_is_one_at_zero_input(layer_norm):
    # Zero input and zero h: every gate pre-activation is its bias, so the new cell state is
    # sigmoid(1) * c0 + sigmoid(0) * tanh(0) = sigmoid(1) * c0.
    model = _model("lstm", layer_norm, num_layers=1).double()
    c0 = torch.randn(1, 2, TINY.hidden_size, dtype=torch.float64)
    h0 = torch.zeros_like(c0)
    x = torch.zeros(2, 1, TINY.embedding_dim, dtype=torch.float64)
    _, (_, c1) = model.forward_rnn(x, (h0, c0))
    torch.testing.assert_close(c1, torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)) * c0)


# --- causality: no leak of the future --------------------------------------------------------


def _perturb(window: torch.Tensor, positions: slice) -> torch.Tensor:
    out = window.clone()
    shift = 1 + torch.arange(out[:, positions].shape[1], device=out.device)
    out[:, positions] = (out[:, positions] + shift) % V
    assert (out[:, positions] != window[:, positions]).all()
    return out


def _assert_causal(model: LanguageModel, window: torch.Tensor, t: int) -> None:
    """Forward logits at <= t ignore tokens after t; backward logits at >= t ignore tokens <= t.

    Run the model in float64: the logits of a freshly initialised model are ~1e-4, so
    "unchanged" (atol 1e-12) and "changed" (> 1e-9) are far apart there.
    """
    n = window.shape[1] - 1  # logit positions
    with torch.no_grad():
        base = model(window)
        after = model(_perturb(window, slice(t + 1, None)))
        before = model(_perturb(window, slice(None, t + 1)))
    # Forward position s has read window[:, :s+1]: unchanged up to t ...
    torch.testing.assert_close(
        after.logits[:, : t + 1], base.logits[:, : t + 1], rtol=0, atol=1e-12
    )
    # ... and it does see the perturbation after t (the check is live, not vacuous).
    if t + 1 < n:
        assert (after.logits[:, t + 1 :] - base.logits[:, t + 1 :]).abs().amax() > 1e-9
    if base.backward_logits is not None:
        # Backward position s has read window[:, s+1:]: unchanged from t on, changed before.
        torch.testing.assert_close(
            before.backward_logits[:, t:], base.backward_logits[:, t:], rtol=0, atol=1e-12
        )
        if t > 0:
            assert (before.backward_logits[:, :t] - base.backward_logits[:, :t]).abs().amax() > 1e-9


@pytest.mark.parametrize(("cell", "layer_norm"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_no_leak_of_the_future(cell, layer_norm, bidirectional):
    model = _model(cell, layer_norm, bidirectional=bidirectional, num_layers=2).double().eval()
    window = _window(1)
    for t in range(L - 1):
        _assert_causal(model, window, t)


class _StackedBiLSTM(nn.Module):
    """The seed-style mistake: nn.LSTM(bidirectional=True, num_layers=2) as the 'forward' stack."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size, hidden_size // 2, num_layers=2, batch_first=True, bidirectional=True
        )

    def forward(self, x, state=None):
        return self.lstm(x)[0], None  # [B, T, H]: halves from both directions


def test_leak_check_catches_a_stacked_bidirectional_lstm():
    model = _model("lstm", bidirectional=True).eval()
    torch.manual_seed(1)
    model.forward_rnn = _StackedBiLSTM(TINY.embedding_dim, TINY.hidden_size)
    model.double()
    with pytest.raises(AssertionError, match="not close"):  # forward logits at <= t moved
        _assert_causal(model, _window(1), t=2)


def test_forward_and_backward_predict_the_right_targets():
    # Positions line up with the targets: position t's forward logits are a function of
    # window[:, :t+1] only (so its target is window[:, t+1]), and the backward logits at t of
    # window[:, t+1:] only (target window[:, t]). Checked by the exact dependency frontier.
    model = _model("lstm", bidirectional=True).double().eval()
    window = _window(2)
    t = 3
    with torch.no_grad():
        base = model(window)
        at_t = model(_perturb(window, slice(t, t + 1)))
        at_next = model(_perturb(window, slice(t + 1, t + 2)))
    assert not torch.allclose(at_t.logits[:, t], base.logits[:, t])  # reads its own input
    torch.testing.assert_close(at_next.logits[:, t], base.logits[:, t])  # not its target
    assert not torch.allclose(at_next.backward_logits[:, t], base.backward_logits[:, t])
    torch.testing.assert_close(at_t.backward_logits[:, t], base.backward_logits[:, t])


# --- step() ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "layer_norm"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_step_token_by_token_matches_forward(cell, layer_norm, bidirectional):
    model = _model(cell, layer_norm, bidirectional=bidirectional).eval()
    window = _window(3)
    with torch.no_grad():
        full = model(window).logits  # [B, L-1, V]
        state = None
        pieces = []
        for t in range(L - 1):
            logits, state = model.step(window[:, t : t + 1], state)
            pieces.append(logits)
        chunked, _ = model.step(window[:, :3])
        rest, _ = model.step(window[:, 3:-1], model.step(window[:, :3])[1])
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([chunked, rest], 1), full, rtol=1e-5, atol=1e-6)


# --- training behaviour ----------------------------------------------------------------------


def test_dropout_is_active_in_training_only():
    model = _model(dropout=0.5)
    window = _window()
    model.train()
    assert not torch.equal(model(window).logits, model(window).logits)
    model.eval()
    assert torch.equal(model(window).logits, model(window).logits)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["lstm", "ln-lstm"])
def test_bidirectional_loss_trains_both_stacks(layer_norm):
    model = _model("lstm", layer_norm, bidirectional=True)
    window = _window()
    out = model(window)
    loss_f = nn.functional.cross_entropy(out.logits.reshape(-1, V), window[:, 1:].reshape(-1))
    loss_b = nn.functional.cross_entropy(
        out.backward_logits.reshape(-1, V), window[:, :-1].reshape(-1)
    )
    assert math.isclose(loss_f.item(), math.log(V), rel_tol=0.05)  # near-uniform at init
    ((loss_f + loss_b) / 2).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_float64_model_runs():
    # State tensors follow the parameters' dtype/device (new_zeros), nothing is hard-coded.
    for layer_norm in (False, True):
        out = _model("lstm", layer_norm, bidirectional=True).double()(_window())
        assert out.logits.dtype == torch.float64
