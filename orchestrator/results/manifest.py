"""The job's ``manifest.json``: how its results were produced, one record per invocation.

Format (``"format": 2``)::

    {
      "format": 2,
      "created_at": "...",            # the first invocation's fields, kept as they were:
      "spec_path": "...", "spec_text": "...",
      "versions": {...}, "host": {...}, "git_commit": "...", "git_dirty": false, "code_sha256": "...",
      "name": "...", "kind": "...", "trials": 12, "corpus_sha256": {...}, "devices": [...],
      "runs": [                        # one record per invocation, in the order they started
        {"run_id": "...", "started_at": "...", "finished_at": "..." | null,
         "spec_path": "...", "spec_sha256": "...", "spec_text": "..." (only when it differs
         from the top-level one), "versions": {...}, "host": {...}, "git_commit": "...",
         "git_dirty": false, "corpus_sha256": {...}, "devices": [...], "trials_run": 4, ...}
      ]
    }

The top level is the first invocation's record, as before there were runs: readers of the
old single-record manifests (``format`` absent, no ``runs``) keep working, and
:func:`manifest_runs` gives such a manifest's one run. ``extra`` keys given to
:func:`write_manifest` (``name``, ``kind``, ``trials``, ``corpus_sha256``, ``devices``,
``trials_run``...) go into the invocation's run record, and for the first invocation into
the top level too. ``finished_at`` stays null for an invocation that was killed.

Written atomically like every file of the job folder (see :mod:`orchestrator.results.storage`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import secrets
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from orchestrator.results.storage import DamagedFolderError, open_storage, repair_hint

__all__ = ["MANIFEST_FILE", "manifest_runs", "new_run_id", "package_versions", "read_manifest", "write_manifest"]

MANIFEST_FILE = "manifest.json"
FORMAT = 2

_VERSIONED_PACKAGES = ("torch", "ray", "pyarrow", "tokenizers", "numpy", "rnn-orchestrator")
#: Top-level keys that describe the folder rather than one invocation.
_FOLDER_KEYS = ("format", "created_at", "spec_text", "runs")


def new_run_id() -> str:
    """An id for one invocation: its UTC start time, the pid and a random suffix."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{os.getpid()}-{secrets.token_hex(2)}"


def write_manifest(
    job_dir: str | os.PathLike[str],
    spec_text: str,
    spec_path: str | os.PathLike[str] | None,
    extra: Optional[Mapping[str, Any]] = None,
    *,
    run_id: Optional[str] = None,
    finished: bool = False,
) -> str:
    """Create ``manifest.json`` on first use, or add or update this invocation's run record.

    The record of ``run_id`` (a fresh :func:`new_run_id` when None) holds its start time, the
    spec's path and sha256, package versions (from package metadata: nothing heavy is
    imported), the host, the git commit of the working directory (None outside a repository)
    and ``extra``; ``finished=True`` stamps ``finished_at``. A later call with the same
    ``run_id`` updates that record (``extra`` merged in, ``started_at`` kept); a new ``run_id``
    appends a record. The top-level fields are the first invocation's and are only ever
    updated by that invocation. Returns the manifest's location.
    """
    storage = open_storage(job_dir, None)
    now = _now()
    manifest = _parse(storage.read_text(MANIFEST_FILE), storage.location(MANIFEST_FILE))
    record = {
        "run_id": run_id or new_run_id(),
        "spec_path": os.fspath(spec_path) if spec_path is not None else None,
        "spec_sha256": hashlib.sha256(spec_text.encode("utf-8")).hexdigest(),
        "versions": package_versions(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform()},
        **_git_info(),
        **(extra or {}),
    }
    if manifest is None:
        record["started_at"] = now
        manifest = {
            "format": FORMAT, "created_at": now, "spec_path": record["spec_path"], "spec_text": spec_text,
            "corpus_sha256": {}, "devices": [],
            **{k: v for k, v in record.items() if k not in ("run_id", "spec_sha256", "started_at")},
            "runs": [],
        }
    runs = manifest.setdefault("runs", manifest_runs(manifest))
    manifest["format"] = FORMAT
    existing = next((r for r in runs if r.get("run_id") == record["run_id"]), None)
    if existing is None:
        record.setdefault("started_at", now)
        if spec_text != manifest.get("spec_text"):
            record["spec_text"] = spec_text
        runs.append(record)
        existing = record
    else:
        existing.update({k: v for k, v in record.items() if k != "started_at"})
    if finished:
        existing["finished_at"] = now
    if runs[0] is existing:  # the first invocation completes the top level
        manifest.update({k: v for k, v in (extra or {}).items() if k not in _FOLDER_KEYS})
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
    return storage.write_text(MANIFEST_FILE, text)


def read_manifest(job_dir: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
    """The manifest as a dict, or None when the job folder has none."""
    storage = open_storage(job_dir, None)
    return _parse(storage.read_text(MANIFEST_FILE), storage.location(MANIFEST_FILE))


def manifest_runs(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The invocations a manifest records, first to last.

    An old single-record manifest (no ``runs``) was written by one invocation: it is returned
    as that one run, with its ``created_at`` as ``started_at``.
    """
    runs = manifest.get("runs")
    if isinstance(runs, list):
        return runs
    legacy = {k: v for k, v in manifest.items() if k not in _FOLDER_KEYS}
    return [{"run_id": None, "started_at": manifest.get("created_at"), "finished_at": None, **legacy}]


def package_versions() -> dict[str, Optional[str]]:
    """Versions of the packages that shape results, plus Python's (None: not installed)."""
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _parse(text: Optional[str], where: str) -> Optional[dict[str, Any]]:
    if text is None:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedFolderError(
            f"{where} is not valid JSON ({e}); {repair_hint(os.path.dirname(where))}"
        ) from e
    if not isinstance(manifest, dict):
        raise DamagedFolderError(f"{where} is not a JSON object; {repair_hint(os.path.dirname(where))}")
    # Its structure is checked here; odd values of its other entries are the readers' to skip
    # (the report leaves out what it cannot show).
    runs = manifest.get("runs")
    if runs is not None and not (isinstance(runs, list) and all(isinstance(run, dict) for run in runs)):
        raise DamagedFolderError(f"{where}: 'runs' should be a list of run records (got {json.dumps(runs)[:60]}); "
                                 f"{repair_hint(os.path.dirname(where))}")
    return manifest


def _git_info() -> dict[str, Any]:
    """The commit of the working directory's repository and whether it has local changes."""

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or None, "git_dirty": None if status is None else bool(status),
            "code_sha256": code_sha256()}


def code_sha256() -> str:
    """A hash of the code that ran (every ``.py`` file of ``orchestrator/`` and ``rnn/``, by path and
    content): the code's identity where there is no git repository (``ray job submit`` runs a copy
    of the working directory without ``.git``)."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for package in ("orchestrator", "rnn"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
