"""Layer-norm LSTM: checked against a plain per-timestep reference written from Ba et al. 2016."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from rnn.lnlstm import LayerNormLSTM, ln_lstm_recurrence

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _layer_norm(v: torch.Tensor, gain: torch.Tensor, beta: torch.Tensor, eps: float):
    # Written out rather than F.layer_norm, so the reference shares no kernel with the module.
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm uses
    return (v - mean) / torch.sqrt(var + eps) * gain + beta


def reference_ln_lstm(
    m: LayerNormLSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
):
    """The textbook loop: x[:, t] per step, every LayerNorm a separate call, one gate at a time."""
    B, T, _ = x.shape
    H = m.hidden_size
    if state is None:
        state = (x.new_zeros(m.num_layers, B, H), x.new_zeros(m.num_layers, B, H))
    out = x
    hs, cs = [], []
    for k, layer in enumerate(m.layers):
        h, c = state[0][k], state[1][k]
        eps = layer.eps
        steps = []
        for t in range(T):
            x_t = out[:, t]
            gx = _layer_norm(x_t @ layer.w_x.weight.T, layer.ln_x.weight, layer.ln_x.bias, eps)
            gh = _layer_norm(h @ layer.w_h.weight.T, layer.ln_h.weight, layer.ln_h.bias, eps)
            a = gx + gh + layer.bias  # b after normalisation
            i = torch.sigmoid(a[:, 0:H])
            f = torch.sigmoid(a[:, H : 2 * H])
            g = torch.tanh(a[:, 2 * H : 3 * H])
            o = torch.sigmoid(a[:, 3 * H : 4 * H])
            c = f * c + i * g
            h = o * torch.tanh(_layer_norm(c, layer.ln_c.weight, layer.ln_c.bias, eps))
            steps.append(h)
        out = torch.stack(steps, dim=1)
        hs.append(h)
        cs.append(c)
    return out, (torch.stack(hs), torch.stack(cs))


@pytest.fixture(params=["auto", "torch"])
def recurrence(request) -> str:
    """Both recurrence paths: ``auto`` is the fused C++ path on the CPU (skipped if it cannot build)."""
    if request.param == "auto":
        from rnn.lnlstm import cpu

        if cpu.load() is None:
            pytest.skip("the C++ kernels could not be built here")
    return request.param


def _randomised(input_size: int, hidden: int, layers: int, seed: int = 0, recurrence: str = "auto") -> LayerNormLSTM:
    """A float64 LN-LSTM with every parameter (gains, betas, b too) random rather than its init."""
    torch.manual_seed(seed)
    m = LayerNormLSTM(input_size, hidden, num_layers=layers, recurrence=recurrence).to(F64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return m


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_reference_outputs_and_state(layers, with_state, recurrence):
    m = _randomised(5, 4, layers, recurrence=recurrence)
    x = torch.randn(3, 7, 5, dtype=F64)
    state = None
    if with_state:
        state = (torch.randn(layers, 3, 4, dtype=F64), torch.randn(layers, 3, 4, dtype=F64))
    out, (h, c) = m(x, state)
    ref_out, (ref_h, ref_c) = reference_ln_lstm(m, x, state)
    assert out.shape == (3, 7, 4) and h.shape == c.shape == (layers, 3, 4)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, ref_h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 2])
def test_gradients_match_reference(layers, recurrence):
    m = _randomised(5, 4, layers, seed=1, recurrence=recurrence)
    x = torch.randn(2, 6, 5, dtype=F64, requires_grad=True)
    h0 = torch.randn(layers, 2, 4, dtype=F64, requires_grad=True)
    c0 = torch.randn(layers, 2, 4, dtype=F64, requires_grad=True)
    # A random projection of every output, so each element's gradient is distinct.
    w_out, w_h, w_c = (torch.randn(2, 6, 4, dtype=F64), torch.randn(layers, 2, 4, dtype=F64),
                       torch.randn(layers, 2, 4, dtype=F64))

    def grads(fn):
        m.zero_grad()
        for t in (x, h0, c0):
            t.grad = None
        out, (h, c) = fn(m, x, (h0, c0))
        ((out * w_out).sum() + (h * w_h).sum() + (c * w_c).sum()).backward()
        named = {n: p.grad.clone() for n, p in m.named_parameters()}
        return named | {"x": x.grad.clone(), "h0": h0.grad.clone(), "c0": c0.grad.clone()}

    got = grads(lambda mod, inp, st: mod(inp, st))
    want = grads(reference_ln_lstm)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].abs().sum() > 0, f"{name} got no gradient"
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("layers", [1, 2])
def test_gradcheck_inputs_and_parameters(layers, recurrence):
    m = _randomised(3, 2, layers, seed=2, recurrence=recurrence)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    x = torch.randn(2, 3, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(layers, 2, 2, dtype=F64, requires_grad=True)
    c0 = torch.randn(layers, 2, 2, dtype=F64, requires_grad=True)

    def fn(x, h0, c0, *ps):
        out, (h, c) = functional_call(m, dict(zip(names, ps, strict=True)), (x, (h0, c0)))
        return out, h, c

    assert torch.autograd.gradcheck(fn, (x, h0, c0, *params), eps=1e-6, atol=1e-7)


def test_forget_bias_of_one_survives_normalisation():
    # Zero input and zero h: W_x x = W_h h = 0, so each LayerNorm returns its beta (0 at init)
    # and the gate pre-activations are exactly b. With c0 != 0 the new cell state is
    # sigmoid(f) * c0 + sigmoid(i) * tanh(g) = sigmoid(1) * c0 + 0.5 * tanh(0).
    torch.manual_seed(0)
    m = LayerNormLSTM(3, 4).to(F64)
    c0 = torch.randn(1, 2, 4, dtype=F64)
    _, (_, c1) = m(torch.zeros(2, 1, 3, dtype=F64), (torch.zeros(1, 2, 4, dtype=F64), c0))
    sigmoid_1 = 1.0 / (1.0 + math.exp(-1.0))
    torch.testing.assert_close(c1, sigmoid_1 * c0, rtol=1e-14, atol=1e-14)
    # The seed's bug, for contrast: the same b *before* LayerNorm is standardised away, and
    # the forget pre-activation becomes (1 - 1/4) / std(b) = sqrt(3), not 1.
    pre_norm = torch.nn.functional.layer_norm(m.layers[0].bias, (16,), eps=0.0)
    torch.testing.assert_close(pre_norm[4:8], torch.full((4,), math.sqrt(3.0), dtype=F64))


def test_init():
    m = LayerNormLSTM(6, 5, num_layers=2)
    for k, layer in enumerate(m.layers):
        H = 5
        assert layer.w_x.bias is None and layer.w_h.bias is None  # LN would cancel them
        expected_b = torch.zeros(4 * H)
        expected_b[H : 2 * H] = 1.0  # gate order (i, f, g, o)
        assert torch.equal(layer.bias.detach(), expected_b)
        for ln in (layer.ln_x, layer.ln_h, layer.ln_c):
            assert torch.equal(ln.weight.detach(), torch.ones_like(ln.weight))
            assert torch.equal(ln.bias.detach(), torch.zeros_like(ln.bias))
        fan_in = 6 if k == 0 else H
        for w, fin in ((layer.w_x.weight, fan_in), (layer.w_h.weight, H)):
            bound = math.sqrt(6.0 / (fin + 4 * H))  # Xavier-uniform over the [4H, in] matrix
            assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound


def test_state_carries_across_chunks():
    m = _randomised(3, 4, 2, seed=3)
    x = torch.randn(2, 9, 3, dtype=F64)
    whole, (h, c) = m(x)
    first, state = m(x[:, :4])
    second, (h2, c2) = m(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close((h2, c2), (h, c), rtol=1e-13, atol=1e-13)


def test_recurrence_function_runs_on_its_own():
    # The seam a fused kernel would replace: given LN_x(W_x x), it is the whole layer.
    layer = _randomised(3, 4, 1, seed=4).layers[0]
    x = torch.randn(2, 5, 3, dtype=F64)
    h0 = torch.zeros(2, 4, dtype=F64)
    out, (h, c) = ln_lstm_recurrence(
        layer.ln_x(layer.w_x(x)), h0, h0, layer.w_h.weight, layer.ln_h.weight, layer.ln_h.bias,
        layer.bias, layer.ln_c.weight, layer.ln_c.bias, layer.eps,
    )
    want, (want_h, want_c) = layer(x, (h0, h0))
    assert torch.equal(out, want) and torch.equal(h, want_h) and torch.equal(c, want_c)
    assert torch.equal(out[:, -1], h)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    two = LayerNormLSTM(3, 8, num_layers=2, dropout=0.5)
    two.train()
    assert not torch.equal(two(x)[0], two(x)[0])  # fresh masks each call
    two.eval()
    assert torch.equal(two(x)[0], two(x)[0])
    one = LayerNormLSTM(3, 8, num_layers=1, dropout=0.5).train()  # nothing between layers
    assert torch.equal(one(x)[0], one(x)[0])


def test_bf16_autocast_runs_and_stays_close_to_fp32():
    torch.manual_seed(0)
    m = LayerNormLSTM(8, 16, num_layers=2)
    x = torch.randn(4, 10, 8)
    ref, _ = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = m(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=0.05)


def test_bad_shapes_are_reported():
    m = LayerNormLSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"expects input \[batch, time, 3\]"):
        m(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"state must be \(h0, c0\) each \[2, 2, 4\]"):
        m(torch.randn(2, 5, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        LayerNormLSTM(3, 4, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        LayerNormLSTM(3, 4, dropout=1.0)
