"""``python -m orchestrator``: see :mod:`orchestrator.cli`."""

from orchestrator.cli import entry

raise SystemExit(entry())
