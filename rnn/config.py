"""Engine configuration: one small frozen dataclass per concern, carrying its own limits.

These are the engine's constructor arguments *and* the spec's sections: a spec's ``model:``
mapping is validated straight into :class:`ModelConfig` (the orchestrator runs pydantic over
these dataclasses, strict, unknown keys refused; see :mod:`orchestrator.spec.sections`), so
field names here are the spec's key names and each field's range is written once, here, as
``annotated_types`` metadata (``Annotated[int, Ge(1), Le(64)]``). This module does not import
pydantic: the engine runs where pydantic is not installed (a GPU box with only PyTorch), and
there the metadata is inert. The engine itself only guards against values it cannot run with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

try:
    from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
except ImportError:  # pragma: no cover - the engine without pydantic (and so without annotated_types)

    @dataclass(frozen=True)
    class _Bound:
        """Inert stand-in for an ``annotated_types`` bound: nothing validates here without pydantic."""

        value: Any

    Ge = Gt = Le = Lt = MaxLen = MinLen = _Bound  # type: ignore[assignment,misc]

Cell = Literal["lstm", "gru", "rnn", "mingru", "minlstm"]
#: ``model.dropout_mode``: a fresh mask per element (standard) or one per sequence, the same at every step (locked).
DropoutMode = Literal["standard", "locked"]
Level = Literal["char", "bpe", "word"]
#: ``data.val_mode``: validation windows each from a zero state, or the held-out split read as contiguous
#: streams with the recurrent state carried from window to window (see :mod:`rnn.evaluate`).
ValMode = Literal["windows", "stream"]
Optimizer = Literal["adamw", "adam", "sgd"]
Scheduler = Literal["onecycle", "cosine", "plateau", "step", "constant"]
#: What a schedule's progress counts: optimiser steps of the step budget, or training seconds of max_time_s.
ScheduleBy = Literal["steps", "time"]
Amp = Literal["auto", "off", "fp16", "bf16"]
DeviceName = Literal["auto", "cpu", "cuda", "mps"]
#: ``train.compile``: torch.compile the training forward (see :mod:`rnn.compile`).
Compile = Literal["off", "auto", "on"]
COMPILE_SETTINGS: tuple[str, ...] = ("off", "auto", "on")


def compile_setting(value: Any) -> Any:
    """``train.compile`` as written: YAML 1.1 reads a bare ``off``/``on`` as a boolean, which
    means that setting; anything else is returned for validation to judge."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value

CELLS: tuple[str, ...] = ("lstm", "gru", "rnn", "mingru", "minlstm")
#: The cells of Feng et al. 2024 ("Were RNNs All We Needed?"): gates from the input only, a parallel scan over time.
MIN_CELLS: tuple[str, ...] = ("mingru", "minlstm")
DROPOUT_MODES: tuple[str, ...] = ("standard", "locked")
LEVELS: tuple[str, ...] = ("char", "bpe", "word")

#: Default vocabulary sizes when a spec leaves ``vocab_size`` out (ignored for char).
DEFAULT_VOCAB_SIZE: dict[str, int] = {"bpe": 2048, "word": 10000}
#: The smallest vocabulary each trained tokenizer can have: byte-level BPE starts from all 256
#: byte values (and adds no special tokens); word level needs ``[UNK]`` plus one word.
MIN_VOCAB_SIZE: dict[str, int] = {"bpe": 256, "word": 2}


#: Largest accepted batch size (a typo should not allocate a terabyte).
MAX_BATCH_SIZE = 1_048_576
SEED_MAX = 2**32 - 1

#: How pydantic validates these dataclasses (read by ``orchestrator.spec``; a plain dict, so this
#: module needs no pydantic): unknown keys are errors, no ``"5"`` for an int or ``true`` for a
#: number (an int is fine where a float is expected), no NaN or infinity.
VALIDATION: dict[str, Any] = {"extra": "forbid", "strict": True, "allow_inf_nan": False}

