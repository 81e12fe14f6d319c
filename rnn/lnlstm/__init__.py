"""The layer-normalised LSTM (Ba, Kiros & Hinton 2016) and the implementations of its recurrence.

One concept, one module each:

- :mod:`~rnn.lnlstm.module`: the modules (:class:`LayerNormLSTM`, :class:`LayerNormLSTMLayer`) and
  :func:`ln_lstm_recurrence`, the one function a layer's time loop goes through.
- :mod:`~rnn.lnlstm.reference`: the recurrence as a plain PyTorch loop (the ``torch`` path).
- :mod:`~rnn.lnlstm.path`: :class:`LNLSTMPath`, which implementation a layer runs, chosen when it is
  built and held by it.
- :mod:`~rnn.lnlstm.kernels`: the kernels' contract, with :class:`SavedTensors` and
  :class:`KernelGrads` naming what they exchange.
- :mod:`~rnn.lnlstm.fused`: :class:`FusedLNLSTM`, the autograd Function over a path's kernels.
- :mod:`~rnn.lnlstm.cpu` (+ ``csrc/lnlstm_cpu.cpp``): the C++ kernels for the CPU, built on first use.
- :mod:`~rnn.lnlstm.triton_kernels`: the Triton kernels for CUDA (imported only where Triton is).
- :mod:`~rnn.lnlstm.loop_graphs`: CUDA graphs of the Triton loops.
- :mod:`~rnn.lnlstm.onednn`: the CPU path's large GEMMs on oneDNN or MKL, whichever is faster here.
- :mod:`~rnn.lnlstm.self_check`: kernels checked against the loop before first use.
- :mod:`~rnn.lnlstm.once`: loaders whose result is kept for the process.
"""

from rnn.lnlstm.fused import FusedLNLSTM
from rnn.lnlstm.kernels import KernelGrads, Kernels, SavedTensors
from rnn.lnlstm.module import LayerNormLSTM, LayerNormLSTMLayer, eager_under_compile, ln_lstm_recurrence
from rnn.lnlstm.path import RECURRENCE_CHOICES, LNLSTMPath, RecurrenceChoice, RecurrencePath
from rnn.lnlstm.reference import LSTMState, ln_lstm_recurrence_reference

__all__ = [
    "RECURRENCE_CHOICES",
    "FusedLNLSTM",
    "KernelGrads",
    "Kernels",
    "LNLSTMPath",
    "LSTMState",
    "LayerNormLSTM",
    "LayerNormLSTMLayer",
    "RecurrenceChoice",
    "RecurrencePath",
    "SavedTensors",
    "eager_under_compile",
    "ln_lstm_recurrence",
    "ln_lstm_recurrence_reference",
]
