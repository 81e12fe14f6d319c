"""The rules of one trial config: field values as pydantic checked them, then the rules that
read several fields at once (``layer_norm`` only with ``lstm``, ``weight_drop`` not with the
min cells, ``stateful`` training not bidirectional, ``tie_weights`` needs equal
sizes, a training budget, a corpus file that exists, a vocabulary no smaller than the
tokenizer's floor, a model under :data:`~orchestrator.spec.schema.MAX_PARAMETERS`).

Cross-field rules run on the field values, skipping any field pydantic already refused, so
one pass reports everything. Each problem names the fields it read (``involves``), so a sweep
can pin it on the swept value that caused it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from orchestrator.errors import Problem
from orchestrator.spec.problems import problems_from_pydantic
from orchestrator.spec.schema import MAX_PARAMETERS, SECTIONS, config_sections
from orchestrator.spec.sections import BAD, field_names, is_section, section_values, validate_section
from rnn.config import DEFAULT_MIN_LR_FRACTION, DEFAULT_VOCAB_SIZE, MIN_VOCAB_SIZE, EarlyStopping, resolved_vocab_size
from rnn.paths import not_a_file

#: Vocabulary assumed for char-level size estimates (the real one is the training split's characters).
CHAR_VOCAB_ESTIMATE = 256
BUILTIN_CORPORA = ("builtin", "shakespeare")
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
#: minGRU/minLSTM: projections of the input per layer (rnn.mincells.GATES) and the block's MLP width (rnn.minstack).
_MIN_GATES = {"mingru": 2, "minlstm": 3}
_MLP_RATIO = 4


def vocab_estimate(level: str, vocab_size: Optional[int]) -> int:
    """The vocabulary size used for estimates: the engine's cap for bpe/word
    (:func:`rnn.config.resolved_vocab_size`), a generous guess for char."""
    return resolved_vocab_size(level, vocab_size) or CHAR_VOCAB_ESTIMATE


def estimate_parameters(model: Mapping[str, Any], vocab_size: int) -> int:
    """Parameters of a model config, by arithmetic (no torch): embedding, recurrent stacks, heads.

    PyTorch-style cells with two bias vectors; layer norm adds gains and biases; a bidirectional
    model has two stacks and two heads. Close enough to refuse absurd sizes and to estimate cost.
    """
    emb, hidden, layers = model["embedding_dim"], model["hidden_size"], model["num_layers"]
    if model["cell"] in _MIN_GATES:
        # per layer: RMSNorm, the input projection [G*H, in] + bias, W_o [H, H] + bias; with min_mlp an RMSNorm and
        # an MLP H -> 4H -> H; a final RMSNorm
        gates, mlp = _MIN_GATES[model["cell"]], _MLP_RATIO * hidden
        block_mlp = hidden + 2 * hidden * mlp + mlp + hidden if model.get("min_mlp") else 0
        stack = hidden + sum((emb if i == 0 else hidden) * (gates * hidden + 1) + gates * hidden + hidden * (hidden + 1)
                             + block_mlp for i in range(layers))
    else:
        gates = _GATES[model["cell"]]
        # per layer: weight_ih [gates*H, in], weight_hh [gates*H, H], bias_ih and bias_hh [gates*H]
        stack = sum(gates * hidden * ((emb if i == 0 else hidden) + hidden + 2) for i in range(layers))
    if model.get("layer_norm"):
        stack += layers * (2 * gates * hidden + 2 * hidden)
    directions = 2 if model.get("bidirectional") else 1
    head = (0 if model.get("tie_weights") else hidden * vocab_size) + vocab_size
    return vocab_size * emb + directions * (stack + head)


def field_values(cls: type, raw: Any, prefix: str) -> tuple[Optional[Any], dict[str, Any], list[Problem]]:
    """Validate one section: (the section, or None if refused; its field values with defaults
    filled and refused ones as :data:`BAD`; its field problems under ``prefix``).

    ``cls`` is an engine config dataclass (a trial's section, see
    :mod:`orchestrator.spec.sections`) or a pydantic model (``resources``).
    """
    if is_section(cls):
        return validate_section(cls, raw, prefix)
    assert issubclass(cls, BaseModel)
    try:
        section = cls.model_validate(raw)
        return section, section.model_dump(), []
    except ValidationError as e:
        problems = problems_from_pydantic(e, cls, (prefix,))
        locs = [err["loc"] for err in e.errors()]
    whole = not isinstance(raw, dict) or any(len(loc) == 0 for loc in locs)
    bad = {loc[0] for loc in locs if loc}
    values = {
        name: BAD if whole or name in bad else raw.get(name, f.get_default(call_default_factory=True))
        for name, f in cls.model_fields.items()
    }
    return None, values, problems


def _ok(*values: Any) -> bool:
    return all(v is not BAD for v in values)


def cross_problems(v: Mapping[str, Mapping[str, Any]], kind: str, res: Mapping[str, Any]) -> list[Problem]:
    """Rules that read several fields; each problem lists the fields it read in ``involves``."""
    data, model, train = v["data"], v["model"], v["train"]
    out: list[Problem] = []
    if _ok(model["layer_norm"], model["cell"]) and model["layer_norm"] and model["cell"] != "lstm":
        out.append(Problem(
            "model.layer_norm", f"the layer-norm cell exists for lstm only (got cell {model['cell']!r}); "
            "set layer_norm: false or cell: lstm", involves=("model.layer_norm", "model.cell")))
    if _ok(model["weight_drop"], model["cell"]) and model["weight_drop"] and model["cell"] in _MIN_GATES:
        out.append(Problem(
            "model.weight_drop", f"cell {model['cell']} has no hidden-to-hidden weights to drop (its gates read the "
            "input only); set weight_drop: 0 or use lstm, gru or rnn", got=model["weight_drop"],
            involves=("model.weight_drop", "model.cell")))
    if _ok(model["min_mlp"], model["cell"]) and model["min_mlp"] and model["cell"] not in _MIN_GATES:
        out.append(Problem(
            "model.min_mlp", f"the MLP block is part of the min cells' layers only (got cell {model['cell']!r}); set "
            "min_mlp: false or cell: mingru or minlstm", involves=("model.min_mlp", "model.cell")))
    tie = (model["tie_weights"], model["embedding_dim"], model["hidden_size"])
    if _ok(*tie) and tie[0] and tie[1] != tie[2]:
        out.append(Problem(
            "model.tie_weights", f"needs embedding_dim == hidden_size (got embedding_dim {tie[1]}, hidden_size "
            f"{tie[2]})", involves=("model.tie_weights", "model.embedding_dim", "model.hidden_size")))
    if _ok(train["stateful"], model["bidirectional"]) and train["stateful"]:
        if kind != "train":
            out.append(Problem("train.stateful", "carries the state between training steps; a throughput job times "
                               "independent steps: set stateful: false", involves=("train.stateful",)))
        elif model["bidirectional"]:
            out.append(Problem(
                "train.stateful", "a bidirectional model's backward stack reads each window from its end, so no state "
                "carries on to the next window; set stateful: false or bidirectional: false",
                involves=("train.stateful", "model.bidirectional")))
    budget = ("max_steps", "max_epochs", "max_time_s")
    if kind == "train" and _ok(*(train[b] for b in budget)) and all(train[b] is None for b in budget):
        out.append(Problem("train", "no budget: set at least one of max_steps, max_epochs, max_time_s",
                           involves=tuple(f"train.{b}" for b in budget)))
    by, sched, max_time = train["schedule_by"], train["scheduler"], train["max_time_s"]
    floor = train["min_lr_fraction"]
    if _ok(floor, sched) and floor != DEFAULT_MIN_LR_FRACTION and sched != "cosine":
        out.append(Problem("train.min_lr_fraction", f"is the lr a cosine schedule ends at; scheduler {sched} does "
                           "not decay to one: set scheduler: cosine or leave min_lr_fraction out", got=floor,
                           involves=("train.min_lr_fraction", "train.scheduler")))
    if kind == "train" and _ok(by, sched, max_time) and by == "time":
        if max_time is None:
            out.append(Problem("train.schedule_by", "time needs train.max_time_s, the budget the schedule spans "
                               "(training seconds)", involves=("train.schedule_by", "train.max_time_s")))
        steps = [f"max_{b}" for b in ("steps", "epochs") if _ok(train[f"max_{b}"]) and train[f"max_{b}"] is not None]
        if steps:
            out.append(Problem("train.schedule_by", f"time ends the run at max_time_s: set {' and '.join(steps)} to "
                               "null, so no step budget stops it before its schedule ends",
                               involves=("train.schedule_by", *(f"train.{b}" for b in steps))))
        if sched not in ("onecycle", "cosine", "step"):
            out.append(Problem("train.schedule_by", f"time stretches a onecycle, cosine or step schedule over "
                               f"max_time_s; {sched} has no length to stretch", got=by,
                               involves=("train.schedule_by", "train.scheduler")))
    corpus = data["corpus"]
    if _ok(corpus) and corpus not in BUILTIN_CORPORA:
        path = Path(corpus).expanduser()  # as rnn.corpus.load_corpus reads it
        what = not_a_file(path)
        if what is not None:
            out.append(Problem(
                "data.corpus", f"{what} ({path.absolute()}; relative paths are resolved against the current "
                f"directory); use builtin, shakespeare or a UTF-8 text file", got=corpus, involves=("data.corpus",)))
    level, vocab = data["level"], data["vocab_size"]
    if _ok(level, vocab) and level in MIN_VOCAB_SIZE and vocab is not None and vocab < MIN_VOCAB_SIZE[level]:
        floor = MIN_VOCAB_SIZE[level]
        why = "the 256 byte values are its base alphabet" if level == "bpe" else "[UNK] and at least one word"
        out.append(Problem(
            "data.vocab_size", f"a {level} vocabulary has at least {floor} entries ({why}); use vocab_size >= "
            f"{floor}, or leave it out for {DEFAULT_VOCAB_SIZE[level]}", got=vocab,
            involves=("data.vocab_size", "data.level")))
    if _ok(*model.values(), level, vocab):
        params = estimate_parameters(model, vocab_estimate(level, vocab))
        if params > MAX_PARAMETERS:
            out.append(Problem(
                "model", f"about {params:.3g} parameters, more than the limit of {MAX_PARAMETERS:.0e}; reduce "
                "hidden_size, num_layers or embedding_dim", involves=tuple(f"model.{k}" for k in model)
                + ("data.level", "data.vocab_size")))
    if _ok(train["device"], res["gpus_per_trial"]) and train["device"] == "cuda" and not res["gpus_per_trial"]:
        out.append(Problem(
            "train.device", "cuda needs resources.gpus_per_trial > 0 (a trial that reserves no GPU sees none); "
            "use device: auto or reserve a GPU", involves=("train.device",)))
    tp = v.get("throughput")
    if tp and _ok(tp["auto_start"], tp["auto_max_batch_size"]) and tp["auto_start"] > tp["auto_max_batch_size"]:
        out.append(Problem(
            "throughput.auto_start", f"should not exceed auto_max_batch_size ({tp['auto_max_batch_size']})",
            got=tp["auto_start"], involves=("throughput.auto_start", "throughput.auto_max_batch_size")))
    return out


def check_config(
    config: Mapping[str, Any],
    kind: str,
    resources: Mapping[str, Any],
    known: Optional[Mapping[str, Any]] = None,
) -> tuple[Optional[dict[str, Any]], list[Problem]]:
    """Validate one trial config: (its sections by name, or None if any problem; the problems).

    ``config`` holds the sections as raw mappings; a section in ``known`` was validated already
    (the spec's own, where no swept value lands) and is used as it is, not validated again.
    """
    sections: dict[str, Any] = {}
    values: dict[str, Mapping[str, Any]] = {}
    problems: list[Problem] = []
    for name in config_sections(kind):
        section = (known or {}).get(name)
        if section is not None:
            values[name] = section_values(section)
        else:
            section, values[name], section_problems = field_values(SECTIONS[name], config.get(name, {}), name)
            problems += section_problems
        if section is not None:
            sections[name] = section
    problems += cross_problems(values, kind, resources)
    return (None if problems else sections), problems


def sweepable_paths(kind: str) -> list[str]:
    """Every dotted path a sweep may set for a job of this kind."""
    paths = [f"{name}.{f}" for name in config_sections(kind) for f in field_names(SECTIONS[name])]
    return paths + [f"train.early_stopping.{f}" for f in field_names(EarlyStopping)]


