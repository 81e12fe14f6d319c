"""The job's ``manifest.json``: how its results were produced.

It records the spec as submitted, the corpus hashes and devices the caller passes, the versions
of the packages that shape results, the host and the git commit of the working directory.
Written atomically like every file of the job folder (see :mod:`orchestrator.results.storage`).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from collections.abc import Mapping
from typing import Any, Optional

from orchestrator.results.storage import ResultsError, open_storage

__all__ = ["MANIFEST_FILE", "package_versions", "read_manifest", "write_manifest"]

MANIFEST_FILE = "manifest.json"

_VERSIONED_PACKAGES = ("torch", "ray", "pyarrow", "tokenizers", "numpy", "rnn-orchestrator")


def write_manifest(
    job_dir: str | os.PathLike[str],
    spec_text: str,
    spec_path: str | os.PathLike[str] | None,
    extra: Optional[Mapping[str, Any]] = None,
) -> str:
    """Write ``manifest.json``: what is needed to know how these results were produced.

    Records the spec as submitted (raw text) and its path, package versions (from package
    metadata: nothing heavy is imported), the host, the git commit of the working directory
    (None outside a repository) and ``created_at``. ``extra`` is merged in at the top level
    and is where the caller puts ``name``, ``kind``, ``corpus_sha256`` (corpus -> sha256) and
    ``devices`` (a list of device reports); its keys win over the defaults. Returns the
    manifest's location.
    """
    manifest: dict[str, Any] = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec_path": os.fspath(spec_path) if spec_path is not None else None,
        "spec_text": spec_text,
        "corpus_sha256": {},
        "devices": [],
        "versions": package_versions(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform()},
        **_git_info(),
    }
    manifest.update(extra or {})
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
    return open_storage(job_dir, None).write_text(MANIFEST_FILE, text)


def read_manifest(job_dir: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
    """The manifest as a dict, or None when the job folder has none."""
    text = open_storage(job_dir, None).read_text(MANIFEST_FILE)
    if text is None:
        return None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{job_dir}/{MANIFEST_FILE} is not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise ResultsError(
            f"{job_dir}/{MANIFEST_FILE} should hold a JSON object (got a {type(manifest).__name__}); "
            "it was not written by this tool: move it aside and run the job again to rewrite it"
        )
    return manifest


def package_versions() -> dict[str, Optional[str]]:
    """Versions of the packages that shape results, plus Python's (None: not installed)."""
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


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
    return {"git_commit": commit or None, "git_dirty": None if status is None else bool(status)}
