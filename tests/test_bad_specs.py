"""A corpus of malformed specs: each exits 2 with clean lines naming the file and the path.

Most run in-process through ``cli.main(["validate", ...])``; a handful run the real
``python -m orchestrator`` in a subprocess. Every case runs in an empty working directory,
which must stay empty apart from the spec: validation writes nothing (no results folder),
and a code-running YAML tag runs nothing.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Union

import pytest
import yaml

from conftest import REPO
from orchestrator import cli

BASE: dict[str, Any] = {
    "name": "bad",
    "kind": "train",
    "data": {"corpus": "builtin", "level": "char", "seq_len": 32},
    "model": {"cell": "lstm", "embedding_dim": 16, "hidden_size": 32, "num_layers": 1},
    "train": {"batch_size": 8, "max_steps": 10, "eval_every": 5, "device": "cpu"},
    "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
    "output": "results",
}


def with_(*changes: tuple[str, Any], base: dict[str, Any] = BASE) -> str:
    """BASE with dotted-path changes (value ``DELETE`` removes the key), as YAML text."""
    spec = copy.deepcopy(base)
    for path, value in changes:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return yaml.safe_dump(spec, sort_keys=False)


DELETE = object()
VALID = with_()
BOMB = 'name: bomb\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
THROUGHPUT = {**BASE, "kind": "throughput", "throughput": {"batch_sizes": [8, 16]}}
SWEEP_LR = {"random": {"samples": 2, "space": {"train.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-2}}}}

# (id, spec text or bytes, substrings the error output must contain)
CASES: list[tuple[str, Union[str, bytes], list[str]]] = [
    # --- the file itself
    ("invalid-yaml", "name: x\nmodel: [lstm, gru\ntrain: {}\n", ["spec.yaml: line 3:"]),
    ("tab-indent", "name: x\nmodel:\n\tcell: lstm\n", ["spec.yaml: line 3:"]),
    ("root-list", "- name: x\n- kind: train\n", ["top level must be a mapping"]),
    ("root-scalar", "just a string\n", ["top level must be a mapping"]),
    ("empty", "", ["the file is empty"]),
    ("only-comments", "# name: x\n", ["the file is empty"]),
    ("non-utf8", b"name: caf\xe9\nkind: train\n", ["byte offset 9", "UTF-8"]),
    ("two-documents", VALID + "---\n" + VALID, ["single document"]),
    ("duplicate-top", VALID + "name: again\n", ["duplicate key 'name'", "first defined on line 1"]),
    ("duplicate-nested", VALID.replace("  cell: lstm\n", "  cell: lstm\n  cell: gru\n"), ["duplicate key 'cell'"]),
    ("python-tag", 'name: !!python/object/apply:builtins.open ["pwned.txt", "w"]\n',
     ["line 1", "!!python/object/apply:builtins.open is not allowed"]),
    ("python-name-tag", "name: !!python/name:os.system\n", ["!!python/name:os.system is not allowed"]),
    ("alias-bomb", BOMB, ["alias bomb"]),
    ("bool-key", VALID + "on: true\n", ["mapping keys must be strings", "'on'"]),
    # --- unknown keys at every level
    ("unknown-top", VALID + "modle: {}\n", ["modle: unknown key; did you mean 'model'?"]),
    ("unknown-data", with_(("data.corpuss", "builtin")), ["data.corpuss: unknown key; did you mean 'corpus'?"]),
    ("unknown-model", with_(("model.cel", "gru")), ["model.cel: unknown key; did you mean 'cell'?"]),
    ("unknown-train", with_(("train.learning_rate", 0.1)), ["train.learning_rate: unknown key"]),
    ("unknown-early-stopping", with_(("train.early_stopping", {"patiance": 3})),
     ["train.early_stopping.patiance: unknown key; did you mean 'patience'?"]),
    ("unknown-resources", with_(("resources.gpus", 1)), ["resources.gpus: unknown key"]),
    ("unknown-sweep", with_(("sweep", {"grids": {}})), ["sweep.grids: unknown key; did you mean 'grid'?"]),
    ("unknown-random", with_(("sweep", {"random": {**SWEEP_LR["random"], "n": 3}})), ["sweep.random.n: unknown key"]),
    ("unknown-dist-key", with_(("sweep.random", {"samples": 2, "space": {"train.lr": {
        "dist": "uniform", "low": 0.1, "high": 0.2, "step": 0.1}}})),
     ["sweep.random.space.train.lr.step: unknown key (valid keys: dist, low, high)"]),
    ("unknown-throughput", with_(("throughput.batch", [8]), base=THROUGHPUT), ["throughput.batch: unknown key"]),
    # --- wrong types
    ("string-for-int", with_(("model.hidden_size", "512")),
     ["model.hidden_size: should be a valid integer (got '512')"]),
    ("bool-for-int", with_(("train.batch_size", True)), ["train.batch_size: should be a valid integer (got true)"]),
    ("float-for-int", with_(("model.num_layers", 2.5)), ["model.num_layers: should be a valid integer (got 2.5)"]),
    ("list-for-mapping", with_(("model", ["lstm"])), ["model: should be a mapping"]),
    ("string-for-float", with_(("train.lr", "fast")), ["train.lr: should be a valid number (got 'fast')"]),
    ("bool-for-float", with_(("train.lr", True)), ["train.lr: should be a valid number (got true)"]),
    ("string-for-bool", with_(("model.layer_norm", "yes")), ["model.layer_norm: should be a valid boolean"]),
    ("int-for-string", with_(("name", 123)), ["name: should be a valid string (got 123)"]),
    ("nan-lr", with_(("train.lr", float("nan"))), ["train.lr: should be a finite number"]),
    # --- closed sets
    ("bad-kind", with_(("kind", "trian")), ["kind: should be 'train' or 'throughput' (got 'trian')"]),
    ("bad-cell", with_(("model.cell", "transformer")),
     ["model.cell: should be 'lstm', 'gru', 'rnn', 'mingru' or 'minlstm'"]),
    ("bad-optimizer", with_(("train.optimizer", "lion")), ["train.optimizer:"]),
    ("bad-scheduler", with_(("train.scheduler", "linear")), ["train.scheduler:"]),
    ("bad-amp", with_(("train.amp", "fp8")), ["train.amp:"]),
    ("bad-compile", with_(("train.compile", "fast")), ["train.compile: should be 'off', 'auto' or 'on' (got 'fast')"]),
    ("bad-device", with_(("train.device", "tpu")), ["train.device:"]),
    ("bad-level", with_(("data.level", "byte")), ["data.level:"]),
    # --- ranges
    ("lr-zero", with_(("train.lr", 0)), ["train.lr: should be greater than 0 (got 0)"]),
    ("lr-huge", with_(("train.lr", 100.0)), ["train.lr: should be less than or equal to 10"]),
    ("dropout-one", with_(("model.dropout", 1.0)), ["model.dropout: should be less than 1"]),
    ("val-fraction-negative", with_(("data.val_fraction", -0.1)), ["data.val_fraction:"]),
    ("label-smoothing-one", with_(("train.label_smoothing", 1)), ["train.label_smoothing:"]),
    ("warmup-fraction", with_(("train.warmup_fraction", 1.5)), ["train.warmup_fraction:"]),
    ("weight-decay-negative", with_(("train.weight_decay", -0.01)), ["train.weight_decay:"]),
    ("clip-zero", with_(("train.clip_grad_norm", 0)), ["train.clip_grad_norm: should be greater than 0"]),
    ("patience-zero", with_(("train.early_stopping", {"patience": 0})), ["train.early_stopping.patience:"]),
    ("min-delta-negative", with_(("train.early_stopping", {"min_delta": -1})), ["train.early_stopping.min_delta:"]),
    ("eval-every-zero", with_(("train.eval_every", 0)), ["train.eval_every:"]),
    ("seq-len-zero", with_(("data.seq_len", 0)), ["data.seq_len:"]),
    ("seq-len-huge", with_(("data.seq_len", 10**6)), ["data.seq_len:"]),
    ("batch-huge", with_(("train.batch_size", 10**7)), ["train.batch_size:"]),
    ("vocab-one", with_(("data.level", "bpe"), ("data.vocab_size", 1)), ["data.vocab_size:"]),
    ("max-steps-huge", with_(("train.max_steps", 10**10)), ["train.max_steps:"]),
    ("num-layers-huge", with_(("model.num_layers", 1000)), ["model.num_layers:"]),
    ("hidden-size-1e12", with_(("model.hidden_size", 10**12)),
     ["model.hidden_size: should be less than or equal to 65536"]),
    ("too-many-parameters",
     with_(("model.hidden_size", 65536), ("model.embedding_dim", 65536), ("model.num_layers", 8)),
     ["model: about", "parameters, more than the limit"]),
    ("cpus-zero", with_(("resources.cpus_per_trial", 0)), ["resources.cpus_per_trial:"]),
    ("gpus-negative", with_(("resources.gpus_per_trial", -1)), ["resources.gpus_per_trial:"]),
    ("gpus-fraction-above-one", with_(("resources.gpus_per_trial", 1.5)),
     ["resources.gpus_per_trial: should be a fraction"]),
    ("concurrency-zero", with_(("resources.max_concurrent", 0)), ["resources.max_concurrent:"]),
    ("retries-huge", with_(("resources.max_retries", 101)), ["resources.max_retries:"]),
    # --- the name is a folder name
    ("name-traversal", with_(("name", "../evil")), ["name: should be 1-100 letters"]),
    ("name-slash", with_(("name", "a/b")), ["name: should be 1-100 letters"]),
    ("name-dot", with_(("name", ".")), ["name: should be 1-100 letters"]),
    ("name-dotdot", with_(("name", "..")), ["name: should be 1-100 letters"]),
    ("name-trailing-newline", with_(("name", "evil\n")), ["name: should be 1-100 letters"]),
    ("name-too-long", with_(("name", "x" * 101)), ["name: should be 1-100 letters"]),
    ("name-missing", with_(("name", DELETE)), ["name: required key is missing"]),
    ("output-bad-uri", with_(("output", "3s://bucket")), ["output: should be a local path or a URI"]),
    # --- cross-field rules
    ("layer-norm-gru", with_(("model.cell", "gru"), ("model.layer_norm", True)),
     ["model.layer_norm: the layer-norm cell exists for lstm only (got cell 'gru')"]),
    ("tie-size-mismatch", with_(("model.tie_weights", True)),
     ["model.tie_weights: needs embedding_dim == hidden_size"]),
    ("missing-corpus", with_(("data.corpus", "no/such/corpus.txt")),
     ["data.corpus: no such file", "no/such/corpus.txt"]),
    ("corpus-is-directory", with_(("data.corpus", ".")), ["data.corpus: a directory, not a file"]),
    ("no-budget", with_(("train.max_steps", None)), ["train: no budget"]),
    ("throughput-in-train-job", with_(("throughput", {"batch_sizes": [8]})),
     ["throughput: only allowed with kind: throughput"]),
    ("throughput-bad-batches", with_(("throughput.batch_sizes", [8, 0]), base=THROUGHPUT),
     ["throughput.batch_sizes: should be 'auto' or a non-empty list", "item [1] is 0"]),
    ("cuda-without-gpu", with_(("train.device", "cuda")), ["train.device: cuda needs resources.gpus_per_trial > 0"]),
    # --- sweeps
    ("sweep-path-typo", with_(("sweep.grid", {"model.cel": ["lstm", "gru"]})),
     ["sweep.grid.model.cel: no such setting; did you mean model.cell?"]),
    ("sweep-resources", with_(("sweep.grid", {"resources.cpus_per_trial": [1, 2]})),
     ["sweep.grid.resources.cpus_per_trial: cannot be swept"]),
    ("sweep-name", with_(("sweep.grid", {"name": ["a", "b"]})), ["sweep.grid.name: cannot be swept"]),
    ("sweep-throughput-in-train", with_(("sweep.grid", {"throughput.warmup_steps": [1, 2]})),
     ["sweep.grid.throughput.warmup_steps: throughput settings can only be swept in a kind: throughput job"]),
    ("swept-value-invalid", with_(("sweep.grid", {"model.cell": ["lstm", "transformer"]})),
     ["sweep.grid.model.cell[1]: should be 'lstm', 'gru', 'rnn', 'mingru' or 'minlstm' (got 'transformer')"]),
    ("swept-value-breaks-cross-rule",
     with_(("model.layer_norm", True), ("sweep.grid", {"model.cell": ["lstm", "gru"]})),
     ["sweep.grid.model.cell[1]: makes model.layer_norm invalid"]),
    ("grid-empty-list", with_(("sweep.grid", {"model.cell": []})), ["sweep.grid.model.cell: should not be empty"]),
    ("grid-not-a-list", with_(("sweep.grid", {"model.cell": "gru"})),
     ["sweep.grid.model.cell: should be a valid list"]),
    ("grid-repeated-value", with_(("sweep.grid", {"model.cell": ["gru", "gru"]})),
     ["sweep.grid.model.cell[1]: repeats"]),
    ("random-unknown-dist", with_(("sweep.random", {"samples": 2, "space": {"train.lr": {"dist": "normal"}}})),
     ["sweep.random.space.train.lr.dist: should be one of 'loguniform', 'uniform', 'int', 'choice' (got 'normal')"]),
    ("random-no-dist", with_(("sweep.random", {"samples": 2, "space": {"train.lr": {"low": 0.1}}})),
     ["sweep.random.space.train.lr: needs a dist key"]),
    ("random-low-above-high", with_(("sweep.random", {"samples": 2, "space": {"train.lr": {
        "dist": "uniform", "low": 0.2, "high": 0.1}}})), ["sweep.random.space.train.lr: low must be less than high"]),
    ("loguniform-zero-low", with_(("sweep.random", {"samples": 2, "space": {"train.lr": {
        "dist": "loguniform", "low": 0, "high": 0.1}}})),
     ["sweep.random.space.train.lr.low: should be greater than 0"]),
    ("random-bound-invalid-at-path", with_(("sweep.random", {"samples": 2, "space": {"train.lr": {
        "dist": "loguniform", "low": 0.1, "high": 20}}})),
     ["sweep.random.space.train.lr.high: should be less than or equal to 10"]),
    ("random-float-for-int", with_(("sweep.random", {"samples": 2, "space": {"model.num_layers": {
        "dist": "uniform", "low": 1, "high": 3}}})), ["sweep.random.space.model.num_layers.low:", "use dist: int"]),
    ("random-choice-invalid", with_(("sweep.random", {"samples": 2, "space": {"model.cell": {
        "dist": "choice", "values": ["gru", "lstmm"]}}})), ["sweep.random.space.model.cell.values[1]: should be"]),
    ("random-no-samples", with_(("sweep.random", {"space": SWEEP_LR["random"]["space"]})),
     ["sweep.random.samples: required"]),
    ("swept-twice", with_(("sweep", {"grid": {"train.lr": [0.1]}, **SWEEP_LR})),
     ["sweep.random.space.train.lr: also swept by sweep.grid"]),
    ("seeds-repeated", with_(("sweep.seeds", [0, 1, 0])), ["sweep.seeds[2]: repeats sweep.seeds[0]"]),
    ("seeds-negative", with_(("sweep.seeds", [-1])), ["sweep.seeds[0]: should be greater than or equal to 0"]),
    ("seeds-and-seed-grid", with_(("sweep", {"grid": {"train.seed": [1, 2]}, "seeds": [0]})),
     ["sweep.seeds: train.seed is also swept"]),
    ("too-many-trials", with_(("sweep.grid", {"train.lr": [i / 1000 + 0.001 for i in range(101)],
                                              "train.batch_size": list(range(1, 102))})),
     ["sweep: expands to 10201 trials, more than the limit of 10000"]),
]


def _run_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: Union[str, bytes]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_bytes(content.encode() if isinstance(content, str) else content)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 35
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


def test_the_base_spec_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _run_in(tmp_path, monkeypatch, VALID)
    assert cli.main(["validate", "spec.yaml"]) == 0
    assert capsys.readouterr().out == "spec.yaml: ok (1 trial)\n"


@pytest.mark.parametrize("content,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_is_refused_cleanly(
    content: Union[str, bytes], expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _run_in(tmp_path, monkeypatch, content)
    status = cli.main(["validate", "spec.yaml"])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("spec.yaml: ") for line in lines), err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing written, nothing run


def test_every_problem_is_reported_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    content = with_(("model.hidden_size", -1), ("train.lr", "fast"), ("model.cell", "gru"), ("model.layer_norm", True),
                    ("resources.max_retries", 1000), ("sweep.grid", {"model.cel": ["lstm"]}))
    _run_in(tmp_path, monkeypatch, content)
    assert cli.main(["validate", "spec.yaml"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "model.hidden_size", "train.lr", "resources.max_retries", "sweep.grid.model.cel", "model.layer_norm",
    ]


def test_good_and_bad_specs_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_in(tmp_path, monkeypatch, with_(("model.cell", "lstmm")))
    (tmp_path / "good.yaml").write_text(VALID)
    assert cli.main(["validate", "good.yaml", "spec.yaml", "missing.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == "good.yaml: ok (1 trial)\n"
    assert err.splitlines()[0].startswith("spec.yaml: model.cell: should be")
    assert err.splitlines()[1] == "missing.yaml: cannot read the spec: no such file"


SUBPROCESS_CASES = ["invalid-yaml", "non-utf8", "python-tag", "alias-bomb", "swept-value-invalid"]


def test_bad_specs_in_a_real_process(tmp_path: Path) -> None:
    """One real ``python -m orchestrator validate`` over several bad files, a missing one and a directory."""
    by_id = {c[0]: c for c in CASES}
    for case_id in SUBPROCESS_CASES:
        content = by_id[case_id][1]
        (tmp_path / f"{case_id}.yaml").write_bytes(content.encode() if isinstance(content, str) else content)
    files = [f"{case_id}.yaml" for case_id in SUBPROCESS_CASES] + ["nope.yaml", "."]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "validate", *files], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    for case_id in SUBPROCESS_CASES:
        mine = "\n".join(line for line in lines if line.startswith(f"{case_id}.yaml: "))
        for fragment in by_id[case_id][2]:
            assert fragment.replace("spec.yaml", f"{case_id}.yaml") in mine, (case_id, fragment, proc.stderr)
    assert "nope.yaml: cannot read the spec: no such file" in lines
    assert ".: cannot read the spec: a directory, not a file" in lines
    specs = sorted(f for f in files if f.endswith(".yaml") and f != "nope.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == specs
