"""The ``tracking:`` section: where the driver also writes a job's results as they arrive.

``tensorboard: true`` writes event files under ``<job>/tensorboard/<trial_id>/``; ``mlflow: URI``
writes one MLflow run per trial (nested under one run for the job) to a tracking server or a
database. Neither is part of a trial's config (trial ids do not change). The packages are an
optional extra; a spec that asks for one that is not installed is refused here, with the line
that installs it, so ``validate`` says so before anything runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Annotated, Optional

from pydantic import Field, Strict, field_validator
from pydantic_core import PydanticCustomError

from orchestrator.spec.base import Section, Text

#: What installs the trackers' packages (the project's ``tracking`` extra).
INSTALL_HINT = "pip install 'rnn-orchestrator[tracking]' (or: pip install tensorboard mlflow)"
#: Tracking URI schemes MLflow's client takes: a server, or a database through SQLAlchemy.
MLFLOW_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_EXPERIMENT_RE = re.compile(r"[^\x00-\x1f]{1,250}")


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def mlflow_uri_problem(uri: str) -> Optional[str]:
    """What is wrong with ``uri`` as an MLflow tracking URI, or None."""
    m = _SCHEME_RE.match(uri)
    scheme = m.group(1).lower().split("+")[0] if m else None
    if scheme is None or scheme == "file":
        return ("should be an MLflow tracking URI: http(s)://host:port for a server, or sqlite:///path.db "
                "for a local database (MLflow 3 refuses a plain folder, its old file store)")
    if scheme == "databricks":
        return "databricks:// is not supported; use the workspace's http(s):// address"
    if scheme not in MLFLOW_SCHEMES:
        return f"should be a URI of one of {', '.join(s + ':' for s in MLFLOW_SCHEMES)} (got {scheme}:)"
    if scheme in ("http", "https"):
        if not re.match(r"^https?://[^/\s:]+(:\d{1,5})?(/\S*)?$", uri, re.IGNORECASE):
            return f"should be {scheme}://host[:port][/path]"
        return None
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None:
            return "should be sqlite:///relative/path.db or sqlite:////absolute/path.db"
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"the folder of the database, {folder}, does not exist"
    return None


def is_server(uri: str) -> bool:
    """Whether an MLflow tracking URI names a server (http or https), not a database."""
    return uri.lower().startswith(("http:", "https:"))


def sqlite_path(uri: str) -> Optional[str]:
    """The file of a ``sqlite:///path`` URI (relative to the current directory; four slashes: an
    absolute path), or None when there is none (``sqlite://`` alone is an in-memory database,
    which would lose everything with the driver)."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return path if path and path != ":memory:" else None


class TrackingSpec(Section):
    """``tracking``: TensorBoard event files and MLflow runs, written by the driver."""

    tensorboard: Annotated[bool, Strict()] = False
    mlflow: Optional[Text] = None  # a tracking URI; null: off
    mlflow_experiment: Optional[Text] = None  # default: the job's name
    #: A trial's best checkpoint is logged as an MLflow artifact up to this size (MB); 0: never.
    mlflow_artifact_max_mb: Annotated[float, Strict(), Field(ge=0, le=100_000, allow_inf_nan=False)] = 100.0

    @field_validator("tensorboard")
    @classmethod
    def _tensorboard_installed(cls, value: bool) -> bool:
        if value and _missing("tensorboard"):
            raise PydanticCustomError("tracking", "needs the tensorboard package: {hint}", {"hint": INSTALL_HINT})
        return value

    @field_validator("mlflow")
    @classmethod
    def _mlflow_uri(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        problem = mlflow_uri_problem(value)
        if problem:
            raise PydanticCustomError("tracking", problem)
        if _missing("mlflow"):
            raise PydanticCustomError("tracking", "needs the mlflow package: {hint}", {"hint": INSTALL_HINT})
        return value

    @field_validator("mlflow_experiment")
    @classmethod
    def _experiment(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not _EXPERIMENT_RE.fullmatch(value):
            raise PydanticCustomError("tracking", "should be 1-250 printable characters")
        return value

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None
