"""Where a job's results folder is: ``<output>/<name>``, one answer for ``plan`` and ``run``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from orchestrator.errors import UsageError
from orchestrator.spec.schema import JobSpec, output_problem, uri_scheme

#: Set by Ray's job manager in the entrypoint's environment under ``ray job submit``.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_location(spec: JobSpec, output: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> str:
    """``<output>/<name>`` as an absolute local path or a filesystem URI.

    ``output`` (``run --output``) overrides the spec's. ``~`` is expanded and a relative path is
    taken from the current directory; a ``file://`` URI is the local folder it names. Under
    ``ray job submit --working-dir .`` the working directory is Ray's temporary copy on the
    head node, so a relative output would vanish with it: there it must be absolute.

    Raises:
        UsageError: ``output`` is not a usable results root, or is relative under ``ray job submit``.
    """
    env = os.environ if environ is None else environ
    root = output or spec.output
    problem = output_problem(root) if output else None  # the spec's own was validated with it
    if problem:
        raise UsageError(f"--output {problem} (got {root!r})")
    scheme = uri_scheme(root)
    if scheme == "file":
        root = root[len("file://"):] or "/"
    elif scheme is not None:
        return root.rstrip("/") + "/" + spec.name
    path = Path(root).expanduser()
    if not path.is_absolute() and RAY_JOB_ENV in env:
        raise UsageError(
            f"output {root!r} is relative, but this runs under `ray job submit`, whose working directory "
            "is a temporary copy on the head node; pass an absolute folder, e.g. "
            "`-- python -m orchestrator run SPEC --output /shared/results`, or set an absolute `output:`"
        )
    return str((Path.cwd() / path / spec.name).resolve())