Dim = Annotated[int, Ge(1), Le(65_536)]
BatchSize = Annotated[int, Ge(1), Le(MAX_BATCH_SIZE)]
Steps = Annotated[int, Ge(1), Le(10**9)]
Fraction = Annotated[float, Ge(0), Lt(1)]
NonNegative = Annotated[float, Ge(0)]
Seed = Annotated[int, Ge(0), Le(SEED_MAX)]


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
    """Set ``config["a"]["b"] = value`` for a dotted ``path="a.b"`` (a sweep's ``train.lr``),
    creating missing or null mappings."""
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


def resolved_vocab_size(level: str, vocab_size: Optional[int]) -> Optional[int]:
    """The vocabulary cap for bpe/word (``vocab_size``, else the level's default), None for char
    (its vocabulary is the training split's characters)."""
    if level == "char":
        return None
    return vocab_size or DEFAULT_VOCAB_SIZE[level]


#: ``train.min_lr_fraction``'s default: cosine decays to lr / 10, nanoGPT's ``min_lr``.
DEFAULT_MIN_LR_FRACTION = 0.1
#: ``data.val_max_chars``'s default: what an evaluation reads of a big corpus's held-out split, so
#: that at the default ``eval_every`` and batch shape it costs a small share of training time
#: (docs/benchmarks.md, "A 100 MB corpus"). Tiny Shakespeare's whole split is far below it.
DEFAULT_VAL_MAX_CHARS = 500_000


@dataclass(frozen=True)
class DataConfig:
    """Which text, how it is tokenized, and how it is cut into windows."""

    __pydantic_config__: ClassVar[dict[str, Any]] = VALIDATION

    # builtin | shakespeare | path to a UTF-8 text file (relative to the current directory)
    corpus: Annotated[str, MinLen(1), MaxLen(4096)] = "builtin"
    level: Level = "char"
    vocab_size: Optional[Annotated[int, Ge(2), Le(1_048_576)]] = None  # bpe/word; None -> DEFAULT_VOCAB_SIZE[level]
    seq_len: Annotated[int, Ge(1), Le(100_000)] = 100
    val_fraction: Fraction = 0.1
    # Evaluate only the first this-many characters of the held-out split (None: all of it): on a
    # big corpus a full pass dominates the run. The split itself does not move. The default is
    # more than Tiny Shakespeare's whole held-out split (111,540 characters).
    val_max_chars: Optional[Annotated[int, Ge(1), Le(10**12)]] = DEFAULT_VAL_MAX_CHARS
    # windows: each validation window of seq_len tokens starts from a zero state (comparable with every
    # earlier figure); stream: the split is read as contiguous streams, the state carried across windows,
    # so every token is predicted with all the text before it in its stream (how AWD-LSTM reports).
    val_mode: ValMode = "windows"

    def resolved_vocab_size(self) -> Optional[int]:
        """The vocabulary cap for bpe/word, or None for char (see :func:`resolved_vocab_size`)."""
        return resolved_vocab_size(self.level, self.vocab_size)


