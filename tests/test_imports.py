"""Import boundaries: the engine never imports Ray; the spec imports neither torch nor Ray, and its
modules import one way (no cycle, nothing hidden behind TYPE_CHECKING or a function-level import)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

#: orchestrator/spec's modules in import order: each may import only those before it.
SPEC_ORDER = ("yamlio", "base", "rungs", "sweep", "tracking", "schema", "problems", "sections", "expand", "rules",
              "location", "proposals", "validate")


def loaded_after(code: str) -> list[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def _modules(folder: Path, prefix: str) -> list[str]:
    """Every module under ``folder``, subpackages' too, found without importing any."""
    found = []
    for m in pkgutil.iter_modules([str(folder)]):
        found.append(prefix + m.name)
        if m.ispkg:
            found += _modules(folder / m.name, f"{prefix}{m.name}.")
    return found


@pytest.mark.slow
def test_the_engine_never_imports_ray() -> None:
    modules = sorted(_modules(REPO / "rnn", "rnn."))
    if importlib.util.find_spec("triton") is None:  # the Triton kernels import only where Triton is
        modules.remove("rnn.lnlstm.triton_kernels")
    assert {"rnn.train", "rnn.sample", "rnn.lnlstm.path", "rnn.lnlstm.cpu"} <= set(modules)
    loaded = loaded_after("import importlib\n" + "\n".join(f"importlib.import_module({m!r})" for m in modules))
    assert "torch" in loaded  # the probe did import the engine
    assert "ray" not in loaded


def test_the_spec_and_load_job_import_neither_torch_nor_ray() -> None:
    loaded = loaded_after("import orchestrator.spec, orchestrator.plan\n"
                          "from orchestrator.spec import load_job\n"
                          "job = load_job('jobs/architectures.yaml')\n"
                          "assert job.trials[0].run_config.model.cell")
    assert "pydantic" in loaded
    assert not {"torch", "ray", "optuna"} & set(loaded)


@pytest.mark.slow
def test_only_a_searching_driver_imports_optuna() -> None:
    """Workers import the actor's module (and the run package): neither pulls in Optuna."""
    loaded = loaded_after("import orchestrator.run, orchestrator.run.actor, orchestrator.cli")
    assert "optuna" not in loaded
    assert "optuna" in loaded_after("import orchestrator.run.search")


@pytest.mark.slow
def test_trackers_are_imported_by_the_driver_only_when_a_spec_asks(tmp_path: Path) -> None:
    """A spec with ``tracking:`` validates without importing TensorBoard or MLflow; the workers'
    modules never import them (only the driver writes)."""
    spec = tmp_path / "tracked.yaml"
    spec.write_text("name: t\ntracking: {tensorboard: true, mlflow: 'sqlite:///mlflow.db'}\n")
    loaded = loaded_after(f"from orchestrator.spec import load_job\nload_job({str(spec)!r})\n"
                          "import orchestrator.run, orchestrator.run.actor, orchestrator.cli, rnn.train")
    assert not {"tensorboard", "mlflow"} & set(loaded)


def _orchestrator_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level?) for every ``orchestrator.*`` import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out += [(n, id(node) in top) for n in names if n.startswith("orchestrator")]
    return out


@pytest.mark.parametrize("module", SPEC_ORDER)
def test_spec_modules_import_one_way(module: str) -> None:
    earlier = {f"orchestrator.spec.{m}" for m in SPEC_ORDER[: SPEC_ORDER.index(module)]}
    for name, at_top in _orchestrator_imports(REPO / "orchestrator" / "spec" / f"{module}.py"):
        assert at_top, f"{module}.py imports {name} inside a function or a TYPE_CHECKING block"
        assert name == "orchestrator.errors" or name in earlier, f"{module}.py imports {name}"


def test_every_spec_module_is_in_the_order() -> None:
    assert {m.name for m in pkgutil.iter_modules([str(REPO / "orchestrator" / "spec")])} == set(SPEC_ORDER)
