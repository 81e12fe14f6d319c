"""Engine configuration: one small frozen dataclass per concern.

These are the engine's constructor arguments. The orchestrator validates a YAML spec
(ranges, closed sets, every problem at once) and then builds these with
``DataConfig(**spec.data.model_dump())`` and friends, so field names here are the
spec's key names. The engine itself only guards against values it cannot run with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

Cell = Literal["lstm", "gru", "rnn"]
Level = Literal["char", "bpe", "word"]
Optimizer = Literal["adamw", "adam", "sgd"]
Scheduler = Literal["onecycle", "cosine", "plateau", "step", "constant"]
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

CELLS: tuple[str, ...] = ("lstm", "gru", "rnn")
LEVELS: tuple[str, ...] = ("char", "bpe", "word")

#: Default vocabulary sizes when a spec leaves ``vocab_size`` out (ignored for char).
DEFAULT_VOCAB_SIZE: dict[str, int] = {"bpe": 2048, "word": 10000}
#: The smallest vocabulary each trained tokenizer can have: byte-level BPE starts from all 256
#: byte values (and adds no special tokens); word level needs ``[UNK]`` plus one word.
MIN_VOCAB_SIZE: dict[str, int] = {"bpe": 256, "word": 2}


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


@dataclass(frozen=True)
class DataConfig:
    """Which text, how it is tokenized, and how it is cut into windows."""

    corpus: str = "builtin"  # builtin | shakespeare | path to a UTF-8 text file
    level: Level = "char"
    vocab_size: Optional[int] = None  # bpe/word; None -> DEFAULT_VOCAB_SIZE[level]
    seq_len: int = 100
    val_fraction: float = 0.1

    def resolved_vocab_size(self) -> Optional[int]:
        """The vocabulary cap for bpe/word, or None for char (see :func:`resolved_vocab_size`)."""
        return resolved_vocab_size(self.level, self.vocab_size)


@dataclass(frozen=True)
class ModelConfig:
    """A recurrent language model. ``vocab_size`` comes from the tokenizer, not from here."""

    cell: Cell = "lstm"
    embedding_dim: int = 128
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.1
    layer_norm: bool = False  # lstm only: the Ba et al. 2016 layer-norm LSTM
    bidirectional: bool = False  # ELMo-style: separate forward and backward stacks
    tie_weights: bool = False  # needs embedding_dim == hidden_size


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after ``patience`` evaluations without a val-loss improvement of ``min_delta``."""

    patience: int = 5
    min_delta: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, budget, evaluation and precision."""

    batch_size: int = 64
    max_steps: Optional[int] = 1000
    max_epochs: Optional[float] = None  # an epoch = train tokens / (batch_size * seq_len) steps
    max_time_s: Optional[float] = None  # wall-clock budget
    eval_every: int = 250
    optimizer: Optimizer = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.01
    scheduler: Scheduler = "onecycle"
    warmup_fraction: float = 0.05  # cosine warmup; onecycle's pct_start
    clip_grad_norm: Optional[float] = 1.0  # None or 0 disables clipping
    label_smoothing: float = 0.0
    amp: Amp = "auto"
    compile: Compile = "auto"  # off | auto | on; YAML's bare off/on (booleans) mean the same
    early_stopping: Optional[EarlyStopping] = None
    seed: int = 0
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

    batch_sizes: Any = (512, 1024, 2048)  # tuple of ints, or "auto"
    warmup_steps: int = 3
    measure_steps: int = 10
    auto_start: int = 32
    auto_max_batch_size: int = 65536
    auto_min_gain: float = 0.03
    auto_time_budget_s: float = 120.0