@dataclass(frozen=True)
class ModelConfig:
    """A recurrent language model. ``vocab_size`` comes from the tokenizer, not from here."""

    __pydantic_config__: ClassVar[dict[str, Any]] = VALIDATION

    cell: Cell = "lstm"
    embedding_dim: Dim = 128
    hidden_size: Dim = 512
    num_layers: Annotated[int, Ge(1), Le(64)] = 2
    dropout: Fraction = 0.1
    layer_norm: bool = False  # lstm only: the Ba et al. 2016 layer-norm LSTM
    bidirectional: bool = False  # ELMo-style: separate forward and backward stacks
    tie_weights: bool = False  # needs embedding_dim == hidden_size
    # DropConnect on the hidden-to-hidden weights, one mask per forward pass, in training (lstm, gru, rnn)
    weight_drop: Fraction = 0.0
    # standard: a new mask per element; locked: one mask per sequence, the same at every step
    dropout_mode: DropoutMode = "standard"
    embedding_dropout: Fraction = 0.0  # drops whole rows (tokens) of the embedding matrix, in training
    min_mlp: bool = False  # mingru/minlstm only: a pre-norm residual MLP (H -> 4H -> H) after each layer's cell


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after ``patience`` evaluations without a val-loss improvement of ``min_delta``."""

    __pydantic_config__: ClassVar[dict[str, Any]] = VALIDATION

    patience: Annotated[int, Ge(1), Le(1_000_000)] = 5
    min_delta: NonNegative = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, budget, evaluation and precision."""

    __pydantic_config__: ClassVar[dict[str, Any]] = VALIDATION

    batch_size: BatchSize = 64
    max_steps: Optional[Steps] = 1000
    # an epoch = train tokens / (batch_size * seq_len) steps
    max_epochs: Optional[Annotated[float, Gt(0), Le(1_000_000)]] = None
    max_time_s: Optional[Annotated[float, Gt(0), Le(31_536_000)]] = None  # wall-clock budget (see schedule_by)
    eval_every: Steps = 250
    optimizer: Optimizer = "adamw"
    lr: Annotated[float, Gt(0), Le(10)] = 2e-3
    weight_decay: NonNegative = 0.01
    scheduler: Scheduler = "onecycle"
    warmup_fraction: Fraction = 0.05  # cosine warmup; onecycle's pct_start
    # cosine: the lr it decays to at the end, as a fraction of lr (nanoGPT's min_lr = lr / 10)
    min_lr_fraction: Fraction = DEFAULT_MIN_LR_FRACTION
    # steps: onecycle/cosine/step span the step budget. time: they span max_time_s of training time
    # (evaluations and checkpoints excluded), which then ends the run, whatever the machine's speed.
    schedule_by: ScheduleBy = "steps"
    # None disables clipping (the engine also reads 0 that way; a spec asks for null, which says so)
    clip_grad_norm: Optional[Annotated[float, Gt(0)]] = 1.0
    label_smoothing: Fraction = 0.0
    # Truncated BPTT: the batch's rows are contiguous streams of the training split, each step reads the
    # next seq_len tokens of every stream and starts from the state the last step ended in (detached).
    # False: independent random windows, each from a zero state.
    stateful: bool = False
    amp: Amp = "auto"
    compile: Compile = "auto"  # off | auto | on; YAML's bare off/on (booleans) mean the same
    early_stopping: Optional[EarlyStopping] = None
    seed: Seed = 0
    device: DeviceName = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "compile", compile_setting(self.compile))
        if isinstance(self.early_stopping, dict):  # built from a plain mapping
            object.__setattr__(self, "early_stopping", EarlyStopping(**self.early_stopping))


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; what a checkpoint stores to rebuild it."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(
            data=DataConfig(**d.get("data", {})),
            model=ModelConfig(**d.get("model", {})),
            train=TrainConfig(**d.get("train", {})),
        )


@dataclass(frozen=True)
class ThroughputConfig:
    """A throughput sweep: samples/s by batch size (``kind: throughput``).

    ``batch_sizes="auto"`` starts at ``auto_start`` and doubles until OOM, until throughput
    improves by less than ``auto_min_gain``, past ``auto_max_batch_size``, or after
    ``auto_time_budget_s``.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = VALIDATION

    batch_sizes: Union[Literal["auto"], tuple[BatchSize, ...]] = (512, 1024, 2048)
    warmup_steps: Annotated[int, Ge(0), Le(1_000_000)] = 3
    measure_steps: Annotated[int, Ge(1), Le(1_000_000)] = 10
    auto_start: BatchSize = 32
    auto_max_batch_size: BatchSize = 65536
    auto_min_gain: Annotated[float, Ge(0), Le(10)] = 0.03
    auto_time_budget_s: Annotated[float, Gt(0), Le(604_800)] = 120.0
